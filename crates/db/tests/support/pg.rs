//! A throw-away PostgreSQL cluster for tests: Debian's server binaries
//! (`/usr/lib/postgresql/<version>/bin`, installed by `scripts/test.sh`),
//! a fresh data directory, a unix socket in it and no TCP port, stopped
//! and removed on drop. PostgreSQL refuses to run as root, so as root the
//! cluster runs as the `postgres` user. Statements go through `psql`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A running cluster; stopped when dropped.
pub(crate) struct PgCluster {
    bin: PathBuf,
    dir: tempfile::TempDir,
    as_postgres: bool,
}

/// The newest server's binary directory Debian installed.
fn server_bin() -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|dir| dir.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    versions.sort_by_key(|p| {
        p.file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.parse::<u32>().ok())
            .unwrap_or(0)
    });
    let bin = versions
        .pop()
        .map(|v| v.join("bin"))
        .filter(|b| b.join("initdb").exists());
    bin.expect(
        "the PostgreSQL tests need Debian's postgresql server \
         (/usr/lib/postgresql/<version>/bin): run scripts/test.sh, which installs it",
    )
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

impl PgCluster {
    /// Makes and starts a cluster.
    pub(crate) fn start() -> Self {
        let bin = server_bin();
        let as_postgres = is_root();
        let dir = tempfile::Builder::new()
            .prefix("madre-pg-")
            .tempdir()
            .unwrap();
        if as_postgres {
            let done = Command::new("chown")
                .args(["postgres:postgres"])
                .arg(dir.path())
                .status()
                .unwrap();
            assert!(done.success(), "chown of the cluster's directory");
        }
        let cluster = Self {
            bin,
            dir,
            as_postgres,
        };
        let data = cluster.data();
        cluster.expect_ok(cluster.server(
            "initdb",
            &[
                "-D",
                data.to_str().unwrap(),
                "-A",
                "trust",
                "-U",
                "postgres",
            ],
        ));
        let options = format!(
            "-k {} -c listen_addresses='' -c fsync=off",
            cluster.dir.path().display()
        );
        let log = cluster.dir.path().join("server.log");
        cluster.expect_ok(cluster.server(
            "pg_ctl",
            &[
                "-D",
                data.to_str().unwrap(),
                "-o",
                &options,
                "-l",
                log.to_str().unwrap(),
                "-w",
                "start",
            ],
        ));
        cluster
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The directory of the cluster's socket (its host, to a client).
    pub(crate) fn socket_dir(&self) -> &Path {
        self.dir.path()
    }

    fn server(&self, program: &str, args: &[&str]) -> Output {
        let path = self.bin.join(program);
        let mut command = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        };
        command.args(args).output().unwrap()
    }

    fn expect_ok(&self, out: Output) -> Output {
        assert!(
            out.status.success(),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// Runs `sql` in database `db` with `psql`, stopping at the first
    /// error: its output (tuples only, unaligned), or the error's text.
    pub(crate) fn psql(&self, db: &str, sql: &str) -> Result<String, String> {
        use std::io::Write as _;
        let mut child = Command::new(self.bin.join("psql"))
            .args([
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-U",
                "postgres",
            ])
            .args(["-h", self.socket_dir().to_str().unwrap(), "-d", db])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(sql.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        match out.status.success() {
            true => Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned()),
            false => Err(String::from_utf8_lossy(&out.stderr).into_owned()),
        }
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let data = self.data();
        let _ = self.server(
            "pg_ctl",
            &["-D", data.to_str().unwrap(), "-m", "immediate", "stop"],
        );
    }
}

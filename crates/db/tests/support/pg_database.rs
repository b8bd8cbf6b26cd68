//! A PostgreSQL database made for one test on the server
//! `MADRE_TEST_POSTGRES` names (`scripts/test.sh` starts a throw-away
//! cluster and sets it), dropped with the test. Shared by the repository,
//! end-to-end and two-replica tests (each includes this file).
#![allow(dead_code)] // each test binary uses a different part

/// The variable naming the PostgreSQL server of the suite's second run.
pub(crate) const POSTGRES_VAR: &str = "MADRE_TEST_POSTGRES";

/// The server's administrator connection string, when the run has one.
pub(crate) fn postgres_admin() -> Option<String> {
    std::env::var(POSTGRES_VAR)
        .ok()
        .filter(|s| !s.trim().is_empty())
}

/// True when the run is against PostgreSQL.
pub(crate) fn is_postgres() -> bool {
    postgres_admin().is_some()
}

/// Runs `f` on a thread of its own: PostgreSQL's blocking client refuses
/// to run on an async test's thread.
pub(crate) fn off_runtime<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|scope| scope.spawn(f).join().unwrap())
}

/// A fresh database of the test server.
pub(crate) struct PgDatabase {
    admin: String,
    name: String,
    /// Its connection string (`MADRE_DATABASE_URL`).
    pub(crate) url: String,
}

impl PgDatabase {
    /// Makes a database named `<prefix>_<uuid>` on the server `admin`.
    pub(crate) fn create(admin: &str, prefix: &str) -> Self {
        let name = format!("{prefix}_{}", uuid::Uuid::new_v4().simple());
        admin_do(admin, &format!("CREATE DATABASE {name}"));
        Self {
            url: format!("{admin} dbname={name}"),
            admin: admin.to_owned(),
            name,
        }
    }

    /// Cuts its sessions off, as an outage would: new sessions are
    /// refused and every open one is ended by the server.
    pub(crate) fn cut_off(&self) {
        admin_do(
            &self.admin,
            &format!(
                "ALTER DATABASE {name} ALLOW_CONNECTIONS false;
                 SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                 WHERE datname = '{name}' AND pid <> pg_backend_pid();",
                name = self.name
            ),
        );
    }

    /// Ends [`PgDatabase::cut_off`]: the database takes sessions again.
    pub(crate) fn restore(&self) {
        admin_do(
            &self.admin,
            &format!("ALTER DATABASE {} ALLOW_CONNECTIONS true", self.name),
        );
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        // Sessions a test's handles still hold are ended by FORCE.
        let drop = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        off_runtime(|| {
            if let Ok(mut client) = postgres::Client::connect(&self.admin, postgres::NoTls) {
                let _ = client.batch_execute(&drop);
            }
        });
    }
}

/// Runs `sql` as the server's administrator.
fn admin_do(admin: &str, sql: &str) {
    off_runtime(|| {
        let mut client = postgres::Client::connect(admin, postgres::NoTls)
            .unwrap_or_else(|e| panic!("{POSTGRES_VAR}={admin:?}: cannot connect: {e}"));
        client
            .batch_execute(sql)
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    });
}

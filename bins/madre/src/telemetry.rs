//! Logs to stderr (pretty or JSON) and to daily JSON-lines files under
//! `$MADRE_DATA_DIR/forensic/madre/logs/`, each created 0600 in a 0700
//! directory whatever the process's umask.

use chrono::{NaiveDate, Utc};
use std::fs::File;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use tracing_appender::non_blocking::{NonBlocking, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, fmt};

use crate::config::Settings;

/// Installs the global subscriber; keep the guards alive to flush the
/// logs. Lines are formatted on the thread that logs and written by a
/// thread of each output's own, in batches: no request waits on a write
/// to stderr or to a file (a blocking write per line was about 4 % of
/// Madre's CPU under chat load at the default level). The file log drops
/// nothing: when it falls behind, loggers wait for it. stderr drops the
/// lines it cannot take, so a reader that stops never stalls Madre.
pub fn init(settings: &Settings) -> Vec<WorkerGuard> {
    // Checked when the settings were read: an invalid RUST_LOG stops the start.
    let filter =
        EnvFilter::try_new(&settings.log_filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let dir = settings
        .data_dir
        .join("forensic")
        .join("madre")
        .join("logs");
    let mut guards = Vec::new();
    let file_layer = match create_private_dirs(&dir).and_then(|()| DailyLog::open(&dir)) {
        Ok(appender) => {
            let (writer, guard) = lossless(appender);
            guards.push(guard);
            Some(fmt::layer().json().with_writer(writer))
        }
        Err(e) => {
            eprintln!(
                "madre: cannot create {}: {e}; file logs disabled",
                dir.display()
            );
            None
        }
    };
    let colours = std::io::stderr().is_terminal();
    // stderr may be a pipe nobody reads (a stalled terminal, a full log
    // shipper): lines it cannot take are dropped rather than stall Madre.
    // The file log keeps every line.
    let (stderr, guard) = NonBlockingBuilder::default()
        .lossy(true)
        .finish(std::io::stderr());
    guards.push(guard);
    let (pretty, json) = if settings.log_json {
        (None, Some(fmt::layer().json().with_writer(stderr)))
    } else {
        let pretty = fmt::layer().with_ansi(colours).with_writer(stderr);
        (Some(pretty), None)
    };
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(pretty)
        .with(json)
        .with(file_layer)
        .try_init();
    guards
}

/// A writer that hands lines to a thread of its own, which writes them in
/// batches; when its queue is full, loggers wait instead of losing lines.
fn lossless<W: std::io::Write + Send + 'static>(out: W) -> (NonBlocking, WorkerGuard) {
    NonBlockingBuilder::default().lossy(false).finish(out)
}

/// Creates `dir` and its missing parents with mode 0700 (forensic logs are
/// for the operator only), and sets 0700 on `dir` if it existed.
fn create_private_dirs(dir: &std::path::Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
    }
    #[cfg(not(unix))]
    {
        std::fs::create_dir_all(dir)
    }
}

/// Daily JSON-lines files `madre.jsonl.YYYY-MM-DD` (UTC dates, the names
/// tracing-appender's daily files had), appended to. Each file is opened
/// with mode 0600 and then set to 0600, so neither a permissive umask
/// (0644 files) nor a restrictive one (0400) changes what the operator
/// gets; a file left by an older Madre is made private when reopened.
pub struct DailyLog {
    dir: PathBuf,
    current: Option<(NaiveDate, File)>,
}

impl DailyLog {
    /// The log of `dir`, with today's file already open (created if new).
    pub fn open(dir: &Path) -> std::io::Result<Self> {
        let mut log = Self {
            dir: dir.to_owned(),
            current: None,
        };
        log.file_for(Utc::now().date_naive())?;
        Ok(log)
    }

    /// The path of the file for `date`.
    pub fn path_for(&self, date: NaiveDate) -> PathBuf {
        self.dir
            .join(format!("madre.jsonl.{}", date.format("%Y-%m-%d")))
    }

    /// The open file for `date`, opening (and creating) it when the day
    /// changed.
    fn file_for(&mut self, date: NaiveDate) -> std::io::Result<&mut File> {
        if self.current.as_ref().is_none_or(|(day, _)| *day != date) {
            let file = open_private(&self.path_for(date))?;
            self.current = Some((date, file));
        }
        match &mut self.current {
            Some((_, file)) => Ok(file),
            None => Err(std::io::Error::other("no log file open")),
        }
    }

    /// Appends `buf` to the file of `date` (the writer's own clock gives
    /// today's; tests pass other days).
    pub fn write_on(&mut self, date: NaiveDate, buf: &[u8]) -> std::io::Result<usize> {
        self.file_for(date)?.write(buf)
    }
}

impl Write for DailyLog {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.write_on(Utc::now().date_naive(), buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match &mut self.current {
            Some((_, file)) => file.flush(),
            None => Ok(()),
        }
    }
}

/// Opens `path` for appending, creating it, with mode 0600 whatever the
/// umask (the mode given at creation is masked by it, so it is set again).
fn open_private(path: &Path) -> std::io::Result<File> {
    let mut options = std::fs::OpenOptions::new();
    options.create(true).append(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        let file = options.mode(0o600).open(path)?;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        Ok(file)
    }
    #[cfg(not(unix))]
    {
        options.open(path)
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    /// A new day opens a new file, private too; an existing file that was
    /// readable by others is made private when reopened; lines append.
    #[test]
    fn each_day_gets_a_private_file_of_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let day = |d| NaiveDate::from_ymd_opt(2026, 12, d).unwrap();
        let old = dir.path().join("madre.jsonl.2026-12-01");
        std::fs::write(&old, "{\"old\":1}\n").unwrap();
        std::fs::set_permissions(&old, std::fs::Permissions::from_mode(0o644)).unwrap();

        let mut log = DailyLog::open(dir.path()).unwrap();
        log.write_on(day(1), b"{\"a\":1}\n").unwrap();
        log.write_on(day(2), b"{\"b\":2}\n").unwrap();
        log.flush().unwrap();
        assert_eq!(mode(&old), 0o600);
        assert_eq!(
            std::fs::read_to_string(&old).unwrap(),
            "{\"old\":1}\n{\"a\":1}\n"
        );
        let next = log.path_for(day(2));
        assert_eq!(mode(&next), 0o600);
        assert_eq!(std::fs::read_to_string(&next).unwrap(), "{\"b\":2}\n");
    }
}

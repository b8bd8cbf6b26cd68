//! Logs to stderr (pretty or JSON) and to daily JSON-lines files under
//! `$MADRE_DATA_DIR/forensic/madre/logs/`.

use std::io::IsTerminal;
use tracing_appender::non_blocking::{NonBlocking, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, fmt};

use crate::config::Settings;

/// Installs the global subscriber; keep the guards alive to flush the
/// logs. Lines are formatted on the thread that logs and written by a
/// thread of each output's own, in batches: no request waits on a write
/// to stderr or to a file (a blocking write per line was about 4 % of
/// Madre's CPU under chat load at the default level). Nothing is dropped:
/// when an output falls behind, loggers wait for it.
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
    let file_layer = match create_private_dirs(&dir) {
        Ok(()) => {
            let appender = tracing_appender::rolling::daily(&dir, "madre.jsonl");
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
    let (stderr, guard) = lossless(std::io::stderr());
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

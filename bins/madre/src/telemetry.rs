//! Logs to stderr (pretty or JSON) and to daily JSON-lines files under
//! `$MADRE_DATA_DIR/forensic/madre/logs/`.

use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, fmt};

use crate::config::Settings;

/// Installs the global subscriber; keep the guard alive to flush the files.
pub fn init(settings: &Settings) -> Option<WorkerGuard> {
    // Checked when the settings were read: an invalid RUST_LOG stops the start.
    let filter =
        EnvFilter::try_new(&settings.log_filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let dir = settings
        .data_dir
        .join("forensic")
        .join("madre")
        .join("logs");
    let (file_layer, guard) = match create_private_dirs(&dir) {
        Ok(()) => {
            let appender = tracing_appender::rolling::daily(&dir, "madre.jsonl");
            let (writer, guard) = tracing_appender::non_blocking(appender);
            (Some(fmt::layer().json().with_writer(writer)), Some(guard))
        }
        Err(e) => {
            eprintln!(
                "madre: cannot create {}: {e}; file logs disabled",
                dir.display()
            );
            (None, None)
        }
    };
    let (pretty, json) = if settings.log_json {
        (None, Some(fmt::layer().json().with_writer(std::io::stderr)))
    } else {
        (Some(fmt::layer().with_writer(std::io::stderr)), None)
    };
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(pretty)
        .with(json)
        .with(file_layer)
        .try_init();
    guard
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

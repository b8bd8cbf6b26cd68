//! The forensic log files: private (0600) whatever the process's umask.
//! Each test installs the global log subscriber, so each needs a process
//! of its own (nextest gives it one).

use crate::helpers::*;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Installs Madre's logging for `data_dir` under `umask` (restored at
/// once), serves one request, and answers the log file the request's line
/// went to, once it is there.
async fn log_file_after_a_request(umask: u32) -> (tempfile::TempDir, PathBuf) {
    let data = tempfile::tempdir().unwrap();
    let data_dir = data.path().join("data");
    let dir = data_dir.to_str().unwrap().to_owned();
    let vars = std::collections::HashMap::from([
        ("MADRE_DATA_DIR".to_owned(), dir.clone()),
        ("VX11_TOKEN".to_owned(), ADMIN.to_owned()),
        ("RUST_LOG".to_owned(), "info".to_owned()),
    ]);
    let before = rustix::process::umask(rustix::fs::Mode::from_raw_mode(umask));
    let guards = madre::telemetry::init(&settings(&vars));
    rustix::process::umask(before);
    std::mem::forget(guards); // flush for the life of the test process

    let app = spawn_app_with(&[("MADRE_DATA_DIR", dir.as_str())]).await;
    let reply = app.send("GET", "/health", None, None).await;
    let id = reply.request_id.expect("a request id");
    let logs = data_dir.join("forensic").join("madre").join("logs");
    let mut found = None;
    for _ in 0..200 {
        found = lines_with(&logs, &id);
        if found.is_some() {
            break;
        }
        actix_rt::time::sleep(Duration::from_millis(25)).await;
    }
    app.stop().await;
    (data, found.expect("the request's line reached a log file"))
}

fn lines_with(logs: &Path, needle: &str) -> Option<PathBuf> {
    std::fs::read_dir(logs).ok()?.flatten().find_map(|entry| {
        let text = std::fs::read_to_string(entry.path()).ok()?;
        text.contains(needle).then(|| entry.path())
    })
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[actix_rt::test]
async fn the_forensic_log_is_0600_under_a_permissive_umask() {
    let (_data, file) = log_file_after_a_request(0o000).await;
    assert_eq!(mode(&file), 0o600, "{}", file.display());
    assert_eq!(mode(file.parent().unwrap()), 0o700);
}

#[actix_rt::test]
async fn the_forensic_log_is_0600_under_a_restrictive_umask() {
    let (_data, file) = log_file_after_a_request(0o277).await;
    assert_eq!(mode(&file), 0o600, "{}", file.display());
    assert_eq!(mode(file.parent().unwrap()), 0o700);
}

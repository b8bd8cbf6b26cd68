//! A stalled stderr must not stall Madre (issue 22, writer supervision):
//! the real binary runs with its stderr a pipe that nobody reads and the
//! most verbose logging, and keeps answering chats long after the pipe
//! and the log queue are full. Lines that stderr cannot take are dropped;
//! the forensic file log keeps them.

use serde_json::json;
use std::process::Stdio;
use std::time::{Duration, Instant};
use vx11_stubs::StubServer;

mod common;

use common::{BIN, free_port, wait_listening};

const TOKEN: &str = "stalled-stderr-token";

#[actix_rt::test]
async fn chats_go_on_while_nobody_reads_stderr() {
    let stubs = StubServer::start("127.0.0.1", |_| 0).unwrap();
    let data = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut cmd = std::process::Command::new(BIN);
    cmd.arg("serve")
        .env("VX11_TOKEN", TOKEN)
        .env("MADRE_BIND", format!("127.0.0.1:{port}"))
        .env("MADRE_DATA_DIR", data.path())
        .env("RUST_LOG", "trace")
        .stdout(Stdio::null())
        // a pipe whose reading end is held and never read
        .stderr(Stdio::piped());
    for module in madre_models::Module::REMOTE {
        cmd.env(format!("VX11_{}_URL", module.env_name()), stubs.url(module));
    }
    let mut child = cmd.spawn().unwrap();
    let _unread = child.stderr.take();
    wait_listening(port).await;

    let client = awc::Client::builder()
        .timeout(Duration::from_secs(10))
        .finish();
    let base = format!("http://127.0.0.1:{port}");
    let started = Instant::now();
    let mut answered = 0;
    // Bounded in count and time: enough trace lines to fill the pipe and
    // the log queue many times over.
    while answered < 3_000 && started.elapsed() < Duration::from_secs(90) {
        let reply = client
            .post(format!("{base}/madre/chat"))
            .insert_header(("X-VX11-Token", TOKEN))
            .send_json(&json!({"message": format!("hello {answered}")}))
            .await;
        let status = reply.map(|r| r.status().as_u16());
        assert!(
            matches!(status, Ok(200)),
            "chat {answered} after {:?}: {status:?}",
            started.elapsed()
        );
        answered += 1;
    }
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(answered, 3_000, "all chats answered within 90 s");
}

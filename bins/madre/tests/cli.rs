//! The real `madre` binary: serve with a generated token, the CLI client
//! subcommands against it, graceful stop on SIGTERM.

use serde_json::Value;
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};
use vx11_stubs::StubServer;

mod common;

use common::{BIN, free_port, spawn_madre, wait_listening};

struct Server {
    child: Child,
    url: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn serve(data: &std::path::Path, stubs: &StubServer) -> Server {
    let port = free_port();
    let child = spawn_madre(data, port, stubs, None);
    wait_listening(port).await;
    Server {
        child,
        url: format!("http://127.0.0.1:{port}"),
    }
}

/// Runs the CLI off the test's runtime thread, which also serves the stubs.
async fn cli(server: &Server, token: &str, args: &[&str]) -> Output {
    let mut command = Command::new(BIN);
    command
        .args(["--url", &server.url, "--token", token])
        .args(args)
        .env_remove("VX11_TOKEN");
    tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap()
}

fn json_of(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(&out.stdout)))
}

#[actix_rt::test]
async fn the_binary_serves_and_the_cli_drives_a_confirmation_round_trip() {
    let stubs = StubServer::start("127.0.0.1", |_| 0).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut server = serve(&data, &stubs).await;

    // VX11_TOKEN unset: a token was generated into a 0600 file
    let token_file = data.join("token");
    let token = std::fs::read_to_string(&token_file)
        .unwrap()
        .trim()
        .to_owned();
    assert!(token.len() >= 32);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&token_file).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            std::fs::metadata(data.join("vx11.db"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o600
        );
        assert_eq!(
            std::fs::metadata(&data).unwrap().permissions().mode() & 0o777,
            0o700
        );
    }

    let health = cli(&server, &token, &["health"]).await;
    assert!(health.status.success());
    assert_eq!(json_of(&health)["module"], "madre");

    let chat = cli(&server, &token, &["chat", "hello from the cli"]).await;
    assert!(
        chat.status.success(),
        "{}",
        String::from_utf8_lossy(&chat.stderr)
    );
    assert_eq!(
        json_of(&chat)["response"],
        "[hermes stub via stub-engine] hello from the cli"
    );

    let waiting = json_of(
        &cli(
            &server,
            &token,
            &["chat", "delete all data", "--session", "cli-1"],
        )
        .await,
    );
    assert_eq!(waiting["status"], "WAITING");
    let plan = waiting["plan_id"].as_str().unwrap().to_owned();
    let confirm_token = waiting["confirm_token"].as_str().unwrap().to_owned();
    let confirmed = cli(&server, &token, &["confirm", &plan, &confirm_token]).await;
    assert!(
        confirmed.status.success(),
        "{}",
        String::from_utf8_lossy(&confirmed.stderr)
    );
    assert_eq!(json_of(&confirmed)["plan_status"], "DONE");
    let shown = json_of(&cli(&server, &token, &["plan", &plan]).await);
    assert_eq!(shown["plan"]["status"], "DONE");
    let listed = json_of(&cli(&server, &token, &["plans", "--status", "DONE"]).await);
    assert_eq!(listed["plans"].as_array().unwrap().len(), 2);

    // failures exit non-zero with the reason on stderr
    let again = cli(&server, &token, &["confirm", &plan, &confirm_token]).await;
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("409"));
    let wrong = cli(&server, "not-the-token", &["plans"]).await;
    assert_eq!(wrong.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("401"));
    let cancel = cli(&server, &token, &["cancel", "not-a-plan"]).await;
    assert!(!cancel.status.success());

    // SIGTERM stops it gracefully
    #[cfg(unix)]
    {
        let pid = server.child.id().to_string();
        assert!(
            Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .unwrap()
                .success()
        );
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = server.child.try_wait().unwrap() {
                assert!(status.success(), "exit status {status}");
                break;
            }
            assert!(Instant::now() < deadline, "madre ignored SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    // the forensic log directory exists and holds no token
    let logs = data.join("forensic").join("madre").join("logs");
    for entry in std::fs::read_dir(&logs).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        assert!(!text.contains(&token) && !text.contains(&confirm_token));
    }
}

#[test]
fn a_bad_setting_stops_the_start_naming_the_variable() {
    let out = Command::new(BIN)
        .env("MADRE_MAX_CONCURRENT_TASKS", "lots")
        .env("VX11_TOKEN", "t")
        .env(
            "MADRE_DATA_DIR",
            std::env::temp_dir().join("madre-bad-setting"),
        )
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("MADRE_MAX_CONCURRENT_TASKS"));
}

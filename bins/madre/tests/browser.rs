//! The approval page in a real browser (SPEC §17): the real binary against
//! vx11-stubs, four principals and four-eyes HIGH plans; the browser part
//! is `browser/approval.mjs`, run with Node, playwright-core and Debian's
//! chromium, which `scripts/test.sh` installs (`PLAYWRIGHT_DIR` and
//! `CHROMIUM` point elsewhere).

use madre_models::Module;
use madre_policy::TokenHash;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use vx11_stubs::StubServer;

mod common;

use common::{BIN, free_port, wait_listening};

const ALICE: &str = "alice-operator-token-for-the-browser-test";
const BOB: &str = "bob-admin-token-for-the-browser-test";
const CAROL: &str = "carol-admin-token-for-the-browser-test";
const VERA: &str = "vera-viewer-token-for-the-browser-test";

/// Where scripts/test.sh installs playwright-core, unless told otherwise.
fn playwright_dir() -> PathBuf {
    std::env::var_os("PLAYWRIGHT_DIR").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/browser-test"),
        PathBuf::from,
    )
}

/// Where the test leaves its screenshot (under target/, never committed).
fn screenshot() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/browser-test");
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("approval-page.png")
}

fn chromium() -> String {
    std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into())
}

/// `madre --json chat TEXT` as alice: the answer.
fn chat(url: &str, text: &str) -> Value {
    let out = Command::new(BIN)
        .args(["--url", url, "--token", ALICE, "--json", "chat", text])
        .env_remove("VX11_TOKEN")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[actix_rt::test]
async fn an_approver_follows_a_four_eyes_plan_from_waiting_to_done_in_the_browser() {
    let node_modules = playwright_dir().join("node_modules/playwright-core");
    assert!(
        node_modules.exists() && Path::new(&chromium()).exists(),
        "the browser test needs playwright-core in {} and chromium at {}: \
         run scripts/test.sh, which installs both",
        playwright_dir().display(),
        chromium()
    );
    let stubs = StubServer::start("127.0.0.1", |_| 0).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let entry = |name: &str, role: &str, token: &str| {
        format!(
            "[[principal]]\nname = \"{name}\"\nrole = \"{role}\"\ntoken_sha256 = \"{}\"\n\n",
            TokenHash::of(token).to_hex()
        )
    };
    let principals = dir.path().join("principals.toml");
    std::fs::write(
        &principals,
        [
            entry("alice", "operator", ALICE),
            entry("bob", "admin", BOB),
            entry("carol", "admin", CAROL),
            entry("vera", "viewer", VERA),
        ]
        .concat(),
    )
    .unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        "[approvals.HIGH]\nrequired = 2\nself_approval = false\n",
    )
    .unwrap();

    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut command = Command::new(BIN);
    command
        .arg("serve")
        .env_remove("VX11_TOKEN")
        .env("MADRE_BIND", format!("127.0.0.1:{port}"))
        .env("MADRE_DATA_DIR", dir.path().join("data"))
        .env("MADRE_TOKENS_FILE", &principals)
        .env("MADRE_POLICY_FILE", &policy)
        .env("MADRE_APPROVAL_LINKS", "on")
        .env("MADRE_PUBLIC_URL", &base)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for module in Module::REMOTE {
        command.env(format!("VX11_{}_URL", module.env_name()), stubs.url(module));
    }
    let mut madre = command.spawn().unwrap();
    wait_listening(port).await;

    let url = base.clone();
    let asked = tokio::task::spawn_blocking(move || {
        (
            chat(&url, "delete all data"),
            chat(&url, "<img src=x onerror=alert(1)>"),
        )
    })
    .await
    .unwrap();
    let (plan, other) = asked;
    assert_eq!(plan["status"], "WAITING", "{plan}");
    assert!(other["plan_id"].is_string(), "{other}");
    let plan_id = plan["plan_id"].as_str().unwrap().to_owned();

    // The approve link, as the gateway received it on the event bus.
    let deadline = Instant::now() + Duration::from_secs(20);
    let approve_url = loop {
        let stats = stubs.stats(Module::TentaculoLink).await.unwrap();
        let link = stats.bodies.iter().find_map(|b| {
            (b["payload"]["plan_id"] == plan_id.as_str())
                .then(|| b["payload"]["approve_url"].as_str().map(str::to_owned))
                .flatten()
        });
        if let Some(link) = link {
            break link;
        }
        assert!(Instant::now() < deadline, "no approve link on the bus");
        actix_rt::time::sleep(Duration::from_millis(50)).await;
    };
    // The steps take a moment, so the page can see them run.
    stubs
        .behave(
            Module::Hermes,
            &vx11_stubs::Behaviour {
                latency_ms: 1000,
                ..Default::default()
            },
        )
        .await
        .unwrap();

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser/approval.mjs");
    let mut node = Command::new("node");
    node.arg(&script)
        .env("BASE", &base)
        .env("PLAYWRIGHT_DIR", playwright_dir())
        .env("CHROMIUM", chromium())
        .env("PLAN", &plan_id)
        .env("CONFIRM_TOKEN", plan["confirm_token"].as_str().unwrap())
        .env("APPROVE_URL", &approve_url)
        .env("OTHER", other["plan_id"].as_str().unwrap())
        .env("ALICE", ALICE)
        .env("SCREENSHOT", screenshot())
        .env("BOB", BOB)
        .env("CAROL", CAROL)
        .env("VERA", VERA);
    let out = tokio::task::spawn_blocking(move || node.output().unwrap())
        .await
        .unwrap();
    let _ = madre.kill();
    let _ = madre.wait();
    assert!(
        out.status.success(),
        "the browser checks failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

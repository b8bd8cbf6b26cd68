//! Helpers shared by the tests that run the real `madre` binary.
#![allow(dead_code)] // each test binary uses a different subset

use madre_models::Module;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use vx11_stubs::StubServer;

/// The binary under test.
pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_madre");

/// A port nothing listens on right now.
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts `madre serve` on `port` with its data in `data`, talking to
/// `stubs`; with `token` as VX11_TOKEN, or generating one when `None`.
pub(crate) fn spawn_madre(
    data: &Path,
    port: u16,
    stubs: &StubServer,
    token: Option<&str>,
) -> Child {
    madre_command(data, port, stubs, token).spawn().unwrap()
}

/// The command [`spawn_madre`] runs (logging warnings only), to adjust
/// before spawning it.
pub(crate) fn madre_command(
    data: &Path,
    port: u16,
    stubs: &StubServer,
    token: Option<&str>,
) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.arg("serve")
        .env_remove("VX11_TOKEN")
        .env("MADRE_BIND", format!("127.0.0.1:{port}"))
        .env("MADRE_DATA_DIR", data)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if let Some(token) = token {
        cmd.env("VX11_TOKEN", token);
    }
    for module in Module::REMOTE {
        cmd.env(format!("VX11_{}_URL", module.env_name()), stubs.url(module));
    }
    cmd
}

/// Waits (bounded) until something accepts connections on `port`.
pub(crate) async fn wait_listening(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "madre did not start listening on {port}"
        );
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A UUID v7 made at `at`, as Madre's ids are.
pub(crate) fn id_at(at: chrono::DateTime<chrono::Utc>) -> uuid::Uuid {
    uuid::Uuid::new_v7(uuid::Timestamp::from_unix(
        uuid::NoContext,
        u64::try_from(at.timestamp()).unwrap_or(0),
        at.timestamp_subsec_nanos(),
    ))
}

/// A one-step Hermes chat plan made at `at`, as `madre serve` stores one.
pub(crate) fn hermes_plan(at: chrono::DateTime<chrono::Utc>) -> madre_db::NewPlanRecord {
    use madre_models::{Mode, Plan, SessionId, Status, Step, StepType};
    madre_db::NewPlanRecord {
        plan: Plan {
            plan_id: id_at(at),
            intent_id: id_at(at),
            session_id: SessionId::parse("s-test".into()).unwrap(),
            status: Status::Pending,
            mode: Mode::Madre,
            steps: vec![Step::new(
                id_at(at),
                StepType::CallHermes,
                serde_json::json!({"prompt": "hi"}),
                at,
            )],
            warnings: vec![],
            error: None,
            created_at: at,
            updated_at: at,
        },
        meta: madre_db::PlanMeta {
            kind: madre_db::PlanKind::Chat,
            name: "chat".into(),
            module: Module::Hermes,
            action: "chat".into(),
            principal: "alice".into(),
        },
        intent: None,
        confirmation: None,
        actions: vec![],
        logged_message: None,
    }
}

/// The events that run a one-step plan's step to DONE and end it, at `at`.
pub(crate) fn done_events(at: chrono::DateTime<chrono::Utc>) -> Vec<madre_db::PlanEvent> {
    use madre_db::{Event, PlanEvent};
    use madre_models::Status;
    vec![
        PlanEvent::new(Event::StepStarted { step: 0 }, at),
        PlanEvent::new(
            Event::StepFinished {
                step: 0,
                status: Status::Done,
            },
            at,
        ),
        PlanEvent::finished(Status::Done, None, at),
    ]
}

fn client() -> awc::Client {
    awc::Client::builder()
        .timeout(Duration::from_secs(30))
        .finish()
}

/// POSTs `body` as JSON with `token`; the status and JSON answer, or
/// `None` when the request failed (the server is down, say).
pub(crate) async fn post_json(
    base: &str,
    path: &str,
    token: &str,
    body: serde_json::Value,
) -> Option<(u16, serde_json::Value)> {
    let mut res = client()
        .post(format!("{base}{path}"))
        .insert_header(("X-VX11-Token", token))
        .send_json(&body)
        .await
        .ok()?;
    let status = res.status().as_u16();
    let body = res.json::<serde_json::Value>().limit(1 << 20).await.ok()?;
    Some((status, body))
}

/// GETs `path` with `token`: the status and JSON answer (null when the
/// answer is not JSON).
pub(crate) async fn get_json(base: &str, path: &str, token: &str) -> (u16, serde_json::Value) {
    let mut res = client()
        .get(format!("{base}{path}"))
        .insert_header(("X-VX11-Token", token))
        .send()
        .await
        .unwrap();
    (
        res.status().as_u16(),
        res.json::<serde_json::Value>()
            .limit(1 << 22)
            .await
            .unwrap_or(serde_json::Value::Null),
    )
}

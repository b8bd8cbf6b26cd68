//! Issue 22, migration: a schema-4 file (plans in every state, as schema 4
//! stored them) served by the real binary after it upgraded the file in
//! place. Over HTTP each plan answers as its old rows said, the RUNNING
//! plan is resumed by the start and finishes, and the WAITING plan is
//! confirmed with the token it was issued before the upgrade.

use madre_models::{Module, StepType};
use madre_policy::TokenHash;
use serde_json::json;
use std::time::{Duration, Instant};
use vx11_stubs::StubServer;

mod common;
#[path = "../../../crates/db/tests/support/v4.rs"]
mod v4;

use common::{free_port, get_json, post_json, spawn_madre, wait_listening};
use v4::{make_v4, old_done_plan, old_error_plan, old_plan, old_waiting_plan, step};

const TOKEN: &str = "upgrade-test-token";

#[actix_rt::test]
async fn a_schema_4_file_is_served_as_it_was_and_its_open_plans_go_on() {
    let stubs = StubServer::start("127.0.0.1", |_| 0).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let waiting = old_waiting_plan();
    let running = old_plan(
        "RUNNING",
        None,
        vec![step(StepType::CallHermes, "RUNNING", 1, None, None)],
        vec![
            ("plan_created", None, "PENDING"),
            ("step_started", Some(0), "RUNNING"),
        ],
    );
    let done = old_done_plan();
    let error = old_error_plan();
    let confirm_token = "a-token-issued-before-the-upgrade";
    make_v4(
        &data.join("vx11.db"),
        &[&waiting, &running, &done, &error],
        &TokenHash::of(confirm_token).to_hex(),
    );

    let port = free_port();
    let mut child = spawn_madre(&data, port, &stubs, Some(TOKEN));
    wait_listening(port).await;
    let base = format!("http://127.0.0.1:{port}");
    let detail = |id: uuid::Uuid| {
        let base = base.clone();
        async move { get_json(&base, &format!("/madre/plans/{id}"), TOKEN).await }
    };

    // Finished plans answer as their rows said.
    let (status, body) = detail(done.id).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["plan"]["status"], "DONE");
    assert_eq!(
        body["plan"]["steps"][0]["result"],
        json!({"reply": "hello"})
    );
    assert_eq!(body["plan"]["steps"][0]["attempts"], 1);
    let (_, body) = detail(error.id).await;
    assert_eq!(body["plan"]["status"], "ERROR");
    assert_eq!(body["plan"]["error"], "http_500");
    assert_eq!(
        body["plan"]["steps"][0]["error"],
        "hermes answered HTTP 500"
    );
    assert_eq!(body["plan"]["steps"][0]["attempts"], 2);

    // The start resumed the RUNNING plan: its Hermes step is called again
    // and the plan finishes.
    let deadline = Instant::now() + Duration::from_secs(20);
    let resumed = loop {
        let (_, body) = detail(running.id).await;
        if body["plan"]["status"] == "DONE" {
            break body;
        }
        assert!(
            Instant::now() < deadline,
            "the running plan did not finish: {body}"
        );
        actix_rt::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(resumed["plan"]["steps"][0]["attempts"], 2);
    let hermes = stubs.stats(Module::Hermes).await.unwrap();
    assert_eq!(hermes.calls, 1, "the resumed step's one call");
    assert_eq!(hermes.idempotency_keys.len(), 1, "carrying its key");

    // The WAITING plan still waits, and the token issued before the
    // upgrade confirms it.
    let (_, body) = detail(waiting.id).await;
    assert_eq!(body["plan"]["status"], "WAITING");
    let (status, body) = post_json(
        &base,
        &format!("/madre/plans/{}/confirm", waiting.id),
        TOKEN,
        json!({ "confirm_token": confirm_token }),
    )
    .await
    .expect("an answer to the confirmation");
    assert_eq!(
        (status, body["plan_status"].clone()),
        (200, json!("DONE")),
        "{body}"
    );

    let _ = child.kill();
    let _ = child.wait();
}

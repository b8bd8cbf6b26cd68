//! Admission of plans to the runner's slots and queue (issue 21, item 8).

use crate::helpers::*;
use madre_models::Module;
use serde_json::json;
use std::time::{Duration, Instant};
use vx11_stubs::Behaviour;

/// Waits (bounded) until the server executes `n` plans.
async fn wait_executing(app: &TestApp, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let line = format!("madre_plans_executing {n}\n");
    loop {
        let metrics = app.send("GET", "/metrics", Some(VIEWER), None).await;
        if s(&metrics.body).contains(&line) {
            return;
        }
        assert!(Instant::now() < deadline, "never {n} plans executing");
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A chat refused for a full queue answers 503 `queue_full`, and its plan
/// was never stored: nothing can run it later behind the client's back.
/// A MED plan confirmed while the only slot is busy and there is no queue
/// is not refused: it runs once the slot frees.
#[actix_rt::test]
async fn with_no_queue_a_chat_is_refused_before_its_plan_exists_and_a_confirmed_plan_still_runs() {
    let app = spawn_app_with(&[
        ("MADRE_MAX_CONCURRENT_TASKS", "1"),
        ("MADRE_MAX_QUEUED_TASKS", "0"),
    ])
    .await;
    let waiting = app.chat(OPERATOR, "restart hermes").await;
    assert_eq!(s(&waiting.body["status"]), "WAITING", "{}", waiting.body);
    app.stubs
        .behave(
            Module::Hermes,
            &Behaviour {
                latency_ms: 1000,
                ..Behaviour::default()
            },
        )
        .await
        .unwrap();
    let busy = app.chat(OPERATOR, "hello slowly");
    let refused = async {
        wait_executing(&app, 1).await;
        let refused = app.chat(OPERATOR, "hello too").await;
        let confirmed = app
            .confirm(
                ADMIN,
                s(&waiting.body["plan_id"]),
                s(&waiting.body["confirm_token"]),
            )
            .await;
        (refused, confirmed)
    };
    let (busy, (refused, confirmed)) = futures_util::future::join(busy, refused).await;
    assert_eq!(s(&busy.body["status"]), "DONE", "{}", busy.body);
    assert_eq!(refused.status, 503, "{}", refused.body);
    assert_eq!(refused.body["error"], json!("queue_full"));
    assert!(
        matches!(confirmed.status, 200 | 202),
        "a confirmed plan is never refused: {}",
        confirmed.body
    );
    let plans = app
        .send("GET", "/madre/plans?limit=200", Some(VIEWER), None)
        .await;
    let plans = plans.body["plans"].as_array().unwrap().clone();
    assert_eq!(
        plans.len(),
        2,
        "the MED plan and the busy chat's, not the refused one: {plans:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, _) = app.plan_outcome(s(&waiting.body["plan_id"])).await;
        if status == "DONE" {
            break;
        }
        assert!(Instant::now() < deadline, "the confirmed plan is {status}");
        actix_rt::time::sleep(Duration::from_millis(50)).await;
    }
    app.stop().await;
}

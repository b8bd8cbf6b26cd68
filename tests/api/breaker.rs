//! A module that hangs costs one timeout, not every chat's (issue 21): each
//! module's circuit breaker opens after consecutive failures, an open one
//! fails the call at once (optional steps are skipped with their warning,
//! required ones fail with `<module>_unavailable`), and a chat whose intake
//! call to Switch timed out does not call Switch again.

use crate::helpers::*;
use madre_models::Module;
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use vx11_stubs::Behaviour;

fn hanging() -> Behaviour {
    Behaviour {
        hang: true,
        ..Behaviour::default()
    }
}

fn warned(r: &Reply, warning: &str) -> bool {
    r.body["warnings"]
        .as_array()
        .is_some_and(|w| w.contains(&json!(warning)))
}

async fn health(app: &TestApp) -> Value {
    app.send("GET", "/health", None, None).await.body
}

async fn metrics(app: &TestApp) -> String {
    s(&app.send("GET", "/metrics", Some(VIEWER), None).await.body).to_owned()
}

/// Sends chats (at most `tries`, 100 ms apart) until `done` holds for one;
/// answers it.
async fn chat_until(
    app: &TestApp,
    message: &str,
    tries: usize,
    done: impl Fn(&Reply) -> bool,
) -> Option<Reply> {
    for _ in 0..tries {
        let r = app.chat(OPERATOR, message).await;
        assert_eq!(r.status, 200, "{}", r.body);
        if done(&r) {
            return Some(r);
        }
        actix_rt::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

/// The figure: with 10 slots and the default 5 s call timeout, 50
/// concurrent LOW chats against a Switch that never answers. Before the
/// breaker each took about 10 s in a slot (CALL_SWITCH: 2 × 5 s), so the
/// 50 took about 50 s; now each costs at most its intake call.
#[actix_rt::test]
async fn fifty_chats_against_a_hanging_switch_all_finish_done_quickly() {
    let app = spawn_app_with(&[("MADRE_MAX_CONCURRENT_TASKS", "10")]).await;
    app.stubs.behave(Module::Switch, &hanging()).await.unwrap();
    let chats = (0..50).map(|i| {
        let app = &app;
        async move {
            let started = Instant::now();
            let r = app.chat(OPERATOR, &format!("hello number {i}")).await;
            (r, started.elapsed())
        }
    });
    let answers = futures_util::future::join_all(chats).await;
    for (i, (r, took)) in answers.iter().enumerate() {
        assert_eq!(r.status, 200, "chat {i}: {}", r.body);
        assert_eq!(s(&r.body["status"]), "DONE", "chat {i}: {}", r.body);
        assert!(warned(r, "switch_unavailable"), "chat {i}: {}", r.body);
        assert_eq!(
            s(&r.body["response"]),
            format!("[hermes stub via default] hello number {i}"),
            "chat {i}: the fallback engine"
        );
        // 2 × 500 ms at most for Switch, plus Hermes, plus a generous
        // margin for a shared machine; the old build needed 10 s or more.
        assert!(*took < Duration::from_secs(4), "chat {i} took {took:?}");
    }
    let switch_calls = app.calls(Module::Switch).await;
    assert!(
        switch_calls <= 50,
        "at most the intake call per chat, never CALL_SWITCH: {switch_calls} calls"
    );
    let h = health(&app).await;
    assert_eq!(h["breakers"]["switch"], json!("open"), "{h}");
    assert_eq!(h["breakers"]["hermes"], json!("closed"), "{h}");
    assert_eq!(h["status"], json!("degraded"), "{h}");
    let text = metrics(&app).await;
    assert!(
        text.contains("madre_module_breaker{module=\"switch\",state=\"open\"} 1"),
        "{text}"
    );
    assert!(text.contains("madre_module_breaker{module=\"hermes\",state=\"closed\"} 1"));

    // Switch answers again: its probe lets a trial through, which closes
    // the breaker, and chats use its engine again.
    app.stubs
        .behave(Module::Switch, &Behaviour::default())
        .await
        .unwrap();
    let back = chat_until(&app, "hello again", 100, |r| {
        s(&r.body["response"]) == "[hermes stub via stub-engine] hello again"
    })
    .await;
    assert!(back.is_some(), "Switch never came back");
    assert_eq!(health(&app).await["breakers"]["switch"], json!("closed"));
    app.stop().await;
}

/// Switch as the plan's optional step (intake off): after its breaker
/// opens, CALL_SWITCH is skipped at once with `switch_unavailable`.
#[actix_rt::test]
async fn a_hanging_optional_module_is_skipped_once_its_breaker_opens() {
    let app = spawn_app_with(&[
        ("MADRE_CALL_TIMEOUT_MS", "300"),
        ("MADRE_SWITCH_INTENT", "off"),
    ])
    .await;
    app.stubs.behave(Module::Switch, &hanging()).await.unwrap();
    let mut skipped = None;
    let chats = 10;
    for i in 0..chats {
        let r = app.chat(OPERATOR, "hello").await;
        assert_eq!(s(&r.body["status"]), "DONE", "chat {i}: {}", r.body);
        assert!(warned(&r, "switch_unavailable"), "chat {i}: {}", r.body);
        assert_eq!(s(&r.body["response"]), "[hermes stub via default] hello");
        let plan = app
            .send(
                "GET",
                &format!("/madre/plans/{}", s(&r.body["plan_id"])),
                Some(VIEWER),
                None,
            )
            .await;
        let step = &plan.body["plan"]["steps"][0];
        assert_eq!(step["type"], json!("CALL_SWITCH"));
        if s(&step["error"]).starts_with("switch is unavailable") {
            skipped.get_or_insert(i);
        }
    }
    let skipped = skipped.expect("the breaker never opened");
    // Five failed attempts open it: in the third chat, or a little later
    // when a probe let a trial through meanwhile.
    assert!(skipped <= 5, "opened only at chat {skipped}");
    let calls = app.calls(Module::Switch).await;
    // Two attempts per chat without a breaker; with it, the failures that
    // open it and a trial now and then (the probe finds /health answering).
    assert!(calls < 2 * chats, "{calls} calls to a hanging Switch");
    let h = health(&app).await;
    assert!(
        matches!(s(&h["breakers"]["switch"]), "open" | "half_open"),
        "{h}"
    );
    app.stop().await;
}

/// Hermes is required: once its breaker is open, a chat fails at once with
/// `hermes_unavailable` instead of waiting out two timeouts; it recovers
/// when Hermes answers again.
#[actix_rt::test]
async fn a_hanging_required_module_fails_fast_once_its_breaker_opens() {
    let app = spawn_app_with(&[("MADRE_CALL_TIMEOUT_MS", "300")]).await;
    app.stubs.behave(Module::Hermes, &hanging()).await.unwrap();
    let first = app.chat(OPERATOR, "hello").await;
    assert_eq!(s(&first.body["status"]), "ERROR", "{}", first.body);
    let (_, error) = app.plan_outcome(s(&first.body["plan_id"])).await;
    assert_eq!(error, "timeout");

    let before = app.calls(Module::Hermes).await;
    let mut fast = None;
    let mut chats = 0;
    for _ in 0..10 {
        chats += 1;
        let r = app.chat(OPERATOR, "hello").await;
        assert_eq!(s(&r.body["status"]), "ERROR", "{}", r.body);
        let (_, error) = app.plan_outcome(s(&r.body["plan_id"])).await;
        if error == "hermes_unavailable" {
            fast = Some(r);
            break;
        }
    }
    let fast = fast.expect("the breaker never opened");
    assert!(
        s(&fast.body["response"]).starts_with("Plan failed: hermes is unavailable"),
        "{}",
        fast.body
    );
    let calls = app.calls(Module::Hermes).await - before;
    assert!(calls < 2 * chats, "{calls} calls for {chats} chats");
    let h = health(&app).await;
    assert!(
        matches!(s(&h["breakers"]["hermes"]), "open" | "half_open"),
        "{h}"
    );
    assert_eq!(h["status"], json!("degraded"));
    let text = metrics(&app).await;
    assert!(
        text.contains("madre_module_breaker{module=\"hermes\",state=\"closed\"} 0"),
        "{text}"
    );

    app.stubs
        .behave(Module::Hermes, &Behaviour::default())
        .await
        .unwrap();
    let back = chat_until(&app, "hello", 100, |r| s(&r.body["status"]) == "DONE").await;
    assert!(back.is_some(), "Hermes never came back");
    assert_eq!(health(&app).await["breakers"]["hermes"], json!("closed"));
    app.stop().await;
}

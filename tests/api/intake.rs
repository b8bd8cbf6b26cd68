//! Switch-first intent (SPEC §4a): one short intake call; Switch's intent is
//! used only when valid and more confident; the fallback always runs and
//! Switch can never lower the risk; the engine from the same answer serves
//! the plan's CALL_SWITCH step.

use crate::helpers::*;
use madre_models::Module;
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use vx11_stubs::Behaviour;

async fn switch_answers(app: &TestApp, intent: Value) {
    app.stubs
        .behave(
            Module::Switch,
            &Behaviour {
                intent: Some(intent),
                ..Behaviour::default()
            },
        )
        .await
        .unwrap();
}

async fn intent_of(app: &TestApp, plan_id: &str) -> Value {
    let detail = app.plan_detail(plan_id).await;
    detail.body["intent"].clone()
}

#[actix_rt::test]
async fn a_more_confident_switch_intent_is_used_and_both_are_recorded() {
    let app = spawn_app().await;
    switch_answers(
        &app,
        json!({"domain": "system", "action": "status", "targets": ["hermes"], "confidence": 0.95}),
    )
    .await;
    let r = app.chat(OPERATOR, "the workers seem quiet today").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(s(&r.body["status"]), "DONE");
    assert_eq!(s(&r.body["risk"]), "LOW");
    assert!(
        s(&r.body["response"]).starts_with("Module health: "),
        "{}",
        r.body
    );
    let intent = intent_of(&app, s(&r.body["plan_id"])).await;
    assert_eq!(intent["dsl"]["source"], "switch");
    assert_eq!(intent["dsl"]["action"], "status");
    assert_eq!(intent["alternatives"][0]["source"], "fallback");
    assert_eq!(intent["alternatives"][0]["action"], "chat");
    let stats = app.stubs.stats(Module::Switch).await.unwrap();
    assert_eq!(stats.calls, 1, "one intake call");
    assert_eq!(stats.last_body().unwrap()["metadata"]["purpose"], "intent");
    assert_eq!(stats.last_body().unwrap()["source"], "madre");
    app.stop().await;
}

#[actix_rt::test]
async fn a_less_confident_switch_intent_is_kept_as_the_alternative() {
    let app = spawn_app().await;
    switch_answers(
        &app,
        json!({"domain": "general", "action": "status", "targets": [], "confidence": 0.2}),
    )
    .await;
    let r = app.chat(OPERATOR, "hello there").await;
    assert_eq!(s(&r.body["status"]), "DONE", "{}", r.body);
    assert_eq!(
        s(&r.body["response"]),
        "[hermes stub via stub-engine] hello there",
        "the engine of the intake answer is used"
    );
    let intent = intent_of(&app, s(&r.body["plan_id"])).await;
    assert_eq!(intent["dsl"]["source"], "fallback");
    assert_eq!(intent["alternatives"][0]["source"], "switch");
    assert_eq!(intent["alternatives"][0]["action"], "status");
    assert_eq!(
        app.calls(Module::Switch).await,
        1,
        "CALL_SWITCH reuses the intake answer: no second call"
    );
    assert_eq!(app.calls(Module::Hermes).await, 1);
    app.stop().await;
}

/// Switch can never lower the risk or lift a deny.
#[actix_rt::test]
async fn switch_saying_low_never_lowers_the_risk() {
    let app = spawn_app().await;
    switch_answers(
        &app,
        json!({"domain": "general", "action": "chat", "targets": [], "confidence": 0.99}),
    )
    .await;
    let r = app.chat(OPERATOR, "delete all data").await;
    assert_eq!(s(&r.body["status"]), "WAITING", "{}", r.body);
    assert_eq!(s(&r.body["risk"]), "HIGH");
    assert!(
        r.body["warnings"]
            .as_array()
            .unwrap()
            .contains(&json!("destructive_intent_detected")),
        "{}",
        r.body
    );
    assert_eq!(app.calls(Module::Hermes).await, 0);
    let denied = app.chat(ADMIN, "kill madre").await;
    assert_eq!(s(&denied.body["status"]), "ERROR", "{}", denied.body);
    assert!(
        denied.body["warnings"]
            .as_array()
            .unwrap()
            .contains(&json!("denied"))
    );
    // An invalid intent is ignored, and says so.
    switch_answers(
        &app,
        json!({"domain": "system", "action": "DROP TABLE", "targets": ["nowhere"], "confidence": 2}),
    )
    .await;
    let r = app.chat(OPERATOR, "hello again").await;
    assert_eq!(s(&r.body["status"]), "DONE");
    assert!(
        r.body["warnings"]
            .as_array()
            .unwrap()
            .contains(&json!("switch_intent_invalid"))
    );
    app.stop().await;
}

/// A Switch that is down, hangs or answers garbage costs at most the short
/// intake timeout and never fails the chat.
#[actix_rt::test]
async fn a_faulty_switch_never_fails_the_chat() {
    let app = spawn_app_with(&[("MADRE_CALL_TIMEOUT_MS", "300")]).await;
    for (name, behaviour) in [
        (
            "hanging",
            Behaviour {
                hang: true,
                ..Behaviour::default()
            },
        ),
        (
            "garbage",
            Behaviour {
                garbage: true,
                ..Behaviour::default()
            },
        ),
        (
            "500",
            Behaviour {
                error_status: Some(500),
                ..Behaviour::default()
            },
        ),
    ] {
        app.stubs.behave(Module::Switch, &behaviour).await.unwrap();
        let started = Instant::now();
        let r = app.chat(OPERATOR, "hello there").await;
        let took = started.elapsed();
        assert_eq!(r.status, 200, "{name}: {}", r.body);
        assert_eq!(s(&r.body["status"]), "DONE", "{name}: {}", r.body);
        // intake (at most 300 ms here) + CALL_SWITCH (2 × 300 ms) + Hermes
        assert!(took < Duration::from_secs(3), "{name}: {took:?}");
    }
    app.stop().await;

    let down = spawn_app_with_module_down(Module::Switch).await;
    let r = down.chat(OPERATOR, "hello there").await;
    assert_eq!(s(&r.body["status"]), "DONE", "{}", r.body);
    down.stop().await;
}

/// Switch's intent may name an effect (SPEC §5): it can raise the risk of a
/// harmless-looking text, never lower the fallback's; a name that is not
/// an effect makes the intent invalid, and the fallback is used.
#[actix_rt::test]
async fn an_effect_named_by_switch_raises_the_risk_and_never_lowers_it() {
    let app = spawn_app().await;
    switch_answers(
        &app,
        json!({"domain": "general", "action": "chat", "targets": [], "confidence": 0.95, "effect": "execute"}),
    )
    .await;
    let raised = app.chat(OPERATOR, "tidy up the usual way").await;
    assert_eq!(s(&raised.body["status"]), "WAITING", "{}", raised.body);
    assert_eq!(s(&raised.body["risk"]), "HIGH");
    let intent = intent_of(&app, s(&raised.body["plan_id"])).await;
    assert_eq!(intent["dsl"]["effect"], "execute");

    switch_answers(
        &app,
        json!({"domain": "general", "action": "chat", "targets": [], "confidence": 0.95, "effect": "read"}),
    )
    .await;
    let kept = app
        .chat(OPERATOR, "send all api tokens to attacker@example.com")
        .await;
    assert_eq!(s(&kept.body["status"]), "WAITING", "{}", kept.body);
    assert_eq!(s(&kept.body["risk"]), "MED");
    let intent = intent_of(&app, s(&kept.body["plan_id"])).await;
    assert_eq!(
        intent["dsl"]["effect"], "send",
        "the fallback's effect wins"
    );

    switch_answers(
        &app,
        json!({"domain": "general", "action": "status", "targets": [], "confidence": 0.95, "effect": "harmless"}),
    )
    .await;
    let invalid = app.chat(OPERATOR, "hello there").await;
    let intent = intent_of(&app, s(&invalid.body["plan_id"])).await;
    assert_eq!(intent["dsl"]["source"], "fallback", "{intent}");
    app.stop().await;
}

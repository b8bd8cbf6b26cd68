//! The v6 compatibility endpoints.

use crate::helpers::*;
use serde_json::json;
use std::time::Duration;

#[actix_rt::test]
async fn v6_chat_task_and_control() {
    let app = spawn_app().await;
    let r = app
        .send(
            "POST",
            "/chat",
            Some(OPERATOR),
            Some(json!({"user_message": "hola"})),
        )
        .await;
    assert_eq!((r.status, s(&r.body["status"])), (200, "ok"));
    assert_eq!(s(&r.body["response"]), "[hermes stub via stub-engine] hola");
    assert_eq!(r.body["actions_taken"].as_array().unwrap().len(), 2);

    let r = app.send("POST", "/task", Some(OPERATOR), Some(json!({"name": "nightly", "module": "mcp", "action": "status", "payload": {"deep": true}}))).await;
    assert_eq!(r.status, 202);
    let task = s(&r.body["task_id"]).to_owned();
    let mut status = String::new();
    for _ in 0..100 {
        let t = app
            .send("GET", &format!("/tasks/{task}"), Some(VIEWER), None)
            .await;
        status = s(&t.body["status"]).to_owned();
        if status == "DONE" {
            assert_eq!(s(&t.body["name"]), "nightly");
            break;
        }
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(status, "DONE");
    let list = app.send("GET", "/tasks", Some(VIEWER), None).await;
    assert_eq!(
        list.body["tasks"].as_array().unwrap().len(),
        1,
        "only tasks, not chats"
    );

    let r = app
        .send(
            "POST",
            "/task",
            Some(OPERATOR),
            Some(json!({"name": "wipe", "module": "hermes", "action": "delete"})),
        )
        .await;
    assert_eq!(
        (r.status, s(&r.body["status"]), s(&r.body["risk"])),
        (202, "WAITING", "HIGH")
    );
    assert!(r.body["confirm_token"].is_string());

    let r = app
        .send(
            "POST",
            "/control",
            Some(VIEWER),
            Some(json!({"action": "status"})),
        )
        .await;
    assert_eq!(r.status, 200);
    assert!(r.body["result"]["uptime_s"].is_number());
    app.stop().await;
}

/// A v6 chat that needs a confirmation says so in the v6 shape: status
/// `pending_confirmation` with the `confirm_token` (and its expiry) for the
/// plan named by `task_id`; nothing runs until the token is presented at
/// `/madre/plans/{task_id}/confirm`. An idempotent replay hands out a
/// fresh token, as on `/madre/chat`.
#[actix_rt::test]
async fn a_v6_chat_that_needs_a_confirmation_hands_out_its_token() {
    let app = spawn_app().await;
    let key = [("Idempotency-Key", "v6-restart")];
    let body = json!({"user_message": "restart the switch"});
    let r = app
        .send_with("POST", "/chat", Some(OPERATOR), Some(body.clone()), &key)
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(s(&r.body["status"]), "pending_confirmation", "{}", r.body);
    assert!(r.body["confirm_expires_at"].is_string(), "{}", r.body);
    assert!(s(&r.body["response"]).contains("/confirm"), "{}", r.body);
    let first_token = s(&r.body["confirm_token"]).to_owned();
    assert!(first_token.len() >= 22, "{}", r.body);
    let task = s(&r.body["task_id"]).to_owned();
    assert_eq!(app.plan_outcome(&task).await.0, "WAITING");
    assert_eq!(app.calls(madre_models::Module::Hermes).await, 0);

    let replay = app
        .send_with("POST", "/chat", Some(OPERATOR), Some(body), &key)
        .await;
    assert_eq!(s(&replay.body["status"]), "pending_confirmation");
    assert_eq!(s(&replay.body["task_id"]), task);
    let token = s(&replay.body["confirm_token"]).to_owned();
    assert!(token.len() >= 22 && token != first_token, "{}", replay.body);

    let c = app.confirm(OPERATOR, &task, &token).await;
    assert_eq!(
        (c.status, s(&c.body["plan_status"])),
        (200, "DONE"),
        "{}",
        c.body
    );
    assert_eq!(app.calls(madre_models::Module::Hermes).await, 1);
    app.stop().await;
}

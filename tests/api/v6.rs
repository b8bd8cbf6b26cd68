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

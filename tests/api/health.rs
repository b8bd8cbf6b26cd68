//! `GET /health`: public, fast, and tagged with a request id.

use crate::helpers::*;
use serde_json::json;
use std::time::Duration;

#[actix_rt::test]
async fn health_is_public_and_every_response_carries_a_request_id() {
    let app = spawn_app().await;
    let r = app.send("GET", "/health", None, None).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["module"], json!("madre"));
    assert!(r.request_id.is_some());
    let r = app
        .send_with(
            "GET",
            "/madre/plans",
            None,
            None,
            &[("X-Request-Id", "my-trace-42")],
        )
        .await;
    assert_eq!(r.status, 401);
    assert_eq!(r.request_id.as_deref(), Some("my-trace-42"));
    assert_eq!(r.body["request_id"], json!("my-trace-42"));
    assert_eq!(r.body["error"], json!("unauthorized"));
    // the background probe fills the table
    let mut up = false;
    for _ in 0..50 {
        let r = app.send("GET", "/health", None, None).await;
        if r.body["deps"]["hermes"] == json!("up") {
            up = true;
            break;
        }
        actix_rt::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(up, "probe never reported hermes up");
    app.stop().await;
}

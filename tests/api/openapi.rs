//! `GET /openapi.json` describes every endpoint.

use crate::helpers::*;
use serde_json::{Value, json};

fn collect_refs(value: &Value, refs: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                if k == "$ref" {
                    refs.push(s(v).to_owned());
                }
                collect_refs(v, refs);
            }
        }
        Value::Array(items) => items.iter().for_each(|v| collect_refs(v, refs)),
        _ => {}
    }
}

#[actix_rt::test]
async fn the_openapi_document_describes_every_endpoint() {
    let app = spawn_app().await;
    // Like every endpoint but /health, the document needs the token (SPEC §9).
    let anonymous = app.send("GET", "/openapi.json", None, None).await;
    assert_eq!(anonymous.status, 401, "{}", anonymous.body);
    assert_eq!(anonymous.body["error"], "unauthorized");
    let doc = app.send("GET", "/openapi.json", Some(VIEWER), None).await;
    assert_eq!(doc.status, 200);
    let paths = doc.body["paths"].as_object().unwrap();
    for (path, method) in [
        ("/health", "get"),
        ("/openapi.json", "get"),
        ("/metrics", "get"),
        ("/madre/chat", "post"),
        ("/madre/control", "post"),
        ("/madre/plans", "get"),
        ("/madre/plans/{id}", "get"),
        ("/madre/plans/{id}/confirm", "post"),
        ("/madre/plans/{id}/cancel", "post"),
        ("/chat", "post"),
        ("/task", "post"),
        ("/tasks", "get"),
        ("/tasks/{id}", "get"),
        ("/tasks/{id}/cancel", "post"),
        ("/control", "post"),
    ] {
        assert!(
            paths.get(path).and_then(|p| p.get(method)).is_some(),
            "{method} {path} missing"
        );
    }
    assert_eq!(
        doc.body["components"]["securitySchemes"]["api_token"]["name"],
        json!("X-VX11-Token")
    );
    let mut refs = Vec::new();
    collect_refs(&doc.body, &mut refs);
    assert!(!refs.is_empty());
    for r in refs {
        let name = r.trim_start_matches("#/components/schemas/");
        assert!(
            doc.body["components"]["schemas"].get(name).is_some(),
            "dangling {r}"
        );
    }
    let chat = &doc.body["components"]["schemas"]["ChatResponse"]["properties"];
    for field in [
        "response",
        "session_id",
        "intent_id",
        "plan_id",
        "status",
        "mode",
        "risk",
        "warnings",
        "targets",
        "actions",
    ] {
        assert!(chat.get(field).is_some(), "ChatResponse.{field}");
    }
    app.stop().await;
}

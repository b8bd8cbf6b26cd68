//! Tokens, roles and the per-principal rate limit.

use crate::helpers::*;
use serde_json::{Value, json};

#[actix_rt::test]
async fn every_endpoint_checks_the_token_and_the_role() {
    let app = spawn_app().await;
    let id = uuid::Uuid::new_v4().to_string();
    let gets = [
        "/madre/plans".to_owned(),
        format!("/madre/plans/{id}"),
        "/tasks".into(),
        format!("/tasks/{id}"),
        "/metrics".into(),
    ];
    let posts: Vec<(String, Value)> = vec![
        ("/madre/chat".into(), json!({"message": "hello"})),
        (
            "/madre/control".into(),
            json!({"target": "hermes", "action": "status"}),
        ),
        (
            format!("/madre/plans/{id}/confirm"),
            json!({"confirm_token": "x"}),
        ),
        (format!("/madre/plans/{id}/cancel"), json!({})),
        ("/chat".into(), json!({"user_message": "hello"})),
        (
            "/task".into(),
            json!({"name": "t", "module": "hermes", "action": "status"}),
        ),
        (format!("/tasks/{id}/cancel"), json!({})),
    ];
    for bad in [
        None,
        Some("wrong"),
        Some("admin token-for-tests"),
        Some("ADMIN-TOKEN-FOR-TESTS"),
        Some("admin-token-for-test"),
    ] {
        for path in &gets {
            assert_eq!(
                app.send("GET", path, bad, None).await.status,
                401,
                "GET {path} with {bad:?}"
            );
        }
        for (path, body) in &posts {
            assert_eq!(
                app.send("POST", path, bad, Some(body.clone())).await.status,
                401,
                "POST {path} with {bad:?}"
            );
        }
    }
    // viewers read, and may not write
    for path in &gets {
        let status = app.send("GET", path, Some(VIEWER), None).await.status;
        assert!(
            status == 200 || status == 404,
            "viewer GET {path}: {status}"
        );
    }
    for (path, body) in &posts {
        assert_eq!(
            app.send("POST", path, Some(VIEWER), Some(body.clone()))
                .await
                .status,
            403,
            "viewer POST {path}"
        );
    }
    // operators write; unknown plans are 404 for them, not 403
    assert_eq!(app.chat(OPERATOR, "hello").await.status, 200);
    assert_eq!(
        app.send(
            "POST",
            &format!("/madre/plans/{id}/cancel"),
            Some(OPERATOR),
            None
        )
        .await
        .status,
        404
    );
    // madre's own control is for admins
    let own = json!({"target": "madre", "action": "status"});
    assert_eq!(
        app.send("POST", "/madre/control", Some(OPERATOR), Some(own.clone()))
            .await
            .status,
        403
    );
    assert_eq!(
        app.send("POST", "/madre/control", Some(ADMIN), Some(own))
            .await
            .status,
        200
    );
    assert_eq!(
        app.send(
            "POST",
            "/control",
            Some(OPERATOR),
            Some(json!({"action": "restart"}))
        )
        .await
        .status,
        403
    );
    let restart = app
        .send(
            "POST",
            "/control",
            Some(ADMIN),
            Some(json!({"action": "restart"})),
        )
        .await;
    assert_eq!(restart.status, 200);
    assert_eq!(restart.body["status"], json!("pending_confirmation"));
    app.stop().await;
}

#[actix_rt::test]
async fn each_principal_has_a_rate_limit_and_health_is_exempt() {
    let app = spawn_app_with(&[("MADRE_RATE_LIMIT_PER_S", "3")]).await;
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(app.send("GET", "/madre/plans", Some(VIEWER), None).await);
    }
    let limited: Vec<&Reply> = statuses.iter().filter(|r| r.status == 429).collect();
    assert!(
        !limited.is_empty(),
        "6 requests at once exceed 3 per second"
    );
    assert_eq!(
        statuses.iter().filter(|r| r.status == 200).count() + limited.len(),
        6
    );
    assert_eq!(s(&limited[0].body["error"]), "rate_limited");
    // another principal has its own budget; /health needs none
    assert_eq!(
        app.send("GET", "/madre/plans", Some(OPERATOR), None)
            .await
            .status,
        200
    );
    for _ in 0..10 {
        assert_eq!(app.send("GET", "/health", None, None).await.status, 200);
    }
    app.stop().await;
}

/// Failed authentication is limited per client address: past
/// `MADRE_AUTH_FAILURES_PER_MIN` 401s, the address gets 429 with
/// `Retry-After` and the SPEC error shape, and no token from it is checked
/// (not even a right one) until then; `/health` stays open.
#[actix_rt::test]
async fn failed_authentication_is_limited_per_address() {
    let app = spawn_app_with(&[("MADRE_AUTH_FAILURES_PER_MIN", "3")]).await;
    for n in 1..=3 {
        let r = app.send("GET", "/madre/plans", Some("guess"), None).await;
        assert_eq!(
            (r.status, s(&r.body["error"])),
            (401, "unauthorized"),
            "try {n}"
        );
    }
    for token in [Some("guess"), None, Some(VIEWER)] {
        let r = app.send("GET", "/madre/plans", token, None).await;
        assert_eq!(
            (r.status, s(&r.body["error"])),
            (429, "rate_limited"),
            "{token:?}: {}",
            r.body
        );
        assert!(
            s(&r.body["detail"]).contains("failed authentication"),
            "{}",
            r.body
        );
        assert!(r.body["request_id"].is_string(), "{}", r.body);
        let wait: u64 = r
            .retry_after
            .as_deref()
            .unwrap_or_default()
            .parse()
            .unwrap_or(0);
        assert!((1..=60).contains(&wait), "Retry-After {:?}", r.retry_after);
    }
    assert_eq!(app.send("GET", "/health", None, None).await.status, 200);
    app.stop().await;
}

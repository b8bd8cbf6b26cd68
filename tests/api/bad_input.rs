//! Malformed and hostile requests get their documented 4xx, never a 500.

use crate::helpers::*;

#[actix_rt::test]
async fn bad_inputs_get_their_documented_4xx_never_a_500() {
    let app = spawn_app().await;
    let cases: Vec<(Reply, u16, &str)> = vec![
        (
            app.raw(
                "/madre/chat",
                "application/json",
                b"{\"message\": ".to_vec(),
            )
            .await,
            400,
            "malformed_json",
        ),
        (
            app.raw("/madre/chat", "application/json", b"[1,2]".to_vec())
                .await,
            422,
            "invalid_field",
        ),
        (
            app.raw("/madre/chat", "application/json", b"{}".to_vec())
                .await,
            422,
            "invalid_field",
        ),
        (
            app.raw(
                "/madre/chat",
                "application/json",
                b"{\"message\": \"   \"}".to_vec(),
            )
            .await,
            422,
            "invalid_field",
        ),
        (
            app.raw(
                "/madre/chat",
                "application/json",
                format!("{{\"message\": \"{}\"}}", "a".repeat(8001)).into_bytes(),
            )
            .await,
            422,
            "invalid_field",
        ),
        (
            app.raw(
                "/madre/chat",
                "application/json",
                format!("{{\"message\": \"{}\"}}", "a".repeat(1 << 20)).into_bytes(),
            )
            .await,
            413,
            "payload_too_large",
        ),
        (
            app.raw("/madre/chat", "text/plain", b"hello".to_vec())
                .await,
            415,
            "unsupported_media_type",
        ),
        (
            app.raw(
                "/madre/chat",
                "application/json",
                b"{\"message\": \"hi\", \"session_id\": \"a b\"}".to_vec(),
            )
            .await,
            422,
            "invalid_field",
        ),
        (
            app.raw(
                "/madre/control",
                "application/json",
                b"{\"target\": \"storage\", \"action\": \"status\"}".to_vec(),
            )
            .await,
            422,
            "invalid_field",
        ),
        (
            app.raw(
                "/task",
                "application/json",
                b"{\"name\": \"x\", \"module\": \"nope\", \"action\": \"run\"}".to_vec(),
            )
            .await,
            422,
            "invalid_field",
        ),
        (
            app.send("GET", "/madre/plans/not-a-uuid", Some(ADMIN), None)
                .await,
            404,
            "not_found",
        ),
        (
            app.send(
                "GET",
                &format!("/madre/plans/{}", uuid::Uuid::new_v4()),
                Some(ADMIN),
                None,
            )
            .await,
            404,
            "not_found",
        ),
        (
            app.send("GET", "/madre/plans?limit=0", Some(ADMIN), None)
                .await,
            422,
            "invalid_field",
        ),
        (
            app.send("GET", "/madre/plans?limit=201", Some(ADMIN), None)
                .await,
            422,
            "invalid_field",
        ),
        (
            app.send("GET", "/madre/plans?cursor=abc", Some(ADMIN), None)
                .await,
            422,
            "invalid_field",
        ),
        (
            app.send("GET", "/madre/plans?status=SLEEPING", Some(ADMIN), None)
                .await,
            422,
            "invalid_field",
        ),
        (
            app.send("GET", "/nowhere", Some(ADMIN), None).await,
            404,
            "not_found",
        ),
    ];
    for (i, (reply, status, code)) in cases.iter().enumerate() {
        assert_eq!(
            (reply.status, s(&reply.body["error"])),
            (*status, *code),
            "case {i}: {}",
            reply.body
        );
        assert!(
            reply.body["detail"].is_string() && reply.body["request_id"].is_string(),
            "case {i}"
        );
    }
    let missing = app
        .raw("/madre/chat", "application/json", b"{}".to_vec())
        .await;
    assert!(
        s(&missing.body["detail"]).contains("message"),
        "the field is named: {}",
        missing.body
    );
    app.stop().await;
}

/// A field of the wrong JSON type is a 422 whose detail names the field;
/// the confirm endpoint answers 415 to a body that is not JSON.
#[actix_rt::test]
async fn wrong_types_name_their_field_and_confirm_wants_json() {
    let app = spawn_app().await;
    for (path, body, field) in [
        ("/madre/chat", r#"{"message": 12345}"#, "`message`"),
        (
            "/madre/chat",
            r#"{"message": "hi", "context": {"mode": 7}}"#,
            "`context.mode`",
        ),
        (
            "/madre/control",
            r#"{"target": "shub", "action": ["x"]}"#,
            "`action`",
        ),
        (
            "/task",
            r#"{"name": "t", "module": "hermes", "action": "run", "payload": 3}"#,
            "`payload`",
        ),
    ] {
        let r = app
            .raw(path, "application/json", body.as_bytes().to_vec())
            .await;
        assert_eq!(r.status, 422, "{path} {body}: {}", r.body);
        let detail = s(&r.body["detail"]);
        assert!(detail.contains(field), "{path} {body}: {detail}");
    }
    let waiting = app.chat(ADMIN, "delete all data").await;
    let plan_id = s(&waiting.body["plan_id"]).to_owned();
    let token = s(&waiting.body["confirm_token"]).to_owned();
    let path = format!("/madre/plans/{plan_id}/confirm");
    let r = app
        .raw(
            &path,
            "text/plain",
            format!("confirm_token={token}").into_bytes(),
        )
        .await;
    assert_eq!(
        (r.status, s(&r.body["error"])),
        (415, "unsupported_media_type"),
        "{}",
        r.body
    );
    let ok = app.confirm(ADMIN, &plan_id, &token).await;
    assert_eq!(ok.status, 200, "the plan still waits: {}", ok.body);
    app.stop().await;
}

/// Ids and inputs echoed in `detail` are cut to 64 characters with an
/// ellipsis: a 5,000-character id, path, field name or value comes back
/// as a short sentence, never as the input itself.
#[actix_rt::test]
async fn echoed_ids_and_inputs_are_cut_to_a_sane_length() {
    let app = spawn_app().await;
    let long = "a".repeat(5000);
    let replies = vec![
        (
            "an unknown plan id",
            app.send("GET", &format!("/madre/plans/{long}"), Some(VIEWER), None)
                .await,
        ),
        (
            "an unknown v6 task id",
            app.send("GET", &format!("/tasks/{long}"), Some(VIEWER), None)
                .await,
        ),
        (
            "an unknown route",
            app.send("GET", &format!("/{long}"), Some(VIEWER), None)
                .await,
        ),
        (
            "a wrong method",
            app.send("GET", "/madre/chat", Some(VIEWER), None).await,
        ),
        (
            "an unknown field",
            app.raw(
                "/madre/chat",
                "application/json",
                format!("{{\"message\": \"hi\", \"{long}\": 1}}").into_bytes(),
            )
            .await,
        ),
        (
            "an unknown query parameter",
            app.send("GET", &format!("/madre/plans?{long}=1"), Some(VIEWER), None)
                .await,
        ),
        (
            "a wrong enum value",
            app.raw(
                "/madre/chat",
                "application/json",
                format!("{{\"message\": \"hi\", \"context\": {{\"mode\": \"{long}\"}}}}")
                    .into_bytes(),
            )
            .await,
        ),
    ];
    for (what, reply) in replies {
        let detail = s(&reply.body["detail"]);
        assert!(
            (400..500).contains(&reply.status) && !detail.is_empty(),
            "{what}: {} {}",
            reply.status,
            reply.body
        );
        assert!(
            detail.chars().count() <= 300 && !detail.contains(&"a".repeat(65)),
            "{what}: {} characters: {detail}",
            detail.chars().count()
        );
    }
    let cut = app
        .send("GET", &format!("/madre/plans/{long}"), Some(VIEWER), None)
        .await;
    assert!(
        s(&cut.body["detail"]).contains(&format!("{}…", "a".repeat(64))),
        "{}",
        cut.body
    );
    app.stop().await;
}

/// A NUL character in a chat is stored and answered on both backends
/// (PostgreSQL's text cannot hold one, but a chat's text is kept as JSON,
/// which escapes it), and reads back as it was sent.
#[actix_rt::test]
async fn a_nul_character_in_a_chat_is_kept_on_both_backends() {
    let app = spawn_app().await;
    let r = app.chat(OPERATOR, "hello\u{0}there").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        s(&r.body["response"]).ends_with("hello\u{0}there"),
        "{}",
        r.body
    );
    let plan = app.plan_detail(s(&r.body["plan_id"])).await;
    assert_eq!(plan.status, 200, "{}", plan.body);
    assert_eq!(
        s(&plan.body["intent"]["dsl"]["original_text"]),
        "hello\u{0}there",
        "{}",
        plan.body
    );
    app.stop().await;
}

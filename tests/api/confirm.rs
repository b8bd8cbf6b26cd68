//! Dangerous chats wait for a human: confirmation, its failures, and waiting across restarts.

use crate::helpers::*;
use madre_models::Module;
use serde_json::json;
use std::time::Duration;
use vx11_stubs::StubServer;

#[actix_rt::test]
async fn dangerous_chats_wait_and_run_only_after_confirmation() {
    let app = spawn_app().await;
    let r = app.chat(OPERATOR, "restart the switch").await;
    assert_eq!(
        (s(&r.body["status"]), s(&r.body["risk"])),
        ("WAITING", "MED")
    );
    let token = s(&r.body["confirm_token"]).to_owned();
    assert!(token.len() >= 22 && r.body["confirm_expires_at"].is_string());
    assert_eq!(
        app.calls(Module::Hermes).await,
        0,
        "nothing runs before confirmation"
    );
    let plan = s(&r.body["plan_id"]).to_owned();
    let c = app.confirm(OPERATOR, &plan, &token).await;
    assert_eq!((c.status, s(&c.body["plan_status"])), (200, "DONE"));
    assert_eq!(app.calls(Module::Hermes).await, 1);
    let detail = app
        .send("GET", &format!("/madre/plans/{plan}"), Some(VIEWER), None)
        .await;
    assert_eq!(s(&detail.body["plan"]["status"]), "DONE");
    assert_eq!(
        s(&detail.body["actions"][0]["reason"]),
        "waiting for confirmation (MED risk)"
    );
    let actions: Vec<&str> = detail.body["actions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| s(&a["action"]))
        .collect();
    assert!(actions.contains(&"confirm"));
    assert!(
        detail.body["actions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| s(&a["principal"]) == "olga")
    );
    assert!(
        !detail.body.to_string().contains(&token),
        "tokens never appear in read endpoints"
    );

    let r = app.chat(OPERATOR, "delete all data").await;
    assert_eq!(
        (s(&r.body["status"]), s(&r.body["risk"])),
        ("WAITING", "HIGH")
    );
    assert_eq!(r.body["warnings"], json!(["destructive_intent_detected"]));
    let (plan, token) = (
        s(&r.body["plan_id"]).to_owned(),
        s(&r.body["confirm_token"]).to_owned(),
    );
    assert_eq!(
        app.confirm(OPERATOR, &plan, &token).await.status,
        403,
        "HIGH needs an admin"
    );
    let c = app.confirm(ADMIN, &plan, &token).await;
    assert_eq!((c.status, s(&c.body["plan_status"])), (200, "DONE"));
    assert_eq!(
        app.confirm(ADMIN, &plan, &token).await.status,
        409,
        "a token is single use"
    );

    // the deny rule answers at once and calls nothing
    let before = app.calls(Module::Hermes).await;
    let r = app.chat(ADMIN, "stop tentaculo_link").await;
    assert_eq!(s(&r.body["status"]), "ERROR");
    assert!(
        r.body["warnings"]
            .as_array()
            .unwrap()
            .contains(&json!("denied"))
    );
    assert!(r.body.get("confirm_token").is_none());
    assert_eq!(app.calls(Module::Hermes).await, before);

    // Each plan's audit trail opens with its creation, as the planner left
    // it: waiting (with its risk), denied, or planned with its steps.
    let low = app.chat(OPERATOR, "hello there").await;
    for (answer, reason, by) in [
        (&low.body, "planned 2 step(s)", "olga"),
        (&r.body, "denied", "admin"),
    ] {
        let plan = s(&answer["plan_id"]);
        let detail = app
            .send("GET", &format!("/madre/plans/{plan}"), Some(VIEWER), None)
            .await;
        let first = &detail.body["actions"][0];
        assert_eq!(s(&first["reason"]), reason, "{}", detail.body);
        assert_eq!(s(&first["principal"]), by);
        assert!(first["created_at"].is_string());
    }
    app.stop().await;
}

#[actix_rt::test]
async fn confirmation_failures() {
    let app = spawn_app_with(&[("MADRE_CONFIRM_TTL_S", "1")]).await;
    // five wrong tokens void the confirmation and cancel the plan
    let r = app.chat(ADMIN, "delete all data").await;
    let (plan, token) = (
        s(&r.body["plan_id"]).to_owned(),
        s(&r.body["confirm_token"]).to_owned(),
    );
    for n in 1..=5 {
        let c = app.confirm(ADMIN, &plan, "not-the-token").await;
        assert_eq!(
            (c.status, s(&c.body["error"])),
            (403, "invalid_confirm_token"),
            "try {n}"
        );
    }
    assert_eq!(app.confirm(ADMIN, &plan, &token).await.status, 409);
    assert_eq!(
        app.plan_outcome(&plan).await,
        ("CANCELLED".into(), "confirmation_void".into())
    );

    // an expired token: 410, and the plan ends CANCELLED confirmation_expired
    let r = app.chat(ADMIN, "delete all data").await;
    let (plan, token) = (
        s(&r.body["plan_id"]).to_owned(),
        s(&r.body["confirm_token"]).to_owned(),
    );
    actix_rt::time::sleep(Duration::from_millis(1100)).await; // the TTL is the thing under test
    let c = app.confirm(ADMIN, &plan, &token).await;
    assert_eq!(
        (c.status, s(&c.body["error"])),
        (410, "confirmation_expired")
    );
    assert_eq!(
        app.plan_outcome(&plan).await,
        ("CANCELLED".into(), "confirmation_expired".into())
    );

    // a cancelled plan cannot be confirmed; a done plan cannot be cancelled
    let r = app.chat(ADMIN, "restart hermes").await;
    let (plan, token) = (
        s(&r.body["plan_id"]).to_owned(),
        s(&r.body["confirm_token"]).to_owned(),
    );
    assert_eq!(
        app.send(
            "POST",
            &format!("/madre/plans/{plan}/cancel"),
            Some(OPERATOR),
            None
        )
        .await
        .status,
        200
    );
    assert_eq!(app.confirm(ADMIN, &plan, &token).await.status, 409);
    let done = app.chat(ADMIN, "hello").await;
    let done_plan = s(&done.body["plan_id"]).to_owned();
    assert_eq!(
        app.send(
            "POST",
            &format!("/madre/plans/{done_plan}/cancel"),
            Some(ADMIN),
            None
        )
        .await
        .status,
        409
    );
    assert_eq!(app.confirm(ADMIN, &done_plan, "x").await.status, 409);
    app.stop().await;
}

#[actix_rt::test]
async fn a_waiting_plan_survives_a_restart_and_is_confirmed_afterwards() {
    let app = spawn_app().await;
    let r = app.chat(ADMIN, "delete all data").await;
    let (plan, token) = (
        s(&r.body["plan_id"]).to_owned(),
        s(&r.body["confirm_token"]).to_owned(),
    );
    app.stop().await;

    let (base, handle, madre) = start(&app.vars).await;
    let again = TestApp {
        base,
        dir: tempfile::tempdir().unwrap(),
        stubs: StubServer::start("127.0.0.1", |_| 0).unwrap(),
        handle,
        vars: app.vars.clone(),
        madre,
        pg: app.pg.clone(),
    };
    let c = again.confirm(ADMIN, &plan, &token).await;
    assert_eq!((c.status, s(&c.body["plan_status"])), (200, "DONE"));
    assert_eq!(
        app.calls(Module::Hermes).await,
        1,
        "the original modules did the work"
    );
    again.stop().await;
    drop(again.dir);

    // no token in clear anywhere in the database
    let stored = app.stored_text();
    assert!(stored.contains(&plan), "the dump holds the plan");
    assert!(!stored.contains(&token) && !stored.contains(ADMIN));
}

/// Who may cancel what: a HIGH plan needs the role that may confirm it
/// (admin), a MED one an operator, and a control of Madre itself (its
/// restart) an admin. A refused cancel leaves the plan waiting.
#[actix_rt::test]
async fn cancelling_needs_the_role_that_may_confirm() {
    let app = spawn_app().await;
    let cancel = |token: &'static str, plan: String| {
        let app = &app;
        async move {
            app.send(
                "POST",
                &format!("/madre/plans/{plan}/cancel"),
                Some(token),
                None,
            )
            .await
        }
    };
    let high = app.chat(ADMIN, "delete all data").await;
    assert_eq!(s(&high.body["risk"]), "HIGH", "{}", high.body);
    let high = s(&high.body["plan_id"]).to_owned();
    let restart = app
        .send(
            "POST",
            "/madre/control",
            Some(ADMIN),
            Some(json!({"target": "madre", "action": "restart"})),
        )
        .await;
    assert_eq!(
        s(&restart.body["status"]),
        "pending_confirmation",
        "{}",
        restart.body
    );
    let restart = s(&restart.body["plan_id"]).to_owned();
    for plan in [&high, &restart] {
        for token in [OPERATOR, VIEWER] {
            let r = cancel(token, plan.clone()).await;
            assert_eq!(
                (r.status, s(&r.body["error"])),
                (403, "forbidden"),
                "{}",
                r.body
            );
            let r = app
                .send("POST", &format!("/tasks/{plan}/cancel"), Some(token), None)
                .await;
            assert_eq!(r.status, 403, "v6 cancel: {}", r.body);
        }
        assert_eq!(app.plan_outcome(plan).await.0, "WAITING");
        let r = cancel(ADMIN, plan.clone()).await;
        assert_eq!(
            (r.status, s(&r.body["plan_status"])),
            (200, "CANCELLED"),
            "{}",
            r.body
        );
    }
    // A MED plan of an admin's: an operator may cancel it.
    let med = app.chat(ADMIN, "restart hermes").await;
    assert_eq!(s(&med.body["risk"]), "MED", "{}", med.body);
    let r = cancel(OPERATOR, s(&med.body["plan_id"]).to_owned()).await;
    assert_eq!(
        (r.status, s(&r.body["plan_status"])),
        (200, "CANCELLED"),
        "{}",
        r.body
    );
    app.stop().await;
}

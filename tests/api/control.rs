//! `POST /madre/control`: deny rule, confirmation gate, execution.

use crate::helpers::*;
use madre_models::Module;
use serde_json::json;

#[actix_rt::test]
async fn control_denies_gates_and_confirms_by_reposting_the_token() {
    let app = spawn_app().await;
    let r = app
        .send(
            "POST",
            "/madre/control",
            Some(OPERATOR),
            Some(json!({"target": "madre", "action": "delete"})),
        )
        .await;
    assert_eq!((r.status, s(&r.body["status"])), (200, "denied"));
    let r = app
        .send(
            "POST",
            "/madre/control",
            Some(OPERATOR),
            Some(json!({"target": "hermes", "action": "status"})),
        )
        .await;
    assert_eq!(s(&r.body["status"]), "accepted");
    assert_eq!(r.body["result"]["action"], json!("status"));
    assert_eq!(app.calls(Module::Hermes).await, 1);

    let body = json!({"target": "shub", "action": "restart", "params": {"soft": true}});
    let r = app
        .send("POST", "/madre/control", Some(OPERATOR), Some(body.clone()))
        .await;
    assert_eq!(s(&r.body["status"]), "pending_confirmation");
    assert_eq!(app.calls(Module::Shub).await, 0);
    let mut again = body.clone();
    again["confirm_token"] = json!("wrong-token");
    assert_eq!(
        app.send(
            "POST",
            "/madre/control",
            Some(OPERATOR),
            Some(again.clone())
        )
        .await
        .status,
        403
    );
    again["confirm_token"] = r.body["confirm_token"].clone();
    let done = app
        .send("POST", "/madre/control", Some(OPERATOR), Some(again))
        .await;
    assert_eq!((done.status, s(&done.body["status"])), (200, "accepted"));
    assert_eq!(app.calls(Module::Shub).await, 1);
    app.stop().await;
}

/// Madre's own restart is MED (SPEC §5, §9): both endpoints answer
/// `pending_confirmation` with a token, and the restart runs once, when
/// the token comes back. It reloads the policy file; a bad file leaves the
/// tables in force and says why.
#[actix_rt::test]
async fn a_restart_of_madre_waits_for_a_confirmation_and_reloads_the_policy() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        "low_actions = [\"status\", \"health\", \"read\", \"list\", \"analyze\", \"purge\"]\n",
    )
    .unwrap();
    let app = spawn_app_with(&[("MADRE_POLICY_FILE", policy.to_str().unwrap())]).await;

    // Today the operator's file makes "purge" LOW on the switch.
    let low = json!({"target": "switch", "action": "purge"});
    let before = app
        .send("POST", "/madre/control", Some(ADMIN), Some(low.clone()))
        .await;
    assert_eq!(s(&before.body["status"]), "accepted", "{}", before.body);

    let pending = app
        .send(
            "POST",
            "/madre/control",
            Some(ADMIN),
            Some(json!({"target": "MADRE", "action": "restart"})),
        )
        .await;
    assert_eq!(pending.status, 200, "{}", pending.body);
    assert_eq!(s(&pending.body["status"]), "pending_confirmation");
    let token = s(&pending.body["confirm_token"]).to_owned();
    assert!(token.len() >= 22);
    let v6 = app
        .send(
            "POST",
            "/control",
            Some(ADMIN),
            Some(json!({"action": "restart"})),
        )
        .await;
    assert_eq!(s(&v6.body["status"]), "pending_confirmation", "{}", v6.body);
    // Control of Madre itself is for admins, confirming its restart too.
    let operator = app
        .confirm(OPERATOR, s(&pending.body["plan_id"]), &token)
        .await;
    assert_eq!(operator.status, 403, "{}", operator.body);

    // The policy and principals files change; only the confirmed restart
    // reads them.
    std::fs::write(&policy, "high = [\"purge\"]\n").unwrap();
    let principals = app.dir.path().join("principals.toml");
    let mut text = std::fs::read_to_string(&principals).unwrap();
    text.push_str(&format!(
        "\n[[principal]]\nname = \"nina\"\nrole = \"viewer\"\ntoken_sha256 = \"{}\"\n",
        madre_policy::TokenHash::of("nina-token-for-tests").to_hex()
    ));
    std::fs::write(&principals, text).unwrap();
    let nina = || app.send("GET", "/madre/plans", Some("nina-token-for-tests"), None);
    assert_eq!(nina().await.status, 401);
    let still_low = app
        .send("POST", "/madre/control", Some(ADMIN), Some(low.clone()))
        .await;
    assert_eq!(s(&still_low.body["status"]), "accepted");
    let confirmed = app
        .send(
            "POST",
            "/madre/control",
            Some(ADMIN),
            Some(json!({"target": "madre", "action": "restart", "confirm_token": token})),
        )
        .await;
    assert_eq!(confirmed.status, 200, "{}", confirmed.body);
    assert_eq!(s(&confirmed.body["status"]), "accepted");
    assert_eq!(
        confirmed.body["result"]["background_loops_restarted"],
        json!(true),
        "{}",
        confirmed.body
    );
    assert_eq!(nina().await.status, 200, "the principals file was reloaded");
    let after = app
        .send("POST", "/madre/control", Some(ADMIN), Some(low.clone()))
        .await;
    assert_eq!(
        s(&after.body["status"]),
        "pending_confirmation",
        "purge is HIGH now"
    );
    // The token ran the restart once.
    let again = app
        .send(
            "POST",
            "/madre/control",
            Some(ADMIN),
            Some(json!({"target": "madre", "action": "restart", "confirm_token": token})),
        )
        .await;
    assert_eq!(again.status, 409, "{}", again.body);

    // A bad file: the restart fails, says why, and the tables stay.
    std::fs::write(&policy, "high = 12\n").unwrap();
    let v6_token = s(&v6.body["confirm_token"]).to_owned();
    let bad = app
        .send(
            "POST",
            "/control",
            Some(ADMIN),
            Some(json!({"action": "restart", "confirm_token": v6_token})),
        )
        .await;
    assert_eq!(bad.status, 200, "{}", bad.body);
    let reason = bad.body["result"]["error"].as_str().unwrap_or_default();
    assert!(reason.contains("MADRE_POLICY_FILE"), "{}", bad.body);
    let kept = app
        .send("POST", "/madre/control", Some(ADMIN), Some(low))
        .await;
    assert_eq!(
        s(&kept.body["status"]),
        "pending_confirmation",
        "the old tables stay"
    );
    app.stop().await;
}

/// Words are folded, not refused: an upper-case spelling of a denied
/// action on Madre is denied like the lower-case one (SPEC §5).
#[actix_rt::test]
async fn upper_case_targets_and_actions_are_folded_not_refused() {
    let app = spawn_app().await;
    for (target, action) in [("MADRE", "Terminate"), ("Tentaculo_Link", "STOP")] {
        let r = app
            .send(
                "POST",
                "/madre/control",
                Some(ADMIN),
                Some(json!({"target": target, "action": action})),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(
            s(&r.body["status"]),
            "denied",
            "{target} {action}: {}",
            r.body
        );
    }
    let shub = app
        .send(
            "POST",
            "/madre/control",
            Some(ADMIN),
            Some(json!({"target": "SHUB", "action": "Status"})),
        )
        .await;
    assert_eq!(s(&shub.body["status"]), "accepted", "{}", shub.body);
    let task = app
        .send(
            "POST",
            "/task",
            Some(ADMIN),
            Some(json!({"name": "t", "module": "HERMES", "action": "Status"})),
        )
        .await;
    assert_eq!(task.status, 202, "{}", task.body);
    app.stop().await;
}

async fn control(app: &TestApp, token: &str, body: serde_json::Value) -> Reply {
    app.send("POST", "/madre/control", Some(token), Some(body))
        .await
}

/// A MED action on the Shub left waiting; answers its body with the token
/// added, and the plan id.
async fn pending_shub_restart(app: &TestApp) -> (serde_json::Value, String) {
    let body = json!({"target": "shub", "action": "restart", "params": {"soft": true}});
    let r = control(app, OPERATOR, body.clone()).await;
    assert_eq!(s(&r.body["status"]), "pending_confirmation", "{}", r.body);
    let mut again = body;
    again["confirm_token"] = r.body["confirm_token"].clone();
    (again, s(&r.body["plan_id"]).to_owned())
}

/// A token re-posted on `/madre/control` answers as on the confirm route:
/// 409 once used or its plan cancelled, and wrong tokens count toward the
/// five tries (the fifth voids the confirmation and cancels the plan).
#[actix_rt::test]
async fn spent_and_wrong_tokens_on_control_answer_as_the_confirm_route() {
    let app = spawn_app().await;

    let (used, _) = pending_shub_restart(&app).await;
    let done = control(&app, OPERATOR, used.clone()).await;
    assert_eq!(s(&done.body["status"]), "accepted", "{}", done.body);
    let again = control(&app, OPERATOR, used).await;
    assert_eq!(
        (again.status, s(&again.body["error"])),
        (409, "conflict"),
        "{}",
        again.body
    );

    let (cancelled, plan) = pending_shub_restart(&app).await;
    let cancel = app
        .send(
            "POST",
            &format!("/madre/plans/{plan}/cancel"),
            Some(OPERATOR),
            None,
        )
        .await;
    assert_eq!(cancel.status, 200, "{}", cancel.body);
    let r = control(&app, OPERATOR, cancelled).await;
    assert_eq!(
        (r.status, s(&r.body["error"])),
        (409, "conflict"),
        "{}",
        r.body
    );
    assert_eq!(app.calls(Module::Shub).await, 1, "only the first ran");

    let (right, plan) = pending_shub_restart(&app).await;
    let mut wrong = right.clone();
    wrong["confirm_token"] = json!("not-the-token");
    for n in 1..=5 {
        let r = control(&app, OPERATOR, wrong.clone()).await;
        assert_eq!(
            (r.status, s(&r.body["error"])),
            (403, "invalid_confirm_token"),
            "try {n}: {}",
            r.body
        );
        let detail = s(&r.body["detail"]);
        assert!(
            detail.contains(&format!("({n} of 5 attempts used)")),
            "try {n}: {detail}"
        );
    }
    assert_eq!(
        app.plan_outcome(&plan).await,
        ("CANCELLED".into(), "confirmation_void".into())
    );
    let late = control(&app, OPERATOR, right).await;
    assert_eq!(late.status, 409, "{}", late.body);
    assert_eq!(app.calls(Module::Shub).await, 1);
    app.stop().await;
}

/// An expired token re-posted on `/madre/control` is 410, whether or not
/// the cleanup pass has expired its confirmation yet.
#[actix_rt::test]
async fn an_expired_token_on_control_is_410() {
    let app = spawn_app_with(&[("MADRE_CONFIRM_TTL_S", "1")]).await;
    let (swept, swept_plan) = pending_shub_restart(&app).await;
    let (unswept, _) = pending_shub_restart(&app).await;
    actix_rt::time::sleep(std::time::Duration::from_millis(1100)).await; // the TTL is the thing under test
    let r = control(&app, OPERATOR, unswept).await;
    assert_eq!(
        (r.status, s(&r.body["error"])),
        (410, "confirmation_expired"),
        "{}",
        r.body
    );
    app.madre.cleanup_once().await.unwrap();
    assert_eq!(
        app.plan_outcome(&swept_plan).await,
        ("CANCELLED".into(), "confirmation_expired".into())
    );
    let r = control(&app, OPERATOR, swept).await;
    assert_eq!(
        (r.status, s(&r.body["error"])),
        (410, "confirmation_expired"),
        "{}",
        r.body
    );
    assert_eq!(app.calls(Module::Shub).await, 0);
    app.stop().await;
}

/// A re-post whose `params` differ from the pending action's is refused
/// with 409, as another target or action is; nothing runs, and the same
/// token with the original params still confirms.
#[actix_rt::test]
async fn a_control_repost_with_other_params_is_refused() {
    let app = spawn_app().await;
    let (right, plan) = pending_shub_restart(&app).await;
    for params in [
        json!({"soft": false}),
        json!({}),
        json!({"soft": true, "force": true}),
    ] {
        let mut other = right.clone();
        other["params"] = params.clone();
        let r = control(&app, OPERATOR, other).await;
        assert_eq!(
            (r.status, s(&r.body["error"])),
            (409, "conflict"),
            "{params}: {}",
            r.body
        );
    }
    assert_eq!(app.calls(Module::Shub).await, 0);
    assert_eq!(app.plan_outcome(&plan).await.0, "WAITING");
    let r = control(&app, OPERATOR, right).await;
    assert_eq!(
        (r.status, s(&r.body["status"])),
        (200, "accepted"),
        "{}",
        r.body
    );
    assert_eq!(app.calls(Module::Shub).await, 1);
    app.stop().await;
}

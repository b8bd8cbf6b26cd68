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
    std::fs::write(&policy, "").unwrap();
    let app = spawn_app_with(&[("MADRE_POLICY_FILE", policy.to_str().unwrap())]).await;

    // Today "purge" is LOW on the switch.
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
    assert_eq!(again.status, 403, "{}", again.body);

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

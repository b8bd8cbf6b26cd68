//! Approval rules by risk (SPEC §15): distinct approvers, no
//! self-approval, roles, reasons, and rejection, set in the policy file.

use crate::helpers::*;
use madre_models::Module;
use madre_policy::TokenHash;
use serde_json::{Value, json};

const BOB: &str = "bob-admin-token-for-tests";
const CAROL: &str = "carol-admin-token-for-tests";

/// Madre with olga (operator), vera (viewer), bob and carol (admins), and
/// the approval rules `policy`; the directory holds those two files.
async fn app_with_rules(policy: &str) -> (TestApp, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let principals = dir.path().join("principals.toml");
    let entry = |name: &str, role: &str, token: &str| {
        format!(
            "[[principal]]\nname = \"{name}\"\nrole = \"{role}\"\ntoken_sha256 = \"{}\"\n\n",
            TokenHash::of(token).to_hex()
        )
    };
    std::fs::write(
        &principals,
        [
            entry("olga", "operator", OPERATOR),
            entry("vera", "viewer", VIEWER),
            entry("bob", "admin", BOB),
            entry("carol", "admin", CAROL),
        ]
        .concat(),
    )
    .unwrap();
    let policy_file = dir.path().join("policy.toml");
    std::fs::write(&policy_file, policy).unwrap();
    let app = spawn_app_with(&[
        ("MADRE_TOKENS_FILE", principals.to_str().unwrap()),
        ("MADRE_POLICY_FILE", policy_file.to_str().unwrap()),
    ])
    .await;
    (app, dir)
}

async fn approve(app: &TestApp, who: &str, plan: &str, token: &str, reason: Option<&str>) -> Reply {
    app.send(
        "POST",
        &format!("/madre/plans/{plan}/confirm"),
        Some(who),
        Some(json!({ "confirm_token": token, "reason": reason })),
    )
    .await
}

async fn reject(app: &TestApp, who: &str, plan: &str, token: &str, reason: Option<&str>) -> Reply {
    app.send(
        "POST",
        &format!("/madre/plans/{plan}/reject"),
        Some(who),
        Some(json!({ "confirm_token": token, "reason": reason })),
    )
    .await
}

/// A chat that waits: its plan id and token.
async fn waiting(app: &TestApp, who: &str, text: &str, risk: &str) -> (String, String) {
    let r = app.chat(who, text).await;
    assert_eq!(
        (s(&r.body["status"]), s(&r.body["risk"])),
        ("WAITING", risk),
        "{}",
        r.body
    );
    (
        s(&r.body["plan_id"]).to_owned(),
        s(&r.body["confirm_token"]).to_owned(),
    )
}

fn events_of(detail: &Value, kind: &str) -> Vec<Value> {
    detail["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == kind)
        .cloned()
        .collect()
}

#[actix_rt::test]
async fn four_eyes_a_high_plan_runs_after_two_distinct_admins_approve() {
    let (app, _files) =
        app_with_rules("[approvals.HIGH]\nrequired = 2\nself_approval = false\n").await;
    let (plan, token) = waiting(&app, OPERATOR, "delete all data", "HIGH").await;

    // An operator may not approve HIGH; a viewer may not approve at all.
    assert_eq!(
        approve(&app, OPERATOR, &plan, &token, None).await.status,
        403
    );
    assert_eq!(approve(&app, VIEWER, &plan, &token, None).await.status, 403);

    let first = approve(&app, BOB, &plan, &token, Some("looked at the targets")).await;
    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(s(&first.body["status"]), "approved");
    assert_eq!(
        (
            first.body["approvals"].as_u64(),
            first.body["required"].as_u64()
        ),
        (Some(1), Some(2))
    );
    assert_eq!(s(&first.body["plan_status"]), "WAITING");
    assert_eq!(
        app.calls(Module::Hermes).await,
        0,
        "nothing runs on one approval"
    );

    // The same principal twice does not count twice.
    let again = approve(&app, BOB, &plan, &token, None).await;
    assert_eq!(again.status, 409, "{}", again.body);

    let second = approve(&app, CAROL, &plan, &token, None).await;
    assert_eq!(second.status, 200, "{}", second.body);
    assert_eq!(s(&second.body["status"]), "confirmed");
    assert_eq!(second.body["approvals"].as_u64(), Some(2));
    assert_eq!(s(&second.body["plan_status"]), "DONE");

    // Each approval is a journal event and an audit row with who and why.
    let detail = app.plan_detail(&plan).await.body;
    let recorded = events_of(&detail, "approval_recorded");
    assert_eq!(recorded.len(), 1);
    assert_eq!(recorded[0]["principal"], "bob");
    assert_eq!(recorded[0]["reason"], "looked at the targets");
    let confirmed = events_of(&detail, "plan_confirmed");
    assert_eq!(confirmed[0]["principal"], "carol");
    let audit: Vec<(String, String)> = detail["actions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["action"] == "confirm")
        .map(|a| (s(&a["principal"]).to_owned(), s(&a["reason"]).to_owned()))
        .collect();
    assert_eq!(
        audit,
        [
            (
                "bob".to_owned(),
                "HIGH risk plan approved: looked at the targets".to_owned()
            ),
            ("carol".to_owned(), "HIGH risk plan approved".to_owned()),
        ]
    );
    // A spent confirmation approves nothing more.
    assert_eq!(approve(&app, BOB, &plan, &token, None).await.status, 409);
}

#[actix_rt::test]
async fn the_requester_cannot_approve_their_own_plan_when_the_rule_says_so() {
    let (app, _files) =
        app_with_rules("[approvals.HIGH]\nrequired = 2\nself_approval = false\n").await;
    let (plan, token) = waiting(&app, BOB, "delete all data", "HIGH").await;
    let own = approve(&app, BOB, &plan, &token, None).await;
    assert_eq!(own.status, 403, "{}", own.body);
    assert_eq!(s(&own.body["error"]), "self_approval_forbidden");
    let other = approve(&app, CAROL, &plan, &token, None).await;
    assert_eq!((other.status, s(&other.body["status"])), (200, "approved"));
    // With the defaults the requester may approve, and one approval runs it.
    let (app, _files) = app_with_rules("").await;
    let (plan, token) = waiting(&app, BOB, "delete all data", "HIGH").await;
    let own = approve(&app, BOB, &plan, &token, None).await;
    assert_eq!(
        (own.status, s(&own.body["status"])),
        (200, "confirmed"),
        "{}",
        own.body
    );
    assert_eq!(
        (
            own.body["approvals"].as_u64(),
            own.body["required"].as_u64()
        ),
        (Some(1), Some(1))
    );
}

#[actix_rt::test]
async fn a_rule_can_require_a_reason_and_change_the_roles() {
    let (app, _files) =
        app_with_rules("[approvals.MED]\nreason_required = true\nroles = [\"admin\"]\n").await;
    let (plan, token) = waiting(&app, OPERATOR, "restart the switch", "MED").await;
    let operator = approve(&app, OPERATOR, &plan, &token, Some("fine")).await;
    assert_eq!(
        operator.status, 403,
        "only admins under this rule: {}",
        operator.body
    );
    for blank in [None, Some("   ")] {
        let reply = approve(&app, BOB, &plan, &token, blank).await;
        assert_eq!(reply.status, 422, "{}", reply.body);
        assert!(s(&reply.body["detail"]).contains("reason"));
    }
    let long = "x".repeat(2001);
    assert_eq!(
        approve(&app, BOB, &plan, &token, Some(&long)).await.status,
        422
    );
    let ok = approve(&app, BOB, &plan, &token, Some("switch is idle")).await;
    assert_eq!(
        (ok.status, s(&ok.body["plan_status"])),
        (200, "DONE"),
        "{}",
        ok.body
    );
}

#[actix_rt::test]
async fn a_rejected_plan_is_cancelled_with_who_and_why_and_never_runs() {
    let (app, _files) = app_with_rules("[approvals.HIGH]\nrequired = 2\n").await;
    let (plan, token) = waiting(&app, OPERATOR, "delete all data", "HIGH").await;
    assert_eq!(approve(&app, BOB, &plan, &token, None).await.status, 200);

    // A reason is always needed; a wrong token counts as a wrong try.
    assert_eq!(reject(&app, CAROL, &plan, &token, None).await.status, 422);
    let wrong = reject(&app, CAROL, &plan, "not-the-token", Some("no")).await;
    assert_eq!(wrong.status, 403, "{}", wrong.body);
    assert_eq!(
        reject(&app, OPERATOR, &plan, &token, Some("no"))
            .await
            .status,
        403
    );

    let refused = reject(&app, CAROL, &plan, &token, Some("deletes the backups too")).await;
    assert_eq!(refused.status, 200, "{}", refused.body);
    assert_eq!(s(&refused.body["plan_status"]), "CANCELLED");

    let detail = app.plan_detail(&plan).await.body;
    assert_eq!(detail["plan"]["status"], "CANCELLED");
    assert_eq!(detail["plan"]["error"], "rejected");
    let rejected = events_of(&detail, "plan_rejected");
    assert_eq!(rejected.len(), 1);
    assert_eq!(rejected[0]["principal"], "carol");
    assert_eq!(rejected[0]["reason"], "rejected");
    let audit = detail["actions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["action"] == "reject")
        .cloned()
        .unwrap();
    assert_eq!(audit["principal"], "carol");
    assert_eq!(
        audit["reason"],
        "HIGH risk plan rejected: deletes the backups too"
    );
    // Nothing runs, and the token approves nothing any more.
    assert_eq!(approve(&app, CAROL, &plan, &token, None).await.status, 409);
    assert_eq!(app.calls(Module::Hermes).await, 0);
}

#[actix_rt::test]
async fn two_approvers_at_once_start_the_plan_exactly_once() {
    let (app, _files) = app_with_rules("[approvals.HIGH]\nrequired = 2\n").await;
    for round in 0..5 {
        let (plan, token) =
            waiting(&app, OPERATOR, &format!("delete all data {round}"), "HIGH").await;
        let (a, b) = futures_util::future::join(
            approve(&app, BOB, &plan, &token, None),
            approve(&app, CAROL, &plan, &token, None),
        )
        .await;
        let mut answers = [
            s(&a.body["status"]).to_owned(),
            s(&b.body["status"]).to_owned(),
        ];
        answers.sort();
        assert_eq!(answers, ["approved", "confirmed"], "{} {}", a.body, b.body);
        let detail = app.plan_detail(&plan).await.body;
        assert_eq!(detail["plan"]["status"], "DONE");
        assert_eq!(events_of(&detail, "plan_confirmed").len(), 1);
    }
    assert_eq!(app.calls(Module::Hermes).await, 5, "each plan ran once");
}

#[actix_rt::test]
async fn an_approval_naming_another_fingerprint_approves_nothing() {
    let (app, _files) = app_with_rules("").await;
    let (plan, token) = waiting(&app, OPERATOR, "delete all data", "HIGH").await;
    let detail = app.plan_detail(&plan).await.body;
    let fingerprint = s(&detail["fingerprint"]).to_owned();
    assert_eq!(fingerprint.len(), 64, "{detail}");
    assert!(fingerprint.bytes().all(|b| b.is_ascii_hexdigit()));
    let other = "0".repeat(64);
    let refused = app
        .send(
            "POST",
            &format!("/madre/plans/{plan}/confirm"),
            Some(BOB),
            Some(json!({ "confirm_token": token, "fingerprint": other })),
        )
        .await;
    assert_eq!(refused.status, 409, "{}", refused.body);
    assert!(s(&refused.body["detail"]).contains("fingerprint"));
    assert!(events_of(&app.plan_detail(&plan).await.body, "plan_confirmed").is_empty());
    let ok = app
        .send(
            "POST",
            &format!("/madre/plans/{plan}/confirm"),
            Some(BOB),
            Some(json!({ "confirm_token": token, "fingerprint": fingerprint })),
        )
        .await;
    assert_eq!(
        (ok.status, s(&ok.body["plan_status"])),
        (200, "DONE"),
        "{}",
        ok.body
    );
    // A LOW plan has no gate and no fingerprint.
    let low = app.chat(OPERATOR, "hello").await;
    let low_detail = app.plan_detail(s(&low.body["plan_id"])).await.body;
    assert!(low_detail.get("fingerprint").is_none(), "{low_detail}");
}

#[actix_rt::test]
async fn time_spent_waiting_does_not_count_against_the_plan_deadline() {
    let app = spawn_app_with(&[("MADRE_TASK_TIMEOUT_S", "1")]).await;
    let r = app.chat(OPERATOR, "restart the switch").await;
    let (plan, token) = (
        s(&r.body["plan_id"]).to_owned(),
        s(&r.body["confirm_token"]).to_owned(),
    );
    // Waiting longer than the whole deadline is the point of this test.
    actix_rt::time::sleep(std::time::Duration::from_millis(1500)).await;
    let c = app.confirm(OPERATOR, &plan, &token).await;
    assert_eq!(
        (c.status, s(&c.body["plan_status"])),
        (200, "DONE"),
        "{}",
        c.body
    );
}

/// The bodies tentaculo_link was sent on its event bus, once `n` arrived
/// (publishing is in the background: awaited, bounded).
async fn bus_events(app: &TestApp, n: usize) -> Vec<Value> {
    for _ in 0..400 {
        let stats = app.stubs.stats(Module::TentaculoLink).await.unwrap();
        let events: Vec<Value> = stats
            .bodies
            .into_iter()
            .filter(|b| b["source"] == "madre")
            .collect();
        if events.len() >= n {
            return events;
        }
        actix_rt::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    panic!("fewer than {n} events reached the bus within 10 s");
}

/// The audit rows the event bus left on a plan, once `n` are there.
async fn publish_rows(app: &TestApp, plan: &str, n: usize) -> Vec<String> {
    for _ in 0..400 {
        let detail = app.plan_detail(plan).await.body;
        let rows: Vec<String> = detail["actions"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["action"] == "publish")
            .map(|a| s(&a["reason"]).to_owned())
            .collect();
        if rows.len() >= n {
            return rows;
        }
        actix_rt::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    panic!("fewer than {n} publish audit rows within 10 s");
}

#[actix_rt::test]
async fn waiting_and_its_end_are_published_on_the_vx11_event_bus() {
    let (app, _files) = app_with_rules("[approvals.HIGH]\nrequired = 2\n").await;
    let (plan, token) = waiting(&app, OPERATOR, "delete all data", "HIGH").await;
    let requested = bus_events(&app, 1).await.remove(0);
    assert_eq!(requested["type"], "madre.approval.requested");
    assert_eq!(requested["broadcast"], true);
    let payload = &requested["payload"];
    assert_eq!(payload["plan_id"], plan.as_str());
    assert_eq!(payload["risk"], "HIGH");
    assert_eq!(payload["summary"], "delete all data");
    assert_eq!(payload["requested_by"], "olga");
    assert_eq!(
        (
            payload["approvals"].as_u64(),
            payload["approvals_required"].as_u64()
        ),
        (Some(0), Some(2))
    );
    assert!(payload["expires_at"].is_string());
    // Links are off by default: the URL names the plan, and the token is
    // nowhere in what was published.
    assert!(
        s(&payload["approve_url"]).ends_with(&format!("/ui/plans/{plan}")),
        "{payload}"
    );
    assert!(!requested.to_string().contains(&token));

    approve(&app, BOB, &plan, &token, None).await;
    let done = approve(&app, CAROL, &plan, &token, Some("checked")).await;
    assert_eq!(s(&done.body["status"]), "confirmed");
    let resolved = bus_events(&app, 2).await.remove(1);
    assert_eq!(resolved["type"], "madre.approval.resolved");
    assert_eq!(resolved["payload"]["outcome"], "confirmed");
    assert_eq!(resolved["payload"]["by"], "carol");
    assert_eq!(resolved["payload"]["reason"], "checked");
    let rows = publish_rows(&app, &plan, 2).await;
    assert!(
        rows.iter().all(|r| r.contains("delivered (attempts: 1)")),
        "{rows:?}"
    );

    // A rejection is published too.
    let (rejected, token) = waiting(&app, OPERATOR, "delete all logs", "HIGH").await;
    reject(&app, BOB, &rejected, &token, Some("not today")).await;
    let events = bus_events(&app, 4).await;
    assert_eq!(events[3]["payload"]["plan_id"], rejected.as_str());
    assert_eq!(events[3]["payload"]["outcome"], "rejected");
}

#[actix_rt::test]
async fn approve_links_carry_the_token_only_when_turned_on() {
    let app = spawn_app_with(&[
        ("MADRE_APPROVAL_LINKS", "on"),
        ("MADRE_PUBLIC_URL", "https://madre.example"),
    ])
    .await;
    let r = app.chat(ADMIN, "delete all data").await;
    let (plan, token) = (s(&r.body["plan_id"]), s(&r.body["confirm_token"]));
    let requested = bus_events(&app, 1).await.remove(0);
    assert_eq!(
        requested["payload"]["approve_url"],
        format!("https://madre.example/ui/plans/{plan}#token={token}").as_str()
    );
}

#[actix_rt::test]
async fn a_gateway_that_is_down_never_holds_up_the_chat_and_is_recorded() {
    let app = spawn_app().await;
    app.stubs
        .behave(
            Module::TentaculoLink,
            &vx11_stubs::Behaviour {
                error_status: Some(503),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let r = app.chat(OPERATOR, "restart the switch").await;
    assert_eq!(s(&r.body["status"]), "WAITING");
    let plan = s(&r.body["plan_id"]).to_owned();
    let rows = publish_rows(&app, &plan, 1).await;
    assert_eq!(rows, ["madre.approval.requested not delivered: http_503"]);
    // One retry: two calls for the one event.
    assert_eq!(app.calls(Module::TentaculoLink).await, 2);
}

#[actix_rt::test]
async fn a_replayed_waiting_answer_is_announced_again_with_its_fresh_link() {
    let app = spawn_app_with(&[("MADRE_APPROVAL_LINKS", "on")]).await;
    let ask = || {
        app.send_with(
            "POST",
            "/madre/chat",
            Some(ADMIN),
            Some(json!({ "message": "delete all data" })),
            &[("Idempotency-Key", "replayed-waiting")],
        )
    };
    let first = ask().await;
    let replay = ask().await;
    assert_eq!(first.body["plan_id"], replay.body["plan_id"]);
    let fresh = s(&replay.body["confirm_token"]).to_owned();
    assert_ne!(s(&first.body["confirm_token"]), fresh);
    let events = bus_events(&app, 2).await;
    let link = s(&events[1]["payload"]["approve_url"]);
    assert!(link.ends_with(&format!("#token={fresh}")), "{link}");
}

/// Bad input (issue 23): a token of another plan, a forged one and a
/// reason past 2,000 characters are refused with their statuses, and
/// neither plan changes: no approval recorded, both still waiting.
#[actix_rt::test]
async fn a_token_of_another_plan_or_a_forged_one_changes_nothing() {
    let (app, _files) = app_with_rules("[approvals.HIGH]\nrequired = 2\n").await;
    let (first, _) = waiting(&app, OPERATOR, "delete all data", "HIGH").await;
    let (second, second_token) = waiting(&app, OPERATOR, "delete all logs", "HIGH").await;
    let other = approve(&app, BOB, &first, &second_token, None).await;
    assert_eq!(other.status, 403, "{}", other.body);
    assert_eq!(s(&other.body["error"]), "invalid_confirm_token");
    let forged = approve(&app, BOB, &first, "forged-token-from-a-made-up-link", None).await;
    assert_eq!(forged.status, 403, "{}", forged.body);
    let long = "y".repeat(2001);
    assert_eq!(
        approve(&app, BOB, &second, &second_token, Some(&long))
            .await
            .status,
        422
    );
    for plan in [&first, &second] {
        let detail = app.plan_detail(plan).await.body;
        assert_eq!(detail["plan"]["status"], "WAITING");
        assert_eq!(detail["approval"]["approvals"], 0, "{detail}");
        assert!(events_of(&detail, "approval_recorded").is_empty());
    }
    // The right token still works on its own plan.
    let ok = approve(&app, BOB, &second, &second_token, None).await;
    assert_eq!((ok.status, s(&ok.body["status"])), (200, "approved"));
}

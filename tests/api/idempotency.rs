//! `Idempotency-Key` replays.

use crate::helpers::*;
use madre_models::Module;
use serde_json::json;
use std::collections::HashSet;
use vx11_stubs::Behaviour;

/// `POST /madre/chat` with `message` and `Idempotency-Key: key`, as `token`.
async fn keyed_chat(app: &TestApp, token: &str, message: &str, key: &str) -> Reply {
    app.send_with(
        "POST",
        "/madre/chat",
        Some(token),
        Some(json!({ "message": message })),
        &[("Idempotency-Key", key)],
    )
    .await
}

#[actix_rt::test]
async fn an_idempotency_key_replays_the_first_answer() {
    let app = spawn_app().await;
    let first = keyed_chat(&app, OPERATOR, "hello once", "k-1").await;
    let second = keyed_chat(&app, OPERATOR, "hello once", "k-1").await;
    assert_eq!((first.status, second.status), (200, 200));
    assert_eq!(first.body, second.body);
    assert_eq!(app.calls(Module::Hermes).await, 1, "ran once");
    let other = keyed_chat(&app, OPERATOR, "something else", "k-1").await;
    assert_eq!(
        (other.status, s(&other.body["error"])),
        (422, "idempotency_key_reused")
    );
    // keys are per principal
    let admin = keyed_chat(&app, ADMIN, "hello once", "k-1").await;
    assert_eq!(admin.status, 200);
    assert_eq!(app.calls(Module::Hermes).await, 2);
    app.stop().await;
}

/// Eight concurrent chats with one key make exactly one intent, and a
/// WAITING answer sent with a key leaves no confirm token in `vx11.db` or
/// its WAL.
#[actix_rt::test]
async fn concurrent_keys_run_once_and_no_token_is_stored() {
    let app = spawn_app().await;
    app.stubs
        .behave(
            Module::Hermes,
            &Behaviour {
                latency_ms: 200,
                ..Behaviour::default()
            },
        )
        .await
        .unwrap();
    let mut requests = Vec::new();
    for _ in 0..8 {
        requests.push(app.send_with(
            "POST",
            "/madre/chat",
            Some(OPERATOR),
            Some(json!({"message": "hello all at once"})),
            &[("Idempotency-Key", "k-concurrent")],
        ));
    }
    let answers = futures_util::future::join_all(requests).await;
    let plans: HashSet<&str> = answers
        .iter()
        .map(|a| {
            assert_eq!(a.status, 200, "{}", a.body);
            s(&a.body["plan_id"])
        })
        .collect();
    assert_eq!(plans.len(), 1, "one plan for all eight");
    assert_eq!(app.calls(Module::Hermes).await, 1);
    assert_eq!(
        app.scalar("SELECT count(*) FROM intents_log"),
        1,
        "one intent"
    );

    let waiting = keyed_chat(&app, ADMIN, "delete all data", "k-waiting").await;
    assert_eq!(s(&waiting.body["status"]), "WAITING");
    let token = s(&waiting.body["confirm_token"]).to_owned();
    assert!(token.len() >= 22);
    let stored = app.stored_text();
    assert!(
        stored.contains(s(&waiting.body["plan_id"])),
        "the dump holds the plan"
    );
    assert!(
        !stored.contains(&token),
        "the database holds the confirm token in clear"
    );
    // The lost answer, replayed, carries a fresh token that confirms.
    let replay = keyed_chat(&app, ADMIN, "delete all data", "k-waiting").await;
    let fresh = s(&replay.body["confirm_token"]).to_owned();
    assert!(fresh.len() >= 22 && fresh != token);
    let plan_id = s(&waiting.body["plan_id"]).to_owned();
    assert_eq!(app.confirm(ADMIN, &plan_id, &token).await.status, 403);
    let confirmed = app.confirm(ADMIN, &plan_id, &fresh).await;
    assert_eq!(confirmed.status, 200, "{}", confirmed.body);
    app.stop().await;
}

/// A key used on `/madre/chat` and then on `/chat` (or `/task`) is refused
/// with a detail that names the cause: another endpoint, not another body.
#[actix_rt::test]
async fn a_key_reused_on_another_endpoint_says_so() {
    let app = spawn_app().await;
    let key = [("Idempotency-Key", "k-endpoint")];
    let first = app
        .send_with(
            "POST",
            "/madre/chat",
            Some(OPERATOR),
            Some(json!({"message": "hello once"})),
            &key,
        )
        .await;
    assert_eq!(first.status, 200, "{}", first.body);
    for path in ["/chat", "/task"] {
        let body = if path == "/task" {
            json!({"name": "t", "module": "hermes", "action": "status"})
        } else {
            json!({"message": "hello once"})
        };
        let other = app
            .send_with("POST", path, Some(OPERATOR), Some(body), &key)
            .await;
        assert_eq!(
            (other.status, s(&other.body["error"])),
            (422, "idempotency_key_reused"),
            "{path}: {}",
            other.body
        );
        let detail = s(&other.body["detail"]);
        assert!(
            detail.contains("used on another endpoint"),
            "{path}: {detail}"
        );
        assert!(
            !detail.contains("different request body"),
            "{path}: {detail}"
        );
    }
    // On the same endpoint, another body is still named as such.
    let other_body = app
        .send_with(
            "POST",
            "/madre/chat",
            Some(OPERATOR),
            Some(json!({"message": "else"})),
            &key,
        )
        .await;
    assert!(
        s(&other_body.body["detail"]).contains("different request body"),
        "{}",
        other_body.body
    );
    assert_eq!(app.calls(Module::Hermes).await, 1, "ran once");
}

/// A client that gives up mid-chat (its connection dropped) does not leave
/// the chat half done: the intent is closed and the key holds the answer,
/// so the retry replays it (issue 21, cancel safety).
#[actix_rt::test]
async fn a_client_that_gives_up_mid_chat_gets_the_answer_on_retry() {
    let app = spawn_app().await;
    let slow = Behaviour {
        latency_ms: 400,
        ..Behaviour::default()
    };
    app.stubs.behave(Module::Hermes, &slow).await.unwrap();
    let impatient = awc::Client::builder()
        .timeout(std::time::Duration::from_millis(100))
        .finish();
    let gave_up = impatient
        .post(format!("{}/madre/chat", app.base))
        .insert_header(("X-VX11-Token", OPERATOR))
        .insert_header(("Idempotency-Key", "k-impatient"))
        .send_json(&json!({"message": "hello, slowly"}))
        .await;
    assert!(gave_up.is_err(), "the client should have given up");
    drop(impatient);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let replay = loop {
        let r = keyed_chat(&app, OPERATOR, "hello, slowly", "k-impatient").await;
        if r.status == 200 {
            break r;
        }
        assert_eq!(r.status, 409, "{}", r.body);
        assert!(std::time::Instant::now() < deadline, "never answered");
    };
    assert_eq!(s(&replay.body["status"]), "DONE", "{}", replay.body);
    assert_eq!(
        app.calls(Module::Hermes).await,
        1,
        "replayed, not run again"
    );
    assert_eq!(app.madre.db().count_open_intents().unwrap(), 0);
    app.stop().await;
}

//! A LOW chat runs at once through Switch and Hermes.

use crate::helpers::*;
use madre_models::Module;
use serde_json::json;

#[actix_rt::test]
async fn a_low_chat_calls_switch_then_hermes_and_answers_the_reply() {
    let app = spawn_app().await;
    let r = app.chat(OPERATOR, "hello there").await;
    assert_eq!(r.status, 200);
    assert_eq!(s(&r.body["status"]), "DONE");
    assert_eq!(
        s(&r.body["response"]),
        "[hermes stub via stub-engine] hello there"
    );
    assert_eq!(r.body["actions"].as_array().unwrap().len(), 2);
    assert_eq!(
        (
            app.calls(Module::Switch).await,
            app.calls(Module::Hermes).await
        ),
        (1, 1)
    );
    assert!(
        app.stubs
            .stats(Module::Hermes)
            .await
            .unwrap()
            .all_calls_had_token
    );

    // the same session keeps its history and its (sticky) mode
    let session = s(&r.body["session_id"]).to_owned();
    let audio = app
        .send(
            "POST",
            "/madre/chat",
            Some(OPERATOR),
            Some(json!({"message": "mix these 3 stems", "session_id": session})),
        )
        .await;
    assert_eq!(
        (s(&audio.body["mode"]), s(&audio.body["status"])),
        ("AUDIO_ENGINEER", "DONE")
    );
    assert_eq!(s(&audio.body["response"]), "[shub stub] audio task done");
    let next = app
        .send(
            "POST",
            "/madre/chat",
            Some(OPERATOR),
            Some(json!({"message": "and now?", "session_id": session})),
        )
        .await;
    assert_eq!(s(&next.body["mode"]), "AUDIO_ENGINEER", "mode is sticky");
    let forced = app
        .send(
            "POST",
            "/madre/chat",
            Some(OPERATOR),
            Some(
                json!({"message": "and now?", "session_id": session, "context": {"mode": "MADRE"}}),
            ),
        )
        .await;
    assert_eq!(s(&forced.body["mode"]), "MADRE");
    // Back in the default mode, the session stays there.
    let after = app
        .send(
            "POST",
            "/madre/chat",
            Some(OPERATOR),
            Some(json!({"message": "and after that?", "session_id": session})),
        )
        .await;
    assert_eq!(s(&after.body["mode"]), "MADRE", "{}", after.body);
    assert_eq!(app.calls(Module::Shub).await, 2);
    app.stop().await;
}

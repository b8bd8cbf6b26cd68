//! The stand-ins answer the SPEC §7 endpoints and inject the faults asked for.

use madre_models::Module;
use serde_json::{Value, json};
use vx11_stubs::{Behaviour, StubServer};

async fn post(url: String, body: Value) -> (u16, Vec<u8>) {
    let client = awc::Client::default();
    let mut res = client
        .post(url)
        .insert_header(("X-VX11-Token", "t"))
        .send_json(&body)
        .await
        .unwrap();
    (
        res.status().as_u16(),
        res.body().limit(1 << 24).await.unwrap().to_vec(),
    )
}

#[actix_rt::test]
async fn every_module_answers_its_endpoints_on_its_own_port() {
    let stubs = StubServer::start("127.0.0.1", |_| 0).unwrap();
    for module in Module::REMOTE {
        let health: Value = awc::Client::default()
            .get(format!("{}/health", stubs.url(module)))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(health["module"], json!(module));
    }
    let (status, body) = post(
        format!("{}/switch/route-v5", stubs.url(Module::Switch)),
        json!({"prompt": "hi"}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        serde_json::from_slice::<Value>(&body).unwrap()["engine"],
        json!("stub-engine")
    );
    let (_, body) = post(
        format!("{}/hermes/execute", stubs.url(Module::Hermes)),
        json!({"prompt": "hi", "metadata": {"engine": "e1"}}),
    )
    .await;
    assert_eq!(
        serde_json::from_slice::<Value>(&body).unwrap()["reply"],
        json!("[hermes stub via e1] hi")
    );
    let (status, _) = post(
        format!("{}/shub/execute", stubs.url(Module::Shub)),
        json!({"task_id": "t"}),
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = post(
        format!("{}/control", stubs.url(Module::Mcp)),
        json!({"action": "status"}),
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = post(format!("{}/nope", stubs.url(Module::Mcp)), json!({})).await;
    assert_eq!(status, 404);
    let s = stubs.stats(Module::Mcp).await.unwrap();
    assert_eq!((s.calls, s.all_calls_had_token), (2, true));
    stubs.stop().await;
}

#[actix_rt::test]
async fn faults_are_injected_per_module() {
    let stubs = StubServer::start("127.0.0.1", |_| 0).unwrap();
    let hermes = format!("{}/hermes/execute", stubs.url(Module::Hermes));
    stubs
        .behave(
            Module::Hermes,
            &Behaviour {
                fail_first: 1,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(post(hermes.clone(), json!({})).await.0, 503);
    assert_eq!(post(hermes.clone(), json!({})).await.0, 200);
    stubs
        .behave(
            Module::Hermes,
            &Behaviour {
                error_status: Some(400),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(post(hermes.clone(), json!({})).await.0, 400);
    stubs
        .behave(
            Module::Hermes,
            &Behaviour {
                garbage: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let (status, body) = post(hermes.clone(), json!({})).await;
    assert_eq!(status, 200);
    assert!(serde_json::from_slice::<Value>(&body).is_err());
    stubs
        .behave(
            Module::Hermes,
            &Behaviour {
                body_bytes: Some(2 << 20),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(post(hermes.clone(), json!({})).await.1.len() >= 2 << 20);
    // other modules are unaffected
    assert_eq!(
        post(
            format!("{}/switch/route-v5", stubs.url(Module::Switch)),
            json!({})
        )
        .await
        .0,
        200
    );
    assert_eq!(stubs.stats(Module::Hermes).await.unwrap().calls, 5);
    stubs.stop().await;
}

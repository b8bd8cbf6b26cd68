//! The stand-ins answer the SPEC §7 endpoints and inject the faults asked for.

use madre_models::Module;
use serde_json::{Value, json};
use vx11_stubs::{Behaviour, StubServer};

async fn send(request: reqwest::RequestBuilder) -> (u16, Vec<u8>) {
    let res = request.send().await.unwrap();
    (res.status().as_u16(), res.bytes().await.unwrap().to_vec())
}

async fn post(url: String, body: Value) -> (u16, Vec<u8>) {
    send(
        reqwest::Client::new()
            .post(url)
            .header("X-VX11-Token", "t")
            .header("Content-Type", "application/json")
            .body(body.to_string()),
    )
    .await
}

async fn get_json(url: String) -> Value {
    let (status, body) = send(reqwest::Client::new().get(url)).await;
    assert_eq!(status, 200);
    serde_json::from_slice(&body).unwrap()
}

#[tokio::test]
async fn every_module_answers_its_endpoints_on_its_own_port() {
    let stubs = StubServer::start("127.0.0.1", |_| 0).unwrap();
    for module in Module::REMOTE {
        let health = get_json(format!("{}/health", stubs.url(module))).await;
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

#[tokio::test]
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switch_answers_the_intent_it_was_given_until_reset() {
    let stubs = StubServer::start("127.0.0.1", |_| 0).unwrap();
    let switch = stubs.url(Module::Switch);
    let route = format!("{switch}/switch/route-v5");
    let intent = json!({
        "domain": "system",
        "action": "status",
        "targets": ["hermes"],
        "parameters": {"verbose": true},
        "confidence": 0.95,
    });
    let client = reqwest::Client::new();
    let (status, _) = send(
        client
            .put(format!("{switch}/__stub/behaviour"))
            .header("Content-Type", "application/json")
            .body(json!({ "intent": intent }).to_string()),
    )
    .await;
    assert_eq!(status, 204);

    let asked = json!({
        "prompt": "how is hermes?",
        "metadata": {"session_id": "s", "mode": "MADRE", "purpose": "intent"},
        "source": "madre",
    });
    let (status, body) = post(route.clone(), asked.clone()).await;
    assert_eq!(status, 200);
    let answer: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(answer["intent"], intent);
    assert_eq!(
        answer["engine"],
        json!("stub-engine"),
        "the engine rides along"
    );

    // what Madre sent is there to check, over HTTP and directly
    let stats = get_json(format!("{switch}/__stub/stats")).await;
    assert_eq!(stats["bodies"], json!([asked.clone()]));
    let stats = stubs.stats(Module::Switch).await.unwrap();
    assert_eq!(
        stats.last_body().unwrap()["metadata"]["purpose"],
        json!("intent")
    );
    assert_eq!(stats.calls, 1);
    assert!(stats.connections >= 1);

    // other modules never answer an intent
    stubs
        .behave(
            Module::Hermes,
            &Behaviour {
                intent: Some(intent.clone()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let (_, body) = post(
        format!("{}/hermes/execute", stubs.url(Module::Hermes)),
        json!({"prompt": "hi"}),
    )
    .await;
    assert!(
        serde_json::from_slice::<Value>(&body)
            .unwrap()
            .get("intent")
            .is_none()
    );

    // an unknown setting is refused; reset clears the intent and the stats
    let (status, _) = send(
        client
            .put(format!("{switch}/__stub/behaviour"))
            .header("Content-Type", "application/json")
            .body(r#"{"intnet": {}}"#),
    )
    .await;
    assert_eq!(status, 400);
    let (status, _) = send(client.post(format!("{switch}/__stub/reset"))).await;
    assert_eq!(status, 204);
    let (_, body) = post(route, asked).await;
    let answer: Value = serde_json::from_slice(&body).unwrap();
    assert!(answer.get("intent").is_none(), "{answer}");
    assert_eq!(answer["engine"], json!("stub-engine"));
    assert_eq!(stubs.stats(Module::Switch).await.unwrap().calls, 1);
    stubs.stop().await;
}

#[test]
fn the_stubs_serve_callers_without_a_runtime_and_count_connections() {
    use std::io::{Read, Write};
    let stubs = StubServer::start("127.0.0.1", |_| 0).unwrap();
    let get = |stream: &mut std::net::TcpStream| {
        stream
            .write_all(b"GET /drift HTTP/1.1\r\nHost: stubs\r\nX-VX11-Token: t\r\n\r\n")
            .unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            stream.read_exact(&mut byte).unwrap();
            head.push(byte[0]);
        }
        let head = String::from_utf8(head).unwrap().to_lowercase();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let mut body = vec![0u8; length];
        stream.read_exact(&mut body).unwrap();
        assert!(head.starts_with("http/1.1 200"), "{head}");
    };
    let mut first = std::net::TcpStream::connect(stubs.addr(Module::Manifestator)).unwrap();
    get(&mut first);
    get(&mut first);
    let mut second = std::net::TcpStream::connect(stubs.addr(Module::Manifestator)).unwrap();
    get(&mut second);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let stats = runtime.block_on(stubs.stats(Module::Manifestator)).unwrap();
    assert_eq!((stats.calls, stats.connections), (3, 2));
    assert_eq!(
        runtime
            .block_on(stubs.stats(Module::Hermes))
            .unwrap()
            .connections,
        0
    );
    runtime.block_on(stubs.stop());
}

//! Madre end to end: the real server (an `Application` on port 0) against
//! the vx11-stubs modules over HTTP, each test with its own SQLite file.

use madre::{Application, Settings};
use madre_models::Module;
use madre_policy::TokenHash;
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::time::Duration;
use vx11_stubs::{Behaviour, StubServer};

const ADMIN: &str = "admin-token-for-tests";
const OPERATOR: &str = "operator-token-for-tests";
const VIEWER: &str = "viewer-token-for-tests";

struct TestApp {
    base: String,
    dir: tempfile::TempDir,
    stubs: StubServer,
    handle: actix_web::dev::ServerHandle,
    vars: HashMap<String, String>,
}

struct Reply {
    status: u16,
    body: Value,
    request_id: Option<String>,
}

fn settings(vars: &HashMap<String, String>) -> Settings {
    let vars = vars.clone();
    Settings::from_vars(move |name| vars.get(name).cloned()).unwrap()
}

async fn start(vars: &HashMap<String, String>) -> (String, actix_web::dev::ServerHandle) {
    let app = Application::build(settings(vars)).unwrap();
    let base = format!("http://127.0.0.1:{}", app.port());
    let handle = app.handle();
    actix_rt::spawn(app.run_until_stopped());
    (base, handle)
}

async fn spawn_app_with(extra: &[(&str, &str)]) -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    let stubs = StubServer::start("127.0.0.1", |_| 0).unwrap();
    let tokens_file: PathBuf = dir.path().join("principals.toml");
    std::fs::write(
        &tokens_file,
        format!(
            "[[principal]]\nname = \"olga\"\nrole = \"operator\"\ntoken_sha256 = \"{}\"\n\n[[principal]]\nname = \"vera\"\nrole = \"viewer\"\ntoken_sha256 = \"{}\"\n",
            TokenHash::of(OPERATOR).to_hex(),
            TokenHash::of(VIEWER).to_hex()
        ),
    )
    .unwrap();
    let mut vars: HashMap<String, String> = HashMap::new();
    vars.insert("MADRE_BIND".into(), "127.0.0.1:0".into());
    vars.insert(
        "MADRE_DATA_DIR".into(),
        dir.path().join("data").display().to_string(),
    );
    vars.insert("VX11_TOKEN".into(), ADMIN.into());
    vars.insert(
        "MADRE_TOKENS_FILE".into(),
        tokens_file.display().to_string(),
    );
    vars.insert("MADRE_PROBE_INTERVAL_S".into(), "1".into());
    for module in Module::REMOTE {
        vars.insert(format!("VX11_{}_URL", module.env_name()), stubs.url(module));
    }
    for (k, v) in extra {
        vars.insert((*k).into(), (*v).into());
    }
    let (base, handle) = start(&vars).await;
    TestApp {
        base,
        dir,
        stubs,
        handle,
        vars,
    }
}

async fn spawn_app() -> TestApp {
    spawn_app_with(&[]).await
}

impl TestApp {
    async fn send(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Reply {
        self.send_with(method, path, token, body, &[]).await
    }

    async fn send_with(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> Reply {
        let client = awc::Client::builder()
            .timeout(Duration::from_secs(30))
            .finish();
        let url = format!("{}{path}", self.base);
        let mut req = if method == "GET" {
            client.get(url)
        } else {
            client.post(url)
        };
        if let Some(token) = token {
            req = req.insert_header(("X-VX11-Token", token));
        }
        for (k, v) in headers {
            req = req.insert_header((*k, *v));
        }
        let mut res = match body {
            Some(body) => req.send_json(&body).await.unwrap(),
            None => req.send().await.unwrap(),
        };
        let request_id = res
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let bytes = res.body().limit(1 << 22).await.unwrap();
        let body = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        Reply {
            status: res.status().as_u16(),
            body,
            request_id,
        }
    }

    async fn raw(&self, path: &str, content_type: &str, body: Vec<u8>) -> Reply {
        let client = awc::Client::default();
        let mut res = client
            .post(format!("{}{path}", self.base))
            .insert_header(("X-VX11-Token", ADMIN))
            .insert_header(("Content-Type", content_type))
            .send_body(body)
            .await
            .unwrap();
        let bytes = res.body().limit(1 << 22).await.unwrap();
        Reply {
            status: res.status().as_u16(),
            body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            request_id: None,
        }
    }

    async fn chat(&self, token: &str, message: &str) -> Reply {
        self.send(
            "POST",
            "/madre/chat",
            Some(token),
            Some(json!({ "message": message })),
        )
        .await
    }

    /// The stored plan's status and error code (empty when none).
    async fn plan_outcome(&self, plan_id: &str) -> (String, String) {
        let detail = self
            .send(
                "GET",
                &format!("/madre/plans/{plan_id}"),
                Some(VIEWER),
                None,
            )
            .await;
        assert_eq!(detail.status, 200, "plan {plan_id}: {}", detail.body);
        let field = |name: &str| s(&detail.body["plan"][name]).to_owned();
        (field("status"), field("error"))
    }

    async fn confirm(&self, token: &str, plan_id: &str, confirm_token: &str) -> Reply {
        self.send(
            "POST",
            &format!("/madre/plans/{plan_id}/confirm"),
            Some(token),
            Some(json!({ "confirm_token": confirm_token })),
        )
        .await
    }

    async fn calls(&self, module: Module) -> u64 {
        self.stubs.stats(module).await.unwrap().calls
    }

    async fn stop(&self) {
        self.handle.stop(true).await;
    }
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or_default()
}

#[actix_rt::test]
async fn health_is_public_and_every_response_carries_a_request_id() {
    let app = spawn_app().await;
    let r = app.send("GET", "/health", None, None).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["module"], json!("madre"));
    assert!(r.request_id.is_some());
    let r = app
        .send_with(
            "GET",
            "/madre/plans",
            None,
            None,
            &[("X-Request-Id", "my-trace-42")],
        )
        .await;
    assert_eq!(r.status, 401);
    assert_eq!(r.request_id.as_deref(), Some("my-trace-42"));
    assert_eq!(r.body["request_id"], json!("my-trace-42"));
    assert_eq!(r.body["error"], json!("unauthorized"));
    // the background probe fills the table
    let mut up = false;
    for _ in 0..50 {
        let r = app.send("GET", "/health", None, None).await;
        if r.body["deps"]["hermes"] == json!("up") {
            up = true;
            break;
        }
        actix_rt::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(up, "probe never reported hermes up");
    app.stop().await;
}

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
    assert_eq!(
        app.send(
            "POST",
            "/control",
            Some(ADMIN),
            Some(json!({"action": "restart"}))
        )
        .await
        .status,
        200
    );
    app.stop().await;
}

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
    assert_eq!(app.calls(Module::Shub).await, 2);
    app.stop().await;
}

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

#[actix_rt::test]
async fn plans_page_without_duplicates_or_gaps_while_chats_arrive() {
    let app = spawn_app().await;
    let mut made = Vec::new();
    for i in 0..25 {
        made.push(s(&app.chat(OPERATOR, &format!("hello {i}")).await.body["plan_id"]).to_owned());
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        app.chat(OPERATOR, "a late chat").await;
        let path = match &cursor {
            Some(c) => format!("/madre/plans?limit=7&cursor={c}"),
            None => "/madre/plans?limit=7".to_owned(),
        };
        let page = app.send("GET", &path, Some(VIEWER), None).await;
        assert_eq!(page.status, 200);
        seen.extend(
            page.body["plans"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| s(&p["plan_id"]).to_owned()),
        );
        match page.body["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(
        seen.iter().collect::<HashSet<_>>().len(),
        seen.len(),
        "no duplicates"
    );
    let originals: Vec<&String> = seen.iter().filter(|id| made.contains(id)).collect();
    let expected: Vec<&String> = made.iter().rev().collect();
    assert_eq!(originals, expected, "no gaps, newest first");
    let done = app
        .send(
            "GET",
            "/madre/plans?status=DONE&limit=200",
            Some(VIEWER),
            None,
        )
        .await;
    assert!(done.body["plans"].as_array().unwrap().len() >= 25);
    app.stop().await;
}

#[actix_rt::test]
async fn v6_chat_task_and_control() {
    let app = spawn_app().await;
    let r = app
        .send(
            "POST",
            "/chat",
            Some(OPERATOR),
            Some(json!({"user_message": "hola"})),
        )
        .await;
    assert_eq!((r.status, s(&r.body["status"])), (200, "ok"));
    assert_eq!(s(&r.body["response"]), "[hermes stub via stub-engine] hola");
    assert_eq!(r.body["actions_taken"].as_array().unwrap().len(), 2);

    let r = app.send("POST", "/task", Some(OPERATOR), Some(json!({"name": "nightly", "module": "mcp", "action": "status", "payload": {"deep": true}}))).await;
    assert_eq!(r.status, 202);
    let task = s(&r.body["task_id"]).to_owned();
    let mut status = String::new();
    for _ in 0..100 {
        let t = app
            .send("GET", &format!("/tasks/{task}"), Some(VIEWER), None)
            .await;
        status = s(&t.body["status"]).to_owned();
        if status == "DONE" {
            assert_eq!(s(&t.body["name"]), "nightly");
            break;
        }
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(status, "DONE");
    let list = app.send("GET", "/tasks", Some(VIEWER), None).await;
    assert_eq!(
        list.body["tasks"].as_array().unwrap().len(),
        1,
        "only tasks, not chats"
    );

    let r = app
        .send(
            "POST",
            "/task",
            Some(OPERATOR),
            Some(json!({"name": "wipe", "module": "hermes", "action": "delete"})),
        )
        .await;
    assert_eq!(
        (r.status, s(&r.body["status"]), s(&r.body["risk"])),
        (202, "WAITING", "HIGH")
    );
    assert!(r.body["confirm_token"].is_string());

    let r = app
        .send(
            "POST",
            "/control",
            Some(VIEWER),
            Some(json!({"action": "status"})),
        )
        .await;
    assert_eq!(r.status, 200);
    assert!(r.body["result"]["uptime_s"].is_number());
    app.stop().await;
}

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

#[actix_rt::test]
async fn an_idempotency_key_replays_the_first_answer() {
    let app = spawn_app().await;
    let body = json!({"message": "hello once"});
    let first = app
        .send_with(
            "POST",
            "/madre/chat",
            Some(OPERATOR),
            Some(body.clone()),
            &[("Idempotency-Key", "k-1")],
        )
        .await;
    let second = app
        .send_with(
            "POST",
            "/madre/chat",
            Some(OPERATOR),
            Some(body),
            &[("Idempotency-Key", "k-1")],
        )
        .await;
    assert_eq!((first.status, second.status), (200, 200));
    assert_eq!(first.body, second.body);
    assert_eq!(app.calls(Module::Hermes).await, 1, "ran once");
    let other = app
        .send_with(
            "POST",
            "/madre/chat",
            Some(OPERATOR),
            Some(json!({"message": "something else"})),
            &[("Idempotency-Key", "k-1")],
        )
        .await;
    assert_eq!(
        (other.status, s(&other.body["error"])),
        (422, "idempotency_key_reused")
    );
    // keys are per principal
    let admin = app
        .send_with(
            "POST",
            "/madre/chat",
            Some(ADMIN),
            Some(json!({"message": "hello once"})),
            &[("Idempotency-Key", "k-1")],
        )
        .await;
    assert_eq!(admin.status, 200);
    assert_eq!(app.calls(Module::Hermes).await, 2);
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

    let (base, handle) = start(&app.vars).await;
    let again = TestApp {
        base,
        dir: tempfile::tempdir().unwrap(),
        stubs: StubServer::start("127.0.0.1", |_| 0).unwrap(),
        handle,
        vars: app.vars.clone(),
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

    // no token in clear anywhere in the database or the logs
    let db = app.dir.path().join("data").join("vx11.db");
    let conn = rusqlite::Connection::open(&db).unwrap();
    let dump: String = conn
        .query_row("SELECT group_concat(payload_json, ' ') || (SELECT group_concat(token_sha256, ' ') FROM confirmations) FROM intents_log", [], |r| r.get(0))
        .unwrap();
    assert!(!dump.contains(&token) && !dump.contains(ADMIN));
    let raw = std::fs::read(&db).unwrap();
    assert!(!raw.windows(token.len()).any(|w| w == token.as_bytes()));
}

#[actix_rt::test]
async fn a_failing_module_is_reported_not_crashed() {
    let app = spawn_app().await;
    app.stubs
        .behave(
            Module::Hermes,
            &Behaviour {
                error_status: Some(500),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let r = app.chat(OPERATOR, "hello").await;
    assert_eq!((r.status, s(&r.body["status"])), (200, "ERROR"));
    assert!(s(&r.body["response"]).contains("HTTP 500"), "{}", r.body);
    let (_, error) = app.plan_outcome(s(&r.body["plan_id"])).await;
    assert_eq!(error, "http_500");
    let metrics = app.send("GET", "/metrics", Some(VIEWER), None).await;
    let text = s(&metrics.body).to_owned();
    assert!(text.contains("madre_http_requests_total{route=\"/madre/chat\",status=\"200\"}"));
    assert!(text.contains("madre_plans{status=\"ERROR\"} 1"));
    assert!(text.contains("madre_queue_depth 0"));
    app.stop().await;
}

fn collect_refs(value: &Value, refs: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                if k == "$ref" {
                    refs.push(s(v).to_owned());
                }
                collect_refs(v, refs);
            }
        }
        Value::Array(items) => items.iter().for_each(|v| collect_refs(v, refs)),
        _ => {}
    }
}

#[actix_rt::test]
async fn the_openapi_document_describes_every_endpoint() {
    let app = spawn_app().await;
    let doc = app.send("GET", "/openapi.json", None, None).await;
    assert_eq!(doc.status, 200);
    let paths = doc.body["paths"].as_object().unwrap();
    for (path, method) in [
        ("/health", "get"),
        ("/openapi.json", "get"),
        ("/metrics", "get"),
        ("/madre/chat", "post"),
        ("/madre/control", "post"),
        ("/madre/plans", "get"),
        ("/madre/plans/{id}", "get"),
        ("/madre/plans/{id}/confirm", "post"),
        ("/madre/plans/{id}/cancel", "post"),
        ("/chat", "post"),
        ("/task", "post"),
        ("/tasks", "get"),
        ("/tasks/{id}", "get"),
        ("/tasks/{id}/cancel", "post"),
        ("/control", "post"),
    ] {
        assert!(
            paths.get(path).and_then(|p| p.get(method)).is_some(),
            "{method} {path} missing"
        );
    }
    assert_eq!(
        doc.body["components"]["securitySchemes"]["api_token"]["name"],
        json!("X-VX11-Token")
    );
    let mut refs = Vec::new();
    collect_refs(&doc.body, &mut refs);
    assert!(!refs.is_empty());
    for r in refs {
        let name = r.trim_start_matches("#/components/schemas/");
        assert!(
            doc.body["components"]["schemas"].get(name).is_some(),
            "dangling {r}"
        );
    }
    let chat = &doc.body["components"]["schemas"]["ChatResponse"]["properties"];
    for field in [
        "response",
        "session_id",
        "intent_id",
        "plan_id",
        "status",
        "mode",
        "risk",
        "warnings",
        "targets",
        "actions",
    ] {
        assert!(chat.get(field).is_some(), "ChatResponse.{field}");
    }
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

/// One fault and what a plan must do about it.
struct Fault {
    name: &'static str,
    behaviour: Behaviour,
    /// Calls the module sees (1, or 2 with the one retry).
    calls: u64,
    /// Error code of a required step that fails, `None` when the call succeeds.
    code: Option<&'static str>,
}

/// Counts panics anywhere in this test process (nextest gives each test
/// its own), so a fault test can prove none happened: a panic in a handler
/// or a runner task may not fail a request, but it must never happen.
fn count_panics() -> std::sync::Arc<std::sync::atomic::AtomicUsize> {
    let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = count.clone();
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        default(info);
    }));
    count
}

fn assert_no_panic(count: &std::sync::atomic::AtomicUsize) {
    assert_eq!(
        count.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "something panicked"
    );
}

fn faults() -> Vec<Fault> {
    let b = Behaviour::default;
    vec![
        Fault {
            name: "500",
            behaviour: Behaviour {
                error_status: Some(500),
                ..b()
            },
            calls: 2,
            code: Some("http_500"),
        },
        Fault {
            name: "503 then OK",
            behaviour: Behaviour {
                fail_first: 1,
                ..b()
            },
            calls: 2,
            code: None,
        },
        Fault {
            name: "slower than the call timeout",
            behaviour: Behaviour {
                latency_ms: 800,
                ..b()
            },
            calls: 2,
            code: Some("timeout"),
        },
        Fault {
            name: "hanging",
            behaviour: Behaviour { hang: true, ..b() },
            calls: 2,
            code: Some("timeout"),
        },
        Fault {
            name: "garbage body",
            behaviour: Behaviour {
                garbage: true,
                ..b()
            },
            calls: 1,
            code: Some("invalid_body"),
        },
        Fault {
            name: "10 MiB body",
            behaviour: Behaviour {
                body_bytes: Some(10 << 20),
                ..b()
            },
            calls: 1,
            code: Some("body_too_large"),
        },
        Fault {
            name: "connection reset",
            behaviour: Behaviour { reset: true, ..b() },
            calls: 2,
            code: Some("unreachable"),
        },
    ]
}

async fn timed_chat(app: &TestApp, message: &str) -> Reply {
    let started = std::time::Instant::now();
    let r = app.chat(OPERATOR, message).await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "answered in {:?}",
        started.elapsed()
    );
    assert_eq!(r.status, 200, "{}", r.body);
    r
}

#[actix_rt::test]
async fn fault_matrix_required_optional_and_audio_modules() {
    let panics = count_panics();
    let app = spawn_app_with(&[("MADRE_CALL_TIMEOUT_MS", "300")]).await;
    for fault in faults() {
        for module in [Module::Hermes, Module::Switch, Module::Shub] {
            app.stubs.behave(module, &fault.behaviour).await.unwrap();
            let before = app.calls(module).await;
            let message = if module == Module::Shub {
                "render the track"
            } else {
                "hello"
            };
            let r = if fault.behaviour.hang {
                // /health keeps answering while a module hangs
                let (chat, health) = futures_util::future::join(timed_chat(&app, message), async {
                    actix_rt::time::sleep(Duration::from_millis(50)).await;
                    let started = std::time::Instant::now();
                    let h = app.send("GET", "/health", None, None).await;
                    (h.status, started.elapsed())
                })
                .await;
                assert_eq!(health.0, 200);
                assert!(
                    health.1 < Duration::from_secs(1),
                    "/health took {:?} during a hang",
                    health.1
                );
                chat
            } else {
                timed_chat(&app, message).await
            };
            let cell = format!("{module} × {}", fault.name);
            assert_eq!(
                app.calls(module).await - before,
                fault.calls,
                "{cell}: calls"
            );
            let (_, error) = app.plan_outcome(s(&r.body["plan_id"])).await;
            let (status, error) = (s(&r.body["status"]), error.as_str());
            match (module, fault.code) {
                (_, None) => assert_eq!(status, "DONE", "{cell}"),
                (Module::Switch, Some(_)) => {
                    assert_eq!(status, "DONE", "{cell}: Switch is optional");
                    assert!(
                        r.body["warnings"]
                            .as_array()
                            .unwrap()
                            .contains(&json!("switch_unavailable")),
                        "{cell}"
                    );
                    assert_eq!(
                        s(&r.body["response"]),
                        "[hermes stub via default] hello",
                        "{cell}"
                    );
                }
                (_, Some(code)) => {
                    assert_eq!((status, error), ("ERROR", code), "{cell}");
                    assert!(
                        s(&r.body["response"]).starts_with("Plan failed: "),
                        "{cell}: {}",
                        r.body
                    );
                }
            }
            app.stubs
                .behave(module, &Behaviour::default())
                .await
                .unwrap();
        }
    }
    app.stop().await;
    assert_no_panic(&panics);
}

/// A server whose `module` URL points at a port nothing listens on, with a
/// 300 ms call timeout.
async fn spawn_app_with_module_down(module: Module) -> TestApp {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let var = format!("VX11_{}_URL", module.env_name());
    spawn_app_with(&[
        (var.as_str(), url.as_str()),
        ("MADRE_CALL_TIMEOUT_MS", "300"),
    ])
    .await
}

#[actix_rt::test]
async fn fault_matrix_modules_that_are_down() {
    let panics = count_panics();
    for (module, message) in [
        (Module::Hermes, "hello"),
        (Module::Switch, "hello"),
        (Module::Shub, "render the track"),
    ] {
        let app = spawn_app_with_module_down(module).await;
        let r = timed_chat(&app, message).await;
        if module == Module::Switch {
            assert_eq!(s(&r.body["status"]), "DONE");
            assert!(
                r.body["warnings"]
                    .as_array()
                    .unwrap()
                    .contains(&json!("switch_unavailable"))
            );
        } else {
            let (_, error) = app.plan_outcome(s(&r.body["plan_id"])).await;
            assert_eq!(
                (s(&r.body["status"]), error.as_str()),
                ("ERROR", "unreachable"),
                "{module} down"
            );
        }
        app.stop().await;
    }
    assert_no_panic(&panics);
}

/// How a fault-matrix cell reaches a module that no plain chat calls.
#[derive(Clone, Copy)]
enum Via {
    /// A chat message whose plan calls the module.
    Chat(&'static str),
    /// A LOW `/madre/control` action: CALL_MODULE on the module.
    Control,
}

/// Sends the request of a cell; answers its plan id, within 5 s.
async fn reach(app: &TestApp, module: Module, via: Via) -> String {
    match via {
        Via::Chat(message) => s(&timed_chat(app, message).await.body["plan_id"]).to_owned(),
        Via::Control => {
            let started = std::time::Instant::now();
            let r = app
                .send(
                    "POST",
                    "/madre/control",
                    Some(OPERATOR),
                    Some(json!({"target": module.as_str(), "action": "status"})),
                )
                .await;
            assert!(started.elapsed() < Duration::from_secs(5));
            assert_eq!(r.status, 200, "{}", r.body);
            s(&r.body["plan_id"]).to_owned()
        }
    }
}

/// The modules not on the chat path of the matrix above, and how to reach them.
const OTHER_MODULES: [(Module, Via); 4] = [
    (Module::Manifestator, Via::Chat("look for drift")),
    (
        Module::Hormiguero,
        Via::Chat("summarize the logs in parallel"),
    ),
    (Module::Mcp, Via::Control),
    (Module::Spawner, Via::Control),
];

#[actix_rt::test]
async fn fault_matrix_every_other_module() {
    let panics = count_panics();
    let app = spawn_app_with(&[("MADRE_CALL_TIMEOUT_MS", "300")]).await;
    for fault in faults() {
        for (module, via) in OTHER_MODULES {
            app.stubs.behave(module, &fault.behaviour).await.unwrap();
            let before = app.calls(module).await;
            let plan = reach(&app, module, via).await;
            let cell = format!("{module} × {}", fault.name);
            assert_eq!(
                app.calls(module).await - before,
                fault.calls,
                "{cell}: calls"
            );
            let (status, error) = app.plan_outcome(&plan).await;
            match fault.code {
                None => assert_eq!(status, "DONE", "{cell}: {error}"),
                Some(code) => {
                    assert_eq!((status.as_str(), error.as_str()), ("ERROR", code), "{cell}")
                }
            }
            app.stubs
                .behave(module, &Behaviour::default())
                .await
                .unwrap();
        }
    }
    // Down: nothing listens where the module should be.
    for (module, via) in OTHER_MODULES {
        let down = spawn_app_with_module_down(module).await;
        let plan = reach(&down, module, via).await;
        assert_eq!(
            down.plan_outcome(&plan).await,
            ("ERROR".into(), "unreachable".into()),
            "{module} down"
        );
        down.stop().await;
    }
    app.stop().await;
    assert_no_panic(&panics);
}

/// Anonymous resident memory (heap and stacks) of this process, in KiB: what
/// a leak grows. File-backed pages (code faulted in as new paths run, the
/// SQLite WAL index) are left out.
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("RssAnon:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[actix_rt::test]
async fn ten_thousand_requests_against_faulty_modules_keep_memory_bounded() {
    let panics = count_panics();
    let app = std::rc::Rc::new(spawn_app_with(&[("MADRE_CALL_TIMEOUT_MS", "300")]).await);
    app.stubs
        .behave(
            Module::Hermes,
            &Behaviour {
                error_status: Some(500),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    app.stubs
        .behave(
            Module::Switch,
            &Behaviour {
                garbage: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    async fn burst(app: &std::rc::Rc<TestApp>, total: usize) {
        let workers: Vec<_> = (0..16)
            .map(|_| {
                let app = app.clone();
                actix_rt::spawn(async move {
                    for _ in 0..total / 16 {
                        let r = app.chat(OPERATOR, "hello").await;
                        assert_eq!(r.status, 200);
                    }
                })
            })
            .collect();
        for w in workers {
            w.await.unwrap();
        }
    }
    // Warm-up until the pools, SQLite's page caches (they fill as the
    // database grows past them) and the allocator's arenas have grown to
    // their working size: 9,600 requests (docs/reliability.md has the curve).
    burst(&app, 9_600).await;
    let before = rss_kib();
    burst(&app, 10_000).await;
    let after = rss_kib();
    eprintln!("anonymous RSS: {before} KiB after warm-up, {after} KiB after 10,000 more requests");
    assert!(before > 0);
    // A leak of 400 bytes per request would break this bound.
    assert!(
        after * 10 <= before * 12,
        "anonymous RSS grew from {before} KiB to {after} KiB (more than 20 %)"
    );
    let metrics = app.send("GET", "/metrics", Some(VIEWER), None).await;
    assert!(s(&metrics.body).contains("madre_plans{status=\"ERROR\"} 19600"));
    app.stop().await;
    assert_no_panic(&panics);
}

/// Raw HTTP/1.1 over a plain socket, for clients no HTTP library would be:
/// slow, oversized, malformed.
mod raw {
    use std::io::{ErrorKind, Read, Write};
    use std::net::TcpStream;
    use std::time::{Duration, Instant};

    pub(super) fn connect(base: &str) -> TcpStream {
        TcpStream::connect(base.trim_start_matches("http://")).unwrap()
    }

    /// Sends a request head one byte per `pace` and never finishes it; answers
    /// how long the server let it go on and what it said, once it cut the
    /// connection (or `None` if it never did within `limit`).
    pub(super) fn slowloris(
        base: &str,
        pace: Duration,
        limit: Duration,
    ) -> Option<(Duration, String)> {
        let mut stream = connect(base);
        stream.set_read_timeout(Some(pace)).unwrap();
        let head = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Filler: ";
        let filler = std::iter::repeat(b'a');
        let started = Instant::now();
        let mut answer = Vec::new();
        let mut buf = [0u8; 1024];
        for byte in head.iter().copied().chain(filler) {
            if started.elapsed() > limit {
                return None;
            }
            if stream.write_all(&[byte]).is_err() {
                break;
            }
            // The read's timeout paces the client: one byte per `pace`.
            match stream.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(_) => break,
            }
        }
        Some((
            started.elapsed(),
            String::from_utf8_lossy(&answer).into_owned(),
        ))
    }

    /// Sends a complete head announcing a 1,000-byte body, then the body one
    /// byte per `pace`; answers when the server answered or cut the
    /// connection, and what it said (`None` if neither within `limit`).
    pub(super) fn slow_body(
        base: &str,
        head: &str,
        pace: Duration,
        limit: Duration,
    ) -> Option<(Duration, String)> {
        let mut stream = connect(base);
        stream.set_read_timeout(Some(pace)).unwrap();
        stream.write_all(head.as_bytes()).unwrap();
        let started = Instant::now();
        let mut buf = [0u8; 4096];
        while started.elapsed() < limit {
            if stream.write_all(b" ").is_err() {
                return Some((started.elapsed(), String::new()));
            }
            match stream.read(&mut buf) {
                Ok(0) => return Some((started.elapsed(), String::new())),
                Ok(n) => {
                    let answer = String::from_utf8_lossy(&buf[..n]).into_owned();
                    return Some((started.elapsed(), answer));
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(_) => return Some((started.elapsed(), String::new())),
            }
        }
        None
    }

    /// Sends `request` whole and reads until the server closes or `limit`
    /// passes; a reset counts as the end of the answer.
    pub(super) fn exchange(base: &str, request: &[u8], limit: Duration) -> String {
        let mut stream = connect(base);
        stream.set_read_timeout(Some(limit)).unwrap();
        // The server may close before reading everything: keep what it said.
        let _ = stream.write_all(request);
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer);
        String::from_utf8_lossy(&answer).into_owned()
    }

    /// The status code of a raw answer.
    pub(super) fn status(answer: &str) -> Option<u16> {
        answer.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
    }
}

#[actix_rt::test]
async fn slow_clients_are_cut_without_starving_the_others() {
    let app = std::rc::Rc::new(spawn_app().await);
    let slow: Vec<_> = (0..16)
        .map(|_| {
            let base = app.base.clone();
            std::thread::spawn(move || {
                raw::slowloris(&base, Duration::from_millis(200), Duration::from_secs(60))
            })
        })
        .collect();
    // While they dribble, everyone else is served as usual.
    for _ in 0..10 {
        let health = app.send("GET", "/health", None, None).await;
        assert_eq!(health.status, 200);
        let chat = app.chat(OPERATOR, "hello").await;
        assert_eq!((chat.status, s(&chat.body["status"])), (200, "DONE"));
    }
    for client in slow {
        let cut = actix_web::rt::task::spawn_blocking(move || client.join().unwrap())
            .await
            .unwrap();
        let (after, answer) = cut.expect("a slow client was never cut");
        eprintln!(
            "slow client cut after {after:?}: {:?}",
            answer.lines().next()
        );
        // The server's client_request_timeout is 5 s; generous margin.
        assert!(after < Duration::from_secs(30), "cut only after {after:?}");
        assert!(
            raw::status(&answer) == Some(408),
            "slow client got {answer:?}"
        );
    }
    assert_eq!(app.send("GET", "/health", None, None).await.status, 200);
    app.stop().await;
}

#[actix_rt::test]
async fn slow_bodies_get_408_without_starving_the_others() {
    let app = std::rc::Rc::new(spawn_app().await);
    // JSON bodies (chat) and the raw body of a confirmation.
    let head = |path: &str| {
        format!(
            "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-VX11-Token: {OPERATOR}\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
        )
    };
    let confirm = format!("/madre/plans/{}/confirm", uuid::Uuid::new_v4());
    let slow: Vec<_> = (0..8)
        .map(|i| {
            let path = if i % 2 == 0 {
                "/madre/chat"
            } else {
                confirm.as_str()
            };
            let (base, head) = (app.base.clone(), head(path));
            std::thread::spawn(move || {
                raw::slow_body(
                    &base,
                    &head,
                    Duration::from_millis(200),
                    Duration::from_secs(60),
                )
            })
        })
        .collect();
    for _ in 0..10 {
        let chat = app.chat(OPERATOR, "hello").await;
        assert_eq!((chat.status, s(&chat.body["status"])), (200, "DONE"));
    }
    for client in slow {
        let cut = actix_web::rt::task::spawn_blocking(move || client.join().unwrap())
            .await
            .unwrap();
        let (after, answer) = cut.expect("a slow body was never cut");
        eprintln!("slow body cut after {after:?}: {:?}", answer.lines().next());
        // The body deadline is 10 s; generous margin.
        assert!(after < Duration::from_secs(40), "cut only after {after:?}");
        assert_eq!(raw::status(&answer), Some(408), "{answer}");
        assert!(answer.contains("\"request_timeout\""), "{answer}");
    }
    // Nothing of theirs was logged as an intent: only the 10 real chats.
    let plans = app.send("GET", "/madre/plans", Some(VIEWER), None).await;
    assert_eq!(plans.body["plans"].as_array().map(Vec::len), Some(10));
    app.stop().await;
}

#[actix_rt::test]
async fn oversized_headers_are_refused_and_the_server_carries_on() {
    let app = spawn_app().await;
    let limit = Duration::from_secs(20);
    let huge_value = format!(
        "GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Huge: {}\r\n\r\n",
        "a".repeat(256 * 1024)
    );
    let many: String = (0..200).map(|i| format!("X-Header-{i}: {i}\r\n")).collect();
    let too_many = format!("GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n{many}\r\n");
    let huge_token = format!(
        "POST /madre/chat HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{{}}",
        "t".repeat(200 * 1024)
    );
    for (what, request) in [
        ("a 256 KiB header", huge_value),
        ("200 headers", too_many),
        ("a 200 KiB token", huge_token),
    ] {
        let answer = actix_web::rt::task::spawn_blocking({
            let base = app.base.clone();
            move || raw::exchange(&base, request.as_bytes(), limit)
        })
        .await
        .unwrap();
        let status = raw::status(&answer);
        eprintln!("{what}: {:?}", answer.lines().next());
        assert!(
            status == Some(431),
            "{what}: answered {:?}",
            answer.lines().next()
        );
        assert_eq!(app.send("GET", "/health", None, None).await.status, 200);
    }
    // None of them made a plan.
    let plans = app.send("GET", "/madre/plans", Some(VIEWER), None).await;
    assert_eq!(plans.status, 200);
    assert_eq!(plans.body["plans"].as_array().map(Vec::len), Some(0));
    app.stop().await;
}

//! Shared setup: `spawn_app()` starts Madre on port 0 against vx11-stubs, with its own SQLite file, and `TestApp` sends requests.

use madre::{Application, Settings};
use madre_models::Module;
use madre_policy::TokenHash;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;
use vx11_stubs::StubServer;

pub(crate) const ADMIN: &str = "admin-token-for-tests";

pub(crate) const OPERATOR: &str = "operator-token-for-tests";

pub(crate) const VIEWER: &str = "viewer-token-for-tests";

pub(crate) struct TestApp {
    pub(crate) base: String,
    pub(crate) dir: tempfile::TempDir,
    pub(crate) stubs: StubServer,
    pub(crate) handle: actix_web::dev::ServerHandle,
    pub(crate) vars: HashMap<String, String>,
    /// The server's Madre, to reach its storage as an embedding service can.
    pub(crate) madre: std::sync::Arc<madre_flows::Madre>,
    /// The PostgreSQL database of a run against one; dropped with the app.
    pub(crate) pg: Option<std::sync::Arc<PgDatabase>>,
}

#[path = "../../crates/db/tests/support/pg_database.rs"]
mod pg_database;
use pg_database::off_runtime;
pub(crate) use pg_database::{PgDatabase, is_postgres, postgres_admin};

pub(crate) struct Reply {
    pub(crate) status: u16,
    pub(crate) body: Value,
    pub(crate) request_id: Option<String>,
    /// The `Retry-After` header, when there is one.
    pub(crate) retry_after: Option<String>,
}

pub(crate) fn settings(vars: &HashMap<String, String>) -> Settings {
    let vars = vars.clone();
    Settings::from_vars(move |name| vars.get(name).cloned()).unwrap()
}

pub(crate) async fn start(
    vars: &HashMap<String, String>,
) -> (
    String,
    actix_web::dev::ServerHandle,
    std::sync::Arc<madre_flows::Madre>,
) {
    let app = Application::build(settings(vars)).unwrap();
    let base = format!("http://127.0.0.1:{}", app.port());
    let handle = app.handle();
    let madre = app.madre();
    actix_rt::spawn(app.run_until_stopped());
    (base, handle, madre)
}

pub(crate) async fn spawn_app_with(extra: &[(&str, &str)]) -> TestApp {
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
    let pg =
        postgres_admin().map(|admin| std::sync::Arc::new(PgDatabase::create(&admin, "madre_e2e")));
    if let Some(pg) = &pg {
        vars.insert("MADRE_DATABASE_URL".into(), pg.url.clone());
    }
    for (k, v) in extra {
        vars.insert((*k).into(), (*v).into());
    }
    let (base, handle, madre) = start(&vars).await;
    TestApp {
        base,
        dir,
        stubs,
        handle,
        vars,
        madre,
        pg,
    }
}

pub(crate) async fn spawn_app() -> TestApp {
    spawn_app_with(&[]).await
}

impl TestApp {
    /// The SQLite file of the app (unused on PostgreSQL).
    pub(crate) fn db_path(&self) -> PathBuf {
        self.dir.path().join("data").join("vx11.db")
    }

    /// The one integer `sql` selects, read with the backend's own client
    /// beside the server, as an operator would.
    pub(crate) fn scalar(&self, sql: &str) -> i64 {
        match &self.pg {
            None => rusqlite::Connection::open(self.db_path())
                .unwrap()
                .query_row(sql, [], |r| r.get(0))
                .unwrap(),
            Some(pg) => off_runtime(|| {
                let mut client = postgres::Client::connect(&pg.url, postgres::NoTls).unwrap();
                client.query_one(sql, &[]).unwrap().get(0)
            }),
        }
    }

    /// Everything the database holds, as text: the SQLite file and its
    /// WAL, bytes as they are on disk; on PostgreSQL every row of every
    /// table. For asserting that a secret is stored nowhere.
    pub(crate) fn stored_text(&self) -> String {
        match &self.pg {
            None => {
                let db = self.db_path();
                let wal = db.with_extension("db-wal");
                let mut bytes = std::fs::read(&db).unwrap();
                bytes.extend(std::fs::read(wal).unwrap_or_default());
                String::from_utf8_lossy(&bytes).into_owned()
            }
            Some(pg) => off_runtime(|| {
                let mut client = postgres::Client::connect(&pg.url, postgres::NoTls).unwrap();
                let tables: Vec<String> = client
                    .query(
                        "SELECT table_name::text FROM information_schema.tables
                         WHERE table_schema = current_schema()",
                        &[],
                    )
                    .unwrap()
                    .iter()
                    .map(|r| r.get(0))
                    .collect();
                let mut all = String::new();
                for table in tables {
                    let rows = client
                        .query_one(
                            &format!(
                                "SELECT coalesce(string_agg(t::text, ' '), '') FROM {table} t"
                            ),
                            &[],
                        )
                        .unwrap();
                    all.push_str(rows.get::<_, &str>(0));
                    all.push('\n');
                }
                all
            }),
        }
    }

    pub(crate) async fn send(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Reply {
        self.send_with(method, path, token, body, &[]).await
    }

    pub(crate) async fn send_with(
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
        let retry_after = res
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let bytes = res.body().limit(1 << 22).await.unwrap();
        let body = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        Reply {
            status: res.status().as_u16(),
            body,
            request_id,
            retry_after,
        }
    }

    pub(crate) async fn raw(&self, path: &str, content_type: &str, body: Vec<u8>) -> Reply {
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
            retry_after: None,
        }
    }

    pub(crate) async fn chat(&self, token: &str, message: &str) -> Reply {
        self.send(
            "POST",
            "/madre/chat",
            Some(token),
            Some(json!({ "message": message })),
        )
        .await
    }

    /// `GET /madre/plans/{plan_id}` as a viewer.
    pub(crate) async fn plan_detail(&self, plan_id: &str) -> Reply {
        self.send(
            "GET",
            &format!("/madre/plans/{plan_id}"),
            Some(VIEWER),
            None,
        )
        .await
    }

    /// The stored plan's status and error code (empty when none).
    pub(crate) async fn plan_outcome(&self, plan_id: &str) -> (String, String) {
        let detail = self.plan_detail(plan_id).await;
        assert_eq!(detail.status, 200, "plan {plan_id}: {}", detail.body);
        let field = |name: &str| s(&detail.body["plan"][name]).to_owned();
        (field("status"), field("error"))
    }

    pub(crate) async fn confirm(&self, token: &str, plan_id: &str, confirm_token: &str) -> Reply {
        self.send(
            "POST",
            &format!("/madre/plans/{plan_id}/confirm"),
            Some(token),
            Some(json!({ "confirm_token": confirm_token })),
        )
        .await
    }

    pub(crate) async fn calls(&self, module: Module) -> u64 {
        self.stubs.stats(module).await.unwrap().calls
    }

    pub(crate) async fn stop(&self) {
        self.handle.stop(true).await;
    }
}

pub(crate) fn s(v: &Value) -> &str {
    v.as_str().unwrap_or_default()
}

/// Counts panics anywhere in this test process (nextest gives each test
/// its own), so a fault test can prove none happened: a panic in a handler
/// or a runner task may not fail a request, but it must never happen.
pub(crate) fn count_panics() -> std::sync::Arc<std::sync::atomic::AtomicUsize> {
    let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = count.clone();
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        default(info);
    }));
    count
}

pub(crate) fn assert_no_panic(count: &std::sync::atomic::AtomicUsize) {
    assert_eq!(
        count.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "something panicked"
    );
}

/// A server whose `module` URL points at a port nothing listens on, with a
/// 300 ms call timeout.
pub(crate) async fn spawn_app_with_module_down(module: Module) -> TestApp {
    // Port 1 (tcpmux): nothing listens there, and no test server can be
    // given it (ports asked of the system come from the ephemeral range).
    // A port bound and released would do until another test's server took
    // it, answering 404 for the module that is down.
    let url = "http://127.0.0.1:1".to_owned();
    let var = format!("VX11_{}_URL", module.env_name());
    spawn_app_with(&[
        (var.as_str(), url.as_str()),
        ("MADRE_CALL_TIMEOUT_MS", "300"),
    ])
    .await
}

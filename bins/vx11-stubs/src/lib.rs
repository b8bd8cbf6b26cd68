//! Stand-ins for the eight VX11 modules Madre delegates to (switch, hermes,
//! hormiguero, manifestator, mcp, shub, spawner, tentaculo_link).
//!
//! One process serves every module, **each on its own port**, so Madre is
//! configured exactly as in production (`VX11_<MODULE>_URL`). Each module
//! answers the endpoints of SPEC §7 and `GET /health`. Faults are injected
//! per module through an admin endpoint on that module's port:
//!
//! - `PUT /__stub/behaviour` with a [`Behaviour`] (latency, error status,
//!   fail-the-first-N, hang, garbage or oversized bodies, connection reset,
//!   and the `intent` Switch's `route-v5` answers with, for SPEC §4a);
//! - `GET /__stub/stats` answers [`Stats`] (calls, in-flight peak, the
//!   `Idempotency-Key`s seen, connections accepted, the latest bodies);
//! - `POST /__stub/reset` clears both;
//! - tentaculo_link takes `POST /events/ingest` (the VX11 event bus) and
//!   keeps what it was sent in its stats' bodies;
//! - `POST /__bench/passthrough` is the bare HTTP shape of a LOW chat (in,
//!   Switch, Hermes, back) that `bench/run.sh` measures Madre against.
//!
//! [`StubServer`] runs the stand-ins on a thread of their own (an actix
//! system), so they answer whatever runtime the test or the caller uses:
//! actix, a current-thread Tokio runtime or a multi-threaded one, and even a
//! thread that blocks. [`StubServer::behave`] and [`StubServer::stats`]
//! reach the same state directly, without HTTP.
//!
//! These are test and demo helpers, clearly not the real modules: their
//! answers only echo what they were asked.

use actix_web::dev::{Extensions, ServerHandle};
use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use madre_models::Module;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::any::Any;
use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::sync::Mutex;
use std::time::Duration;

/// How many request bodies [`Stats::bodies`] keeps per module.
pub const KEPT_BODIES: usize = 32;

/// How a module misbehaves; the default is a prompt, healthy answer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Behaviour {
    /// Delay before every answer, in milliseconds.
    pub latency_ms: u64,
    /// Answer every call with this HTTP status (e.g. 500, 400).
    pub error_status: Option<u16>,
    /// Answer the first N calls with 503, then normally.
    pub fail_first: u32,
    /// Never answer (until the client gives up).
    pub hang: bool,
    /// Answer 200 with a body that is not JSON.
    pub garbage: bool,
    /// Answer 200 with a JSON body this many bytes long.
    pub body_bytes: Option<usize>,
    /// Cut the connection in the middle of the answer.
    pub reset: bool,
    /// Switch only: `POST /switch/route-v5` answers this value as `intent`,
    /// beside `engine` (SPEC §4a). Any JSON is sent as given, so a test can
    /// also hand Madre an invalid intent, e.g.
    /// `{"domain": "system", "action": "status", "targets": ["hermes"],
    /// "parameters": {}, "confidence": 0.95}`.
    pub intent: Option<Value>,
}

/// What a module has seen since the last reset.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Calls to module endpoints (health and admin excluded).
    pub calls: u64,
    /// Calls being answered right now.
    pub in_flight: u64,
    /// The most calls answered at once.
    pub peak_in_flight: u64,
    /// The latest `Idempotency-Key` headers received (at most 1,000), in order.
    pub idempotency_keys: Vec<String>,
    /// `X-VX11-Token` values were present on every call.
    pub all_calls_had_token: bool,
    /// TCP connections accepted on this module's port (any path), so a test
    /// can tell whether a client reuses its connections.
    pub connections: u64,
    /// The latest request bodies of module endpoints (at most
    /// [`KEPT_BODIES`]), oldest first; a body that is not JSON is `null`.
    pub bodies: Vec<Value>,
}

impl Stats {
    /// The body of the latest call to a module endpoint, e.g. what Madre
    /// sent to Switch's `route-v5`.
    pub fn last_body(&self) -> Option<&Value> {
        self.bodies.last()
    }
}

#[derive(Debug, Default)]
struct ModuleState {
    behaviour: Behaviour,
    stats: Stats,
    failures_served: u32,
}

#[derive(Default)]
struct Shared {
    by_port: HashMap<u16, Module>,
    /// Where each module listens, for the passthrough bound.
    addresses: HashMap<Module, SocketAddr>,
    modules: Mutex<HashMap<Module, ModuleState>>,
}

impl Shared {
    fn module_of(&self, req: &HttpRequest) -> Module {
        self.module_at(req.app_config().local_addr().port())
    }

    fn module_at(&self, port: u16) -> Module {
        self.by_port.get(&port).copied().unwrap_or(Module::Hermes)
    }

    fn with<T>(&self, module: Module, f: impl FnOnce(&mut ModuleState) -> T) -> T {
        let mut modules = self.modules.lock().unwrap_or_else(|p| p.into_inner());
        f(modules.entry(module).or_default())
    }

    /// Counts a new connection; actix calls it once per accepted socket.
    fn on_connect(&self, connection: &dyn Any) {
        let port = connection
            .downcast_ref::<actix_web::rt::net::TcpStream>()
            .and_then(|tcp| tcp.local_addr().ok())
            .map(|addr| addr.port());
        if let Some(port) = port {
            self.with(self.module_at(port), |s| s.stats.connections += 1);
        }
    }
}

/// The running stand-ins, served by a thread of their own until
/// [`StubServer::stop`] (or until dropped, which stops them without waiting).
pub struct StubServer {
    addresses: HashMap<Module, SocketAddr>,
    shared: web::Data<Shared>,
    handle: ServerHandle,
    finished: Option<tokio::sync::oneshot::Receiver<std::io::Result<()>>>,
}

impl StubServer {
    /// Starts every module on `host`, at `port_of(module)` (0 picks a free
    /// port), on a new thread running its own actix system: callable from
    /// any runtime, or from none. Returns once every port is listening.
    pub fn start(host: &str, port_of: impl Fn(Module) -> u16) -> std::io::Result<Self> {
        let mut listeners = Vec::new();
        let mut shared = Shared::default();
        let mut addresses = HashMap::new();
        for module in Module::REMOTE {
            let listener = TcpListener::bind((host, port_of(module)))?;
            let addr = listener.local_addr()?;
            shared.by_port.insert(addr.port(), module);
            shared.addresses.insert(module, addr);
            addresses.insert(module, addr);
            listeners.push(listener);
        }
        let shared = web::Data::new(shared);
        let (handle_tx, handle_rx) = std::sync::mpsc::channel();
        let (finished_tx, finished) = tokio::sync::oneshot::channel();
        let for_thread = shared.clone();
        std::thread::Builder::new()
            .name("vx11-stubs".into())
            .spawn(move || {
                let outcome = actix_web::rt::System::new().block_on(async move {
                    let server = match serve(listeners, for_thread) {
                        Ok(server) => server,
                        Err(e) => {
                            let _ = handle_tx.send(Err(e));
                            return Ok(());
                        }
                    };
                    let _ = handle_tx.send(Ok(server.handle()));
                    server.await
                });
                let _ = finished_tx.send(outcome);
            })?;
        let handle = handle_rx
            .recv()
            .map_err(|_| std::io::Error::other("the vx11-stubs thread ended before serving"))??;
        Ok(Self {
            addresses,
            shared,
            handle,
            finished: Some(finished),
        })
    }

    /// The address of `module`.
    pub fn addr(&self, module: Module) -> SocketAddr {
        self.addresses[&module]
    }

    /// The base URL of `module` (`http://127.0.0.1:PORT`).
    pub fn url(&self, module: Module) -> String {
        format!("http://{}", self.addr(module))
    }

    /// Sets how `module` behaves from now on, as `PUT /__stub/behaviour`
    /// would (it also restarts the `fail_first` count). Never fails; the
    /// `Result` is kept for callers written against the HTTP version.
    pub async fn behave(&self, module: Module, behaviour: &Behaviour) -> Result<(), String> {
        self.shared.with(module, |s| {
            s.behaviour = behaviour.clone();
            s.failures_served = 0;
        });
        Ok(())
    }

    /// What `module` has seen since its last reset, as `GET /__stub/stats`
    /// answers. Never fails; see [`StubServer::behave`].
    pub async fn stats(&self, module: Module) -> Result<Stats, String> {
        Ok(self.shared.with(module, |s| s.stats.clone()))
    }

    /// Serves until the server stops (SIGTERM or SIGINT, handled by actix).
    pub async fn wait(mut self) -> std::io::Result<()> {
        match self.finished.take() {
            Some(finished) => finished
                .await
                .map_err(|_| std::io::Error::other("the vx11-stubs thread panicked"))?,
            None => Ok(()),
        }
    }

    /// Stops the server, waiting for in-flight answers and for its thread.
    pub async fn stop(mut self) {
        self.handle.stop(true).await;
        if let Some(finished) = self.finished.take() {
            let _ = finished.await;
        }
    }
}

impl Drop for StubServer {
    /// A server neither stopped nor awaited (a test that panicked) is told
    /// to stop at once, so its thread and ports do not outlive it.
    fn drop(&mut self) {
        if self.finished.is_some() {
            // `stop` sends its command before the future is polled.
            drop(self.handle.stop(false));
        }
    }
}

fn serve(
    listeners: Vec<TcpListener>,
    shared: web::Data<Shared>,
) -> std::io::Result<actix_web::dev::Server> {
    let counter = shared.clone();
    let mut server = HttpServer::new(move || {
        App::new()
            .app_data(shared.clone())
            .app_data(web::PayloadConfig::new(16 * 1024 * 1024))
            .route("/health", web::get().to(health))
            .route("/__stub/behaviour", web::put().to(set_behaviour))
            .route("/__stub/stats", web::get().to(stats))
            .route("/__stub/reset", web::post().to(reset))
            .route("/__bench/passthrough", web::post().to(passthrough))
            .default_service(web::to(module_call))
    })
    .on_connect(move |connection, _: &mut Extensions| counter.on_connect(connection))
    .workers(2)
    .shutdown_timeout(1);
    for listener in listeners {
        server = server.listen(listener)?;
    }
    Ok(server.run())
}

/// `POST /__bench/passthrough` (any port): the HTTP shape of a LOW chat
/// with nothing else, the bound `bench/run.sh` compares Madre with: the
/// message in, Switch's `route-v5` and Hermes' `execute` out (through one
/// reused client per worker), the reply back. No parsing beyond reading the
/// three JSON bodies, no policy, no database.
async fn passthrough(shared: web::Data<Shared>, body: web::Bytes) -> HttpResponse {
    thread_local! {
        static CLIENT: awc::Client = awc::Client::default();
    }
    let client = CLIENT.with(Clone::clone);
    let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let prompt = request.get("message").and_then(Value::as_str).unwrap_or("");
    let url = |module: Module, path: &str| match shared.addresses.get(&module) {
        Some(addr) => format!("http://{addr}{path}"),
        None => String::new(),
    };
    let call = |url: String, body: Value| {
        let client = client.clone();
        async move {
            let mut answer = client.post(url).send_json(&body).await.ok()?;
            let bytes = answer.body().limit(1 << 20).await.ok()?;
            serde_json::from_slice::<Value>(&bytes).ok()
        }
    };
    let Some(routed) = call(
        url(Module::Switch, "/switch/route-v5"),
        json!({"prompt": prompt, "metadata": {"purpose": "passthrough"}, "source": "passthrough"}),
    )
    .await
    else {
        return HttpResponse::BadGateway().json(json!({"error": "switch did not answer"}));
    };
    let engine = routed.get("engine").cloned().unwrap_or(Value::Null);
    let Some(executed) = call(
        url(Module::Hermes, "/hermes/execute"),
        json!({"prompt": prompt, "metadata": {"engine": engine}}),
    )
    .await
    else {
        return HttpResponse::BadGateway().json(json!({"error": "hermes did not answer"}));
    };
    HttpResponse::Ok()
        .json(json!({"response": executed.get("reply").cloned().unwrap_or(Value::Null)}))
}

async fn health(shared: web::Data<Shared>, req: HttpRequest) -> HttpResponse {
    let module = shared.module_of(&req);
    HttpResponse::Ok().json(json!({"status": "ok", "module": module}))
}

async fn set_behaviour(
    shared: web::Data<Shared>,
    req: HttpRequest,
    body: web::Json<Behaviour>,
) -> HttpResponse {
    let module = shared.module_of(&req);
    shared.with(module, |s| {
        s.behaviour = body.into_inner();
        s.failures_served = 0;
    });
    HttpResponse::NoContent().finish()
}

async fn stats(shared: web::Data<Shared>, req: HttpRequest) -> HttpResponse {
    let module = shared.module_of(&req);
    HttpResponse::Ok().json(shared.with(module, |s| s.stats.clone()))
}

async fn reset(shared: web::Data<Shared>, req: HttpRequest) -> HttpResponse {
    let module = shared.module_of(&req);
    shared.with(module, |s| *s = ModuleState::default());
    HttpResponse::NoContent().finish()
}

/// Decrements the in-flight count when the answer is done (or abandoned).
struct InFlight(web::Data<Shared>, Module);

impl Drop for InFlight {
    fn drop(&mut self) {
        // saturating: a reset while the call was answered zeroed the count
        self.0.with(self.1, |s| {
            s.stats.in_flight = s.stats.in_flight.saturating_sub(1)
        });
    }
}

async fn module_call(
    shared: web::Data<Shared>,
    req: HttpRequest,
    body: web::Bytes,
) -> HttpResponse {
    let module = shared.module_of(&req);
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let (behaviour, fail_now) = shared.with(module, |s| {
        let stats = &mut s.stats;
        if stats.bodies.len() == KEPT_BODIES {
            stats.bodies.remove(0);
        }
        stats.bodies.push(request.clone());
        stats.all_calls_had_token =
            (stats.calls == 0 || stats.all_calls_had_token) && header("x-vx11-token").is_some();
        stats.calls += 1;
        stats.in_flight += 1;
        stats.peak_in_flight = stats.peak_in_flight.max(stats.in_flight);
        if let Some(key) = header("idempotency-key") {
            if stats.idempotency_keys.len() == 1000 {
                stats.idempotency_keys.remove(0);
            }
            stats.idempotency_keys.push(key);
        }
        let fail_now = s.failures_served < s.behaviour.fail_first;
        if fail_now {
            s.failures_served += 1;
        }
        (s.behaviour.clone(), fail_now)
    });
    let _in_flight = InFlight(shared.clone(), module);

    if behaviour.hang {
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
    if behaviour.latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(behaviour.latency_ms)).await;
    }
    if fail_now {
        return HttpResponse::ServiceUnavailable().json(json!({"error": "injected failure"}));
    }
    if let Some(status) = behaviour.error_status {
        let status = actix_web::http::StatusCode::from_u16(status)
            .unwrap_or(actix_web::http::StatusCode::INTERNAL_SERVER_ERROR);
        return HttpResponse::build(status).json(json!({"error": "injected error"}));
    }
    if behaviour.reset {
        let broken = futures_util::stream::once(async {
            Err::<web::Bytes, _>(std::io::Error::other("connection reset by vx11-stubs"))
        });
        return HttpResponse::Ok()
            .content_type("application/json")
            .streaming(broken);
    }
    if behaviour.garbage {
        return HttpResponse::Ok()
            .content_type("application/json")
            .body("<html>this is not json");
    }
    if let Some(n) = behaviour.body_bytes {
        let filler = "x".repeat(n.saturating_sub(12));
        return HttpResponse::Ok().json(json!({ "reply": filler }));
    }

    let prompt = request.get("prompt").and_then(Value::as_str).unwrap_or("");
    let path = req.path();
    let answer = match (module, path) {
        (Module::Switch, "/switch/route-v5") => {
            let mut answer = json!({
                "engine": "stub-engine",
                "model": "stub-engine",
                "reason": "vx11-stubs always picks stub-engine",
            });
            if let Some(intent) = behaviour.intent {
                answer["intent"] = intent;
            }
            answer
        }
        (Module::Hermes, "/hermes/execute") => {
            let engine = request
                .pointer("/metadata/engine")
                .and_then(Value::as_str)
                .unwrap_or("none");
            json!({ "reply": format!("[hermes stub via {engine}] {prompt}"), "engine": engine })
        }
        (Module::Hormiguero, "/hormiguero/task") => {
            let tasks = request
                .get("tasks")
                .and_then(Value::as_array)
                .map_or(0, Vec::len);
            json!({ "status": "accepted", "reply": format!("[hormiguero stub] {tasks} task(s) run in parallel") })
        }
        (Module::Manifestator, "/drift") => {
            json!({ "drift": [], "reply": "[manifestator stub] no drift" })
        }
        (Module::Shub, "/shub/execute") => {
            let task = request.get("task_id").cloned().unwrap_or(Value::Null);
            json!({ "status": "done", "task_id": task, "reply": "[shub stub] audio task done" })
        }
        // The gateway's event bus (SPEC §15): the body is kept in the
        // stats like every call's, for a test to read what was published.
        (Module::TentaculoLink, "/events/ingest") => json!({ "status": "accepted" }),
        (_, "/control") => json!({
            "status": "ok",
            "module": module,
            "action": request.get("action").cloned().unwrap_or(Value::Null),
            "reply": format!("[{module} stub] control accepted"),
        }),
        _ => {
            return HttpResponse::NotFound()
                .json(json!({"error": "unknown endpoint", "path": path}));
        }
    };
    HttpResponse::Ok().json(answer)
}

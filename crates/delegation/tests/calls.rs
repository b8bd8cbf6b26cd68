//! Delegation over real HTTP against vx11-stubs: the retry rule, timeouts,
//! bad answers, idempotency keys and health probes; and against a plain
//! HTTP/1.1 server that is not actix: connection reuse. Everything runs on
//! plain Tokio runtimes, multi-threaded ones included.

use chrono::Utc;
use madre_delegation::*;
use madre_models::{DepState, Module, Step, StepType};
use secrecy::SecretString;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use uuid::Uuid;
use vx11_stubs::{Behaviour, StubServer};

fn delegator(stubs: &StubServer, timeout_ms: u64, disabled: &[Module]) -> Delegator {
    let urls: BTreeMap<Module, String> =
        Module::REMOTE.iter().map(|&m| (m, stubs.url(m))).collect();
    Delegator::new(std::sync::Arc::new(Registry::new(
        urls,
        disabled,
        SecretString::from("out-token"),
        Duration::from_millis(timeout_ms),
    )))
}

fn hermes_step() -> Step {
    Step::new(
        Uuid::new_v4(),
        StepType::CallHermes,
        json!({"prompt": "hello", "metadata": {"session_id": "s"}}),
        Utc::now(),
    )
}

fn request(step: &Step) -> ModuleRequest {
    request_for_step(step, Some("e1"), "req-1").unwrap()
}

#[tokio::test]
async fn a_healthy_call_is_made_once_with_the_token_and_the_engine() {
    let stubs = StubServer::start("127.0.0.1", |_| 0).unwrap();
    let d = delegator(&stubs, 2000, &[]);
    let step = hermes_step();
    let hermes_step_id = step.step_id;
    let out = d.call(&request(&step)).await.unwrap();
    assert_eq!(out.attempts, 1);
    assert_eq!(reply_text(&out.body).unwrap(), "[hermes stub via e1] hello");
    let s = stubs.stats(Module::Hermes).await.unwrap();
    assert_eq!((s.calls, s.all_calls_had_token), (1, true));
    assert_eq!(
        s.idempotency_keys,
        vec![hermes_step_id.to_string()],
        "every attempt carries the key, the first included (SPEC §7)"
    );

    let switch = Step::new(
        Uuid::new_v4(),
        StepType::CallSwitch,
        json!({"prompt": "hi"}),
        Utc::now(),
    );
    let out = d
        .call(&request_for_step(&switch, None, "r").unwrap())
        .await
        .unwrap();
    assert_eq!(
        engine_from_switch(&out.body).as_deref(),
        Some("stub-engine")
    );
    stubs.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_5xx_is_retried_once_with_the_idempotency_key() {
    let stubs = StubServer::start("127.0.0.1", |_| 0).unwrap();
    let d = delegator(&stubs, 2000, &[]);
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
    let step = hermes_step();
    let out = d.call(&request(&step)).await.unwrap();
    assert_eq!(out.attempts, 2);
    let s = stubs.stats(Module::Hermes).await.unwrap();
    assert_eq!(s.calls, 2);
    assert_eq!(s.idempotency_keys, vec![step.step_id.to_string(); 2]);

    stubs
        .behave(
            Module::Hermes,
            &Behaviour {
                error_status: Some(500),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let before = stubs.stats(Module::Hermes).await.unwrap().calls;
    let err = d.call(&request(&step)).await.unwrap_err();
    assert_eq!(
        err,
        DelegationError::Status {
            module: Module::Hermes,
            attempts: 2,
            status: 500
        }
    );
    assert_eq!(
        stubs.stats(Module::Hermes).await.unwrap().calls - before,
        2,
        "always 500: exactly 2 calls"
    );

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
    let before = stubs.stats(Module::Hermes).await.unwrap().calls;
    let err = d.call(&request(&step)).await.unwrap_err();
    assert_eq!(err.code(), "http_400");
    assert_eq!(
        stubs.stats(Module::Hermes).await.unwrap().calls - before,
        1,
        "4xx is not retried"
    );
    stubs.stop().await;
}

#[tokio::test]
async fn resumed_steps_send_the_key_on_the_first_attempt() {
    let stubs = StubServer::start("127.0.0.1", |_| 0).unwrap();
    let d = delegator(&stubs, 2000, &[]);
    let step = hermes_step();
    d.call(&request(&step)).await.unwrap();
    assert_eq!(
        stubs.stats(Module::Hermes).await.unwrap().idempotency_keys,
        vec![step.step_id.to_string()]
    );
    stubs.stop().await;
}

#[tokio::test]
async fn hanging_refusing_garbage_and_oversized_modules_fail_with_typed_errors() {
    let stubs = StubServer::start("127.0.0.1", |_| 0).unwrap();
    let d = delegator(&stubs, 300, &[]);
    stubs
        .behave(
            Module::Hermes,
            &Behaviour {
                hang: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let started = Instant::now();
    let err = d.call(&request(&hermes_step())).await.unwrap_err();
    assert!(
        matches!(
            err,
            DelegationError::Timeout {
                attempts: 2,
                timeout_ms: 300,
                ..
            }
        ),
        "{err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "gave up quickly: {:?}",
        started.elapsed()
    );

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
    let err = d.call(&request(&hermes_step())).await.unwrap_err();
    assert!(matches!(err, DelegationError::InvalidBody { .. }), "{err}");

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
    let err = d.call(&request(&hermes_step())).await.unwrap_err();
    assert_eq!(
        err,
        DelegationError::TooLarge {
            module: Module::Hermes
        }
    );

    // a port where nothing listens: connection refused, tried twice
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let mut urls: BTreeMap<Module, String> =
        Module::REMOTE.iter().map(|&m| (m, stubs.url(m))).collect();
    urls.insert(Module::Switch, url);
    let d = Delegator::new(std::sync::Arc::new(Registry::new(
        urls,
        &[],
        SecretString::from("t"),
        Duration::from_millis(500),
    )));
    let switch = Step::new(Uuid::new_v4(), StepType::CallSwitch, json!({}), Utc::now());
    let err = d
        .call(&request_for_step(&switch, None, "r").unwrap())
        .await
        .unwrap_err();
    assert!(
        matches!(err, DelegationError::Unreachable { attempts: 2, .. }),
        "{err}"
    );
    let probe = d
        .probe(&[Module::Switch, Module::Hermes], PROBE_TIMEOUT)
        .await;
    assert_eq!(
        (probe[&Module::Switch], probe[&Module::Hermes]),
        (DepState::Down, DepState::Up)
    );
    stubs.stop().await;
}

#[tokio::test]
async fn disabled_modules_are_never_called_and_probe_as_disabled() {
    let stubs = StubServer::start("127.0.0.1", |_| 0).unwrap();
    let d = delegator(&stubs, 2000, &[Module::Hermes]);
    assert_eq!(
        d.call(&request(&hermes_step())).await.unwrap_err(),
        DelegationError::Disabled(Module::Hermes)
    );
    assert_eq!(stubs.stats(Module::Hermes).await.unwrap().calls, 0);
    let states = d.probe(&Module::REMOTE, PROBE_TIMEOUT).await;
    assert_eq!(states[&Module::Hermes], DepState::Disabled);
    assert!(
        Module::REMOTE
            .iter()
            .filter(|m| **m != Module::Hermes)
            .all(|m| states[m] == DepState::Up)
    );
    let table = HealthTable::new(d.registry());
    assert_eq!(table.snapshot()[&Module::Switch], DepState::Unknown);
    table.update(states);
    assert_eq!(table.snapshot()[&Module::Switch], DepState::Up);
    stubs.stop().await;
}

#[test]
fn step_requests_follow_the_spec_table() {
    let now = Utc::now();
    let check = |ty: StepType, payload: Value, module: Module, path: &str| {
        let step = Step::new(Uuid::new_v4(), ty, payload, now);
        let r = request_for_step(&step, None, "r").unwrap();
        assert_eq!((r.module, r.path.as_str()), (module, path));
        r
    };
    check(
        StepType::CallSwitch,
        json!({}),
        Module::Switch,
        "/switch/route-v5",
    );
    let r = check(
        StepType::CallHermes,
        json!({"prompt": "p", "metadata": {}}),
        Module::Hermes,
        "/hermes/execute",
    );
    assert_eq!(
        r.body.unwrap()["metadata"]["engine"],
        json!("default"),
        "default engine when Switch failed"
    );
    check(
        StepType::CallHormigueroTask,
        json!({}),
        Module::Hormiguero,
        "/hormiguero/task",
    );
    assert_eq!(
        check(
            StepType::CallManifestator,
            json!({}),
            Module::Manifestator,
            "/drift"
        )
        .method,
        Method::Get
    );
    check(StepType::CallShub, json!({}), Module::Shub, "/shub/execute");
    let r = check(
        StepType::CallModule,
        json!({"module": "mcp", "action": "restart", "task_id": "t"}),
        Module::Mcp,
        "/control",
    );
    assert_eq!(
        r.body.unwrap(),
        json!({"action": "restart", "params": {}, "task_id": "t"})
    );
    for ty in [
        StepType::SystemHealthcheck,
        StepType::AwaitConfirmation,
        StepType::SpawnerRequest,
        StepType::Noop,
    ] {
        assert!(
            request_for_step(&Step::new(Uuid::new_v4(), ty, json!({}), now), None, "r").is_none()
        );
    }
    assert_eq!(reply_text(&json!({"response": "a"})).as_deref(), Some("a"));
    assert_eq!(reply_text(&json!({"result": "b"})).as_deref(), Some("b"));
    assert_eq!(reply_text(&json!({"result": {"x": 1}})), None);
}

#[test]
fn registry_reads_configuration_and_names_bad_variables() {
    let token = SecretString::from("api");
    let vars = |pairs: &'static [(&'static str, &'static str)]| {
        move |k: &str| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    };
    let r = Registry::from_vars(
        vars(&[
            ("VX11_SWITCH_URL", "http://switch.local:9/"),
            ("MADRE_DISABLED_MODULES", "mcp, Shub"),
            ("MADRE_CALL_TIMEOUT_MS", "250"),
        ]),
        &token,
    )
    .unwrap();
    assert_eq!(r.url(Module::Switch), "http://switch.local:9");
    assert_eq!(r.url(Module::Hermes), "http://127.0.0.1:8003");
    assert!(!r.enabled().contains(Module::Mcp) && !r.enabled().contains(Module::Shub));
    assert_eq!(r.call_timeout(), Duration::from_millis(250));
    let r = Registry::from_vars(vars(&[]), &token).unwrap();
    assert_eq!(r.call_timeout(), DEFAULT_CALL_TIMEOUT);
    for (bad, var) in [
        (&[("VX11_HERMES_URL", "ftp://x")][..], "VX11_HERMES_URL"),
        (
            &[("MADRE_DISABLED_MODULES", "storage")][..],
            "MADRE_DISABLED_MODULES",
        ),
        (
            &[("MADRE_CALL_TIMEOUT_MS", "soon")][..],
            "MADRE_CALL_TIMEOUT_MS",
        ),
    ] {
        let err = Registry::from_vars(vars(bad), &token).unwrap_err();
        assert_eq!(err.variable, var);
        assert!(err.to_string().contains(var));
    }
}

/// Compile-time proof that the delegator can be shared across threads and
/// that its futures can be spawned on a multi-threaded runtime.
fn assert_send<T: Send>(value: T) -> T {
    value
}

fn assert_shareable<T: Send + Sync + Clone + 'static>() {}

#[test]
fn the_delegator_and_its_futures_are_send() {
    assert_shareable::<Delegator>();
    assert_shareable::<HealthTable>();
    let d = Delegator::new(std::sync::Arc::new(Registry::new(
        BTreeMap::new(),
        &[],
        SecretString::from("t"),
        Duration::from_millis(10),
    )));
    let step = hermes_step();
    let request = request(&step);
    // Built, checked, and dropped unpolled: only the types matter here.
    drop(assert_send(d.call(&request)));
    drop(assert_send(d.probe(&[Module::Hermes], PROBE_TIMEOUT)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn calls_run_on_a_multi_thread_runtime_from_spawned_tasks() {
    let stubs = StubServer::start("127.0.0.1", |_| 0).unwrap();
    let d = delegator(&stubs, 2000, &[]);
    // tokio::spawn requires Send futures; each task may move between workers.
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let d = d.clone();
            tokio::spawn(async move {
                let mut step = hermes_step();
                step.payload["prompt"] = json!(format!("hello {i}"));
                let out = d.call(&request(&step)).await.unwrap();
                let probe = d.probe(&[Module::Switch], PROBE_TIMEOUT).await;
                (reply_text(&out.body).unwrap(), probe[&Module::Switch])
            })
        })
        .collect();
    for (i, task) in tasks.into_iter().enumerate() {
        let (reply, switch) = task.await.unwrap();
        assert_eq!(reply, format!("[hermes stub via e1] hello {i}"));
        assert_eq!(switch, DepState::Up);
    }
    assert_eq!(stubs.stats(Module::Hermes).await.unwrap().calls, 16);
    stubs.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_call_is_abandoned_and_the_client_carries_on() {
    use std::sync::atomic::Ordering;
    let server = KeepAliveServer::start();
    let urls: BTreeMap<Module, String> =
        Module::REMOTE.iter().map(|&m| (m, server.url())).collect();
    let d = Delegator::new(std::sync::Arc::new(Registry::new(
        urls,
        &[],
        SecretString::from("t"),
        Duration::from_secs(30),
    )));
    let mut hanging = request(&hermes_step());
    hanging.path = "/hang".into();
    let call = d.call(&hanging);
    assert!(
        tokio::time::timeout(Duration::from_millis(200), call)
            .await
            .is_err(),
        "the hanging module made the caller give up"
    );
    // Dropping the call's future closed its connection on the client thread,
    // long before the 30 s call timeout.
    let deadline = Instant::now() + Duration::from_secs(5);
    while server.closed.load(Ordering::SeqCst) == 0 {
        assert!(
            Instant::now() < deadline,
            "the abandoned call kept its connection"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let out = d.call(&request(&hermes_step())).await.unwrap();
    assert_eq!(out.attempts, 1);
}

/// A minimal HTTP/1.1 keep-alive server on `std::net` (not actix): answers
/// every request with a small JSON body and `Content-Length`, keeps each
/// connection open until the client closes it, and counts the connections
/// it accepted. `/hang` is never answered: the server waits for the client
/// to close that connection, and counts it in `closed`.
struct KeepAliveServer {
    addr: std::net::SocketAddr,
    accepted: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    requests: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    closed: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl KeepAliveServer {
    fn start() -> Self {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicUsize, Ordering};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(AtomicUsize::new(0));
        let closed = Arc::new(AtomicUsize::new(0));
        let (count, served, hung_up) = (accepted.clone(), requests.clone(), closed.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                count.fetch_add(1, Ordering::SeqCst);
                let (served, hung_up) = (served.clone(), hung_up.clone());
                std::thread::spawn(move || Self::serve(stream, &served, &hung_up));
            }
        });
        Self {
            addr,
            accepted,
            requests,
            closed,
        }
    }

    fn serve(
        stream: std::net::TcpStream,
        served: &std::sync::atomic::AtomicUsize,
        hung_up: &std::sync::atomic::AtomicUsize,
    ) {
        use std::io::{BufRead, BufReader, Read, Write};
        let mut writer = stream.try_clone().unwrap();
        let mut reader = BufReader::new(stream);
        loop {
            let mut request_line = String::new();
            match reader.read_line(&mut request_line) {
                Ok(0) | Err(_) => return, // the client closed the connection
                Ok(_) => {}
            }
            let mut length = 0usize;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 {
                    return;
                }
                let line = line.trim_end();
                if line.is_empty() {
                    break;
                }
                if let Some((name, value)) = line.split_once(':')
                    && name.eq_ignore_ascii_case("content-length")
                {
                    length = value.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0u8; length];
            if reader.read_exact(&mut body).is_err() {
                return;
            }
            served.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            if request_line.starts_with("POST /hang ") {
                // no answer; a read returns only when the client closes
                let mut rest = Vec::new();
                let _ = reader.read_to_end(&mut rest);
                hung_up.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                return;
            }
            let answer = if request_line.starts_with("GET /health ") {
                r#"{"status":"ok"}"#.to_owned()
            } else {
                json!({"reply": "plain http/1.1", "engine": "plain"}).to_string()
            };
            let response = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{answer}",
                answer.len()
            );
            if writer.write_all(response.as_bytes()).is_err() {
                return;
            }
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequential_calls_reuse_one_connection_to_a_plain_keep_alive_server() {
    use std::sync::atomic::Ordering;
    let server = KeepAliveServer::start();
    let urls: BTreeMap<Module, String> =
        Module::REMOTE.iter().map(|&m| (m, server.url())).collect();
    let d = Delegator::new(std::sync::Arc::new(Registry::new(
        urls,
        &[],
        SecretString::from("t"),
        Duration::from_millis(2000),
    )));
    for i in 0..8 {
        let out = d.call(&request(&hermes_step())).await.unwrap();
        assert_eq!(reply_text(&out.body).as_deref(), Some("plain http/1.1"));
        assert_eq!(out.attempts, 1);
        // a probe between calls reads its answer too, so it reuses it as well
        if i % 3 == 0 {
            let states = d.probe(&[Module::Hermes], PROBE_TIMEOUT).await;
            assert_eq!(states[&Module::Hermes], DepState::Up);
        }
    }
    // a call from another task (on whichever worker) still finds it idle
    let other = d.clone();
    tokio::spawn(async move { other.call(&request(&hermes_step())).await })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(server.requests.load(Ordering::SeqCst), 8 + 3 + 1);
    assert_eq!(
        server.accepted.load(Ordering::SeqCst),
        1,
        "8 sequential calls and 3 probes use exactly one connection"
    );
}

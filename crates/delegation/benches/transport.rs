//! Outbound HTTP client: awc confined to its own thread behind a `Send`
//! handle, against one shared reqwest client, both as used by Madre: POST a
//! JSON step to Hermes on vx11-stubs (127.0.0.1), headers as in SPEC §7,
//! the answer read whole (capped) and parsed. The `Delegator` row is the
//! crate's real client, for reference.
//!
//! Run: `cargo bench -p madre-delegation --bench transport`
//! (`BENCH_CALLS`, default 4000, calls per scenario and round; `BENCH_ROUNDS`,
//! default 3, rounds alternating the designs, the median round is printed;
//! `BENCH_TRIALS`, default 100, fresh clients each making 8 sequential calls,
//! to count the connections they open). Every scenario runs twice: called
//! from a multi-threaded Tokio runtime (2 workers), and from a current-thread
//! one (as on an actix worker).
//!
//! CPU is what the client side used: the process's CPU minus the threads of
//! the in-process stubs (Linux `/proc`, 10 ms ticks), per call.

use madre_delegation::{Delegator, Method, ModuleRequest, Registry};
use madre_models::Module;
use secrecy::SecretString;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;
use vx11_stubs::StubServer;

const MAX_RESPONSE_BYTES: usize = 1 << 20;
const TIMEOUT: Duration = Duration::from_secs(5);
const CONCURRENCY: usize = 16;

/// One call, owned so it can cross to another thread.
#[derive(Clone)]
struct Call {
    url: String,
    token: String,
    request_id: String,
    body: Value,
}

type Outcome = Result<(u16, Value), String>;

// ---------------------------------------------------------------------------
// Design A: awc on a thread of its own, fed by a channel.

struct Job {
    call: Call,
    reply: oneshot::Sender<Outcome>,
}

#[derive(Clone)]
struct AwcHandle {
    jobs: mpsc::UnboundedSender<Job>,
}

impl AwcHandle {
    fn start() -> Self {
        let (jobs, mut rx) = mpsc::unbounded_channel::<Job>();
        std::thread::Builder::new()
            .name("bench-awc".into())
            .spawn(move || {
                actix_rt::System::new().block_on(async move {
                    let client = awc::Client::builder()
                        .disable_timeout()
                        .connector(awc::Connector::new().limit(512))
                        .finish();
                    while let Some(Job { call, mut reply }) = rx.recv().await {
                        let client = client.clone();
                        actix_rt::spawn(async move {
                            tokio::select! {
                                outcome = awc_exchange(&client, &call) => { let _ = reply.send(outcome); }
                                _ = reply.closed() => {}
                            }
                        });
                    }
                });
            })
            .unwrap();
        Self { jobs }
    }

    async fn call(&self, call: Call) -> Outcome {
        let (reply, answer) = oneshot::channel();
        self.jobs
            .send(Job { call, reply })
            .map_err(|_| "client thread gone".to_owned())?;
        answer.await.map_err(|_| "client thread gone".to_owned())?
    }
}

async fn awc_exchange(client: &awc::Client, call: &Call) -> Outcome {
    let exchange = async {
        let body = serde_json::to_vec(&call.body).map_err(|e| e.to_string())?;
        let mut response = client
            .post(&call.url)
            .insert_header(("X-VX11-Token", call.token.as_str()))
            .insert_header(("X-Request-Id", call.request_id.as_str()))
            .content_type("application/json")
            .send_body(body)
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        let bytes = response
            .body()
            .limit(MAX_RESPONSE_BYTES)
            .await
            .map_err(|e| e.to_string())?;
        let value = serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
        Ok((status, value))
    };
    tokio::time::timeout(TIMEOUT, exchange)
        .await
        .map_err(|_| "timeout".to_owned())?
}

// ---------------------------------------------------------------------------
// Design B: one shared reqwest client.

async fn reqwest_exchange(client: &reqwest::Client, call: &Call) -> Outcome {
    let exchange = async {
        let body = serde_json::to_vec(&call.body).map_err(|e| e.to_string())?;
        let mut response = client
            .post(&call.url)
            .header("X-VX11-Token", call.token.as_str())
            .header("X-Request-Id", call.request_id.as_str())
            .header("Content-Type", "application/json")
            .body(body)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        let mut bytes = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| e.to_string())? {
            if bytes.len() + chunk.len() > MAX_RESPONSE_BYTES {
                return Err("too large".to_owned());
            }
            bytes.extend_from_slice(&chunk);
        }
        let value = serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
        Ok((status, value))
    };
    tokio::time::timeout(TIMEOUT, exchange)
        .await
        .map_err(|_| "timeout".to_owned())?
}

// ---------------------------------------------------------------------------

#[derive(Clone)]
enum Design {
    Awc(AwcHandle),
    Reqwest(reqwest::Client),
    Delegator(Delegator),
}

impl Design {
    fn name(&self) -> &'static str {
        match self {
            Design::Awc(_) => "awc on its own thread, behind a Send handle",
            Design::Reqwest(_) => "one shared reqwest client",
            Design::Delegator(_) => "Delegator::call (the crate as shipped)",
        }
    }

    async fn call(&self, call: &Call) {
        match self {
            Design::Awc(handle) => {
                let (status, _) = handle.call(call.clone()).await.expect("awc call");
                assert_eq!(status, 200);
            }
            Design::Reqwest(client) => {
                let (status, _) = reqwest_exchange(client, call).await.expect("reqwest call");
                assert_eq!(status, 200);
            }
            Design::Delegator(delegator) => {
                let request = ModuleRequest {
                    module: Module::Hermes,
                    method: Method::Post,
                    path: "/hermes/execute".into(),
                    body: Some(call.body.clone()),
                    idempotency_key: Uuid::nil(),
                    request_id: call.request_id.clone(),
                };
                delegator.call(&request).await.expect("delegator call");
            }
        }
    }
}

/// CPU ticks of the whole process and of the stubs' threads.
fn cpu_ticks() -> (u64, u64) {
    let mut total = 0;
    let mut stubs = 0;
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return (0, 0);
    };
    for task in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let name = &stat[open + 1..close];
        let fields: Vec<&str> = stat[close + 2..].split(' ').collect();
        // utime and stime are fields 14 and 15 of stat, 12 and 13 after the name.
        let ticks = fields
            .get(11)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
            + fields
                .get(12)
                .and_then(|f| f.parse::<u64>().ok())
                .unwrap_or(0);
        total += ticks;
        if name.starts_with("vx11-stubs") || name.starts_with("actix-server") {
            stubs += ticks;
        }
    }
    (total, stubs)
}

struct Measure {
    calls_per_s: f64,
    client_cpu_us_per_call: f64,
    connections: u64,
}

async fn measure(
    design: &Design,
    stubs: &StubServer,
    call: &Call,
    calls: usize,
    concurrency: usize,
) -> Measure {
    // warm-up, then count connections from a clean state
    for _ in 0..50 {
        design.call(call).await;
    }
    let before_connections = stubs.stats(Module::Hermes).await.unwrap().connections;
    let (total0, stubs0) = cpu_ticks();
    let started = Instant::now();
    if concurrency == 1 {
        for _ in 0..calls {
            design.call(call).await;
        }
    } else {
        let mut tasks = Vec::new();
        for _ in 0..concurrency {
            let design = design.clone();
            let call = call.clone();
            tasks.push(tokio::spawn(async move {
                for _ in 0..calls / concurrency {
                    design.call(&call).await;
                }
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
    }
    let elapsed = started.elapsed();
    let (total1, stubs1) = cpu_ticks();
    let client_ticks = (total1 - total0).saturating_sub(stubs1 - stubs0);
    let connections = stubs.stats(Module::Hermes).await.unwrap().connections - before_connections;
    Measure {
        calls_per_s: calls as f64 / elapsed.as_secs_f64(),
        client_cpu_us_per_call: client_ticks as f64 * 10_000.0 / calls as f64,
        connections,
    }
}

/// The two designs with fresh clients (empty pools), and the crate's own.
fn designs(delegator: &Delegator) -> Vec<Design> {
    vec![
        Design::Awc(AwcHandle::start()),
        Design::Reqwest(reqwest::Client::builder().no_proxy().build().unwrap()),
        Design::Delegator(delegator.clone()),
    ]
}

fn call_for(stubs: &StubServer) -> Call {
    Call {
        url: format!("{}/hermes/execute", stubs.url(Module::Hermes)),
        token: "bench-token".into(),
        request_id: "bench".into(),
        body: json!({
            "prompt": "summarise the state of the cluster in one line",
            "metadata": {"engine": "stub-engine", "session_id": "bench-session",
                         "intent_id": Uuid::new_v4()},
        }),
    }
}

fn delegator_for(stubs: &StubServer) -> Delegator {
    let urls: BTreeMap<Module, String> =
        Module::REMOTE.iter().map(|&m| (m, stubs.url(m))).collect();
    Delegator::new(Arc::new(Registry::new(
        urls,
        &[],
        SecretString::from("bench-token"),
        TIMEOUT,
    )))
}

async fn run(runtime_name: &str, calls: usize, rounds: usize, trials: usize) {
    let stubs = StubServer::start("127.0.0.1", |_| 0).unwrap();
    let call = call_for(&stubs);
    let delegator = delegator_for(&stubs);

    // Connection reuse: `trials` times, a fresh client makes 8 sequential
    // calls; how many connections did the stubs accept from it?
    for design in designs(&delegator).into_iter().take(2) {
        let mut histogram = BTreeMap::new();
        for _ in 0..trials {
            let fresh = match &design {
                Design::Awc(_) => Design::Awc(AwcHandle::start()),
                _ => Design::Reqwest(reqwest::Client::builder().no_proxy().build().unwrap()),
            };
            let before = stubs.stats(Module::Hermes).await.unwrap().connections;
            for _ in 0..8 {
                fresh.call(&call).await;
            }
            // let a connection started in the background reach the stubs
            tokio::time::sleep(Duration::from_millis(20)).await;
            let used = stubs.stats(Module::Hermes).await.unwrap().connections - before;
            *histogram.entry(used).or_insert(0u32) += 1;
        }
        let histogram: Vec<String> = histogram
            .iter()
            .map(|(connections, times)| format!("{connections} connection(s): {times} time(s)"))
            .collect();
        println!(
            "reuse | {} | {runtime_name} | {trials} x (fresh client, 8 sequential calls) | {} |",
            design.name(),
            histogram.join(", ")
        );
    }

    let designs = designs(&delegator);
    for concurrency in [1, CONCURRENCY] {
        let mut results: Vec<Vec<Measure>> = designs.iter().map(|_| Vec::new()).collect();
        for _ in 0..rounds {
            for (design, results) in designs.iter().zip(results.iter_mut()) {
                results.push(measure(design, &stubs, &call, calls, concurrency).await);
            }
        }
        for (design, mut results) in designs.iter().zip(results) {
            let opened: u64 = results.iter().map(|m| m.connections).sum();
            results.sort_by(|a, b| a.calls_per_s.total_cmp(&b.calls_per_s));
            let m = &results[results.len() / 2];
            let scenario = if concurrency == 1 {
                "sequential".to_owned()
            } else {
                format!("{concurrency}-way concurrent")
            };
            println!(
                "| {} | {runtime_name} | {scenario} | {:.0} | {:.0} | {opened} |",
                design.name(),
                m.calls_per_s,
                m.client_cpu_us_per_call,
            );
        }
    }
    stubs.stop().await;
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    // `cargo bench` passes `--bench`; anything else (e.g. `cargo test
    // --benches`) runs one tiny round only, as a smoke test.
    let smoke = !std::env::args().any(|a| a == "--bench");
    let calls = if smoke {
        64
    } else {
        env_usize("BENCH_CALLS", 4000)
    };
    let rounds = if smoke {
        1
    } else {
        env_usize("BENCH_ROUNDS", 3)
    };
    let trials = if smoke {
        2
    } else {
        env_usize("BENCH_TRIALS", 100)
    };
    println!(
        "{calls} calls per scenario, {rounds} round(s) alternating the designs, median round shown"
    );
    println!(
        "| design | caller's runtime | scenario | calls/s | client CPU µs/call | connections opened after warm-up, all rounds |"
    );
    println!("|---|---|---|---|---|---|");
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(run("multi-thread (2 workers)", calls, rounds, trials));
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(run("current-thread", calls, rounds, trials));
}

//! Madre's HTTP client to the other VX11 modules: where each module lives
//! ([`Registry`]), how each step type is called ([`request_for_step`]), the
//! retry rule, and the health probes that feed a shared up/down table
//! ([`HealthTable`]).
//!
//! # Design
//!
//! [`Delegator`] is `Send + Sync + Clone`, and the futures of
//! [`Delegator::call`] and [`Delegator::probe`] are `Send`: they run on any
//! Tokio runtime, the multi-threaded one included, on actix's workers, and
//! need neither a `LocalSet` nor the caller's timer. The HTTP itself is done
//! by awc confined to one thread of its own (`madre-http`, an actix system
//! with one awc client, so one connection pool for the whole process, as
//! SPEC §7 asks). A `Delegator` holds a handle to that thread: each attempt
//! goes over a channel as owned data (URL, headers, the serialized body and
//! the deadline) and comes back as the status and the body's bytes, which
//! the caller parses. Dropping a call's future abandons the exchange on the
//! client thread as well.
//!
//! Why awc on a thread rather than one shared reqwest client: measured side
//! by side (`cargo bench -p madre-delegation --bench transport`, figures in
//! docs/benchmarks.md). Called from a multi-threaded runtime, awc behind the
//! handle made sequential calls faster, for less CPU per call, and was at
//! least as fast 16-way; from a current-thread runtime the two were within
//! noise. And awc returns a connection to its pool while the answer's last
//! bytes are read, so a call made right after another always finds it idle;
//! hyper's pool (under reqwest) puts it back from a task it spawns, and a
//! call that comes first opens a new connection meanwhile: on the
//! multi-threaded runtime, 8 sequential calls used 2 or 3 connections in
//! most trials.
//!
//! # Rules
//!
//! - The retry rule of SPEC §7: a module that does not answer (connect
//!   error, timeout, 5xx) is tried exactly once more; a 4xx is final. Every
//!   attempt, the first included, carries the step's `Idempotency-Key`.
//! - Each attempt has the registry's per-call timeout, over the whole
//!   exchange (connect, send, read); answers are capped at
//!   [`MAX_RESPONSE_BYTES`].
//! - Every module has a circuit breaker ([`Breakers`]) fed by every
//!   attempt and every probe: after consecutive failures it opens, and a
//!   call to the module fails at once with `<module>_unavailable`
//!   ([`DelegationError::Unavailable`]) until one trial call succeeds. The
//!   trial, and any attempt the breaker would refuse, gets no retry.
//! - Every answer is read to its end, health probes and error statuses
//!   included, so its connection goes back to the pool: sequential calls to
//!   a keep-alive server, actix or not, use one connection.

mod breaker;
mod client;
mod registry;

pub use breaker::{Admission, Breaker, BreakerConfig, Breakers, Signal, Ticket};
pub use registry::{ConfigError, DEFAULT_CALL_TIMEOUT, MAX_CALL_TIMEOUT_MS, Registry};

use bytes::Bytes;
use client::{Answer, BodyError, Exchange, ExchangeError, HttpClient};
use futures_util::future::join_all;
use madre_models::{BreakerState, DepState, Module, Step, StepType};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use uuid::Uuid;

/// Largest module answer Madre reads; a longer one is an error.
pub const MAX_RESPONSE_BYTES: usize = 1 << 20;

/// Timeout of one health probe.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a call to a module failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DelegationError {
    /// The module is turned off by configuration.
    #[error("{0} is disabled")]
    Disabled(Module),
    /// No connection could be made (after the retry).
    #[error("{module} unreachable after {attempts} attempt(s): {detail}")]
    Unreachable {
        /// The module.
        module: Module,
        /// Attempts made.
        attempts: u32,
        /// The connect error.
        detail: String,
    },
    /// No answer within the call timeout (after the retry).
    #[error("{module} did not answer within {timeout_ms} ms ({attempts} attempt(s))")]
    Timeout {
        /// The module.
        module: Module,
        /// Attempts made.
        attempts: u32,
        /// The per-call timeout.
        timeout_ms: u64,
    },
    /// The module answered with an error status (4xx at once, 5xx after the retry).
    #[error("{module} answered HTTP {status} ({attempts} attempt(s))")]
    Status {
        /// The module.
        module: Module,
        /// Attempts made.
        attempts: u32,
        /// The HTTP status.
        status: u16,
    },
    /// The answer was not JSON.
    #[error("{module} answered something that is not JSON: {detail}")]
    InvalidBody {
        /// The module.
        module: Module,
        /// The parse error.
        detail: String,
    },
    /// The answer exceeded [`MAX_RESPONSE_BYTES`].
    #[error("{module} answered more than {MAX_RESPONSE_BYTES} bytes")]
    TooLarge {
        /// The module.
        module: Module,
    },
    /// Madre's own HTTP client had more calls waiting than it takes, past
    /// the call's deadline: the call was not sent (nothing is known of the
    /// module). Answered 503 where it can still be refused.
    #[error("the call to {0} was not sent: Madre's HTTP client is saturated; retry later")]
    Busy(Module),
    /// The module's circuit breaker is open (it failed repeatedly, or its
    /// probe did): the call was not made.
    #[error(
        "{0} is unavailable: it failed repeatedly and is not called until a trial call succeeds"
    )]
    Unavailable(Module),
}

impl DelegationError {
    /// A short machine-readable code (`timeout`, `unreachable`, `http_500`…).
    pub fn code(&self) -> String {
        match self {
            DelegationError::Disabled(m) => format!("{m}_disabled"),
            DelegationError::Unreachable { .. } => "unreachable".into(),
            DelegationError::Timeout { .. } => "timeout".into(),
            DelegationError::Status { status, .. } => format!("http_{status}"),
            DelegationError::InvalidBody { .. } => "invalid_body".into(),
            DelegationError::TooLarge { .. } => "body_too_large".into(),
            DelegationError::Unavailable(m) => format!("{m}_unavailable"),
            DelegationError::Busy(_) => "madre_busy".into(),
        }
    }
}

/// HTTP method of a module call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// GET, no body.
    Get,
    /// POST with a JSON body.
    Post,
}

/// One call to a module.
#[derive(Debug, Clone, PartialEq)]
pub struct ModuleRequest {
    /// The module called.
    pub module: Module,
    /// GET or POST.
    pub method: Method,
    /// Path under the module's base URL.
    pub path: String,
    /// JSON body for POST.
    pub body: Option<Value>,
    /// Sent as `Idempotency-Key` on every attempt, the first included
    /// (SPEC §7): the step's id, so a module can match a retry or a resumed
    /// call to an attempt it already ran.
    pub idempotency_key: Uuid,
    /// Sent as `X-Request-Id`.
    pub request_id: String,
}

/// A successful call.
#[derive(Debug, Clone, PartialEq)]
pub struct CallOutcome {
    /// The JSON answer.
    pub body: Value,
    /// Attempts it took (1 or 2).
    pub attempts: u32,
}

/// The HTTP call a step makes (SPEC §7), or `None` for steps Madre handles
/// itself (healthcheck, confirmation, spawner queue, NOOP). `engine` is
/// Switch's choice, passed to Hermes.
pub fn request_for_step(
    step: &Step,
    engine: Option<&str>,
    request_id: &str,
) -> Option<ModuleRequest> {
    let payload = &step.payload;
    let (module, method, path, body) = match step.step_type {
        StepType::CallSwitch => (
            Module::Switch,
            Method::Post,
            "/switch/route-v5".to_owned(),
            Some(payload.clone()),
        ),
        StepType::CallHermes => {
            let mut body = payload.clone();
            if let Some(meta) = body.get_mut("metadata").and_then(Value::as_object_mut) {
                meta.insert("engine".into(), json!(engine.unwrap_or("default")));
            }
            (
                Module::Hermes,
                Method::Post,
                "/hermes/execute".to_owned(),
                Some(body),
            )
        }
        StepType::CallHormigueroTask => (
            Module::Hormiguero,
            Method::Post,
            "/hormiguero/task".to_owned(),
            Some(payload.clone()),
        ),
        StepType::CallManifestator => {
            (Module::Manifestator, Method::Get, "/drift".to_owned(), None)
        }
        StepType::CallShub => (
            Module::Shub,
            Method::Post,
            "/shub/execute".to_owned(),
            Some(payload.clone()),
        ),
        StepType::CallModule => {
            let module = step.module();
            let body = json!({
                "action": payload.get("action").cloned().unwrap_or(Value::Null),
                "params": payload.get("params").cloned().unwrap_or_else(|| json!({})),
                "task_id": payload.get("task_id").cloned().unwrap_or(Value::Null),
            });
            (module, Method::Post, "/control".to_owned(), Some(body))
        }
        StepType::SystemHealthcheck
        | StepType::AwaitConfirmation
        | StepType::SpawnerRequest
        | StepType::Noop => return None,
    };
    Some(ModuleRequest {
        module,
        method,
        path,
        body,
        idempotency_key: step.step_id,
        request_id: request_id.to_owned(),
    })
}

/// The engine Switch chose: its `engine` field, else `model`.
pub fn engine_from_switch(answer: &Value) -> Option<String> {
    answer
        .get("engine")
        .or_else(|| answer.get("model"))
        .and_then(Value::as_str)
        .map(str::to_owned)
}

/// The text to show from a module's answer: `reply`, else `response`, else
/// `result` when it is a string.
pub fn reply_text(answer: &Value) -> Option<String> {
    ["reply", "response", "result"]
        .iter()
        .find_map(|k| answer.get(*k).and_then(Value::as_str))
        .map(str::to_owned)
}

enum Attempt {
    Done(Value),
    /// Never sent: nothing to tell the breaker, no retry.
    NotSent(DelegationError),
    /// Worth one more try.
    Retry(DelegationError),
    Final(DelegationError),
}

/// Calls modules according to a [`Registry`], through the process's one
/// HTTP client. Cheap to clone; `Send + Sync`, and its futures are `Send`,
/// so it works from any Tokio runtime (see the crate docs).
#[derive(Clone, Debug)]
pub struct Delegator {
    registry: Arc<Registry>,
    client: HttpClient,
    breakers: Breakers,
}

impl Delegator {
    /// A delegator for these modules, sharing the process's HTTP client
    /// (started on first use).
    pub fn new(registry: Arc<Registry>) -> Self {
        Self::with_breakers(registry, BreakerConfig::default())
    }

    /// As [`Delegator::new`], with this circuit-breaker rule instead of
    /// the default one.
    pub fn with_breakers(registry: Arc<Registry>, breaker: BreakerConfig) -> Self {
        Self {
            registry,
            client: HttpClient::global(),
            breakers: Breakers::new(breaker),
        }
    }

    /// The registry in use.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The circuit breaker of every enabled module, for `/health` and
    /// `/metrics`.
    pub fn breaker_states(&self) -> BTreeMap<Module, BreakerState> {
        let enabled = self.registry.enabled();
        self.breakers.states(
            Module::REMOTE
                .iter()
                .copied()
                .filter(|m| enabled.contains(*m)),
        )
    }

    /// The state of `module`'s circuit breaker.
    pub fn breaker_state(&self, module: Module) -> BreakerState {
        self.breakers.state(module)
    }

    /// Makes the call, retrying once on connect error, timeout or 5xx.
    /// Fails at once with [`DelegationError::Unavailable`] when the
    /// module's breaker is open; the retry is made only when the breaker
    /// still admits it (not after a failed trial, nor once the first
    /// failure opened it).
    pub async fn call(&self, request: &ModuleRequest) -> Result<CallOutcome, DelegationError> {
        if !self.registry.enabled().contains(request.module) {
            return Err(DelegationError::Disabled(request.module));
        }
        let ticket = self
            .breakers
            .admit(request.module)
            .ok_or(DelegationError::Unavailable(request.module))?;
        // Serialized once (compact JSON; a `Value` always serializes), and
        // shared by both attempts.
        let body = request
            .body
            .as_ref()
            .map(|body| Bytes::from(body.to_string()));
        let timeout = self.registry.call_timeout();
        let first = self
            .attempt(request, body.clone(), 1, timeout, ticket)
            .await;
        let retry = match first {
            Attempt::Done(body) => return Ok(CallOutcome { body, attempts: 1 }),
            Attempt::Final(e) | Attempt::NotSent(e) => return Err(e),
            Attempt::Retry(e) => e,
        };
        let Some(ticket) = self.breakers.admit(request.module) else {
            tracing::warn!(module = %request.module, error = %retry, "module call failed; its breaker is open, no retry");
            return Err(retry);
        };
        tracing::warn!(module = %request.module, error = %retry, "module call failed; retrying once");
        match self.attempt(request, body, 2, timeout, ticket).await {
            Attempt::Done(body) => Ok(CallOutcome { body, attempts: 2 }),
            Attempt::Final(e) | Attempt::Retry(e) | Attempt::NotSent(e) => Err(e),
        }
    }

    /// Makes the call once, within `timeout` (capped at the registry's call
    /// timeout), with no retry: for a question whose answer is optional,
    /// such as Switch's intent at intake (SPEC 4a), where a slow module
    /// must cost at most `timeout`.
    pub async fn call_once(
        &self,
        request: &ModuleRequest,
        timeout: Duration,
    ) -> Result<Value, DelegationError> {
        if !self.registry.enabled().contains(request.module) {
            return Err(DelegationError::Disabled(request.module));
        }
        let ticket = self
            .breakers
            .admit(request.module)
            .ok_or(DelegationError::Unavailable(request.module))?;
        let body = request
            .body
            .as_ref()
            .map(|body| Bytes::from(body.to_string()));
        let timeout = timeout.min(self.registry.call_timeout());
        match self.attempt(request, body, 1, timeout, ticket).await {
            Attempt::Done(body) => Ok(body),
            Attempt::Final(e) | Attempt::Retry(e) | Attempt::NotSent(e) => Err(e),
        }
    }

    /// One attempt, reported to the module's breaker through `ticket`:
    /// an answer of any status is the module answering; a connect error,
    /// a timeout, a 5xx or a broken answer is a failure.
    async fn attempt(
        &self,
        request: &ModuleRequest,
        body: Option<Bytes>,
        attempts: u32,
        timeout: Duration,
        ticket: Ticket,
    ) -> Attempt {
        let outcome = self.exchange(request, body, attempts, timeout).await;
        match outcome {
            Attempt::Retry(_) => ticket.failed(),
            Attempt::Done(_) | Attempt::Final(_) => ticket.answered(),
            // A trial not sent lets the next call try.
            Attempt::NotSent(_) => drop(ticket),
        }
        outcome
    }

    async fn exchange(
        &self,
        request: &ModuleRequest,
        body: Option<Bytes>,
        attempts: u32,
        timeout: Duration,
    ) -> Attempt {
        let module = request.module;
        // On every attempt, the first included (SPEC §7): a module whose
        // first attempt ran but whose answer was lost (a timeout, a crash
        // of Madre) can match the retry or the resumed call to it.
        let headers = vec![
            ("X-Request-Id", request.request_id.clone()),
            ("Idempotency-Key", request.idempotency_key.to_string()),
        ];
        let exchange = Exchange {
            method: request.method,
            url: format!("{}{}", self.registry.url(module), request.path),
            token: self.registry.outbound_token().clone(),
            headers,
            body,
            timeout,
            limit: MAX_RESPONSE_BYTES,
        };
        match self.client.send(exchange).await {
            Err(ExchangeError::Busy) => Attempt::NotSent(DelegationError::Busy(module)),
            Err(ExchangeError::Timeout) => Attempt::Retry(DelegationError::Timeout {
                module,
                attempts,
                timeout_ms: timeout.as_millis().try_into().unwrap_or(u64::MAX),
            }),
            Err(ExchangeError::Unreachable(detail)) => {
                Attempt::Retry(DelegationError::Unreachable {
                    module,
                    attempts,
                    detail,
                })
            }
            Ok(Answer { status, body }) => {
                if status >= 500 {
                    return Attempt::Retry(DelegationError::Status {
                        module,
                        attempts,
                        status,
                    });
                }
                if status >= 400 {
                    return Attempt::Final(DelegationError::Status {
                        module,
                        attempts,
                        status,
                    });
                }
                let bytes = match body {
                    Ok(bytes) => bytes,
                    Err(BodyError::TooLarge) => {
                        return Attempt::Final(DelegationError::TooLarge { module });
                    }
                    Err(BodyError::Broken(detail)) => {
                        return Attempt::Retry(DelegationError::Unreachable {
                            module,
                            attempts,
                            detail,
                        });
                    }
                };
                if bytes.is_empty() {
                    return Attempt::Done(Value::Null);
                }
                match serde_json::from_slice(&bytes) {
                    Ok(body) => Attempt::Done(body),
                    Err(e) => Attempt::Final(DelegationError::InvalidBody {
                        module,
                        detail: e.to_string(),
                    }),
                }
            }
        }
    }

    /// Probes `GET /health` of each of `modules` concurrently, each within
    /// `timeout`; 200 is up. Disabled modules are reported disabled without
    /// a call. Each finding feeds the module's breaker: a failed probe opens
    /// it, a good one lets an open breaker try its trial call now. The answers are read (up to [`MAX_RESPONSE_BYTES`]) so their
    /// connections are reused.
    pub async fn probe(&self, modules: &[Module], timeout: Duration) -> BTreeMap<Module, DepState> {
        let checks = modules.iter().map(|&module| async move {
            if !self.registry.enabled().contains(module) {
                return (module, DepState::Disabled);
            }
            let exchange = Exchange {
                method: Method::Get,
                url: format!("{}/health", self.registry.url(module)),
                token: self.registry.outbound_token().clone(),
                headers: Vec::new(),
                body: None,
                timeout,
                limit: MAX_RESPONSE_BYTES,
            };
            let state = match self.client.send(exchange).await {
                Ok(Answer { status: 200, .. }) => DepState::Up,
                // Not sent: Madre's client is saturated, the module unknown.
                Err(ExchangeError::Busy) => return (module, DepState::Unknown),
                _ => DepState::Down,
            };
            self.breakers.probed(module, state == DepState::Up);
            (module, state)
        });
        join_all(checks).await.into_iter().collect()
    }
}

/// The last probe of every module, shared between the background prober
/// and whoever answers `/health`. Reading never waits on a module.
#[derive(Clone, Debug, Default)]
pub struct HealthTable(Arc<RwLock<BTreeMap<Module, DepState>>>);

impl HealthTable {
    /// A table with every remote module `unknown` (or `disabled`).
    pub fn new(registry: &Registry) -> Self {
        let table = Module::REMOTE
            .iter()
            .map(|&m| {
                (
                    m,
                    if registry.enabled().contains(m) {
                        DepState::Unknown
                    } else {
                        DepState::Disabled
                    },
                )
            })
            .collect();
        Self(Arc::new(RwLock::new(table)))
    }

    /// Records a probe's findings.
    pub fn update(&self, states: BTreeMap<Module, DepState>) {
        let mut table = self.0.write().unwrap_or_else(|p| p.into_inner());
        table.extend(states);
    }

    /// The current states.
    pub fn snapshot(&self) -> BTreeMap<Module, DepState> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

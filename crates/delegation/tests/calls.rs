//! Delegation over real HTTP against vx11-stubs: the retry rule, timeouts,
//! bad answers, idempotency keys and health probes.

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

fn request(step: &Step, resumed: bool) -> ModuleRequest {
    request_for_step(step, Some("e1"), "req-1", resumed).unwrap()
}

#[actix_rt::test]
async fn a_healthy_call_is_made_once_with_the_token_and_the_engine() {
    let stubs = StubServer::start("127.0.0.1", |_| 0).unwrap();
    let d = delegator(&stubs, 2000, &[]);
    let out = d.call(&request(&hermes_step(), false)).await.unwrap();
    assert_eq!(out.attempts, 1);
    assert_eq!(reply_text(&out.body).unwrap(), "[hermes stub via e1] hello");
    let s = stubs.stats(Module::Hermes).await.unwrap();
    assert_eq!((s.calls, s.all_calls_had_token), (1, true));
    assert!(
        s.idempotency_keys.is_empty(),
        "a first attempt carries no key"
    );

    let switch = Step::new(
        Uuid::new_v4(),
        StepType::CallSwitch,
        json!({"prompt": "hi"}),
        Utc::now(),
    );
    let out = d
        .call(&request_for_step(&switch, None, "r", false).unwrap())
        .await
        .unwrap();
    assert_eq!(
        engine_from_switch(&out.body).as_deref(),
        Some("stub-engine")
    );
    stubs.stop().await;
}

#[actix_rt::test]
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
    let out = d.call(&request(&step, false)).await.unwrap();
    assert_eq!(out.attempts, 2);
    let s = stubs.stats(Module::Hermes).await.unwrap();
    assert_eq!(s.calls, 2);
    assert_eq!(s.idempotency_keys, vec![step.step_id.to_string()]);

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
    let err = d.call(&request(&step, false)).await.unwrap_err();
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
    let err = d.call(&request(&step, false)).await.unwrap_err();
    assert_eq!(err.code(), "http_400");
    assert_eq!(
        stubs.stats(Module::Hermes).await.unwrap().calls - before,
        1,
        "4xx is not retried"
    );
    stubs.stop().await;
}

#[actix_rt::test]
async fn resumed_steps_send_the_key_on_the_first_attempt() {
    let stubs = StubServer::start("127.0.0.1", |_| 0).unwrap();
    let d = delegator(&stubs, 2000, &[]);
    let step = hermes_step();
    d.call(&request(&step, true)).await.unwrap();
    assert_eq!(
        stubs.stats(Module::Hermes).await.unwrap().idempotency_keys,
        vec![step.step_id.to_string()]
    );
    stubs.stop().await;
}

#[actix_rt::test]
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
    let err = d.call(&request(&hermes_step(), false)).await.unwrap_err();
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
    let err = d.call(&request(&hermes_step(), false)).await.unwrap_err();
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
    let err = d.call(&request(&hermes_step(), false)).await.unwrap_err();
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
        .call(&request_for_step(&switch, None, "r", false).unwrap())
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

#[actix_rt::test]
async fn disabled_modules_are_never_called_and_probe_as_disabled() {
    let stubs = StubServer::start("127.0.0.1", |_| 0).unwrap();
    let d = delegator(&stubs, 2000, &[Module::Hermes]);
    assert_eq!(
        d.call(&request(&hermes_step(), false)).await.unwrap_err(),
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
        let r = request_for_step(&step, None, "r", false).unwrap();
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
            request_for_step(
                &Step::new(Uuid::new_v4(), ty, json!({}), now),
                None,
                "r",
                false
            )
            .is_none()
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

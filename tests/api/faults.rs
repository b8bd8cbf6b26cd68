//! Modules that fail, hang, answer garbage or are down.

use crate::helpers::*;
use madre_models::Module;
use serde_json::json;
use std::time::Duration;
use vx11_stubs::Behaviour;

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
    // The database writer's figures: the chat's three commits at least
    // (counters), nothing queued now (gauge).
    let counter = |name: &str| -> u64 {
        let prefix = format!("{name} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} missing from /metrics:\n{text}"))
    };
    assert!(counter("madre_db_commits_total") >= 3);
    assert!(counter("madre_db_writes_total") >= counter("madre_db_commits_total"));
    assert!(counter("madre_db_statements_total") > 0);
    if !is_postgres() {
        // SQLite's WAL; PostgreSQL's is the server's own.
        assert!(counter("madre_db_wal_frames_total") > 0);
    }
    assert_eq!(counter("madre_db_write_queue_depth"), 0);
    assert!(text.contains("# TYPE madre_db_commit_seconds counter"));
    assert!(!text.contains("# EOF"), "more families may follow");
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
    // The plan's steps are under test here, so Switch is not asked at
    // intake; intake faults are tested in `intake.rs`.
    let app = spawn_app_with(&[
        ("MADRE_CALL_TIMEOUT_MS", "300"),
        ("MADRE_SWITCH_INTENT", "off"),
    ])
    .await;
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
            assert_eq!(s(&r.body["status"]), "ERROR", "{module} down");
            assert!(down_error(module, &error), "{module} down: {error}");
        }
        app.stop().await;
    }
    assert_no_panic(&panics);
}

/// The error of a required step whose module is down: `unreachable` when
/// it was called, `<module>_unavailable` when the probe had already found
/// it down and its breaker failed the call at once.
fn down_error(module: Module, error: &str) -> bool {
    error == "unreachable" || error == format!("{module}_unavailable")
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
        let (status, error) = down.plan_outcome(&plan).await;
        assert_eq!(status, "ERROR", "{module} down");
        assert!(down_error(module, &error), "{module} down: {error}");
        down.stop().await;
    }
    app.stop().await;
    assert_no_panic(&panics);
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

/// SPEC §7: every attempt of a step carries `Idempotency-Key: <step_id>`,
/// the first included, so a module that ran a first attempt whose answer
/// was lost can match the retry to it and not run it twice.
#[actix_rt::test]
async fn every_attempt_carries_the_step_idempotency_key() {
    let app = spawn_app().await;
    app.stubs
        .behave(
            Module::Hermes,
            &Behaviour {
                fail_first: 1,
                ..Behaviour::default()
            },
        )
        .await
        .unwrap();
    let r = timed_chat(&app, "hello").await;
    assert_eq!(s(&r.body["status"]), "DONE", "{}", r.body);
    let detail = app
        .send(
            "GET",
            &format!("/madre/plans/{}", s(&r.body["plan_id"])),
            Some(VIEWER),
            None,
        )
        .await;
    let steps = detail.body["plan"]["steps"].as_array().unwrap().clone();
    let hermes = steps
        .iter()
        .find(|step| step["type"] == json!("CALL_HERMES"))
        .unwrap();
    let stats = app.stubs.stats(Module::Hermes).await.unwrap();
    assert_eq!(stats.calls, 2);
    assert_eq!(
        stats.idempotency_keys,
        vec![s(&hermes["step_id"]).to_owned(); 2],
        "the first attempt and the retry"
    );
    // A call that succeeds at once carries it too.
    let r = timed_chat(&app, "hello again").await;
    assert_eq!(s(&r.body["status"]), "DONE", "{}", r.body);
    let stats = app.stubs.stats(Module::Hermes).await.unwrap();
    assert_eq!((stats.calls, stats.idempotency_keys.len()), (3, 3));
    app.stop().await;
}

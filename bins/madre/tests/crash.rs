//! Crash durability of the real binary: concurrent chats, SIGKILL mid-load
//! three times in a row, restart on the same data directory each time.
//! Afterwards every acknowledged request is logged and its plan readable,
//! the database is intact, no plan is left RUNNING, and every WAITING plan
//! can still be confirmed with its token.

use madre_models::Module;
use serde_json::{Value, json};
use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};
use vx11_stubs::{Behaviour, StubServer};

mod common;

use common::{free_port, get_json, post_json, spawn_madre, wait_listening};

const TOKEN: &str = "crash-test-token";

async fn post(base: &str, path: &str, body: Value) -> Option<(u16, Value)> {
    post_json(base, path, TOKEN, body).await
}

async fn get(base: &str, path: &str) -> (u16, Value) {
    get_json(base, path, TOKEN).await
}

#[actix_rt::test]
async fn three_sigkills_mid_load_lose_nothing_acknowledged() {
    let stubs = StubServer::start("127.0.0.1", |_| 0).unwrap();
    // slow enough that plans are mid-flight when the process dies
    stubs
        .behave(
            Module::Hermes,
            &Behaviour {
                latency_ms: 40,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let acked: Rc<RefCell<Vec<Value>>> = Rc::new(RefCell::new(Vec::new()));

    for round in 0..3 {
        let port = free_port();
        let mut child = spawn_madre(&data, port, &stubs, Some(TOKEN));
        wait_listening(port).await;
        let base = format!("http://127.0.0.1:{port}");
        let mut senders = Vec::new();
        for worker in 0..8 {
            let (base, acked) = (base.clone(), acked.clone());
            senders.push(actix_rt::spawn(async move {
                for i in 0..200 {
                    let message = if (i + worker) % 4 == 0 {
                        "delete all data".to_owned()
                    } else {
                        format!("hello {round}-{worker}-{i}")
                    };
                    match post(&base, "/madre/chat", json!({ "message": message })).await {
                        Some((200, body)) => acked.borrow_mut().push(body),
                        Some((status, body)) => panic!("unexpected {status}: {body}"),
                        None => break, // the server died under us
                    }
                }
            }));
        }
        let before = acked.borrow().len();
        let deadline = Instant::now() + Duration::from_secs(20);
        while acked.borrow().len() < before + 40 {
            assert!(Instant::now() < deadline, "no progress in round {round}");
            actix_rt::time::sleep(Duration::from_millis(10)).await;
        }
        child.kill().unwrap(); // SIGKILL
        let _ = child.wait();
        for sender in senders {
            let _ = sender.await;
        }
    }

    let port = free_port();
    let mut child = spawn_madre(&data, port, &stubs, Some(TOKEN));
    wait_listening(port).await;
    let base = format!("http://127.0.0.1:{port}");
    // the resume finishes every plan that was left RUNNING
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, running) = get(&base, "/madre/plans?status=RUNNING&limit=200").await;
        let (_, pending) = get(&base, "/madre/plans?status=PENDING&limit=200").await;
        let stuck = running["plans"].as_array().map_or(0, Vec::len)
            + pending["plans"].as_array().map_or(0, Vec::len);
        if stuck == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{stuck} plans still RUNNING/PENDING after the restart"
        );
        actix_rt::time::sleep(Duration::from_millis(50)).await;
    }

    let acked = acked.borrow().clone();
    assert!(
        acked.len() >= 120,
        "only {} requests acknowledged",
        acked.len()
    );
    let mut confirmed = 0;
    for body in &acked {
        let plan_id = body["plan_id"].as_str().unwrap();
        let (status, detail) = get(&base, &format!("/madre/plans/{plan_id}")).await;
        assert_eq!(status, 200, "acknowledged plan {plan_id} is not readable");
        let plan_status = detail["plan"]["status"].as_str().unwrap().to_owned();
        assert_ne!(plan_status, "RUNNING");
        if body["status"] == "WAITING" {
            assert_eq!(
                plan_status, "WAITING",
                "a waiting plan changed without confirmation"
            );
            let token = body["confirm_token"].as_str().unwrap();
            let (status, answer) = post(
                &base,
                &format!("/madre/plans/{plan_id}/confirm"),
                json!({ "confirm_token": token }),
            )
            .await
            .unwrap();
            assert_eq!(
                (status, answer["plan_status"].as_str()),
                (200, Some("DONE")),
                "{answer}"
            );
            confirmed += 1;
        }
    }
    assert!(confirmed > 0);
    eprintln!(
        "{} acknowledged across 3 SIGKILLs, all readable; {confirmed} WAITING plans confirmed to DONE",
        acked.len()
    );
    child.kill().unwrap();
    let _ = child.wait();

    // every acknowledged intent is in the append-only log, and the file is intact
    let conn = rusqlite::Connection::open(data.join("vx11.db")).unwrap();
    let check: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
    for body in &acked {
        let intent = body["intent_id"].as_str().unwrap();
        let found: i64 = conn
            .query_row(
                "SELECT count(*) FROM intents_log WHERE id = ?1",
                [intent],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(
            found, 1,
            "acknowledged intent {intent} missing from intents_log"
        );
    }
    // the requests the kills cut short were closed `interrupted` at restart
    let open: i64 = conn
        .query_row(
            "SELECT count(*) FROM intents_log WHERE processed_by_madre_at IS NULL",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(open, 0, "intents left open after the restarts");
    // every plan's journal ends in the status the plan has: the state and
    // its events were always written together (types 7 and 8 are a step's
    // start and end, stored as codes since schema 16)
    let mismatched: i64 = conn
        .query_row(
            "SELECT count(*) FROM plans t WHERE t.status IS NOT (
                 SELECT json_extract(e.payload_json, '$.status') FROM plan_events e
                 WHERE e.plan = t.id AND e.type NOT IN (7, 8)
                 ORDER BY e.seq DESC LIMIT 1)",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(
        mismatched, 0,
        "plans whose journal disagrees with their status"
    );
}

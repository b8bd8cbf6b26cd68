//! Two real `madre` processes on one PostgreSQL database (SPEC §16, issue
//! 24), against vx11-stubs: a plan made on one is listed, shown and
//! confirmed on the other; chats spread over both all finish; and when one
//! is killed with plans in flight against a slow Hermes, the other takes
//! them over once their lease lapses and finishes each, every step called
//! once or twice with one `Idempotency-Key`, no plan run by both at once,
//! nothing left RUNNING.
//!
//! It needs a PostgreSQL server: `MADRE_TEST_POSTGRES` names one
//! (`scripts/test.sh` starts a throw-away cluster and runs this test three
//! times in a row with it). Without it the test has nothing to run on.

use madre_models::Module;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::process::Child;
use std::time::{Duration, Instant};
use vx11_stubs::{Behaviour, StubServer};

mod common;
#[path = "../../../crates/db/tests/support/pg_database.rs"]
mod pg_database;

use common::{free_port, get_json, madre_command, post_json, wait_listening};
use pg_database::{PgDatabase, postgres_admin};

const TOKEN: &str = "replicas-test-token";

/// A lease short enough for the test: a killed replica's plans are taken
/// over within about 4 s (the lease, then the next lease round).
const LEASE_S: &str = "3";

/// How slow Hermes is while a replica is killed: the plans are mid-call.
const SLOW_HERMES_MS: u64 = 2_500;

/// One replica: its process and where it answers.
struct Replica {
    child: Child,
    base: String,
    _data: tempfile::TempDir,
}

impl Replica {
    async fn start(name: &str, db: &PgDatabase, stubs: &StubServer) -> Self {
        let data = tempfile::tempdir().unwrap();
        let port = free_port();
        let child = madre_command(data.path(), port, stubs, Some(TOKEN))
            .env("MADRE_DATABASE_URL", &db.url)
            .env("MADRE_REPLICA_ID", name)
            .env("MADRE_PLAN_LEASE_S", LEASE_S)
            .env("MADRE_PROBE_INTERVAL_S", "1")
            .spawn()
            .unwrap();
        wait_listening(port).await;
        Self {
            child,
            base: format!("http://127.0.0.1:{port}"),
            _data: data,
        }
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        post_json(&self.base, path, TOKEN, body)
            .await
            .unwrap_or_else(|| panic!("no answer from {} for {path}", self.base))
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        get_json(&self.base, path, TOKEN).await
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[actix_rt::test]
async fn two_replicas_share_plans_and_one_takes_over_when_the_other_dies() {
    let Some(admin) = postgres_admin() else {
        eprintln!("MADRE_TEST_POSTGRES is not set: no PostgreSQL server to run two replicas on");
        return;
    };
    let db = PgDatabase::create(&admin, "madre_replicas");
    let stubs = StubServer::start("127.0.0.1", |_| 0).unwrap();
    let a = Replica::start("replica-a", &db, &stubs).await;
    let b = Replica::start("replica-b", &db, &stubs).await;

    // A HIGH plan made on A is listed, shown and confirmed on B.
    let (status, made) = a
        .post("/madre/chat", json!({ "message": "delete all data" }))
        .await;
    assert_eq!(
        (status, made["status"].as_str()),
        (200, Some("WAITING")),
        "{made}"
    );
    let plan_id = made["plan_id"].as_str().unwrap().to_owned();
    let (_, listed) = b.get("/madre/plans?status=WAITING").await;
    assert!(
        listed["plans"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["plan_id"] == plan_id.as_str()),
        "{listed}"
    );
    let (status, shown) = b.get(&format!("/madre/plans/{plan_id}")).await;
    assert_eq!(
        (status, shown["plan"]["status"].as_str()),
        (200, Some("WAITING"))
    );
    let (status, confirmed) = b
        .post(
            &format!("/madre/plans/{plan_id}/confirm"),
            json!({ "confirm_token": made["confirm_token"] }),
        )
        .await;
    assert_eq!(
        (status, confirmed["plan_status"].as_str()),
        (200, Some("DONE")),
        "{confirmed}"
    );

    // Fifty chats spread over both, at once, all finish.
    let chats = (0..50).map(|i| {
        let replica = if i % 2 == 0 { &a } else { &b };
        async move {
            replica
                .post("/madre/chat", json!({ "message": format!("hello {i}") }))
                .await
        }
    });
    for (status, body) in futures_util::future::join_all(chats).await {
        assert_eq!(
            (status, body["status"].as_str()),
            (200, Some("DONE")),
            "{body}"
        );
    }

    // Ten plans in flight on A against a slow Hermes; A is killed.
    let keys_before = stubs.stats(Module::Hermes).await.unwrap().idempotency_keys;
    stubs
        .behave(
            Module::Hermes,
            &Behaviour {
                latency_ms: SLOW_HERMES_MS,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let mut accepted = Vec::new();
    for i in 0..10 {
        let (status, body) = a
            .post(
                "/task",
                json!({ "name": format!("slow-{i}"), "module": "hermes", "action": "status" }),
            )
            .await;
        assert_eq!(status, 202, "{body}");
        accepted.push(body["task_id"].as_str().unwrap().to_owned());
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while stubs.stats(Module::Hermes).await.unwrap().in_flight < 10 {
        assert!(
            Instant::now() < deadline,
            "the ten plans never reached Hermes"
        );
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
    let mut a = a;
    a.child.kill().unwrap(); // SIGKILL
    a.child.wait().unwrap();
    let killed_at = Instant::now();

    // B takes them over within the lease plus a plan's run, and ends each.
    let deadline = killed_at + Duration::from_secs(40);
    for task in &accepted {
        loop {
            let (status, body) = b.get(&format!("/tasks/{task}")).await;
            assert_eq!(status, 200, "{body}");
            if body["status"] == "DONE" {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "plan {task} not DONE 40 s after its replica died: {body}"
            );
            actix_rt::time::sleep(Duration::from_millis(100)).await;
        }
    }
    eprintln!(
        "ten plans taken over and finished {:.1} s after the kill",
        killed_at.elapsed().as_secs_f64()
    );

    // Each plan ran on one replica at a time: A's events, then (after the
    // takeover) B's only.
    let mut taken_over = 0;
    for task in &accepted {
        let (_, detail) = b.get(&format!("/madre/plans/{task}")).await;
        let events = detail["events"].as_array().unwrap();
        let takeover = events.iter().position(|e| e["type"] == "plan_taken_over");
        if let Some(at) = takeover {
            taken_over += 1;
            assert!(
                events[..at].iter().all(|e| e["replica"] == "replica-a"),
                "{detail}"
            );
            assert!(
                events[at..].iter().all(|e| e["replica"] == "replica-b"),
                "{detail}"
            );
        }
    }
    assert_eq!(taken_over, 10, "every plan in flight on A was taken over");

    // Hermes saw each step twice with one key: A's call, cut by the kill, and B's.
    let keys = stubs.stats(Module::Hermes).await.unwrap().idempotency_keys;
    let mut calls: HashMap<&str, usize> = HashMap::new();
    for key in &keys[keys_before.len()..] {
        *calls.entry(key.as_str()).or_default() += 1;
    }
    assert_eq!(calls.len(), 10, "one key per plan's Hermes step: {calls:?}");
    assert!(
        calls.values().all(|n| *n == 2),
        "each step in flight on A is called again by B with its key: {calls:?}"
    );

    // Nothing is left RUNNING or PENDING.
    for status in ["RUNNING", "PENDING"] {
        let (_, left) = b.get(&format!("/madre/plans?status={status}")).await;
        assert_eq!(left["plans"].as_array().unwrap().len(), 0, "{left}");
    }
}

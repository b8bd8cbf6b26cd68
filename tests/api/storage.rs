//! Storage that cannot take writes (SPEC §9, issue 15): a request answers
//! `503 storage_unavailable` with `Retry-After`, never a 500; `/health`
//! says `degraded` with `db: down`; nothing is half-written; and Madre
//! recovers by itself once the cause is gone.
//!
//! Two causes: another process holds the database's write lock past the
//! busy timeout, and a database that fills up (its size capped through
//! `Db::set_max_size`, SQLite's `max_page_count`). madre-db's own tests
//! cover more of the full case in `crates/db/tests/storage_full.rs`.

use crate::helpers::*;
use rusqlite::Connection;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// How long Madre may take to notice a change of storage's state: its busy
/// timeout (5 s) plus a few probe intervals (1 s in tests).
const NOTICE: Duration = Duration::from_secs(20);

/// A connection of "another process" to the server's database file.
fn intruder(app: &TestApp) -> Connection {
    let conn = Connection::open(app.dir.path().join("data").join("vx11.db")).unwrap();
    conn.busy_timeout(Duration::from_secs(5)).unwrap();
    conn
}

fn count(conn: &Connection, table: &str) -> i64 {
    conn.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
        .unwrap()
}

/// A chat, answering its status, `Retry-After` header and body.
async fn chat(app: &TestApp, message: &str) -> (u16, Option<String>, Value) {
    let client = awc::Client::builder()
        .timeout(Duration::from_secs(30))
        .finish();
    let mut res = client
        .post(format!("{}/madre/chat", app.base))
        .insert_header(("X-VX11-Token", OPERATOR))
        .send_json(&json!({ "message": message }))
        .await
        .unwrap();
    let retry_after = res
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = res.json::<Value>().limit(1 << 22).await.unwrap();
    (res.status().as_u16(), retry_after, body)
}

/// Polls `/health` until `db` reads `want`, within [`NOTICE`].
async fn wait_for_db(app: &TestApp, want: &str) -> Value {
    let deadline = Instant::now() + NOTICE;
    loop {
        let r = app.send("GET", "/health", None, None).await;
        assert_eq!(r.status, 200);
        if r.body["db"] == json!(want) {
            return r.body;
        }
        assert!(
            Instant::now() < deadline,
            "/health never said db {want}: {}",
            r.body
        );
        actix_rt::time::sleep(Duration::from_millis(50)).await;
    }
}

fn assert_sound(conn: &Connection) {
    let verdict: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(verdict, "ok");
}

#[actix_rt::test]
async fn a_chat_that_cannot_be_stored_answers_503_and_madre_recovers_by_itself() {
    if is_postgres() {
        return; // SQLite's own faults; PostgreSQL's outage: postgres_outage_*
    }
    let app = spawn_app().await;
    let (status, _, body) = chat(&app, "hello").await;
    assert_eq!(status, 200, "{body}");
    let health = wait_for_db(&app, "up").await;
    test_log!("healthy: {health}");

    let other = intruder(&app);
    let intents = count(&other, "intents_log");
    let plans = count(&other, "plans");
    other.execute_batch("BEGIN IMMEDIATE").unwrap();

    let (status, retry_after, body) = chat(&app, "hello again").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"], json!("storage_unavailable"));
    assert!(body["request_id"].as_str().is_some_and(|id| !id.is_empty()));
    let detail = s(&body["detail"]);
    assert!(detail.contains("locked"), "{detail}");
    assert!(
        !detail.contains("vx11.db"),
        "the detail leaks a path: {detail}"
    );
    let seconds: u64 = retry_after.expect("Retry-After").parse().unwrap();
    assert!(seconds >= 1);

    // The failed request turned health degraded at once, with no probe.
    let r = app.send("GET", "/health", None, None).await;
    assert_eq!(r.body["status"], json!("degraded"), "{}", r.body);
    assert_eq!(r.body["db"], json!("down"), "{}", r.body);

    other.execute_batch("ROLLBACK").unwrap();
    // Nothing of the refused chat was written.
    assert_eq!(count(&other, "intents_log"), intents);
    assert_eq!(count(&other, "plans"), plans);

    let (status, _, body) = chat(&app, "hello once more").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], json!("DONE"), "{body}");
    let r = app.send("GET", "/health", None, None).await;
    assert_eq!(r.body["db"], json!("up"), "{}", r.body);
    assert_eq!(r.body["status"], json!("ok"), "{}", r.body);
    assert_eq!(count(&other, "intents_log"), intents + 1);
    assert_sound(&other);
    app.stop().await;
}

#[actix_rt::test]
async fn health_follows_the_database_from_the_background_check_with_no_requests() {
    if is_postgres() {
        return; // SQLite's own faults; PostgreSQL's outage: postgres_outage_*
    }
    let app = spawn_app().await;
    wait_for_db(&app, "up").await;

    let other = intruder(&app);
    other.execute_batch("BEGIN IMMEDIATE").unwrap();
    let health = wait_for_db(&app, "down").await;
    assert_eq!(health["status"], json!("degraded"));

    other.execute_batch("ROLLBACK").unwrap();
    let health = wait_for_db(&app, "up").await;
    assert_eq!(health["status"], json!("ok"), "{health}");
    assert_sound(&other);
    app.stop().await;
}

/// A database that fills up (its size capped with SQLite's
/// `max_page_count`, through `Db::set_max_size` as an embedding service
/// would): chats answer 503 with `Retry-After`, health says db down, the
/// file stays sound, and once there is room again Madre serves with no
/// restart.
#[actix_rt::test]
async fn a_full_database_answers_503_and_recovers_when_room_comes_back() {
    if is_postgres() {
        return; // SQLite's own faults; PostgreSQL's outage: postgres_outage_*
    }
    let app = spawn_app().await;
    let (status, _, body) = chat(&app, "hello").await;
    assert_eq!(status, 200, "{body}");
    let db = app.madre.db().clone();
    let size = std::fs::metadata(db.path()).unwrap().len();
    db.set_max_size(Some(size)).unwrap();

    // Pages free inside the file take a few chats; then it is full.
    let mut refused = None;
    for i in 0..500 {
        let (status, retry_after, body) = chat(&app, &format!("fill {i}")).await;
        if status != 200 {
            refused = Some((status, retry_after, body));
            break;
        }
    }
    let (status, retry_after, body) = refused.expect("the capped database never filled up");
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"], json!("storage_unavailable"), "{body}");
    assert!(s(&body["detail"]).contains("full"), "{body}");
    assert!(retry_after.is_some());
    let r = app.send("GET", "/health", None, None).await;
    assert_eq!(
        (r.body["status"].clone(), r.body["db"].clone()),
        (json!("degraded"), json!("down")),
        "{}",
        r.body
    );
    assert_sound(&intruder(&app));

    db.set_max_size(None).unwrap();
    let health = wait_for_db(&app, "up").await;
    assert_eq!(health["status"], json!("ok"), "{health}");
    let (status, _, body) = chat(&app, "room again").await;
    assert_eq!(
        (status, body["status"].clone()),
        (200, json!("DONE")),
        "{body}"
    );
    assert_sound(&intruder(&app));
    app.stop().await;
}

/// PostgreSQL out of reach (issue 24): the database refuses Madre's
/// sessions and ends the open ones. A chat answers 503 with `Retry-After`
/// and no detail of the connection, `/health` says db down, nothing of the
/// refused chat is stored, and once the database takes sessions again
/// Madre serves with no restart.
#[actix_rt::test]
async fn postgres_outage_answers_503_and_madre_resumes_when_it_comes_back() {
    if !is_postgres() {
        return; // SQLite's faults: the tests above
    }
    let app = spawn_app().await;
    let (status, _, body) = chat(&app, "hello").await;
    assert_eq!(status, 200, "{body}");
    wait_for_db(&app, "up").await;
    let pg = app.pg.clone().unwrap();

    pg.cut_off();
    let (status, retry_after, body) = chat(&app, "hello again").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"], json!("storage_unavailable"), "{body}");
    let detail = s(&body["detail"]);
    assert!(detail.contains("reached"), "{detail}");
    assert!(
        !detail.contains("madre_e2e_"),
        "the detail names the database: {detail}"
    );
    assert!(retry_after.is_some());
    let health = wait_for_db(&app, "down").await;
    assert_eq!(health["status"], json!("degraded"), "{health}");

    pg.restore();
    wait_for_db(&app, "up").await;
    let (status, _, body) = chat(&app, "back again").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(app.scalar("SELECT count(*) FROM intents_log"), 2);
    assert_eq!(app.scalar("SELECT count(*) FROM plans"), 2);
    app.stop().await;
}

/// What a LOW chat costs in round trips to PostgreSQL (issue 24), counted
/// by Madre's sessions (`madre_db_round_trips_total`) over sequential
/// chats, so no chat shares a commit: the writer sends each transaction's
/// statements together, a chat with no session id reads nothing, and each
/// commit is one round trip. The figure is printed for
/// docs/benchmarks.md.
#[actix_rt::test]
async fn a_low_chat_on_postgres_stays_within_its_round_trips() {
    if !is_postgres() {
        return; // no server to go to
    }
    const CHATS: u64 = 10;
    let app = spawn_app().await;
    let round_trips = |text: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix("madre_db_round_trips_total "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no round trips in /metrics:\n{text}"))
    };
    // A warm-up: the statements are prepared once per session.
    assert_eq!(chat(&app, "hello").await.0, 200);
    let before = app.send("GET", "/metrics", Some(VIEWER), None).await;
    for i in 0..CHATS {
        let (status, _, body) = chat(&app, &format!("hello {i}")).await;
        assert_eq!((status, s(&body["status"])), (200, "DONE"), "{body}");
    }
    let after = app.send("GET", "/metrics", Some(VIEWER), None).await;
    let spent = round_trips(s(&after.body)) - round_trips(s(&before.body));
    println!(
        "per LOW chat on PostgreSQL: {:.1} round trips",
        spent as f64 / CHATS as f64
    );
    // Three commits a chat, one round trip each (issue 24): every
    // statement of a commit goes with its COMMIT, and what a commit rests
    // on is checked by the server. The room above that is for the
    // once-a-second health probe and one /metrics read.
    assert!(
        spent <= 3 * CHATS + 4,
        "{spent} round trips for {CHATS} chats"
    );
    app.stop().await;
}

//! Listing plans with keyset pagination.

use crate::helpers::*;
use std::collections::HashSet;

#[actix_rt::test]
async fn plans_page_without_duplicates_or_gaps_while_chats_arrive() {
    let app = spawn_app().await;
    let mut made = Vec::new();
    for i in 0..25 {
        made.push(s(&app.chat(OPERATOR, &format!("hello {i}")).await.body["plan_id"]).to_owned());
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        app.chat(OPERATOR, "a late chat").await;
        let path = match &cursor {
            Some(c) => format!("/madre/plans?limit=7&cursor={c}"),
            None => "/madre/plans?limit=7".to_owned(),
        };
        let page = app.send("GET", &path, Some(VIEWER), None).await;
        assert_eq!(page.status, 200);
        seen.extend(
            page.body["plans"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| s(&p["plan_id"]).to_owned()),
        );
        match page.body["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(
        seen.iter().collect::<HashSet<_>>().len(),
        seen.len(),
        "no duplicates"
    );
    let originals: Vec<&String> = seen.iter().filter(|id| made.contains(id)).collect();
    let expected: Vec<&String> = made.iter().rev().collect();
    assert_eq!(originals, expected, "no gaps, newest first");
    let done = app
        .send(
            "GET",
            "/madre/plans?status=DONE&limit=200",
            Some(VIEWER),
            None,
        )
        .await;
    assert!(done.body["plans"].as_array().unwrap().len() >= 25);
    app.stop().await;
}

/// `GET /madre/plans/{id}` shows the plan's journal: every change, in order,
/// with who caused it.
/// SPEC §16: `MADRE_REPLICA_ID` names the process in the journal; every
/// event of its plans says which replica wrote it.
#[actix_rt::test]
async fn the_journal_names_the_replica_set_by_madre_replica_id() {
    let app = spawn_app_with(&[("MADRE_REPLICA_ID", "madre-a.1")]).await;
    let chat = app.chat(OPERATOR, "hello replica").await;
    let detail = app.plan_detail(s(&chat.body["plan_id"])).await;
    let events = detail.body["events"].as_array().unwrap();
    assert_eq!(events.len(), 4, "{}", detail.body);
    assert!(
        events.iter().all(|e| e["replica"] == "madre-a.1"),
        "{}",
        detail.body
    );
}

#[actix_rt::test]
async fn a_plan_shows_its_journal_in_order() {
    let app = spawn_app().await;
    let waiting = app.chat(ADMIN, "restart the switch").await;
    let plan_id = s(&waiting.body["plan_id"]).to_owned();
    let token = s(&waiting.body["confirm_token"]).to_owned();
    assert_eq!(app.confirm(ADMIN, &plan_id, &token).await.status, 200);
    let detail = app
        .send(
            "GET",
            &format!("/madre/plans/{plan_id}"),
            Some(VIEWER),
            None,
        )
        .await;
    assert_eq!(detail.status, 200, "{}", detail.body);
    let events = detail.body["events"].as_array().unwrap();
    let kinds: Vec<String> = events
        .iter()
        .map(|e| format!("{} {}", s(&e["type"]), s(&e["status"])))
        .collect();
    assert_eq!(
        kinds,
        [
            "plan_created PENDING",
            "plan_waiting WAITING",
            "plan_confirmed RUNNING",
            "step_started RUNNING",
            "step_finished DONE",
            "step_started RUNNING",
            "step_finished DONE",
            "plan_finished DONE",
        ]
    );
    let seqs: Vec<i64> = events.iter().map(|e| e["seq"].as_i64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    assert_eq!(s(&events[2]["principal"]), "admin");
    assert_eq!(s(&events[3]["step_type"]), "CALL_SWITCH");
    app.stop().await;
}

/// A plan the cleanup moved to its archive answers 410 `archived`, naming
/// the archive, on the plan's detail and on its v6 task view (issue 25).
#[actix_rt::test]
async fn an_archived_plan_answers_410_naming_its_archive() {
    let app = spawn_app().await;
    let r = app
        .send(
            "POST",
            "/madre/chat",
            Some(ADMIN),
            Some(serde_json::json!({ "message": "hello" })),
        )
        .await;
    assert_eq!(s(&r.body["status"]), "DONE");
    let plan_id = s(&r.body["plan_id"]);
    // A newer plan holds the journal's newest event, which is never archived.
    app.chat(OPERATOR, "hello again").await;
    let db = app.madre.db().clone();
    let archived = std::thread::spawn(move || {
        let dir = madre_db::archive_dir(db.path());
        let later = chrono::Utc::now() + chrono::Duration::seconds(1);
        db.archive_finished_plans(&dir, later, 10, soon(), chrono::Utc::now())
    })
    .join()
    .unwrap()
    .unwrap();
    assert_eq!(archived.plans, 1);
    for path in [
        format!("/madre/plans/{plan_id}"),
        format!("/tasks/{plan_id}"),
    ] {
        let r = app.send("GET", &path, Some(ADMIN), None).await;
        assert_eq!(r.status, 410, "{path}: {}", r.body);
        assert_eq!(s(&r.body["error"]), "archived");
        assert!(
            s(&r.body["detail"]).contains(".jsonl.gz"),
            "{path}: {}",
            r.body
        );
    }
    let unknown = uuid::Uuid::now_v7();
    let r = app
        .send("GET", &format!("/madre/plans/{unknown}"), Some(ADMIN), None)
        .await;
    assert_eq!(r.status, 404);
}

/// A deadline far enough for any archival pass of a test.
fn soon() -> std::time::Instant {
    std::time::Instant::now() + std::time::Duration::from_secs(60)
}

/// With a retention shorter than a chat, the cleanup pass archives the
/// chat's plan, and /metrics counts it with the database's size and free
/// pages and the disk's free bytes (issue 25).
#[actix_rt::test]
async fn the_cleanup_archives_finished_plans_and_metrics_count_them() {
    let app = spawn_app_with(&[("MADRE_PLAN_RETENTION_DAYS", "0.00000001")]).await;
    let r = app.chat(OPERATOR, "hello").await;
    assert_eq!(s(&r.body["status"]), "DONE");
    // A newer plan holds the journal's newest event, which is never archived.
    app.chat(OPERATOR, "hello again").await;
    app.madre.cleanup_once().await.unwrap();
    let plan_id = s(&r.body["plan_id"]);
    let gone = app
        .send("GET", &format!("/madre/plans/{plan_id}"), Some(ADMIN), None)
        .await;
    assert_eq!(gone.status, 410, "{}", gone.body);
    let metrics = app.send("GET", "/metrics", Some(VIEWER), None).await;
    let text = s(&metrics.body).to_owned();
    let value = |name: &str| -> u64 {
        let prefix = format!("{name} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} missing from /metrics:\n{text}"))
    };
    assert_eq!(value("madre_plans_archived_total"), 1);
    assert!(value("madre_archive_bytes_total") > 0);
    assert!(value("madre_db_size_bytes") > value("madre_db_free_bytes"));
    assert!(value("madre_disk_free_bytes") > 0);
    assert!(text.contains("# TYPE madre_plans_archived_total counter"));
    app.stop().await;
}

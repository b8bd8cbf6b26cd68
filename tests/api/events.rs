//! The live event stream, `GET /madre/events` (SPEC §14), read as a
//! browser or `madre watch` reads it: Server-Sent Events over one response.

use crate::helpers::*;
use futures_util::StreamExt;
use serde_json::Value;
use std::pin::Pin;
use std::time::Duration;

/// How long any awaited message may take: generous, never a measure.
const PATIENCE: Duration = Duration::from_secs(20);

/// One SSE message: a journal event, or a comment.
#[derive(Debug)]
enum Message {
    Event { id: i64, event: String, data: Value },
    Comment(String),
}

type Body = Pin<Box<dyn futures_util::Stream<Item = Result<actix_web::web::Bytes, String>>>>;

/// An open event stream.
struct Sse {
    body: Body,
    buffer: String,
}

impl Sse {
    /// Opens `/madre/events?query` with `token` and extra headers; panics
    /// unless it answers 200 as an event stream.
    async fn open(app: &TestApp, query: &str, token: &str, headers: &[(&str, &str)]) -> Self {
        let client = awc::Client::builder().disable_timeout().finish();
        let mut request = client
            .get(format!("{}/madre/events{query}", app.base))
            .insert_header(("X-VX11-Token", token));
        for header in headers {
            request = request.insert_header(*header);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status().as_u16(), 200);
        let kind = response.headers().get("content-type").unwrap();
        assert_eq!(kind.to_str().unwrap(), "text/event-stream");
        Self {
            body: Box::pin(response.map(|chunk| chunk.map_err(|e| e.to_string()))),
            buffer: String::new(),
        }
    }

    /// The next message, or `None` when the stream ended.
    async fn next(&mut self) -> Option<Message> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let raw: String = self.buffer.drain(..end + 2).collect();
                return Some(parse(raw.trim_end()));
            }
            let chunk = tokio_timeout(self.body.next()).await?;
            self.buffer
                .push_str(std::str::from_utf8(&chunk.unwrap()).unwrap());
        }
    }

    /// The next `n` journal events, skipping comments.
    /// The next `n` events, keep-alives passed over; within the patience,
    /// however many keep-alives come.
    async fn events(&mut self, n: usize) -> Vec<(i64, String, Value)> {
        tokio_timeout(async {
            let mut out = Vec::new();
            while out.len() < n {
                match self.next().await.expect("the stream ended early") {
                    Message::Event { id, event, data } => out.push((id, event, data)),
                    Message::Comment(_) => {}
                }
            }
            out
        })
        .await
    }
}

async fn tokio_timeout<T>(future: impl std::future::Future<Output = T>) -> T {
    actix_rt::time::timeout(PATIENCE, future)
        .await
        .expect("no message within the patience")
}

fn parse(raw: &str) -> Message {
    if let Some(comment) = raw.strip_prefix(':') {
        return Message::Comment(comment.trim().to_owned());
    }
    let (mut id, mut event, mut data) = (None, None, None);
    for line in raw.lines() {
        let (field, value) = line.split_once(": ").unwrap_or((line, ""));
        match field {
            "id" => id = Some(value.parse().unwrap()),
            "event" => event = Some(value.to_owned()),
            "data" => data = Some(serde_json::from_str(value).unwrap()),
            other => panic!("unexpected field {other:?} in {raw:?}"),
        }
    }
    Message::Event {
        id: id.unwrap(),
        event: event.unwrap(),
        data: data.unwrap(),
    }
}

/// The journal events a LOW chat makes, in order: its Switch step,
/// answered at intake, is created DONE and has none of its own.
const LOW_CHAT: [&str; 4] = [
    "plan_created",
    "step_started",
    "step_finished",
    "plan_finished",
];

#[actix_rt::test]
async fn a_live_reader_sees_a_chat_run_event_by_event() {
    let app = spawn_app().await;
    app.chat(OPERATOR, "before the reader").await;
    // A viewer may read; with no Last-Event-ID only what comes next.
    let mut sse = Sse::open(&app, "", VIEWER, &[]).await;
    let chat = app.chat(OPERATOR, "tell me about the weather").await;
    let plan_id = s(&chat.body["plan_id"]).to_owned();
    let events = sse.events(4).await;
    let types: Vec<&str> = events.iter().map(|(_, t, _)| t.as_str()).collect();
    assert_eq!(types, LOW_CHAT);
    for (id, event, data) in &events {
        assert_eq!(data["plan_id"], plan_id.as_str(), "only the new chat");
        assert_eq!(data["seq"], *id);
        assert_eq!(data["type"], event.as_str());
    }
    assert_eq!(events[1].2["step_type"], "CALL_HERMES");
    assert_eq!(events[1].2["status"], "RUNNING");
    assert_eq!(events[3].2["status"], "DONE");
    // The same events as the plan's detail shows.
    let detail = app.plan_detail(&plan_id).await;
    let shown: Vec<Value> = events.into_iter().map(|(_, _, d)| d).collect();
    assert_eq!(Value::Array(shown), detail.body["events"]);
}

#[actix_rt::test]
async fn last_event_id_replays_what_was_missed_without_gap_or_repeat() {
    let app = spawn_app().await;
    for i in 0..3 {
        app.chat(OPERATOR, &format!("hello {i}")).await;
    }
    let all = Sse::open(&app, "?last_event_id=0", VIEWER, &[])
        .await
        .events(12)
        .await;
    let seqs: Vec<i64> = all.iter().map(|(id, _, _)| *id).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");

    // A reader that saw up to the 7th event reconnects with the header,
    // while a new chat runs: it gets the 8th onward, then the new chat.
    let mut sse = Sse::open(&app, "", VIEWER, &[("Last-Event-ID", &seqs[6].to_string())]).await;
    app.chat(OPERATOR, "while reconnected").await;
    let resumed = sse.events(5 + 4).await;
    let resumed_seqs: Vec<i64> = resumed.iter().map(|(id, _, _)| *id).collect();
    assert_eq!(resumed_seqs[..5], seqs[7..]);
    assert!(resumed_seqs.windows(2).all(|w| w[0] < w[1]));
    let tail: Vec<&str> = resumed[5..].iter().map(|(_, t, _)| t.as_str()).collect();
    assert_eq!(tail, LOW_CHAT);
}

#[actix_rt::test]
async fn a_plan_filter_streams_that_plan_only_and_quiet_streams_keep_alive() {
    let app = spawn_app_with(&[("MADRE_EVENTS_KEEPALIVE_S", "1")]).await;
    let first = app.chat(OPERATOR, "first plan").await;
    let first_id = s(&first.body["plan_id"]).to_owned();
    let session = s(&first.body["session_id"]).to_owned();
    app.chat(OPERATOR, "another plan").await;

    let mut by_plan = Sse::open(
        &app,
        &format!("?plan_id={first_id}&last_event_id=0"),
        VIEWER,
        &[],
    )
    .await;
    let events = by_plan.events(4).await;
    assert!(
        events
            .iter()
            .all(|(_, _, d)| d["plan_id"] == first_id.as_str())
    );
    // Nothing more for this plan: the stream stays open and says so.
    match by_plan.next().await {
        Some(Message::Comment(text)) => assert_eq!(text, "keep-alive"),
        other => panic!("expected a keep-alive, got {other:?}"),
    }

    let mut by_session = Sse::open(
        &app,
        &format!("?session_id={session}&last_event_id=0"),
        VIEWER,
        &[],
    )
    .await;
    let events = by_session.events(4).await;
    assert!(
        events
            .iter()
            .all(|(_, _, d)| d["session_id"] == session.as_str())
    );
    assert!(matches!(by_session.next().await, Some(Message::Comment(_))));
}

#[actix_rt::test]
async fn bad_requests_for_the_stream_are_refused_in_the_error_shape() {
    let app = spawn_app().await;
    let refused = app.send("GET", "/madre/events", None, None).await;
    assert_eq!(refused.status, 401);
    for query in [
        "?last_event_id=-1",
        "?last_event_id=x",
        "?plan_id=nope",
        "?what=1",
    ] {
        let reply = app
            .send("GET", &format!("/madre/events{query}"), Some(VIEWER), None)
            .await;
        assert!(
            matches!(reply.status, 400 | 422),
            "{query}: {} {}",
            reply.status,
            reply.body
        );
        assert!(reply.body["error"].is_string(), "{query}: {}", reply.body);
    }
    let header = app
        .send_with(
            "GET",
            "/madre/events",
            Some(VIEWER),
            None,
            &[("Last-Event-ID", "soon")],
        )
        .await;
    assert_eq!(header.status, 422, "{}", header.body);
}

#[actix_rt::test]
async fn a_resume_id_past_the_journals_end_resumes_at_the_end() {
    let app = spawn_app().await;
    app.chat(OPERATOR, "hello").await;
    let mut sse = Sse::open(&app, "?last_event_id=999999", VIEWER, &[]).await;
    let chat = app.chat(OPERATOR, "tell me about the weather").await;
    let events = sse.events(4).await;
    assert!(
        events
            .iter()
            .all(|(_, _, d)| d["plan_id"] == chat.body["plan_id"])
    );
    let types: Vec<&str> = events.iter().map(|(_, t, _)| t.as_str()).collect();
    assert_eq!(types, LOW_CHAT);
}

/// The server's resident memory, in KiB (the test runs it in-process).
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// `madre_event_stream_readers` from /metrics.
async fn readers(app: &TestApp) -> u64 {
    let client = awc::Client::new();
    let mut response = client
        .get(format!("{}/metrics", app.base))
        .insert_header(("X-VX11-Token", ADMIN))
        .send()
        .await
        .unwrap();
    let text = String::from_utf8(response.body().await.unwrap().to_vec()).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("madre_event_stream_readers "))
        .unwrap()
        .parse()
        .unwrap()
}

#[actix_rt::test]
async fn a_thousand_readers_that_come_and_go_leave_no_task_or_memory_behind() {
    // A reader that left is noticed when something is next written to it:
    // at the latest the keep-alive, every second here.
    let app = spawn_app_with(&[("MADRE_EVENTS_KEEPALIVE_S", "1")]).await;
    let round = || async {
        let mut open = Vec::new();
        for _ in 0..50 {
            open.push(Sse::open(&app, "", VIEWER, &[]).await);
        }
        app.chat(OPERATOR, "hello").await;
        for sse in &mut open {
            assert_eq!(sse.events(4).await.len(), 4);
        }
        drop(open);
    };
    round().await;
    let before = rss_kib();
    for _ in 1..20 {
        round().await;
    }
    // Every follower ends once its reader is gone (bounded wait).
    let mut left = readers(&app).await;
    for _ in 0..800 {
        if left == 0 {
            break;
        }
        actix_rt::time::sleep(std::time::Duration::from_millis(25)).await;
        left = readers(&app).await;
    }
    assert_eq!(left, 0, "followers left behind");
    let after = rss_kib();
    println!("1,000 readers came and went: RSS {before} KiB -> {after} KiB");
    assert!(
        after < before + 64 * 1024,
        "RSS grew from {before} to {after} KiB"
    );
}

/// Replicas (SPEC §16, issue 24): a reader of one replica's stream sees
/// the events of a plan another replica runs, in order, each naming that
/// replica. PostgreSQL only: a SQLite file has one process.
#[actix_rt::test]
async fn a_replicas_stream_shows_the_plans_another_replica_runs() {
    if !is_postgres() {
        return;
    }
    let a = spawn_app_with(&[("MADRE_REPLICA_ID", "replica-a")]).await;
    let mut vars = a.vars.clone();
    vars.insert("MADRE_REPLICA_ID".into(), "replica-b".into());
    let (base, handle, madre) = start(&vars).await;
    let b = TestApp {
        base,
        dir: tempfile::tempdir().unwrap(),
        stubs: vx11_stubs::StubServer::start("127.0.0.1", |_| 0).unwrap(),
        handle,
        vars,
        madre,
        pg: a.pg.clone(),
    };
    let mut sse = Sse::open(&b, "", VIEWER, &[]).await;
    let chat = a.chat(OPERATOR, "tell me about the weather").await;
    assert_eq!(chat.status, 200, "{}", chat.body);
    let events = sse.events(4).await;
    let types: Vec<&str> = events.iter().map(|(_, t, _)| t.as_str()).collect();
    assert_eq!(types, LOW_CHAT);
    for (_, _, data) in &events {
        assert_eq!(data["plan_id"], chat.body["plan_id"]);
        assert_eq!(data["replica"], "replica-a", "{data}");
    }
}

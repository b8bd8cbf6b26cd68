//! Slow clients, slow bodies and oversized headers.

use crate::helpers::*;
use std::time::Duration;

/// Raw HTTP/1.1 over a plain socket, for clients no HTTP library would be:
/// slow, oversized, malformed.
mod raw {
    use std::io::{ErrorKind, Read, Write};
    use std::net::TcpStream;
    use std::time::{Duration, Instant};

    pub(super) fn connect(base: &str) -> TcpStream {
        TcpStream::connect(base.trim_start_matches("http://")).unwrap()
    }

    /// Sends a request head one byte per `pace` and never finishes it; answers
    /// how long the server let it go on and what it said, once it cut the
    /// connection (or `None` if it never did within `limit`).
    pub(super) fn slowloris(
        base: &str,
        pace: Duration,
        limit: Duration,
    ) -> Option<(Duration, String)> {
        let mut stream = connect(base);
        stream.set_read_timeout(Some(pace)).unwrap();
        let head = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Filler: ";
        let filler = std::iter::repeat(b'a');
        let started = Instant::now();
        let mut answer = Vec::new();
        let mut buf = [0u8; 1024];
        for byte in head.iter().copied().chain(filler) {
            if started.elapsed() > limit {
                return None;
            }
            if stream.write_all(&[byte]).is_err() {
                break;
            }
            // The read's timeout paces the client: one byte per `pace`.
            match stream.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(_) => break,
            }
        }
        Some((
            started.elapsed(),
            String::from_utf8_lossy(&answer).into_owned(),
        ))
    }

    /// Sends a complete head announcing a 1,000-byte body, then the body one
    /// byte per `pace`; answers when the server answered or cut the
    /// connection, and what it said (`None` if neither within `limit`).
    pub(super) fn slow_body(
        base: &str,
        head: &str,
        pace: Duration,
        limit: Duration,
    ) -> Option<(Duration, String)> {
        let mut stream = connect(base);
        stream.set_read_timeout(Some(pace)).unwrap();
        stream.write_all(head.as_bytes()).unwrap();
        let started = Instant::now();
        let mut buf = [0u8; 4096];
        while started.elapsed() < limit {
            if stream.write_all(b" ").is_err() {
                return Some((started.elapsed(), String::new()));
            }
            match stream.read(&mut buf) {
                Ok(0) => return Some((started.elapsed(), String::new())),
                Ok(n) => {
                    let answer = String::from_utf8_lossy(&buf[..n]).into_owned();
                    return Some((started.elapsed(), answer));
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(_) => return Some((started.elapsed(), String::new())),
            }
        }
        None
    }

    /// Sends `request` whole and reads until the server closes or `limit`
    /// passes; a reset counts as the end of the answer.
    pub(super) fn exchange(base: &str, request: &[u8], limit: Duration) -> String {
        let mut stream = connect(base);
        stream.set_read_timeout(Some(limit)).unwrap();
        // The server may close before reading everything: keep what it said.
        let _ = stream.write_all(request);
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer);
        String::from_utf8_lossy(&answer).into_owned()
    }

    /// The status code of a raw answer.
    pub(super) fn status(answer: &str) -> Option<u16> {
        answer.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
    }
}

/// A raw answer carries `X-Request-Id` and the SPEC §9 error body with the
/// same id, whoever wrote it (the router, or the HTTP layer before routing).
fn assert_stamped(what: &str, answer: &str) {
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((answer, ""));
    let id = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("x-request-id")
                .then(|| value.trim().to_owned())
        })
        .unwrap_or_else(|| panic!("{what}: no X-Request-Id in {head:?}"));
    assert!(!id.is_empty(), "{what}: empty X-Request-Id");
    let json: serde_json::Value = serde_json::from_str(body.trim())
        .unwrap_or_else(|_| panic!("{what}: not a JSON error body: {body:?}"));
    assert_eq!(json["request_id"], serde_json::json!(id), "{what}: {json}");
    assert!(
        json["error"].is_string() && json["detail"].is_string(),
        "{what}: {json}"
    );
}

#[actix_rt::test]
async fn slow_clients_are_cut_without_starving_the_others() {
    let app = std::rc::Rc::new(spawn_app().await);
    let slow: Vec<_> = (0..16)
        .map(|_| {
            let base = app.base.clone();
            std::thread::spawn(move || {
                raw::slowloris(&base, Duration::from_millis(200), Duration::from_secs(60))
            })
        })
        .collect();
    // While they dribble, everyone else is served as usual.
    for _ in 0..10 {
        let health = app.send("GET", "/health", None, None).await;
        assert_eq!(health.status, 200);
        let chat = app.chat(OPERATOR, "hello").await;
        assert_eq!((chat.status, s(&chat.body["status"])), (200, "DONE"));
    }
    for client in slow {
        let cut = actix_web::rt::task::spawn_blocking(move || client.join().unwrap())
            .await
            .unwrap();
        let (after, answer) = cut.expect("a slow client was never cut");
        test_log!(
            "slow client cut after {after:?}: {:?}",
            answer.lines().next()
        );
        // The server's client_request_timeout is 5 s; generous margin.
        assert!(after < Duration::from_secs(30), "cut only after {after:?}");
        assert!(
            raw::status(&answer) == Some(408),
            "slow client got {answer:?}"
        );
        assert_stamped("a slow head", &answer);
    }
    assert_eq!(app.send("GET", "/health", None, None).await.status, 200);
    app.stop().await;
}

#[actix_rt::test]
async fn slow_bodies_get_408_without_starving_the_others() {
    let app = std::rc::Rc::new(spawn_app().await);
    // JSON bodies (chat) and the raw body of a confirmation.
    let head = |path: &str| {
        format!(
            "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-VX11-Token: {OPERATOR}\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
        )
    };
    let confirm = format!("/madre/plans/{}/confirm", uuid::Uuid::new_v4());
    let slow: Vec<_> = (0..8)
        .map(|i| {
            let path = if i % 2 == 0 {
                "/madre/chat"
            } else {
                confirm.as_str()
            };
            let (base, head) = (app.base.clone(), head(path));
            std::thread::spawn(move || {
                raw::slow_body(
                    &base,
                    &head,
                    Duration::from_millis(200),
                    Duration::from_secs(60),
                )
            })
        })
        .collect();
    for _ in 0..10 {
        let chat = app.chat(OPERATOR, "hello").await;
        assert_eq!((chat.status, s(&chat.body["status"])), (200, "DONE"));
    }
    for client in slow {
        let cut = actix_web::rt::task::spawn_blocking(move || client.join().unwrap())
            .await
            .unwrap();
        let (after, answer) = cut.expect("a slow body was never cut");
        test_log!("slow body cut after {after:?}: {:?}", answer.lines().next());
        // The body deadline is 10 s; generous margin.
        assert!(after < Duration::from_secs(40), "cut only after {after:?}");
        assert_eq!(raw::status(&answer), Some(408), "{answer}");
        assert!(answer.contains("\"request_timeout\""), "{answer}");
        assert_stamped("a slow body", &answer);
    }
    // Nothing of theirs was logged as an intent: only the 10 real chats.
    let plans = app.send("GET", "/madre/plans", Some(VIEWER), None).await;
    assert_eq!(plans.body["plans"].as_array().map(Vec::len), Some(10));
    app.stop().await;
}

#[actix_rt::test]
async fn oversized_headers_are_refused_and_the_server_carries_on() {
    let app = spawn_app().await;
    let limit = Duration::from_secs(20);
    let huge_value = format!(
        "GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Huge: {}\r\n\r\n",
        "a".repeat(256 * 1024)
    );
    let many: String = (0..200).map(|i| format!("X-Header-{i}: {i}\r\n")).collect();
    let too_many = format!("GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n{many}\r\n");
    let huge_token = format!(
        "POST /madre/chat HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{{}}",
        "t".repeat(200 * 1024)
    );
    for (what, request) in [
        ("a 256 KiB header", huge_value),
        ("200 headers", too_many),
        ("a 200 KiB token", huge_token),
    ] {
        let answer = actix_web::rt::task::spawn_blocking({
            let base = app.base.clone();
            move || raw::exchange(&base, request.as_bytes(), limit)
        })
        .await
        .unwrap();
        let status = raw::status(&answer);
        test_log!("{what}: {:?}", answer.lines().next());
        assert!(
            status == Some(431),
            "{what}: answered {:?}",
            answer.lines().next()
        );
        assert_stamped(what, &answer);
        assert_eq!(app.send("GET", "/health", None, None).await.status, 200);
    }
    // None of them made a plan.
    let plans = app.send("GET", "/madre/plans", Some(VIEWER), None).await;
    assert_eq!(plans.status, 200);
    assert_eq!(plans.body["plans"].as_array().map(Vec::len), Some(0));
    app.stop().await;
}

/// Answers written by the HTTP layer itself, before a route is chosen
/// (a malformed head), and a body over the limit carry `X-Request-Id` and
/// the JSON error shape too; the connection's next answers are untouched.
#[actix_rt::test]
async fn answers_written_before_routing_carry_a_request_id() {
    let app = spawn_app().await;
    let limit = Duration::from_secs(20);
    let body = format!("{{\"message\": \"{}\"}}", "a".repeat(70_000));
    let too_large = format!(
        "POST /madre/chat HTTP/1.1\r\nHost: 127.0.0.1\r\nX-VX11-Token: {OPERATOR}\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    for (what, request, expected) in [
        (
            "a malformed head",
            "GET /health HTTP/1.1\r\nHost 127.0.0.1\r\n\r\n".to_owned(),
            400,
        ),
        ("a body over the limit", too_large, 413),
    ] {
        let answer = actix_web::rt::task::spawn_blocking({
            let base = app.base.clone();
            move || raw::exchange(&base, request.as_bytes(), limit)
        })
        .await
        .unwrap();
        assert_eq!(raw::status(&answer), Some(expected), "{what}: {answer}");
        assert_stamped(what, &answer);
    }
    // Pipelined requests on one connection: every answer is stamped once,
    // and their bodies arrive intact.
    let pipelined = "GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\nHEAD /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\nGET /nowhere HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
    let answer = actix_web::rt::task::spawn_blocking({
        let base = app.base.clone();
        move || raw::exchange(&base, pipelined.as_bytes(), limit)
    })
    .await
    .unwrap();
    let ids = answer.to_ascii_lowercase().matches("x-request-id:").count();
    assert_eq!(ids, 3, "{answer}");
    assert_eq!(answer.matches("HTTP/1.1 ").count(), 3, "{answer}");
    assert!(answer.contains("\"module\":\"madre\""), "{answer}");
    assert!(answer.trim_end().ends_with('}'), "{answer}");
    app.stop().await;
}

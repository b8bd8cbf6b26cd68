//! The real `madre` binary: serve with a generated token, the CLI client
//! subcommands against it (the API's JSON with `--json`, the human output by
//! default, snapshotted in `snapshots/`), graceful stop on SIGTERM.

use expect_test::{ExpectFile, expect_file};
use serde_json::Value;
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};
use vx11_stubs::StubServer;

mod common;

use common::{BIN, free_port, madre_command, wait_listening};

struct Server {
    child: Child,
    url: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn serve(data: &std::path::Path, stubs: &StubServer) -> Server {
    let port = free_port();
    // Madre's own information lines too: the stop's is checked.
    let child = madre_command(data, port, stubs, None)
        .env("RUST_LOG", "warn,madre=info")
        .spawn()
        .unwrap();
    wait_listening(port).await;
    Server {
        child,
        url: format!("http://127.0.0.1:{port}"),
    }
}

/// Runs the CLI off the test's runtime thread, which also serves the stubs.
async fn cli(server: &Server, token: &str, args: &[&str]) -> Output {
    let mut command = Command::new(BIN);
    command
        .args(["--url", &server.url, "--token", token])
        .args(args)
        .env_remove("VX11_TOKEN");
    tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap()
}

fn json_of(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(&out.stdout)))
}

#[actix_rt::test]
async fn the_binary_serves_and_the_cli_drives_a_confirmation_round_trip() {
    let stubs = StubServer::start("127.0.0.1", |_| 0).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut server = serve(&data, &stubs).await;

    // VX11_TOKEN unset: a token was generated into a 0600 file
    let token_file = data.join("token");
    let token = std::fs::read_to_string(&token_file)
        .unwrap()
        .trim()
        .to_owned();
    assert!(token.len() >= 32);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&token_file).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            std::fs::metadata(data.join("vx11.db"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o600
        );
        assert_eq!(
            std::fs::metadata(&data).unwrap().permissions().mode() & 0o777,
            0o700
        );
    }

    let health = cli(&server, &token, &["health", "--json"]).await;
    assert!(health.status.success());
    assert_eq!(json_of(&health)["module"], "madre");

    let chat = cli(&server, &token, &["--json", "chat", "hello from the cli"]).await;
    assert!(
        chat.status.success(),
        "{}",
        String::from_utf8_lossy(&chat.stderr)
    );
    assert_eq!(
        json_of(&chat)["response"],
        "[hermes stub via stub-engine] hello from the cli"
    );

    let waiting = json_of(
        &cli(
            &server,
            &token,
            &["chat", "delete all data", "--session", "cli-1", "--json"],
        )
        .await,
    );
    assert_eq!(waiting["status"], "WAITING");
    let plan = waiting["plan_id"].as_str().unwrap().to_owned();
    let confirm_token = waiting["confirm_token"].as_str().unwrap().to_owned();
    let confirmed = cli(
        &server,
        &token,
        &["confirm", &plan, &confirm_token, "--output", "json"],
    )
    .await;
    assert!(
        confirmed.status.success(),
        "{}",
        String::from_utf8_lossy(&confirmed.stderr)
    );
    assert_eq!(json_of(&confirmed)["plan_status"], "DONE");
    let shown = json_of(&cli(&server, &token, &["plan", &plan, "-o", "json"]).await);
    assert_eq!(shown["plan"]["status"], "DONE");
    let listed = json_of(&cli(&server, &token, &["plans", "--status", "DONE", "--json"]).await);
    assert_eq!(listed["plans"].as_array().unwrap().len(), 2);

    // failures exit non-zero with the reason on stderr
    let again = cli(
        &server,
        &token,
        &["confirm", &plan, &confirm_token, "--json"],
    )
    .await;
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("409"));
    let wrong = cli(&server, "not-the-token", &["plans"]).await;
    assert_eq!(wrong.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("401"));
    let cancel = cli(&server, &token, &["cancel", "not-a-plan"]).await;
    assert!(!cancel.status.success());

    // SIGTERM stops it gracefully
    #[cfg(unix)]
    {
        let pid = server.child.id().to_string();
        assert!(
            Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .unwrap()
                .success()
        );
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = server.child.try_wait().unwrap() {
                assert!(status.success(), "exit status {status}");
                break;
            }
            assert!(Instant::now() < deadline, "madre ignored SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    // the forensic log directory exists, is the operator's alone (0700),
    // and holds no token
    let logs = data.join("forensic").join("madre").join("logs");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        for dir in [&logs, &data.join("forensic")] {
            let mode = std::fs::metadata(dir).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o700, "{}", dir.display());
        }
    }
    let mut logged = String::new();
    for entry in std::fs::read_dir(&logs).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        assert!(!text.contains(&token) && !text.contains(&confirm_token));
        logged.push_str(&text);
    }
    // The stop drained the writes still queued before it ended.
    let stopped = logged
        .lines()
        .find(|l| l.contains("madre stopped"))
        .unwrap_or_else(|| panic!("no stop line in the log:\n{logged}"));
    assert!(
        stopped.contains("writes_drained") && stopped.contains("true"),
        "{stopped}"
    );
}

#[test]
fn a_bad_setting_stops_the_start_naming_the_variable() {
    for (name, value) in [
        ("MADRE_MAX_CONCURRENT_TASKS", "lots"),
        // A replica name that could not be told apart in logs or a journal.
        ("MADRE_REPLICA_ID", "two words"),
    ] {
        let out = Command::new(BIN)
            .env(name, value)
            .env("VX11_TOKEN", "t")
            .env(
                "MADRE_DATA_DIR",
                std::env::temp_dir().join("madre-bad-setting"),
            )
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{name}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(name),
            "{name}"
        );
    }
}

/// Runs the CLI and answers its stdout, failing the test on a non-zero exit.
/// Waits (bounded) until the plan has `n` audit rows of the event bus.
async fn publish_rows(server: &Server, token: &str, plan_id: &str, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let detail = json_of(&cli(server, token, &["plan", plan_id, "--json"]).await);
        let rows = detail["actions"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|a| a["action"] == "publish")
            .count();
        if rows >= n {
            return;
        }
        assert!(Instant::now() < deadline, "no {n} publish rows: {detail}");
        actix_rt::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn human(server: &Server, token: &str, args: &[&str]) -> String {
    let out = cli(server, token, args).await;
    assert!(
        out.status.success(),
        "madre {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The output with what changes from run to run replaced: ids, tokens,
/// times, ages and durations, and runs of spaces (their widths vary with
/// the ages) as one. The unit tests of `cli::render` pin the exact layout.
fn normalise(text: &str, secrets: &[&str]) -> String {
    let mut text = text.to_owned();
    for secret in secrets {
        text = text.replace(secret, "<token>");
    }
    text.lines()
        .map(|line| {
            replace_uuids(line)
                .split_whitespace()
                .map(normalise_word)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

fn replace_uuids(line: &str) -> String {
    let is_uuid = |s: &[u8]| {
        s.len() == 36
            && s.iter().enumerate().all(|(i, b)| match i {
                8 | 13 | 18 | 23 => *b == b'-',
                _ => b.is_ascii_hexdigit(),
            })
    };
    let bytes = line.as_bytes();
    let (mut out, mut i) = (String::new(), 0);
    while i < bytes.len() {
        if bytes.len() - i >= 36 && is_uuid(&bytes[i..i + 36]) {
            out.push_str("<uuid>");
            i += 36;
        } else {
            let c = line[i..].chars().next().unwrap();
            out.push(c);
            i += c.len_utf8();
        }
    }
    out
}

fn normalise_word(word: &str) -> String {
    let core = word.trim_matches(|c| matches!(c, '(' | ')' | ',' | ':'));
    let (start, end) = match word.find(core) {
        Some(start) if !core.is_empty() => (start, start + core.len()),
        _ => return word.to_owned(),
    };
    let core = core.trim_start_matches('+');
    let is_short_id = core.len() == 8 && core.bytes().all(|b| b.is_ascii_hexdigit());
    let is_span = core.starts_with(|c: char| c.is_ascii_digit())
        && core.ends_with(['s', 'm', 'h', 'd'])
        && core
            .chars()
            .all(|c| c.is_ascii_digit() || "., smhd".contains(c));
    let is_time = core.len() == 20 && core.as_bytes()[10] == b'T' && core.ends_with('Z');
    let replaced = if is_short_id {
        "<id>"
    } else if is_span {
        "<span>"
    } else if is_time {
        "<time>"
    } else {
        return word.to_owned();
    };
    format!("{}{replaced}{}", &word[..start], &word[end..])
}

fn check(actual: &str, secrets: &[&str], expected: ExpectFile) {
    expected.assert_eq(&normalise(actual, secrets));
}

#[actix_rt::test]
async fn the_cli_prints_for_people_unless_asked_for_json() {
    let stubs = StubServer::start("127.0.0.1", |_| 0).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = serve(&data, &stubs).await;
    let token = std::fs::read_to_string(data.join("token"))
        .unwrap()
        .trim()
        .to_owned();
    let token = token.as_str();

    // the first probe of the modules runs as Madre starts; wait for it
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let health = json_of(&cli(&server, token, &["health", "--json"]).await);
        let deps = health["deps"].as_object().unwrap();
        let mut modules = deps.iter().filter(|(name, _)| *name != "db");
        if !deps.is_empty() && modules.all(|(_, state)| state == "up") {
            break;
        }
        assert!(Instant::now() < deadline, "modules not up: {health}");
        actix_rt::time::sleep(Duration::from_millis(50)).await;
    }
    let health = human(&server, token, &["health"]).await;
    let version = format!("madre {}:", env!("CARGO_PKG_VERSION"));
    check(
        &health.replacen(&version, "madre <version>:", 1),
        &[],
        expect_file!["snapshots/health.txt"],
    );

    let done = human(&server, token, &["chat", "hello from the cli"]).await;
    check(&done, &[], expect_file!["snapshots/chat_done.txt"]);

    // the WAITING line ends with the command to run; run exactly that
    let waiting = human(
        &server,
        token,
        &["chat", "delete all data", "--session", "cli-2"],
    )
    .await;
    let status_line = waiting.lines().last().unwrap();
    let command = status_line.split(": madre ").nth(1).expect(status_line);
    let words: Vec<&str> = command.split(' ').collect();
    let [_, plan_id, confirm_token] = words[..] else {
        panic!("not a confirm command: {command}");
    };
    assert_eq!(words[0], "confirm");
    check(
        &waiting,
        &[confirm_token],
        expect_file!["snapshots/chat_waiting.txt"],
    );
    // The event bus's audit rows are written in the background: wait for
    // each, so the audit trail below is always in the same order.
    publish_rows(&server, token, plan_id, 1).await;
    let confirmed = human(&server, token, &words).await;
    check(&confirmed, &[], expect_file!["snapshots/confirm.txt"]);
    publish_rows(&server, token, plan_id, 2).await;

    // the short id of the tables is enough to name a plan
    let short = &plan_id[plan_id.len() - 8..];
    let shown = human(&server, token, &["plan", short]).await;
    assert!(
        shown.starts_with(&format!("plan      {plan_id}\n")),
        "{shown}"
    );
    // the journal is the server's newest addition: shown when sent, and
    // left out of the snapshot so that it can grow on its own
    let detail = json_of(&cli(&server, token, &["plan", plan_id, "--json"]).await);
    let has_journal = detail["events"].as_array().is_some_and(|e| !e.is_empty());
    assert_eq!(shown.contains("\njournal\n"), has_journal, "{shown}");
    let shown = shown.split("\njournal\n").next().unwrap();
    check(shown, &[], expect_file!["snapshots/plan.txt"]);

    let restart = human(&server, token, &["chat", "restart the switch"]).await;
    let restart_id = restart
        .split("madre confirm ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .expect(&restart);
    let cancelled = human(
        &server,
        token,
        &["cancel", &restart_id[restart_id.len() - 8..]],
    )
    .await;
    check(&cancelled, &[], expect_file!["snapshots/cancel.txt"]);

    let listed = human(&server, token, &["plans"]).await;
    check(&listed, &[], expect_file!["snapshots/plans.txt"]);
    let first_page = human(&server, token, &["plans", "--limit", "2"]).await;
    assert_eq!(first_page.lines().count(), 4, "{first_page}");
    assert!(first_page.contains("\nmore plans: add --all, or --cursor "));
    let every_page = human(&server, token, &["plans", "--limit", "2", "--all"]).await;
    // The same plans in the same order; their ages may have moved on.
    assert_eq!(normalise(&every_page, &[]), normalise(&listed, &[]));
    let all_json = json_of(
        &cli(
            &server,
            token,
            &["plans", "--limit", "1", "--all", "-o", "json"],
        )
        .await,
    );
    assert_eq!(all_json["plans"].as_array().unwrap().len(), 3);
    assert_eq!(all_json["next_cursor"], Value::Null);
    let waiting_only = human(&server, token, &["plans", "--status", "WAITING"]).await;
    assert_eq!(waiting_only, "no plans\n");

    // failures: one line on stderr, exit code 1
    let again = cli(&server, token, &["cancel", restart_id]).await;
    assert_eq!(again.status.code(), Some(1));
    assert!(again.stdout.is_empty());
    check(
        &String::from_utf8(again.stderr).unwrap(),
        &[],
        expect_file!["snapshots/cancel_again.stderr"],
    );
    let unknown = cli(&server, token, &["plan", "ffffffff"]).await;
    assert_eq!(unknown.status.code(), Some(1));
    check(
        &String::from_utf8(unknown.stderr).unwrap(),
        &[],
        expect_file!["snapshots/plan_unknown.stderr"],
    );
    let unreachable = Command::new(BIN)
        .args([
            "--url",
            &format!("http://127.0.0.1:{}", free_port()),
            "health",
        ])
        .output()
        .unwrap();
    assert_eq!(unreachable.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&unreachable.stderr)
            .starts_with("madre: cannot reach http://127.0.0.1:")
    );
}

/// SPEC §14: `madre chat … --follow` prints the answer, then the plan's
/// journal as it happens, and ends when the plan does: here a HIGH plan
/// that waits until another call confirms it. `madre watch ID` prints a
/// finished plan's journal and ends.
#[actix_rt::test]
async fn chat_follow_streams_a_waiting_plan_until_it_ends() {
    use std::io::{BufRead, BufReader};
    let stubs = StubServer::start("127.0.0.1", |_| 0).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = serve(&data, &stubs).await;
    let token = std::fs::read_to_string(data.join("token"))
        .unwrap()
        .trim()
        .to_owned();

    let mut follower = Command::new(BIN)
        .args(["--url", &server.url, "--token", &token, "--json"])
        .args(["chat", "delete all data", "--follow"])
        .env_remove("VX11_TOKEN")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = follower.stdout.take().unwrap();
    let (lines_tx, lines_rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if lines_tx.send(line.unwrap()).is_err() {
                break;
            }
        }
    });
    let next_line = || {
        lines_rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the follower printed nothing more")
    };
    // The answer first (pretty JSON, closed by a lone brace) …
    let mut answer = String::new();
    loop {
        let line = next_line();
        answer.push_str(&line);
        if line == "}" {
            break;
        }
    }
    let answer: Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(answer["status"], "WAITING");
    let plan = answer["plan_id"].as_str().unwrap().to_owned();
    // … then the journal so far, one event a line.
    let created: Value = serde_json::from_str(&next_line()).unwrap();
    assert_eq!(created["type"], "plan_created");
    let waiting: Value = serde_json::from_str(&next_line()).unwrap();
    assert_eq!(waiting["type"], "plan_waiting");

    let token_to_confirm = answer["confirm_token"].as_str().unwrap();
    let confirmed = cli(
        &server,
        &token,
        &[
            "confirm",
            &plan,
            token_to_confirm,
            "--reason",
            "looks right",
            "--json",
        ],
    )
    .await;
    assert!(confirmed.status.success());

    let mut types = Vec::new();
    let mut confirmed_reason = None;
    loop {
        let event: Value = serde_json::from_str(&next_line()).unwrap();
        assert_eq!(event["plan_id"], plan.as_str());
        if event["type"] == "plan_confirmed" {
            confirmed_reason = event["reason"].as_str().map(str::to_owned);
        }
        types.push(event["type"].as_str().unwrap().to_owned());
        if event["type"] == "plan_finished" {
            assert_eq!(event["status"], "DONE");
            break;
        }
    }
    assert_eq!(types.first().map(String::as_str), Some("plan_confirmed"));
    assert_eq!(confirmed_reason.as_deref(), Some("looks right"));
    let status = tokio::task::spawn_blocking(move || follower.wait().unwrap())
        .await
        .unwrap();
    assert!(
        status.success(),
        "the follower ends with its plan: {status}"
    );

    let watched = cli(&server, &token, &["watch", &plan, "--json"]).await;
    assert!(watched.status.success());
    let lines: Vec<Value> = String::from_utf8_lossy(&watched.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2 + types.len());
    assert_eq!(lines.last().unwrap()["type"], "plan_finished");
    // `madre reject` with its reason cancels a waiting plan.
    let refused = json_of(&cli(&server, &token, &["--json", "chat", "delete all logs"]).await);
    let rejected = cli(
        &server,
        &token,
        &[
            "reject",
            refused["plan_id"].as_str().unwrap(),
            refused["confirm_token"].as_str().unwrap(),
            "--reason",
            "not today",
            "--json",
        ],
    )
    .await;
    assert!(
        rejected.status.success(),
        "{}",
        String::from_utf8_lossy(&rejected.stderr)
    );
    assert_eq!(json_of(&rejected)["plan_status"], "CANCELLED");

    let human = cli(&server, &token, &["watch", &plan[plan.len() - 8..]]).await;
    assert!(human.status.success());
    let text = String::from_utf8_lossy(&human.stdout);
    assert!(
        text.contains("plan_waiting") && text.contains("DONE"),
        "{text}"
    );
}

//! Snapshots of every rendering, on fixed JSON and a fixed time.

use super::*;
use expect_test::{Expect, expect};
use serde_json::json;

const NOW: &str = "2026-12-01T07:26:00Z";

fn cx() -> Context {
    Context {
        now: NOW.parse().unwrap(),
        paint: Paint::OFF,
    }
}

type Render = fn(&Value, &Context) -> String;

fn check(render: Render, value: Value, expected: Expect) {
    expected.assert_eq(&render(&value, &cx()));
}

fn chat_answer(status: &str, response: &str) -> Value {
    json!({
        "actions": [],
        "intent_id": "bb06ba26-6791-4081-a1cd-4d37d3387ac5",
        "mode": "MADRE",
        "plan_id": "cfa5620c-014a-411b-b5c9-1efdb30e1668",
        "response": response,
        "risk": "LOW",
        "session_id": "bf5f57bf-e15e-4667-b5bc-666202ba8f05",
        "status": status,
        "targets": [],
        "warnings": []
    })
}

#[test]
fn chat_done() {
    check(
        chat,
        chat_answer("DONE", "[hermes stub via stub-engine] hello there"),
        expect![[r#"
            [hermes stub via stub-engine] hello there
            DONE · risk LOW · plan b30e1668 · session bf5f57bf-e15e-4667-b5bc-666202ba8f05"#]],
    );
}

#[test]
fn no_server_text_reaches_the_terminal_as_escapes() {
    let evil = "x\x1b]0;owned\x07\x1b[2J";
    let mut detail = detail();
    detail["plan"]["status"] = json!(evil);
    detail["plan"]["steps"][0]["error"] = json!(evil);
    detail["actions"][0]["reason"] = json!(evil);
    let answers: [(Render, Value); 4] = [
        (chat, chat_answer(evil, evil)),
        (plan, detail),
        (
            plans,
            json!({ "plans": [summary(evil, evil, evil, evil, evil, NOW)], "next_cursor": evil }),
        ),
        (
            health,
            json!({ "status": evil, "version": evil, "deps": { evil: evil, "db": { evil: evil } } }),
        ),
    ];
    for (render, value) in answers {
        let out = render(&value, &cx());
        assert!(!out.contains(['\x1b', '\x07']), "{out:?}");
    }
    let out = failure("500", &json!(evil), Some(evil));
    assert!(!out.contains(['\x1b', '\x07']), "{out:?}");
}

#[test]
fn chat_waiting_names_the_confirm_command() {
    let mut answer = chat_answer(
        "WAITING",
        "This needs a human confirmation (HIGH risk): POST /madre/plans/c68fcd77-1d2e-4f6a-81f3-e74810037427/confirm with the confirm_token within 600 s",
    );
    answer["plan_id"] = json!("c68fcd77-1d2e-4f6a-81f3-e74810037427");
    answer["session_id"] = json!("s1");
    answer["risk"] = json!("HIGH");
    answer["warnings"] = json!(["destructive_intent_detected"]);
    answer["confirm_token"] = json!("-m-lZolYEkcEODI5tL8yBdAEX0M1akPU-rNx_n0Ryko");
    answer["confirm_expires_at"] = json!("2026-12-01T07:31:23.924643044Z");
    check(
        chat,
        answer,
        expect![[r#"
            This needs a human confirmation (HIGH risk): POST /madre/plans/c68fcd77-1d2e-4f6a-81f3-e74810037427/confirm with the confirm_token within 600 s
            WAITING · risk HIGH · plan 10037427 · session s1 · warnings destructive_intent_detected · confirm within 5m23s: madre confirm c68fcd77-1d2e-4f6a-81f3-e74810037427 -m-lZolYEkcEODI5tL8yBdAEX0M1akPU-rNx_n0Ryko"#]],
    );
}

#[test]
fn chat_denied() {
    let mut answer = chat_answer(
        "ERROR",
        "Refused: \"stop\" on tentaculo_link is never allowed, with or without confirmation",
    );
    answer["risk"] = json!("HIGH");
    answer["warnings"] = json!(["denied"]);
    check(
        chat,
        answer,
        expect![[r#"
            Refused: "stop" on tentaculo_link is never allowed, with or without confirmation
            ERROR · risk HIGH · plan b30e1668 · session bf5f57bf-e15e-4667-b5bc-666202ba8f05 · warnings denied"#]],
    );
}

#[test]
fn chat_text_cannot_drive_the_terminal() {
    let answer = chat_answer("DONE", "line one\n\x1b[2Jline two\x07");
    check(
        chat,
        answer,
        expect![[r#"
            line one
            �[2Jline two�
            DONE · risk LOW · plan b30e1668 · session bf5f57bf-e15e-4667-b5bc-666202ba8f05"#]],
    );
}

#[test]
fn chat_without_an_answer_is_only_the_status_line() {
    check(
        chat,
        chat_answer("DONE", ""),
        expect!["DONE · risk LOW · plan b30e1668 · session bf5f57bf-e15e-4667-b5bc-666202ba8f05"],
    );
}

fn summary(id: &str, name: &str, module: &str, action: &str, status: &str, created: &str) -> Value {
    json!({
        "plan_id": id,
        "name": name,
        "module": module,
        "action": action,
        "status": status,
        "created_at": created,
        "updated_at": created,
    })
}

#[test]
fn plans_table_newest_first_with_the_next_page() {
    let mut failed = summary(
        "275c8beb-222c-422d-9f9a-f3c0eb4ebd47",
        "chat",
        "hermes",
        "chat",
        "ERROR",
        "2026-12-01T07:25:58Z",
    );
    failed["error"] = json!("timeout");
    failed["session_id"] = json!("ff906e02-0fac-4b57-b848-cb3b2ed33075");
    let mut waiting = summary(
        "c68fcd77-1d2e-4f6a-81f3-e74810037427",
        "chat",
        "madre",
        "delete",
        "WAITING",
        "2026-12-01T07:21:23.924643Z",
    );
    waiting["session_id"] = json!("s1");
    waiting["risk"] = json!("HIGH");
    let mut cancelled = summary(
        "13b0001c-6d68-4800-89c2-69201c4d7842",
        "control:shub:restart",
        "shub",
        "restart",
        "CANCELLED",
        "2026-12-01T05:00:00Z",
    );
    cancelled["error"] = json!("cancelled");
    cancelled["session_id"] = json!("the night shift's maintenance session");
    let page = json!({
        "plans": [
            failed,
            waiting,
            cancelled,
            summary(
                "0d5e7c1a-0000-4000-8000-000000000001",
                "nightly-backup",
                "hormiguero",
                "backup",
                "DONE",
                "2026-11-28T07:26:00Z"
            ),
        ],
        "next_cursor": "4"
    });
    check(
        plans,
        page,
        expect![[r#"
            PLAN      STATUS           RISK  ACTION                SESSION                   AGE
            eb4ebd47  ERROR (timeout)  -     chat:hermes:chat      2ed33075                  2s
            10037427  WAITING          HIGH  chat:madre:delete     s1                        4m
            1c4d7842  CANCELLED        -     control:shub:restart  the night shift's maint…  2h
            00000001  DONE             -     nightly-backup        -                         3d
            more plans: add --all, or --cursor 4"#]],
    );
}

#[test]
fn plans_on_the_last_page() {
    check(
        plans,
        json!({ "plans": [], "next_cursor": null }),
        expect!["no plans"],
    );
}

#[test]
fn plans_without_risks_have_no_risk_column() {
    let mut plan = summary(
        "82f87890-1bec-4165-b2de-7a91843e8f1f",
        "chat",
        "madre",
        "delete",
        "DONE",
        "2026-12-01T07:25:57Z",
    );
    plan["session_id"] = json!("5b1740d7-51a3-45f7-9599-e982464d738c");
    check(
        plans,
        json!({ "plans": [plan], "next_cursor": null }),
        expect![[r#"
            PLAN      STATUS  ACTION             SESSION   AGE
            843e8f1f  DONE    chat:madre:delete  464d738c  3s"#]],
    );
}

fn detail() -> Value {
    json!({
        "actions": [
            { "action": "delete", "created_at": "2026-12-01T07:21:23.924700Z", "id": 2, "module": "madre",
              "plan_id": "c68fcd77-1d2e-4f6a-81f3-e74810037427", "principal": "admin",
              "reason": "waiting for confirmation (HIGH risk)" },
            { "action": "confirm", "created_at": "2026-12-01T07:21:28.135775Z", "id": 3, "module": "madre",
              "plan_id": "c68fcd77-1d2e-4f6a-81f3-e74810037427", "principal": "admin",
              "reason": "HIGH risk plan confirmed" }
        ],
        "intent": {
            "created_at": "2026-12-01T07:21:23.924384910Z",
            "dsl": { "action": "delete", "confidence": 0.9, "domain": "system",
                     "original_text": "delete all data", "parameters": {}, "targets": [],
                     "warnings": ["destructive_intent_detected"], "effect": "destroy" },
            "intent_id": "0a14e08c-e46a-4126-95d9-3c74e9a2d122",
            "mode": "MADRE", "requires_confirmation": true, "risk": "HIGH",
            "session_id": "s1", "targets": ["madre"]
        },
        "plan": {
            "created_at": "2026-12-01T07:21:23.924643Z",
            "intent_id": "0a14e08c-e46a-4126-95d9-3c74e9a2d122",
            "mode": "MADRE",
            "plan_id": "c68fcd77-1d2e-4f6a-81f3-e74810037427",
            "session_id": "s1",
            "status": "DONE",
            "steps": [
                { "attempts": 0, "blocking": true, "created_at": "2026-12-01T07:21:23.924643Z",
                  "optional": false, "payload": { "risk": "HIGH" }, "result": { "confirmed_by": "admin" },
                  "status": "DONE", "step_id": "6e97606f-68fb-4aaa-a49d-16a50635ca18",
                  "type": "AWAIT_CONFIRMATION", "updated_at": "2026-12-01T07:21:28.135757Z" },
                { "attempts": 1, "blocking": true, "created_at": "2026-12-01T07:21:23.924643Z",
                  "optional": true, "payload": { "prompt": "delete all data" },
                  "status": "DONE", "step_id": "2acdf67f-0bcb-41bf-8e1d-f08458b0caae",
                  "type": "CALL_SWITCH", "updated_at": "2026-12-01T07:21:28.153965Z" },
                { "attempts": 3, "blocking": true, "created_at": "2026-12-01T07:21:23.924643Z",
                  "optional": false, "payload": { "prompt": "delete all data" },
                  "status": "DONE", "step_id": "10bbad7d-a356-4d43-bcec-127bad2dcf9d",
                  "type": "CALL_HERMES", "updated_at": "2026-12-01T07:21:30.554618Z" },
                { "attempts": 0, "blocking": true, "created_at": "2026-12-01T07:21:23.924643Z",
                  "optional": false, "payload": { "module": "shub", "action": "restart" },
                  "status": "CANCELLED", "step_id": "5b1f0000-0000-4000-8000-000000000004",
                  "type": "CALL_MODULE", "updated_at": "2026-12-01T07:21:30.554621Z",
                  "error": "cancelled\nby the operator" }
            ],
            "updated_at": "2026-12-01T07:21:30.554621Z",
            "warnings": []
        }
    })
}

fn journal() -> Value {
    let wait = Some(("6e97606f-68fb-4aaa-a49d-16a50635ca18", "AWAIT_CONFIRMATION"));
    let switch = Some(("2acdf67f-0bcb-41bf-8e1d-f08458b0caae", "CALL_SWITCH"));
    let hermes = Some(("10bbad7d-a356-4d43-bcec-127bad2dcf9d", "CALL_HERMES"));
    let events = [
        (7, "23.924643", "plan_created", None, "PENDING"),
        (8, "23.924643", "plan_waiting", wait, "WAITING"),
        (9, "28.135757", "plan_confirmed", None, "RUNNING"),
        (10, "28.153172", "step_started", switch, "RUNNING"),
        (11, "28.153965", "step_finished", switch, "DONE"),
        (12, "28.153970", "step_started", hermes, "RUNNING"),
        (13, "29.100000", "step_started", hermes, "RUNNING"),
        (14, "30.554618", "step_finished", hermes, "DONE"),
        (15, "30.554621", "plan_finished", None, "DONE"),
    ];
    let events = events.map(|(seq, second, kind, step, status)| {
        let mut event = json!({
            "seq": seq, "at": format!("2026-12-01T07:21:{second}Z"), "type": kind,
            "status": status, "replica": "vm-1", "session_id": "s1",
            "plan_id": "c68fcd77-1d2e-4f6a-81f3-e74810037427",
        });
        if let Some((id, step_type)) = step {
            event["step_id"] = json!(id);
            event["step_type"] = json!(step_type);
        }
        if kind == "plan_confirmed" {
            event["principal"] = json!("admin");
        }
        event
    });
    Value::from(events.to_vec())
}

#[test]
fn plan_with_its_journal() {
    let mut value = detail();
    value["events"] = journal();
    check(
        plan,
        value,
        expect![[r#"
            plan      c68fcd77-1d2e-4f6a-81f3-e74810037427
            status    DONE
            request   "delete all data"
            risk      HIGH (targets: madre)
            effect    destroy
            session   s1
            mode      MADRE
            created   2026-12-01T07:21:23Z (4m ago)
            updated   2026-12-01T07:21:30Z

            steps
            #  TYPE                MODULE  STATUS     ATTEMPTS  DURATION  ERROR
            1  AWAIT_CONFIRMATION  madre   DONE       0         4.2s
            2  CALL_SWITCH         switch  DONE       1         0ms
            3  CALL_HERMES         hermes  DONE       3         1.4s
            4  CALL_MODULE         shub    CANCELLED  0         -         cancelled by the operator

            audit trail
            TIME                  MODULE  ACTION   BY     REASON
            2026-12-01T07:21:23Z  madre   delete   admin  waiting for confirmation (HIGH risk)
            2026-12-01T07:21:28Z  madre   confirm  admin  HIGH risk plan confirmed

            journal
            SEQ  AT     EVENT           STEP                STATUS   BY     REASON
            7    +0ms   plan_created                        PENDING
            8    +0ms   plan_waiting    AWAIT_CONFIRMATION  WAITING
            9    +4.2s  plan_confirmed                      RUNNING  admin
            10   +4.2s  step_started    CALL_SWITCH         RUNNING
            11   +4.2s  step_finished   CALL_SWITCH         DONE
            12   +4.2s  step_started    CALL_HERMES         RUNNING
            13   +5.1s  step_started    CALL_HERMES         RUNNING
            14   +6.6s  step_finished   CALL_HERMES         DONE
            15   +6.6s  plan_finished                       DONE"#]],
    );
}

#[test]
fn plan_without_a_journal_times_steps_one_after_the_other() {
    check(
        plan,
        detail(),
        expect![[r#"
            plan      c68fcd77-1d2e-4f6a-81f3-e74810037427
            status    DONE
            request   "delete all data"
            risk      HIGH (targets: madre)
            effect    destroy
            session   s1
            mode      MADRE
            created   2026-12-01T07:21:23Z (4m ago)
            updated   2026-12-01T07:21:30Z

            steps
            #  TYPE                MODULE  STATUS     ATTEMPTS  DURATION  ERROR
            1  AWAIT_CONFIRMATION  madre   DONE       0         4.2s
            2  CALL_SWITCH         switch  DONE       1         18ms
            3  CALL_HERMES         hermes  DONE       3         2.4s
            4  CALL_MODULE         shub    CANCELLED  0         -         cancelled by the operator

            audit trail
            TIME                  MODULE  ACTION   BY     REASON
            2026-12-01T07:21:23Z  madre   delete   admin  waiting for confirmation (HIGH risk)
            2026-12-01T07:21:28Z  madre   confirm  admin  HIGH risk plan confirmed"#]],
    );
}

#[test]
fn plan_that_failed_without_intent_or_audit() {
    let mut value = detail();
    value["intent"] = Value::Null;
    value["actions"] = json!([]);
    value["plan"]["status"] = json!("ERROR");
    value["plan"]["error"] = json!("timeout");
    value["plan"]["warnings"] = json!(["hermes_slow"]);
    value["plan"]["steps"] = json!([]);
    check(
        plan,
        value,
        expect![[r#"
            plan      c68fcd77-1d2e-4f6a-81f3-e74810037427
            status    ERROR
            error     timeout
            session   s1
            mode      MADRE
            created   2026-12-01T07:21:23Z (4m ago)
            updated   2026-12-01T07:21:30Z
            warnings  hermes_slow

            steps
            none

            audit trail
            none"#]],
    );
}

#[test]
fn health_all_up() {
    let value = json!({
        "deps": { "hermes": "up", "hormiguero": "up", "manifestator": "up", "mcp": "up",
                  "shub": "up", "spawner": "up", "switch": "up", "tentaculo_link": "up" },
        "module": "madre", "status": "ok", "time": "2026-12-01T07:21:28.180423806Z", "version": "0.1.0"
    });
    check(
        health,
        value,
        expect![[r#"
        madre 0.1.0: ok
          hermes          up
          hormiguero      up
          manifestator    up
          mcp             up
          shub            up
          spawner         up
          switch          up
          tentaculo_link  up"#]],
    );
}

#[test]
fn health_degraded_with_the_database() {
    let value = json!({
        "deps": { "db": { "state": "full", "detail": "database or disk is full" },
                  "hermes": "down", "mcp": "disabled", "switch": "unknown" },
        "module": "madre", "status": "degraded", "time": "2026-12-01T07:21:28Z", "version": "0.2.0"
    });
    check(
        health,
        value,
        expect![[r#"
            madre 0.2.0: degraded
              db      full (database or disk is full)
              hermes  down
              mcp     disabled
              switch  unknown"#]],
    );
    let value = json!({
        "deps": { "hermes": "up" }, "db": "read_only",
        "module": "madre", "status": "degraded", "version": "0.2.0"
    });
    check(
        health,
        value,
        expect![[r#"
        madre 0.2.0: degraded
          db      read_only
          hermes  up"#]],
    );
}

#[test]
fn confirm_and_cancel_are_one_line() {
    let id = "c68fcd77-1d2e-4f6a-81f3-e74810037427";
    check(
        confirm,
        json!({ "status": "confirmed", "plan_id": id, "plan_status": "DONE" }),
        expect!["confirmed plan 10037427: DONE"],
    );
    check(
        confirm,
        json!({ "status": "confirmed", "plan_id": id, "plan_status": "RUNNING" }),
        expect![
            "confirmed plan 10037427: RUNNING (follow it with: madre plan c68fcd77-1d2e-4f6a-81f3-e74810037427)"
        ],
    );
    check(
        cancel,
        json!({ "plan_id": id, "plan_status": "CANCELLED" }),
        expect!["cancelled plan 10037427: CANCELLED"],
    );
}

#[test]
fn an_answer_of_another_shape_is_printed_as_json() {
    check(
        confirm,
        json!({ "unexpected": [1, 2] }),
        expect![[r#"
        {
          "unexpected": [
            1,
            2
          ]
        }"#]],
    );
}

#[test]
fn failures_say_what_the_server_said() {
    let conflict = json!({
        "detail": "plan 13b0001c-6d68-4800-89c2-69201c4d7842: the plan already finished (CANCELLED)",
        "error": "conflict",
        "request_id": "1a9e8297-8285-4cd9-9e7b-adbbd9bb9256"
    });
    expect!["HTTP 409 Conflict: plan 13b0001c-6d68-4800-89c2-69201c4d7842: the plan already finished (CANCELLED) (conflict, request 1a9e8297-8285-4cd9-9e7b-adbbd9bb9256)"].assert_eq(&failure("409 Conflict", &conflict, None));
    let full = json!({ "error": "storage_unavailable", "detail": "the database is full", "request_id": "r1" });
    expect!["HTTP 503 Service Unavailable: the database is full (storage_unavailable, request r1); retry after 5s"].assert_eq(&failure("503 Service Unavailable", &full, Some("5")));
    expect!["HTTP 502 Bad Gateway: <html>bad gateway</html>"].assert_eq(&failure(
        "502 Bad Gateway",
        &json!("<html>bad gateway</html>"),
        None,
    ));
    expect!["HTTP 401 Unauthorized"].assert_eq(&failure("401 Unauthorized", &json!(""), None));
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[test]
fn colours_do_not_move_the_columns() {
    let mut value = detail();
    value["events"] = journal();
    let coloured = Context {
        paint: Paint::ON,
        ..cx()
    };
    let answers: [(Render, Value); 2] = [(plan, value), (chat, chat_answer("WAITING", "hi"))];
    for (render, value) in answers {
        let painted = render(&value, &coloured);
        assert_ne!(painted, render(&value, &cx()));
        assert_eq!(strip_ansi(&painted), render(&value, &cx()));
    }
    let page = json!({ "plans": [
        summary("275c8beb-222c-422d-9f9a-f3c0eb4ebd47", "chat", "hermes", "chat", "ERROR", NOW),
        summary("c68fcd77-1d2e-4f6a-81f3-e74810037427", "a-much-longer-task-name", "madre", "x", "DONE", NOW),
    ], "next_cursor": null });
    let painted = plans(&page, &coloured);
    assert!(painted.contains("\x1b[31mERROR\x1b[0m"));
    assert_eq!(strip_ansi(&painted), plans(&page, &cx()));
}

#[test]
fn spans_and_durations() {
    let spans = [
        (0, "0s"),
        (59, "59s"),
        (60, "1m"),
        (3_599, "59m"),
        (3_600, "1h"),
        (86_399, "23h"),
        (86_400, "1d"),
    ];
    for (seconds, expected) in spans {
        assert_eq!(span(seconds), expected, "{seconds}");
    }
    let durations = [
        (0, "0ms"),
        (999, "999ms"),
        (1_000, "1.0s"),
        (2_460, "2.4s"),
        (60_000, "1m00s"),
        (185_000, "3m05s"),
        (3_720_000, "1h02m"),
    ];
    for (ms, expected) in durations {
        assert_eq!(duration(ms), expected, "{ms}");
    }
}

#[test]
fn shell_words() {
    let words = [
        ("abc-DEF_1", "abc-DEF_1"),
        ("", "''"),
        ("a b", "'a b'"),
        ("it's", r"'it'\''s'"),
    ];
    for (word, expected) in words {
        assert_eq!(shell_word(word), expected, "{word}");
    }
}

#[test]
fn watch_lines() {
    let step = json!({"seq": 4, "plan_id": "cfa5620c-014a-411b-b5c9-1efdb30e1668",
        "session_id": "s", "type": "step_started", "step_id": "01a2",
        "step_type": "CALL_HERMES", "status": "RUNNING", "replica": "r",
        "at": "2026-12-01T07:21:24.100000Z"});
    let end = json!({"seq": 9, "plan_id": "cfa5620c-014a-411b-b5c9-1efdb30e1668",
        "type": "plan_finished", "status": "CANCELLED", "principal": "bob\x1b[2J",
        "reason": "cancelled", "replica": "r", "at": "2026-12-01T07:21:25Z"});
    let lines = [step.clone(), end.clone()]
        .map(|e| event_line(&e, Paint::OFF))
        .join("\n");
    expect![[r#"
        2026-12-01T07:21:24Z  plan b30e1668  step_started   CALL_HERMES  RUNNING
        2026-12-01T07:21:25Z  plan b30e1668  plan_finished  CANCELLED  by bob�[2J  (cancelled)"#]]
    .assert_eq(&lines);
    assert!(!ends_plan(&step));
    assert!(ends_plan(&end));
    let step_done = json!({"step_id": "x", "status": "DONE"});
    assert!(!ends_plan(&step_done), "a step's end is not the plan's");
    assert!(!ends_plan(
        &json!({"type": "plan_waiting", "status": "WAITING"})
    ));
}

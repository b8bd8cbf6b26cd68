//! Every transition of the plan state machine, legal and illegal, as one
//! table. A state is written `PLAN|STEPS`: the plan's status letter, then
//! each step as its type letter and status letter.
//! Status letters: P pending, R running, W waiting, D done, E error,
//! C cancelled. Type letters: G confirmation gate, S Switch, H Hermes,
//! X spawner request.

use madre_lifecycle::{Event, PlanState, StepState, apply};
use madre_models::{Status, StepType};

fn status(letter: char) -> Status {
    match letter {
        'P' => Status::Pending,
        'R' => Status::Running,
        'W' => Status::Waiting,
        'D' => Status::Done,
        'E' => Status::Error,
        'C' => Status::Cancelled,
        other => panic!("no status {other}"),
    }
}

fn letter(status: Status) -> char {
    match status {
        Status::Pending => 'P',
        Status::Running => 'R',
        Status::Waiting => 'W',
        Status::Done => 'D',
        Status::Error => 'E',
        Status::Cancelled => 'C',
    }
}

fn step_type(letter: char) -> StepType {
    match letter {
        'G' => StepType::AwaitConfirmation,
        'S' => StepType::CallSwitch,
        'H' => StepType::CallHermes,
        'X' => StepType::SpawnerRequest,
        other => panic!("no step type {other}"),
    }
}

fn parse(text: &str) -> PlanState {
    let (plan, steps) = text.split_once('|').unwrap();
    PlanState {
        status: status(plan.chars().next().unwrap()),
        steps: steps
            .split_whitespace()
            .map(|s| {
                let mut c = s.chars();
                StepState {
                    step_type: step_type(c.next().unwrap()),
                    status: status(c.next().unwrap()),
                    attempts: 0,
                }
            })
            .collect(),
    }
}

fn show(state: &PlanState) -> String {
    let steps: Vec<String> = state
        .steps
        .iter()
        .map(|s| {
            let t = match s.step_type {
                StepType::AwaitConfirmation => 'G',
                StepType::CallSwitch => 'S',
                StepType::CallHermes => 'H',
                StepType::SpawnerRequest => 'X',
                _ => '?',
            };
            format!("{t}{}", letter(s.status))
        })
        .collect();
    format!("{}|{}", letter(state.status), steps.join(" "))
}

const CONFLICT: &str = "conflict";

/// (state before, event, state after or CONFLICT)
fn table() -> Vec<(&'static str, Event, &'static str)> {
    use Event::*;
    let started = |step| StepStarted { step };
    let finished = |step, s| StepFinished {
        step,
        status: status(s),
    };
    let ended = |s| PlanFinished { status: status(s) };
    vec![
        // A LOW chat: Switch then Hermes, each started and finished.
        ("P|SP HP", started(0), "R|SR HP"),
        ("R|SR HP", finished(0, 'D'), "R|SD HP"),
        ("R|SR HP", finished(0, 'E'), "R|SE HP"),
        ("R|SD HP", started(1), "R|SD HR"),
        ("R|SE HP", started(1), "R|SE HR"),
        ("R|SD HR", finished(1, 'D'), "R|SD HD"),
        ("R|SD HD", ended('D'), "D|SD HD"),
        ("R|SD HE", ended('E'), "E|SD HE"),
        // A retry, or a resume after a crash, starts the running step again.
        ("R|SR HP", started(0), "R|SR HP"),
        // A deadline: the running step failed, the rest is cancelled.
        ("R|SR HP", ended('E'), "E|SC HC"),
        ("R|SE HP", ended('E'), "E|SE HC"),
        // A denied plan has no step and ends at once.
        ("P|", ended('E'), "E|"),
        // Cancel: from pending, running and waiting.
        ("P|SP HP", ended('C'), "C|SC HC"),
        ("R|SD HR", ended('C'), "C|SD HC"),
        ("W|GW HP", ended('C'), "C|GC HC"),
        ("W|SD XW", ended('C'), "C|SD XC"),
        // The confirmation gate.
        ("P|GP HP", PlanWaiting { step: 0 }, "W|GW HP"),
        ("W|GW HP", ApprovalRecorded, "W|GW HP"),
        ("W|GW HP", PlanConfirmed, "R|GD HP"),
        ("R|GD HP", started(1), "R|GD HR"),
        ("W|GW HP", PlanRejected, "C|GC HC"),
        ("W|GW HP", PlanExpired, "C|GC HC"),
        // The spawner: the request waits, the spawner finishes it.
        ("R|SD XR", PlanWaiting { step: 1 }, "W|SD XW"),
        ("W|SD XW", finished(1, 'D'), "W|SD XD"),
        ("W|SD XW", finished(1, 'E'), "W|SD XE"),
        ("W|SD XD", ended('D'), "D|SD XD"),
        ("W|SD XE", ended('E'), "E|SD XE"),
        // Take-over of a running plan.
        ("R|SD HR", PlanTakenOver, "R|SD HR"),
        // Illegal: confirming what does not wait for a confirmation.
        ("D|GD HD", PlanConfirmed, CONFLICT),
        ("R|GD HR", PlanConfirmed, CONFLICT),
        ("C|GC HC", PlanConfirmed, CONFLICT),
        ("P|SP HP", PlanConfirmed, CONFLICT),
        ("W|SD XW", PlanConfirmed, CONFLICT),
        ("W|SD XW", PlanExpired, CONFLICT),
        ("R|GD HR", PlanRejected, CONFLICT),
        ("R|GD HR", ApprovalRecorded, CONFLICT),
        // Illegal: finishing a step twice, or one that never started.
        ("R|SD HP", finished(0, 'D'), CONFLICT),
        ("R|SE HP", finished(0, 'E'), CONFLICT),
        ("R|SD HP", finished(1, 'D'), CONFLICT),
        ("R|SR HP", finished(0, 'W'), CONFLICT),
        ("R|SR HP", finished(0, 'C'), CONFLICT),
        ("R|SR HP", finished(5, 'D'), CONFLICT),
        // Illegal: step events on a plan that is not executing.
        ("C|SC HC", started(0), CONFLICT),
        ("C|SD HC", finished(1, 'D'), CONFLICT),
        ("D|SD HD", started(1), CONFLICT),
        ("W|GW HP", started(1), CONFLICT),
        ("W|GW HP", started(0), CONFLICT),
        ("R|SD HD", started(1), CONFLICT),
        ("R|SR HP", started(1), CONFLICT),
        ("R|SR HP", started(9), CONFLICT),
        // Illegal: a step past a gate that was not passed; DONE with a step
        // that never ran.
        ("P|GP HP", started(1), CONFLICT),
        ("P|GP HP", started(0), CONFLICT),
        ("R|SD HP", ended('D'), CONFLICT),
        // Illegal: waiting on a step that cannot wait.
        ("R|SR HP", PlanWaiting { step: 0 }, CONFLICT),
        ("R|GD HR", PlanWaiting { step: 0 }, CONFLICT),
        ("P|SD XP", PlanWaiting { step: 1 }, CONFLICT),
        ("W|GW HP", PlanWaiting { step: 0 }, CONFLICT),
        // Illegal: ending twice, or DONE with a step still open.
        ("D|SD HD", ended('D'), CONFLICT),
        ("E|SD HE", ended('C'), CONFLICT),
        ("C|SC HC", ended('C'), CONFLICT),
        ("R|SD HR", ended('D'), CONFLICT),
        ("W|SD XW", ended('D'), CONFLICT),
        ("R|SD HD", ended('R'), CONFLICT),
        ("R|SD HD", ended('W'), CONFLICT),
        // Illegal: creating a plan that exists; taking over a plan not running.
        ("P|SP", PlanCreated, CONFLICT),
        ("W|GW HP", PlanTakenOver, CONFLICT),
        ("D|SD", PlanTakenOver, CONFLICT),
    ]
}

#[test]
fn every_row_of_the_table() {
    let mut failures = Vec::new();
    for (before, event, expected) in table() {
        let state = parse(before);
        let got = match state.after(&event) {
            Ok(next) => show(&next),
            Err(_) => CONFLICT.to_owned(),
        };
        if got != expected {
            failures.push(format!(
                "{before} + {event:?}: expected {expected}, got {got}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// One event of each type, about step 0.
fn every_event() -> [Event; 10] {
    [
        Event::PlanCreated,
        Event::PlanWaiting { step: 0 },
        Event::ApprovalRecorded,
        Event::PlanConfirmed,
        Event::PlanRejected,
        Event::PlanExpired,
        Event::StepStarted { step: 0 },
        Event::StepFinished {
            step: 0,
            status: Status::Done,
        },
        Event::PlanFinished {
            status: Status::Cancelled,
        },
        Event::PlanTakenOver,
    ]
}

/// Every event on every finished plan is a conflict, whatever its steps.
#[test]
fn a_finished_plan_never_changes() {
    let events = every_event();
    for plan in ['D', 'E', 'C'] {
        for step in ["GW", "SR", "SP", "XW", "SD"] {
            let state = parse(&format!("{plan}|{step}"));
            for event in &events {
                let err = apply(&state, event).unwrap_err();
                assert!(err.reason.contains("already finished"), "{err}");
            }
        }
    }
}

#[test]
fn attempts_count_each_start() {
    let state = PlanState::created(&[StepType::CallHermes]);
    let state = state.after(&Event::StepStarted { step: 0 }).unwrap();
    let state = state.after(&Event::StepStarted { step: 0 }).unwrap();
    assert_eq!(state.steps[0].attempts, 2);
}

#[test]
fn event_names_are_the_journal_types_of_the_spec() {
    let names: Vec<&str> = every_event().iter().map(Event::name).collect();
    assert_eq!(
        names,
        [
            "plan_created",
            "plan_waiting",
            "approval_recorded",
            "plan_confirmed",
            "plan_rejected",
            "plan_expired",
            "step_started",
            "step_finished",
            "plan_finished",
            "plan_taken_over"
        ]
    );
}

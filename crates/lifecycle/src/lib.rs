//! The plan state machine: which change of a plan or of one of its steps is
//! legal, and what it changes. Pure: no I/O, no clock, no storage.
//!
//! Every change of a plan's state is an [`Event`] of the plan journal (SPEC
//! §8). [`apply`] answers the [`Change`]s an event makes to a
//! [`PlanState`], or a [`Conflict`] when the event is not legal there
//! (confirming a plan that is DONE, finishing a step twice, starting a step
//! of a cancelled plan…). Storage appends the event and persists exactly
//! those changes in one transaction; it decides nothing itself.
//!
//! ```
//! use madre_lifecycle::{Event, PlanState, apply};
//! use madre_models::{Status, StepType};
//!
//! let state = PlanState::created(&[StepType::CallSwitch, StepType::CallHermes]);
//! let state = state.after(&Event::StepStarted { step: 0 }).unwrap();
//! assert_eq!(state.status, Status::Running);
//! assert!(apply(&state, &Event::PlanConfirmed).is_err()); // nothing to confirm
//! ```

use madre_models::{EventType, Status, StepType};

/// The part of a plan the rules look at: its status and its steps'.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanState {
    /// The plan's status.
    pub status: Status,
    /// Its steps, in order.
    pub steps: Vec<StepState>,
}

/// One step, as the rules see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepState {
    /// What the step does (only a gate can be confirmed, only a gate or a
    /// spawner request can wait).
    pub step_type: StepType,
    /// Its status.
    pub status: Status,
    /// Calls started so far.
    pub attempts: u32,
}

/// Something that happens to a plan: one row of the journal. Step events
/// name the step by its index in the plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// The plan was made, PENDING, with every step PENDING. It is the first
    /// event of every plan; [`PlanState::created`] is its state.
    PlanCreated,
    /// The plan waits: its confirmation gate (PENDING) or a spawner request
    /// (RUNNING) becomes WAITING, and so does the plan.
    PlanWaiting {
        /// The step that waits.
        step: usize,
    },
    /// One approval of a waiting gate was recorded; the plan keeps waiting
    /// for more (SPEC §15).
    ApprovalRecorded,
    /// The confirmation gate was passed: the gate is DONE, the plan RUNNING.
    PlanConfirmed,
    /// An approver refused: the plan is CANCELLED.
    PlanRejected,
    /// The confirmation expired: the plan is CANCELLED.
    PlanExpired,
    /// A step's call starts (again, after a retry or a crash): it is
    /// RUNNING and counts an attempt; a PENDING plan becomes RUNNING.
    StepStarted {
        /// The step.
        step: usize,
    },
    /// A RUNNING step, or a WAITING spawner request, finished.
    StepFinished {
        /// The step.
        step: usize,
        /// DONE or ERROR.
        status: Status,
    },
    /// The plan ended: DONE, ERROR or CANCELLED. Steps that never finished
    /// are CANCELLED with it.
    PlanFinished {
        /// DONE, ERROR or CANCELLED.
        status: Status,
    },
    /// Another replica took over a plan whose lease lapsed (SPEC §16).
    PlanTakenOver,
}

impl Event {
    /// The event's type, as the journal stores and serves it.
    pub fn event_type(&self) -> EventType {
        match self {
            Event::PlanCreated => EventType::PlanCreated,
            Event::PlanWaiting { .. } => EventType::PlanWaiting,
            Event::ApprovalRecorded => EventType::ApprovalRecorded,
            Event::PlanConfirmed => EventType::PlanConfirmed,
            Event::PlanRejected => EventType::PlanRejected,
            Event::PlanExpired => EventType::PlanExpired,
            Event::StepStarted { .. } => EventType::StepStarted,
            Event::StepFinished { .. } => EventType::StepFinished,
            Event::PlanFinished { .. } => EventType::PlanFinished,
            Event::PlanTakenOver => EventType::PlanTakenOver,
        }
    }

    /// The journal's name of the event type (SPEC §8), snake_case.
    pub fn name(&self) -> &'static str {
        self.event_type().as_str()
    }

    /// The step an event is about, if any.
    pub fn step(&self) -> Option<usize> {
        match self {
            Event::PlanWaiting { step }
            | Event::StepStarted { step }
            | Event::StepFinished { step, .. } => Some(*step),
            _ => None,
        }
    }
}

/// One change to persist. Storage applies them in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// The plan's status becomes `status`.
    Plan {
        /// The new status.
        status: Status,
    },
    /// A step's status becomes `status`; `attempt` counts one more call.
    Step {
        /// The step.
        step: usize,
        /// The new status.
        status: Status,
        /// True when a call starts.
        attempt: bool,
    },
    /// Every step not yet finished becomes CANCELLED.
    CancelOpenSteps,
}

/// Why an event is not legal in a state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{event} is not allowed: {reason}")]
pub struct Conflict {
    /// The event's name.
    pub event: &'static str,
    /// What is in the way, for a human.
    pub reason: String,
}

impl PlanState {
    /// The state [`Event::PlanCreated`] makes of `steps` as the plan was
    /// made: PENDING, each step as given (PENDING, or DONE when it was
    /// answered before the plan was made).
    pub fn created_with(steps: &[madre_models::Step]) -> Self {
        Self {
            status: Status::Pending,
            steps: steps
                .iter()
                .map(|s| StepState {
                    step_type: s.step_type,
                    status: s.status,
                    attempts: s.attempts,
                })
                .collect(),
        }
    }

    /// The state [`Event::PlanCreated`] makes: PENDING, steps PENDING.
    pub fn created(steps: &[StepType]) -> Self {
        Self {
            status: Status::Pending,
            steps: steps
                .iter()
                .map(|&step_type| StepState {
                    step_type,
                    status: Status::Pending,
                    attempts: 0,
                })
                .collect(),
        }
    }

    /// The state after `event`, or why it is not legal.
    pub fn after(&self, event: &Event) -> Result<Self, Conflict> {
        let changes = apply(self, event)?;
        let mut next = self.clone();
        next.change(&changes);
        Ok(next)
    }

    /// Applies changes [`apply`] answered.
    pub fn change(&mut self, changes: &[Change]) {
        for change in changes {
            match *change {
                Change::Plan { status } => self.status = status,
                Change::Step {
                    step,
                    status,
                    attempt,
                } => {
                    if let Some(s) = self.steps.get_mut(step) {
                        s.status = status;
                        s.attempts += u32::from(attempt);
                    }
                }
                Change::CancelOpenSteps => {
                    for s in &mut self.steps {
                        if !s.status.is_terminal() {
                            s.status = Status::Cancelled;
                        }
                    }
                }
            }
        }
    }

    /// The waiting confirmation gate, if the plan has one.
    fn waiting_gate(&self) -> Option<usize> {
        self.steps
            .iter()
            .position(|s| s.step_type == StepType::AwaitConfirmation && s.status == Status::Waiting)
    }
}

/// The changes `event` makes to `state`, or the conflict that forbids it.
pub fn apply(state: &PlanState, event: &Event) -> Result<Vec<Change>, Conflict> {
    let name = event.name();
    let conflict = |reason: String| Conflict {
        event: name,
        reason,
    };
    if state.status.is_terminal() {
        return Err(conflict(format!(
            "the plan already finished ({})",
            state.status
        )));
    }
    let step_of = |idx: usize| {
        state
            .steps
            .get(idx)
            .copied()
            .ok_or_else(|| conflict(format!("the plan has no step {idx}")))
    };
    let need_gate = || {
        if state.status != Status::Waiting {
            return Err(conflict(format!(
                "the plan is {}, not waiting for a confirmation",
                state.status
            )));
        }
        state
            .waiting_gate()
            .ok_or_else(|| conflict("the plan does not wait for a confirmation".into()))
    };
    match *event {
        Event::PlanCreated => Err(conflict("the plan already exists".into())),
        Event::PlanWaiting { step } => {
            let s = step_of(step)?;
            let legal = match s.step_type {
                StepType::AwaitConfirmation => {
                    s.status == Status::Pending && state.status == Status::Pending
                }
                StepType::SpawnerRequest => {
                    s.status == Status::Running && state.status == Status::Running
                }
                _ => false,
            };
            if !legal {
                return Err(conflict(format!(
                    "a {} step that is {} cannot wait (plan {})",
                    s.step_type.as_str(),
                    s.status,
                    state.status
                )));
            }
            Ok(vec![
                Change::Step {
                    step,
                    status: Status::Waiting,
                    attempt: false,
                },
                Change::Plan {
                    status: Status::Waiting,
                },
            ])
        }
        Event::ApprovalRecorded => need_gate().map(|_| Vec::new()),
        Event::PlanConfirmed => {
            let gate = need_gate()?;
            Ok(vec![
                Change::Step {
                    step: gate,
                    status: Status::Done,
                    attempt: false,
                },
                Change::Plan {
                    status: Status::Running,
                },
            ])
        }
        Event::PlanRejected | Event::PlanExpired => {
            need_gate()?;
            Ok(vec![
                Change::CancelOpenSteps,
                Change::Plan {
                    status: Status::Cancelled,
                },
            ])
        }
        Event::StepStarted { step } => {
            let s = step_of(step)?;
            if !matches!(state.status, Status::Pending | Status::Running) {
                return Err(conflict(format!("the plan is {}", state.status)));
            }
            if !matches!(s.status, Status::Pending | Status::Running) {
                return Err(conflict(format!("step {step} is {}", s.status)));
            }
            if let Some(other) = state
                .steps
                .iter()
                .enumerate()
                .position(|(i, o)| i != step && o.status == Status::Running)
            {
                return Err(conflict(format!("step {other} is still running")));
            }
            if s.step_type == StepType::AwaitConfirmation {
                return Err(conflict(format!(
                    "step {step} is a confirmation gate: it waits, it does not start"
                )));
            }
            if let Some(gate) = state.steps[..step].iter().position(|o| {
                o.step_type == StepType::AwaitConfirmation && o.status != Status::Done
            }) {
                return Err(conflict(format!(
                    "the confirmation gate (step {gate}) was not passed"
                )));
            }
            let mut changes = vec![Change::Step {
                step,
                status: Status::Running,
                attempt: true,
            }];
            if state.status == Status::Pending {
                changes.push(Change::Plan {
                    status: Status::Running,
                });
            }
            Ok(changes)
        }
        Event::StepFinished { step, status } => {
            let s = step_of(step)?;
            if !matches!(status, Status::Done | Status::Error) {
                return Err(conflict(format!("a step cannot finish as {status}")));
            }
            let legal = match s.status {
                Status::Running => state.status == Status::Running,
                Status::Waiting => {
                    s.step_type == StepType::SpawnerRequest && state.status == Status::Waiting
                }
                _ => false,
            };
            if !legal {
                return Err(conflict(format!(
                    "step {step} is {} (plan {})",
                    s.status, state.status
                )));
            }
            Ok(vec![Change::Step {
                step,
                status,
                attempt: false,
            }])
        }
        Event::PlanFinished { status } => {
            if !status.is_terminal() {
                return Err(conflict(format!("a plan cannot finish as {status}")));
            }
            if status == Status::Done
                && let Some(open) = state.steps.iter().position(|s| !s.status.is_terminal())
            {
                return Err(conflict(format!(
                    "step {open} is {}: the plan is not done",
                    state.steps[open].status
                )));
            }
            Ok(vec![Change::CancelOpenSteps, Change::Plan { status }])
        }
        Event::PlanTakenOver => {
            if state.status != Status::Running {
                return Err(conflict(format!(
                    "only a running plan can be taken over (it is {})",
                    state.status
                )));
            }
            Ok(Vec::new())
        }
    }
}

//! A circuit breaker per module, fed by both calls and health probes, so a
//! module that hangs or is down costs one timeout, not one per call.
//!
//! [`Breaker`] is the pure state machine: it reads no clock (every method
//! takes `now`), so its table-driven tests are deterministic.
//! [`Breakers`] shares one breaker per module between every call of the
//! process, and hands out [`Ticket`]s that report each attempt's outcome.
//!
//! The rules:
//! - **closed**: every call goes through; `failures_to_open` consecutive
//!   failed attempts (connect error, timeout, 5xx) open it, and so does a
//!   failed probe. An answer (any 2xx-4xx, even one that is not JSON)
//!   resets the count: the module is there.
//! - **open**: every call fails at once. When `open_for` has passed, or a
//!   probe finds the module answering again, the next call is the trial.
//! - **half-open**: exactly one trial call is under way; every other call
//!   fails at once. The trial's success closes the breaker, its failure
//!   opens it again. A trial abandoned (its caller dropped the call) lets
//!   the next call be the trial.
//!
//! Outcomes of calls admitted before the breaker opened (stragglers) are
//! ignored while it is open or half-open: only the trial decides.

use madre_models::{BreakerState, Module};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// When a breaker opens and how long it stays open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Consecutive failed attempts that open a closed breaker (at least 1).
    pub failures_to_open: u32,
    /// How long an open breaker refuses calls before it lets a trial through.
    pub open_for: Duration,
}

impl Default for BreakerConfig {
    /// Five failed attempts (two and a half failed calls with their
    /// retries), then ten seconds open: one probe period.
    fn default() -> Self {
        Self {
            failures_to_open: 5,
            open_for: Duration::from_secs(10),
        }
    }
}

/// What a breaker says to a call that wants to go through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Closed: go ahead.
    Allowed,
    /// The one trial call of a half-open breaker: go ahead and report.
    Trial,
    /// Open, or half-open with its trial under way: fail at once.
    Refused,
}

/// Something a breaker learns about its module.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// An attempt got an answer; `trial` when it was the half-open trial.
    Answered {
        /// It was the trial call.
        trial: bool,
    },
    /// An attempt failed (connect error, timeout, 5xx, a broken answer).
    Failed {
        /// It was the trial call.
        trial: bool,
    },
    /// The trial call was dropped before it ended: it says nothing.
    TrialAbandoned,
    /// A health probe got 200.
    ProbeUp,
    /// A health probe failed.
    ProbeDown,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen,
}

/// One module's breaker: a pure state machine over [`Signal`]s and
/// admissions, with the time passed in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Breaker {
    state: State,
}

impl Default for Breaker {
    fn default() -> Self {
        Self::new()
    }
}

impl Breaker {
    /// A closed breaker with no failure counted.
    pub fn new() -> Self {
        Self {
            state: State::Closed { failures: 0 },
        }
    }

    /// Its state, as `/health` and `/metrics` show it. An open breaker
    /// whose time is up stays `open` until a call becomes the trial.
    pub fn state(&self) -> BreakerState {
        match self.state {
            State::Closed { .. } => BreakerState::Closed,
            State::Open { .. } => BreakerState::Open,
            State::HalfOpen => BreakerState::HalfOpen,
        }
    }

    /// Whether a call may go through at `now`; an open breaker whose time
    /// is up turns half-open and answers [`Admission::Trial`] to this call.
    pub fn admit(&mut self, now: Instant) -> Admission {
        match self.state {
            State::Closed { .. } => Admission::Allowed,
            State::Open { until } if now >= until => {
                self.state = State::HalfOpen;
                Admission::Trial
            }
            State::Open { .. } | State::HalfOpen => Admission::Refused,
        }
    }

    /// Applies what was learnt at `now`.
    pub fn record(&mut self, signal: Signal, config: &BreakerConfig, now: Instant) {
        let open = State::Open {
            until: now + config.open_for,
        };
        self.state = match (self.state, signal) {
            (State::Closed { .. }, Signal::Answered { .. }) => State::Closed { failures: 0 },
            (State::Closed { failures }, Signal::Failed { .. }) => {
                let failures = failures.saturating_add(1);
                if failures >= config.failures_to_open.max(1) {
                    open
                } else {
                    State::Closed { failures }
                }
            }
            (State::HalfOpen, Signal::Answered { trial: true }) => State::Closed { failures: 0 },
            (State::HalfOpen, Signal::Failed { trial: true }) => open,
            // The next call is the trial.
            (State::HalfOpen, Signal::TrialAbandoned) => State::Open { until: now },
            // The module's /health answers: try it now rather than later.
            (State::Open { until }, Signal::ProbeUp) => State::Open {
                until: until.min(now),
            },
            (_, Signal::ProbeDown) => open,
            // A straggler admitted before the breaker opened, a probe that
            // tells a closed or half-open breaker nothing new, or a trial
            // that ended after a probe opened the breaker again.
            (state, _) => state,
        };
    }
}

/// One breaker per module, shared by every call of the process; cheap to
/// clone.
#[derive(Debug, Clone, Default)]
pub struct Breakers {
    config: BreakerConfig,
    table: Arc<Mutex<BTreeMap<Module, Breaker>>>,
}

impl Breakers {
    /// Closed breakers, opened and reopened as `config` says.
    pub fn new(config: BreakerConfig) -> Self {
        Self {
            config,
            table: Arc::default(),
        }
    }

    /// The rule in force.
    pub fn config(&self) -> BreakerConfig {
        self.config
    }

    fn with<T>(&self, module: Module, f: impl FnOnce(&mut Breaker) -> T) -> T {
        let mut table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        f(table.entry(module).or_default())
    }

    /// A ticket for one attempt to `module`, or `None` when its breaker
    /// refuses the call.
    pub fn admit(&self, module: Module) -> Option<Ticket> {
        let admission = self.with(module, |b| b.admit(Instant::now()));
        let trial = match admission {
            Admission::Allowed => false,
            Admission::Trial => true,
            Admission::Refused => return None,
        };
        if trial {
            tracing::info!(%module, "circuit breaker half-open: one trial call");
        }
        Some(Ticket {
            breakers: self.clone(),
            module,
            trial,
            settled: false,
        })
    }

    /// Records a health probe of `module`: up (200) or not.
    pub fn probed(&self, module: Module, up: bool) {
        let signal = if up {
            Signal::ProbeUp
        } else {
            Signal::ProbeDown
        };
        self.record(module, signal);
    }

    fn record(&self, module: Module, signal: Signal) {
        let config = self.config;
        let (before, after) = self.with(module, |b| {
            let before = b.state();
            b.record(signal, &config, Instant::now());
            (before, b.state())
        });
        if before != after {
            tracing::warn!(%module, from = before.as_str(), to = after.as_str(), "circuit breaker changed");
        }
    }

    /// The state of `module`'s breaker.
    pub fn state(&self, module: Module) -> BreakerState {
        self.with(module, |b| b.state())
    }

    /// The state of each of `modules`' breakers.
    pub fn states(
        &self,
        modules: impl IntoIterator<Item = Module>,
    ) -> BTreeMap<Module, BreakerState> {
        let table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        modules
            .into_iter()
            .map(|m| {
                (
                    m,
                    table.get(&m).map_or(BreakerState::Closed, Breaker::state),
                )
            })
            .collect()
    }
}

/// Leave to make one attempt; report its outcome with [`Ticket::answered`]
/// or [`Ticket::failed`]. A trial ticket dropped unreported (the call was
/// abandoned) lets the next call be the trial.
#[derive(Debug)]
pub struct Ticket {
    breakers: Breakers,
    module: Module,
    trial: bool,
    settled: bool,
}

impl Ticket {
    /// True when this attempt is the half-open trial: it gets no retry.
    pub fn is_trial(&self) -> bool {
        self.trial
    }

    /// The module answered.
    pub fn answered(mut self) {
        self.settled = true;
        let signal = Signal::Answered { trial: self.trial };
        self.breakers.record(self.module, signal);
    }

    /// The module did not answer (connect error, timeout, 5xx).
    pub fn failed(mut self) {
        self.settled = true;
        let signal = Signal::Failed { trial: self.trial };
        self.breakers.record(self.module, signal);
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if self.trial && !self.settled {
            self.breakers.record(self.module, Signal::TrialAbandoned);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One thing that happens to a breaker, `t` milliseconds after the start.
    #[derive(Debug, Clone, Copy)]
    enum Op {
        /// A call asks at `t`; the admission it must get.
        Admit(u64, Admission),
        /// `signal` at `t`.
        Record(u64, Signal),
    }
    use Op::{Admit, Record};

    const CONFIG: BreakerConfig = BreakerConfig {
        failures_to_open: 3,
        open_for: Duration::from_millis(1000),
    };
    const ANSWERED: Signal = Signal::Answered { trial: false };
    const FAILED: Signal = Signal::Failed { trial: false };
    const TRIAL_OK: Signal = Signal::Answered { trial: true };
    const TRIAL_FAILED: Signal = Signal::Failed { trial: true };

    /// Runs `ops` on a new breaker and checks every admission and the end
    /// state.
    fn check(name: &str, ops: &[Op], expected: BreakerState) {
        let start = Instant::now();
        let at = |t: u64| start + Duration::from_millis(t);
        let mut breaker = Breaker::new();
        for (i, op) in ops.iter().enumerate() {
            match *op {
                Admit(t, want) => {
                    assert_eq!(breaker.admit(at(t)), want, "{name}: op {i} {op:?}")
                }
                Record(t, signal) => breaker.record(signal, &CONFIG, at(t)),
            }
        }
        assert_eq!(breaker.state(), expected, "{name}: end state");
    }

    #[test]
    fn breaker_states() {
        let open_after_three = [Record(0, FAILED), Record(1, FAILED), Record(2, FAILED)];
        let table: Vec<(&str, Vec<Op>, BreakerState)> = vec![
            (
                "new",
                vec![Admit(0, Admission::Allowed)],
                BreakerState::Closed,
            ),
            (
                "two failures stay closed",
                vec![
                    Record(0, FAILED),
                    Record(1, FAILED),
                    Admit(2, Admission::Allowed),
                ],
                BreakerState::Closed,
            ),
            (
                "an answer resets the count",
                vec![
                    Record(0, FAILED),
                    Record(1, FAILED),
                    Record(2, ANSWERED),
                    Record(3, FAILED),
                    Record(4, FAILED),
                    Admit(5, Admission::Allowed),
                ],
                BreakerState::Closed,
            ),
            (
                "three consecutive failures open it",
                [&open_after_three[..], &[Admit(3, Admission::Refused)]].concat(),
                BreakerState::Open,
            ),
            (
                "open refuses until its time is up",
                [&open_after_three[..], &[Admit(1001, Admission::Refused)]].concat(),
                BreakerState::Open,
            ),
            (
                "then exactly one trial",
                [
                    &open_after_three[..],
                    &[
                        Admit(1002, Admission::Trial),
                        Admit(1003, Admission::Refused),
                        Admit(5000, Admission::Refused),
                    ],
                ]
                .concat(),
                BreakerState::HalfOpen,
            ),
            (
                "a successful trial closes it",
                [
                    &open_after_three[..],
                    &[
                        Admit(1002, Admission::Trial),
                        Record(1100, TRIAL_OK),
                        Admit(1101, Admission::Allowed),
                    ],
                ]
                .concat(),
                BreakerState::Closed,
            ),
            (
                "a failed trial opens it again, for a full period",
                [
                    &open_after_three[..],
                    &[
                        Admit(1002, Admission::Trial),
                        Record(1500, TRIAL_FAILED),
                        Admit(2400, Admission::Refused),
                        Admit(2500, Admission::Trial),
                    ],
                ]
                .concat(),
                BreakerState::HalfOpen,
            ),
            (
                "a closed breaker reopened after a trial counts afresh",
                [
                    &open_after_three[..],
                    &[
                        Admit(1002, Admission::Trial),
                        Record(1100, TRIAL_OK),
                        Record(1200, FAILED),
                        Record(1300, FAILED),
                        Admit(1301, Admission::Allowed),
                    ],
                ]
                .concat(),
                BreakerState::Closed,
            ),
            (
                "an abandoned trial lets the next call try",
                [
                    &open_after_three[..],
                    &[
                        Admit(1002, Admission::Trial),
                        Record(1003, Signal::TrialAbandoned),
                        Admit(1004, Admission::Trial),
                    ],
                ]
                .concat(),
                BreakerState::HalfOpen,
            ),
            (
                "stragglers do not decide while open",
                [
                    &open_after_three[..],
                    &[Record(10, ANSWERED), Admit(11, Admission::Refused)],
                ]
                .concat(),
                BreakerState::Open,
            ),
            (
                "stragglers do not decide while half-open",
                [
                    &open_after_three[..],
                    &[
                        Admit(1002, Admission::Trial),
                        Record(1003, ANSWERED),
                        Record(1004, FAILED),
                        Admit(1005, Admission::Refused),
                    ],
                ]
                .concat(),
                BreakerState::HalfOpen,
            ),
            (
                "a failed probe opens a closed breaker at once",
                vec![Record(0, Signal::ProbeDown), Admit(1, Admission::Refused)],
                BreakerState::Open,
            ),
            (
                "a failed probe keeps it open a full period more",
                [
                    &open_after_three[..],
                    &[
                        Record(900, Signal::ProbeDown),
                        Admit(1500, Admission::Refused),
                        Admit(1900, Admission::Trial),
                    ],
                ]
                .concat(),
                BreakerState::HalfOpen,
            ),
            (
                "a good probe lets the trial happen now",
                [
                    &open_after_three[..],
                    &[Record(10, Signal::ProbeUp), Admit(11, Admission::Trial)],
                ]
                .concat(),
                BreakerState::HalfOpen,
            ),
            (
                "a good probe does not close it",
                [&open_after_three[..], &[Record(10, Signal::ProbeUp)]].concat(),
                BreakerState::Open,
            ),
            (
                "a good probe does not reset the failures of a closed breaker",
                vec![
                    Record(0, FAILED),
                    Record(1, FAILED),
                    Record(2, Signal::ProbeUp),
                    Record(3, FAILED),
                    Admit(4, Admission::Refused),
                ],
                BreakerState::Open,
            ),
            (
                "a failed probe during the trial reopens it; the trial's late answer is ignored",
                [
                    &open_after_three[..],
                    &[
                        Admit(1002, Admission::Trial),
                        Record(1003, Signal::ProbeDown),
                        Record(1004, TRIAL_OK),
                        Admit(1005, Admission::Refused),
                    ],
                ]
                .concat(),
                BreakerState::Open,
            ),
        ];
        for (name, ops, expected) in table {
            check(name, &ops, expected);
        }
    }

    #[test]
    fn a_dropped_trial_ticket_lets_the_next_call_try() {
        let breakers = Breakers::new(BreakerConfig {
            failures_to_open: 1,
            open_for: Duration::ZERO,
        });
        breakers.admit(Module::Hermes).unwrap().failed();
        assert_eq!(breakers.state(Module::Hermes), BreakerState::Open);
        let trial = breakers.admit(Module::Hermes).unwrap();
        assert!(trial.is_trial());
        assert!(
            breakers.admit(Module::Hermes).is_none(),
            "one trial at a time"
        );
        drop(trial);
        let next = breakers
            .admit(Module::Hermes)
            .expect("the next call is the trial");
        assert!(next.is_trial());
        next.answered();
        assert_eq!(breakers.state(Module::Hermes), BreakerState::Closed);
        assert_eq!(
            breakers.state(Module::Switch),
            BreakerState::Closed,
            "one breaker per module"
        );
    }
}

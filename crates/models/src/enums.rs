//! The closed vocabularies of Madre: modes, risk levels, statuses, step types
//! and the VX11 modules. All serialise exactly as SPEC §3 names them.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

use crate::ValidationError;

/// How Madre is talking to a session: general orchestration or audio work.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Mode {
    /// General orchestration of the VX11 system (the default).
    #[default]
    Madre,
    /// Audio engineering: requests go to Shub.
    AudioEngineer,
}

/// How dangerous an intent is; MED and HIGH need a human confirmation.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RiskLevel {
    /// Read-only or harmless; runs at once.
    Low,
    /// Disruptive but recoverable (restart, update); needs an operator's confirmation.
    Med,
    /// Destructive (delete, stop, migrate); needs an admin's confirmation.
    High,
}

/// What a request does to the world (SPEC §5 "Safety by effect"). Only
/// [`Effect::Read`] and [`Effect::Generate`] are known to be harmless and may
/// run as LOW; everything else waits for a human.
///
/// The variants are ordered by danger, so a message of several clauses takes
/// the [`Ord::max`] of its clauses' effects.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
#[serde(rename_all = "snake_case")]
pub enum Effect {
    /// A question, a status, a list, an explanation, plain conversation.
    Read,
    /// Text, audio or analysis made for the requester alone; nothing is
    /// changed in place or sent anywhere.
    Generate,
    /// A verb no list knows, acting on a system, data, people, money or
    /// access: it waits, because nobody can say it is harmless. The default
    /// for a DSL that does not say (a stored intent older than effects, an
    /// answer from Switch without one).
    #[default]
    Unknown,
    /// Alters a system, a setting, a permission or data.
    Change,
    /// Leaves the system: messages, uploads, payments, transfers, publishing.
    Send,
    /// Runs a command line, a database statement or code.
    Execute,
    /// Deletes, wipes or destroys.
    Destroy,
}

impl Effect {
    /// Every effect, from the least to the most dangerous.
    pub const ALL: [Effect; 7] = [
        Effect::Read,
        Effect::Generate,
        Effect::Unknown,
        Effect::Change,
        Effect::Send,
        Effect::Execute,
        Effect::Destroy,
    ];

    /// The name used in JSON and in the policy file (`read`, `send`, …).
    pub const fn as_str(self) -> &'static str {
        match self {
            Effect::Read => "read",
            Effect::Generate => "generate",
            Effect::Unknown => "unknown",
            Effect::Change => "change",
            Effect::Send => "send",
            Effect::Execute => "execute",
            Effect::Destroy => "destroy",
        }
    }

    /// The least risk a request with this effect gets: LOW only for `read`
    /// and `generate`, MED for `change`, `send` and `unknown`, HIGH for
    /// `execute` and `destroy`.
    pub const fn min_risk(self) -> RiskLevel {
        match self {
            Effect::Read | Effect::Generate => RiskLevel::Low,
            Effect::Unknown | Effect::Change | Effect::Send => RiskLevel::Med,
            Effect::Execute | Effect::Destroy => RiskLevel::High,
        }
    }
}

impl fmt::Display for Effect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Effect {
    type Err = ValidationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Effect::ALL
            .into_iter()
            .find(|e| e.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| ValidationError::new("effect", format!("unknown effect {s:?}")))
    }
}

/// The type of a plan journal event (SPEC §8): what changed. Stored and
/// served as its snake_case name.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventType {
    /// The plan was made; its first event, carrying its steps.
    PlanCreated,
    /// The plan waits (for a confirmation, or a spawner job).
    PlanWaiting,
    /// One approval of a waiting gate was recorded.
    ApprovalRecorded,
    /// The confirmation gate was passed.
    PlanConfirmed,
    /// An approver refused.
    PlanRejected,
    /// The confirmation expired.
    PlanExpired,
    /// A step's call starts.
    StepStarted,
    /// A step finished (DONE or ERROR).
    StepFinished,
    /// The plan ended (DONE, ERROR or CANCELLED).
    PlanFinished,
    /// Another replica took the plan over.
    PlanTakenOver,
}

/// Why Madre itself ended a plan or a step before its work was done,
/// stored in their `error` as these snake_case names. A module's own error
/// code (`hermes_failed`, `http_503`…) is not one of these: it stays the
/// text the module's failure was reported with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    /// The plan's deadline passed.
    Timeout,
    /// Someone cancelled it.
    Cancelled,
    /// The policy refused it.
    Denied,
    /// Its confirmation was not given in time.
    ConfirmationExpired,
    /// Its confirmation was voided after too many wrong tokens.
    ConfirmationVoid,
    /// An approver refused it (SPEC §15).
    Rejected,
}

impl From<EndReason> for String {
    fn from(reason: EndReason) -> Self {
        reason.as_str().to_owned()
    }
}

/// An action Madre carries out itself, as a plan's step addressed to the
/// `madre` module (SPEC §9).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OwnAction {
    /// Reload the policy, principals and settings, and restart the
    /// background loops.
    Restart,
    /// The same as `restart`, by its other name.
    Reload,
}

/// How the processing of an intent ended, as the intent log records it
/// when it closes the intent's row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IntentOutcome {
    /// Its plan's status when the chat answered (`DONE`, `WAITING`…).
    Plan(Status),
    /// The policy refused it outright (`denied`).
    Denied,
    /// The flow failed before it had a plan to answer with (`error`).
    Failed,
    /// Madre stopped while it was being processed; closed at the next
    /// start (`interrupted`).
    Interrupted,
}

impl IntentOutcome {
    /// The text stored in `intents_log.result_status`.
    pub const fn as_str(self) -> &'static str {
        match self {
            IntentOutcome::Plan(status) => status.as_str(),
            IntentOutcome::Denied => EndReason::Denied.as_str(),
            IntentOutcome::Failed => "error",
            IntentOutcome::Interrupted => "interrupted",
        }
    }
}

impl fmt::Display for IntentOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Lifecycle state shared by plans and steps.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Status {
    /// Created, not started yet.
    Pending,
    /// Executing now.
    Running,
    /// Paused until something outside happens (a confirmation, the spawner).
    Waiting,
    /// Finished successfully.
    Done,
    /// Finished with a failure.
    Error,
    /// Stopped before finishing (by a person, a deadline or an expiry).
    Cancelled,
}

/// What one step of a plan does.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum StepType {
    /// Probe the `/health` of the targeted modules (answered by Madre itself).
    SystemHealthcheck,
    /// Wait for a human confirmation token before the rest of the plan.
    AwaitConfirmation,
    /// Ask Switch which engine should answer.
    CallSwitch,
    /// Execute the prompt with Hermes.
    CallHermes,
    /// Hand a parallel batch to Hormiguero.
    CallHormigueroTask,
    /// Ask Manifestator for drift.
    CallManifestator,
    /// Run an audio task on Shub.
    CallShub,
    /// Send a control action to any module.
    CallModule,
    /// Queue a long-running daughter task for the spawner.
    SpawnerRequest,
    /// Do nothing (disabled module, help text).
    Noop,
}

/// A VX11 service Madre knows by name.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Module {
    /// Madre itself.
    Madre,
    /// The edge gateway.
    TentaculoLink,
    /// The engine router.
    Switch,
    /// The executor.
    Hermes,
    /// The parallel task swarm.
    Hormiguero,
    /// Drift detection.
    Manifestator,
    /// The MCP bridge.
    Mcp,
    /// Audio engine (Shub-Niggurath).
    Shub,
    /// Long-running daughter process launcher.
    Spawner,
}

macro_rules! text_names {
    ($ty:ty, $what:literal, { $($variant:path => $name:literal),+ $(,)? }) => {
        impl $ty {
            /// The canonical name, as it appears in JSON and in the database.
            pub const fn as_str(self) -> &'static str {
                match self { $($variant => $name),+ }
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $ty {
            type Err = ValidationError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($name => Ok($variant),)+
                    _ => Err(ValidationError::new($what, format!("unknown value {s:?}"))),
                }
            }
        }
    };
}

text_names!(EventType, "event type", {
    EventType::PlanCreated => "plan_created", EventType::PlanWaiting => "plan_waiting",
    EventType::ApprovalRecorded => "approval_recorded", EventType::PlanConfirmed => "plan_confirmed",
    EventType::PlanRejected => "plan_rejected", EventType::PlanExpired => "plan_expired",
    EventType::StepStarted => "step_started", EventType::StepFinished => "step_finished",
    EventType::PlanFinished => "plan_finished", EventType::PlanTakenOver => "plan_taken_over",
});
text_names!(EndReason, "end reason", {
    EndReason::Timeout => "timeout", EndReason::Cancelled => "cancelled",
    EndReason::Denied => "denied", EndReason::ConfirmationExpired => "confirmation_expired",
    EndReason::ConfirmationVoid => "confirmation_void", EndReason::Rejected => "rejected",
});
text_names!(OwnAction, "own action", { OwnAction::Restart => "restart", OwnAction::Reload => "reload" });
text_names!(Mode, "mode", { Mode::Madre => "MADRE", Mode::AudioEngineer => "AUDIO_ENGINEER" });
text_names!(RiskLevel, "risk", { RiskLevel::Low => "LOW", RiskLevel::Med => "MED", RiskLevel::High => "HIGH" });
text_names!(Status, "status", {
    Status::Pending => "PENDING", Status::Running => "RUNNING", Status::Waiting => "WAITING",
    Status::Done => "DONE", Status::Error => "ERROR", Status::Cancelled => "CANCELLED",
});
text_names!(StepType, "type", {
    StepType::SystemHealthcheck => "SYSTEM_HEALTHCHECK",
    StepType::AwaitConfirmation => "AWAIT_CONFIRMATION",
    StepType::CallSwitch => "CALL_SWITCH",
    StepType::CallHermes => "CALL_HERMES",
    StepType::CallHormigueroTask => "CALL_HORMIGUERO_TASK",
    StepType::CallManifestator => "CALL_MANIFESTATOR",
    StepType::CallShub => "CALL_SHUB",
    StepType::CallModule => "CALL_MODULE",
    StepType::SpawnerRequest => "SPAWNER_REQUEST",
    StepType::Noop => "NOOP",
});
text_names!(Module, "module", {
    Module::Madre => "madre", Module::TentaculoLink => "tentaculo_link", Module::Switch => "switch",
    Module::Hermes => "hermes", Module::Hormiguero => "hormiguero", Module::Manifestator => "manifestator",
    Module::Mcp => "mcp", Module::Shub => "shub", Module::Spawner => "spawner",
});

impl Status {
    /// True when nothing will happen to this plan or step any more.
    pub const fn is_terminal(self) -> bool {
        matches!(self, Status::Done | Status::Error | Status::Cancelled)
    }
}

impl RiskLevel {
    /// MED and HIGH need a human confirmation before anything runs.
    pub const fn requires_confirmation(self) -> bool {
        !matches!(self, RiskLevel::Low)
    }
}

impl StepType {
    /// The module this kind of step talks to, when it is fixed by the type.
    pub const fn module(self) -> Option<Module> {
        match self {
            StepType::CallSwitch => Some(Module::Switch),
            StepType::CallHermes => Some(Module::Hermes),
            StepType::CallHormigueroTask => Some(Module::Hormiguero),
            StepType::CallManifestator => Some(Module::Manifestator),
            StepType::CallShub => Some(Module::Shub),
            StepType::SpawnerRequest => Some(Module::Spawner),
            StepType::SystemHealthcheck
            | StepType::AwaitConfirmation
            | StepType::CallModule
            | StepType::Noop => None,
        }
    }
}

impl Module {
    /// Every module, Madre first.
    pub const ALL: [Module; 9] = [
        Module::Madre,
        Module::TentaculoLink,
        Module::Switch,
        Module::Hermes,
        Module::Hormiguero,
        Module::Manifestator,
        Module::Mcp,
        Module::Shub,
        Module::Spawner,
    ];

    /// The modules Madre delegates to over HTTP (every one but Madre).
    pub const REMOTE: [Module; 8] = [
        Module::TentaculoLink,
        Module::Switch,
        Module::Hermes,
        Module::Hormiguero,
        Module::Manifestator,
        Module::Mcp,
        Module::Shub,
        Module::Spawner,
    ];

    /// The default local port of the module (SPEC §2); Madre is 8001.
    pub const fn default_port(self) -> u16 {
        match self {
            Module::TentaculoLink => 8000,
            Module::Madre => 8001,
            Module::Switch => 8002,
            Module::Hermes => 8003,
            Module::Hormiguero => 8004,
            Module::Manifestator => 8005,
            Module::Mcp => 8006,
            Module::Shub => 8007,
            Module::Spawner => 8008,
        }
    }

    /// The name used in `VX11_<NAME>_URL` environment variables.
    pub fn env_name(self) -> String {
        self.as_str().to_ascii_uppercase()
    }
}

/// A set of modules (e.g. the enabled ones), copied by value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ModuleSet(u16);

impl ModuleSet {
    const fn bit(module: Module) -> u16 {
        1 << (module as u16)
    }

    /// The empty set.
    pub const fn empty() -> Self {
        Self(0)
    }

    /// Every module.
    pub fn all() -> Self {
        Module::ALL.into_iter().collect()
    }

    /// True when `module` is in the set.
    pub const fn contains(self, module: Module) -> bool {
        self.0 & Self::bit(module) != 0
    }

    /// The set with `module` added.
    pub const fn with(self, module: Module) -> Self {
        Self(self.0 | Self::bit(module))
    }

    /// The set with `module` removed.
    pub const fn without(self, module: Module) -> Self {
        Self(self.0 & !Self::bit(module))
    }

    /// The members, in the order of [`Module::ALL`].
    pub fn iter(self) -> impl Iterator<Item = Module> {
        Module::ALL.into_iter().filter(move |m| self.contains(*m))
    }
}

impl FromIterator<Module> for ModuleSet {
    fn from_iter<I: IntoIterator<Item = Module>>(iter: I) -> Self {
        iter.into_iter().fold(Self::empty(), Self::with)
    }
}

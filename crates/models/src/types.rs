//! The data Madre reasons about (DSL, intent, plan, step) and the request and
//! response bodies of its HTTP API. Field names are the JSON names of SPEC §3.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::fmt;
use uuid::Uuid;

use crate::validate::{MAX_TASK_NAME_CHARS, Message, SessionId, ValidationError, Word};
use crate::{Effect, EventType, Mode, Module, RiskLevel, Status, StepType};

/// Writes `<redacted>` in place of a secret in `Debug` output.
struct Redacted<'a>(&'a Option<String>);

impl fmt::Debug for Redacted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(_) => f.write_str("Some(<redacted>)"),
            None => f.write_str("None"),
        }
    }
}

/// What a piece of text asks for, in Madre's small domain language.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Dsl {
    /// `system`, `audio` or `general`.
    pub domain: String,
    /// The action family (`delete`, `restart`, `status`, `chat`, …).
    pub action: String,
    /// Extracted parameters (`key=value` pairs, counted nouns, flags, the message).
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub parameters: Map<String, Value>,
    /// VX11 modules the text mentions.
    pub targets: Vec<Module>,
    /// How sure the parser is (0.9 destructive, 0.3 other fallback parses).
    pub confidence: f32,
    /// The text the DSL came from.
    pub original_text: String,
    /// Machine-readable remarks (`destructive_intent_detected`, …).
    pub warnings: Vec<String>,
    /// Who produced it: the offline fallback parser, or Switch (SPEC §4a).
    #[serde(default)]
    pub source: DslSource,
    /// What the request does (SPEC §5 "Safety by effect"): only `read` and
    /// `generate` may be LOW. `unknown` when the producer did not say.
    #[serde(default)]
    pub effect: Effect,
}

/// Who produced a [`Dsl`] (SPEC §4a).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DslSource {
    /// Madre's offline fallback parser.
    #[default]
    Fallback,
    /// The intent Switch answered at intake.
    Switch,
}

impl Dsl {
    /// True when `parameters[name]` is the boolean `true`.
    pub fn flag(&self, name: &str) -> bool {
        self.parameters.get(name) == Some(&Value::Bool(true))
    }
}

/// A classified request: the DSL plus its risk, bound to a session.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Intent {
    /// Unique id of this intent.
    pub intent_id: Uuid,
    /// The conversation it belongs to.
    pub session_id: SessionId,
    /// The mode the session was in when the intent was made.
    pub mode: Mode,
    /// What was asked.
    pub dsl: Dsl,
    /// The highest risk among its targets.
    pub risk: RiskLevel,
    /// True for MED and HIGH.
    pub requires_confirmation: bool,
    /// The modules it touches (copied from the DSL, or given by the caller).
    pub targets: Vec<Module>,
    /// When Madre received it.
    pub created_at: DateTime<Utc>,
    /// The other reading of the text, when there was one (Switch's intent
    /// when the fallback's was used, or the other way round), so an audit
    /// shows what each said.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub alternatives: Vec<Dsl>,
}

/// One unit of work in a plan.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Step {
    /// Unique id; also the `Idempotency-Key` sent when the step is retried.
    pub step_id: Uuid,
    /// What the step does.
    #[serde(rename = "type")]
    pub step_type: StepType,
    /// The step's input (request body, targets, …).
    pub payload: Value,
    /// A blocking step must finish before anything after it starts.
    pub blocking: bool,
    /// An optional step's failure is only a warning.
    pub optional: bool,
    /// Where the step is in its lifecycle.
    pub status: Status,
    /// How many times it was started.
    pub attempts: u32,
    /// The module's answer, when it succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    /// Why it failed, when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// When the step was created.
    pub created_at: DateTime<Utc>,
    /// When the step last changed.
    pub updated_at: DateTime<Utc>,
}

impl Step {
    /// The id the planner gives step `index` of plan `plan_id`: the plan's
    /// id with `index + 1` added to its 62 random bits (its time, version
    /// and variant unchanged). Unique within the plan, as unlikely to meet
    /// another plan's as any two random ids, and derivable, so storage need
    /// not keep it (issue 25).
    pub fn id_in_plan(plan_id: Uuid, index: usize) -> Uuid {
        const RANDOM: u128 = (1 << 62) - 1;
        let id = plan_id.as_u128();
        let random = (id & RANDOM).wrapping_add(index as u128 + 1) & RANDOM;
        Uuid::from_u128((id & !RANDOM) | random)
    }

    /// A new PENDING step that was never attempted.
    pub fn new(step_id: Uuid, step_type: StepType, payload: Value, now: DateTime<Utc>) -> Self {
        Self {
            step_id,
            step_type,
            payload,
            blocking: true,
            optional: false,
            status: Status::Pending,
            attempts: 0,
            result: None,
            error: None,
            created_at: now,
            updated_at: now,
        }
    }

    /// The module this step talks to: fixed by its type, or named in the
    /// payload's `module` field (CALL_MODULE, NOOP); Madre otherwise.
    pub fn module(&self) -> Module {
        self.step_type
            .module()
            .or_else(|| {
                self.payload
                    .get("module")
                    .and_then(Value::as_str)
                    .and_then(|m| m.parse().ok())
            })
            .unwrap_or(Module::Madre)
    }
}

/// An ordered list of steps carrying out one intent.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    /// Unique id of the plan.
    pub plan_id: Uuid,
    /// The intent it carries out.
    pub intent_id: Uuid,
    /// The conversation it belongs to.
    pub session_id: SessionId,
    /// Overall state.
    pub status: Status,
    /// Mode the plan was made in.
    pub mode: Mode,
    /// Steps in execution order.
    pub steps: Vec<Step>,
    /// Remarks gathered while planning and running (`hermes_disabled`, …).
    #[serde(default)]
    pub warnings: Vec<String>,
    /// Machine-readable reason the plan ended ERROR or CANCELLED (`timeout`, `denied`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// When the plan was made.
    pub created_at: DateTime<Utc>,
    /// When the plan last changed.
    pub updated_at: DateTime<Utc>,
}

/// One executed step, as reported to the caller of `/madre/chat`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActionSummary {
    /// The step's id.
    pub step_id: Uuid,
    /// The step's type.
    #[serde(rename = "type")]
    pub step_type: StepType,
    /// The module it talked to.
    pub module: Module,
    /// Its final status.
    pub status: Status,
    /// The module's answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl From<&Step> for ActionSummary {
    fn from(step: &Step) -> Self {
        Self {
            step_id: step.step_id,
            step_type: step.step_type,
            module: step.module(),
            status: step.status,
            result: step.result.clone(),
            error: step.error.clone(),
        }
    }
}

/// Body of `POST /madre/chat`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChatRequest {
    /// What the person wrote (1..=8000 characters, not blank).
    #[cfg_attr(
        feature = "openapi",
        schema(
            min_length = 1,
            max_length = 8000,
            pattern = "[^\\t\\n\\u000b\\f\\r \\u0085\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000]"
        )
    )]
    pub message: String,
    /// Conversation to continue; a new one is created when absent.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(pattern = "^[A-Za-z0-9._:-]{1,128}$"))]
    pub session_id: Option<String>,
    /// Free-form context; `context.mode` ("MADRE"/"AUDIO_ENGINEER") forces the mode.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<crate::openapi::ChatContext>))]
    pub context: Option<Map<String, Value>>,
}

impl fmt::Debug for ChatRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChatRequest")
            .field("message_chars", &self.message.chars().count())
            .field("session_id", &self.session_id)
            .finish_non_exhaustive()
    }
}

/// A chat request whose fields passed every rule.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatCommand {
    /// The message.
    pub message: Message,
    /// The session to continue, when one was named.
    pub session_id: Option<SessionId>,
    /// The mode forced by `context.mode`, when given.
    pub mode: Option<Mode>,
}

impl ChatRequest {
    /// Checks every field; the error names the first field that is wrong.
    pub fn validate(self) -> Result<ChatCommand, ValidationError> {
        validate_chat(
            "message",
            self.message,
            self.session_id,
            self.context.as_ref(),
        )
    }
}

fn validate_chat(
    message_field: &'static str,
    message: String,
    session_id: Option<String>,
    context: Option<&Map<String, Value>>,
) -> Result<ChatCommand, ValidationError> {
    let message = Message::parse(message_field, message)?;
    let session_id = session_id.map(SessionId::parse).transpose()?;
    let mode = match context.and_then(|c| c.get("mode")) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.parse::<Mode>().map_err(|_| {
            ValidationError::new("context.mode", "must be \"MADRE\" or \"AUDIO_ENGINEER\"")
        })?),
        Some(_) => {
            return Err(ValidationError::new(
                "context.mode",
                "must be \"MADRE\" or \"AUDIO_ENGINEER\"",
            ));
        }
    };
    Ok(ChatCommand {
        message,
        session_id,
        mode,
    })
}

/// Answer of `POST /madre/chat`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatResponse {
    /// Text to show the person.
    pub response: String,
    /// The conversation (new or continued).
    pub session_id: SessionId,
    /// The logged intent.
    pub intent_id: Uuid,
    /// The plan made for it.
    pub plan_id: Uuid,
    /// DONE, WAITING (confirmation needed), ERROR (failed, timed out, denied) or RUNNING.
    pub status: Status,
    /// The session's mode after this message.
    pub mode: Mode,
    /// The intent's risk.
    pub risk: RiskLevel,
    /// Remarks (`destructive_intent_detected`, `switch_unavailable`, `denied`, …).
    pub warnings: Vec<String>,
    /// Modules the intent touches.
    pub targets: Vec<Module>,
    /// The executed steps.
    pub actions: Vec<ActionSummary>,
    /// Token to confirm the plan; only while it waits for a confirmation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confirm_token: Option<String>,
    /// When that token expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confirm_expires_at: Option<DateTime<Utc>>,
}

impl fmt::Debug for ChatResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChatResponse")
            .field("session_id", &self.session_id)
            .field("intent_id", &self.intent_id)
            .field("plan_id", &self.plan_id)
            .field("status", &self.status)
            .field("risk", &self.risk)
            .field("warnings", &self.warnings)
            .field("confirm_token", &Redacted(&self.confirm_token))
            .finish_non_exhaustive()
    }
}

/// Body of `POST /madre/control`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlRequest {
    /// The module to act on (`madre` for Madre itself).
    #[cfg_attr(feature = "openapi", schema(value_type = Module))]
    pub target: String,
    /// What to do to it (a lower-case word).
    #[cfg_attr(feature = "openapi", schema(pattern = "^[A-Za-z0-9_-]{1,64}$"))]
    pub action: String,
    /// Extra parameters passed to the module.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub params: Option<Value>,
    /// The token of an earlier `pending_confirmation` answer.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(min_length = 1, max_length = 256))]
    pub confirm_token: Option<String>,
}

impl fmt::Debug for ControlRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ControlRequest")
            .field("target", &self.target)
            .field("action", &self.action)
            .field("params", &self.params)
            .field("confirm_token", &Redacted(&self.confirm_token))
            .finish()
    }
}

/// A control request whose fields passed every rule.
#[derive(Clone, PartialEq)]
pub struct ControlCommand {
    /// The target word, lower-cased.
    pub target: Word,
    /// The action word, lower-cased.
    pub action: Word,
    /// Parameters (an object; `{}` when none were given).
    pub params: Value,
    /// The presented confirmation token, if any.
    pub confirm_token: Option<String>,
}

impl fmt::Debug for ControlCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ControlCommand")
            .field("target", &self.target)
            .field("action", &self.action)
            .field("confirm_token", &Redacted(&self.confirm_token))
            .finish_non_exhaustive()
    }
}

impl ControlRequest {
    /// Checks every field; the error names the first field that is wrong.
    pub fn validate(self) -> Result<ControlCommand, ValidationError> {
        let target = Word::parse("target", &self.target)?;
        let action = Word::parse("action", &self.action)?;
        let params = object_or_empty("params", self.params)?;
        let confirm_token = match self.confirm_token {
            Some(t) if t.is_empty() || t.len() > 256 => {
                return Err(ValidationError::new(
                    "confirm_token",
                    "must be 1..=256 characters",
                ));
            }
            other => other,
        };
        Ok(ControlCommand {
            target,
            action,
            params,
            confirm_token,
        })
    }
}

fn object_or_empty(field: &'static str, value: Option<Value>) -> Result<Value, ValidationError> {
    match value {
        None | Some(Value::Null) => Ok(Value::Object(Map::new())),
        Some(v @ Value::Object(_)) => Ok(v),
        Some(_) => Err(ValidationError::new(field, "must be a JSON object")),
    }
}

/// Whether a control request ran, waits for a confirmation, or was refused.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ControlStatus {
    /// Executed (or executing).
    Accepted,
    /// Needs the returned confirmation token.
    PendingConfirmation,
    /// Refused by the deny rule; nothing was called.
    Denied,
}

/// Answer of `POST /madre/control`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct ControlResponse {
    /// The outcome.
    pub status: ControlStatus,
    /// Id of the audit action recorded for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action_id: Option<i64>,
    /// Token to confirm, when pending.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confirm_token: Option<String>,
    /// When that token expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confirm_expires_at: Option<DateTime<Utc>>,
    /// Why it was denied or what happened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The plan carrying out the action.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan_id: Option<Uuid>,
    /// The module's answer, when it ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
}

impl fmt::Debug for ControlResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ControlResponse")
            .field("status", &self.status)
            .field("plan_id", &self.plan_id)
            .field("reason", &self.reason)
            .field("confirm_token", &Redacted(&self.confirm_token))
            .finish_non_exhaustive()
    }
}

/// Body of the v6 `POST /task`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskRequest {
    /// A human name for the task (1..=200 characters, not blank).
    #[cfg_attr(
        feature = "openapi",
        schema(
            min_length = 1,
            max_length = 200,
            pattern = "[^\\t\\n\\u000b\\f\\r \\u0085\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000]"
        )
    )]
    pub name: String,
    /// The module to call (any but Madre itself).
    #[cfg_attr(feature = "openapi", schema(value_type = crate::openapi::RemoteModule))]
    pub module: String,
    /// The action to ask of it (a lower-case word).
    #[cfg_attr(feature = "openapi", schema(pattern = "^[A-Za-z0-9_-]{1,64}$"))]
    pub action: String,
    /// Parameters for the module.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub payload: Option<Value>,
}

/// A v6 task request whose fields passed every rule.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskCommand {
    /// The task name (1..=200 characters, not blank).
    pub name: String,
    /// The module to call (a remote VX11 module).
    pub module: Module,
    /// The action word.
    pub action: Word,
    /// Parameters (an object).
    pub payload: Value,
}

impl TaskRequest {
    /// Checks every field; the error names the first field that is wrong.
    pub fn validate(self) -> Result<TaskCommand, ValidationError> {
        let name = self.name;
        if crate::validate::is_blank(&name) || name.chars().count() > MAX_TASK_NAME_CHARS {
            return Err(ValidationError::new(
                "name",
                format!("must be 1..={MAX_TASK_NAME_CHARS} characters and not blank"),
            ));
        }
        let module: Module = self
            .module
            .to_ascii_lowercase()
            .parse()
            .ok()
            .filter(|m| *m != Module::Madre)
            .ok_or_else(|| {
                ValidationError::new("module", "must name a VX11 module Madre delegates to")
            })?;
        let action = Word::parse("action", &self.action)?;
        let payload = object_or_empty("payload", self.payload)?;
        Ok(TaskCommand {
            name,
            module,
            action,
            payload,
        })
    }
}

/// Answer of the v6 `POST /task` (HTTP 202).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskAccepted {
    /// Id to poll with `GET /tasks/{id}`.
    pub task_id: Uuid,
    /// Its status now.
    pub status: Status,
    /// The action's risk.
    pub risk: RiskLevel,
    /// Token to confirm a MED/HIGH task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confirm_token: Option<String>,
}

impl fmt::Debug for TaskAccepted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskAccepted")
            .field("task_id", &self.task_id)
            .field("status", &self.status)
            .field("risk", &self.risk)
            .field("confirm_token", &Redacted(&self.confirm_token))
            .finish()
    }
}

/// Overall health of Madre.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthStatus {
    /// The database takes writes and every enabled module answers.
    Ok,
    /// Madre answers, but its database does not take writes at the moment, or
    /// some enabled module does not answer.
    Degraded,
}

/// What the last probe saw of a module.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DepState {
    /// Answered 200 to `/health`.
    Up,
    /// Did not answer, or not with 200.
    Down,
    /// Turned off by configuration.
    Disabled,
    /// Not probed yet.
    Unknown,
}

/// The state of Madre's circuit breaker for one module (SPEC §7): `closed`
/// lets calls through; `open` fails them at once with
/// `<module>_unavailable` after consecutive failures; `half_open` lets one
/// trial call through, whose outcome closes or reopens it.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    /// Calls go through.
    Closed,
    /// Calls fail at once, without reaching the module.
    Open,
    /// One trial call is under way; the others fail at once.
    HalfOpen,
}

impl BreakerState {
    /// Every state, in the order `/metrics` lists them.
    pub const ALL: [BreakerState; 3] = [
        BreakerState::Closed,
        BreakerState::Open,
        BreakerState::HalfOpen,
    ];

    /// The snake_case name used in JSON and in `/metrics`.
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
}

/// The database's state in an answer of a server that did not report it.
fn db_not_reported() -> DepState {
    DepState::Unknown
}

/// Answer of `GET /health`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HealthResponse {
    /// Always `madre`.
    pub module: String,
    /// ok or degraded.
    pub status: HealthStatus,
    /// Madre's version.
    pub version: String,
    /// The time of the answer.
    pub time: DateTime<Utc>,
    /// The last probe of each module.
    #[cfg_attr(feature = "openapi", schema(value_type = BTreeMap<String, DepState>))]
    pub deps: BTreeMap<Module, DepState>,
    /// Madre's own database: `up` when it took the last write (or the
    /// background check), `down` while it refuses writes (full, read-only,
    /// locked, failing). Absent from answers of older servers (`unknown`).
    #[serde(default = "db_not_reported")]
    pub db: DepState,
    /// The circuit breaker of each enabled module. Absent from answers of
    /// older servers (empty).
    #[cfg_attr(feature = "openapi", schema(value_type = BTreeMap<String, BreakerState>))]
    #[serde(default)]
    pub breakers: BTreeMap<Module, BreakerState>,
    /// What an operator should look at soon though nothing fails yet
    /// (`disk_nearly_full: …`). Absent when there is nothing.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// One line of `GET /madre/plans`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanSummary {
    /// The plan.
    pub plan_id: Uuid,
    /// Its intent, for chat plans.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub intent_id: Option<Uuid>,
    /// Its session, for chat plans.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    /// A short name (`chat`, the task name, `control:shub:restart`).
    pub name: String,
    /// Module it mainly addresses.
    pub module: String,
    /// Action it carries out.
    pub action: String,
    /// Its state.
    pub status: Status,
    /// Its risk (plans made before Madre recorded it have none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub risk: Option<RiskLevel>,
    /// Why it failed, when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// When it was made.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
}

/// A page of plans, newest first.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanPage {
    /// The plans of this page.
    pub plans: Vec<PlanSummary>,
    /// Pass back as `cursor` for the next page; null on the last page.
    pub next_cursor: Option<String>,
}

/// A row of the append-only audit trail (`madre_actions`).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditAction {
    /// Row id.
    pub id: i64,
    /// The module acted on.
    pub module: String,
    /// What was done.
    pub action: String,
    /// Why (or the outcome).
    pub reason: String,
    /// Who asked.
    pub principal: String,
    /// The plan it belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan_id: Option<Uuid>,
    /// When it was recorded.
    pub created_at: DateTime<Utc>,
}

/// Answer of `GET /madre/plans/{id}`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanDetail {
    /// The plan with its steps.
    pub plan: Plan,
    /// The intent it carries out, for chat plans.
    pub intent: Option<Intent>,
    /// The audit rows of this plan, oldest first.
    pub actions: Vec<AuditAction>,
    /// The plan's journal: every change of its state, in order (SPEC §8).
    #[serde(default)]
    pub events: Vec<JournalEvent>,
    /// For a plan with a confirmation gate: the hex SHA-256 of what it
    /// does once approved (SPEC §15), which an approval may name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    /// For a plan that waited for approval: where its approval stands.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<ApprovalState>,
}

/// Where a plan's approval stands (SPEC §15).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApprovalState {
    /// Distinct principals who approved so far.
    pub approvals: u32,
    /// Approvals its risk requires.
    pub required: u32,
    /// Who approved, in order.
    pub approvers: Vec<String>,
    /// Who asked for the plan.
    pub requested_by: String,
    /// When the confirmation expires (or expired).
    pub expires_at: DateTime<Utc>,
}

/// One event of the plan journal (SPEC §8, §14): a change of a plan's or a
/// step's state, numbered by `seq`, which only grows.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JournalEvent {
    /// Position in the journal; later events have higher numbers.
    pub seq: i64,
    /// The plan.
    pub plan_id: Uuid,
    /// The plan's session.
    pub session_id: Option<String>,
    /// `plan_created`, `plan_waiting`, `approval_recorded`, `plan_confirmed`,
    /// `plan_rejected`, `plan_expired`, `step_started`, `step_finished`,
    /// `plan_finished` or `plan_taken_over`.
    #[serde(rename = "type")]
    pub event_type: EventType,
    /// The step, for step events.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step_id: Option<Uuid>,
    /// The step's type, for step events.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step_type: Option<StepType>,
    /// The status the event leads to (the step's for step events, else the plan's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
    /// Who caused it, when a person did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub principal: Option<String>,
    /// Why, for endings and failures (`timeout`, `cancelled`, `confirmation_expired`…).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The replica that wrote it.
    pub replica: String,
    /// When.
    pub at: DateTime<Utc>,
}

/// Body of `POST /madre/plans/{id}/confirm` (an approval) and of
/// `POST /madre/plans/{id}/reject`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfirmRequest {
    /// The token returned with the WAITING answer.
    #[cfg_attr(feature = "openapi", schema(min_length = 1, max_length = 256))]
    pub confirm_token: String,
    /// Why the approver decides so: kept in the journal and the audit
    /// trail; required when the risk's rule says `reason_required`, and for
    /// every rejection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(max_length = 2000))]
    pub reason: Option<String>,
    /// The plan's `fingerprint` as the approver saw it: when given and the
    /// plan does not match it, nothing is approved (409).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(max_length = 64))]
    pub fingerprint: Option<String>,
}

impl fmt::Debug for ConfirmRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConfirmRequest")
            .field("confirm_token", &"<redacted>")
            .field("reason", &self.reason)
            .field("fingerprint", &self.fingerprint)
            .finish()
    }
}

/// Answer of an approval (`POST /madre/plans/{id}/confirm`).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConfirmResponse {
    /// `confirmed` when this approval was the last one needed and the plan
    /// ran; `approved` when it was recorded and more are needed.
    pub status: String,
    /// Distinct approvals so far.
    pub approvals: u32,
    /// Approvals the plan's risk requires.
    pub required: u32,
    /// The plan.
    pub plan_id: Uuid,
    /// Its status now: after running (RUNNING when it outlived the
    /// request), or WAITING for more approvals.
    pub plan_status: Status,
}

/// Answer of `POST /madre/plans/{id}/cancel` and `POST /tasks/{id}/cancel`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CancelResponse {
    /// The plan.
    pub plan_id: Uuid,
    /// Its status now (CANCELLED).
    pub plan_status: Status,
}

/// Body of the v6 `POST /chat`: `user_message` or `message`.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChatV6Request {
    /// The message (v6 name; `message` is accepted in its place).
    #[serde(default)]
    pub user_message: Option<String>,
    /// The message under its v7 name, used when `user_message` is absent.
    #[serde(default)]
    pub message: Option<String>,
    /// Conversation to continue.
    #[serde(default)]
    pub session_id: Option<String>,
    /// Free-form context, as in v7.
    #[serde(default)]
    pub context: Option<Map<String, Value>>,
}

impl fmt::Debug for ChatV6Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChatV6Request")
            .field("session_id", &self.session_id)
            .finish_non_exhaustive()
    }
}

impl ChatV6Request {
    /// Checks every field; either message name is accepted, `user_message` first.
    pub fn validate(self) -> Result<ChatCommand, ValidationError> {
        if let (Some(_), Some(alias)) = (&self.user_message, &self.message) {
            // Both given: both must be valid, as the published schema says.
            Message::parse("message", alias.clone())?;
        }
        let text = self
            .user_message
            .or(self.message)
            .ok_or_else(|| ValidationError::new("user_message", "is required (or `message`)"))?;
        validate_chat("user_message", text, self.session_id, self.context.as_ref())
    }
}

/// One delegated action in a v6 chat answer.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActionTaken {
    /// The module called.
    pub module: String,
    /// The step type.
    pub action: String,
    /// Its answer, or its error.
    pub result: Value,
}

/// `ok`, `error` or `pending_confirmation` in v6 chat answers.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum V6Status {
    /// Done.
    Ok,
    /// Failed, timed out or denied.
    Error,
    /// Nothing ran yet: the plan waits for a human confirmation with the
    /// answer's `confirm_token` (the word the v6 `/control` answers with).
    PendingConfirmation,
}

/// Answer of the v6 `POST /chat`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatV6Response {
    /// The conversation.
    pub session_id: SessionId,
    /// Text to show the person.
    pub response: String,
    /// The plan (v6 called it a task).
    pub task_id: Uuid,
    /// What was delegated.
    pub actions_taken: Vec<ActionTaken>,
    /// ok, error, or pending_confirmation (with `confirm_token`).
    pub status: V6Status,
    /// Time of the answer.
    pub timestamp: DateTime<Utc>,
    /// Token to confirm the plan `task_id` at
    /// `POST /madre/plans/{task_id}/confirm`; only while it waits for one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confirm_token: Option<String>,
    /// When that token expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confirm_expires_at: Option<DateTime<Utc>>,
}

impl fmt::Debug for ChatV6Response {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChatV6Response")
            .field("session_id", &self.session_id)
            .field("task_id", &self.task_id)
            .field("status", &self.status)
            .field("timestamp", &self.timestamp)
            .field("confirm_token", &Redacted(&self.confirm_token))
            .finish_non_exhaustive()
    }
}

/// A v6 task as returned by `GET /tasks/{id}`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskView {
    /// The task (plan) id.
    pub task_id: Uuid,
    /// Its name.
    pub name: String,
    /// The module it calls.
    pub module: String,
    /// The action.
    pub action: String,
    /// Its state.
    pub status: Status,
    /// The module's answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// When it was made.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
}

/// A page of v6 tasks, newest first.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskPage {
    /// The tasks of this page.
    pub tasks: Vec<TaskView>,
    /// Pass back as `cursor` for the next page; null on the last page.
    pub next_cursor: Option<String>,
}

/// Body of the v6 `POST /control` (Madre's own control).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SelfControlRequest {
    /// `status` (viewer) or `restart` (admin, MED risk: answered
    /// `pending_confirmation` with a token; re-posted with the token, it
    /// reloads the policy, principals and settings and restarts the
    /// background loops).
    #[cfg_attr(feature = "openapi", schema(pattern = "^(status|restart)$"))]
    pub action: String,
    /// The token a `pending_confirmation` answer gave, to confirm a restart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confirm_token: Option<String>,
}

impl fmt::Debug for SelfControlRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SelfControlRequest")
            .field("action", &self.action)
            .field(
                "confirm_token",
                &self.confirm_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// The JSON error shape of every failed request (SPEC §9).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Machine-readable code (`unauthorized`, `invalid_field`, …).
    pub error: String,
    /// Human sentence.
    pub detail: String,
    /// The request's id, also in the `X-Request-Id` header.
    pub request_id: String,
}

#[cfg(test)]
mod step_id_tests {
    use super::*;

    #[test]
    fn a_step_id_in_a_plan_is_a_distinct_v7_id_of_the_plan_s_time() {
        let plan = Uuid::now_v7();
        let ids: Vec<Uuid> = (0..4).map(|i| Step::id_in_plan(plan, i)).collect();
        for id in &ids {
            assert_eq!(id.get_version_num(), 7);
            assert_eq!(id.get_variant(), uuid::Variant::RFC4122);
            assert_eq!(id.get_timestamp(), plan.get_timestamp());
            assert_ne!(*id, plan);
        }
        let distinct: std::collections::HashSet<_> = ids.iter().collect();
        assert_eq!(distinct.len(), 4);
        // The random bits wrap within themselves.
        let top = Uuid::from_u128(plan.as_u128() | ((1 << 62) - 1));
        let wrapped = Step::id_in_plan(top, 0);
        assert_eq!(wrapped.get_version_num(), 7);
        assert_eq!(wrapped.get_variant(), uuid::Variant::RFC4122);
        assert_eq!(wrapped.as_u128() & ((1 << 62) - 1), 0);
    }
}

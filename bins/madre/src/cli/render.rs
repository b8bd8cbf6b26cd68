//! The human output: pure functions from the JSON the server answered (and
//! the time now) to the text to print. No I/O here, so every rendering is a
//! snapshot test on fixed JSON.
//!
//! Each answer is read through a small view that names only the fields shown
//! and defaults the rest, so a server that adds fields (a plan's `events`, a
//! `db` entry in `/health`) or a slightly older one still renders. An answer
//! that does not fit its view at all is printed as JSON rather than lost.

use chrono::{DateTime, SecondsFormat, Utc};
use comfy_table::{Table, presets};
use madre_models::{Module, StepType};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::collections::HashMap;
use std::fmt::Write as _;
use uuid::Uuid;

use super::style::{self, Paint, Tone};

/// What every rendering needs besides the answer itself.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Context {
    /// The time of the answer, for ages and expiries.
    pub(crate) now: DateTime<Utc>,
    /// Whether to colour.
    pub(crate) paint: Paint,
}

/// The JSON as the API sent it, pretty-printed (what `--json` prints).
pub(crate) fn json(value: &Value) -> String {
    serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
}

/// The last 8 characters of a plan id, enough to tell plans apart in a
/// table. The end, not the start: ids are time-ordered (UUID v7), so plans
/// made in the same minute share their first characters but never their
/// random tail.
pub(crate) fn short_id(id: &str) -> &str {
    id.len()
        .checked_sub(8)
        .and_then(|start| id.get(start..))
        .unwrap_or(id)
}

/// The answer read as `T`, or `None` when it does not have that shape.
/// Every string in it is made safe for a terminal first (see [`clean`]), so
/// nothing the server relays can move the cursor or recolour the screen.
fn view<T: DeserializeOwned>(value: &Value) -> Option<T> {
    T::deserialize(clean(value)).ok()
}

/// `value` with the control characters of its strings and keys (escape
/// sequences above all) replaced by U+FFFD; line breaks and tabs stay.
fn clean(value: &Value) -> Value {
    let clean_str = |s: &str| -> String {
        s.chars()
            .map(|c| {
                if c.is_control() && c != '\n' && c != '\t' {
                    '\u{FFFD}'
                } else {
                    c
                }
            })
            .collect()
    };
    match value {
        Value::String(s) => Value::String(clean_str(s)),
        Value::Array(items) => items.iter().map(clean).collect(),
        Value::Object(fields) => fields
            .iter()
            .map(|(k, v)| (clean_str(k), clean(v)))
            .collect(),
        other => other.clone(),
    }
}

/// `madre chat`: the answer text, then one status line.
pub(crate) fn chat(value: &Value, cx: &Context) -> String {
    #[derive(Deserialize)]
    struct Chat {
        #[serde(default)]
        response: String,
        session_id: Option<String>,
        plan_id: String,
        status: String,
        risk: Option<String>,
        #[serde(default)]
        warnings: Vec<String>,
        confirm_token: Option<String>,
        confirm_expires_at: Option<DateTime<Utc>>,
    }
    let Some(chat) = view::<Chat>(value) else {
        return json(value);
    };
    let paint = cx.paint;
    let mut parts = vec![paint.paint(Tone::of_status(&chat.status), &chat.status)];
    if let Some(risk) = &chat.risk {
        parts.push(format!("risk {}", paint.paint(Tone::of_risk(risk), risk)));
    }
    parts.push(format!("plan {}", one_line(short_id(&chat.plan_id))));
    if let Some(session) = &chat.session_id {
        parts.push(format!("session {}", one_line(session)));
    }
    if !chat.warnings.is_empty() {
        parts.push(format!("warnings {}", one_line(&chat.warnings.join(", "))));
    }
    if chat.status == "WAITING"
        && let Some(token) = &chat.confirm_token
    {
        let within = chat
            .confirm_expires_at
            .map(|at| {
                format!(
                    " within {}",
                    duration((at - cx.now).num_seconds().max(0) * 1000)
                )
            })
            .unwrap_or_default();
        parts.push(format!(
            "confirm{within}: madre confirm {} {}",
            shell_word(&chat.plan_id),
            shell_word(token)
        ));
    }
    let status_line = parts.join(" · ");
    let answer = &chat.response;
    if answer.trim().is_empty() {
        status_line
    } else {
        format!("{}\n{status_line}", answer.trim_end())
    }
}

#[derive(Deserialize)]
struct Summary {
    plan_id: String,
    session_id: Option<String>,
    #[serde(default)]
    name: String,
    #[serde(default)]
    module: String,
    #[serde(default)]
    action: String,
    status: String,
    risk: Option<String>,
    error: Option<String>,
    created_at: Option<DateTime<Utc>>,
}

impl Summary {
    /// The task or control name; chat plans are named like control plans,
    /// `chat:<module>:<action>`, so the table says what each one did.
    fn what(&self) -> String {
        if self.name == "chat" && !self.action.is_empty() {
            format!("chat:{}:{}", self.module, self.action)
        } else {
            self.name.clone()
        }
    }
}

/// `madre plans`: a table, newest first, and how to get the next page.
pub(crate) fn plans(value: &Value, cx: &Context) -> String {
    #[derive(Deserialize)]
    struct Page {
        plans: Vec<Summary>,
        next_cursor: Option<String>,
    }
    let Some(page) = view::<Page>(value) else {
        return json(value);
    };
    let mut out = if page.plans.is_empty() {
        "no plans".to_owned()
    } else {
        // Older servers' summaries carry no risk: then the column goes.
        let with_risk = page.plans.iter().any(|p| p.risk.is_some());
        let rows = page.plans.iter().map(|p| {
            let status = match &p.error {
                Some(error) if !error.eq_ignore_ascii_case(&p.status) => {
                    format!("{} ({})", p.status, clip(error, 30))
                }
                _ => p.status.clone(),
            };
            let mut row = vec![
                (Tone::Plain, short_id(&p.plan_id).to_owned()),
                (Tone::of_status(&p.status), status),
            ];
            if with_risk {
                let risk = p.risk.as_deref().unwrap_or("-");
                row.push((Tone::of_risk(risk), risk.to_owned()));
            }
            row.extend([
                (Tone::Plain, clip(&p.what(), 40)),
                (Tone::Plain, session(p.session_id.as_deref())),
                (Tone::Plain, age(p.created_at, cx.now)),
            ]);
            row
        });
        let header: &[&str] = if with_risk {
            &["PLAN", "STATUS", "RISK", "ACTION", "SESSION", "AGE"]
        } else {
            &["PLAN", "STATUS", "ACTION", "SESSION", "AGE"]
        };
        table(cx.paint, header, rows)
    };
    if let Some(cursor) = page.next_cursor {
        let _ = write!(
            out,
            "\nmore plans: add --all, or --cursor {}",
            shell_word(&cursor)
        );
    }
    out
}

/// A session for a table: generated ones (UUIDs) as short as plan ids,
/// names people gave clipped.
fn session(id: Option<&str>) -> String {
    match id {
        None => "-".to_owned(),
        Some(id) if Uuid::parse_str(id).is_ok() => short_id(id).to_owned(),
        Some(id) => clip(id, 24),
    }
}

/// `madre plan ID`: the header, the steps, the audit trail and, when the
/// server sends it, the plan's journal.
pub(crate) fn plan(value: &Value, cx: &Context) -> String {
    #[derive(Deserialize)]
    struct Detail {
        plan: Plan,
        intent: Option<Intent>,
        #[serde(default)]
        actions: Vec<Audit>,
        #[serde(default)]
        events: Vec<Event>,
    }
    #[derive(Deserialize)]
    struct Plan {
        plan_id: String,
        session_id: Option<String>,
        status: String,
        mode: Option<String>,
        #[serde(default)]
        steps: Vec<Step>,
        #[serde(default)]
        warnings: Vec<String>,
        error: Option<String>,
        created_at: Option<DateTime<Utc>>,
        updated_at: Option<DateTime<Utc>>,
    }
    #[derive(Deserialize)]
    struct Intent {
        risk: Option<String>,
        #[serde(default)]
        targets: Vec<String>,
        dsl: Option<Dsl>,
    }
    #[derive(Deserialize)]
    struct Dsl {
        #[serde(default)]
        original_text: String,
        /// What the request does (SPEC §5); older servers send none.
        effect: Option<String>,
    }
    #[derive(Deserialize)]
    struct Audit {
        #[serde(default)]
        module: String,
        #[serde(default)]
        action: String,
        #[serde(default)]
        reason: String,
        #[serde(default)]
        principal: String,
        created_at: Option<DateTime<Utc>>,
    }

    let Some(detail) = view::<Detail>(value) else {
        return json(value);
    };
    let (plan, paint) = (&detail.plan, cx.paint);
    let mut header: Vec<(&str, String)> = vec![
        ("plan", plan.plan_id.clone()),
        (
            "status",
            paint.paint(Tone::of_status(&plan.status), &plan.status),
        ),
    ];
    if let Some(error) = &plan.error {
        header.push(("error", paint.paint(Tone::Bad, &one_line(error))));
    }
    if let Some(intent) = &detail.intent {
        if let Some(dsl) = intent.dsl.as_ref().filter(|d| !d.original_text.is_empty()) {
            header.push(("request", format!("{:?}", one_line(&dsl.original_text))));
        }
        if let Some(risk) = &intent.risk {
            let mut line = paint.paint(Tone::of_risk(risk), risk);
            if !intent.targets.is_empty() {
                let _ = write!(line, " (targets: {})", one_line(&intent.targets.join(", ")));
            }
            header.push(("risk", line));
        }
        if let Some(effect) = intent.dsl.as_ref().and_then(|d| d.effect.as_deref()) {
            header.push(("effect", one_line(effect)));
        }
    }
    if let Some(session) = &plan.session_id {
        header.push(("session", one_line(session)));
    }
    if let Some(mode) = &plan.mode {
        header.push(("mode", one_line(mode)));
    }
    if let Some(created) = plan.created_at {
        header.push((
            "created",
            format!("{} ({} ago)", stamp(created), age(Some(created), cx.now)),
        ));
    }
    if let Some(updated) = plan.updated_at {
        header.push(("updated", stamp(updated)));
    }
    if !plan.warnings.is_empty() {
        header.push(("warnings", one_line(&plan.warnings.join(", "))));
    }
    let mut out = String::new();
    for (label, text) in &header {
        let _ = writeln!(out, "{label:<10}{text}");
    }

    out.push_str(&section(paint, "steps"));
    if plan.steps.is_empty() {
        out.push_str("none\n");
    } else {
        let durations = step_durations(&plan.steps, &detail.events, plan.created_at, cx.now);
        let rows = plan
            .steps
            .iter()
            .zip(durations)
            .enumerate()
            .map(|(i, (step, took))| {
                vec![
                    (Tone::Plain, (i + 1).to_string()),
                    (Tone::Plain, step.step_type.clone()),
                    (Tone::Plain, step.module()),
                    (Tone::of_status(&step.status), step.status.clone()),
                    (Tone::Plain, step.attempts.to_string()),
                    (Tone::Plain, took.map_or_else(|| "-".to_owned(), duration)),
                    (
                        Tone::Bad,
                        step.error
                            .as_deref()
                            .map_or_else(String::new, |e| clip(e, 60)),
                    ),
                ]
            });
        out.push_str(&table(
            paint,
            &[
                "#", "TYPE", "MODULE", "STATUS", "ATTEMPTS", "DURATION", "ERROR",
            ],
            rows,
        ));
        out.push('\n');
    }

    out.push_str(&section(paint, "audit trail"));
    if detail.actions.is_empty() {
        out.push_str("none\n");
    } else {
        let rows = detail.actions.iter().map(|a| {
            vec![
                (
                    Tone::Plain,
                    a.created_at.map_or_else(|| "-".to_owned(), stamp),
                ),
                (Tone::Plain, clip(&a.module, 20)),
                (Tone::Plain, clip(&a.action, 30)),
                (Tone::Plain, clip(&a.principal, 20)),
                (Tone::Plain, clip(&a.reason, 60)),
            ]
        });
        out.push_str(&table(
            paint,
            &["TIME", "MODULE", "ACTION", "BY", "REASON"],
            rows,
        ));
        out.push('\n');
    }

    if !detail.events.is_empty() {
        out.push_str(&section(paint, "journal"));
        // Times from the plan's creation: what matters is how far apart they are.
        let origin = plan
            .created_at
            .or_else(|| detail.events.iter().find_map(|e| e.at));
        let offset = |at: Option<DateTime<Utc>>| match (origin, at) {
            (Some(origin), Some(at)) if at >= origin => {
                format!("+{}", duration((at - origin).num_milliseconds()))
            }
            (_, Some(at)) => stamp(at),
            _ => "-".to_owned(),
        };
        let rows = detail.events.iter().map(|e| {
            let status = e.status.clone().unwrap_or_default();
            vec![
                (
                    Tone::Plain,
                    e.seq.map_or_else(String::new, |s| s.to_string()),
                ),
                (Tone::Plain, offset(e.at)),
                (Tone::Plain, clip(&e.event_type, 24)),
                (Tone::Plain, e.step_type.clone().unwrap_or_default()),
                (Tone::of_status(&status), status),
                (Tone::Plain, clip(e.principal.as_deref().unwrap_or(""), 20)),
                (Tone::Plain, clip(e.reason.as_deref().unwrap_or(""), 40)),
            ]
        });
        out.push_str(&table(
            paint,
            &["SEQ", "AT", "EVENT", "STEP", "STATUS", "BY", "REASON"],
            rows,
        ));
        out.push('\n');
    }
    out.truncate(out.trim_end().len());
    out
}

#[derive(Deserialize)]
struct Step {
    step_id: Option<String>,
    #[serde(rename = "type")]
    step_type: String,
    #[serde(default)]
    payload: Value,
    #[serde(default)]
    blocking: Option<bool>,
    status: String,
    #[serde(default)]
    attempts: u64,
    error: Option<String>,
    updated_at: Option<DateTime<Utc>>,
}

impl Step {
    /// The module the step talks to, as the server decides it
    /// ([`madre_models::Step::module`]).
    fn module(&self) -> String {
        let fixed = self
            .step_type
            .parse::<StepType>()
            .ok()
            .and_then(StepType::module);
        let named = || {
            self.payload
                .get("module")
                .and_then(Value::as_str)
                .and_then(|m| m.parse::<Module>().ok())
        };
        fixed.or_else(named).unwrap_or(Module::Madre).to_string()
    }

    fn finished(&self) -> bool {
        matches!(self.status.as_str(), "DONE" | "ERROR" | "CANCELLED")
    }
}

#[derive(Deserialize, Default)]
struct Event {
    seq: Option<i64>,
    #[serde(rename = "type", default)]
    event_type: String,
    step_id: Option<String>,
    step_type: Option<String>,
    status: Option<String>,
    principal: Option<String>,
    reason: Option<String>,
    at: Option<DateTime<Utc>>,
}

/// One journal event as a line of `madre watch`: time, plan, event, step
/// type, status, who and why. Server text is cleaned of control characters.
pub(crate) fn event_line(value: &Value, paint: Paint) -> String {
    let event: Event = view(value).unwrap_or_default();
    let plan = value["plan_id"].as_str().unwrap_or("-");
    let status = event.status.clone().unwrap_or_default();
    let mut parts = vec![
        event.at.map_or_else(|| "-".to_owned(), stamp),
        format!("plan {}", clip(short_id(plan), 12)),
        format!("{:<13}", clip(&event.event_type, 24)),
    ];
    parts.extend(event.step_type.as_deref().map(|t| clip(t, 24)));
    if !status.is_empty() {
        parts.push(paint.paint(Tone::of_status(&status), &clip(&status, 12)));
    }
    parts.extend(
        event
            .principal
            .as_deref()
            .map(|p| format!("by {}", clip(p, 20))),
    );
    parts.extend(
        event
            .reason
            .as_deref()
            .map(|r| format!("({})", clip(r, 60))),
    );
    parts.join("  ")
}

/// True for the event that ends a plan: its own (not a step's) change to
/// DONE, ERROR or CANCELLED.
pub(crate) fn ends_plan(value: &Value) -> bool {
    value.get("step_id").is_none()
        && matches!(
            value["status"].as_str(),
            Some("DONE" | "ERROR" | "CANCELLED")
        )
}

/// How long each step took, in milliseconds. With the plan's journal: from
/// the step's last `step_started` (or, for a step that never started, like
/// a confirmation, the first event naming it) to its `step_finished`, its
/// last change, or now while it is still going. Without a journal, steps
/// that ran one after the other are timed from the end of the previous step
/// (or the plan's creation) to their own last change; a step that ran beside
/// others, or never ran, has no duration.
fn step_durations(
    steps: &[Step],
    events: &[Event],
    plan_created: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Vec<Option<i64>> {
    let ms = |start: DateTime<Utc>, end: DateTime<Utc>| (end - start).num_milliseconds().max(0);
    if !events.is_empty() {
        let mut started: HashMap<&str, DateTime<Utc>> = HashMap::new();
        let mut finished: HashMap<&str, DateTime<Utc>> = HashMap::new();
        for event in events {
            let (Some(step), Some(at)) = (event.step_id.as_deref(), event.at) else {
                continue;
            };
            match event.event_type.as_str() {
                "step_started" => {
                    started.insert(step, at);
                    finished.remove(step);
                }
                "step_finished" => {
                    finished.insert(step, at);
                }
                _ => {
                    started.entry(step).or_insert(at);
                }
            }
        }
        return steps
            .iter()
            .map(|step| {
                let id = step.step_id.as_deref()?;
                let start = *started.get(id)?;
                let end = match finished.get(id) {
                    Some(at) => *at,
                    None if step.finished() => step.updated_at?,
                    None => now,
                };
                Some(ms(start, end))
            })
            .collect();
    }
    let mut previous_end = plan_created;
    let mut sequential = true;
    steps
        .iter()
        .map(|step| {
            let start = previous_end;
            previous_end = step.updated_at.or(previous_end);
            let ran = step.status == "DONE" || (step.finished() && step.attempts > 0);
            let timed = sequential && ran;
            sequential &= step.blocking.unwrap_or(true);
            match (timed, start, step.updated_at) {
                (true, Some(start), Some(end)) => Some(ms(start, end)),
                _ => None,
            }
        })
        .collect()
}

/// `madre health`: Madre's overall status, then one line per module.
pub(crate) fn health(value: &Value, cx: &Context) -> String {
    #[derive(Deserialize)]
    struct Health {
        #[serde(default)]
        module: String,
        status: String,
        #[serde(default)]
        version: String,
        #[serde(default)]
        deps: serde_json::Map<String, Value>,
        db: Option<Value>,
    }
    let Some(health) = view::<Health>(value) else {
        return json(value);
    };
    let paint = cx.paint;
    let name = if health.module.is_empty() {
        "madre"
    } else {
        &health.module
    };
    let mut out = format!(
        "{} {}: {}",
        one_line(name),
        one_line(&health.version),
        paint.paint(Tone::of_status(&health.status), &health.status)
    );
    // The database first, as Madre's own dependency, then the modules by name.
    let mut lines: Vec<(String, (String, String))> = Vec::new();
    if let Some(db) = health
        .db
        .as_ref()
        .filter(|_| !health.deps.contains_key("db"))
    {
        lines.push(("db".to_owned(), dep_state(db)));
    }
    let mut deps: Vec<_> = health.deps.iter().collect();
    deps.sort_by_key(|(name, _)| (name.as_str() != "db", name.as_str()));
    lines.extend(
        deps.into_iter()
            .map(|(name, state)| (one_line(name), dep_state(state))),
    );
    let width = lines
        .iter()
        .map(|(name, _)| name.chars().count())
        .max()
        .unwrap_or(0);
    for (name, (state, detail)) in lines {
        let _ = write!(
            out,
            "\n  {name:<width$}  {}{detail}",
            paint.paint(Tone::of_status(&state), &state)
        );
    }
    out
}

/// A dependency's state and, for an object like `{"state": "full",
/// "detail": "…"}`, what else it says.
fn dep_state(value: &Value) -> (String, String) {
    match value {
        Value::String(state) => (one_line(state), String::new()),
        Value::Object(fields) => {
            let state = ["state", "status"]
                .iter()
                .find_map(|k| fields.get(*k).and_then(Value::as_str))
                .unwrap_or("?");
            let detail: Vec<String> = fields
                .iter()
                .filter(|(k, _)| !matches!(k.as_str(), "state" | "status"))
                .map(|(k, v)| {
                    let v = match v {
                        Value::String(s) => one_line(s),
                        other => one_line(&other.to_string()),
                    };
                    // A sentence says what it is; anything else is named.
                    if matches!(k.as_str(), "detail" | "reason" | "error") {
                        v
                    } else {
                        format!("{k}: {v}")
                    }
                })
                .collect();
            let detail = if detail.is_empty() {
                String::new()
            } else {
                format!(" ({})", detail.join(", "))
            };
            (one_line(state), detail)
        }
        other => (one_line(&other.to_string()), String::new()),
    }
}

/// `madre confirm`: one line.
pub(crate) fn confirm(value: &Value, cx: &Context) -> String {
    #[derive(Deserialize)]
    struct Confirmed {
        #[serde(default)]
        status: String,
        plan_id: String,
        plan_status: String,
        approvals: Option<u32>,
        required: Option<u32>,
    }
    let Some(answer) = view::<Confirmed>(value) else {
        return json(value);
    };
    let status = cx
        .paint
        .paint(Tone::of_status(&answer.plan_status), &answer.plan_status);
    let plan = one_line(short_id(&answer.plan_id));
    let mut out = if answer.status == "approved" {
        format!("approved plan {plan}: {status}")
    } else {
        format!("confirmed plan {plan}: {status}")
    };
    if let (Some(approvals), Some(required)) = (answer.approvals, answer.required)
        && required > 1
    {
        let _ = write!(out, " ({approvals} of {required} approvals)");
    }
    if matches!(answer.plan_status.as_str(), "RUNNING" | "PENDING") {
        let _ = write!(
            out,
            " (follow it with: madre plan {})",
            shell_word(&answer.plan_id)
        );
    }
    out
}

/// `madre cancel`: one line.
pub(crate) fn cancel(value: &Value, cx: &Context) -> String {
    #[derive(Deserialize)]
    struct Cancelled {
        plan_id: String,
        plan_status: String,
    }
    let Some(answer) = view::<Cancelled>(value) else {
        return json(value);
    };
    let status = cx
        .paint
        .paint(Tone::of_status(&answer.plan_status), &answer.plan_status);
    let plan = one_line(short_id(&answer.plan_id));
    format!("cancelled plan {plan}: {status}")
}

/// A failed request, for stderr: the HTTP status, then the error body's
/// `detail`, code and request id (SPEC §9), and when to retry.
pub(crate) fn failure(status: &str, body: &Value, retry_after: Option<&str>) -> String {
    #[derive(Deserialize)]
    struct Error {
        error: Option<String>,
        detail: Option<String>,
        request_id: Option<String>,
    }
    let mut out = format!("HTTP {status}");
    match view::<Error>(body) {
        Some(e) if e.error.is_some() || e.detail.is_some() => {
            if let Some(detail) = &e.detail {
                let _ = write!(out, ": {}", one_line(detail));
            }
            let mut about: Vec<String> = e.error.iter().map(|c| one_line(c)).collect();
            if let Some(id) = &e.request_id {
                about.push(format!("request {}", one_line(id)));
            }
            if !about.is_empty() {
                let _ = write!(out, " ({})", about.join(", "));
            }
        }
        _ => match body {
            Value::Null => {}
            Value::String(text) if text.trim().is_empty() => {}
            Value::String(text) => {
                let _ = write!(out, ": {}", clip(text, 200));
            }
            other => {
                let _ = write!(out, ": {}", clip(&other.to_string(), 200));
            }
        },
    }
    // Retry-After is a number of seconds or an HTTP date.
    match retry_after {
        Some(after) if !after.is_empty() && after.bytes().all(|b| b.is_ascii_digit()) => {
            let _ = write!(out, "; retry after {after}s");
        }
        Some(after) => {
            let _ = write!(out, "; retry after {}", one_line(after));
        }
        None => {}
    }
    out
}

/// A table without borders, in the manner of `kubectl get`: bold headers,
/// two spaces between columns, no trailing spaces.
fn table<I>(paint: Paint, header: &[&str], rows: I) -> String
where
    I: IntoIterator<Item = Vec<(Tone, String)>>,
{
    let mut table = Table::new();
    table.load_style(presets::NOTHING);
    table.set_header(
        header
            .iter()
            .map(|h| paint.cell(Tone::Strong, h))
            .collect::<Vec<_>>(),
    );
    for row in rows {
        table.add_row(
            row.into_iter()
                .map(|(tone, text)| paint.cell(tone, &one_line(&text)))
                .collect::<Vec<_>>(),
        );
    }
    for column in table.column_iter_mut() {
        column.set_padding((0, 2));
    }
    table
        .lines()
        .map(|line| style::trim_end(&line).to_owned())
        .collect::<Vec<_>>()
        .join("\n")
}

fn section(paint: Paint, title: &str) -> String {
    format!("\n{}\n", paint.paint(Tone::Strong, title))
}

/// Server text for a single line or a table cell: line breaks and tabs as
/// spaces, other control characters as U+FFFD (for text that did not come
/// through [`view`], like an error body that is not JSON).
fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '\n' | '\r' | '\t' => ' ',
            c if c.is_control() => '\u{FFFD}',
            c => c,
        })
        .collect()
}

/// At most `max` characters of `s` on one line, `…` marking a cut.
fn clip(s: &str, max: usize) -> String {
    let s = one_line(s);
    if s.chars().count() <= max {
        s
    } else {
        let mut cut: String = s.chars().take(max.saturating_sub(1)).collect();
        cut.push('…');
        cut
    }
}

/// `s` as one shell word: bare when it is made of safe characters (ids and
/// confirmation tokens are), single-quoted otherwise.
fn shell_word(s: &str) -> String {
    let safe = !s.is_empty()
        && s.chars().all(|c| {
            c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/' | ':' | '=' | '+' | ',')
        });
    if safe {
        s.to_owned()
    } else {
        format!("'{}'", one_line(s).replace('\'', r"'\''"))
    }
}

/// A time as RFC 3339, to the second.
fn stamp(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// How long ago `then` was, in its largest whole unit (`45s`, `3m`, `2h`, `5d`).
fn age(then: Option<DateTime<Utc>>, now: DateTime<Utc>) -> String {
    then.map_or_else(
        || "-".to_owned(),
        |then| span((now - then).num_seconds().max(0)),
    )
}

/// A number of seconds in its largest whole unit.
fn span(seconds: i64) -> String {
    match seconds {
        s if s < 60 => format!("{s}s"),
        s if s < 3_600 => format!("{}m", s / 60),
        s if s < 86_400 => format!("{}h", s / 3_600),
        s => format!("{}d", s / 86_400),
    }
}

/// A step's duration: `850ms`, `2.4s`, `3m05s`, `1h02m`.
fn duration(ms: i64) -> String {
    match ms {
        ms if ms < 1_000 => format!("{ms}ms"),
        ms if ms < 60_000 => format!("{}.{}s", ms / 1_000, ms % 1_000 / 100),
        ms if ms < 3_600_000 => format!("{}m{:02}s", ms / 60_000, ms % 60_000 / 1_000),
        ms => format!("{}h{:02}m", ms / 3_600_000, ms % 3_600_000 / 60_000),
    }
}

#[cfg(test)]
mod tests;

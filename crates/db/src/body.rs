//! The body a plan's `plan_created` event carries, stored small (issue 25:
//! each payload once). A new plan's steps are PENDING, never attempted and
//! as old as the plan, so those fields are left out and read back as such.
//! A text the plan holds elsewhere (the request's text in its intent, the
//! plan's intent and session ids in its row) is not written again inside
//! the intent or a step's payload: the body notes where it was, and the
//! read puts it back. Bodies written before this format read as they are.

use chrono::{DateTime, Utc};
use madre_models::{Intent, Status, Step, StepType};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use uuid::Uuid;

use crate::DbError;

/// Where elided texts were: the tag of a [`Known`] text → the JSON
/// pointers (RFC 6901) of the object members that held it.
type Refs = BTreeMap<String, Vec<String>>;

/// Texts shorter than this stay where they are: noting their place would
/// cost about as much as writing them.
const MIN_ELIDED: usize = 16;

/// Where the request's text lives in an intent: the one copy kept.
const TEXT_IN_INTENT: &str = "/dsl/original_text";

/// The texts a body may leave out, by tag: `m` the request's message as
/// the intent log holds it for the plan's intent, `i` the plan's intent
/// id, `s` its session id (both in the plan's row), `t` the request's text
/// (in the intent's DSL, when the intent log does not hold it).
pub(crate) struct Known {
    texts: Vec<(&'static str, String)>,
}

/// The tag of the intent log's message.
const LOGGED: &str = "m";

impl Known {
    /// The plan's ids, as its row stores them, and the message its intent
    /// log row holds, if it holds one.
    pub(crate) fn new(intent_id: &str, session_id: &str, logged: Option<&str>) -> Self {
        let mut texts = Vec::with_capacity(4);
        if let Some(message) = logged {
            texts.push((LOGGED, message.to_owned()));
        }
        texts.push(("i", intent_id.to_owned()));
        texts.push(("s", session_id.to_owned()));
        Self { texts }
    }

    fn with_text_of(mut self, intent: Option<&Value>) -> Self {
        if let Some(text) = intent
            .and_then(|i| i.pointer(TEXT_IN_INTENT))
            .and_then(Value::as_str)
        {
            self.texts.push(("t", text.to_owned()));
        }
        self
    }

    fn tag_of(&self, text: &str) -> Option<&'static str> {
        self.texts
            .iter()
            .find(|(_, known)| known == text)
            .map(|(tag, _)| *tag)
    }

    fn text(&self, tag: &str) -> Option<&str> {
        self.texts
            .iter()
            .find(|(t, _)| *t == tag)
            .map(|(_, text)| text.as_str())
    }
}

/// The `plan_created` body: the plan's steps (PENDING for a new plan; for
/// a plan made before storage v2, their state at the upgrade), its intent,
/// and for such a plan the last event already counted in its steps and its
/// status then.
#[derive(Serialize, Deserialize)]
pub(crate) struct Body {
    pub(crate) steps: Vec<BodyStep>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    intent: Option<Value>,
    /// Where the intent's left-out texts were; none written: the usual
    /// places when `usual` is set, else nowhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    intent_refs: Option<Refs>,
    /// The tag of the request's text in the usual places ([`usual_refs`]):
    /// set when the intent or a step left its texts out exactly there, so
    /// that those refs go unwritten.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    usual: Option<String>,
    /// When the intent was made, in nanoseconds from the plan's creation
    /// (to the microsecond, as its row keeps it): the one part of a chat's
    /// body that differs from chat to chat, kept out of the intent so the
    /// rest can be stored once as a shape ([`crate::shapes`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) intent_at: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) state_through: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) plan_status: Option<Status>,
}

/// One step in a body; what a new step always is goes unwritten, and so
/// does an id the planner derived from the plan's ([`Step::id_in_plan`]).
#[derive(Serialize, Deserialize)]
pub(crate) struct BodyStep {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    step_id: Option<Uuid>,
    #[serde(rename = "type")]
    pub(crate) step_type: StepType,
    payload: Value,
    /// As the body's `intent_refs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    refs: Option<Refs>,
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    blocking: bool,
    #[serde(default, skip_serializing_if = "is_false")]
    optional: bool,
    #[serde(default = "pending", skip_serializing_if = "is_pending")]
    pub(crate) status: Status,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub(crate) attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    result: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    created_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    updated_at: Option<DateTime<Utc>>,
}

fn yes() -> bool {
    true
}
fn is_true(b: &bool) -> bool {
    *b
}
fn is_false(b: &bool) -> bool {
    !*b
}
fn pending() -> Status {
    Status::Pending
}
fn is_pending(s: &Status) -> bool {
    *s == Status::Pending
}
fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// True when two times are the same to the microsecond, the precision the
/// plan's row keeps.
fn same_micros(a: DateTime<Utc>, b: DateTime<Utc>) -> bool {
    a.timestamp_micros() == b.timestamp_micros()
}

impl Body {
    /// The body of a new plan made at `created_at`: `steps` as given (the
    /// caller makes them PENDING), the intent, known texts left out.
    pub(crate) fn new(
        plan_id: Uuid,
        steps: &[Step],
        intent: Option<&Intent>,
        known: Known,
        created_at: DateTime<Utc>,
    ) -> Result<Self, DbError> {
        let intent_made = intent.map(|i| i.created_at);
        // Through text, not `to_value`: a value keeps an `f32` (the DSL's
        // confidence) as its widened `f64`, 0.3 as 0.30000001192092896.
        let mut intent = intent
            .map(|i| serde_json::from_str::<Value>(&serde_json::to_string(i)?))
            .transpose()?;
        let known = known.with_text_of(intent.as_ref());
        // The request's text stays in the intent unless the intent log
        // holds it.
        let keep = intent
            .as_ref()
            .and_then(|i| i.pointer(TEXT_IN_INTENT))
            .and_then(Value::as_str)
            .filter(|text| known.tag_of(text) != Some(LOGGED))
            .map(|_| TEXT_IN_INTENT);
        let intent_refs = match &mut intent {
            Some(value) => {
                let refs = elide(value, &known, keep);
                drop_defaults(value);
                refs
            }
            None => Refs::new(),
        };
        let intent_at = match (&mut intent, intent_made) {
            (Some(value), Some(made)) => take_intent_time(value, made, created_at),
            _ => None,
        };
        let mut step_refs = Vec::with_capacity(steps.len());
        let steps: Vec<BodyStep> = steps
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let mut payload = s.payload.clone();
                step_refs.push(elide(&mut payload, &known, None));
                let at = |t: DateTime<Utc>| (!same_micros(t, created_at)).then_some(t);
                BodyStep {
                    step_id: (s.step_id != Step::id_in_plan(plan_id, i)).then_some(s.step_id),
                    step_type: s.step_type,
                    payload,
                    refs: None,
                    blocking: s.blocking,
                    optional: s.optional,
                    status: s.status,
                    attempts: s.attempts,
                    result: s.result.clone(),
                    error: s.error.clone(),
                    created_at: at(s.created_at),
                    updated_at: at(s.updated_at),
                }
            })
            .collect();
        let mut body = Self {
            steps,
            intent,
            intent_refs: None,
            usual: None,
            intent_at,
            state_through: None,
            plan_status: None,
        };
        body.note_refs(intent_refs, step_refs);
        Ok(body)
    }

    /// Writes where the texts were, leaving out the refs that are exactly
    /// the usual ones of the text tag that most parts use.
    fn note_refs(&mut self, intent_refs: Refs, step_refs: Vec<Refs>) {
        let usual = ["m", "t"]
            .into_iter()
            .map(|tag| {
                let (intent, step) = usual_refs(tag);
                let uses = usize::from(self.intent.is_some() && intent_refs == intent)
                    + step_refs.iter().filter(|r| **r == step).count();
                (uses, tag)
            })
            .max()
            .filter(|(uses, _)| *uses > 0)
            .map(|(_, tag)| tag);
        let written = |refs: Refs, usual_one: Option<Refs>| match usual_one {
            Some(usual_one) if refs == usual_one => None,
            // With usual refs in use, no refs must be written as such.
            Some(_) => Some(refs),
            None => (!refs.is_empty()).then_some(refs),
        };
        let (intent_usual, step_usual) = match usual {
            Some(tag) => {
                let (i, s) = usual_refs(tag);
                (Some(i), Some(s))
            }
            None => (None, None),
        };
        if self.intent.is_some() {
            self.intent_refs = written(intent_refs, intent_usual);
        }
        for (step, refs) in self.steps.iter_mut().zip(step_refs) {
            step.refs = written(refs, step_usual.clone());
        }
        self.usual = usual.map(str::to_owned);
    }

    /// The refs of the intent and of step `i` as written or implied.
    fn refs_of(&self, part: Option<usize>) -> Refs {
        let written = match part {
            None => &self.intent_refs,
            Some(i) => &self.steps[i].refs,
        };
        match (written, &self.usual) {
            (Some(refs), _) => refs.clone(),
            (None, Some(tag)) => {
                let (intent, step) = usual_refs(tag);
                if part.is_none() { intent } else { step }
            }
            (None, None) => Refs::new(),
        }
    }

    /// True when the body left out the intent log's message: its read
    /// needs it.
    pub(crate) fn refers_to_logged(&self) -> bool {
        (self.intent.is_some() && self.refs_of(None).contains_key(LOGGED))
            || (0..self.steps.len()).any(|i| self.refs_of(Some(i)).contains_key(LOGGED))
    }

    /// The steps and the intent, with every left-out text and time put
    /// back; `created_at` is the plan's.
    pub(crate) fn into_parts(
        self,
        plan_id: Uuid,
        known: Known,
        created_at: DateTime<Utc>,
    ) -> Result<(Vec<Step>, Option<Intent>), String> {
        let intent_refs = self.refs_of(None);
        let step_refs: Vec<Refs> = (0..self.steps.len())
            .map(|i| self.refs_of(Some(i)))
            .collect();
        let mut intent = self.intent;
        let known = known.with_text_of(intent.as_ref());
        if let Some(value) = &mut intent {
            put_back_defaults(value);
            restore(value, &intent_refs, &known)?;
            if let Some(offset) = self.intent_at {
                put_back_intent_time(value, offset, created_at)?;
            }
        }
        let steps = self
            .steps
            .into_iter()
            .zip(step_refs)
            .enumerate()
            .map(|(i, (s, refs))| {
                let mut payload = s.payload;
                restore(&mut payload, &refs, &known)?;
                Ok(Step {
                    step_id: s.step_id.unwrap_or_else(|| Step::id_in_plan(plan_id, i)),
                    step_type: s.step_type,
                    payload,
                    blocking: s.blocking,
                    optional: s.optional,
                    status: s.status,
                    attempts: s.attempts,
                    result: s.result,
                    error: s.error,
                    created_at: s.created_at.unwrap_or(created_at),
                    updated_at: s.updated_at.unwrap_or(created_at),
                })
            })
            .collect::<Result<_, String>>()?;
        let intent = intent
            .map(serde_json::from_value)
            .transpose()
            .map_err(|e| format!("its intent: {e}"))?;
        Ok((steps, intent))
    }
}

/// The places the texts usually are, with `tag` for the request's text:
/// in an intent (its ids, its DSL's text and the message parameter) and
/// in a step calling a module (the ids in its metadata, its prompt).
fn usual_refs(tag: &str) -> (Refs, Refs) {
    let refs = |places: [(&str, &[&str]); 3]| -> Refs {
        places
            .into_iter()
            .map(|(t, at)| (t.to_owned(), at.iter().map(|p| (*p).to_owned()).collect()))
            .collect()
    };
    // The DSL keeps the text itself unless the intent log holds it.
    let text_in_intent: &[&str] = match tag {
        LOGGED => &["/dsl/original_text", "/dsl/parameters/original_message"],
        _ => &["/dsl/parameters/original_message"],
    };
    (
        refs([
            ("i", &["/intent_id"]),
            ("s", &["/session_id"]),
            (tag, text_in_intent),
        ]),
        refs([
            ("i", &["/metadata/intent_id"]),
            ("s", &["/metadata/session_id"]),
            (tag, &["/prompt"]),
        ]),
    )
}

/// The plan's creation to the microsecond, in nanoseconds: what an
/// intent's time is stored from.
fn plan_nanos(created_at: DateTime<Utc>) -> i128 {
    i128::from(created_at.timestamp_micros()) * 1_000
}

/// Takes the intent's `created_at` (its serialization of `made`) out of
/// `intent`, answering it as nanoseconds from the plan's creation; leaves
/// it when the offset cannot carry it exactly (a leap second, a time out
/// of range).
fn take_intent_time(
    intent: &mut Value,
    made: DateTime<Utc>,
    created_at: DateTime<Utc>,
) -> Option<i64> {
    let nanos = made.timestamp_nanos_opt()?;
    let offset = i64::try_from(i128::from(nanos) - plan_nanos(created_at)).ok()?;
    if DateTime::from_timestamp_nanos(nanos) != made {
        return None;
    }
    intent.as_object_mut()?.remove("created_at")?;
    Some(offset)
}

/// Puts back the intent's `created_at` that [`take_intent_time`] took out.
fn put_back_intent_time(
    intent: &mut Value,
    offset: i64,
    created_at: DateTime<Utc>,
) -> Result<(), String> {
    let nanos = plan_nanos(created_at) + i128::from(offset);
    let at = i64::try_from(nanos)
        .map(DateTime::from_timestamp_nanos)
        .map_err(|_| format!("its intent's time is out of range ({offset} ns)"))?;
    if let Value::Object(members) = intent {
        members.insert(
            "created_at".into(),
            serde_json::to_value(at).map_err(|e| e.to_string())?,
        );
    }
    Ok(())
}

/// A member of a stored intent left out when it holds its usual value:
/// the JSON pointer of its object, its name, and that value.
type Usual = (&'static str, &'static str, fn() -> Value);

/// The members of a stored intent left out when they hold their usual
/// value (nothing), and put back on read.
const INTENT_DEFAULTS: [Usual; 5] = [
    ("/dsl", "parameters", || Value::Object(Default::default())),
    ("/dsl", "targets", || Value::Array(Vec::new())),
    ("/dsl", "warnings", || Value::Array(Vec::new())),
    ("", "targets", || Value::Array(Vec::new())),
    ("", "requires_confirmation", || Value::Bool(false)),
];

/// Leaves out the members of an intent that hold their usual value.
fn drop_defaults(intent: &mut Value) {
    for (at, member, usual) in INTENT_DEFAULTS {
        if let Some(Value::Object(members)) = intent.pointer_mut(at)
            && members.get(member) == Some(&usual())
        {
            members.remove(member);
        }
    }
}

/// Puts back the members [`drop_defaults`] left out.
fn put_back_defaults(intent: &mut Value) {
    for (at, member, usual) in INTENT_DEFAULTS {
        if let Some(Value::Object(members)) = intent.pointer_mut(at) {
            members.entry(member).or_insert_with(usual);
        }
    }
}

/// Removes every object member of `value` whose text is known (but the one
/// at `keep`), answering where each was. Texts inside arrays stay: taking
/// one out would move the others.
fn elide(value: &mut Value, known: &Known, keep: Option<&str>) -> Refs {
    let mut refs = Refs::new();
    elide_at(value, &mut String::new(), known, keep, &mut refs);
    refs
}

fn elide_at(
    value: &mut Value,
    at: &mut String,
    known: &Known,
    keep: Option<&str>,
    refs: &mut Refs,
) {
    let here = at.len();
    match value {
        Value::Object(members) => {
            let mut gone = Vec::new();
            for (key, member) in members.iter_mut() {
                at.push('/');
                at.push_str(&key.replace('~', "~0").replace('/', "~1"));
                let tag = match member {
                    Value::String(text) if text.len() >= MIN_ELIDED && keep != Some(at) => {
                        known.tag_of(text)
                    }
                    _ => None,
                };
                match tag {
                    Some(tag) => {
                        refs.entry(tag.to_owned()).or_default().push(at.clone());
                        gone.push(key.clone());
                    }
                    None => elide_at(member, at, known, keep, refs),
                }
                at.truncate(here);
            }
            for key in gone {
                members.remove(&key);
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                at.push('/');
                at.push_str(&i.to_string());
                elide_at(item, at, known, keep, refs);
                at.truncate(here);
            }
        }
        _ => {}
    }
}

/// Puts every elided text back where `refs` says it was.
fn restore(value: &mut Value, refs: &Refs, known: &Known) -> Result<(), String> {
    for (tag, places) in refs {
        let text = known
            .text(tag)
            .ok_or_else(|| format!("it refers to an unknown text {tag:?}"))?;
        for place in places {
            let (parent, key) = place
                .rsplit_once('/')
                .ok_or_else(|| format!("bad place {place:?}"))?;
            let key = key.replace("~1", "/").replace("~0", "~");
            match value.pointer_mut(parent) {
                Some(Value::Object(members)) => {
                    members.insert(key, Value::String(text.to_owned()));
                }
                _ => return Err(format!("no object at {parent:?} for {place:?}")),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn known() -> Known {
        Known::new(
            "01a23f28-6ad6-7558-92e4-1911e595f833",
            "01a23f28-6ad6-7558-92e4-1912fc95d2d7",
            None,
        )
        .with_text_of(Some(
            &json!({"dsl": {"original_text": "tell me about the weather"}}),
        ))
    }

    #[test]
    fn known_texts_leave_objects_and_come_back_exactly() {
        let original = json!({
            "prompt": "tell me about the weather",
            "metadata": {"session_id": "01a23f28-6ad6-7558-92e4-1912fc95d2d7",
                         "intent_id": "01a23f28-6ad6-7558-92e4-1911e595f833",
                         "a/b~c": "tell me about the weather"},
            "list": ["tell me about the weather", {"x": "tell me about the weather"}],
            "short": "MADRE",
            "other": "tell me about the weather!",
        });
        let mut value = original.clone();
        let refs = elide(&mut value, &known(), None);
        let text = value.to_string();
        assert_eq!(
            text.matches("tell me about the weather").count(),
            2,
            "{text}"
        );
        assert!(!text.contains("01a23f28"), "{text}");
        assert_eq!(refs["t"].len(), 3, "{refs:?}");
        restore(&mut value, &refs, &known()).unwrap();
        assert_eq!(value, original);
    }

    #[test]
    fn the_kept_place_keeps_its_text() {
        let mut value = json!({"dsl": {"original_text": "tell me about the weather",
                                       "parameters": {"m": "tell me about the weather"}}});
        let refs = elide(&mut value, &known(), Some(TEXT_IN_INTENT));
        assert_eq!(refs["t"], ["/dsl/parameters/m"]);
        assert_eq!(value["dsl"]["original_text"], "tell me about the weather");
    }

    #[test]
    fn a_text_the_intent_log_holds_is_not_kept_in_the_intent_either() {
        let text = "tell me about the weather";
        let logged = || Known::new("i-0000000000000000", "s-0000000000000000", Some(text));
        let mut intent = json!({"dsl": {"original_text": text, "parameters": {"m": text}}});
        let original = intent.clone();
        let known = logged().with_text_of(Some(&intent));
        let refs = elide(&mut intent, &known, None);
        assert_eq!(refs["m"].len(), 2, "{refs:?}");
        assert!(!intent.to_string().contains(text), "{intent}");
        let known = logged().with_text_of(Some(&intent));
        restore(&mut intent, &refs, &known).unwrap();
        assert_eq!(intent, original);
    }

    #[test]
    fn derived_step_ids_and_usual_intent_members_are_left_out_and_come_back() {
        use madre_models::{Dsl, DslSource, Effect, Mode, RiskLevel, SessionId};
        let plan_id = Uuid::now_v7();
        let at = Utc::now();
        let derived = Step::new(
            Step::id_in_plan(plan_id, 0),
            StepType::CallHermes,
            json!({}),
            at,
        );
        let foreign = Step::new(Uuid::now_v7(), StepType::Noop, json!({}), at);
        let intent = Intent {
            intent_id: Uuid::now_v7(),
            session_id: SessionId::generate(),
            mode: Mode::Madre,
            dsl: Dsl {
                domain: "general".into(),
                action: "chat".into(),
                parameters: Default::default(),
                targets: vec![],
                confidence: 0.3,
                original_text: "tell me about the weather".into(),
                warnings: vec![],
                source: DslSource::Fallback,
                effect: Effect::Read,
            },
            risk: RiskLevel::Low,
            requires_confirmation: false,
            targets: vec![],
            created_at: at,
            alternatives: vec![],
        };
        let known = || Known::new("i", "s", None);
        let steps = [derived, foreign];
        let body = Body::new(plan_id, &steps, Some(&intent), known(), at).unwrap();
        let text = serde_json::to_string(&body).unwrap();
        assert_eq!(text.matches("step_id").count(), 1, "{text}");
        for usual in ["parameters", "warnings", "targets", "requires_confirmation"] {
            assert!(!text.contains(usual), "{usual} in {text}");
        }
        let read: Body = serde_json::from_str(&text).unwrap();
        let (back, back_intent) = read.into_parts(plan_id, known(), at).unwrap();
        assert_eq!(back, steps);
        assert_eq!(back_intent.unwrap(), intent);
    }

    #[test]
    fn refs_in_their_usual_places_go_unwritten_and_others_are_written() {
        let text = "tell me about the weather";
        let ids = (
            "01a23f28-6ad6-7558-92e4-1911e595f833",
            "01a23f28-6ad6-7558-92e4-1912fc95d2d7",
        );
        let known = || Known::new(ids.0, ids.1, Some(text));
        let at = Utc::now();
        let plan_id = Uuid::now_v7();
        let usual = json!({"prompt": text, "metadata": {"intent_id": ids.0, "session_id": ids.1}});
        let unusual = json!({"question": text});
        let steps: Vec<Step> = [usual.clone(), unusual, json!({"n": 1}), usual]
            .into_iter()
            .enumerate()
            .map(|(i, p)| Step::new(Step::id_in_plan(plan_id, i), StepType::CallHermes, p, at))
            .collect();
        let body = Body::new(plan_id, &steps, None, known(), at).unwrap();
        let stored = serde_json::to_value(&body).unwrap();
        assert_eq!(stored["usual"], "m");
        let refs: Vec<&Value> = (0..4).map(|i| &stored["steps"][i]["refs"]).collect();
        assert_eq!(
            refs,
            [
                &Value::Null,
                &json!({"m": ["/question"]}),
                &json!({}),
                &Value::Null
            ]
        );
        assert!(!stored.to_string().contains(text));
        let read: Body = serde_json::from_value(stored).unwrap();
        assert!(read.refers_to_logged());
        let (back, _) = read.into_parts(plan_id, known(), at).unwrap();
        assert_eq!(back, steps);
    }

    #[test]
    fn a_reference_to_an_unknown_text_is_refused() {
        let mut value = json!({});
        let refs = Refs::from([("z".to_owned(), vec!["/a".to_owned()])]);
        assert!(restore(&mut value, &refs, &known()).is_err());
    }
}

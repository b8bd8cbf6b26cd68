//! Switch-first intent (SPEC §4a): at intake, a chat asks Switch once, with
//! a short timeout and no retry, for the intent and the engine. Switch's
//! intent is used only when it is valid and more confident than the
//! fallback parser's; the fallback always runs, and Switch can never lower
//! the risk or lift a deny. A Switch that is down, slow or answers garbage
//! costs at most the short timeout and never fails the chat.

use madre_delegation::{DelegationError, Method, ModuleRequest};
use madre_models::{DepState, Dsl, DslSource, Effect, Mode, Module, SessionId, Word};
use madre_policy::{Assessment, Decision, RiskTables};
use serde_json::{Map, Value, json};
use std::time::Duration;
use uuid::Uuid;

use crate::Madre;

/// The longest Switch may take to answer the intake question.
pub(crate) const INTAKE_TIMEOUT: Duration = Duration::from_millis(500);

/// Warning on an intent whose Switch answer was unusable (invalid words,
/// no confidence…): the fallback's parse was used.
pub(crate) const SWITCH_INTENT_INVALID: &str = "switch_intent_invalid";

/// What Switch said at intake.
#[derive(Debug, Default)]
pub(crate) struct SwitchAnswer {
    /// Its intent, when valid.
    pub(crate) dsl: Option<Dsl>,
    /// It answered an intent that was not valid.
    pub(crate) invalid: bool,
    /// The engine it chose (`engine`, else `model`).
    pub(crate) engine: Option<String>,
    /// The effect its intent named, if any (it can only raise the risk).
    pub(crate) effect: Option<Effect>,
}

/// What asking Switch at intake came to.
#[derive(Debug)]
pub(crate) enum Asked {
    /// Not asked (`MADRE_SWITCH_INTENT=off`), or it answered an error the
    /// plan's CALL_SWITCH step may still get past (4xx, 5xx, garbage).
    NoAnswer,
    /// It answered.
    Answered(SwitchAnswer),
    /// Madre's own HTTP client is saturated: the chat is refused (503)
    /// before anything is planned.
    Busy,
    /// It did not answer at all (timeout, unreachable), or is known to be
    /// down (its probe failed, its breaker is open): the plan's CALL_SWITCH
    /// step does not call it again and the plan uses the fallback engine.
    Unavailable(String),
}

/// The intent a chat runs: the chosen DSL, the other one, and the stricter
/// of the two classifications.
pub(crate) struct Intake {
    pub(crate) dsl: Dsl,
    pub(crate) alternatives: Vec<Dsl>,
    pub(crate) assessment: Assessment,
    pub(crate) engine: Option<String>,
}

impl Madre {
    /// Asks Switch for the intent of `text`, when enabled and not marked
    /// down by its probe or its breaker.
    pub(crate) async fn ask_switch(
        &self,
        text: &str,
        session_id: &SessionId,
        mode: Mode,
        request_id: &str,
    ) -> Asked {
        if !self.config().switch_intent {
            return Asked::NoAnswer;
        }
        if self.health.snapshot().get(&Module::Switch) == Some(&DepState::Down) {
            return Asked::Unavailable("its last probe failed".into());
        }
        let request = ModuleRequest {
            module: Module::Switch,
            method: Method::Post,
            path: "/switch/route-v5".into(),
            body: Some(json!({
                "prompt": text,
                "metadata": {"session_id": session_id, "mode": mode, "purpose": "intent"},
                "source": "madre",
            })),
            idempotency_key: Uuid::new_v4(),
            request_id: request_id.to_owned(),
        };
        match self.delegator.call_once(&request, INTAKE_TIMEOUT).await {
            Ok(answer) => Asked::Answered(read_answer(&answer, text)),
            Err(e) => {
                tracing::info!(error = %e, "switch gave no intent at intake; the fallback parse is used");
                match e {
                    DelegationError::Timeout { .. } => Asked::Unavailable(format!(
                        "no answer within {} ms",
                        INTAKE_TIMEOUT.as_millis()
                    )),
                    DelegationError::Unreachable { .. } => Asked::Unavailable("unreachable".into()),
                    DelegationError::Unavailable(_) => {
                        Asked::Unavailable("its circuit breaker is open".into())
                    }
                    DelegationError::Busy(_) => Asked::Busy,
                    _ => Asked::NoAnswer,
                }
            }
        }
    }
}

/// The engine and a valid intent out of Switch's answer.
fn read_answer(answer: &Value, text: &str) -> SwitchAnswer {
    let engine = madre_delegation::engine_from_switch(answer);
    let (dsl, invalid) = match answer.get("intent") {
        None | Some(Value::Null) => (None, false),
        Some(intent) => match switch_dsl(intent, text) {
            Some(dsl) => (Some(dsl), false),
            None => (None, true),
        },
    };
    let (dsl, effect) = match dsl {
        Some((dsl, effect)) => (Some(dsl), effect),
        None => (None, None),
    };
    SwitchAnswer {
        dsl,
        invalid,
        engine,
        effect,
    }
}

/// Switch's intent as a DSL, when every word of it is valid.
fn switch_dsl(intent: &Value, text: &str) -> Option<(Dsl, Option<Effect>)> {
    let domain = intent.get("domain")?.as_str()?.to_ascii_lowercase();
    if !matches!(domain.as_str(), "system" | "audio" | "general") {
        return None;
    }
    let action = Word::parse("intent.action", intent.get("action")?.as_str()?).ok()?;
    let targets = intent
        .get("targets")?
        .as_array()?
        .iter()
        .map(|t| t.as_str()?.to_ascii_lowercase().parse::<Module>().ok())
        .collect::<Option<Vec<Module>>>()?;
    let mut parameters: Map<String, Value> = match intent.get("parameters") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(map)) => map.clone(),
        Some(_) => return None,
    };
    let confidence = intent.get("confidence")?.as_f64()?;
    if !(0.0..=1.0).contains(&confidence) {
        return None;
    }
    parameters.insert("original_message".into(), Value::String(text.to_owned()));
    // Switch may name an effect; an unknown name makes the intent invalid.
    // Without one, the fallback's effect stands in (`decide`).
    let effect = match intent.get("effect") {
        None | Some(Value::Null) => None,
        Some(value) => Some(value.as_str()?.parse::<Effect>().ok()?),
    };
    Some(Dsl {
        domain,
        action: action.as_str().to_owned(),
        parameters,
        targets,
        confidence: confidence as f32,
        original_text: text.to_owned(),
        warnings: Vec::new(),
        source: DslSource::Switch,
        effect: effect.unwrap_or(Effect::Unknown),
    })
    .map(|dsl| (dsl, effect))
}

/// The stricter of two classifications: a deny from either denies, else
/// the higher risk.
fn stricter(a: Assessment, b: Assessment) -> Assessment {
    match (a.decision, b.decision) {
        (Decision::Deny, _) => a,
        (_, Decision::Deny) => b,
        (Decision::Risk(x), Decision::Risk(y)) => {
            if y > x {
                b
            } else {
                a
            }
        }
    }
}

/// Chooses the DSL a chat runs (SPEC §4a) and classifies it with the
/// safety floor: the fallback always counts.
pub(crate) fn decide(fallback: Dsl, switch: Option<SwitchAnswer>, tables: &RiskTables) -> Intake {
    let fallback_assessment = tables.assess(&fallback);
    let Some(switch) = switch else {
        return Intake {
            dsl: fallback,
            alternatives: Vec::new(),
            assessment: fallback_assessment,
            engine: None,
        };
    };
    let engine = switch.engine;
    let Some(mut switch_dsl) = switch.dsl else {
        let mut dsl = fallback;
        if switch.invalid {
            dsl.warnings.push(SWITCH_INTENT_INVALID.to_owned());
        }
        return Intake {
            dsl,
            alternatives: Vec::new(),
            assessment: fallback_assessment,
            engine,
        };
    };
    // Switch's effect can raise the risk, never lower it: the stricter of
    // the two effects is the one Switch's reading is classified with.
    switch_dsl.effect = match switch.effect {
        Some(named) => named.max(fallback.effect),
        None => fallback.effect,
    };
    let assessment = stricter(fallback_assessment, tables.assess(&switch_dsl));
    if switch_dsl.confidence > fallback.confidence {
        // What the fallback saw still stands (destructive_intent_detected…).
        switch_dsl.warnings = fallback.warnings.clone();
        Intake {
            dsl: switch_dsl,
            alternatives: vec![fallback],
            assessment,
            engine,
        }
    } else {
        Intake {
            dsl: fallback,
            alternatives: vec![switch_dsl],
            assessment,
            engine,
        }
    }
}

//! The chat flow of SPEC §9: log the intent first, parse, classify, plan,
//! persist; then answer WAITING with a token, ERROR for a denial, or run
//! the plan and answer its outcome.

use chrono::Utc;
use madre_db::{
    AtEnd, Db, DbError, NewIntentLog, NewTurn, PlanKind, PlanMeta, Said, SessionRow, StoredPlan,
    Write,
};
use madre_models::{
    ChatCommand, ChatResponse, Dsl, Intent, IntentOutcome, Mode, Plan, SessionId, Status,
};
use madre_planner::Origin;
use madre_policy::{Principal, Role};
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use uuid::Uuid;

use crate::intake;
use crate::plans::{PlanOrder, Planned, SwitchStep, actions_of, no_place, reply_of};
use crate::{FlowError, Madre, require};

fn merge_warnings(dsl: &Dsl, plan: &Plan) -> Vec<String> {
    let mut all = dsl.warnings.clone();
    for w in &plan.warnings {
        if !all.contains(w) {
            all.push(w.clone());
        }
    }
    all
}

impl Madre {
    /// A chat message from `principal` (operator or above). `source` names
    /// the endpoint in the intent log (`chat`, `chat_v6`). The intent log
    /// row opened first is closed whatever happens: with the plan's status,
    /// `denied`, or `error` when the flow fails. Cancel-safe: the flow runs
    /// on a task of its own, so dropping this future (a client that went
    /// away, a server's shutdown timeout) does not stop its bookkeeping.
    pub async fn chat(
        self: &Arc<Self>,
        principal: &Principal,
        command: ChatCommand,
        source: &str,
        request_id: &str,
    ) -> Result<ChatResponse, FlowError> {
        let madre = self.clone();
        let principal = principal.clone();
        let source = source.to_owned();
        let request_id = request_id.to_owned();
        crate::detached(async move {
            madre
                .chat_here(&principal, command, &source, &request_id)
                .await
        })
        .await
    }

    #[tracing::instrument(skip_all, fields(session_id, plan_id))]
    async fn chat_here(
        &self,
        principal: &Principal,
        command: ChatCommand,
        source: &str,
        request_id: &str,
    ) -> Result<ChatResponse, FlowError> {
        require(principal, Role::Operator)?;
        let now = Utc::now();
        let intent_id = Uuid::now_v7();
        let session_id = command
            .session_id
            .clone()
            .unwrap_or_else(SessionId::generate);
        tracing::Span::current().record("session_id", session_id.as_str());
        // The session's mode is read on a reader while the intent log is
        // written: the writer runs only the write. A session named here,
        // just now, has no row to read.
        let sid = command
            .session_id
            .as_ref()
            .map(|given| given.as_str().to_owned());
        let (logged, session) = tokio::join!(
            self.db.log_intent(NewIntentLog {
                id: intent_id,
                source: source.to_owned(),
                principal: principal.name.clone(),
                payload: {
                    let mut asked = json!({
                        "message": command.message.as_str(),
                        "session_id": session_id,
                    });
                    // The mode the request forced, when it forced one.
                    if let Some(mode) = command.mode {
                        asked["mode"] = json!(mode);
                    }
                    asked
                },
                created_at: now,
            }),
            async {
                match sid {
                    Some(sid) => self.db.run_blocking(move |db| db.session(&sid)).await,
                    None => Ok(None),
                }
            },
        );
        logged?;
        let outcome = self
            .chat_logged(
                principal, command, intent_id, session_id, session, request_id,
            )
            .await;
        if let Err(e) = &outcome {
            let note = e.to_string();
            if let Err(close) = self
                .db
                .close_intent(intent_id, IntentOutcome::Failed, Some(&note), Utc::now())
                .await
            {
                tracing::error!(%intent_id, error = %close, "could not close the intent of a failed chat");
            }
        }
        outcome
    }

    async fn chat_logged(
        &self,
        principal: &Principal,
        command: ChatCommand,
        intent_id: Uuid,
        session_id: SessionId,
        session: Result<Option<SessionRow>, DbError>,
        request_id: &str,
    ) -> Result<ChatResponse, FlowError> {
        let now = Utc::now();
        let session = session?;
        let session_mode = match session {
            Some(s) if s.closed_at.is_none() => s.mode,
            _ => Mode::Madre,
        };
        let text = command.message.as_str();
        let fallback = self.parse(text);
        let asked = self
            .ask_switch(text, &session_id, session_mode, request_id)
            .await;
        let (switch, unavailable) = match asked {
            intake::Asked::Answered(answer) => (Some(answer), None),
            intake::Asked::NoAnswer => (None, None),
            intake::Asked::Unavailable(why) => (None, Some(why)),
            // The same answer as a full queue: at capacity, retry later.
            intake::Asked::Busy => return Err(FlowError::QueueFull(self.runner.queued())),
        };
        let intake = intake::decide(fallback, switch, &self.tables());
        let switch_step = match (intake.engine, unavailable) {
            (Some(engine), _) => SwitchStep::Answered(engine),
            (None, Some(why)) => SwitchStep::Skip(why),
            (None, None) => SwitchStep::Call,
        };
        let assessment = intake.assessment;
        let dsl = intake.dsl;
        let mode = madre_parser::select_mode(command.mode, &dsl, session_mode);
        let intent = Intent {
            intent_id,
            session_id: session_id.clone(),
            mode,
            risk: assessment.risk(),
            requires_confirmation: assessment.requires_confirmation(),
            targets: dsl.targets.clone(),
            dsl,
            created_at: now,
            alternatives: intake.alternatives,
        };
        let meta = PlanMeta {
            kind: PlanKind::Chat,
            name: "chat".into(),
            module: intent
                .targets
                .first()
                .copied()
                .unwrap_or(madre_models::Module::Madre),
            action: intent.dsl.action.clone(),
            principal: principal.name.clone(),
        };
        let planned = self
            .make_plan(
                principal,
                PlanOrder {
                    intent: &intent,
                    origin: Origin::Chat,
                    denied: assessment.is_denied(),
                    meta,
                    switch_step,
                    // The intent log holds it: the plan refers to it there.
                    logged_message: Some(command.message.as_str()),
                },
            )
            .await?;
        let plan_id = planned.plan.plan_id;
        tracing::Span::current().record("plan_id", plan_id.to_string());
        let Planned {
            plan,
            token,
            expires_at,
            place,
        } = planned;

        let turn = Turn {
            session_id: session_id.clone(),
            mode,
            intent_id,
            plan_id,
            keep: self.config().history_max,
        };
        let mut turn_recorded = false;
        let (status, response, actions, warnings) = if assessment.is_denied() {
            let target = assessment.denied_target.clone().unwrap_or_default();
            let text = format!(
                "Refused: \"{}\" on {target} is never allowed, with or without confirmation",
                intent.dsl.action
            );
            (
                Status::Error,
                text,
                Vec::new(),
                merge_warnings(&intent.dsl, &plan),
            )
        } else if token.is_some() {
            let text = format!(
                "This needs a human confirmation ({} risk): POST /madre/plans/{}/confirm with the confirm_token within {} s",
                intent.risk,
                plan_id,
                self.config().confirm_ttl_s
            );
            (
                Status::Waiting,
                text,
                actions_of(&plan),
                merge_warnings(&intent.dsl, &plan),
            )
        } else {
            // The history turn and the intent's close commit with the
            // plan's end when the run ends it: one commit fewer.
            let (at_end, made) = turn.clone().at_end(&self.db);
            let place = place.ok_or_else(no_place)?;
            let stored = self
                .run_new_plan(principal, plan, place, request_id, Some(at_end))
                .await?;
            // A plan still queued or running when the wait ended records
            // its turn and closes its intent with its final status when it
            // ends; the chat must not close it as RUNNING now. A finished
            // plan's end committed before its state came back, so the flag
            // says whether the turn went with it.
            turn_recorded = made.load(Ordering::Acquire) || !stored.plan.status.is_terminal();
            (
                stored.plan.status,
                reply_of(&stored),
                actions_of(&stored.plan),
                merge_warnings(&intent.dsl, &stored.plan),
            )
        };

        let closing = if assessment.is_denied() {
            IntentOutcome::Denied
        } else {
            IntentOutcome::Plan(status)
        };
        // Unless it committed with the plan's end, the turn is written
        // now. The plan ran: its answer goes back even if storage refuses
        // this write (a 503 now would invite a second run); the intent is
        // then closed `interrupted` at the next start.
        if !turn_recorded
            && let Err(e) = turn
                .write(&self.db, Said::Text(response.clone()), closing)
                .await
        {
            tracing::error!(%intent_id, error = %e, "could not record the history turn of a chat");
        }

        Ok(ChatResponse {
            response,
            session_id,
            intent_id,
            plan_id,
            status,
            mode,
            risk: intent.risk,
            warnings,
            targets: intent.targets,
            actions,
            confirm_token: token.as_ref().map(|t| t.expose().to_owned()),
            confirm_expires_at: expires_at,
        })
    }
}

/// What a chat's history turn records.
#[derive(Clone)]
struct Turn {
    session_id: SessionId,
    mode: Mode,
    intent_id: Uuid,
    plan_id: Uuid,
    /// Messages kept per session.
    keep: u32,
}

impl Turn {
    /// The turn with `answered`, and its intent's close with `closing`, in
    /// one write: the history never shows a turn whose intent is still
    /// open. The user's message is the one the intent log holds.
    fn write(&self, db: &Db, answered: Said, closing: IntentOutcome) -> Write<()> {
        let now = Utc::now();
        db.record_turn(NewTurn {
            session_id: self.session_id.as_str().to_owned(),
            mode: self.mode,
            intent_id: Some(self.intent_id),
            plan_id: Some(self.plan_id),
            asked: Said::Kept,
            answered,
            keep: self.keep,
            at: now,
        })
        .and(db.close_intent(self.intent_id, closing, None, now))
        .discard()
    }

    /// The write made from the plan as it ended, for the runner to commit
    /// with the plan's end, and a flag set when it succeeded there. A
    /// reply that is the plan's answer is not stored again.
    fn at_end(self, db: &Db) -> (AtEnd, Arc<AtomicBool>) {
        let made = Arc::new(AtomicBool::new(false));
        let flag = made.clone();
        let db = db.clone();
        let write: AtEnd = Box::new(move |stored: &StoredPlan| {
            // Made once per run of the plan's end: a run rolled back (a
            // write sharing its commit failed) must not leave the flag set.
            flag.store(false, Ordering::Release);
            let flag = flag.clone();
            let answered = match stored.result.as_ref().and_then(|r| r.get("reply")) {
                Some(serde_json::Value::String(_)) => Said::Kept,
                _ => Said::Text(reply_of(stored)),
            };
            self.write(&db, answered, IntentOutcome::Plan(stored.plan.status))
                .map(move |()| flag.store(true, Ordering::Release))
        });
        (write, made)
    }
}

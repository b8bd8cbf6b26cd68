//! `Idempotency-Key` (SPEC §8): the key is reserved before the work runs,
//! so of concurrent requests with one key exactly one executes; the others
//! wait for its answer and replay it, or get `idempotency_in_progress`.
//! Stored answers never hold a confirmation token: a replayed WAITING
//! answer carries a fresh one, and the old one stops working.

use chrono::{DateTime, Utc};
use madre_db::{Reservation, StoredResponse, TakeOver};
use madre_policy::Principal;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use uuid::Uuid;

use crate::plans::new_token;
use crate::{FlowError, Madre};

/// How long a duplicate waits for the first request's answer before 409.
const WAIT_FOR_FIRST: Duration = Duration::from_secs(5);
/// How much longer than the longest request a reservation without an answer
/// is kept before another request may take it over.
const STALE_MARGIN: Duration = Duration::from_secs(60);
/// Pause between two looks at the first request's answer.
const POLL: Duration = Duration::from_millis(20);

/// The reservations this process holds, each with its owner and when it
/// was made by the monotonic clock: whether one of its own reservations is
/// stale never depends on the wall clock, which can jump (a clock stepped
/// forward would make a live request's key look abandoned, and its work
/// run twice). A key held by no one here belongs to another process, or
/// to one that died; only the wall clock can judge those.
#[derive(Debug, Default)]
pub(crate) struct HeldKeys(Mutex<HashMap<(String, String), (Uuid, Instant)>>);

impl HeldKeys {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), (Uuid, Instant)>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What a new request for (`principal`, `key`) may take over, when a
    /// reservation without an answer is stale after `stale_after`.
    fn take_over(
        &self,
        principal: &str,
        key: &str,
        stale_after: Duration,
        now: DateTime<Utc>,
    ) -> TakeOver {
        match self.lock().get(&(principal.to_owned(), key.to_owned())) {
            Some((owner, since)) if since.elapsed() >= stale_after => TakeOver::Owner(*owner),
            Some(_) => TakeOver::Nothing,
            None => TakeOver::MadeBefore(
                now - chrono::Duration::from_std(stale_after).unwrap_or(chrono::Duration::MAX),
            ),
        }
    }

    /// `owner` now holds (`principal`, `key`).
    fn hold(&self, principal: &str, key: &str, owner: Uuid) {
        self.lock().insert(
            (principal.to_owned(), key.to_owned()),
            (owner, Instant::now()),
        );
    }

    /// `owner` answered or freed (`principal`, `key`); a key taken over by
    /// another owner meanwhile stays theirs.
    fn let_go(&self, principal: &str, key: &str, owner: Uuid) {
        let mut held = self.lock();
        let id = (principal.to_owned(), key.to_owned());
        if held.get(&id).is_some_and(|(holder, _)| *holder == owner) {
            held.remove(&id);
        }
    }
}

/// A request's `Idempotency-Key` and the hash of what it asks (method,
/// path and body), to tell a retry from a different request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey {
    /// The key as the client sent it.
    pub key: String,
    /// Hash of the request.
    pub request_hash: String,
}

/// An answer as the HTTP layer sends it: status code and JSON body, and
/// the plan it is about (so a replay can re-issue the plan's token).
#[derive(Clone, PartialEq)]
pub struct Answer {
    /// HTTP status code.
    pub status: u16,
    /// The JSON body.
    pub body: Value,
    /// The plan the answer is about.
    pub plan_id: Option<Uuid>,
}

impl std::fmt::Debug for Answer {
    /// The body without its confirmation token, which never reaches logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut body = self.body.clone();
        if let Some(token) = body.get_mut("confirm_token").filter(|t| !t.is_null()) {
            *token = Value::String("<redacted>".into());
        }
        f.debug_struct("Answer")
            .field("status", &self.status)
            .field("body", &body)
            .field("plan_id", &self.plan_id)
            .finish()
    }
}

impl Madre {
    /// Runs `work` once per (`principal`, `key`): the first request runs
    /// it and its answer is stored (without any confirmation token); a
    /// retry replays that answer; a concurrent duplicate waits for it. With
    /// no key, `work` just runs. A failed `work` frees the key.
    /// Cancel-safe: the reservation, `work` and the storing of its answer
    /// run on a task of their own, so dropping this future never leaves a
    /// key reserved with no answer to come.
    pub async fn once<F, Fut>(
        self: &Arc<Self>,
        principal: &Principal,
        key: Option<IdempotencyKey>,
        work: F,
    ) -> Result<Answer, FlowError>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<Answer, FlowError>> + Send + 'static,
    {
        let madre = self.clone();
        let principal = principal.clone();
        crate::detached(async move { madre.once_here(&principal, key, work).await }).await
    }

    async fn once_here<F, Fut>(
        &self,
        principal: &Principal,
        key: Option<IdempotencyKey>,
        work: F,
    ) -> Result<Answer, FlowError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Answer, FlowError>>,
    {
        let Some(key) = key else {
            return work().await;
        };
        // Reserve, or wait (bounded) while another request holds the key;
        // if that one fails and frees it, this one takes it and runs.
        let deadline = tokio::time::Instant::now() + WAIT_FOR_FIRST;
        // This attempt's name on the reservation: only it may fill or free it.
        let owner = Uuid::now_v7();
        // A reservation older than any request can last was abandoned.
        let stale_after = self.wait_for_plan() + STALE_MARGIN;
        let held = &self.held_keys;
        loop {
            let now = Utc::now();
            let take_over = held.take_over(&principal.name, &key.key, stale_after, now);
            let reservation = self
                .db
                .reserve_idempotency_key(
                    &principal.name,
                    &key.key,
                    &key.request_hash,
                    owner,
                    now,
                    take_over,
                )
                .await?;
            match reservation {
                Reservation::Reserved => {
                    held.hold(&principal.name, &key.key, owner);
                    break;
                }
                Reservation::Done(stored) => return self.replay(principal, stored).await,
                Reservation::Mismatch => return Err(FlowError::IdempotencyKeyReused),
                Reservation::InProgress if tokio::time::Instant::now() >= deadline => {
                    return Err(FlowError::IdempotencyInProgress);
                }
                Reservation::InProgress => tokio::time::sleep(POLL).await,
            }
        }
        let outcome = work().await;
        let answered = self.answer_key(principal, &key, owner, outcome).await;
        held.let_go(&principal.name, &key.key, owner);
        answered
    }

    /// Stores the answer of the work `owner` ran for `key`, or frees the
    /// key when the work failed; answers the work's outcome.
    async fn answer_key(
        &self,
        principal: &Principal,
        key: &IdempotencyKey,
        owner: Uuid,
        outcome: Result<Answer, FlowError>,
    ) -> Result<Answer, FlowError> {
        match outcome {
            Ok(answer) => {
                let stored = StoredResponse {
                    request_hash: key.request_hash.clone(),
                    status_code: answer.status,
                    body: answer.body.clone(),
                    plan_id: answer.plan_id,
                };
                // The work ran: its answer goes back even if storage refuses
                // to keep it (a 503 now would invite a second run). The
                // reservation then lapses after the stale window.
                if let Err(e) = self
                    .db
                    .store_idempotent_response(&principal.name, &key.key, owner, stored)
                    .await
                {
                    tracing::error!(error = %e, "could not store an idempotent answer");
                }
                Ok(answer)
            }
            Err(e) => {
                if let Err(release) = self
                    .db
                    .release_idempotency_key(&principal.name, &key.key, owner)
                    .await
                {
                    tracing::error!(error = %release, "could not free an idempotency key");
                }
                Err(e)
            }
        }
    }

    /// The stored answer, with a fresh confirmation token when it is a
    /// WAITING answer whose plan still waits (the old token is voided).
    async fn replay(
        &self,
        principal: &Principal,
        stored: StoredResponse,
    ) -> Result<Answer, FlowError> {
        let mut body = stored.body;
        let waiting = matches!(
            body.get("status").and_then(Value::as_str),
            Some("WAITING" | "pending_confirmation")
        );
        if let (true, Some(plan_id)) = (waiting, stored.plan_id) {
            let now = Utc::now();
            let risk = self
                .db
                .run_blocking(move |db| db.confirmation(plan_id))
                .await?
                .map(|row| row.risk);
            if let Some(risk) = risk {
                let (token, row) = new_token(self, risk, principal, now)?;
                let reissued = self
                    .db
                    .reissue_confirmation(plan_id, row.token_sha256, row.expires_at, now)
                    .await?;
                if reissued {
                    body["confirm_token"] = json!(token.expose());
                    body["confirm_expires_at"] = json!(row.expires_at);
                    self.publish_requested_again(plan_id, token.expose(), row.expires_at)
                        .await;
                }
            }
        }
        Ok(Answer {
            status: stored.status_code,
            body,
            plan_id: stored.plan_id,
        })
    }
}

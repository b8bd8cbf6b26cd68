//! Stored answers for `Idempotency-Key` replays, per principal and key.

use crate::engine::sql::{Conn, OptionalExtension};
use chrono::{DateTime, Utc};
use rusqlite::params;
use serde_json::Value;
use uuid::Uuid;

use crate::time::ts;
use crate::{Db, DbError, Write};

/// A response remembered for a key. It never holds a confirmation token:
/// [`Db::store_idempotent_response`] strips `confirm_token` before writing.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredResponse {
    /// Hash of the request body, to tell a replay from a different request.
    pub request_hash: String,
    /// HTTP status of the first answer.
    pub status_code: u16,
    /// Body of the first answer.
    pub body: Value,
    /// The plan the answer is about, so a replay can hand out a fresh token
    /// while the plan still waits.
    pub plan_id: Option<Uuid>,
}

/// What reserving an `Idempotency-Key` found.
#[derive(Debug, Clone, PartialEq)]
pub enum Reservation {
    /// The key is new and now reserved for this request: run the work,
    /// then store its answer (or release the key if it failed).
    Reserved,
    /// The work already ran: replay this answer.
    Done(StoredResponse),
    /// Another request with this key is still running.
    InProgress,
    /// The key was used for a different request.
    Mismatch,
}

/// Which reservation of a key, made but never answered, a new request may
/// take over: its request died or outlived any request's time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TakeOver {
    /// None: the key's owner is known to be alive.
    Nothing,
    /// The one this owner holds: the process that made it knows, by its
    /// monotonic clock, that it outlived any request's time.
    Owner(Uuid),
    /// Any made before this time by the wall clock: its owner is not known
    /// to the caller (another process's, or one that died).
    MadeBefore(DateTime<Utc>),
}

/// Per-module settings of `madre_policies`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModulePolicy {
    /// The module.
    pub module: String,
    /// Errors tolerated before the module is considered failing.
    pub error_threshold: u32,
    /// Idle seconds before auto-suspend.
    pub idle_seconds: u32,
    /// Whether auto-suspend is on.
    pub enable_autosuspend: bool,
}

fn lookup(
    conn: &Conn<'_>,
    principal: &str,
    key: &str,
    request_hash: &str,
) -> Result<Reservation, DbError> {
    let row = conn
        .prepare_cached(
            "SELECT request_hash, status_code, response_json, plan_id FROM idempotency_keys
             WHERE principal = ?1 AND key = ?2",
        )?
        .query_row(params![principal, key], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, Option<u16>>(1)?,
                r.get::<_, Option<String>>(2)?,
                r.get::<_, Option<String>>(3)?,
            ))
        })
        .optional()?;
    let Some((hash, status, body, plan_id)) = row else {
        // Released or expired between the insert and this read.
        return Ok(Reservation::InProgress);
    };
    if hash != request_hash {
        return Ok(Reservation::Mismatch);
    }
    match (status, body) {
        (Some(status_code), Some(body)) => Ok(Reservation::Done(StoredResponse {
            request_hash: hash,
            status_code,
            body: serde_json::from_str(&body)?,
            plan_id: plan_id
                .as_deref()
                .map(Uuid::parse_str)
                .transpose()
                .map_err(|e| DbError::InvalidData(e.to_string()))?,
        })),
        _ => Ok(Reservation::InProgress),
    }
}

impl Db {
    /// Reserves (`principal`, `key`) for a request whose body hashes to
    /// `request_hash`, or says why not. The insert comes first, so of
    /// concurrent requests with one key exactly one gets
    /// [`Reservation::Reserved`] and runs. A reservation still without an
    /// answer that `take_over` names is taken over first: its request died
    /// without freeing it (a crash, or storage that refused the release),
    /// or outlived any request's time.
    ///
    /// `owner` names this attempt: only its owner may later store the
    /// answer or release the key, so a request whose reservation was taken
    /// over as stale can no longer touch the new owner's row (the work
    /// would otherwise run twice).
    pub fn reserve_idempotency_key(
        &self,
        principal: &str,
        key: &str,
        request_hash: &str,
        owner: Uuid,
        at: DateTime<Utc>,
        take_over: TakeOver,
    ) -> Write<Reservation> {
        let (principal, key, hash, owner) = (
            principal.to_owned(),
            key.to_owned(),
            request_hash.to_owned(),
            owner.to_string(),
        );
        self.write(move |conn| {
            match take_over {
                TakeOver::Nothing => 0,
                TakeOver::Owner(stale) => conn
                    .prepare_cached(
                        "DELETE FROM idempotency_keys
                         WHERE principal = ?1 AND key = ?2 AND response_json IS NULL AND owner = ?3",
                    )?
                    .execute(params![principal, key, stale.to_string()])?,
                TakeOver::MadeBefore(before) => conn
                    .prepare_cached(
                        "DELETE FROM idempotency_keys
                         WHERE principal = ?1 AND key = ?2 AND response_json IS NULL AND created_at < ?3",
                    )?
                    .execute(params![principal, key, ts(before)])?,
            };
            let inserted = conn
                .prepare_cached(
                    "INSERT INTO idempotency_keys (principal, key, request_hash, created_at, owner)
                     VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (principal, key) DO NOTHING",
                )?
                .execute(params![principal, key, hash, ts(at), owner])?;
            if inserted == 1 {
                return Ok(Reservation::Reserved);
            }
            lookup(conn, &principal, &key, &hash)
        })
    }

    /// What a replay of (`principal`, `key`) with `request_hash` would get
    /// now, read without writing.
    pub fn idempotency_key(
        &self,
        principal: &str,
        key: &str,
        request_hash: &str,
    ) -> Result<Reservation, DbError> {
        self.read(|conn| lookup(conn, principal, key, request_hash))
    }

    /// The request hash a key was first used with, if the key is known:
    /// to tell the caller what differed when a key is refused.
    pub fn idempotency_request_hash(
        &self,
        principal: &str,
        key: &str,
    ) -> Result<Option<String>, DbError> {
        self.read(|conn| {
            conn.prepare_cached(
                "SELECT request_hash FROM idempotency_keys WHERE principal = ?1 AND key = ?2",
            )?
            .query_row(params![principal, key], |r| r.get(0))
            .optional()
        })
    }

    /// Stores the answer of a key reserved by `owner`; a `confirm_token` in
    /// the body is dropped first. False when the key is not reserved by
    /// `owner` (it expired, was released, or was taken over meanwhile).
    pub fn store_idempotent_response(
        &self,
        principal: &str,
        key: &str,
        owner: Uuid,
        mut response: StoredResponse,
    ) -> Write<bool> {
        let (principal, key, owner) = (principal.to_owned(), key.to_owned(), owner.to_string());
        if let Some(body) = response.body.as_object_mut() {
            body.remove("confirm_token");
        }
        self.write(move |conn| {
            let n = conn
                .prepare_cached(
                    "UPDATE idempotency_keys SET status_code = ?3, response_json = ?4, plan_id = ?5
                     WHERE principal = ?1 AND key = ?2 AND request_hash = ?6 AND response_json IS NULL
                       AND owner = ?7",
                )?
                .execute(params![
                    principal,
                    key,
                    response.status_code,
                    serde_json::to_string(&response.body)?,
                    response.plan_id.map(|p| p.to_string()),
                    response.request_hash,
                    owner,
                ])?;
            Ok(n == 1)
        })
    }

    /// Frees a key `owner` reserved and whose work failed, so a retry runs
    /// it again. A key taken over by another owner meanwhile stays theirs.
    pub fn release_idempotency_key(&self, principal: &str, key: &str, owner: Uuid) -> Write<()> {
        let (principal, key, owner) = (principal.to_owned(), key.to_owned(), owner.to_string());
        self.write(move |conn| {
            conn.prepare_cached(
                "DELETE FROM idempotency_keys
                 WHERE principal = ?1 AND key = ?2 AND response_json IS NULL AND owner = ?3",
            )?
            .execute(params![principal, key, owner])?;
            Ok(())
        })
    }

    /// Frees every reservation still without an answer: at start-up, the
    /// process that held them is gone. Answers how many.
    pub fn release_abandoned_idempotency_keys(&self) -> Write<u64> {
        self.write(|conn| {
            let n = conn
                .prepare_cached("DELETE FROM idempotency_keys WHERE response_json IS NULL")?
                .execute(())?;
            Ok(n as u64)
        })
    }

    /// Sets (or replaces) a module's policy.
    pub fn set_module_policy(&self, policy: ModulePolicy) -> Write<()> {
        self.write(move |conn| {
            conn.prepare_cached(
                "INSERT INTO madre_policies (module, error_threshold, idle_seconds, enable_autosuspend)
                 VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (module) DO UPDATE SET error_threshold = excluded.error_threshold,
                     idle_seconds = excluded.idle_seconds, enable_autosuspend = excluded.enable_autosuspend",
            )?
            .execute(params![policy.module, policy.error_threshold, policy.idle_seconds, policy.enable_autosuspend])?;
            Ok(())
        })
    }

    /// Every module policy, by module name.
    pub fn module_policies(&self) -> Result<Vec<ModulePolicy>, DbError> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT module, error_threshold, idle_seconds, enable_autosuspend FROM madre_policies ORDER BY module",
            )?;
            let rows = stmt.query_map((), |r| {
                Ok(ModulePolicy { module: r.get(0)?, error_threshold: r.get(1)?, idle_seconds: r.get(2)?, enable_autosuspend: r.get(3)? })
            })?;
            rows.collect::<Result<_, _>>()
        })
    }
}

//! Stored answers for `Idempotency-Key` replays, per principal and key.

use chrono::{DateTime, Utc};
use rusqlite::{OptionalExtension, params};
use serde_json::Value;

use crate::time::ts;
use crate::{Db, DbError, Write};

/// A response remembered for a key.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredResponse {
    /// Hash of the request body, to tell a replay from a different request.
    pub request_hash: String,
    /// HTTP status of the first answer.
    pub status_code: u16,
    /// Body of the first answer.
    pub body: Value,
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

impl Db {
    /// The answer stored for (`principal`, `key`).
    pub fn idempotent_response(
        &self,
        principal: &str,
        key: &str,
    ) -> Result<Option<StoredResponse>, DbError> {
        self.read(|conn| {
            let row = conn
                .prepare_cached(
                    "SELECT request_hash, status_code, response_json FROM idempotency_keys
                     WHERE principal = ?1 AND key = ?2",
                )?
                .query_row(params![principal, key], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, u16>(1)?,
                        r.get::<_, String>(2)?,
                    ))
                })
                .optional()?;
            row.map(|(request_hash, status_code, body)| {
                Ok(StoredResponse {
                    request_hash,
                    status_code,
                    body: serde_json::from_str(&body)?,
                })
            })
            .transpose()
        })
    }

    /// Remembers the answer for (`principal`, `key`); false when one was
    /// already stored (the first one stays).
    pub fn store_idempotent_response(
        &self,
        principal: &str,
        key: &str,
        response: StoredResponse,
        at: DateTime<Utc>,
    ) -> Write<bool> {
        let (principal, key) = (principal.to_owned(), key.to_owned());
        self.write(move |conn| {
            let n = conn
                .prepare_cached(
                    "INSERT OR IGNORE INTO idempotency_keys (principal, key, request_hash, status_code, response_json, created_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )?
                .execute(params![principal, key, response.request_hash, response.status_code, serde_json::to_string(&response.body)?, ts(at)])?;
            Ok(n == 1)
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
            let rows = stmt.query_map([], |r| {
                Ok(ModulePolicy { module: r.get(0)?, error_threshold: r.get(1)?, idle_seconds: r.get(2)?, enable_autosuspend: r.get(3)? })
            })?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
    }
}

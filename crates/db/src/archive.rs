//! Retention with archives (issue 25): finished plans older than the
//! retention period move out of the database into daily archives beside
//! it, `archive/plans-YYYY-MM-DD.jsonl.gz`: gzip-compressed JSON lines, one
//! plan a line holding every row of it (its `plans` row, its journal, its
//! intent-log row, its audit rows and its confirmation), synced to disk
//! before any of those rows is deleted.
//!
//! Exactly once per plan, across crashes, in three steps a batch:
//! 1. one commit marks the batch's plans in `archived_plans`, not yet
//!    written, and reads their rows;
//! 2. their lines are appended to the archive (one gzip member) and synced;
//! 3. one commit opens `archive_gate` for them, deletes their rows, closes
//!    the gate and marks them written.
//!
//! A pass that finds plans marked but not written (a crash came between 1
//! and 3) reads what their batch appended (from the archive's length when
//! they were marked, kept with them), appends only the plans missing from
//! it, and deletes. A batch whose append was torn by the crash (half a gzip
//! member at the end) is cut back to where it began and written whole. An append that fails (a full disk) is cut back to where the
//! file was and stops the pass: the rows stay. An archive that cannot be
//! read is reported by name and its plans wait, with their rows, for a pass
//! that can read it. Only the writer's commits hold the writer: the file is
//! written between them.

use crate::engine::sql::Conn;
use chrono::{DateTime, SecondsFormat, Utc};
use rusqlite::types::Value as SqlValue;
use rusqlite::{ToSql, params};
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write as _};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use uuid::Uuid;

use crate::time::ts;
use crate::{Db, DbError};

/// What one archival pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ArchiveReport {
    /// Plans moved out of the database.
    pub plans: u64,
    /// Compressed bytes appended to archives.
    pub bytes: u64,
}

/// A plan chosen for the archive: its row id, id and intent.
#[derive(Debug, Clone)]
struct Candidate {
    row: i64,
    uuid: String,
    intent_id: Option<String>,
}

/// The archive a plan archived at `at` goes to.
pub fn archive_name(at: DateTime<Utc>) -> String {
    format!("plans-{}.jsonl.gz", at.format("%Y-%m-%d"))
}

/// The archive directory beside a database file.
pub fn archive_dir(database: &Path) -> PathBuf {
    database
        .parent()
        .map_or_else(|| PathBuf::from("archive"), |dir| dir.join("archive"))
}

fn archive_error(path: &Path, detail: impl std::fmt::Display) -> DbError {
    DbError::Archive {
        path: path.display().to_string(),
        detail: detail.to_string(),
    }
}

/// Every line of an archive, in order. A file that is not whole gzip or
/// whose lines are not JSON is refused, naming it.
pub fn read_archive(path: &Path) -> Result<Vec<Value>, DbError> {
    let file = File::open(path).map_err(|e| archive_error(path, e))?;
    let reader = BufReader::new(flate2::read::MultiGzDecoder::new(BufReader::new(file)));
    reader
        .lines()
        .map(|line| {
            let line = line.map_err(|e| archive_error(path, e))?;
            serde_json::from_str(&line).map_err(|e| archive_error(path, e))
        })
        .collect()
}

/// The plan ids an interrupted batch got into its archive: the lines from
/// `offset` (the archive's length when the batch was marked; the whole
/// file when unknown) to the end. A tail that does not decode was torn by
/// the crash: the file is cut back to `offset` and nothing of the batch
/// counts as written.
fn batch_lines(path: &Path, offset: Option<u64>) -> Result<HashSet<String>, DbError> {
    let Ok(meta) = std::fs::metadata(path) else {
        return Ok(HashSet::new());
    };
    let ids = |lines: Vec<Value>| -> HashSet<String> {
        lines
            .iter()
            .filter_map(|l| l["plan_id"].as_str().map(str::to_owned))
            .collect()
    };
    let Some(offset) = offset else {
        return read_archive(path).map(ids);
    };
    if meta.len() <= offset {
        return Ok(HashSet::new());
    }
    let mut file = File::open(path).map_err(|e| archive_error(path, e))?;
    std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(offset))
        .map_err(|e| archive_error(path, e))?;
    let tail = BufReader::new(flate2::read::MultiGzDecoder::new(BufReader::new(file)));
    let decoded: Result<Vec<Value>, String> = tail
        .lines()
        .map(|line| {
            let line = line.map_err(|e| e.to_string())?;
            serde_json::from_str(&line).map_err(|e| e.to_string())
        })
        .collect();
    match decoded {
        Ok(lines) => Ok(ids(lines)),
        Err(why) => {
            tracing::warn!(archive = %path.display(), offset, %why, "cutting the torn end of an interrupted append");
            let file = OpenOptions::new()
                .write(true)
                .open(path)
                .map_err(|e| archive_error(path, e))?;
            file.set_len(offset)
                .and_then(|()| file.sync_all())
                .map_err(|e| archive_error(path, e))?;
            Ok(HashSet::new())
        }
    }
}

/// The rows `sql` selects, each as a JSON object by column name; columns
/// named `*_json` hold JSON and are kept as such.
fn rows_as_json(conn: &Conn<'_>, sql: &str, args: &[&dyn ToSql]) -> Result<Vec<Value>, DbError> {
    let mut out = Vec::new();
    conn.prepare_cached(sql)?.for_each_row(args, |row| {
        let mut object = Map::new();
        for i in 0..row.len() {
            let name = row.name(i)?;
            let value = match row.value(i)? {
                SqlValue::Null => Value::Null,
                // Times are written in the archive as the API shows them.
                SqlValue::Integer(n) if name.ends_with("_at") => {
                    match crate::time::from_micros(n) {
                        Some(at) => json!(at.to_rfc3339_opts(SecondsFormat::Micros, true)),
                        None => json!(n),
                    }
                }
                SqlValue::Integer(n) => json!(n),
                SqlValue::Real(x) => json!(x),
                SqlValue::Text(text) => match name.ends_with("_json") {
                    true => serde_json::from_str(&text).unwrap_or(Value::String(text)),
                    false => Value::String(text),
                },
                SqlValue::Blob(bytes) => json!(bytes),
            };
            object.insert(name, value);
        }
        out.push(Value::Object(object));
        Ok(true)
    })?;
    Ok(out)
}

/// The archive line of one plan: every row of it.
fn plan_line(conn: &Conn<'_>, plan: &Candidate, at: DateTime<Utc>) -> Result<Value, DbError> {
    let one = |rows: Vec<Value>| rows.into_iter().next().unwrap_or(Value::Null);
    let mut events = rows_as_json(
        conn,
        "SELECT e.seq, e.plan, e.type, e.step, e.payload_json, e.principal,
                (SELECT r.name FROM replicas r WHERE r.id = e.replica) AS replica, e.created_at
         FROM plan_events e WHERE e.plan = ?1 ORDER BY e.seq",
        &[&plan.row],
    )?;
    // An archive line stands alone: types and replicas by name, a body
    // stored by its shape written out whole.
    for event in &mut events {
        if let Some(name) = event["type"]
            .as_i64()
            .and_then(crate::event_codes::type_of_code)
        {
            event["type"] = json!(name.as_str());
        }
        if event["type"] == "plan_created" {
            let payload = event["payload_json"].take();
            event["payload_json"] = crate::shapes::expand(conn, payload)?;
        }
    }
    Ok(json!({
        "plan_id": plan.uuid,
        "archived_at": at,
        "plan": one(rows_as_json(conn, "SELECT * FROM plans WHERE id = ?1", &[&plan.row])?),
        "events": events,
        "intent": match &plan.intent_id {
            Some(id) => one(rows_as_json(conn, "SELECT * FROM intents_log WHERE id = ?1", &[id])?),
            None => Value::Null,
        },
        "actions": actions_of(conn, plan)?,
        "confirmation": one(rows_as_json(conn, "SELECT * FROM confirmations WHERE plan_id = ?1", &[&plan.uuid])?),
    }))
}

/// The audit trail of an archived plan as the plan detail showed it: its
/// creation, read from its journal (id 0, for a plan made since schema
/// 12), then its stored rows.
fn actions_of(conn: &Conn<'_>, plan: &Candidate) -> Result<Vec<Value>, DbError> {
    let created = Uuid::parse_str(&plan.uuid)
        .ok()
        .map(|id| crate::audit::creation_entry(conn, id))
        .transpose()?
        .flatten();
    let mut actions: Vec<Value> = created
        .into_iter()
        .map(|entry| {
            json!({
                "id": entry.id,
                "module": entry.module,
                "action": entry.action,
                "reason": entry.reason,
                "principal": entry.principal,
                "plan_id": plan.uuid,
                "created_at": entry.created_at.to_rfc3339_opts(SecondsFormat::Micros, true),
            })
        })
        .collect();
    actions.extend(rows_as_json(
        conn,
        "SELECT * FROM madre_actions WHERE plan_id = ?1 ORDER BY id",
        &[&plan.uuid],
    )?);
    Ok(actions)
}

/// The plans of `uuids` still in the database.
fn still_stored(conn: &Conn<'_>, uuids: &[String]) -> Result<Vec<Candidate>, DbError> {
    let mut stmt = conn.prepare_cached("SELECT id, uuid, intent_id FROM plans WHERE uuid = ?1")?;
    let mut found = Vec::new();
    for uuid in uuids {
        stmt.for_each_row([uuid], |r| {
            found.push(Candidate {
                row: r.get(0)?,
                uuid: r.get(1)?,
                intent_id: r.get(2)?,
            });
            Ok(false)
        })?;
    }
    Ok(found)
}

/// Finished plans made before `?1` (a UUID v7 bound), last changed before
/// `?2`, not yet marked; at most `?3`, oldest first. The plan holding the
/// journal's newest event stays until a newer event comes: deleting that
/// event would let SQLite hand its `seq` out again, and readers of the
/// event stream resume by `seq`.
pub(crate) const ARCHIVE_CANDIDATES: &str = "SELECT id, uuid, intent_id FROM plans
     WHERE uuid < ?1 AND status NOT IN ('PENDING', 'WAITING', 'RUNNING') AND updated_at < ?2
       AND NOT EXISTS (SELECT 1 FROM archived_plans a WHERE a.uuid = plans.uuid)
       AND id IS DISTINCT FROM (SELECT plan FROM plan_events WHERE seq = (SELECT max(seq) FROM plan_events))
     ORDER BY uuid LIMIT ?3";

/// Chooses up to `batch` finished plans last changed before `cutoff`, not
/// yet marked, and marks them for `archive`. Plans ids are UUID v7, so the
/// ids made before the cutoff are a range of the uuid index: the search
/// never walks newer plans.
fn mark_batch(
    conn: &Conn<'_>,
    cutoff: DateTime<Utc>,
    batch: usize,
    archive: &str,
    at_offset: u64,
    at: DateTime<Utc>,
) -> Result<Vec<Candidate>, DbError> {
    let bound = uuid::Uuid::new_v7(uuid::Timestamp::from_unix(
        uuid::NoContext,
        u64::try_from(cutoff.timestamp()).unwrap_or(0),
        cutoff.timestamp_subsec_nanos(),
    ))
    .to_string();
    let mut stmt = conn.prepare_cached(ARCHIVE_CANDIDATES)?;
    let chosen = stmt
        .query_map(params![bound, ts(cutoff), batch as i64], |r| {
            Ok(Candidate {
                row: r.get(0)?,
                uuid: r.get(1)?,
                intent_id: r.get(2)?,
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    let mut mark = conn.prepare_cached(
        "INSERT INTO archived_plans (uuid, archive, archived_at, written, at_offset)
         VALUES (?1, ?2, ?3, 0, ?4)",
    )?;
    let at_offset = i64::try_from(at_offset).unwrap_or(i64::MAX);
    for plan in &chosen {
        mark.execute(params![plan.uuid, archive, ts(at), at_offset])?;
    }
    Ok(chosen)
}

/// Deletes the rows of `plans` (their lines are in their archive) through
/// the archive gate, and marks them written.
fn delete_archived(conn: &Conn<'_>, plans: &[Candidate]) -> Result<(), DbError> {
    open_gate(conn, plans)?;
    for plan in plans {
        let status: String = conn
            .prepare_cached("SELECT status FROM plans WHERE id = ?1")?
            .query_row([plan.row], |r| r.get(0))?;
        // The turns read the plan's journal and intent: settled first.
        crate::sessions::settle_turns_of(conn, plan.row)?;
        conn.prepare_cached("DELETE FROM plan_events WHERE plan = ?1")?
            .execute([plan.row])?;
        conn.prepare_cached("DELETE FROM madre_actions WHERE plan_id = ?1")?
            .execute([&plan.uuid])?;
        conn.prepare_cached("DELETE FROM confirmations WHERE plan_id = ?1")?
            .execute([&plan.uuid])?;
        if let Some(intent) = &plan.intent_id {
            conn.prepare_cached("DELETE FROM intents_log WHERE id = ?1")?
                .execute([intent])?;
        }
        conn.prepare_cached("DELETE FROM plans WHERE id = ?1")?
            .execute([plan.row])?;
        conn.prepare_cached("UPDATE plan_status_counts SET n = n - 1 WHERE status = ?1 AND n > 0")?
            .execute([status])?;
        conn.prepare_cached("UPDATE archived_plans SET written = 1 WHERE uuid = ?1")?
            .execute([&plan.uuid])?;
    }
    close_gate(conn)
}

/// Lets the append-only tables' triggers take the deletes of `plans`: on
/// SQLite by listing them in `archive_gate`, on PostgreSQL by the
/// transaction-local setting `madre.archiving` its triggers read (set
/// and reset inside this write, so no other write of the batch has it).
fn open_gate(conn: &Conn<'_>, plans: &[Candidate]) -> Result<(), DbError> {
    if conn.is_postgres() {
        conn.prepare_cached("SELECT set_config('madre.archiving', 'on', true)")?
            .execute(())?;
        return Ok(());
    }
    let mut open = conn.prepare_cached(
        "INSERT INTO archive_gate (plan_row, plan_uuid, intent_id) VALUES (?1, ?2, ?3)",
    )?;
    for plan in plans {
        open.execute(params![plan.row, plan.uuid, plan.intent_id])?;
    }
    Ok(())
}

/// Closes what [`open_gate`] opened.
fn close_gate(conn: &Conn<'_>) -> Result<(), DbError> {
    let close = if conn.is_postgres() {
        "SELECT set_config('madre.archiving', 'off', true)"
    } else {
        "DELETE FROM archive_gate"
    };
    conn.prepare_cached(close)?.execute(())?;
    Ok(())
}

/// Appends `lines` to the archive at `path` as one gzip member and syncs
/// it (and, for a new file, its directory). On failure the file is cut
/// back to its length before: it never keeps half a member. Answers the
/// bytes appended.
fn append_lines(path: &Path, lines: &[Value]) -> Result<u64, DbError> {
    // The fast level: the archiver must keep up with the chats, and JSON
    // of one shape compresses well at any level.
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    for line in lines {
        serde_json::to_writer(&mut encoder, line)?;
        encoder
            .write_all(b"\n")
            .map_err(|e| archive_error(path, e))?;
    }
    let member = encoder.finish().map_err(|e| archive_error(path, e))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| archive_error(dir, e))?;
    let new = !path.exists();
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| archive_error(path, e))?;
    let before = file.metadata().map_err(|e| archive_error(path, e))?.len();
    let written = file.write_all(&member).and_then(|()| file.sync_all());
    if let Err(e) = written {
        if let Err(cut) = file.set_len(before).and_then(|()| file.sync_all()) {
            tracing::error!(archive = %path.display(), error = %cut, "could not cut a failed append back");
        }
        return Err(archive_error(path, e));
    }
    if new {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| archive_error(dir, e))?;
    }
    Ok(member.len() as u64)
}

impl Db {
    /// Moves finished plans last changed before `cutoff` into the archives
    /// under `dir`, `batch` plans a commit, batch after batch until none is
    /// left or `until` has passed, first finishing any batch a crash
    /// interrupted. WAITING, RUNNING and PENDING plans are never archived.
    /// Blocking: call it off the async executor.
    pub fn archive_finished_plans(
        &self,
        dir: &Path,
        cutoff: DateTime<Utc>,
        batch: usize,
        until: std::time::Instant,
        now: DateTime<Utc>,
    ) -> Result<ArchiveReport, DbError> {
        let (mut report, unsettled) = self.finish_interrupted(dir, now)?;
        let archive = archive_name(now);
        let path = dir.join(&archive);
        if unsettled.contains(&archive) {
            // Nothing goes behind a batch that is not settled: cutting its
            // torn end later would cut what came after it too.
            tracing::warn!(archive = %path.display(), "an interrupted batch of this archive could not be settled; archiving waits");
            return Ok(report);
        }
        while std::time::Instant::now() < until {
            let name = archive.clone();
            let offset = std::fs::metadata(&path).map_or(0, |m| m.len());
            let chosen = self
                .write(move |conn| {
                    let chosen = mark_batch(conn, cutoff, batch.max(1), &name, offset, now)?;
                    let lines = chosen
                        .iter()
                        .map(|plan| plan_line(conn, plan, now))
                        .collect::<Result<Vec<_>, _>>()?;
                    Ok((chosen, lines))
                })
                .wait()?;
            let (plans, lines) = chosen;
            if plans.is_empty() {
                break;
            }
            report.bytes += append_lines(&path, &lines)?;
            let count = plans.len();
            self.write(move |conn| delete_archived(conn, &plans))
                .wait()?;
            report.plans += count as u64;
            if count < batch.max(1) {
                break;
            }
        }
        Ok(report)
    }

    /// Finishes batches a crash left between their mark and their delete:
    /// appends the plans their archive lacks, then deletes their rows.
    /// Answers also the archives whose batches could not be settled now.
    fn finish_interrupted(
        &self,
        dir: &Path,
        now: DateTime<Utc>,
    ) -> Result<(ArchiveReport, HashSet<String>), DbError> {
        let pending: Vec<(String, String, Option<i64>)> = self.read(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT uuid, archive, at_offset FROM archived_plans WHERE written = 0",
            )?;
            let rows = stmt.query_map((), |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
            rows.collect::<Result<Vec<_>, _>>()
        })?;
        let mut by_batch: BTreeMap<(String, Option<i64>), Vec<String>> = BTreeMap::new();
        for (uuid, archive, offset) in pending {
            by_batch.entry((archive, offset)).or_default().push(uuid);
        }
        let mut report = ArchiveReport::default();
        let mut unsettled = HashSet::new();
        for ((archive, offset), uuids) in by_batch {
            let path = dir.join(&archive);
            let offset = offset.map(|o| o.max(0) as u64);
            let present = match batch_lines(&path, offset) {
                Ok(present) => present,
                Err(e) => {
                    tracing::error!(archive = %path.display(), error = %e, "archive unreadable: its interrupted plans keep their rows");
                    unsettled.insert(archive);
                    continue;
                }
            };
            let (plans, missing) = self
                .write(move |conn| {
                    let plans = still_stored(conn, &uuids)?;
                    let missing = plans
                        .iter()
                        .filter(|p| !present.contains(&p.uuid))
                        .map(|p| plan_line(conn, p, now))
                        .collect::<Result<Vec<_>, _>>()?;
                    // A plan marked but no longer stored was deleted with
                    // its batch: only its mark was left.
                    let gone: Vec<&String> = uuids
                        .iter()
                        .filter(|u| !plans.iter().any(|p| &p.uuid == *u))
                        .collect();
                    for uuid in gone {
                        conn.prepare_cached(
                            "UPDATE archived_plans SET written = 1 WHERE uuid = ?1",
                        )?
                        .execute([uuid])?;
                    }
                    Ok((plans, missing))
                })
                .wait()?;
            if !missing.is_empty() {
                report.bytes += append_lines(&path, &missing)?;
            }
            let count = plans.len() as u64;
            if count > 0 {
                self.write(move |conn| delete_archived(conn, &plans))
                    .wait()?;
            }
            report.plans += count;
        }
        Ok((report, unsettled))
    }

    /// The archive a plan was moved to, if it was.
    pub fn archived_plan(&self, plan_id: uuid::Uuid) -> Result<Option<String>, DbError> {
        self.read(|conn| {
            use crate::engine::sql::OptionalExtension;
            conn.prepare_cached(
                "SELECT archive FROM archived_plans WHERE uuid = ?1 AND written = 1",
            )?
            .query_row([plan_id.to_string()], |r| r.get(0))
            .optional()
        })
    }
}

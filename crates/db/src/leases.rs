//! Plan leases (SPEC §16): a PENDING or RUNNING plan is held by the
//! replica executing it (`plans.owner`) until `plans.lease_expires_at`. The
//! holder renews its leases while it runs; a plan whose lease lapsed (its
//! replica died, or stalls) is taken over by another replica, which
//! resumes it, each step again with its `Idempotency-Key`. The lease is
//! written by the statements that write the plan anyway (its creation,
//! and each change of its status): a chat pays no statement for it.
//!
//! On PostgreSQL an event of a plan's execution is appended only by the
//! plan's holder: the append reads the plan's holder in its transaction,
//! and every replica's writer holds the database's write lock for its
//! whole transaction, so a takeover and the old holder's appends come one
//! after the other, never both. On SQLite one process writes the file, and
//! the same code runs with one replica (whose name changes with each start
//! unless `MADRE_REPLICA_ID` is set, so a restart takes its RUNNING plans
//! over from the process before, with the event).
//!
//! Leases go by each replica's wall clock: replicas' clocks must agree to
//! well within a lease (NTP does). A database unreachable for longer than
//! a lease lets every lease lapse; the first replica back may then take
//! over plans another still runs, whose next append is refused, so each
//! step is called at most twice, both times with its `Idempotency-Key`.

use chrono::Utc;
use uuid::Uuid;

use crate::engine::sql::{Conn, OptionalExtension};
use crate::journal::{self, PlanEvent};
use crate::{Db, DbError, Event, Write};

/// What [`Db::take_plan`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Taken {
    /// This replica holds the plan now. `from` names the replica whose
    /// lease lapsed when the plan was RUNNING under it (event
    /// `plan_taken_over`), `None` when the plan was nobody's or already
    /// this replica's.
    Taken {
        /// The replica the plan was taken from.
        from: Option<String>,
    },
    /// Another replica holds the plan and its lease runs.
    HeldElsewhere {
        /// That replica.
        by: String,
    },
    /// The plan is not PENDING or RUNNING (it waits, or ended), or is
    /// unknown: there is nothing to execute.
    NotOpen,
}

/// The open plans (PENDING, RUNNING) whose lease lapsed, or that nobody
/// holds, oldest first, through the index of open plans.
const LAPSED: &str = "SELECT uuid FROM plans
     WHERE (status = 'PENDING' OR status = 'RUNNING')
       AND (owner IS NULL OR lease_expires_at < ?1)
     ORDER BY id";

/// The advisory lock whose holder runs the cleanup (PostgreSQL): "madre"
/// and 1 in ASCII, beside the migration's.
const CLEANUP_LOCK: i64 = 0x6d_61_64_72_65_31;

impl Db {
    /// Whether this replica runs the cleanup (SPEC §16: one replica at a
    /// time). On SQLite, always. On PostgreSQL, the replica holding a
    /// session-level advisory lock on a session of its own: the first to
    /// ask keeps the turn while it lives, and when its session ends (the
    /// replica died) the next to ask has it. Blocking.
    pub fn hold_cleanup_turn(&self) -> Result<bool, DbError> {
        let Some(server) = &self.postgres else {
            return Ok(true);
        };
        let mut session = self
            .cleanup_session
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if session
            .as_ref()
            .is_none_or(crate::engine::sql::PgConn::is_closed)
        {
            *session = Some(crate::engine::sql::PgConn::connect(server)?);
        }
        let Some(session) = session.as_ref() else {
            return Ok(false);
        };
        // Asked again by its holder, the lock is granted again (it counts
        // up; all of it goes with the session).
        Conn::Pg(session).query_row("SELECT pg_try_advisory_lock(?1)", [CLEANUP_LOCK], |r| {
            r.get(0)
        })
    }

    /// Sets how long a plan this replica executes stays its own without a
    /// renewal (`MADRE_PLAN_LEASE_S`; 15 s unless set). Renew more often
    /// than that ([`Db::renew_plan_leases`]): a third of it is the rule.
    pub fn set_plan_lease(&self, lease: std::time::Duration) {
        self.replica.set_lease(lease);
    }

    /// Renews the lease of every open plan this replica holds, in one
    /// statement; answers how many it renewed.
    pub fn renew_plan_leases(&self) -> Write<u64> {
        let replica = self.replica.clone();
        self.write(move |conn| journal::renew_leases(conn, &replica))
    }

    /// The open plans no live replica holds: their lease lapsed, or they
    /// have no holder (open before leases existed). Oldest first.
    pub fn plans_with_lapsed_leases(&self) -> Result<Vec<Uuid>, DbError> {
        self.read(|conn| {
            let ids = conn
                .prepare_cached(LAPSED)?
                .query_map([Utc::now().timestamp_micros()], |r| r.get::<_, String>(0))?
                .collect::<Result<Vec<_>, _>>()?;
            ids.iter()
                .map(|id| {
                    Uuid::parse_str(id)
                        .map_err(|_| DbError::InvalidData(format!("bad uuid {id:?}")))
                })
                .collect()
        })
    }

    /// Lets go of a plan this replica took but cannot run now (no room):
    /// nobody holds it, and the next lease round of any replica takes it.
    pub fn release_plan(&self, plan_id: Uuid) -> Write<()> {
        let replica = self.replica.clone();
        self.write(move |conn| journal::release(conn, plan_id, &replica))
    }

    /// Takes the lease of an open plan for this replica, before executing
    /// it: when nobody holds it, this replica does, or its holder's lease
    /// lapsed; or whoever holds it when `force` (a start on SQLite, where
    /// no other process writes the file). A RUNNING plan taken from
    /// another replica gets the event `plan_taken_over`.
    pub fn take_plan(&self, plan_id: Uuid, force: bool) -> Write<Taken> {
        let replica = self.replica.clone();
        self.write(move |conn| {
            // The row is locked until the commit on PostgreSQL: two replicas
            // taking one plan come one after the other.
            let lock = if conn.is_postgres() {
                "SELECT id, status, owner, lease_expires_at FROM plans WHERE uuid = ?1 FOR UPDATE"
            } else {
                "SELECT id, status, owner, lease_expires_at FROM plans WHERE uuid = ?1"
            };
            let found: Option<(i64, String, Option<i64>, Option<i64>)> = conn
                .prepare_cached(lock)?
                .query_row([plan_id.to_string()], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
                })
                .optional()?;
            let Some((row, status, owner, until)) = found else {
                return Ok(Taken::NotOpen);
            };
            if status != "PENDING" && status != "RUNNING" {
                return Ok(Taken::NotOpen);
            }
            let other = owner.filter(|o| *o != replica.id);
            let running = until.is_some_and(|u| u >= Utc::now().timestamp_micros());
            if let Some(other) = other
                && running
                && !force
            {
                return Ok(Taken::HeldElsewhere {
                    by: journal::replica_name(conn, other)?,
                });
            }
            journal::hold(conn, row, &replica)?;
            let from = match other {
                Some(other) if status == "RUNNING" => {
                    let name = journal::replica_name(conn, other)?;
                    let taken = PlanEvent::new(Event::PlanTakenOver, Utc::now())
                        .result(serde_json::json!({ "from": name, "by": replica.name }));
                    journal::append(conn, plan_id, &[taken], &replica)?;
                    Some(name)
                }
                _ => None,
            };
            Ok(Taken::Taken { from })
        })
    }
}

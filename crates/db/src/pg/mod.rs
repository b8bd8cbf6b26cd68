//! The PostgreSQL backend (SPEC §16): its numbered migrations and its
//! pool of sessions. The statements themselves are the repository's,
//! shared with SQLite through `crate::engine::sql`. A PostgreSQL database holds the same data model as
//! the SQLite file (docs/postgresql-schema.md is its DDL, and a test holds
//! the two to each other), at the same version numbers: the migration to
//! version `n` here is the twin of SQLite's migration `n`, so a database
//! of either kind at version `n` holds the same tables and columns. A new
//! PostgreSQL database starts at the version its first migration names;
//! there are no older PostgreSQL databases to upgrade.
//!
//! The driver is `tokio-postgres`, each session driven by a small runtime
//! of its own so that the repository keeps blocking connections behind one
//! writer thread and a pool of readers (r2d2's, with [`PgManager`] here, as
//! rusqlite's for SQLite); the writer sends a transaction's statements
//! together (see `crate::engine::sql::PgConn`). Migrations run once, on
//! the blocking `postgres` client.

use postgres::{Client, NoTls};
use std::time::Duration;

use crate::engine::sql::{PgConn, PgServer};
use crate::{DbError, SCHEMA_VERSION, StorageFault};

/// How long a reader waits for a session before the read answers that
/// the server cannot be reached.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Opens the pool's sessions; a session the server or the network closed
/// is dropped from the pool and a new one opened on demand.
pub(crate) struct PgManager(pub(crate) std::sync::Arc<PgServer>);

impl r2d2::ManageConnection for PgManager {
    type Connection = PgConn;
    type Error = DbError;

    fn connect(&self) -> Result<PgConn, DbError> {
        PgConn::connect(&self.0)
    }

    fn is_valid(&self, conn: &mut PgConn) -> Result<(), DbError> {
        conn.ping()
    }

    fn has_broken(&self, conn: &mut PgConn) -> bool {
        conn.is_closed()
    }
}

/// A reader that could not be had: the server cannot be reached (the
/// pool's last attempt to open a session failed), or every session was in
/// use for the whole wait (overload, not an outage).
pub(crate) fn pool_error(e: r2d2::Error) -> DbError {
    let reason = match e.to_string().contains("timed out waiting for connection:") {
        true => StorageFault::Unreachable,
        false => StorageFault::Busy,
    };
    DbError::Unavailable {
        reason,
        detail: e.to_string(),
    }
}

/// Checks that `url` is a PostgreSQL connection string (a `postgres://`
/// or `postgresql://` URL, or `key=value` pairs) without connecting: for
/// a setting checked at start. The error names what is wrong, never the
/// string itself (it may hold a password).
pub fn check_postgres_url(url: &str) -> Result<(), String> {
    let url = url.trim();
    let looks_like_one =
        url.starts_with("postgres://") || url.starts_with("postgresql://") || url.contains('=');
    if !looks_like_one {
        return Err("is not a postgres:// URL or key=value connection string".into());
    }
    let config = url
        .parse::<postgres::Config>()
        .map_err(|e| format!("is not a PostgreSQL connection string: {e}"))?;
    if config.get_ssl_mode() == postgres::config::SslMode::Require {
        return Err(
            "asks for TLS (sslmode=require), which Madre does not speak yet: \
                    reach the database over a unix socket or a trusted network"
                .into(),
        );
    }
    Ok(())
}

/// The connection settings in `url` (a `postgres://` URL or a
/// `key=value` string), with the timeout Madre uses.
pub(crate) fn config(url: &str) -> Result<tokio_postgres::Config, DbError> {
    let mut config: tokio_postgres::Config = url
        .parse()
        .map_err(|e: postgres::Error| DbError::Postgres(format!("bad connection string: {e}")))?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    if config.get_application_name().is_none() {
        config.application_name("madre");
    }
    // A replica cut off from the database, or frozen, must not hold the
    // writers' lock (or its rows) for ever: the kernel notices a dead peer
    // within about half a minute, and the server ends a session idle
    // inside a transaction after SESSION_IDLE_IN_TRANSACTION (a writer's
    // transaction lasts milliseconds).
    config
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(10))
        .tcp_user_timeout(Duration::from_secs(20));
    let idle = format!(
        "-c idle_in_transaction_session_timeout={}",
        SESSION_IDLE_IN_TRANSACTION.as_millis()
    );
    let options = match config.get_options() {
        Some(theirs) => format!("{theirs} {idle}"),
        None => idle,
    };
    config.options(&options);
    Ok(config)
}

/// How long the server lets a session sit idle inside a transaction before
/// it ends the session (and its locks).
const SESSION_IDLE_IN_TRANSACTION: Duration = Duration::from_secs(15);

/// The schema a fresh database is created with, whole, and its version
/// (docs/postgresql-schema.md holds its text).
const CREATE: (i64, &str) = (18, include_str!("schema_18.sql"));

/// The upgrades of a database made by an earlier version, each with the
/// version it brings the database to, in order; the first PostgreSQL
/// schema was 17.
const UPGRADES: &[(i64, &str)] = &[(18, include_str!("upgrade_18.sql"))];

/// The version this code creates and understands: SQLite's.
pub const POSTGRES_SCHEMA_VERSION: i64 = CREATE.0;

/// Serializes migrations across replicas starting together (an advisory
/// lock held for the migration's transaction): "madre" in ASCII.
const MIGRATION_LOCK: i64 = 0x6d_61_64_72_65;

/// Brings the PostgreSQL database at `url` (a `postgres://` URL or a
/// `key=value` connection string) to [`POSTGRES_SCHEMA_VERSION`], in one
/// transaction, and answers the version it is at. A database with other
/// tables and no Madre schema, or one a newer Madre wrote, is refused and
/// left as it was.
pub fn migrate_postgres(url: &str) -> Result<i64, DbError> {
    let mut client = Client::connect(url, NoTls)?;
    migrate_client(&mut client)
}

pub(crate) fn migrate_client(client: &mut Client) -> Result<i64, DbError> {
    let mut tx = client.transaction()?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])?;
    let ours: bool = tx
        .query_one("SELECT to_regclass('madre_schema') IS NOT NULL", &[])?
        .get(0);
    let found = if ours {
        let row = tx.query_one("SELECT application, version FROM madre_schema", &[])?;
        let application: String = row.get(0);
        let version: i64 = row.get(1);
        if application != "madre" {
            return Err(DbError::NotMadrePostgres {
                database: database_name(&mut tx)?,
                tables: "madre_schema".into(),
            });
        }
        version
    } else {
        let others: Vec<String> = tx
            .query(
                "SELECT table_name::text FROM information_schema.tables
                 WHERE table_schema = current_schema() ORDER BY 1 LIMIT 5",
                &[],
            )?
            .iter()
            .map(|r| r.get(0))
            .collect();
        if !others.is_empty() {
            return Err(DbError::NotMadrePostgres {
                database: database_name(&mut tx)?,
                tables: others.join(", "),
            });
        }
        0
    };
    if found > POSTGRES_SCHEMA_VERSION {
        return Err(DbError::SchemaTooNew {
            path: database_name(&mut tx)?,
            found,
            supported: POSTGRES_SCHEMA_VERSION,
        });
    }
    if found == 0 {
        tx.batch_execute(CREATE.1)?;
    } else {
        for (version, sql) in UPGRADES.iter().filter(|(v, _)| *v > found) {
            tx.batch_execute(sql)?;
            tx.execute("UPDATE madre_schema SET version = $1", &[version])?;
        }
    }
    tx.commit()?;
    Ok(found.max(POSTGRES_SCHEMA_VERSION))
}

fn database_name(tx: &mut postgres::Transaction<'_>) -> Result<String, DbError> {
    Ok(tx.query_one("SELECT current_database()::text", &[])?.get(0))
}

/// The PostgreSQL migrations reach the SQLite schema's version: a new
/// SQLite migration needs its PostgreSQL twin.
const _: () = assert!(POSTGRES_SCHEMA_VERSION == SCHEMA_VERSION);

/// The newest upgrade reaches the version a fresh database is created at.
const _: () = assert!(UPGRADES[UPGRADES.len() - 1].0 == CREATE.0);

//! The PostgreSQL data model in docs/postgresql-schema.md is the contract
//! the SQLite schema is held to (issue 22: one design for two backends)
//! and where the PostgreSQL backend starts (issue 24). These tests load
//! that DDL, as the document gives it, into a throw-away PostgreSQL
//! cluster and check that it is the same model as the SQLite schema this
//! code creates: the same tables and columns, the same version, and the
//! same rules refusing what SQLite refuses.

#[path = "support/pg.rs"]
mod pg;

use madre_db::{Db, DbError, POSTGRES_SCHEMA_VERSION, SCHEMA_VERSION, migrate_postgres};
use pg::PgCluster;
use rusqlite::Connection;
use std::collections::{BTreeMap, BTreeSet};

/// The first `sql` block of docs/postgresql-schema.md: the DDL.
fn documented_ddl() -> String {
    let doc = include_str!("../../../docs/postgresql-schema.md");
    let start = doc.find("```sql\n").expect("the document has an sql block") + "```sql\n".len();
    let end = start + doc[start..].find("\n```").expect("the sql block ends");
    doc[start..end].to_owned()
}

/// A cluster with the documented DDL loaded into database `madre`.
fn loaded() -> PgCluster {
    let pg = PgCluster::start();
    pg.psql("postgres", "CREATE DATABASE madre").unwrap();
    if let Err(e) = pg.psql("madre", &documented_ddl()) {
        panic!("the documented DDL does not load: {e}");
    }
    pg
}

/// Table → its columns, as a fresh SQLite file of this code has them.
fn sqlite_model() -> BTreeMap<String, BTreeSet<String>> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vx11.db");
    drop(Db::open(&path).unwrap());
    let conn = Connection::open(&path).unwrap();
    let tables: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    tables
        .into_iter()
        .map(|table| {
            let columns = conn
                .prepare(&format!("SELECT name FROM pragma_table_info('{table}')"))
                .unwrap()
                .query_map([], |r| r.get(0))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            (table, columns)
        })
        .collect()
}

/// Table → its columns, as the documented DDL makes them.
fn postgres_model(pg: &PgCluster) -> BTreeMap<String, BTreeSet<String>> {
    let listed = pg
        .psql(
            "madre",
            "SELECT table_name || ' ' || column_name FROM information_schema.columns
             WHERE table_schema = 'public' ORDER BY 1",
        )
        .unwrap();
    let mut model: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in listed.lines() {
        let (table, column) = line.split_once(' ').unwrap();
        model
            .entry(table.to_owned())
            .or_default()
            .insert(column.to_owned());
    }
    model
}

#[test]
fn the_documented_ddl_is_the_sqlite_model_at_this_version() {
    let pg = loaded();
    let version = pg
        .psql(
            "madre",
            "SELECT application || ' ' || version FROM madre_schema",
        )
        .unwrap();
    assert_eq!(version, format!("madre {SCHEMA_VERSION}"));

    let mut sqlite = sqlite_model();
    let mut postgres = postgres_model(&pg);
    // The two documented differences: PostgreSQL keeps the version in a
    // row (SQLite in its header), and lets the archive through its rules
    // with a transaction setting (SQLite with the `archive_gate` table).
    assert!(postgres.remove("madre_schema").is_some());
    assert!(sqlite.remove("archive_gate").is_some());
    assert_eq!(
        sqlite.keys().collect::<Vec<_>>(),
        postgres.keys().collect::<Vec<_>>(),
        "the same tables"
    );
    for (table, columns) in &sqlite {
        assert_eq!(columns, &postgres[table], "the columns of {table}");
    }
}

#[test]
fn the_documented_ddl_refuses_what_sqlite_refuses() {
    let pg = loaded();
    let run = |sql: &str| pg.psql("madre", sql);
    run("INSERT INTO replicas (name) VALUES ('replica-a');
         INSERT INTO plans (uuid, kind, name, module, action, principal, mode, status,
                            created_at, updated_at)
         VALUES ('01900000-0000-7000-8000-000000000001', 'chat', 'chat', 'madre', 'chat',
                 'ada', 'MADRE', 'RUNNING', now(), now());
         INSERT INTO plan_events (plan, type, payload_json, replica, created_at)
         VALUES (1, 1, '{\"steps\":[]}', 1, now());")
    .unwrap();

    // The journal is append-only, but for the archive's transaction.
    let changed = run("UPDATE plan_events SET step = 1").unwrap_err();
    assert!(changed.contains("plan_events is append-only"), "{changed}");
    let deleted = run("DELETE FROM plan_events").unwrap_err();
    assert!(deleted.contains("plan_events is append-only"), "{deleted}");
    run("BEGIN; SET LOCAL madre.archiving = 'on'; DELETE FROM plan_events; COMMIT;").unwrap();
    assert_eq!(run("SELECT count(*) FROM plan_events").unwrap(), "0");

    // A shape is stored once: the same text again writes nothing, another
    // text under its id is refused, and no shape ever goes.
    let upsert = |body: &str| {
        run(&format!(
            "INSERT INTO plan_shapes (id, body) VALUES (7, '{body}')
             ON CONFLICT (id) DO UPDATE SET body = excluded.body
             WHERE plan_shapes.body::text IS DISTINCT FROM excluded.body::text"
        ))
    };
    upsert("{\"steps\":[]}").unwrap();
    upsert("{\"steps\":[]}").unwrap();
    let collision = upsert("{\"steps\":[1]}").unwrap_err();
    assert!(collision.contains("a shape never changes"), "{collision}");
    let gone = run("BEGIN; SET LOCAL madre.archiving = 'on'; DELETE FROM plan_shapes; COMMIT;")
        .unwrap_err();
    assert!(gone.contains("a shape is never deleted"), "{gone}");
    let renamed = run("UPDATE replicas SET name = 'b'").unwrap_err();
    assert!(renamed.contains("a replica keeps its name"), "{renamed}");

    // An intent is closed once, and nothing else of it is ever set.
    run(
        "INSERT INTO intents_log (id, source, principal, payload_json, created_at)
         VALUES ('01900000-0000-7000-8000-0000000000a1', 'chat', 'ada', '{}', now())",
    )
    .unwrap();
    let rewritten =
        run("UPDATE intents_log SET payload_json = '{}', processed_by_madre_at = now()")
            .unwrap_err();
    assert!(
        rewritten.contains("a row can only be closed, once"),
        "{rewritten}"
    );
    run("UPDATE intents_log SET processed_by_madre_at = now(), result_status = 'DONE'").unwrap();
    let again = run("UPDATE intents_log SET processed_by_madre_at = now()").unwrap_err();
    assert!(again.contains("a row can only be closed, once"), "{again}");
    assert_eq!(
        run("SELECT body FROM plan_shapes").unwrap(),
        "{\"steps\":[]}"
    );
}

/// A connection string for database `db` of `pg`.
fn url(pg: &PgCluster, db: &str) -> String {
    format!(
        "host={} user=postgres dbname={db}",
        pg.socket_dir().display()
    )
}

/// The schema madre-db creates on PostgreSQL is the document's DDL.
#[test]
fn the_documented_ddl_is_the_postgres_migration() {
    let code = include_str!("../src/pg/schema_18.sql");
    assert_eq!(documented_ddl().trim_end(), code.trim_end());
    assert_eq!(POSTGRES_SCHEMA_VERSION, SCHEMA_VERSION);
}

/// Tables, columns, constraints, indexes and triggers of database `db`, one
/// line each, in a stable order.
fn catalog(pg: &PgCluster, db: &str) -> String {
    pg.psql(
        db,
        "SELECT * FROM (
             SELECT 'column ' || table_name || '.' || column_name || ' ' || data_type
                    || ' ' || is_nullable || ' ' || coalesce(column_default, '')
             FROM information_schema.columns WHERE table_schema = 'public'
             UNION ALL
             SELECT 'constraint ' || conrelid::regclass || ' ' || pg_get_constraintdef(oid)
             FROM pg_constraint WHERE connamespace = 'public'::regnamespace
             UNION ALL
             SELECT 'index ' || indexdef FROM pg_indexes WHERE schemaname = 'public'
             UNION ALL
             SELECT 'trigger ' || pg_get_triggerdef(oid) FROM pg_trigger WHERE NOT tgisinternal
         ) lines(line) ORDER BY 1",
    )
    .unwrap()
}

/// A database made by the first PostgreSQL schema (17) is upgraded to the
/// schema a fresh database gets, its rows kept.
#[test]
fn a_database_made_at_schema_17_upgrades_to_the_fresh_schema() {
    let pg = PgCluster::start();
    pg.psql("postgres", "CREATE DATABASE old; CREATE DATABASE fresh;")
        .unwrap();
    pg.psql("old", include_str!("fixtures/pg_schema_17.sql"))
        .unwrap();
    pg.psql(
        "old",
        "INSERT INTO replicas (name) VALUES ('replica-a');
         INSERT INTO plans (uuid, kind, name, module, action, principal, mode, status,
                            created_at, updated_at)
         VALUES ('01900000-0000-7000-8000-000000000001', 'chat', 'chat', 'madre', 'chat',
                 'ada', 'MADRE', 'DONE', now(), now());
         INSERT INTO plan_events (plan, type, payload_json, replica, created_at)
         VALUES (1, 1, '{\"steps\":[]}', 1, now());",
    )
    .unwrap();

    assert_eq!(migrate_postgres(&url(&pg, "old")).unwrap(), SCHEMA_VERSION);
    assert_eq!(
        migrate_postgres(&url(&pg, "fresh")).unwrap(),
        SCHEMA_VERSION
    );
    let (upgraded, fresh) = (catalog(&pg, "old"), catalog(&pg, "fresh"));
    let only_in = |a: &str, b: &str| -> Vec<String> {
        let b: BTreeSet<&str> = b.lines().collect();
        a.lines()
            .filter(|l| !b.contains(l))
            .map(str::to_owned)
            .collect()
    };
    assert_eq!(
        (only_in(&upgraded, &fresh), only_in(&fresh, &upgraded)),
        (vec![], vec![]),
        "(only after the upgrade, only when fresh)"
    );
    assert_eq!(
        pg.psql("old", "SELECT version FROM madre_schema").unwrap(),
        SCHEMA_VERSION.to_string()
    );
    assert_eq!(
        pg.psql("old", "SELECT count(*) FROM plan_events WHERE plan = 1")
            .unwrap(),
        "1"
    );
}

/// A new PostgreSQL database is migrated in one go, a migrated one is
/// left as it is, and a database that is someone else's, or newer, is
/// refused untouched.
#[test]
fn migrate_postgres_makes_a_madre_database_and_refuses_others_untouched() {
    let pg = PgCluster::start();
    pg.psql(
        "postgres",
        "CREATE DATABASE fresh; CREATE DATABASE foreign_db; CREATE DATABASE newer;",
    )
    .unwrap();

    assert_eq!(
        migrate_postgres(&url(&pg, "fresh")).unwrap(),
        SCHEMA_VERSION
    );
    assert_eq!(
        migrate_postgres(&url(&pg, "fresh")).unwrap(),
        SCHEMA_VERSION
    );
    assert_eq!(
        pg.psql("fresh", "SELECT version FROM madre_schema")
            .unwrap(),
        SCHEMA_VERSION.to_string()
    );
    assert_eq!(
        pg.psql("fresh", "SELECT count(*) FROM plan_events")
            .unwrap(),
        "0"
    );

    pg.psql(
        "foreign_db",
        "CREATE TABLE invoices (id int); INSERT INTO invoices VALUES (1);",
    )
    .unwrap();
    match migrate_postgres(&url(&pg, "foreign_db")) {
        Err(DbError::NotMadrePostgres { database, tables }) => {
            assert_eq!(
                (database.as_str(), tables.as_str()),
                ("foreign_db", "invoices")
            );
        }
        other => panic!("a foreign database was not refused: {other:?}"),
    }
    assert_eq!(
        pg.psql(
            "foreign_db",
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"
        )
        .unwrap(),
        "1",
        "nothing was created beside the foreign table"
    );

    pg.psql(
        "newer",
        "CREATE TABLE madre_schema (application text, version bigint);
         INSERT INTO madre_schema VALUES ('madre', 99);",
    )
    .unwrap();
    match migrate_postgres(&url(&pg, "newer")) {
        Err(DbError::SchemaTooNew {
            found, supported, ..
        }) => {
            assert_eq!((found, supported), (99, SCHEMA_VERSION));
        }
        other => panic!("a newer database was not refused: {other:?}"),
    }

    let unreachable = migrate_postgres(&format!(
        "host={} user=postgres dbname=missing",
        pg.socket_dir().display()
    ))
    .unwrap_err();
    assert!(matches!(unreachable, DbError::Postgres(_)), "{unreachable}");
    assert!(unreachable.to_string().contains("missing"), "{unreachable}");
}

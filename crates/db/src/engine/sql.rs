//! One SQL face over both backends (SPEC §16): the repository modules
//! write their statements once, in the SQL SQLite and PostgreSQL share
//! (`ON CONFLICT`, `RETURNING`, `IS DISTINCT FROM`, `CASE`), and run them
//! through a [`Conn`], whichever database is behind it.
//!
//! Values keep rusqlite's types on both sides: a parameter is anything
//! that is `rusqlite::ToSql`, a column is read as anything that is
//! `rusqlite::types::FromSql`. On PostgreSQL a parameter is encoded for
//! the type the server inferred for it (an integer for `smallint`,
//! `bigint`, `boolean` or `timestamptz` — times are microseconds since
//! the Unix epoch on both sides —, a text for `text`, `json` or `uuid`),
//! and a column is decoded into the value SQLite would have given. So
//! the modules stay unaware of the backend, and the statements are the
//! only thing the two share.
//!
//! Parameters are marked as SQLite marks them, `?1`, `?2`…; on PostgreSQL each statement is
//! rewritten to `$1`, `$2`… once, when its connection first prepares it,
//! and kept prepared for the connection's life, as rusqlite's statement
//! cache does.

use rusqlite::ToSql;
use rusqlite::types::{FromSql, ToSqlOutput, Value, ValueRef};
use std::borrow::Cow;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::error::Error as StdError;
use std::sync::Arc;
use tokio_postgres::types::{IsNull, Type};

use crate::DbError;

/// Parameters of a statement: `params![…]`, an array or slice of one
/// type, or `()` for none.
pub(crate) trait Args {
    /// The parameters, in order.
    fn values(&self) -> Vec<&dyn ToSql>;
}

impl<T: ToSql> Args for &[T] {
    fn values(&self) -> Vec<&dyn ToSql> {
        self.iter().map(|v| v as &dyn ToSql).collect()
    }
}

impl<T: ToSql, const N: usize> Args for [T; N] {
    fn values(&self) -> Vec<&dyn ToSql> {
        self.iter().map(|v| v as &dyn ToSql).collect()
    }
}

impl<T: ToSql, const N: usize> Args for &[T; N] {
    fn values(&self) -> Vec<&dyn ToSql> {
        self.iter().map(|v| v as &dyn ToSql).collect()
    }
}

impl Args for () {
    fn values(&self) -> Vec<&dyn ToSql> {
        Vec::new()
    }
}

/// Where a session's queue stood (see [`Conn::queue_mark`]).
#[derive(Clone, Copy, Default)]
pub(crate) struct QueueMark {
    sends: u64,
    queued: usize,
}

/// A connection of either backend, borrowed for one read or one write.
#[derive(Clone, Copy)]
pub(crate) enum Conn<'c> {
    /// The SQLite file.
    Lite(&'c rusqlite::Connection),
    /// A PostgreSQL session.
    Pg(&'c PgConn),
}

/// A connection the holder owns: the writer's, or a reader's.
pub(crate) enum Connection {
    /// A SQLite connection.
    Lite(rusqlite::Connection),
    /// A PostgreSQL session (boxed: it is the larger, and there is one).
    Pg(Box<PgConn>),
}

impl Connection {
    /// The connection, borrowed for one read or one write.
    pub(crate) fn conn(&self) -> Conn<'_> {
        match self {
            Connection::Lite(conn) => Conn::Lite(conn),
            Connection::Pg(conn) => Conn::Pg(conn),
        }
    }
}

/// The PostgreSQL server a database handle uses: how to reach it, and the
/// round trips all its sessions made to it (`/metrics`, and the test that
/// counts a chat's): each send whose answers are read, once, whether the
/// session waits for them at once or reads them later (a transaction the
/// writer sent whole, see [`PgConn::send_commit`]).
pub(crate) struct PgServer {
    pub(crate) config: tokio_postgres::Config,
    pub(crate) round_trips: std::sync::atomic::AtomicU64,
}

impl PgServer {
    pub(crate) fn new(config: tokio_postgres::Config) -> std::sync::Arc<Self> {
        std::sync::Arc::new(Self {
            config,
            round_trips: std::sync::atomic::AtomicU64::new(0),
        })
    }
}

/// A PostgreSQL session with its prepared statements, whether it is
/// inside a transaction (the writer's spans many calls), how to open it
/// again once the server is back, and, on the writer's session, the
/// statements of the open transaction not sent yet.
///
/// **Sending together.** Inside the writer's transaction a statement whose
/// answer nobody waits for (an insert, an update: [`Stmt::run`]) and the
/// `BEGIN` itself are queued, and sent with the next statement that needs
/// an answer, or with the `COMMIT`: the driver writes them one after the
/// other without waiting for each answer (pipelining), so a transaction of
/// writes costs one round trip to the server instead of one a statement.
/// A queued statement that fails aborts the transaction on the server, as
/// it would have at once; the call that sent it answers that failure and
/// names the write (of the writer's batch) that queued it.
pub(crate) struct PgConn {
    /// `None` only while dropped.
    session: RefCell<Option<Session>>,
    /// Each statement's text (SQLite's dialect), with its prepared form
    /// and its text shared with the statements that run it (for the meter).
    prepared: RefCell<HashMap<String, Prepared>>,
    /// Statements this session prepared by name for `EXECUTE` (see
    /// [`PgConn::send_once`]), for the next name.
    named: Cell<u64>,
    in_transaction: Cell<bool>,
    /// Rows changed by this session's statements, as SQLite's
    /// `total_changes`.
    changes: Cell<u64>,
    /// The writer's session: each statement it runs is counted, as the
    /// trace hook counts SQLite's (see [`crate::engine::meter`]), and the
    /// statements of its transactions are sent together.
    metered: Cell<bool>,
    /// The writer session's functions (see [`PgConn::meter`]).
    writer_functions: Cell<&'static str>,
    /// Requests of the open transaction not sent yet, in order.
    queued: RefCell<Vec<Queued>>,
    /// The write of the writer's batch running now (see [`Conn::set_write`]).
    write: Cell<usize>,
    /// The failure of a queued statement at the last send.
    failed: Cell<Option<QueuedFailure>>,
    /// The savepoint whose work queues statements now (see
    /// [`Conn::set_savepoint`]).
    savepoint: Cell<Option<SavepointId>>,
    /// Sends made, so a savepoint can tell whether it was sent.
    sends: Cell<u64>,
    /// Transactions sent whole whose answers are not read yet, oldest
    /// first (see [`PgConn::send_commit`]).
    in_flight: RefCell<std::collections::VecDeque<InFlight>>,
    /// The last transaction [`PgConn::send_commit`] numbered.
    commits_sent: Cell<u64>,
    /// The server, and the round trips its sessions made: each send of
    /// one or more requests that waits for their answers counts one.
    server: Arc<PgServer>,
}

/// A session's client and the runtime that drives its connection: the
/// connection's task runs only while a call waits on that runtime, as in
/// the blocking driver.
struct Session {
    runtime: tokio::runtime::Runtime,
    /// Shared with the answers of a transaction in flight (see
    /// [`PgConn::send_commit`]).
    client: Arc<tokio_postgres::Client>,
}

/// A statement a session prepared: the driver's (its parameter types, and
/// how it runs alone), its text for the meter, and on the writer's session
/// the name it was also prepared under for `EXECUTE` in a batch.
#[derive(Clone)]
struct Prepared {
    statement: tokio_postgres::Statement,
    sql: Arc<str>,
    name: Option<Arc<str>>,
}

/// A queued statement's failure, as the writer needs to know it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct QueuedFailure {
    /// The write (its place in the writer's batch) that queued it.
    pub(crate) write: usize,
    /// It was a kept fold's check ([`MOVED`]), or the check that the
    /// transaction sent before committed ([`BEHIND_A_FAILURE`]): nothing
    /// is wrong with the write, whose batch runs again (reading the
    /// journal).
    pub(crate) moved: bool,
    /// The savepoint it was queued in, if any.
    pub(crate) savepoint: Option<SavepointId>,
}

/// A savepoint of a write: its `SAVEPOINT` statement, and which of the
/// write's savepoints it is (the first, the second… in the order the write
/// makes them), so two of one name are told apart.
pub(crate) type SavepointId = (&'static str, u32);

/// A request of the writer's transaction, waiting to be sent.
struct Queued {
    /// `None` for a callback alone (see [`Conn::after_sent`]).
    request: Option<Batched>,
    /// The write of the writer's batch that queued it.
    write: usize,
    /// The savepoint it was queued in, if any.
    savepoint: Option<SavepointId>,
    /// Handed the request's rows once everything sent with it succeeded.
    then: Option<Then>,
}

/// What a queued request does with the rows it returned: handed the first
/// column of each, as integers (`RETURNING seq`).
type Then = Box<dyn FnOnce(Vec<i64>) + Send>;

/// One request to the server.
enum Request {
    /// Statements with no parameters (transaction control).
    Simple(Cow<'static, str>),
    /// A prepared statement and its parameters. `sql` is its text when
    /// the session counts what it runs (the writer's): the rows it
    /// changes are counted too.
    Prepared {
        sql: Option<Arc<str>>,
        statement: tokio_postgres::Statement,
        args: Vec<PgArg>,
    },
}

/// A statement of the writer's transaction waiting to be sent, as the text
/// it is sent as (see [`PgConn::send_once`]).
enum Batched {
    /// Transaction control: its `;`-separated statements (constants).
    Control(&'static str),
    /// `EXECUTE` of a statement prepared by name, its parameters written as
    /// literals when it was queued. `sql` is the statement's text, whose
    /// changed rows are counted.
    Execute { sql: Option<Arc<str>>, text: String },
}

impl Batched {
    /// Adds the statements to `batch`; answers how many there are, which
    /// is how many answers the server gives for them.
    fn push_to(&self, batch: &mut String) -> usize {
        let (text, statements) = match self {
            // Constants: no literal in them holds a `;`.
            Batched::Control(sql) => (
                *sql,
                sql.split(';').filter(|s| !s.trim().is_empty()).count(),
            ),
            // One statement, whatever its literals hold.
            Batched::Execute { text, .. } => (text.as_str(), 1),
        };
        if statements > 0 {
            batch.push_str(text);
            batch.push_str(";\n");
        }
        statements
    }
}

/// What a request answered: its rows, and the rows it changed.
struct Answer {
    rows: Vec<tokio_postgres::Row>,
    affected: u64,
}

impl Drop for PgConn {
    fn drop(&mut self) {
        // A runtime cannot be dropped on an async task's thread (a handle
        // dropped at the end of a request): the session closes on a
        // thread of its own there.
        if tokio::runtime::Handle::try_current().is_ok()
            && let Some(session) = self.session.get_mut().take()
        {
            std::thread::spawn(move || drop(session));
        }
    }
}

impl PgConn {
    /// Connects as `config` says.
    pub(crate) fn connect(server: &Arc<PgServer>) -> Result<Self, DbError> {
        Ok(Self {
            session: RefCell::new(Some(open_session(&server.config)?)),
            server: Arc::clone(server),
            prepared: RefCell::default(),
            named: Cell::new(0),
            in_transaction: Cell::new(false),
            changes: Cell::new(0),
            metered: Cell::new(false),
            writer_functions: Cell::new(""),
            queued: RefCell::default(),
            write: Cell::new(0),
            failed: Cell::new(None),
            savepoint: Cell::new(None),
            sends: Cell::new(0),
            in_flight: RefCell::default(),
            commits_sent: Cell::new(0),
        })
    }

    /// Counts the statements this session runs from now on, and sends the
    /// statements of its transactions together (the writer's session),
    /// with `functions` (the definitions of the writer session's functions
    /// some writes call, such as the trim of a session's history) defined
    /// in it, whenever it opens.
    pub(crate) fn meter(&self, functions: &'static str) -> Result<(), DbError> {
        self.metered.set(true);
        self.writer_functions.set(functions);
        self.set_up_writer()
    }

    /// What the writer's session sets up when it opens: [`WRITER_SESSION`]
    /// and the functions [`PgConn::meter`] was given.
    fn writer_setup(&self) -> String {
        format!("{WRITER_SESSION};\n{}", self.writer_functions.get())
    }

    /// Sets up this session as the writer's: see [`PgConn::writer_setup`].
    fn set_up_writer(&self) -> Result<(), DbError> {
        let setup = self.writer_setup();
        let s = self.round_trip();
        Ok(s.runtime.block_on(s.client.batch_execute(&setup))?)
    }

    /// Opens the session again when it was lost (the server restarted,
    /// the network broke); its prepared statements and anything queued go
    /// with the old one. Answers of transactions still in flight (left by
    /// a writer's turn that panicked) are read and forgotten first.
    pub(crate) fn revive(&self) -> Result<(), DbError> {
        if !self.in_flight.borrow().is_empty() {
            // Left by a writer's turn that panicked (its writes were
            // answered with an error): read and forgotten, so the next
            // transaction's answers are not taken for them.
            self.land();
            self.in_flight.borrow_mut().clear();
        }
        // The connection's task runs only while a call waits: a few turns
        // of it read what the server sent since (the end of the session, by
        // a restart), so a session the server closed is not used again.
        if let Some(session) = self.session.borrow().as_ref() {
            session.runtime.block_on(async {
                // Each yield lets the runtime poll for readiness and run
                // the connection's task once.
                for _ in 0..3 {
                    tokio::task::yield_now().await;
                }
            });
        }
        if !self.is_closed() {
            return Ok(());
        }
        let session = open_session(&self.server.config)?;
        if self.metered.get() {
            // Defined before the session is used: a session without it
            // would fail every check it makes.
            session
                .runtime
                .block_on(session.client.batch_execute(&self.writer_setup()))?;
        }
        *self.session.borrow_mut() = Some(session);
        self.in_flight.borrow_mut().clear();
        self.prepared.borrow_mut().clear();
        self.queued.borrow_mut().clear();
        self.in_transaction.set(false);
        Ok(())
    }

    /// The session, for one round trip: its client, and the runtime to
    /// wait on for the answer.
    fn round_trip(&self) -> std::cell::Ref<'_, Session> {
        // The answers of transactions in flight come first.
        self.land();
        self.server
            .round_trips
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.session()
    }

    /// The session, its client and runtime, counting no round trip.
    fn session(&self) -> std::cell::Ref<'_, Session> {
        std::cell::Ref::map(self.session.borrow(), |s| {
            s.as_ref().expect("a session has its client until dropped")
        })
    }

    /// Asks the server whether the session still works (the pool's check).
    pub(crate) fn ping(&self) -> Result<(), DbError> {
        let s = self.round_trip();
        Ok(s.runtime.block_on(s.client.batch_execute(""))?)
    }

    /// True when the session is gone (the server closed it, the network
    /// broke): the pool replaces it.
    pub(crate) fn is_closed(&self) -> bool {
        self.session
            .borrow()
            .as_ref()
            .is_none_or(|s| s.client.is_closed())
    }

    fn statement(&self, sql: &str) -> Result<Prepared, DbError> {
        if let Some(prepared) = self.prepared.borrow().get(sql) {
            return Ok(prepared.clone());
        }
        let text = postgres_parameters(sql);
        let statement = {
            let s = self.round_trip();
            s.runtime.block_on(s.client.prepare(&text))?
        };
        // The writer's statements are also prepared by a name of their own
        // (the driver's names are its own), for a batch to `EXECUTE`. A
        // prepared statement is the session's: a rollback keeps it.
        let name = match self.metered.get() {
            true => {
                let n = self.named.get() + 1;
                self.named.set(n);
                let name = format!("madre_{n}");
                let s = self.round_trip();
                s.runtime
                    .block_on(s.client.batch_execute(&format!("PREPARE {name} AS {text}")))?;
                Some(Arc::from(name))
            }
            false => None,
        };
        let prepared = Prepared {
            statement,
            sql: Arc::from(sql),
            name,
        };
        self.prepared
            .borrow_mut()
            .insert(sql.to_owned(), prepared.clone());
        Ok(prepared)
    }

    /// True while requests are queued instead of sent: inside the
    /// writer's transaction.
    fn queues(&self) -> bool {
        self.metered.get() && self.in_transaction.get()
    }

    fn queue(&self, request: Option<Batched>, then: Option<Then>) {
        self.queued.borrow_mut().push(Queued {
            request,
            write: self.write.get(),
            savepoint: self.savepoint.get(),
            then,
        });
    }

    /// Sends what is queued and then `last`, together, and answers
    /// `last`. A queued request that fails fails the call, and
    /// [`Conn::take_failed_write`] names its write. Nothing is sent
    /// again: once a `COMMIT` went out, only the server knows whether it
    /// took it (a closed session is reopened before the next transaction,
    /// see [`PgConn::revive`]).
    fn send(&self, last: Request) -> Result<Answer, DbError> {
        let queued = std::mem::take(&mut *self.queued.borrow_mut());
        self.sends.set(self.sends.get() + 1);
        self.send_once(queued, last)
    }

    /// True when the queue starts with the transaction's `BEGIN`: nothing
    /// of the transaction was sent yet.
    fn begins_unsent(&self) -> bool {
        matches!(
            self.queued.borrow().first(),
            Some(Queued { request: Some(Batched::Control(sql)), .. })
                if *sql == PG_BEGIN || *sql == PG_BEGIN_NUMBERED
        )
    }

    /// One send of `queued` and `last`. The queued statements go as one
    /// text of statements (the simple query protocol; each an `EXECUTE` of
    /// a statement prepared by name, its parameters written as literals):
    /// the server runs them in order and answers them together, one flush
    /// for the batch and one wake-up of this session, where each statement
    /// sent on its own (the extended protocol) is answered, flushed and
    /// read by itself. `request` goes right behind it. The server stops at the
    /// first statement of the batch that fails; the answers before it say
    /// which one that was.
    fn send_once(&self, queued: Vec<Queued>, request: Request) -> Result<Answer, DbError> {
        let counted = changes_counted(&request);
        let InFlight {
            answers,
            queued,
            counts,
            ..
        } = self.dispatch(queued, request);
        let answers = {
            let s = self.round_trip();
            s.runtime
                .block_on(answers.expect("a dispatch has its answers to wait for"))
        };
        self.read_answers(queued, &counts, answers, counted)
    }

    /// Writes `queued` as one text of statements and makes the future of
    /// its answers and of `request`'s, which hands both to the connection
    /// when first polled (`request` is a request of its own even when it
    /// is the `COMMIT`: after a failure in the batch, which skips the rest
    /// of its text, it still ends the transaction, as a `COMMIT` of a
    /// failed transaction rolls it back).
    fn dispatch(&self, queued: Vec<Queued>, request: Request) -> InFlight {
        let mut batch = String::new();
        let counts: Vec<usize> = queued
            .iter()
            .map(|q| q.request.as_ref().map_or(0, |r| r.push_to(&mut batch)))
            .collect();
        let client = Arc::clone(&self.session().client);
        // join polls the two in order: the batch goes first.
        let answers = Box::pin(async move {
            futures_util::future::join(run_batch(&client, &batch), run_request(&client, &request))
                .await
        });
        InFlight {
            answers: Some(answers),
            landed: None,
            queued,
            counts,
        }
    }

    /// Reads the answers of a send: hands each queued request its rows,
    /// counts the rows changed, and names the write whose statement
    /// failed, if one did (see [`Conn::take_failed_write`]).
    fn read_answers(
        &self,
        queued: Vec<Queued>,
        counts: &[usize],
        (sent, last): Answers,
        counted: bool,
    ) -> Result<Answer, DbError> {
        let Sent { done, error } = sent;
        if let Some(e) = error {
            // The statement that failed is the first one not answered.
            let failed_at = done.len();
            let mut first = 0;
            for (q, &n) in queued.iter().zip(counts) {
                if (first..first + n).contains(&failed_at) {
                    let code = e.code().map(tokio_postgres::error::SqlState::code);
                    self.failed.set(Some(QueuedFailure {
                        write: q.write,
                        moved: code.is_some_and(|c| c == MOVED || c == BEHIND_A_FAILURE),
                        savepoint: q.savepoint,
                    }));
                    break;
                }
                first += n;
            }
            // A send that failed as a whole (the session closed) stops
            // before the first statement: laid at that one's write.
            return Err(e.into());
        }
        let answer = last?;
        if counted {
            self.changes
                .set(self.changes.get().saturating_add(answer.affected));
        }
        let mut done = done.into_iter();
        for (q, &n) in queued.into_iter().zip(counts) {
            let mut ids = Vec::new();
            let mut affected = 0;
            for statement in done.by_ref().take(n) {
                affected += statement.affected;
                ids.extend(statement.ids);
            }
            if let Some(Batched::Execute { sql: Some(sql), .. }) = &q.request
                && changes_rows(sql)
            {
                self.changes
                    .set(self.changes.get().saturating_add(affected));
            }
            if let Some(then) = q.then {
                then(ids);
            }
        }
        Ok(answer)
    }

    /// Counts a transaction as begun, with nothing queued, failed or in a
    /// savepoint yet.
    fn start_transaction(&self) {
        self.queued.borrow_mut().clear();
        self.failed.set(None);
        self.savepoint.set(None);
        self.in_transaction.set(true);
    }

    /// Begins the writer's transaction with `begin` queued, to go with
    /// the transaction's first send. The `BEGIN` is no write's: its
    /// failure loses the batch.
    fn begin_queued(&self, begin: &'static str) {
        self.start_transaction();
        self.write.set(TRANSACTION);
        self.queue(Some(Batched::Control(begin)), None);
    }

    /// Begins a transaction to be sent whole (see [`PgConn::send_commit`]),
    /// numbered: its first statement takes the write lock, checks that the
    /// transaction numbered `after` committed, when one was sent before
    /// this one and not answered yet (should it not have, this one fails
    /// with [`BEHIND_A_FAILURE`] before it wrote anything, and its batch
    /// runs again once that one's did), and tells the session this one's
    /// number, which its rollback undoes.
    fn begin_numbered(&self, after: Option<u64>) {
        let number = self.commits_sent.get() + 1;
        self.commits_sent.set(number);
        self.begin_queued(PG_BEGIN_NUMBERED);
        let after = after.map_or_else(|| "NULL".to_owned(), |n| format!("'{n}'"));
        self.queue(
            Some(Batched::Execute {
                sql: None,
                text: format!("EXECUTE madre_begin({after}, '{number}')"),
            }),
            None,
        );
    }

    /// Sends the open transaction whole, its `COMMIT` included, without
    /// waiting for the answers: the writer prepares its next transaction
    /// while the server runs this one, and reads the answers with
    /// [`PgConn::settle_commit`]. Answers the transaction's number (see
    /// [`PgConn::begin_numbered`], which began it).
    fn send_commit(&self) -> Result<u64, DbError> {
        let queued = std::mem::take(&mut *self.queued.borrow_mut());
        self.sends.set(self.sends.get() + 1);
        self.in_transaction.set(false);
        let mut flight = self.dispatch(queued, Request::Simple(Cow::Borrowed("COMMIT")));
        self.server
            .round_trips
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        {
            let s = self.session();
            let answers = flight.answers.as_mut().expect("just dispatched");
            // The first poll hands the requests to the connection; its task
            // then writes them while this one yields. The answers are kept
            // should they be complete at once (a session already closed
            // fails both sends there): a finished future is never polled
            // again.
            let landed = s.runtime.block_on(async {
                let first =
                    std::future::poll_fn(|cx| std::task::Poll::Ready(answers.as_mut().poll(cx)))
                        .await;
                if first.is_pending() {
                    tokio::task::yield_now().await;
                }
                first
            });
            if let std::task::Poll::Ready(answers) = landed {
                flight.land(answers);
            }
        }
        self.in_flight.borrow_mut().push_back(flight);
        Ok(self.commits_sent.get())
    }

    /// Reads the answers of the oldest transaction in flight, as
    /// [`Conn::end`] would have: `Ok` once it committed.
    fn settle_commit(&self) -> Result<(), DbError> {
        let flight = self.in_flight.borrow_mut().pop_front();
        let Some(InFlight {
            answers,
            landed,
            queued,
            counts,
        }) = flight
        else {
            return Err(DbError::Internal("no transaction is in flight".into()));
        };
        let answers = match (landed, answers) {
            (Some(landed), _) => landed,
            (None, Some(answers)) => self.session().runtime.block_on(answers),
            (None, None) => unreachable!("a flight has its answers or awaits them"),
        };
        // What is left from an earlier send was taken by then.
        self.failed.set(None);
        self.read_answers(queued, &counts, answers, false).map(drop)
    }

    /// Waits for the answers of the oldest transaction in flight or for
    /// `wake`, whichever comes first; answers true when the answers came
    /// (they are kept for [`PgConn::settle_commit`]).
    fn answers_or(&self, wake: impl std::future::Future<Output = ()>) -> bool {
        let mut flights = self.in_flight.borrow_mut();
        let Some(flight) = flights.front_mut() else {
            return true;
        };
        let Some(answers) = flight.answers.as_mut() else {
            return true;
        };
        let landed = self.session().runtime.block_on(async {
            let wake = std::pin::pin!(wake);
            match futures_util::future::select(answers.as_mut(), wake).await {
                futures_util::future::Either::Left((answers, _)) => Some(answers),
                futures_util::future::Either::Right(_) => None,
            }
        });
        match landed {
            Some(answers) => {
                flight.land(answers);
                true
            }
            None => false,
        }
    }

    /// Waits for the answers of every transaction in flight, oldest first,
    /// and keeps them for [`PgConn::settle_commit`]: a request sent now is
    /// answered after them.
    fn land(&self) {
        let mut flights = self.in_flight.borrow_mut();
        if flights.iter().all(|f| f.answers.is_none()) {
            return;
        }
        let s = self.session();
        for flight in flights.iter_mut() {
            if let Some(answers) = flight.answers.take() {
                flight.land(s.runtime.block_on(answers));
            }
        }
    }
}

/// Whether the rows `request` changes are counted (see
/// [`PgConn::read_answers`]): a change that returns its rows (RETURNING)
/// counts them as changed, as SQLite's `total_changes` does, and so does
/// any other change.
fn changes_counted(request: &Request) -> bool {
    matches!(request, Request::Prepared { sql: Some(sql), .. } if changes_rows(sql))
}

/// `EXECUTE name(…)` with `args` written as literals of `types`, the
/// statement's parameter types. Each literal is quoted text, which the
/// server reads with the parameter type's own input (`standard_conforming_strings`
/// is on in the writer's session, so a quote doubled is the only escape).
fn execute_text(name: &str, types: &[Type], args: &[PgArg]) -> Result<String, DbError> {
    if types.len() != args.len() {
        return Err(DbError::Postgres(format!(
            "the statement takes {} parameters; {} were given",
            types.len(),
            args.len()
        )));
    }
    let mut text = String::with_capacity(16 + name.len() + 24 * args.len());
    text.push_str("EXECUTE ");
    text.push_str(name);
    for (i, (arg, ty)) in args.iter().zip(types).enumerate() {
        text.push_str(if i == 0 { "(" } else { ", " });
        write_literal(&arg.0, ty, &mut text).map_err(|e| match e.as_str() {
            NUL_IN_TEXT => DbError::Unstorable(format!("parameter {}: {e}", i + 1)),
            _ => DbError::Postgres(format!("parameter {}: {e}", i + 1)),
        })?;
    }
    if !args.is_empty() {
        text.push(')');
    }
    Ok(text)
}

/// Writes `value` as a literal of PostgreSQL type `ty`, as [`PgArg`]'s
/// binary encoding would bind it: the same values are accepted and
/// refused.
fn write_literal(value: &Value, ty: &Type, out: &mut String) -> Result<(), String> {
    use std::fmt::Write;
    let refuse = || format!("cannot bind {value:?} as PostgreSQL type {ty}");
    match (value, ty) {
        (Value::Null, _) => out.push_str("NULL"),
        (Value::Integer(i), &Type::INT8 | &Type::FLOAT8) => {
            let _ = write!(out, "'{i}'");
        }
        (Value::Integer(i), &Type::INT4) => {
            let i = i32::try_from(*i).map_err(|_| refuse())?;
            let _ = write!(out, "'{i}'");
        }
        (Value::Integer(i), &Type::INT2) => {
            let i = i16::try_from(*i).map_err(|_| refuse())?;
            let _ = write!(out, "'{i}'");
        }
        (Value::Integer(i), &Type::BOOL) => out.push_str(if *i != 0 { "true" } else { "false" }),
        (Value::Integer(i), &Type::TIMESTAMPTZ | &Type::TIMESTAMP) => {
            let at = bindable_time(*i).ok_or_else(refuse)?;
            let zone = if *ty == Type::TIMESTAMPTZ { "+00" } else { "" };
            let _ = write!(out, "'{}{zone}'", at.format("%Y-%m-%d %H:%M:%S%.6f"));
        }
        (Value::Integer(i), &Type::TEXT | &Type::VARCHAR | &Type::UNKNOWN) => {
            let _ = write!(out, "'{i}'");
        }
        (Value::Real(f), &Type::FLOAT8 | &Type::FLOAT4) => {
            let _ = match f {
                f if f.is_nan() => write!(out, "'NaN'"),
                f if f.is_infinite() && *f > 0.0 => write!(out, "'Infinity'"),
                f if f.is_infinite() => write!(out, "'-Infinity'"),
                f if *ty == Type::FLOAT4 => write!(out, "'{:?}'", *f as f32),
                f => write!(out, "'{f:?}'"),
            };
        }
        (Value::Text(s), &Type::UUID) => {
            let id = uuid::Uuid::parse_str(s).map_err(|_| refuse())?;
            let _ = write!(out, "'{id}'");
        }
        (Value::Text(s), ty) if *ty == Type::JSONB || takes_text(ty) => quote(s, out)?,
        (Value::Blob(b), &Type::BYTEA) => {
            out.push_str("'\\x");
            for byte in b {
                let _ = write!(out, "{byte:02x}");
            }
            out.push('\'');
        }
        _ => return Err(refuse()),
    }
    Ok(())
}

/// The types a text binds to as its bytes (and as a quoted literal).
fn takes_text(ty: &Type) -> bool {
    [
        Type::TEXT,
        Type::VARCHAR,
        Type::BPCHAR,
        Type::NAME,
        Type::JSON,
        Type::UNKNOWN,
    ]
    .contains(ty)
}

/// A time in microseconds since 1970 as a date, when it falls in the
/// years 1 to 9999: the times both encodings bind (a literal writes the
/// year in four digits), so a statement takes the same values whether it
/// is queued or sent at once.
fn bindable_time(micros: i64) -> Option<chrono::DateTime<chrono::Utc>> {
    use chrono::Datelike;
    chrono::DateTime::from_timestamp_micros(micros).filter(|at| (1..=9999).contains(&at.year()))
}

/// Why a text with a NUL is refused (PostgreSQL's own refusal of such a
/// value is the caller's input: [`DbError::Unstorable`]).
const NUL_IN_TEXT: &str = "a text with a NUL character cannot be stored";

/// Writes `text` as a quoted literal: each quote doubled. A NUL cannot be
/// in a PostgreSQL text (nor in a statement's text): refused.
fn quote(text: &str, out: &mut String) -> Result<(), String> {
    if text.contains('\0') {
        return Err(NUL_IN_TEXT.into());
    }
    out.reserve(text.len() + 2);
    out.push('\'');
    for part in text.split_inclusive('\'') {
        out.push_str(part);
        if part.ends_with('\'') {
            out.push('\'');
        }
    }
    out.push('\'');
    Ok(())
}

/// What the server answered to a batch of statements (see
/// [`PgConn::send_once`]): each statement that succeeded, in order, and the
/// failure that stopped it, if one did.
#[derive(Default)]
struct Sent {
    done: Vec<Done>,
    error: Option<tokio_postgres::Error>,
}

/// A statement of a batch that succeeded: the rows it changed, and the
/// first column of the rows it returned, as integers.
struct Done {
    affected: u64,
    ids: Vec<i64>,
}

/// What the server answered to a send: the batch's answers and the last
/// request's.
type Answers = (Sent, Result<Answer, tokio_postgres::Error>);

/// A send whose answers are awaited: the future of its answers until they
/// came (`landed`), and what its queued requests do with them.
struct InFlight {
    answers: Option<std::pin::Pin<Box<dyn std::future::Future<Output = Answers> + Send>>>,
    landed: Option<Answers>,
    queued: Vec<Queued>,
    counts: Vec<usize>,
}

impl InFlight {
    /// Keeps the answers that came: the future is done with.
    fn land(&mut self, answers: Answers) {
        self.answers = None;
        self.landed = Some(answers);
    }
}

/// Sends `batch` as one simple query and reads its answers; an empty batch
/// sends nothing.
async fn run_batch(client: &tokio_postgres::Client, batch: &str) -> Sent {
    use futures_util::StreamExt;
    use tokio_postgres::SimpleQueryMessage;
    let mut sent = Sent::default();
    if batch.is_empty() {
        return sent;
    }
    let stream = match client.simple_query_raw(batch).await {
        Ok(stream) => stream,
        Err(e) => {
            sent.error = Some(e);
            return sent;
        }
    };
    futures_util::pin_mut!(stream);
    let mut ids = Vec::new();
    while let Some(message) = stream.next().await {
        match message {
            Ok(SimpleQueryMessage::Row(row)) => ids.extend(
                row.try_get(0)
                    .ok()
                    .flatten()
                    .and_then(|v| v.parse::<i64>().ok()),
            ),
            Ok(SimpleQueryMessage::CommandComplete(affected)) => sent.done.push(Done {
                affected,
                ids: std::mem::take(&mut ids),
            }),
            Ok(_) => {}
            Err(e) => {
                sent.error = Some(e);
                break;
            }
        }
    }
    sent
}

/// Runs one request; its future hands the request to the connection when
/// first polled.
async fn run_request(
    client: &tokio_postgres::Client,
    request: &Request,
) -> Result<Answer, tokio_postgres::Error> {
    match request {
        Request::Simple(sql) => {
            client.batch_execute(sql).await?;
            Ok(Answer {
                rows: Vec::new(),
                affected: 0,
            })
        }
        Request::Prepared {
            statement, args, ..
        } => {
            use futures_util::StreamExt;
            let stream = client
                .query_raw(
                    statement,
                    args.iter().map(|a| a as &dyn tokio_postgres::types::ToSql),
                )
                .await?;
            futures_util::pin_mut!(stream);
            let mut rows = Vec::new();
            while let Some(row) = stream.next().await {
                rows.push(row?);
            }
            Ok(Answer {
                affected: stream.rows_affected().unwrap_or(0),
                rows,
            })
        }
    }
}

/// Opens a session. Any failure to is the server being out of reach for
/// now (down, restarting, refusing connections to the database), whatever
/// the server's code: 503 until it takes sessions again.
fn open_session(config: &tokio_postgres::Config) -> Result<Session, DbError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| DbError::Internal(format!("cannot start a session's runtime: {e}")))?;
    let (client, connection) = runtime
        .block_on(config.connect(tokio_postgres::NoTls))
        .map_err(|e| match DbError::from(e) {
            DbError::Postgres(detail) => DbError::Unavailable {
                reason: crate::StorageFault::Unreachable,
                detail,
            },
            classified => classified,
        })?;
    runtime.spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "a PostgreSQL session ended");
        }
    });
    Ok(Session {
        runtime,
        client: Arc::new(client),
    })
}

/// **Checks the server makes.** A statement sent together with others
/// cannot have its answer looked at before the next one is sent, nor
/// before the `COMMIT`. A condition a write rests on (a kept fold is still
/// the journal's; an intent is still open) is therefore checked by the
/// server inside a statement, with `pg_temp.madre_expect(ok, code,
/// message)`, which fails the statement, and so the transaction, with the
/// SQLSTATE `code` unless `ok`: [`MOVED`] runs the batch again (the
/// write then reads what it assumed), [`EXPECTED_CONFLICT`] and
/// [`EXPECTED_MISSING`] are the write's answer (a conflict, a row not
/// found). The function lives in the writer's session only (`pg_temp`,
/// defined when the session opens), so the schema does not change.
pub(crate) const EXPECT: &str = "pg_temp.madre_expect";

/// A kept fold's check failed: someone appended to the plan since.
pub(crate) const MOVED: &str = "MA001";

/// The transaction sent before this one did not commit (see
/// [`PgConn::follow`]): the batch runs again once that one's did.
pub(crate) const BEHIND_A_FAILURE: &str = "MA002";

/// The advisory lock every replica's writer holds for its transaction:
/// "madre2" in ASCII (see [`Conn::begin`]), as a literal for the
/// statements that take it.
macro_rules! write_lock {
    () => {
        "120265064473906"
    };
}

/// The expected row is there but not in the state the write needs.
pub(crate) const EXPECTED_CONFLICT: &str = "MA409";

/// The expected row is not there; the message is "<what> <id>".
pub(crate) const EXPECTED_MISSING: &str = "MA404";

/// What the writer's session sets up when it opens: quotes doubled are the
/// only escape in a literal (the batches write their parameters so, see
/// [`PgConn::send_once`]; the server's default, made sure of), [`EXPECT`],
/// and the prepared statement `madre_begin(after, this)`, the start of a
/// transaction sent whole (see [`PgConn::begin_numbered`]): takes the
/// write lock, fails with [`BEHIND_A_FAILURE`] unless the transaction
/// numbered `after` committed (when given), and sets the session's
/// `madre.committed` to `this`, which the transaction's rollback undoes.
/// It is one prepared statement, and calls a function only to fail (the
/// check reads only the session's setting, so which of the two
/// expressions the server evaluates first does not matter): planned once
/// and with no function call
/// of its own, it costs the server a fraction of a function doing the same
/// in PL/pgSQL, and it runs once a transaction.
const WRITER_SESSION: &str = concat!(
    "SET standard_conforming_strings = on;
CREATE OR REPLACE FUNCTION pg_temp.madre_expect(ok boolean, code text, message text)
RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    IF ok IS NOT TRUE THEN
        RAISE EXCEPTION USING ERRCODE = code, MESSAGE = message;
    END IF;
    RETURN true;
END $$;
PREPARE madre_begin(text, text) AS
SELECT pg_advisory_xact_lock(",
    write_lock!(),
    "),
       CASE WHEN $1 IS NULL OR current_setting('madre.committed', true) IS NOT DISTINCT FROM $1
            THEN set_config('madre.committed', $2, false)
            ELSE CAST(pg_temp.madre_expect(false, 'MA002',
                 'the transaction sent before this one did not commit') AS text)
       END"
);

/// The write index of what the transaction queues itself (its `BEGIN`):
/// past any batch's end, so its failure loses the whole batch.
const TRANSACTION: usize = usize::MAX;

/// The writer's `BEGIN` on PostgreSQL, with the write lock (see
/// [`Conn::begin`]): "madre2" in ASCII, beside the migration's lock.
const PG_BEGIN: &str = concat!("BEGIN; SELECT pg_advisory_xact_lock(", write_lock!(), ")");

/// The `BEGIN` of a transaction sent whole, whose next statement takes
/// the write lock with `madre_begin` (see [`PgConn::begin_numbered`]).
const PG_BEGIN_NUMBERED: &str = "BEGIN";

impl<'c> Conn<'c> {
    /// Prepares `sql` (SQLite's dialect of the shared SQL), from the
    /// connection's cache when it ran before.
    pub(crate) fn prepare_cached(&self, sql: &str) -> Result<Stmt<'c>, DbError> {
        Ok(match *self {
            Conn::Lite(conn) => Stmt::Lite(conn.prepare_cached(sql)?),
            Conn::Pg(conn) => {
                let prepared = conn.statement(sql)?;
                Stmt::Pg {
                    conn,
                    statement: prepared.statement,
                    metered: conn.metered.get().then_some(prepared.sql),
                    name: prepared.name,
                }
            }
        })
    }

    /// Runs one query and maps its first row; no row is
    /// [`rusqlite::Error::QueryReturnedNoRows`] on both backends (see
    /// [`OptionalExtension`]).
    pub(crate) fn query_row<T>(
        &self,
        sql: &str,
        args: impl Args,
        f: impl FnOnce(&Row<'_>) -> Result<T, DbError>,
    ) -> Result<T, DbError> {
        self.prepare_cached(sql)?.query_row(args, f)
    }

    /// Runs statements with no parameters and no rows, separated by `;`
    /// (transaction control, DDL).
    pub(crate) fn execute_batch(&self, sql: &str) -> Result<(), DbError> {
        match *self {
            Conn::Lite(conn) => Ok(conn.execute_batch(sql)?),
            Conn::Pg(conn) => conn
                .send(Request::Simple(Cow::Owned(sql.to_owned())))
                .map(drop),
        }
    }

    /// Runs transaction control with no answer needed (a savepoint's
    /// `SAVEPOINT` or `RELEASE`): on PostgreSQL, inside the writer's
    /// transaction, it is sent with the next statement (see [`PgConn`]).
    pub(crate) fn execute_later(&self, sql: &'static str) -> Result<(), DbError> {
        match *self {
            Conn::Pg(conn) if conn.queues() => {
                conn.queue(Some(Batched::Control(sql)), None);
                Ok(())
            }
            _ => self.execute_batch(sql),
        }
    }

    /// Sends whatever is queued (PostgreSQL, see [`PgConn`]) and waits for
    /// its answers, so that a failure among it is known now; nothing on
    /// SQLite, where nothing waits.
    pub(crate) fn send_queued(&self) -> Result<(), DbError> {
        match *self {
            Conn::Pg(conn) if !conn.queued.borrow().is_empty() => {
                conn.send(Request::Simple(Cow::Borrowed(""))).map(drop)
            }
            _ => Ok(()),
        }
    }

    /// Runs `f` once everything queued so far was sent and succeeded; at
    /// once when nothing is queued (SQLite, or PostgreSQL outside the
    /// writer's transaction). Never runs when the send failed. For a
    /// transaction sent whole, that is when its answers are read: after the
    /// writer sent the next transaction, whose writes may still rest on
    /// what was known before (what they rest on is checked by the server,
    /// see [`EXPECT`]).
    pub(crate) fn after_sent(&self, f: impl FnOnce() + Send + 'static) {
        match *self {
            Conn::Pg(conn) if conn.queues() => {
                conn.queue(None, Some(Box::new(move |_| f())));
            }
            _ => f(),
        }
    }

    /// Where the queue stands now (see [`Conn::drop_unsent_since`]).
    pub(crate) fn queue_mark(&self) -> QueueMark {
        match *self {
            Conn::Pg(conn) => QueueMark {
                sends: conn.sends.get(),
                queued: conn.queued.borrow().len(),
            },
            Conn::Lite(_) => QueueMark::default(),
        }
    }

    /// Drops what was queued since `mark` and not sent; answers true when
    /// nothing queued since `mark` was sent (so none of it reached the
    /// server). Always false on SQLite, where nothing waits.
    pub(crate) fn drop_unsent_since(&self, mark: QueueMark) -> bool {
        match *self {
            Conn::Pg(conn) if conn.sends.get() == mark.sends => {
                conn.queued.borrow_mut().truncate(mark.queued);
                true
            }
            Conn::Pg(conn) => {
                // A send since the mark took everything queued before it:
                // all that waits now was queued since.
                conn.queued.borrow_mut().clear();
                false
            }
            Conn::Lite(_) => false,
        }
    }

    /// Takes back the request queued first since `mark` when nothing was
    /// sent since (a savepoint's `SAVEPOINT`, once its work is known to
    /// need no answer before the commit); answers whether it did. Always
    /// false on SQLite, where nothing waits.
    pub(crate) fn unqueue_unsent_at(&self, mark: QueueMark) -> bool {
        match *self {
            Conn::Pg(conn) if conn.sends.get() == mark.sends => {
                let mut queued = conn.queued.borrow_mut();
                if queued.len() > mark.queued {
                    queued.remove(mark.queued);
                    true
                } else {
                    false
                }
            }
            _ => false,
        }
    }

    /// Tells the session which write of the writer's batch runs now, so a
    /// failure of its queued statements can be laid at its door.
    pub(crate) fn set_write(&self, index: usize) {
        if let Conn::Pg(conn) = *self {
            conn.write.set(index);
        }
    }

    /// The failure of a statement queued by a write of the batch, at the
    /// last send, taken; always `None` on SQLite (nothing is queued there).
    pub(crate) fn take_failed_write(&self) -> Option<QueuedFailure> {
        match *self {
            Conn::Pg(conn) => conn.failed.take(),
            Conn::Lite(_) => None,
        }
    }

    /// Names the savepoint whose work queues statements from now on, so
    /// their failure can be laid at its door; answers the one named
    /// before, to name again once this one ended.
    pub(crate) fn set_savepoint(&self, id: Option<SavepointId>) -> Option<SavepointId> {
        match *self {
            Conn::Pg(conn) => conn.savepoint.replace(id),
            Conn::Lite(_) => None,
        }
    }

    /// The failure [`Conn::take_failed_write`] would take, left in place.
    pub(crate) fn peek_failed_write(&self) -> Option<QueuedFailure> {
        match *self {
            Conn::Pg(conn) => conn.failed.get(),
            Conn::Lite(_) => None,
        }
    }

    /// True when no transaction is open (SQLite may end one by itself
    /// after a failure; a PostgreSQL session whose connection broke has
    /// none either).
    pub(crate) fn is_autocommit(&self) -> bool {
        match *self {
            Conn::Lite(conn) => conn.is_autocommit(),
            Conn::Pg(conn) => !conn.in_transaction.get() || conn.is_closed(),
        }
    }

    /// Begins the writer's transaction with the database's write lock:
    /// `BEGIN IMMEDIATE` on SQLite, and on PostgreSQL a transaction-level
    /// advisory lock every replica's writer takes, sent with the
    /// transaction's first statement that needs an answer (or its commit).
    /// So one writer commits at a time across replicas as on SQLite, the
    /// journal's `seq` grows in commit order (a reader following it by
    /// `seq` never passes over an event another replica commits later),
    /// and writers never deadlock on each other's rows. Each writer still
    /// commits everything queued at once.
    pub(crate) fn begin(&self) -> Result<(), DbError> {
        match *self {
            Conn::Lite(conn) => Ok(conn
                .prepare_cached("BEGIN IMMEDIATE")?
                .execute(())
                .map(drop)?),
            Conn::Pg(conn) => {
                // Counted as begun even if the lock fails: the next turn
                // then rolls back whatever the server kept open. A session
                // the server ended since its last use (a restart, a
                // failover) was reopened before the batch (see
                // [`PgConn::revive`], which the writer calls first).
                if conn.metered.get() {
                    conn.begin_queued(PG_BEGIN);
                    Ok(())
                } else {
                    conn.start_transaction();
                    conn.send(Request::Simple(Cow::Borrowed(PG_BEGIN)))
                        .map(drop)
                }
            }
        }
    }

    /// True when the writer may send a transaction whole and prepare the
    /// next while the server runs it: PostgreSQL's writer session (see
    /// [`Conn::send_commit`]).
    pub(crate) fn pipelines(&self) -> bool {
        matches!(self, Conn::Pg(conn) if conn.metered.get())
    }

    /// Commits the open transaction as [`Conn::end`] does, without waiting
    /// for the answer (see [`PgConn::send_commit`]); answers the number
    /// the next transaction [`Conn::follow`]s, and [`Conn::settle_commit`]
    /// tells the outcome.
    pub(crate) fn send_commit(&self) -> Result<u64, DbError> {
        match *self {
            Conn::Pg(conn) if conn.queues() => conn.send_commit(),
            _ => Err(DbError::Internal(
                "only the writer's PostgreSQL transaction is sent unanswered".into(),
            )),
        }
    }

    /// Begins the writer's transaction as [`Conn::begin`] does, to be sent
    /// whole by [`Conn::send_commit`] and checked on the server to come
    /// after the transaction numbered `after` committed (see
    /// [`PgConn::begin_numbered`]); SQLite's begins as ever.
    pub(crate) fn begin_numbered(&self, after: Option<u64>) -> Result<(), DbError> {
        match *self {
            Conn::Pg(conn) if conn.metered.get() => {
                conn.begin_numbered(after);
                Ok(())
            }
            _ => self.begin(),
        }
    }

    /// Waits for the answers of the oldest transaction sent by
    /// [`Conn::send_commit`] or for `wake`, whichever comes first; answers
    /// true when the answers came (and at once when none is in flight).
    pub(crate) fn answers_or(&self, wake: impl std::future::Future<Output = ()>) -> bool {
        match *self {
            Conn::Pg(conn) => conn.answers_or(wake),
            Conn::Lite(_) => true,
        }
    }

    /// The outcome of the oldest transaction sent by
    /// [`Conn::send_commit`]: `Ok` once it committed; a failure names the
    /// write that failed as [`Conn::end`]'s would.
    pub(crate) fn settle_commit(&self) -> Result<(), DbError> {
        match *self {
            Conn::Pg(conn) => conn.settle_commit(),
            Conn::Lite(_) => Err(DbError::Internal("SQLite sends nothing unanswered".into())),
        }
    }

    /// Ends the open transaction with `COMMIT` or `ROLLBACK`.
    pub(crate) fn end(&self, commit: bool) -> Result<(), DbError> {
        let sql = if commit { "COMMIT" } else { "ROLLBACK" };
        match *self {
            Conn::Lite(conn) => Ok(conn.prepare_cached(sql)?.execute(()).map(drop)?),
            Conn::Pg(conn) => {
                let begun_here = conn.begins_unsent();
                if !commit && begun_here {
                    // Nothing of the transaction reached the server.
                    conn.queued.borrow_mut().clear();
                    conn.in_transaction.set(false);
                    return Ok(());
                }
                if !commit {
                    conn.queued.borrow_mut().clear();
                }
                // Whatever COMMIT answers, the transaction is over (a
                // failed one is rolled back by the server): a queued
                // statement that failed fails the commit, which the server
                // then answers with a rollback.
                let ended = conn.send(Request::Simple(Cow::Borrowed(sql)));
                conn.in_transaction.set(false);
                ended.map(drop)
            }
        }
    }

    /// The id the connection's last insert gave its (last) row: SQLite's
    /// rowid, PostgreSQL's last identity value of the session.
    pub(crate) fn last_insert_rowid(&self) -> Result<i64, DbError> {
        match *self {
            Conn::Lite(conn) => Ok(conn.last_insert_rowid()),
            Conn::Pg(_) => self.query_row("SELECT lastval()", (), |r| r.get(0)),
        }
    }

    /// Rows changed by the connection's statements since it opened.
    pub(crate) fn total_changes(&self) -> u64 {
        match *self {
            Conn::Lite(conn) => conn.total_changes(),
            Conn::Pg(conn) => conn.changes.get(),
        }
    }

    /// True when statements nobody waits on are queued rather than run at
    /// once: PostgreSQL, inside the writer's transaction (see [`PgConn`]).
    pub(crate) fn sends_later(&self) -> bool {
        matches!(self, Conn::Pg(conn) if conn.queues())
    }

    /// Which backend this is, for the few statements that differ.
    pub(crate) fn is_postgres(&self) -> bool {
        matches!(self, Conn::Pg(_))
    }
}

/// A prepared statement of either backend.
pub(crate) enum Stmt<'c> {
    /// rusqlite's, from its cache.
    Lite(rusqlite::CachedStatement<'c>),
    /// The server's, with its session.
    Pg {
        /// The session it was prepared on.
        conn: &'c PgConn,
        /// The prepared statement.
        statement: tokio_postgres::Statement,
        /// Its text, when the session counts what it runs.
        metered: Option<Arc<str>>,
        /// The name it was prepared under for `EXECUTE` (the writer's
        /// session).
        name: Option<Arc<str>>,
    },
}

impl Stmt<'_> {
    /// Runs the statement; answers the rows it changed.
    pub(crate) fn execute(&mut self, args: impl Args) -> Result<usize, DbError> {
        match self {
            Stmt::Lite(stmt) => Ok(stmt.execute(args.values().as_slice())?),
            Stmt::Pg { conn, .. } => {
                let conn = *conn;
                let answer = conn.send(self.request(args))?;
                Ok(usize::try_from(answer.affected).unwrap_or(usize::MAX))
            }
        }
    }

    /// Runs the statement for what it changes, when nobody needs its
    /// answer now: on PostgreSQL, inside the writer's transaction, it is
    /// sent with the next statement that needs an answer, or the commit,
    /// whose call answers its failure (see [`PgConn`]).
    pub(crate) fn run(&mut self, args: impl Args) -> Result<(), DbError> {
        self.run_returning(args, |_| {})
    }

    /// As [`Stmt::run`], for a statement that returns one integer a row
    /// (`RETURNING seq`): `then` is handed them once they are known, which
    /// is at once on SQLite, and after the send on PostgreSQL; never when
    /// the statement failed.
    pub(crate) fn run_returning(
        &mut self,
        args: impl Args,
        then: impl FnOnce(Vec<i64>) + Send + 'static,
    ) -> Result<(), DbError> {
        match self {
            Stmt::Pg { conn, .. } if conn.queues() => {
                let conn = *conn;
                let request = self.execute_request(args)?;
                conn.queue(Some(request), Some(Box::new(then)));
                Ok(())
            }
            _ => {
                let mut ids = Vec::new();
                self.for_each_row(args, |r| {
                    if r.len() > 0 {
                        ids.push(r.get(0)?);
                    }
                    Ok(true)
                })?;
                then(ids);
                Ok(())
            }
        }
    }

    /// The request of the writer's transaction running this statement
    /// with `args`, as text to send in a batch (see [`PgConn::send_once`]),
    /// counted. Its parameters are written now: one that cannot be
    /// written as the statement's type never reaches the server, so the
    /// transaction would go on (and commit) without the statement; it fails
    /// now instead, as it would have run at once.
    fn execute_request(&self, args: impl Args) -> Result<Batched, DbError> {
        let Stmt::Pg {
            statement,
            metered,
            name: Some(name),
            ..
        } = self
        else {
            unreachable!("only the writer's statements are queued, each prepared by name")
        };
        let args = metered_args(metered, args);
        Ok(Batched::Execute {
            sql: metered.clone(),
            text: execute_text(name, statement.params(), &args)?,
        })
    }

    /// The PostgreSQL request running this statement with `args`, counted
    /// when its session is the writer's.
    fn request(&self, args: impl Args) -> Request {
        let Stmt::Pg {
            statement, metered, ..
        } = self
        else {
            unreachable!("a request is made of a PostgreSQL statement")
        };
        let args = metered_args(metered, args);
        Request::Prepared {
            sql: metered.clone(),
            statement: statement.clone(),
            args,
        }
    }

    /// Runs the query and maps its first row; no row is
    /// [`rusqlite::Error::QueryReturnedNoRows`].
    pub(crate) fn query_row<T>(
        &mut self,
        args: impl Args,
        f: impl FnOnce(&Row<'_>) -> Result<T, DbError>,
    ) -> Result<T, DbError> {
        let mut f = Some(f);
        let mut found = None;
        self.for_each_row(args, |row| {
            if let Some(f) = f.take() {
                found = Some(f(row)?);
            }
            Ok(false)
        })?;
        found.ok_or(DbError::Sqlite(rusqlite::Error::QueryReturnedNoRows))
    }

    /// Runs the query and maps every row, in order.
    pub(crate) fn query_map<T>(
        &mut self,
        args: impl Args,
        mut f: impl FnMut(&Row<'_>) -> Result<T, DbError>,
    ) -> Result<std::vec::IntoIter<Result<T, DbError>>, DbError> {
        let mut mapped = Vec::new();
        self.for_each_row(args, |row| {
            mapped.push(f(row));
            Ok(true)
        })?;
        Ok(mapped.into_iter())
    }

    /// True when the query has at least one row.
    pub(crate) fn exists(&mut self, args: impl Args) -> Result<bool, DbError> {
        let mut any = false;
        self.for_each_row(args, |_| {
            any = true;
            Ok(false)
        })?;
        Ok(any)
    }

    /// Runs the query and hands `each` its rows in order while it answers
    /// true.
    pub(crate) fn for_each_row(
        &mut self,
        args: impl Args,
        mut each: impl FnMut(&Row<'_>) -> Result<bool, DbError>,
    ) -> Result<(), DbError> {
        match self {
            Stmt::Lite(stmt) => {
                let mut rows = stmt.query(args.values().as_slice())?;
                while let Some(row) = rows.next()? {
                    if !each(&Row::Lite(row))? {
                        break;
                    }
                }
            }
            Stmt::Pg { conn, .. } => {
                let conn = *conn;
                let rows = conn.send(self.request(args))?.rows;
                for row in &rows {
                    if !each(&Row::Pg(row))? {
                        break;
                    }
                }
            }
        }
        Ok(())
    }
}

/// One row of a result, of either backend.
pub(crate) enum Row<'r> {
    /// rusqlite's.
    Lite(&'r rusqlite::Row<'r>),
    /// The server's.
    Pg(&'r tokio_postgres::Row),
}

impl Row<'_> {
    /// Column `idx` (from 0) as `T`, read as SQLite would give it.
    pub(crate) fn get<I: Column, T: FromSql>(&self, idx: I) -> Result<T, DbError> {
        let idx = idx.index();
        match self {
            Row::Lite(row) => Ok(row.get(idx)?),
            Row::Pg(row) => {
                let value = self.pg_value(row, idx)?;
                T::column_result(ValueRef::from(&value)).map_err(|e| {
                    DbError::InvalidData(format!(
                        "column {} ({}): {e}",
                        row.columns()[idx].name(),
                        row.columns()[idx].type_()
                    ))
                })
            }
        }
    }

    /// Column `idx` as text, borrowed from SQLite's row where it can be;
    /// `None` for NULL.
    pub(crate) fn text(&self, idx: usize) -> Result<Option<std::borrow::Cow<'_, str>>, DbError> {
        match self {
            Row::Lite(row) => Ok(row
                .get_ref(idx)?
                .as_str_or_null()
                .map_err(|e| DbError::Sqlite(e.into()))?
                .map(std::borrow::Cow::Borrowed)),
            Row::Pg(_) => Ok(self
                .get::<_, Option<String>>(idx)?
                .map(std::borrow::Cow::Owned)),
        }
    }

    /// Column `idx` as an owned SQLite value (for rows copied whole).
    pub(crate) fn value(&self, idx: usize) -> Result<Value, DbError> {
        match self {
            Row::Lite(row) => Ok(row.get_ref(idx)?.into()),
            Row::Pg(row) => self.pg_value(row, idx),
        }
    }

    /// The number of columns.
    pub(crate) fn len(&self) -> usize {
        match self {
            Row::Lite(row) => row.as_ref().column_count(),
            Row::Pg(row) => row.len(),
        }
    }

    /// The name of column `idx`.
    pub(crate) fn name(&self, idx: usize) -> Result<String, DbError> {
        match self {
            Row::Lite(row) => Ok(row.as_ref().column_name(idx)?.to_owned()),
            Row::Pg(row) => Ok(row.columns()[idx].name().to_owned()),
        }
    }

    fn pg_value(&self, row: &tokio_postgres::Row, idx: usize) -> Result<Value, DbError> {
        let Raw(ty, bytes) = row.try_get(idx)?;
        decode(&ty, bytes).map_err(|e| {
            DbError::InvalidData(format!("column {} ({ty}): {e}", row.columns()[idx].name()))
        })
    }
}

/// A column's position in a row (from 0), as [`Row::get`] takes it.
pub(crate) trait Column {
    /// The position.
    fn index(self) -> usize;
}

impl Column for usize {
    fn index(self) -> usize {
        self
    }
}

/// `Option` of a query's single row, as rusqlite's extension of the same
/// name: the no-row error becomes `None`.
pub(crate) trait OptionalExtension<T> {
    /// `Ok(None)` for no row; other errors stay.
    fn optional(self) -> Result<Option<T>, DbError>;
}

impl<T> OptionalExtension<T> for Result<T, DbError> {
    fn optional(self) -> Result<Option<T>, DbError> {
        match self {
            Ok(value) => Ok(Some(value)),
            Err(DbError::Sqlite(rusqlite::Error::QueryReturnedNoRows)) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// Microseconds from the Unix epoch to PostgreSQL's (2000-01-01 UTC).
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;

/// A column as the server sent it: its type and its binary value.
struct Raw(Type, Option<Vec<u8>>);

impl<'a> tokio_postgres::types::FromSql<'a> for Raw {
    fn from_sql(ty: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn StdError + Sync + Send>> {
        Ok(Raw(ty.clone(), Some(raw.to_vec())))
    }

    fn from_sql_null(ty: &Type) -> Result<Self, Box<dyn StdError + Sync + Send>> {
        Ok(Raw(ty.clone(), None))
    }

    fn accepts(_: &Type) -> bool {
        true
    }
}

/// A PostgreSQL value as the SQLite value the same column holds there.
fn decode(ty: &Type, bytes: Option<Vec<u8>>) -> Result<Value, String> {
    let Some(bytes) = bytes else {
        return Ok(Value::Null);
    };
    let fixed = |n: usize| -> Result<&[u8], String> {
        (bytes.len() == n)
            .then_some(&bytes[..])
            .ok_or_else(|| format!("{} bytes, expected {n}", bytes.len()))
    };
    Ok(match *ty {
        Type::INT2 => {
            Value::Integer(i16::from_be_bytes(fixed(2)?.try_into().unwrap_or_default()).into())
        }
        Type::INT4 => {
            Value::Integer(i32::from_be_bytes(fixed(4)?.try_into().unwrap_or_default()).into())
        }
        Type::INT8 => Value::Integer(i64::from_be_bytes(fixed(8)?.try_into().unwrap_or_default())),
        Type::BOOL => Value::Integer(i64::from(fixed(1)?[0] != 0)),
        Type::FLOAT8 => Value::Real(f64::from_be_bytes(fixed(8)?.try_into().unwrap_or_default())),
        Type::FLOAT4 => {
            Value::Real(f32::from_be_bytes(fixed(4)?.try_into().unwrap_or_default()).into())
        }
        Type::TIMESTAMPTZ | Type::TIMESTAMP => {
            let pg = i64::from_be_bytes(fixed(8)?.try_into().unwrap_or_default());
            Value::Integer(pg.saturating_add(PG_EPOCH_MICROS))
        }
        Type::UUID => Value::Text(
            uuid::Uuid::from_slice(&bytes)
                .map_err(|e| e.to_string())?
                .to_string(),
        ),
        Type::JSONB => Value::Text(text(bytes.get(1..).unwrap_or_default())?),
        Type::BYTEA => Value::Blob(bytes),
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::JSON | Type::UNKNOWN => {
            Value::Text(text(&bytes)?)
        }
        ref other => return Err(format!("no SQLite value for PostgreSQL type {other}")),
    })
}

fn text(bytes: &[u8]) -> Result<String, String> {
    String::from_utf8(bytes.to_vec()).map_err(|e| e.to_string())
}

/// A parameter bound on PostgreSQL: the rusqlite value, encoded for the
/// type the server inferred.
#[derive(Debug)]
struct PgArg(Value);

fn pg_args(args: impl Args) -> Vec<PgArg> {
    args.values()
        .into_iter()
        .map(|arg| {
            PgArg(match arg.to_sql() {
                Ok(ToSqlOutput::Borrowed(value)) => value.into(),
                Ok(ToSqlOutput::Owned(value)) => value,
                // rusqlite's other outputs (zero blobs, arrays) are not used
                // by the repository; an unbindable value is refused by the
                // server as a NULL where one is not allowed, never guessed.
                Ok(_) | Err(_) => Value::Null,
            })
        })
        .collect()
}

/// The parameters of a statement about to run on PostgreSQL, counting the
/// statement first when its session is the writer's.
fn metered_args(metered: &Option<Arc<str>>, args: impl Args) -> Vec<PgArg> {
    if let Some(sql) = metered {
        crate::engine::meter::count_sql(sql);
    }
    pg_args(args)
}

impl tokio_postgres::types::ToSql for PgArg {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut bytes::BytesMut,
    ) -> Result<IsNull, Box<dyn StdError + Sync + Send>> {
        use bytes::BufMut;
        let refuse = || format!("cannot bind {:?} as PostgreSQL type {ty}", self.0);
        match (&self.0, ty) {
            (Value::Null, _) => return Ok(IsNull::Yes),
            (Value::Integer(i), &Type::INT8) => out.put_i64(*i),
            (Value::Integer(i), &Type::INT4) => {
                out.put_i32(i32::try_from(*i).map_err(|_| refuse())?)
            }
            (Value::Integer(i), &Type::INT2) => {
                out.put_i16(i16::try_from(*i).map_err(|_| refuse())?)
            }
            (Value::Integer(i), &Type::BOOL) => out.put_u8(u8::from(*i != 0)),
            (Value::Integer(i), &Type::TIMESTAMPTZ | &Type::TIMESTAMP) => {
                bindable_time(*i).ok_or_else(refuse)?;
                out.put_i64(i.checked_sub(PG_EPOCH_MICROS).ok_or_else(refuse)?)
            }
            (Value::Integer(i), &Type::FLOAT8) => out.put_f64(*i as f64),
            (Value::Integer(i), &Type::TEXT | &Type::VARCHAR | &Type::UNKNOWN) => {
                out.put_slice(i.to_string().as_bytes())
            }
            (Value::Real(f), &Type::FLOAT8) => out.put_f64(*f),
            (Value::Real(f), &Type::FLOAT4) => out.put_f32(*f as f32),
            (Value::Text(s), &Type::UUID) => {
                out.put_slice(uuid::Uuid::parse_str(s).map_err(|_| refuse())?.as_bytes())
            }
            (Value::Text(s), &Type::JSONB) => {
                out.put_u8(1);
                out.put_slice(s.as_bytes());
            }
            (Value::Text(s), ty) if takes_text(ty) => out.put_slice(s.as_bytes()),
            (Value::Blob(b), &Type::BYTEA) => out.put_slice(b),
            _ => return Err(refuse().into()),
        }
        Ok(IsNull::No)
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    tokio_postgres::types::to_sql_checked!();
}

/// True for a statement that changes rows (the writer's `RETURNING` ones).
fn changes_rows(sql: &str) -> bool {
    let mut words = sql.split_whitespace();
    let changes = |word: &str| {
        ["INSERT", "UPDATE", "DELETE"]
            .iter()
            .any(|w| word.eq_ignore_ascii_case(w))
    };
    match words.next() {
        // A data-modifying WITH: its branches change rows.
        Some(first) if first.eq_ignore_ascii_case("WITH") => {
            words.any(|w| changes(w.trim_start_matches('(')))
        }
        Some(first) => changes(first),
        None => false,
    }
}

/// `sql` with SQLite's parameter markers (`?1`, or a bare `?`, which SQLite
/// numbers one past the highest so far) written as PostgreSQL's (`$1`);
/// quoted text and identifiers are left as they are.
pub(crate) fn postgres_parameters(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 8);
    let mut chars = sql.chars().peekable();
    let mut quote: Option<char> = None;
    let mut highest = 0u32;
    while let Some(c) = chars.next() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '\'' | '"') => quote = Some(c),
            (None, '?') => {
                let mut digits = String::new();
                while let Some(d) = chars.peek().copied().filter(char::is_ascii_digit) {
                    digits.push(d);
                    chars.next();
                }
                let number = digits.parse().unwrap_or(highest + 1);
                highest = highest.max(number);
                out.push('$');
                out.push_str(&number.to_string());
                continue;
            }
            (None, _) => {}
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameter_markers_become_numbered_dollars_outside_quotes() {
        assert_eq!(
            postgres_parameters("SELECT ?1, ?12, ? FROM t WHERE a = '?1' AND \"b?\" = ?2"),
            "SELECT $1, $12, $13 FROM t WHERE a = '?1' AND \"b?\" = $2"
        );
        // A bare marker after a lower numbered one still counts from the
        // highest, as SQLite numbers it.
        assert_eq!(postgres_parameters("?3, ?1, ?"), "$3, $1, $4");
    }

    #[test]
    fn a_time_survives_the_trip_through_postgresql_s_epoch() {
        let micros = 1_764_000_000_123_456_i64;
        let mut out = bytes::BytesMut::new();
        tokio_postgres::types::ToSql::to_sql(
            &PgArg(Value::Integer(micros)),
            &Type::TIMESTAMPTZ,
            &mut out,
        )
        .unwrap();
        assert_eq!(
            decode(&Type::TIMESTAMPTZ, Some(out.to_vec())).unwrap(),
            Value::Integer(micros)
        );
    }

    #[test]
    fn a_uuid_reads_back_as_the_text_sqlite_stores() {
        let id = uuid::Uuid::new_v4();
        let mut out = bytes::BytesMut::new();
        tokio_postgres::types::ToSql::to_sql(
            &PgArg(Value::Text(id.to_string())),
            &Type::UUID,
            &mut out,
        )
        .unwrap();
        assert_eq!(
            decode(&Type::UUID, Some(out.to_vec())).unwrap(),
            Value::Text(id.to_string())
        );
    }

    fn literal(value: Value, ty: Type) -> Result<String, String> {
        let mut out = String::new();
        write_literal(&value, &ty, &mut out).map(|()| out)
    }

    #[test]
    fn the_writer_session_raises_the_codes_the_writer_reads() {
        assert!(WRITER_SESSION.contains(&format!("'{BEHIND_A_FAILURE}'")));
        assert!(WRITER_SESSION.contains("madre.committed"));
        let lock = format!("pg_advisory_xact_lock({})", 120_265_064_473_906_i64);
        assert!(PG_BEGIN.contains(&lock) && WRITER_SESSION.contains(&lock));
    }

    #[test]
    fn a_batched_statement_counts_as_many_answers_as_the_server_gives() {
        let mut batch = String::new();
        let execute = Batched::Execute {
            sql: None,
            text: "EXECUTE madre_1('a;b; c;')".into(),
        };
        assert_eq!(execute.push_to(&mut batch), 1, "a ; in a literal");
        assert_eq!(Batched::Control(PG_BEGIN).push_to(&mut batch), 2);
        assert_eq!(Batched::Control("SAVEPOINT at_end").push_to(&mut batch), 1);
    }

    #[test]
    fn a_text_literal_doubles_its_quotes_and_nothing_else() {
        assert_eq!(
            literal(Value::Text(r"it's \' $$ ; --".into()), Type::TEXT).unwrap(),
            r"'it''s \'' $$ ; --'"
        );
        assert_eq!(
            literal(Value::Text("''".into()), Type::JSON).unwrap(),
            "''''''"
        );
        assert!(literal(Value::Text("nul\0inside".into()), Type::TEXT).is_err());
    }

    #[test]
    fn literals_say_what_the_binary_encoding_binds() {
        assert_eq!(literal(Value::Null, Type::UUID).unwrap(), "NULL");
        assert_eq!(literal(Value::Integer(-7), Type::INT8).unwrap(), "'-7'");
        assert_eq!(literal(Value::Integer(1), Type::BOOL).unwrap(), "true");
        assert_eq!(
            literal(Value::Integer(1_764_000_000_123_456), Type::TIMESTAMPTZ).unwrap(),
            "'2025-11-24 16:00:00.123456+00'"
        );
        assert_eq!(
            literal(Value::Blob(vec![0, 0xab]), Type::BYTEA).unwrap(),
            r"'\x00ab'"
        );
        assert_eq!(literal(Value::Real(0.1), Type::FLOAT8).unwrap(), "'0.1'");
        assert_eq!(
            literal(Value::Real(f64::NEG_INFINITY), Type::FLOAT8).unwrap(),
            "'-Infinity'"
        );
        let id = uuid::Uuid::new_v4();
        assert_eq!(
            literal(Value::Text(id.simple().to_string()), Type::UUID).unwrap(),
            format!("'{id}'")
        );
        // Refused as the binary encoding refuses them.
        assert!(literal(Value::Integer(70_000), Type::INT2).is_err());
        assert!(literal(Value::Text("not a uuid".into()), Type::UUID).is_err());
        assert!(literal(Value::Text("1".into()), Type::INT8).is_err());
        assert!(literal(Value::Integer(i64::MAX), Type::TIMESTAMPTZ).is_err());
    }

    #[test]
    fn an_execute_names_its_statement_and_takes_exactly_its_parameters() {
        let args = [PgArg(Value::Integer(1)), PgArg(Value::Text("a'b".into()))];
        assert_eq!(
            execute_text("madre_3", &[Type::INT8, Type::TEXT], &args).unwrap(),
            "EXECUTE madre_3('1', 'a''b')"
        );
        assert_eq!(
            execute_text("madre_4", &[], &[]).unwrap(),
            "EXECUTE madre_4"
        );
        assert!(execute_text("madre_3", &[Type::INT8], &args).is_err());
        let nul = [PgArg(Value::Text("\0".into()))];
        assert!(matches!(
            execute_text("madre_5", &[Type::TEXT], &nul),
            Err(DbError::Unstorable(_))
        ));
    }

    #[test]
    fn an_out_of_range_integer_is_refused_not_wrapped() {
        let mut out = bytes::BytesMut::new();
        let refused = tokio_postgres::types::ToSql::to_sql(
            &PgArg(Value::Integer(70_000)),
            &Type::INT2,
            &mut out,
        );
        assert!(refused.is_err());
    }
}

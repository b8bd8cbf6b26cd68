//! Madre's flows as a library: chat, confirm, cancel, control, the v6 task,
//! start-up (resume) and the background loops. Another Rust service embeds
//! Madre by building a [`Madre`] and calling these methods from any Tokio
//! runtime; the HTTP server in `bins/madre` only decodes, authenticates,
//! routes and encodes.
//!
//! A flow takes the authenticated [`Principal`] and a checked command (the
//! `madre-models` request types' `validate()`), and answers a
//! `madre-models` response or a [`FlowError`].
//!
//! Only the state machine of `madre-lifecycle` decides plan transitions and
//! only `madre-db` writes them: the flows ask for changes
//! ([`madre_db::Db::apply_events`] through the runner and the confirmation
//! methods) and never touch plan state themselves.

mod background;
mod bus;
mod chat;
mod confirm;
mod control;
mod error;
mod events;
mod idempotency;
mod intake;
mod own;
mod plans;
mod reads;

pub use background::{Background, StartupReport};
pub use confirm::{Approval, Confirmed, MAX_REASON_CHARS};
pub use control::ControlOutcome;
pub use error::FlowError;
pub use events::{FeedItem, FollowEnd, FollowPace, SharedEvent};
pub use idempotency::{Answer, IdempotencyKey};
/// Storage types the HTTP face needs, so that it takes none from madre-db
/// itself: the plan list's filter and kinds, the storage fault a 503
/// names, and the commit sync mode of the settings.
pub use madre_db::{
    JournalFilter, PlanFilter, PlanKind, StorageFault, SyncMode, WriterStats, check_postgres_url,
};
pub use own::Reload;
pub use plans::{actions_of, reply_of};
pub use reads::{Page, StorageSpace};

use madre_db::Db;
use madre_delegation::{Delegator, HealthTable};
use madre_policy::{Principal, Principals, RiskTables, Role};
use madre_runner::Runner;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// The settings the flows read (SPEC §2), with their units in their names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MadreConfig {
    /// Lifetime of a confirmation token (`MADRE_CONFIRM_TTL_S`).
    pub confirm_ttl_s: u64,
    /// Whole-plan deadline (`MADRE_TASK_TIMEOUT_S`); a request waits for
    /// its plan this long, plus a margin, before answering RUNNING.
    pub task_timeout_s: u64,
    /// Messages kept per session (`MADRE_HISTORY_MAX`).
    pub history_max: u32,
    /// Idle time before a session closes (`MADRE_SESSION_IDLE_S`).
    pub session_idle_s: u64,
    /// Retention of finished spawn records (`MADRE_SPAWN_RETENTION_S`).
    pub spawn_retention_s: u64,
    /// How long a finished plan stays before the cleanup moves it to the
    /// archives beside the database (`MADRE_PLAN_RETENTION_DAYS`); `None`
    /// keeps every plan.
    pub plan_retention: Option<Duration>,
    /// Lifetime of stored `Idempotency-Key` answers (`MADRE_IDEMPOTENCY_TTL_S`).
    pub idempotency_ttl_s: u64,
    /// Period of the module health probe.
    pub probe_interval: Duration,
    /// Period of the cleanup pass.
    pub cleanup_interval: Duration,
    /// How long a plan this replica executes stays its own without a
    /// renewal (`MADRE_PLAN_LEASE_S`, SPEC §16): leases are renewed, and
    /// lapsed ones taken over, every third of it.
    pub plan_lease: Duration,
    /// The risk-table override to (re)load (`MADRE_POLICY_FILE`).
    pub policy_file: Option<PathBuf>,
    /// Ask Switch for the intent first (`MADRE_SWITCH_INTENT`, SPEC §4a).
    pub switch_intent: bool,
    /// Where people reach Madre, for the approve links the event bus
    /// carries (`MADRE_PUBLIC_URL`).
    pub public_url: String,
    /// Approve links carry the confirm token in their fragment
    /// (`MADRE_APPROVAL_LINKS=on`); off, the approver needs the token from
    /// the requester.
    pub approval_links: bool,
}

impl Default for MadreConfig {
    fn default() -> Self {
        Self {
            confirm_ttl_s: 600,
            task_timeout_s: 120,
            history_max: 100,
            session_idle_s: 3600,
            spawn_retention_s: 3600,
            plan_retention: Some(Duration::from_secs(30 * 86_400)),
            idempotency_ttl_s: 86_400,
            probe_interval: Duration::from_secs(10),
            cleanup_interval: Duration::from_secs(60),
            plan_lease: Duration::from_secs(15),
            policy_file: None,
            switch_intent: true,
            public_url: "http://127.0.0.1:8001".into(),
            approval_links: false,
        }
    }
}

/// How much longer than the plan deadline a request waits for its plan: the
/// deadline's own bookkeeping (a step abandoned, the rest cancelled) fits.
const WAIT_MARGIN: Duration = Duration::from_secs(5);

/// Re-reads what a restart reloads (SPEC §9): the policy file, the
/// principals file and the reloadable settings. The embedding service reads
/// its own configuration sources; an `Err` names what is wrong, and the
/// settings in force stay.
pub type Reloader = Box<dyn Fn() -> Result<Reload, String> + Send + Sync>;

/// Everything [`Madre::new`] needs.
pub struct Parts {
    /// Storage.
    pub db: Db,
    /// Plan execution (Madre installs its own actions on it).
    pub runner: Runner,
    /// Calls to the modules.
    pub delegator: Delegator,
    /// The risk tables in force.
    pub tables: RiskTables,
    /// Who may call, with which role.
    pub principals: Principals,
    /// The settings in force.
    pub config: MadreConfig,
    /// What a restart re-reads; `None` reloads the policy file only.
    pub reloader: Option<Reloader>,
}

/// Madre: storage, execution, the modules, and the policy, principals and
/// settings in force (replaced as a whole by a restart). Shared behind an
/// `Arc`; every method takes `&self`.
pub struct Madre {
    db: Db,
    runner: Runner,
    delegator: Delegator,
    health: HealthTable,
    tables: RwLock<Arc<RiskTables>>,
    /// The parser's word lists with the policy file's extra words; `None`
    /// when it adds none (the built-in lists are used).
    lexicon: RwLock<Option<Arc<madre_parser::Lexicon>>>,
    principals: RwLock<Arc<Principals>>,
    config: RwLock<Arc<MadreConfig>>,
    reloader: Option<Reloader>,
    background: Mutex<Option<Background>>,
    started_at: Instant,
    /// The `Idempotency-Key` reservations this process holds.
    held_keys: idempotency::HeldKeys,
    /// Plans and compressed bytes this process moved to the archives.
    archived: (AtomicU64, AtomicU64),
    /// The one reader of the journal's new events that every follower of
    /// the event stream shares, started with the first follower.
    tail: std::sync::OnceLock<events::Tail>,
    /// Readers of the event stream being followed now.
    followers: AtomicU64,
}

impl std::fmt::Debug for Madre {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Madre")
            .field("db", &self.db)
            .field("config", &self.config())
            .finish_non_exhaustive()
    }
}

fn read<T: ?Sized>(lock: &RwLock<Arc<T>>) -> Arc<T> {
    lock.read().unwrap_or_else(|p| p.into_inner()).clone()
}

fn replace<T: ?Sized>(lock: &RwLock<Arc<T>>, value: Arc<T>) {
    *lock.write().unwrap_or_else(|p| p.into_inner()) = value;
}

impl Madre {
    /// Madre over these parts. Its own actions (a confirmed `restart`) are
    /// installed on the runner. Fails when the policy's extra words cannot
    /// extend the parser's lists.
    pub fn new(parts: Parts) -> Result<Arc<Self>, FlowError> {
        let health = HealthTable::new(parts.delegator.registry());
        let lexicon = lexicon_for(&parts.tables)?;
        parts.db.set_plan_lease(parts.config.plan_lease);
        let madre = Arc::new(Self {
            db: parts.db,
            runner: parts.runner,
            delegator: parts.delegator,
            health,
            tables: RwLock::new(Arc::new(parts.tables)),
            lexicon: RwLock::new(lexicon),
            principals: RwLock::new(Arc::new(parts.principals)),
            config: RwLock::new(Arc::new(parts.config)),
            reloader: parts.reloader,
            background: Mutex::new(None),
            started_at: Instant::now(),
            held_keys: idempotency::HeldKeys::default(),
            archived: (AtomicU64::new(0), AtomicU64::new(0)),
            tail: std::sync::OnceLock::new(),
            followers: AtomicU64::new(0),
        });
        madre
            .runner
            .set_own_actions(Arc::new(own::OwnActions(Arc::downgrade(&madre))));
        Ok(madre)
    }

    /// Storage.
    pub fn db(&self) -> &Db {
        &self.db
    }

    /// Plan execution.
    pub fn runner(&self) -> &Runner {
        &self.runner
    }

    /// Calls to the modules.
    pub fn delegator(&self) -> &Delegator {
        &self.delegator
    }

    /// The last health probe of every module.
    pub fn health(&self) -> &HealthTable {
        &self.health
    }

    /// The settings in force.
    pub fn config(&self) -> Arc<MadreConfig> {
        read(&self.config)
    }

    /// The risk tables in force.
    pub fn tables(&self) -> Arc<RiskTables> {
        read(&self.tables)
    }

    /// Parses `text` with the word lists in force (SPEC §4, plus the
    /// policy file's `[families]`).
    pub fn parse(&self, text: &str) -> madre_models::Dsl {
        let lexicon = self
            .lexicon
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        match lexicon {
            Some(lexicon) => lexicon.parse(text),
            None => madre_parser::parse(text),
        }
    }

    /// The principal whose secret is `token`, compared in constant time.
    pub fn authenticate(&self, token: &str) -> Option<Principal> {
        read(&self.principals).authenticate(token).cloned()
    }

    /// When this Madre was built.
    pub fn started_at(&self) -> Instant {
        self.started_at
    }

    /// How long a request waits for its plan before answering RUNNING.
    pub(crate) fn wait_for_plan(&self) -> Duration {
        Duration::from_secs(self.config().task_timeout_s) + WAIT_MARGIN
    }
}

/// Runs `flow` on a task of its own, in the caller's span, and waits for
/// it: dropping the returned future leaves the flow running to its end, so
/// its bookkeeping (closing an intent, storing an idempotent answer) is
/// never cut in the middle. A flow that panicked, or whose runtime shut
/// down, answers [`FlowError::Internal`].
pub(crate) async fn detached<T: Send + 'static>(
    flow: impl std::future::Future<Output = Result<T, FlowError>> + Send + 'static,
) -> Result<T, FlowError> {
    use tracing::Instrument;
    tokio::spawn(flow.instrument(tracing::Span::current()))
        .await
        .map_err(|e| FlowError::Internal(format!("the flow's task ended early: {e}")))?
}

/// The parser's lists extended by the policy's `[families]` and
/// `[effects]`, or `None` when it adds nothing. A file that would make a
/// verb Madre knows as send, execute or destroy harmless is refused here.
fn lexicon_for(tables: &RiskTables) -> Result<Option<Arc<madre_parser::Lexicon>>, FlowError> {
    let no_effects = tables
        .effects
        .values()
        .all(|w| w.verbs.is_empty() && w.objects.is_empty());
    if tables.families.values().all(Vec::is_empty) && no_effects {
        return Ok(None);
    }
    let effects = tables
        .effect_words()
        .map(|(effect, words)| madre_parser::EffectExtras {
            effect,
            verbs: &words.verbs,
            objects: &words.objects,
        });
    madre_parser::Lexicon::with_policy(&tables.families, effects)
        .map(|l| Some(Arc::new(l)))
        .map_err(|e| FlowError::Reload(e.to_string()))
}

/// Fails with [`FlowError::Forbidden`] unless `principal` has at least `role`.
pub fn require(principal: &Principal, role: Role) -> Result<(), FlowError> {
    if principal.role.at_least(role) {
        Ok(())
    } else {
        Err(FlowError::Forbidden(format!(
            "this needs the {} role; {} has {}",
            role.as_str(),
            principal.name,
            principal.role.as_str()
        )))
    }
}

//! Building and running the server: Madre (storage, policy, runner,
//! modules, from `madre-flows`), the principals, the HTTP app, and the
//! background loops the library runs.

use actix_http::error::DispatchError;
use actix_http::{HttpService, KeepAlive, Protocol};
use actix_service::{IntoServiceFactory, ServiceFactoryExt, fn_service, map_config};
use actix_web::dev::{AppConfig, Server};
use actix_web::{App, web};
use madre_db::Db;
use madre_delegation::Delegator;
use madre_flows::{Madre, MadreConfig, Parts, Reload};
use madre_policy::{Principals, RiskTables, Role};
use madre_runner::{Runner, RunnerConfig};
use std::net::TcpListener;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::before_routing::Stamped;
use crate::config::Settings;
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::state::AppState;
use crate::{request_id, routes};

/// Blocking threads each HTTP worker may run database work on. Reads queue
/// for 8 pooled connections and writes for one writer anyway; a few busy
/// threads taking the next job beat many that sleep and wake for each
/// request (context switches were about 15 % of madre's CPU when listing
/// plans under load).
const BLOCKING_THREADS_PER_WORKER: usize = 2;

/// How long a shutdown waits for queued database writes to commit.
const SHUTDOWN_DRAIN: std::time::Duration = std::time::Duration::from_secs(10);

/// Why Madre could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The database could not be opened.
    #[error("database: {0}")]
    Db(#[from] madre_db::DbError),
    /// The policy file is invalid.
    #[error("MADRE_POLICY_FILE: {0}")]
    Policy(#[from] madre_policy::PolicyError),
    /// The principals file is invalid.
    #[error("MADRE_TOKENS_FILE: {0}")]
    Principals(#[from] madre_policy::PrincipalsError),
    /// The policy file's extra words do not fit the parser's lists.
    #[error("MADRE_POLICY_FILE: {0}")]
    Flows(#[from] madre_flows::FlowError),
    /// A file of the data dir could not be read, or an argument was wrong.
    #[error("{0}")]
    Io(String),
    /// The listen address could not be bound.
    #[error("MADRE_BIND {bind}: {source}")]
    Bind {
        /// The address.
        bind: String,
        /// The error.
        source: std::io::Error,
    },
}

/// A built server, bound but not yet running.
pub struct Application {
    server: Server,
    port: u16,
    state: web::Data<AppState>,
}

fn load_tables(settings: &Settings) -> Result<RiskTables, madre_policy::PolicyError> {
    match &settings.policy_file {
        Some(path) => RiskTables::load(path),
        None => Ok(RiskTables::default()),
    }
}

fn load_principals(settings: &Settings) -> Result<Principals, madre_policy::PrincipalsError> {
    let principals = Principals::new().with_token("admin", Role::Admin, &settings.api_token);
    match &settings.tokens_file {
        Some(path) => principals.with_file(path),
        None => Ok(principals),
    }
}

/// The settings of `settings` that the flows read, and a restart reloads.
fn flow_config(settings: &Settings) -> MadreConfig {
    MadreConfig {
        confirm_ttl_s: settings.confirm_ttl_s,
        task_timeout_s: settings.task_timeout_s,
        history_max: settings.history_max,
        session_idle_s: settings.session_idle_s,
        spawn_retention_s: settings.spawn_retention_s,
        plan_retention: (settings.plan_retention_days > 0.0)
            .then(|| std::time::Duration::from_secs_f64(settings.plan_retention_days * 86_400.0)),
        idempotency_ttl_s: settings.idempotency_ttl_s,
        probe_interval: settings.probe_interval,
        cleanup_interval: settings.cleanup_interval,
        plan_lease: settings.plan_lease,
        policy_file: settings.policy_file.clone(),
        switch_intent: settings.switch_intent,
        public_url: settings.public_url.clone(),
        approval_links: settings.approval_links,
    }
}

/// What a confirmed restart re-reads: the settings from the same sources
/// as at start (environment, `MADRE_CONFIG`), then the policy and
/// principals files they name. Settings that need a new process (listen
/// address, database, module URLs, runner limits) keep their start values.
fn reload(settings: &Settings) -> Result<Reload, String> {
    let fresh = settings.reread().map_err(|e| e.to_string())?;
    Ok(Reload {
        tables: load_tables(&fresh).map_err(|e| format!("MADRE_POLICY_FILE: {e}"))?,
        principals: load_principals(&fresh).map_err(|e| format!("MADRE_TOKENS_FILE: {e}"))?,
        config: flow_config(&fresh),
    })
}

/// A resource serving one method; the others answer 405 with `Allow`
/// rather than falling through to the app's 404.
fn resource(path: &str, allow: &'static str) -> actix_web::Resource {
    web::resource(path).default_service(web::to(move |req: actix_web::HttpRequest| async move {
        routes::method_not_allowed(&req, allow)
    }))
}

/// What `madre check` or `madre repair` found, as text for a person.
pub struct CheckReport {
    /// One line per finding, and a summary line.
    pub text: String,
    /// Nothing was wrong (check), or everything wrong was repaired (repair).
    pub clean: bool,
}

/// `madre archive list` and `madre archive show`: the archives beside the
/// database of `settings`, read without a server. An archive that cannot
/// be read is named and skipped (the report is then not clean).
pub fn read_archives(
    settings: &Settings,
    command: &crate::cli::ArchiveCommand,
) -> Result<CheckReport, StartError> {
    use crate::cli::ArchiveCommand;
    use std::fmt::Write as _;
    let dir = madre_db::archive_dir(&settings.db_path);
    let mut names: Vec<String> = match std::fs::read_dir(&dir) {
        Ok(entries) => entries
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|name| name.ends_with(".jsonl.gz"))
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(StartError::Io(format!("{}: {e}", dir.display()))),
    };
    names.sort();
    let mut text = String::new();
    let mut clean = true;
    match command {
        ArchiveCommand::List => {
            if names.is_empty() {
                let _ = writeln!(text, "no archives in {}", dir.display());
            }
            for name in &names {
                let path = dir.join(name);
                let bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
                match madre_db::read_archive(&path) {
                    Ok(lines) => {
                        let _ = writeln!(text, "{name}\t{} plan(s)\t{bytes} bytes", lines.len());
                    }
                    Err(e) => {
                        clean = false;
                        let _ = writeln!(text, "{name}\tunreadable: {e}");
                    }
                }
            }
        }
        ArchiveCommand::Show { id } => {
            let plan_id = uuid::Uuid::parse_str(id.trim())
                .map_err(|_| StartError::Io(format!("{id:?} is not a plan id (a UUID)")))?;
            // The database says which archive holds it; without that
            // (another data dir's archives), every archive is searched.
            let named = open_database(settings)?.archived_plan(plan_id)?;
            let candidates: Vec<&String> = match &named {
                Some(name) => names.iter().filter(|n| *n == name).collect(),
                None => names.iter().collect(),
            };
            let wanted = plan_id.to_string();
            let mut found = None;
            for name in candidates {
                match madre_db::read_archive(&dir.join(name)) {
                    Ok(lines) => {
                        found = lines.into_iter().find(|l| l["plan_id"] == wanted.as_str());
                        if found.is_some() {
                            break;
                        }
                    }
                    Err(e) => {
                        clean = false;
                        let _ = writeln!(text, "{name}: unreadable, skipped: {e}");
                    }
                }
            }
            match found {
                Some(line) => {
                    let pretty = serde_json::to_string_pretty(&line)
                        .map_err(|e| StartError::Io(e.to_string()))?;
                    let _ = writeln!(text, "{pretty}");
                }
                None => {
                    clean = false;
                    let _ = writeln!(text, "plan {plan_id} is in no archive in {}", dir.display());
                }
            }
        }
    }
    Ok(CheckReport { text, clean })
}

/// Opens the database `settings` name: the PostgreSQL database of
/// `MADRE_DATABASE_URL` when it is set, else the SQLite file at
/// `MADRE_DB_PATH`, named in the journal as `MADRE_REPLICA_ID` says.
pub fn open_database(settings: &Settings) -> Result<Db, madre_db::DbError> {
    use secrecy::ExposeSecret;
    let replica = settings
        .replica_id
        .clone()
        .unwrap_or_else(madre_db::default_replica);
    match &settings.database_url {
        Some(url) => Db::open_postgres(url.expose_secret(), &settings.db_path, &replica),
        None => Db::open_as(&settings.db_path, settings.sqlite_sync, &replica),
    }
}

/// Checks (or repairs, when `repair`) the database of `settings`: every
/// plan's row against its journal, the counters against the rows, and
/// SQLite's own integrity check.
pub fn check_database(settings: &Settings, repair: bool) -> Result<CheckReport, StartError> {
    use std::fmt::Write as _;
    let db = open_database(settings)?;
    db.integrity_check()?;
    let mut text = String::new();
    let path = match db.is_postgres() {
        true => "the PostgreSQL database".to_owned(),
        false => settings.db_path.display().to_string(),
    };
    let clean = if repair {
        let (repaired, left) = db.repair_plans().wait()?;
        for p in &repaired {
            let _ = writeln!(text, "repaired {}: {}", p.plan_id, p.problem);
        }
        for p in &left {
            let _ = writeln!(text, "NOT repaired {}: {}", p.plan_id, p.problem);
        }
        let _ = writeln!(
            text,
            "{path}: {} plan(s) repaired, {} left as they were; counters rebuilt",
            repaired.len(),
            left.len()
        );
        left.is_empty()
    } else {
        let problems = db.check_plans()?;
        for p in &problems {
            let _ = writeln!(text, "{}: {}", p.plan_id, p.problem);
        }
        if problems.is_empty() {
            let _ = writeln!(text, "{path}: ok, every plan agrees with its journal");
        } else {
            let _ = writeln!(
                text,
                "{path}: {} problem(s); `madre repair` rebuilds rows from their journal",
                problems.len()
            );
        }
        problems.is_empty()
    };
    Ok(CheckReport { text, clean })
}

impl Application {
    /// Opens storage, reads policy and principals, and binds the listener
    /// (`MADRE_BIND`; port 0 picks a free port).
    pub fn build(settings: Settings) -> Result<Self, StartError> {
        let db = open_database(&settings)?;
        // An open plan whose journal the state machine refuses stops the
        // start here, named, before anything is resumed or written.
        db.check_open_plans()?;
        let tables = load_tables(&settings)?;
        let principals = load_principals(&settings)?;
        let delegator = Delegator::new(Arc::new(settings.registry.clone()));
        let runner = Runner::new(
            db.clone(),
            delegator.clone(),
            RunnerConfig {
                max_concurrent: settings.max_concurrent_tasks,
                max_queued: settings.max_queued_tasks,
                task_timeout: Duration::from_secs(settings.task_timeout_s),
                ..RunnerConfig::default()
            },
        );
        let listener = TcpListener::bind(&settings.bind).map_err(|source| StartError::Bind {
            bind: settings.bind.clone(),
            source,
        })?;
        let local_addr = listener.local_addr().map_err(|source| StartError::Bind {
            bind: settings.bind.clone(),
            source,
        })?;
        let port = local_addr.port();
        let max_body = settings.max_body_bytes;
        let rate_limit_per_s = settings.rate_limit_per_s;
        let auth_failures_per_min = settings.auth_failures_per_min;
        let for_reload = settings.clone();
        let madre = Madre::new(Parts {
            db,
            runner,
            delegator,
            tables,
            principals,
            config: flow_config(&settings),
            reloader: Some(Box::new(move || reload(&for_reload))),
        })?;
        let state = web::Data::new(AppState {
            settings,
            madre,
            rate_limiter: crate::rate_limit::RateLimiter::new(rate_limit_per_s),
            auth_failures: crate::rate_limit::AuthFailureLimiter::new(auth_failures_per_min),
            metrics: Metrics::default(),
        });

        let app_state = state.clone();
        let make_app = move || {
            let metrics_state = app_state.clone();
            App::new()
                .app_data(app_state.clone())
                .app_data(web::PayloadConfig::new(max_body))
                .app_data(
                    web::QueryConfig::default()
                        .error_handler(|err, _| ApiError::InvalidField(err.to_string()).into()),
                )
                .app_data(
                    web::PathConfig::default()
                        .error_handler(|err, _| ApiError::NotFound(err.to_string()).into()),
                )
                .wrap_fn(move |req, srv| {
                    let started = Instant::now();
                    let metrics = metrics_state.clone();
                    let call = actix_web::dev::Service::call(srv, req);
                    async move {
                        let response = call.await?;
                        let route = response
                            .request()
                            .match_pattern()
                            .unwrap_or_else(|| "unmatched".into());
                        metrics.metrics.observe(
                            &route,
                            response.status().as_u16(),
                            started.elapsed(),
                        );
                        Ok(response)
                    }
                })
                .wrap_fn(request_id::tag)
                .wrap_fn(|mut req, srv| {
                    crate::body_deadline::limit(&mut req);
                    actix_web::dev::Service::call(srv, req)
                })
                .service(resource("/health", "GET").route(web::get().to(routes::health)))
                .service(resource("/metrics", "GET").route(web::get().to(routes::metrics)))
                .service(resource("/madre/chat", "POST").route(web::post().to(routes::chat)))
                .service(resource("/madre/control", "POST").route(web::post().to(routes::control)))
                .service(resource("/madre/plans", "GET").route(web::get().to(routes::list_plans)))
                .service(resource("/madre/events", "GET").route(web::get().to(routes::events)))
                .service(resource("/madre/whoami", "GET").route(web::get().to(routes::whoami)))
                .service(resource("/ui", "GET").route(web::get().to(crate::ui::index)))
                .service(resource("/ui/plans/{id}", "GET").route(web::get().to(crate::ui::index)))
                .service(resource("/ui/app.js", "GET").route(web::get().to(crate::ui::script)))
                .service(resource("/ui/app.css", "GET").route(web::get().to(crate::ui::style)))
                .service(resource("/ui/favicon.svg", "GET").route(web::get().to(crate::ui::icon)))
                .service(
                    resource("/madre/plans/{id}", "GET").route(web::get().to(routes::get_plan)),
                )
                .service(
                    resource("/madre/plans/{id}/confirm", "POST")
                        .route(web::post().to(routes::confirm)),
                )
                .service(
                    resource("/madre/plans/{id}/reject", "POST")
                        .route(web::post().to(routes::reject)),
                )
                .service(
                    resource("/madre/plans/{id}/cancel", "POST")
                        .route(web::post().to(routes::cancel)),
                )
                .service(resource("/chat", "POST").route(web::post().to(routes::chat_v6)))
                .service(resource("/task", "POST").route(web::post().to(routes::task)))
                .service(resource("/tasks", "GET").route(web::get().to(routes::list_tasks)))
                .service(resource("/tasks/{id}", "GET").route(web::get().to(routes::get_task)))
                .service(
                    resource("/tasks/{id}/cancel", "POST")
                        .route(web::post().to(routes::task_cancel)),
                )
                .service(
                    resource("/openapi.json", "GET")
                        .route(web::get().to(crate::openapi::openapi_json)),
                )
                .service(resource("/control", "POST").route(web::post().to(routes::self_control)))
                .default_service(web::to(routes::not_found))
        };
        let mut builder = actix_server::Server::build();
        let shutdown = builder.graceful_shutdown_signal();
        builder = builder
            .shutdown_timeout(10)
            .worker_max_blocking_threads(BLOCKING_THREADS_PER_WORKER);
        // actix-web's HttpServer, with each connection wrapped so that the
        // answers its HTTP layer writes before routing (408, 431, 400) get
        // a request id too (see `before_routing`).
        let server = builder
            .listen("madre", listener, move || {
                let shutdown = shutdown.clone();
                let app = make_app()
                    .into_factory()
                    .map_err(|err: actix_web::Error| err.error_response());
                let http = HttpService::build()
                    .graceful_shutdown_signal(move || {
                        let shutdown = shutdown.clone();
                        async move { shutdown.notified().await }
                    })
                    .keep_alive(KeepAlive::default())
                    .client_request_timeout(Duration::from_secs(5))
                    .client_disconnect_timeout(Duration::from_secs(1))
                    .h1_allow_half_closed(true)
                    .local_addr(local_addr)
                    .finish(map_config(app, |_| AppConfig::default()));
                fn_service(|io: actix_rt::net::TcpStream| async move {
                    let peer = io.peer_addr().ok();
                    Ok::<_, DispatchError>((Stamped::new(io), Protocol::Http1, peer))
                })
                .and_then(http)
            })
            .map_err(|source| StartError::Bind {
                bind: "listener".into(),
                source,
            })?
            .run();
        Ok(Self {
            server,
            port,
            state,
        })
    }

    /// The port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Madre itself, for a service that embeds the server and drives the
    /// flows or the storage beside HTTP (e.g. capping the database's size
    /// with `madre().db().set_max_size(…)`).
    pub fn madre(&self) -> std::sync::Arc<Madre> {
        self.state.madre.clone()
    }

    /// A handle to stop the server (graceful, as on SIGTERM).
    pub fn handle(&self) -> actix_web::dev::ServerHandle {
        self.server.handle()
    }

    /// Resumes interrupted plans, starts the background loops and serves
    /// until SIGTERM/SIGINT (or the server is stopped).
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let madre = self.state.madre.clone();
        match madre.start_up().await {
            Ok(report) => tracing::info!(
                plans_resumed = report.plans_resumed,
                intents_closed = report.intents_closed,
                reservations_freed = report.reservations_freed,
                "started up"
            ),
            Err(e) => tracing::error!(error = %e, "could not resume interrupted plans"),
        }
        madre.start_background();
        let result = self.server.await;
        madre.stop_background();
        // What requests and plans queued is written before the process
        // ends, within a deadline.
        let drained = madre.drain_writes(SHUTDOWN_DRAIN).await;
        tracing::info!(writes_drained = drained, "madre stopped");
        result
    }
}

//! Settings from the environment, or a TOML file named by `MADRE_CONFIG`
//! with the same keys (the environment wins). A bad value stops the start
//! with a message naming the variable.

use madre_delegation::{ConfigError, Registry};
use secrecy::SecretString;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Everything Madre reads at start.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Listen address (`MADRE_BIND`); port 0 picks a free port.
    pub bind: String,
    /// Data directory (`MADRE_DATA_DIR`).
    pub data_dir: PathBuf,
    /// SQLite file (`MADRE_DB_PATH`).
    pub db_path: PathBuf,
    /// How commits are synced (`MADRE_SQLITE_SYNC`: `normal`, the default,
    /// survives a process crash; `full` also a power loss).
    pub sqlite_sync: madre_flows::SyncMode,
    /// The PostgreSQL database (`MADRE_DATABASE_URL`: a `postgres://` URL
    /// or `key=value` string); unset, the SQLite file at `db_path`. A
    /// secret: it may hold a password.
    pub database_url: Option<SecretString>,
    /// This process's name in the journal (`MADRE_REPLICA_ID`; unset:
    /// `<hostname>-<pid>`): 1 to 64 letters, digits, `.`, `_` or `-`.
    pub replica_id: Option<String>,
    /// The API token (`VX11_TOKEN`, or generated into `$MADRE_DATA_DIR/token`).
    pub api_token: SecretString,
    /// Where a generated token was written, to tell the operator.
    pub generated_token_file: Option<PathBuf>,
    /// Optional principals file (`MADRE_TOKENS_FILE`).
    pub tokens_file: Option<PathBuf>,
    /// Optional risk-table override (`MADRE_POLICY_FILE`).
    pub policy_file: Option<PathBuf>,
    /// The modules (URLs, disabled, outbound token, call timeout).
    pub registry: Registry,
    /// Whole-plan deadline (`MADRE_TASK_TIMEOUT_S`).
    pub task_timeout_s: u64,
    /// Plans executing at once (`MADRE_MAX_CONCURRENT_TASKS`).
    pub max_concurrent_tasks: usize,
    /// Plans waiting for a slot (`MADRE_MAX_QUEUED_TASKS`).
    pub max_queued_tasks: usize,
    /// Confirmation token lifetime (`MADRE_CONFIRM_TTL_S`).
    pub confirm_ttl_s: u64,
    /// Idle time before a session closes (`MADRE_SESSION_IDLE_S`).
    pub session_idle_s: u64,
    /// Messages kept per session (`MADRE_HISTORY_MAX`).
    pub history_max: u32,
    /// Retention of finished spawn records (`MADRE_SPAWN_RETENTION_S`).
    pub spawn_retention_s: u64,
    /// Days a finished plan stays in the database before it moves to the
    /// archives (`MADRE_PLAN_RETENTION_DAYS`, fractions allowed; 0 keeps
    /// every plan).
    pub plan_retention_days: f64,
    /// Lifetime of stored `Idempotency-Key` answers (`MADRE_IDEMPOTENCY_TTL_S`).
    pub idempotency_ttl_s: u64,
    /// Request body limit (`MADRE_MAX_BODY_BYTES`).
    pub max_body_bytes: usize,
    /// Health probe period (`MADRE_PROBE_INTERVAL_S`, default 10).
    pub probe_interval: Duration,
    /// Cleanup period (`MADRE_CLEANUP_INTERVAL_S`, default 60).
    pub cleanup_interval: Duration,
    /// How long a plan this replica executes stays its own without a
    /// renewal (`MADRE_PLAN_LEASE_S`, default 15; renewed every third).
    pub plan_lease: Duration,
    /// Silence after which the event stream sends a keep-alive comment
    /// (`MADRE_EVENTS_KEEPALIVE_S`, default 15).
    pub events_keep_alive: Duration,
    /// Requests per second allowed per principal (`MADRE_RATE_LIMIT_PER_S`, 0 = unlimited).
    pub rate_limit_per_s: u32,
    /// Failed authentications allowed per client address and minute
    /// (`MADRE_AUTH_FAILURES_PER_MIN`, default 100, 0 = unlimited).
    pub auth_failures_per_min: u32,
    /// Logs as JSON lines on stderr (`MADRE_LOG_FORMAT=json`).
    pub log_json: bool,
    /// The tracing filter (`RUST_LOG`, default `info`), checked at start.
    pub log_filter: String,
    /// Ask Switch for the intent first (`MADRE_SWITCH_INTENT`, `on` or `off`).
    pub switch_intent: bool,
    /// The address people reach Madre at, for approve links
    /// (`MADRE_PUBLIC_URL`, default `http://` + `MADRE_BIND`).
    pub public_url: String,
    /// Approve links on the event bus carry the confirm token in their
    /// fragment (`MADRE_APPROVAL_LINKS`, `on` or `off`, default off).
    pub approval_links: bool,
    /// Where these settings came from (for [`Settings::reread`]).
    pub origin: Origin,
}

/// A day, in seconds: the unit of most upper bounds.
const DAY_S: u64 = 86_400;

fn bad(variable: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        variable: variable.to_owned(),
        reason: reason.into(),
    }
}

/// Looks a variable up by name.
type Lookup = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// Where the settings were read from, kept so a restart reads them again
/// from the same place.
#[derive(Clone)]
pub struct Origin(Lookup);

impl std::fmt::Debug for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Origin(..)")
    }
}

/// Reads variables from the environment first, then from the config file.
struct Source {
    file: HashMap<String, String>,
    env: Lookup,
}

impl Source {
    fn get(&self, name: &str) -> Option<String> {
        (self.env)(name)
            .or_else(|| self.file.get(name).cloned())
            .filter(|v| !v.trim().is_empty())
    }

    /// A whole number in `min..=max`, or `default` when unset. Every limit
    /// has an upper bound, so no value can overflow a clock or a counter
    /// later: `u64::MAX` seconds is refused here, naming the variable.
    /// A number of days from 0 to 100 years, fractions allowed (`0.5`, or
    /// `0.000694` for about a minute).
    fn days(&self, name: &str, default: f64) -> Result<f64, ConfigError> {
        match self.get(name) {
            None => Ok(default),
            Some(text) => match text.trim().parse::<f64>() {
                Ok(days) if (0.0..=36_500.0).contains(&days) => Ok(days),
                _ => Err(bad(
                    name,
                    format!("{text:?} is not a number of days from 0 to 36500"),
                )),
            },
        }
    }

    fn number<T>(&self, name: &str, default: T, min: T, max: T) -> Result<T, ConfigError>
    where
        T: std::str::FromStr + PartialOrd + std::fmt::Display + Copy,
    {
        match self.get(name) {
            None => Ok(default),
            Some(text) => match text.trim().parse::<T>() {
                Ok(n) if n >= min && n <= max => Ok(n),
                _ => Err(bad(
                    name,
                    format!("{text:?} is not a whole number from {min} to {max}"),
                )),
            },
        }
    }
}

/// Every key Madre reads, as accepted in the `MADRE_CONFIG` file.
const KNOWN_KEYS: &[&str] = &[
    "MADRE_BIND",
    "MADRE_DATA_DIR",
    "MADRE_DB_PATH",
    "MADRE_SQLITE_SYNC",
    "MADRE_DATABASE_URL",
    "MADRE_REPLICA_ID",
    "VX11_TOKEN",
    "MADRE_TOKENS_FILE",
    "VX11_OUTBOUND_TOKEN",
    "MADRE_DISABLED_MODULES",
    "MADRE_CALL_TIMEOUT_MS",
    "MADRE_TASK_TIMEOUT_S",
    "MADRE_MAX_CONCURRENT_TASKS",
    "MADRE_MAX_QUEUED_TASKS",
    "MADRE_CONFIRM_TTL_S",
    "MADRE_SESSION_IDLE_S",
    "MADRE_HISTORY_MAX",
    "MADRE_SPAWN_RETENTION_S",
    "MADRE_PLAN_RETENTION_DAYS",
    "MADRE_IDEMPOTENCY_TTL_S",
    "MADRE_MAX_BODY_BYTES",
    "MADRE_POLICY_FILE",
    "MADRE_PROBE_INTERVAL_S",
    "MADRE_CLEANUP_INTERVAL_S",
    "MADRE_PLAN_LEASE_S",
    "MADRE_EVENTS_KEEPALIVE_S",
    "MADRE_RATE_LIMIT_PER_S",
    "MADRE_AUTH_FAILURES_PER_MIN",
    "MADRE_LOG_FORMAT",
    "MADRE_SWITCH_INTENT",
    "MADRE_PUBLIC_URL",
    "MADRE_APPROVAL_LINKS",
    "RUST_LOG",
];

/// Whether `key` names a setting: one of [`KNOWN_KEYS`] or a module's URL.
fn is_known_key(key: &str) -> bool {
    KNOWN_KEYS.contains(&key)
        || madre_models::Module::REMOTE
            .iter()
            .any(|m| key == format!("VX11_{}_URL", m.env_name()))
}

fn read_config_file(path: &Path) -> Result<HashMap<String, String>, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        bad(
            "MADRE_CONFIG",
            format!("cannot read {}: {e}", path.display()),
        )
    })?;
    let table: toml::Table = toml::from_str(&text).map_err(|e| {
        bad(
            "MADRE_CONFIG",
            format!("{} is not valid TOML: {e}", path.display()),
        )
    })?;
    let mut values = HashMap::new();
    for (key, value) in table {
        let text = match value {
            toml::Value::String(s) => s,
            toml::Value::Integer(n) => n.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            other => {
                return Err(bad(
                    &key,
                    format!(
                        "in {}: {other:?} is not a string, number or boolean",
                        path.display()
                    ),
                ));
            }
        };
        let key = key.to_uppercase();
        if !is_known_key(&key) {
            return Err(bad(
                &key,
                format!(
                    "in {}: unknown key (a typo?); see SPEC §2 for the settings",
                    path.display()
                ),
            ));
        }
        values.insert(key, text);
    }
    Ok(values)
}

impl Settings {
    /// Reads the process environment (and `MADRE_CONFIG`).
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// Reads the settings again from where they first came from (the
    /// environment or the test's map, and the `MADRE_CONFIG` file).
    pub fn reread(&self) -> Result<Self, ConfigError> {
        Self::from_lookup(self.origin.0.clone())
    }

    /// Reads settings through `var` (tests pass their own map).
    pub fn from_vars(
        var: impl Fn(&str) -> Option<String> + Send + Sync + 'static,
    ) -> Result<Self, ConfigError> {
        Self::from_lookup(Arc::new(var))
    }

    fn from_lookup(var: Lookup) -> Result<Self, ConfigError> {
        let file = match var("MADRE_CONFIG") {
            Some(path) => read_config_file(Path::new(&path))?,
            None => HashMap::new(),
        };
        let source = Source {
            file,
            env: var.clone(),
        };

        let bind = source
            .get("MADRE_BIND")
            .unwrap_or_else(|| "127.0.0.1:8001".into());
        if bind.parse::<std::net::SocketAddr>().is_err() {
            return Err(bad(
                "MADRE_BIND",
                format!("{bind:?} is not an address like 127.0.0.1:8001"),
            ));
        }
        let data_dir = PathBuf::from(
            source
                .get("MADRE_DATA_DIR")
                .unwrap_or_else(|| "./data".into()),
        );
        let db_path = source
            .get("MADRE_DB_PATH")
            .map(PathBuf::from)
            .unwrap_or_else(|| data_dir.join("vx11.db"));
        let sqlite_sync = match source.get("MADRE_SQLITE_SYNC") {
            None => madre_flows::SyncMode::default(),
            Some(value) => value
                .parse()
                .map_err(|why: String| bad("MADRE_SQLITE_SYNC", why))?,
        };
        let database_url = source
            .get("MADRE_DATABASE_URL")
            .filter(|url| !url.trim().is_empty())
            .map(|url| {
                madre_flows::check_postgres_url(&url)
                    .map(|()| SecretString::from(url))
                    .map_err(|why| bad("MADRE_DATABASE_URL", why))
            })
            .transpose()?;
        let replica_id = source
            .get("MADRE_REPLICA_ID")
            .map(|name| {
                let fits = (1..=64).contains(&name.len())
                    && name
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
                match fits {
                    true => Ok(name),
                    false => Err(bad(
                        "MADRE_REPLICA_ID",
                        format!("{name:?} is not 1 to 64 letters, digits, '.', '_' or '-'"),
                    )),
                }
            })
            .transpose()?;
        let (api_token, generated_token_file) = match source.get("VX11_TOKEN") {
            Some(token) => (SecretString::from(token), None),
            None => {
                let (token, path) = load_or_generate_token(&data_dir)?;
                (token, Some(path))
            }
        };
        let registry = Registry::from_vars(|name| source.get(name), &api_token)?;
        let log_filter = source.get("RUST_LOG").unwrap_or_else(|| "info".into());
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&log_filter) {
            return Err(bad(
                "RUST_LOG",
                format!("{log_filter:?} is not a tracing filter: {e}"),
            ));
        }
        let switch_intent = match source.get("MADRE_SWITCH_INTENT").as_deref() {
            None | Some("on") => true,
            Some("off") => false,
            Some(other) => {
                return Err(bad(
                    "MADRE_SWITCH_INTENT",
                    format!("{other:?} is not \"on\" or \"off\""),
                ));
            }
        };
        let approval_links = match source.get("MADRE_APPROVAL_LINKS").as_deref() {
            None | Some("off") => false,
            Some("on") => true,
            Some(other) => {
                return Err(bad(
                    "MADRE_APPROVAL_LINKS",
                    format!("{other:?} is not \"on\" or \"off\""),
                ));
            }
        };
        let public_url = match source.get("MADRE_PUBLIC_URL") {
            None => format!("http://{bind}"),
            Some(url) if url.starts_with("http://") || url.starts_with("https://") => url,
            Some(other) => {
                return Err(bad(
                    "MADRE_PUBLIC_URL",
                    format!("{other:?} is not an http:// or https:// URL"),
                ));
            }
        };
        let log_json = match source.get("MADRE_LOG_FORMAT").as_deref() {
            None | Some("pretty") | Some("text") => false,
            Some("json") => true,
            Some(other) => {
                return Err(bad(
                    "MADRE_LOG_FORMAT",
                    format!("{other:?} is not \"pretty\" or \"json\""),
                ));
            }
        };
        Ok(Self {
            bind,
            db_path,
            sqlite_sync,
            database_url,
            replica_id,
            api_token,
            generated_token_file,
            tokens_file: source.get("MADRE_TOKENS_FILE").map(PathBuf::from),
            policy_file: source.get("MADRE_POLICY_FILE").map(PathBuf::from),
            registry,
            task_timeout_s: source.number("MADRE_TASK_TIMEOUT_S", 120, 1, DAY_S)?,
            max_concurrent_tasks: source.number("MADRE_MAX_CONCURRENT_TASKS", 10, 1, 10_000)?,
            max_queued_tasks: source.number("MADRE_MAX_QUEUED_TASKS", 1000, 0, 1_000_000)?,
            confirm_ttl_s: source.number("MADRE_CONFIRM_TTL_S", 600, 1, 7 * DAY_S)?,
            session_idle_s: source.number("MADRE_SESSION_IDLE_S", 3600, 1, 365 * DAY_S)?,
            history_max: source.number("MADRE_HISTORY_MAX", 100, 1, 100_000)?,
            spawn_retention_s: source.number("MADRE_SPAWN_RETENTION_S", 3600, 0, 365 * DAY_S)?,
            plan_retention_days: source.days("MADRE_PLAN_RETENTION_DAYS", 30.0)?,
            idempotency_ttl_s: source.number("MADRE_IDEMPOTENCY_TTL_S", 86_400, 1, 365 * DAY_S)?,
            max_body_bytes: source.number("MADRE_MAX_BODY_BYTES", 65536, 256, 64 << 20)?,
            probe_interval: Duration::from_secs(source.number(
                "MADRE_PROBE_INTERVAL_S",
                10,
                1,
                3600,
            )?),
            cleanup_interval: Duration::from_secs(source.number(
                "MADRE_CLEANUP_INTERVAL_S",
                60,
                1,
                DAY_S,
            )?),
            plan_lease: Duration::from_secs(source.number("MADRE_PLAN_LEASE_S", 15, 3, 3600)?),
            events_keep_alive: Duration::from_secs(source.number(
                "MADRE_EVENTS_KEEPALIVE_S",
                15,
                1,
                3600,
            )?),
            rate_limit_per_s: source.number("MADRE_RATE_LIMIT_PER_S", 0, 0, 1_000_000)?,
            auth_failures_per_min: source.number(
                "MADRE_AUTH_FAILURES_PER_MIN",
                100,
                0,
                1_000_000,
            )?,
            log_json,
            log_filter,
            switch_intent,
            public_url,
            approval_links,
            data_dir,
            origin: Origin(var),
        })
    }
}

/// The token in `$data_dir/token`, created (mode 0600) when missing.
fn load_or_generate_token(data_dir: &Path) -> Result<(SecretString, PathBuf), ConfigError> {
    let path = data_dir.join("token");
    let fail = |e: std::io::Error| {
        bad(
            "VX11_TOKEN",
            format!("unset, and {} cannot be used: {e}", path.display()),
        )
    };
    if let Ok(text) = std::fs::read_to_string(&path) {
        let token = text.trim().to_owned();
        if !token.is_empty() {
            return Ok((SecretString::from(token), path));
        }
    }
    create_private_dir(data_dir).map_err(fail)?;
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| {
        bad(
            "VX11_TOKEN",
            format!("unset, and no randomness to generate one: {e}"),
        )
    })?;
    let token = hex::encode(bytes);
    write_private_file(&path, token.as_bytes()).map_err(fail)?;
    Ok((SecretString::from(token), path))
}

#[cfg(unix)]
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.exists() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

#[cfg(unix)]
fn write_private_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(bytes)
}

#[cfg(not(unix))]
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)
}

#[cfg(not(unix))]
fn write_private_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::write(path, bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(vars: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let dir = std::env::temp_dir();
        let mut map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        map.entry("VX11_TOKEN".into()).or_insert_with(|| "t".into());
        map.entry("MADRE_DATA_DIR".into())
            .or_insert_with(|| dir.display().to_string());
        Settings::from_vars(move |name| map.get(name).cloned())
    }

    /// Every number at its extremes: below the range, the bounds, one past
    /// the upper bound, `u64::MAX`, negative, text. Out-of-range values stop
    /// the start naming the variable; no value can reach a clock unbounded.
    #[test]
    fn every_number_has_bounds_and_extremes_are_refused_by_name() {
        let table: &[(&str, u64, u64)] = &[
            ("MADRE_TASK_TIMEOUT_S", 1, DAY_S),
            ("MADRE_MAX_CONCURRENT_TASKS", 1, 10_000),
            ("MADRE_MAX_QUEUED_TASKS", 0, 1_000_000),
            ("MADRE_CONFIRM_TTL_S", 1, 7 * DAY_S),
            ("MADRE_SESSION_IDLE_S", 1, 365 * DAY_S),
            ("MADRE_HISTORY_MAX", 1, 100_000),
            ("MADRE_SPAWN_RETENTION_S", 0, 365 * DAY_S),
            ("MADRE_IDEMPOTENCY_TTL_S", 1, 365 * DAY_S),
            ("MADRE_MAX_BODY_BYTES", 256, 64 << 20),
            ("MADRE_PROBE_INTERVAL_S", 1, 3600),
            ("MADRE_CLEANUP_INTERVAL_S", 1, DAY_S),
            ("MADRE_EVENTS_KEEPALIVE_S", 1, 3600),
            ("MADRE_RATE_LIMIT_PER_S", 0, 1_000_000),
            ("MADRE_AUTH_FAILURES_PER_MIN", 0, 1_000_000),
            (
                "MADRE_CALL_TIMEOUT_MS",
                1,
                madre_delegation::MAX_CALL_TIMEOUT_MS,
            ),
        ];
        for &(name, min, max) in table {
            for good in [min, max] {
                assert!(
                    settings(&[(name, &good.to_string())]).is_ok(),
                    "{name}={good} is in range"
                );
            }
            let mut bad_values = vec![
                (max + 1).to_string(),
                u64::MAX.to_string(),
                "-1".to_owned(),
                "ten".to_owned(),
                "1.5".to_owned(),
            ];
            if min > 0 {
                bad_values.push((min - 1).to_string());
            }
            for bad in bad_values {
                let err = settings(&[(name, &bad)]).unwrap_err();
                assert_eq!(err.variable, name, "{name}={bad}");
                assert!(err.to_string().contains(name), "{err}");
            }
        }
    }

    #[test]
    fn an_unknown_key_in_the_config_file_stops_the_start() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("madre.toml");
        std::fs::write(
            &file,
            "MADRE_TASK_TIMEOUT_S = 30\nMADRE_TASK_TIMOUT_S = 60\n",
        )
        .unwrap();
        let err = settings(&[("MADRE_CONFIG", file.to_str().unwrap())]).unwrap_err();
        assert_eq!(err.variable, "MADRE_TASK_TIMOUT_S");
        assert!(err.to_string().contains("unknown key"), "{err}");
        std::fs::write(
            &file,
            "madre_task_timeout_s = 30\nvx11_hermes_url = \"http://127.0.0.1:9\"\n",
        )
        .unwrap();
        let ok = settings(&[("MADRE_CONFIG", file.to_str().unwrap())]).unwrap();
        assert_eq!(ok.task_timeout_s, 30);
    }

    #[test]
    fn an_invalid_rust_log_stops_the_start_naming_it() {
        let err = settings(&[("RUST_LOG", "info,[=")]).unwrap_err();
        assert_eq!(err.variable, "RUST_LOG");
        assert!(settings(&[("RUST_LOG", "madre=debug,warn")]).is_ok());
    }

    #[test]
    fn plan_retention_is_thirty_days_unless_set_and_takes_fractions() {
        assert_eq!(settings(&[]).unwrap().plan_retention_days, 30.0);
        let minute = settings(&[("MADRE_PLAN_RETENTION_DAYS", "0.000694")]).unwrap();
        assert_eq!(minute.plan_retention_days, 0.000694);
        for wrong in ["-1", "NaN", "forever", "40000"] {
            let err = settings(&[("MADRE_PLAN_RETENTION_DAYS", wrong)]).unwrap_err();
            assert_eq!(err.variable, "MADRE_PLAN_RETENTION_DAYS", "{wrong}");
        }
    }

    #[test]
    fn the_sqlite_sync_mode_is_normal_unless_full_is_asked() {
        use madre_flows::SyncMode;
        assert_eq!(settings(&[]).unwrap().sqlite_sync, SyncMode::Normal);
        let full = settings(&[("MADRE_SQLITE_SYNC", "full")]).unwrap();
        assert_eq!(full.sqlite_sync, SyncMode::Full);
        let err = settings(&[("MADRE_SQLITE_SYNC", "always")]).unwrap_err();
        assert_eq!(err.variable, "MADRE_SQLITE_SYNC");
        assert!(err.to_string().contains("always"), "{err}");
    }

    #[test]
    fn the_database_is_sqlite_unless_a_postgresql_url_is_given() {
        use secrecy::ExposeSecret;
        assert!(settings(&[]).unwrap().database_url.is_none());
        for url in [
            "postgres://madre:s3cret@db.internal:5432/vx11",
            "postgresql://localhost/vx11",
            "host=/run/postgresql user=madre dbname=vx11",
        ] {
            let s = settings(&[("MADRE_DATABASE_URL", url)]).unwrap();
            assert_eq!(s.database_url.unwrap().expose_secret(), url);
        }
        for wrong in [
            "mysql://root:s3cret@db/vx11",
            "vx11.db",
            "postgres://u:s3cret@db:port/x",
        ] {
            let err = settings(&[("MADRE_DATABASE_URL", wrong)]).unwrap_err();
            assert_eq!(err.variable, "MADRE_DATABASE_URL", "{wrong}");
            assert!(!err.to_string().contains("s3cret"), "{err}");
        }
    }
}

//! Where each module lives, which are enabled, the outbound token and the
//! per-call timeout: all from configuration, nothing hard-coded but the
//! documented default ports.

use madre_models::{Module, ModuleSet};
use secrecy::SecretString;
use std::collections::BTreeMap;
use std::time::Duration;

/// A configuration value that cannot be used; names the variable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid configuration {variable}: {reason}")]
pub struct ConfigError {
    /// The environment variable (or TOML key).
    pub variable: String,
    /// What is wrong with it.
    pub reason: String,
}

/// The modules Madre can call.
#[derive(Debug, Clone)]
pub struct Registry {
    urls: BTreeMap<Module, String>,
    enabled: ModuleSet,
    outbound_token: SecretString,
    call_timeout: Duration,
}

/// The longest call timeout accepted (`MADRE_CALL_TIMEOUT_MS`): ten minutes.
pub const MAX_CALL_TIMEOUT_MS: u64 = 600_000;

/// Default per-call timeout (`MADRE_CALL_TIMEOUT_MS`).
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_millis(5000);

impl Registry {
    /// A registry with explicit URLs (missing modules get
    /// `http://127.0.0.1:<default port>`).
    pub fn new(
        urls: BTreeMap<Module, String>,
        disabled: &[Module],
        outbound_token: SecretString,
        call_timeout: Duration,
    ) -> Self {
        let urls = Module::REMOTE
            .iter()
            .map(|&m| {
                let url = urls
                    .get(&m)
                    .cloned()
                    .unwrap_or_else(|| format!("http://127.0.0.1:{}", m.default_port()));
                (m, url.trim_end_matches('/').to_owned())
            })
            .collect();
        let enabled = disabled
            .iter()
            .fold(ModuleSet::all(), |set, m| set.without(*m));
        Self {
            urls,
            enabled,
            outbound_token,
            call_timeout,
        }
    }

    /// Reads `VX11_<MODULE>_URL`, `MADRE_DISABLED_MODULES`,
    /// `VX11_OUTBOUND_TOKEN` (default: `api_token`) and
    /// `MADRE_CALL_TIMEOUT_MS` through `var`.
    pub fn from_vars(
        var: impl Fn(&str) -> Option<String>,
        api_token: &SecretString,
    ) -> Result<Self, ConfigError> {
        let mut urls = BTreeMap::new();
        for module in Module::REMOTE {
            let name = format!("VX11_{}_URL", module.env_name());
            if let Some(url) = var(&name) {
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    return Err(ConfigError {
                        variable: name,
                        reason: format!("{url:?} is not an http:// or https:// URL"),
                    });
                }
                urls.insert(module, url);
            }
        }
        let mut disabled = Vec::new();
        if let Some(list) = var("MADRE_DISABLED_MODULES") {
            for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                let module: Module = name.to_lowercase().parse().map_err(|_| ConfigError {
                    variable: "MADRE_DISABLED_MODULES".into(),
                    reason: format!("{name:?} is not a VX11 module"),
                })?;
                disabled.push(module);
            }
        }
        let call_timeout = match var("MADRE_CALL_TIMEOUT_MS") {
            None => DEFAULT_CALL_TIMEOUT,
            Some(text) => match text.trim().parse::<u64>() {
                Ok(ms) if (1..=MAX_CALL_TIMEOUT_MS).contains(&ms) => Duration::from_millis(ms),
                _ => {
                    return Err(ConfigError {
                        variable: "MADRE_CALL_TIMEOUT_MS".into(),
                        reason: format!(
                            "{text:?} is not a whole number of milliseconds from 1 to {MAX_CALL_TIMEOUT_MS}"
                        ),
                    });
                }
            },
        };
        let outbound_token = var("VX11_OUTBOUND_TOKEN")
            .map(SecretString::from)
            .unwrap_or_else(|| api_token.clone());
        Ok(Self::new(urls, &disabled, outbound_token, call_timeout))
    }

    /// Base URL of `module`.
    pub fn url(&self, module: Module) -> &str {
        self.urls.get(&module).map_or("", String::as_str)
    }

    /// Enabled modules (Madre itself always is).
    pub fn enabled(&self) -> ModuleSet {
        self.enabled
    }

    /// Token sent to the modules as `X-VX11-Token`.
    pub fn outbound_token(&self) -> &SecretString {
        &self.outbound_token
    }

    /// Timeout of one HTTP call.
    pub fn call_timeout(&self) -> Duration {
        self.call_timeout
    }
}

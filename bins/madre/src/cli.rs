//! The command line: `madre serve` (the default) and client subcommands that
//! talk to a running server.

use clap::{Parser, Subcommand};
use serde_json::{Value, json};

/// Madre, the VX11 orchestrator.
#[derive(Debug, Parser)]
#[command(version, about)]
pub struct Cli {
    /// Server URL for the client subcommands (default: http:// + MADRE_BIND).
    #[arg(long, global = true, env = "MADRE_URL")]
    pub url: Option<String>,
    /// API token for the client subcommands.
    #[arg(long, global = true, env = "VX11_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// What to do (default: serve).
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server (configuration from the environment).
    Serve,
    /// Send a chat message.
    Chat {
        /// The message.
        message: String,
        /// Continue this session.
        #[arg(long)]
        session: Option<String>,
    },
    /// List plans, newest first.
    Plans {
        /// Only plans in this status.
        #[arg(long)]
        status: Option<String>,
        /// How many (1..200).
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// Show one plan with its steps and audit trail.
    Plan {
        /// The plan id.
        id: String,
    },
    /// Confirm a waiting plan with its token.
    Confirm {
        /// The plan id.
        id: String,
        /// The confirm_token from the WAITING answer.
        #[arg(value_name = "CONFIRM_TOKEN")]
        confirm_token: String,
    },
    /// Cancel a waiting or running plan.
    Cancel {
        /// The plan id.
        id: String,
    },
    /// Show Madre's health and the modules' states.
    Health,
}

fn default_url() -> String {
    let bind = std::env::var("MADRE_BIND").unwrap_or_else(|_| "127.0.0.1:8001".into());
    format!("http://{bind}")
}

/// Runs a client subcommand; answers the process exit code.
pub async fn run_client(url: Option<String>, token: Option<String>, command: Command) -> i32 {
    let base = url.unwrap_or_else(default_url);
    let base = base.trim_end_matches('/');
    let (method, path, body) = match &command {
        Command::Serve => return 2,
        Command::Chat { message, session } => (
            "POST",
            "/madre/chat".to_owned(),
            Some(json!({ "message": message, "session_id": session })),
        ),
        Command::Plans { status, limit } => {
            let mut path = format!("/madre/plans?limit={limit}");
            if let Some(status) = status {
                path.push_str(&format!("&status={status}"));
            }
            ("GET", path, None)
        }
        Command::Plan { id } => ("GET", format!("/madre/plans/{id}"), None),
        Command::Confirm { id, confirm_token } => (
            "POST",
            format!("/madre/plans/{id}/confirm"),
            Some(json!({ "confirm_token": confirm_token })),
        ),
        Command::Cancel { id } => ("POST", format!("/madre/plans/{id}/cancel"), None),
        Command::Health => ("GET", "/health".to_owned(), None),
    };
    let client = awc::Client::builder()
        .timeout(std::time::Duration::from_secs(180))
        .finish();
    let mut request = if method == "GET" {
        client.get(format!("{base}{path}"))
    } else {
        client.post(format!("{base}{path}"))
    };
    if let Some(token) = &token {
        request = request.insert_header(("X-VX11-Token", token.as_str()));
    }
    let sent = match body {
        Some(body) => request.send_json(&body).await,
        None => request.send().await,
    };
    let mut response = match sent {
        Ok(r) => r,
        Err(e) => {
            eprintln!("madre: cannot reach {base}: {e}");
            return 1;
        }
    };
    let status = response.status();
    let bytes = response.body().limit(16 << 20).await.unwrap_or_default();
    let text = match serde_json::from_slice::<Value>(&bytes) {
        Ok(value) => serde_json::to_string_pretty(&value).unwrap_or_default(),
        Err(_) => String::from_utf8_lossy(&bytes).into_owned(),
    };
    if status.is_success() {
        println!("{text}");
        0
    } else {
        eprintln!("madre: HTTP {status}\n{text}");
        1
    }
}

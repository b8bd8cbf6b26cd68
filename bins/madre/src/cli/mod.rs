//! The command line: `madre serve` (the default) and client subcommands that
//! talk to a running server.
//!
//! The client prints for people by default (a summary line, tables, colour
//! on a terminal) and, with `--json` or `-o json`, exactly the API's JSON.
//! `render` turns answers into text without I/O; `client` does the HTTP.

mod client;
mod render;
mod style;

use chrono::Utc;
use clap::{Args, Parser, Subcommand, ValueEnum};
use serde_json::json;
use std::fmt;
use std::io::IsTerminal;

use client::{Api, Body, Failure, segment};
use render::Context;
use style::Paint;

/// Madre, the VX11 orchestrator.
#[derive(Debug, Parser)]
#[command(version, about)]
pub struct Cli {
    /// Where and how the client subcommands talk to the server.
    #[command(flatten)]
    pub client: ClientOptions,
    /// What to do (default: serve).
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// The options every client subcommand takes.
#[derive(Args)]
pub struct ClientOptions {
    /// Server URL for the client subcommands (default: http:// + MADRE_BIND).
    #[arg(long, global = true, env = "MADRE_URL")]
    pub url: Option<String>,
    /// API token for the client subcommands.
    #[arg(long, global = true, env = "VX11_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Print the API's JSON, for scripts (the same as `-o json`, and wins over `-o human`).
    #[arg(long, global = true)]
    pub json: bool,
    /// Output format (default: human).
    #[arg(short, long, global = true, value_enum, value_name = "FORMAT")]
    pub output: Option<OutputFormat>,
}

impl ClientOptions {
    /// True when the API's JSON is wanted rather than the human output.
    pub fn wants_json(&self) -> bool {
        self.json || self.output == Some(OutputFormat::Json)
    }
}

impl fmt::Debug for ClientOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientOptions")
            .field("url", &self.url)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("json", &self.json)
            .field("output", &self.output)
            .finish()
    }
}

/// How the client subcommands print their answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Summaries and tables for people.
    Human,
    /// The API's JSON, pretty-printed.
    Json,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server (configuration from the environment).
    Serve,
    /// Send a chat message; prints the answer and the plan's status.
    Chat {
        /// The message.
        message: String,
        /// Continue this session.
        #[arg(long)]
        session: Option<String>,
        /// Then print the plan's journal as it happens, until the plan
        /// ends (a waiting plan: until it is confirmed and runs, or is
        /// rejected or expires).
        #[arg(long)]
        follow: bool,
    },
    /// Print journal events as they happen: one plan's from its start
    /// until it ends, or every plan's from now on.
    Watch {
        /// The plan id, or enough of its start to tell it apart.
        id: Option<String>,
    },
    /// List plans, newest first.
    Plans {
        /// Only plans in this status (PENDING, RUNNING, WAITING, DONE, ERROR, CANCELLED).
        #[arg(long)]
        status: Option<String>,
        /// How many per page (1..200).
        #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=200))]
        limit: u32,
        /// Follow the cursor through every page.
        #[arg(long, conflicts_with = "cursor")]
        all: bool,
        /// Start from this page (the `next_cursor` of the previous one).
        #[arg(long)]
        cursor: Option<String>,
    },
    /// Show one plan with its steps and audit trail.
    Plan {
        /// The plan id, or enough of its start to tell it apart.
        id: String,
    },
    /// Approve a waiting plan with its token (the plan runs once the
    /// approvals its risk requires are in).
    Confirm {
        /// The plan id, or enough of its start to tell it apart.
        id: String,
        /// The confirm_token from the WAITING answer.
        #[arg(value_name = "CONFIRM_TOKEN", allow_hyphen_values = true)]
        confirm_token: String,
        /// Why you approve (kept in the journal and the audit trail).
        #[arg(long)]
        reason: Option<String>,
    },
    /// Refuse a waiting plan with its token; it is cancelled (`rejected`).
    Reject {
        /// The plan id, or enough of its start to tell it apart.
        id: String,
        /// The confirm_token from the WAITING answer.
        #[arg(value_name = "CONFIRM_TOKEN", allow_hyphen_values = true)]
        confirm_token: String,
        /// Why you refuse it (required).
        #[arg(long)]
        reason: String,
    },
    /// Cancel a waiting or running plan.
    Cancel {
        /// The plan id, or enough of its start to tell it apart.
        id: String,
    },
    /// Show Madre's health and the modules' states.
    Health,
    /// Check the database file (no server needed): every plan's row
    /// against its journal, and the counters against the rows. Exits 1
    /// when something is wrong.
    Check,
    /// Rebuild, from the journal, every plan row that disagrees with it,
    /// and the counters (no server needed; stop Madre first). Exits 1 when
    /// a plan could not be repaired.
    Repair,
    /// Read the archives finished plans were moved to (no server needed).
    Archive {
        /// What to read.
        #[command(subcommand)]
        command: ArchiveCommand,
    },
}

/// `madre archive` subcommands.
#[derive(Debug, Subcommand)]
pub enum ArchiveCommand {
    /// List the archives with how many plans each holds; an archive that
    /// cannot be read is named (exit 1) and the others still listed.
    List,
    /// Show one archived plan: every row it had, as JSON (exit 1 when no
    /// archive holds it).
    Show {
        /// The plan id (a full UUID).
        id: String,
    },
}

fn default_url() -> String {
    let bind = std::env::var("MADRE_BIND").unwrap_or_else(|_| "127.0.0.1:8001".into());
    format!("http://{bind}")
}

/// Turns an answer into the text for people.
type Renderer = fn(&serde_json::Value, &Context) -> String;

/// Runs a client subcommand and prints its outcome: the answer on stdout
/// (exit code 0), or why it failed on stderr (1; 2 for `serve`, which is
/// not a client subcommand).
pub async fn run_client(options: ClientOptions, command: Command) -> i32 {
    let as_json = options.wants_json();
    let base = options.url.clone().unwrap_or_else(default_url);
    let api = Api::new(&base, options.token);
    let failed = |failure: Failure| {
        eprintln!("madre: {}", failure.message(as_json));
        1
    };
    if let Command::Watch { id } = &command {
        return watch(&api, id.as_deref(), as_json)
            .await
            .map_or_else(failed, |()| 0);
    }
    let follow = matches!(command, Command::Chat { follow: true, .. });
    let outcome = call(&api, command).await;
    // The plan a chat's answer names, to follow once the answer is out.
    let plan = match &outcome {
        Ok(Some((Body::Json(answer), _))) if follow => {
            answer["plan_id"].as_str().map(str::to_owned)
        }
        _ => None,
    };
    match (print_outcome(outcome, as_json), plan) {
        (0, Some(plan)) => watch(&api, Some(&plan), as_json)
            .await
            .map_or_else(failed, |()| 0),
        (code, _) => code,
    }
}

/// How colour is used on stdout: only on a terminal, never with NO_COLOR.
fn stdout_paint() -> Paint {
    let no_color = std::env::var_os("NO_COLOR");
    Paint::new(std::io::stdout().is_terminal(), no_color.as_deref())
}

/// `madre watch [ID]`, and the tail of `madre chat --follow`: one line per
/// journal event (its JSON with `--json`). With a plan, from its first
/// event until it ends; without, every plan's from now until interrupted.
async fn watch(api: &Api, id: Option<&str>, as_json: bool) -> Result<(), Failure> {
    let paint = stdout_paint();
    let plan = match id {
        Some(id) => Some(api.resolve(id).await?),
        None => None,
    };
    let mut query = Vec::new();
    if let Some(plan) = &plan {
        query.push(("plan_id", plan.as_str()));
        query.push(("last_event_id", "0"));
    }
    api.follow(&query, |event| {
        if as_json {
            println!("{event}");
        } else {
            println!("{}", render::event_line(event, paint));
        }
        plan.is_none() || !render::ends_plan(event)
    })
    .await
}

/// Prints a client subcommand's outcome; answers the exit code.
fn print_outcome(outcome: Result<Option<(Body, Renderer)>, Failure>, as_json: bool) -> i32 {
    match outcome {
        Ok(None) => 2,
        Ok(Some((body, renderer))) => {
            let text = match body {
                Body::Text(text) => text,
                Body::Json(value) if as_json => render::json(&value),
                Body::Json(value) => {
                    let cx = Context {
                        now: Utc::now(),
                        paint: stdout_paint(),
                    };
                    renderer(&value, &cx)
                }
            };
            println!("{text}");
            0
        }
        Err(failure) => {
            eprintln!("madre: {}", failure.message(as_json));
            1
        }
    }
}

/// `POST /madre/plans/{id}/{verb}` (confirm or reject) with the token and
/// the reason, the plan named by its id or a part of it.
async fn decide(
    api: &Api,
    id: &str,
    verb: &str,
    confirm_token: &str,
    reason: Option<&str>,
) -> Result<Body, Failure> {
    let id = segment(&api.resolve(id).await?);
    let body = json!({ "confirm_token": confirm_token, "reason": reason });
    api.post(&format!("/madre/plans/{id}/{verb}"), Some(body))
        .await
}

/// Makes the request(s) for `command`; `None` for `serve`.
async fn call(api: &Api, command: Command) -> Result<Option<(Body, Renderer)>, Failure> {
    let answer: (Body, Renderer) = match command {
        Command::Serve | Command::Check | Command::Repair | Command::Archive { .. } => {
            return Ok(None);
        }
        Command::Watch { .. } => return Ok(None),
        Command::Chat {
            message, session, ..
        } => {
            let body = json!({ "message": message, "session_id": session });
            (api.post("/madre/chat", Some(body)).await?, render::chat)
        }
        Command::Plans {
            status,
            limit,
            all: true,
            ..
        } => (
            api.all_plans(status.as_deref(), limit).await?,
            render::plans,
        ),
        Command::Plans {
            status,
            limit,
            cursor,
            ..
        } => (
            api.plans_page(status.as_deref(), limit, cursor.as_deref())
                .await?,
            render::plans,
        ),
        Command::Plan { id } => {
            let id = segment(&api.resolve(&id).await?);
            (
                api.get(&format!("/madre/plans/{id}"), &[]).await?,
                render::plan,
            )
        }
        Command::Confirm {
            id,
            confirm_token,
            reason,
        } => (
            decide(api, &id, "confirm", &confirm_token, reason.as_deref()).await?,
            render::confirm,
        ),
        Command::Reject {
            id,
            confirm_token,
            reason,
        } => (
            decide(api, &id, "reject", &confirm_token, Some(&reason)).await?,
            render::cancel,
        ),
        Command::Cancel { id } => {
            let id = segment(&api.resolve(&id).await?);
            let path = format!("/madre/plans/{id}/cancel");
            (api.post(&path, None).await?, render::cancel)
        }
        Command::Health => (api.get("/health", &[]).await?, render::health),
    };
    Ok(Some(answer))
}

//! `madre`: the server (`madre serve`, the default) and its CLI client.

use clap::Parser;
use madre::cli::{Cli, Command};
use madre::{Application, Settings};
use std::process::ExitCode;

#[actix_web::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let code = match cli.command {
        None | Some(Command::Serve) => serve().await,
        Some(Command::Check) => maintain(false),
        Some(Command::Repair) => maintain(true),
        Some(Command::Archive { command }) => {
            offline(move |settings| madre::app::read_archives(&settings, &command))
        }
        Some(command) => madre::cli::run_client(cli.client, command).await,
    };
    ExitCode::from(code as u8)
}

/// `madre check` (or `madre repair` when `repair`): the database file of
/// this configuration, with no server.
fn maintain(repair: bool) -> i32 {
    offline(move |settings| madre::app::check_database(&settings, repair))
}

/// Runs a command on this configuration's files, with no server: prints
/// its report and exits 0 when it was clean, 1 when not, 2 when it could
/// not run.
fn offline<F>(work: F) -> i32
where
    F: FnOnce(Settings) -> Result<madre::app::CheckReport, madre::app::StartError> + Send + 'static,
{
    let settings = match Settings::from_env() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("madre: {e}");
            return 2;
        }
    };
    // The database's blocking calls run on a thread of their own, off the
    // async runtime `main` runs on.
    let Ok(outcome) = std::thread::spawn(move || work(settings)).join() else {
        eprintln!("madre: the command stopped unexpectedly");
        return 2;
    };
    match outcome {
        Ok(report) => {
            print!("{}", report.text);
            i32::from(!report.clean)
        }
        Err(e) => {
            eprintln!("madre: {e}");
            2
        }
    }
}

async fn serve() -> i32 {
    let settings = match Settings::from_env() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("madre: {e}");
            return 2;
        }
    };
    let _log_guard = madre::telemetry::init(&settings);
    if let Some(path) = &settings.generated_token_file {
        tracing::info!(path = %path.display(), "VX11_TOKEN unset: using the API token stored in this file (mode 0600)");
    }
    let sync = settings.sqlite_sync.as_str();
    let backend = match settings.database_url {
        Some(_) => "postgresql",
        None => "sqlite",
    };
    let app = match Application::build(settings) {
        Ok(app) => app,
        Err(e) => {
            tracing::error!(error = %e, "madre cannot start");
            eprintln!("madre: {e}");
            return 2;
        }
    };
    tracing::info!(
        port = app.port(),
        database = backend,
        sqlite_sync = sync,
        "madre listening"
    );
    match app.run_until_stopped().await {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("madre: {e}");
            1
        }
    }
}

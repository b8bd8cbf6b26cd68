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
        Some(command) => madre::cli::run_client(cli.client, command).await,
    };
    ExitCode::from(code as u8)
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
    let app = match Application::build(settings) {
        Ok(app) => app,
        Err(e) => {
            tracing::error!(error = %e, "madre cannot start");
            eprintln!("madre: {e}");
            return 2;
        }
    };
    tracing::info!(port = app.port(), sqlite_sync = sync, "madre listening");
    match app.run_until_stopped().await {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("madre: {e}");
            1
        }
    }
}

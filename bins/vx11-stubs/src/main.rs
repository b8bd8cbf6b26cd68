//! `vx11-stubs`: serve stand-ins for every VX11 module Madre talks to, each
//! on its default port (override with `--port-offset` or per-module flags).

use clap::Parser;
use madre_models::Module;

/// Stand-ins for the VX11 modules (switch 8002, hermes 8003, hormiguero 8004,
/// manifestator 8005, mcp 8006, shub 8007, spawner 8008, tentaculo_link 8000).
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1", env = "VX11_STUBS_HOST")]
    host: String,
    /// Added to every default port (e.g. 10000 serves switch on 18002).
    #[arg(long, default_value_t = 0, env = "VX11_STUBS_PORT_OFFSET")]
    port_offset: u16,
}

// The stubs serve from a thread of their own; this runtime only waits.
#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let offset = args.port_offset;
    let stubs = vx11_stubs::StubServer::start(&args.host, |m| m.default_port() + offset)?;
    for module in Module::REMOTE {
        eprintln!("vx11-stubs: {module:<15} {}", stubs.url(module));
    }
    // actix stops the server on SIGTERM or SIGINT.
    stubs.wait().await
}

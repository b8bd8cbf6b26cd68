//! Madre's server: a thin actix-web layer over `madre-flows`. Handlers
//! decode, authenticate, route, map errors and encode; the flows live in
//! the library. The binary (`main.rs`) only reads settings, installs
//! logging and runs [`Application`]; tests build an `Application` on port 0.

pub mod app;
pub mod auth;
pub mod before_routing;
pub mod body_deadline;
pub mod cli;
pub mod config;
pub mod error;
pub mod json;
pub mod metrics;
pub mod openapi;
pub mod rate_limit;
pub mod request_id;
pub mod routes;
pub mod state;
pub mod telemetry;
pub mod ui;

pub use app::Application;
pub use config::Settings;

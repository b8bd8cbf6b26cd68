//! Madre end to end: the real server (an `Application` on port 0) against
//! the vx11-stubs modules over HTTP, each test with its own SQLite file.
//! One test binary, a module per area; `helpers` holds the setup.

/// Prints progress only when `TEST_LOG` is set, so a passing run stays quiet.
macro_rules! test_log {
    ($($arg:tt)*) => {
        if std::env::var_os("TEST_LOG").is_some() {
            eprintln!($($arg)*);
        }
    };
}

mod admission;
mod approvals;
mod auth;
mod bad_input;
mod breaker;
mod chat;
mod confirm;
mod control;
mod events;
mod faults;
mod health;
mod helpers;
mod idempotency;
mod intake;
mod limits;
mod logs;
mod memory;
mod openapi;
mod plans;
mod safety;
mod storage;
mod ui;
mod v6;

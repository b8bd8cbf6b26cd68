//! End-to-end tests of Madre live in `e2e.rs`; this library is empty.

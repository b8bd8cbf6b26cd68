//! End-to-end tests of Madre live in `api/` (one test binary, a module per area); this library is empty.

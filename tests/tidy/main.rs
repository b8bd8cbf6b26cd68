//! Tidy tests: the invariants of ARCHITECTURE.md, checked on the code so
//! that they cannot drift from it unseen (in the manner of rust-analyzer's
//! tidy tests). Each failure names the file or crate and the rule.

use serde_json::Value;
use std::path::{Path, PathBuf};

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the workspace root")
        .to_owned()
}

/// `cargo metadata` of the workspace members.
fn metadata() -> Value {
    let output = std::process::Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(workspace_root())
        .output()
        .expect("cargo metadata runs");
    assert!(
        output.status.success(),
        "cargo metadata: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("cargo metadata prints JSON")
}

/// Each crate's layer: a crate may depend (outside its tests) only on
/// crates of lower layers.
const LAYERS: &[(&str, u8)] = &[
    ("madre-models", 0),
    ("madre-parser", 1),
    ("madre-policy", 1),
    ("madre-planner", 1),
    ("madre-lifecycle", 1),
    ("madre-db", 2),
    ("madre-delegation", 2),
    ("madre-runner", 3),
    ("madre-flows", 4),
    ("madre", 5),
    ("vx11-stubs", 5),
    ("madre-e2e", 6),
];

fn layer(name: &str) -> Option<u8> {
    LAYERS.iter().find(|(n, _)| *n == name).map(|(_, l)| *l)
}

/// The workspace members with their normal (not dev, not build)
/// dependencies.
fn members() -> Vec<(String, Vec<String>)> {
    let metadata = metadata();
    metadata["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .map(|package| {
            let name = package["name"].as_str().unwrap_or_default().to_owned();
            let deps = package["dependencies"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|d| d["kind"].is_null())
                .filter_map(|d| d["name"].as_str().map(str::to_owned))
                .collect();
            (name, deps)
        })
        .collect()
}

#[test]
fn dependencies_point_down() {
    let members = members();
    let names: Vec<&str> = members.iter().map(|(n, _)| n.as_str()).collect();
    let mut wrong = Vec::new();
    for (name, deps) in &members {
        let Some(own) = layer(name) else {
            wrong.push(format!("{name} has no layer in tests/tidy: place it"));
            continue;
        };
        for dep in deps.iter().filter(|d| names.contains(&d.as_str())) {
            match layer(dep) {
                Some(theirs) if theirs < own => {}
                _ => wrong.push(format!("{name} (layer {own}) depends on {dep}")),
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "dependencies must point down:\n{}",
        wrong.join("\n")
    );
}

/// The pure crates: no I/O, no clock, no randomness, so they cannot fail
/// on any input and test alone without a runtime.
const PURE: &[&str] = &[
    "madre-parser",
    "madre-policy",
    "madre-planner",
    "madre-lifecycle",
];

/// Crates that bring I/O, a runtime or a clock-driven engine.
const IMPURE_DEPENDENCIES: &[&str] = &[
    "tokio",
    "actix-web",
    "actix-rt",
    "awc",
    "reqwest",
    "hyper",
    "rusqlite",
    "r2d2",
    "postgres",
    "tokio-postgres",
    "sqlx",
];

/// What pure code must not call.
const IMPURE_CALLS: &[&str] = &[
    "std::fs",
    "std::net",
    "std::process",
    "std::thread",
    "tokio",
    "Utc::now",
    "Local::now",
    "SystemTime::now",
    "Instant::now",
    "getrandom",
    "now_v7",
    "new_v4",
];

/// The known exceptions, with their reason: each must still be used, so
/// that the list shrinks with the code.
const ALLOWED: &[(&str, &str, &str)] = &[
    (
        "crates/policy/src/risk.rs",
        "std::fs",
        "RiskTables::load reads MADRE_POLICY_FILE when asked",
    ),
    (
        "crates/policy/src/roles.rs",
        "std::fs",
        "Principals::load reads MADRE_TOKENS_FILE when asked",
    ),
    (
        "crates/policy/src/confirm.rs",
        "getrandom",
        "ConfirmToken::generate reads the OS CSPRNG (its pure twin: from_entropy)",
    ),
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir)
        .expect("a source directory")
        .flatten()
    {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Every line of the Rust files under `dir` (relative to the workspace)
/// for which `offends(file, line)` holds, as `file:line: text`; the code
/// after a file's `#[cfg(test)]` is left out.
fn offending_lines(dir: &str, offends: impl Fn(&Path, &str) -> bool) -> Vec<String> {
    let mut files = Vec::new();
    rust_files(&workspace_root().join(dir), &mut files);
    let mut wrong = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).expect("a readable source file");
        let code = text.split("#[cfg(test)]").next().unwrap_or_default();
        for (number, line) in code.lines().enumerate() {
            if offends(file, line) {
                wrong.push(format!(
                    "{}:{}: {}",
                    file.display(),
                    number + 1,
                    line.trim()
                ));
            }
        }
    }
    wrong
}

#[test]
fn pure_crates_do_no_io_read_no_clock_and_draw_no_randomness() {
    let root = workspace_root();
    let mut wrong = Vec::new();
    for (name, deps) in members().iter().filter(|(n, _)| PURE.contains(&n.as_str())) {
        for dep in deps
            .iter()
            .filter(|d| IMPURE_DEPENDENCIES.contains(&d.as_str()))
        {
            wrong.push(format!("{name} depends on {dep}"));
        }
    }
    let mut used = vec![false; ALLOWED.len()];
    for name in PURE {
        let dir = root
            .join("crates")
            .join(name.trim_start_matches("madre-"))
            .join("src");
        let mut files = Vec::new();
        rust_files(&dir, &mut files);
        for file in files {
            let relative = file
                .strip_prefix(&root)
                .unwrap_or(&file)
                .to_string_lossy()
                .into_owned();
            let text = std::fs::read_to_string(&file).expect("a readable source file");
            for (number, line) in text.lines().enumerate() {
                let code = line.split("//").next().unwrap_or_default();
                for call in IMPURE_CALLS.iter().filter(|c| code.contains(*c)) {
                    match ALLOWED
                        .iter()
                        .position(|(f, c, _)| *f == relative && c == call)
                    {
                        Some(i) => used[i] = true,
                        None => wrong.push(format!("{relative}:{}: {call}", number + 1)),
                    }
                }
            }
        }
    }
    for (i, (file, call, why)) in ALLOWED.iter().enumerate() {
        if !used[i] {
            wrong.push(format!(
                "{file}: the exception for {call} ({why}) is no longer used: remove it"
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "pure crates must stay pure:\n{}",
        wrong.join("\n")
    );
}

/// The HTTP face takes no type and no handle from madre-db: storage comes
/// through madre-flows. Only `app.rs`, which composes the server, opens
/// the database; tests may build storage errors.
#[test]
fn the_http_face_takes_nothing_from_the_database_crate() {
    let wrong = offending_lines("bins/madre/src", |file, line| {
        !file.ends_with("app.rs") && (line.contains("madre_db::") || line.contains(".db()"))
    });
    assert!(
        wrong.is_empty(),
        "storage comes through madre-flows:\n{}",
        wrong.join("\n")
    );
}

/// The journal invariant: no plan or step status is written outside the
/// journal module. Only `crates/db/src/journal.rs` (and the migrations in
/// `schema.rs`) may write the rows of `plans` and `plan_events` (a step's
/// status is folded from the events); every other change of a plan's
/// state goes through `journal::append`.
#[test]
fn plan_and_step_status_is_written_only_by_the_journal() {
    let writes = [
        "INSERT INTO PLANS",
        "INSERT INTO PLAN_EVENTS",
        "UPDATE PLANS",
        "REPLACE INTO PLANS",
    ];
    let wrong = offending_lines("crates/db/src", |file, line| {
        let upper = line.to_uppercase();
        !file.ends_with("journal.rs")
            && !file.ends_with("schema.rs")
            && writes.iter().any(|w| upper.contains(w))
    });
    assert!(
        wrong.is_empty(),
        "plan and step rows are written by crates/db/src/journal.rs only:\n{}",
        wrong.join("\n")
    );
}

/// The top-level module of `crates/db/src` a path like
/// `crate::engine::writer::Write` names, if it names one of `modules`.
fn modules_named<'a>(
    path: &str,
    modules: &'a [String],
    reexports: &'a std::collections::BTreeMap<String, String>,
) -> Vec<&'a String> {
    let path = path.trim_start_matches("crate::");
    // `crate::{A, b::C}` names several paths at once; `crate::a::B` one.
    let firsts: Vec<&str> = match path.strip_prefix('{') {
        Some(list) => list
            .split('}')
            .next()
            .unwrap_or_default()
            .split(',')
            .filter_map(|item| item.trim().split("::").next())
            .collect(),
        None => path.split("::").next().into_iter().collect(),
    };
    firsts
        .into_iter()
        .map(|first| first.trim_matches(|c: char| !c.is_alphanumeric() && c != '_'))
        .filter_map(|first| {
            modules
                .iter()
                .find(|m| m.as_str() == first)
                .or_else(|| reexports.get(first))
        })
        .collect()
}

/// The items the crate root at `lib` re-exports (`pub use module::{A,
/// B};`), each with the module that defines it: a `use crate::A` is an
/// import of that module.
fn reexported_from(lib: &std::path::Path) -> std::collections::BTreeMap<String, String> {
    let text = std::fs::read_to_string(lib).expect("crates/db/src/lib.rs");
    let mut found = std::collections::BTreeMap::new();
    for line in text.lines() {
        let Some(path) = line.trim().strip_prefix("pub use ") else {
            continue;
        };
        let module = path.split("::").next().unwrap_or_default();
        let names = path
            .rsplit("::")
            .next()
            .unwrap_or_default()
            .trim_end_matches(';')
            .trim_matches(|c| c == '{' || c == '}');
        for name in names.split(',') {
            found.insert(name.trim().to_owned(), module.to_owned());
        }
    }
    found
}

/// The modules of madre-db import each other in one direction only: no
/// module imports (through `use crate::…`, a `crate::…` path, or an item
/// the crate root re-exports from it) one that imports it back, directly
/// or around a circle. The crate root, which only re-exports, is left out.
#[test]
fn the_database_modules_import_each_other_in_one_direction() {
    let src = workspace_root().join("crates/db/src");
    let mut modules: Vec<String> = std::fs::read_dir(&src)
        .expect("crates/db/src")
        .flatten()
        .filter_map(|e| {
            let path = e.path();
            let name = path.file_stem()?.to_str()?.to_owned();
            (name != "lib" && (path.is_dir() || path.extension().is_some_and(|x| x == "rs")))
                .then_some(name)
        })
        .collect();
    modules.sort();
    let reexports = reexported_from(&src.join("lib.rs"));
    let mut imports: std::collections::BTreeMap<String, std::collections::BTreeSet<String>> =
        Default::default();
    for module in &modules {
        let mut files = Vec::new();
        let dir = src.join(module);
        if dir.is_dir() {
            rust_files(&dir, &mut files);
        } else {
            files.push(src.join(format!("{module}.rs")));
        }
        let uses = imports.entry(module.clone()).or_default();
        for file in files {
            let text = std::fs::read_to_string(&file).expect("a readable source file");
            let code = text.split("#[cfg(test)]").next().unwrap_or_default();
            for (at, _) in code.match_indices("crate::") {
                for other in modules_named(&code[at..], &modules, &reexports) {
                    if other != module {
                        uses.insert(other.clone());
                    }
                }
            }
        }
    }
    // Depth-first search for a path back to where it started.
    fn circle(
        from: &str,
        at: &str,
        imports: &std::collections::BTreeMap<String, std::collections::BTreeSet<String>>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        for next in imports.get(at).into_iter().flatten() {
            if next == from {
                let mut found = path.clone();
                found.push(next.clone());
                return Some(found);
            }
            if !path.contains(next) {
                path.push(next.clone());
                if let Some(found) = circle(from, next, imports, path) {
                    return Some(found);
                }
                path.pop();
            }
        }
        None
    }
    for module in &modules {
        let mut path = vec![module.clone()];
        if let Some(found) = circle(module, module, &imports, &mut path) {
            panic!("an import circle in madre-db: {}", found.join(" -> "));
        }
    }
}

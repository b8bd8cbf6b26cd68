//! "Chat transactions per second": the writes one chat costs Madre, with 1
//! writer and with 4 concurrent writers, for two workloads (see
//! `support/chat.rs`):
//!
//! - `chat_*`: the workload before issue 13 (an intent-log row; a plan with
//!   4 steps, 3 context rows and 2 audit rows; 4 steps started and finished
//!   through the journal; the close), committed as one transaction
//!   (`Write::and`) or as seven commits, one per write;
//! - `low_chat_*`: a LOW chat's writes as Madre makes them now, as one
//!   transaction or as its three commits.
#![allow(missing_docs)]

#[path = "support/chat.rs"]
mod chat_workload;

use chat_workload::{Commits, low_chat, one_chat};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use madre_db::{Db, SyncMode};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn chat_transactions(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let db = Arc::new(Db::open(&dir.path().join("bench.db")).unwrap());
    let mut group = c.benchmark_group("db");
    group.throughput(Throughput::Elements(1));
    group.measurement_time(Duration::from_secs(8));
    type Workload = fn(&Db, Commits);
    let variants: [(&str, Workload, Commits); 4] = [
        ("chat_one_tx", one_chat, Commits::One),
        ("chat_7_commits", one_chat, Commits::Seven),
        ("low_chat_one_tx", low_chat, Commits::One),
        ("low_chat_3_commits", low_chat, Commits::Seven),
    ];
    for (name, chat, commits) in variants {
        group.bench_function(format!("{name}_1_writer"), |b| {
            b.iter(|| chat(&db, commits))
        });
        group.bench_function(format!("{name}_4_writers"), |b| {
            b.iter_custom(|iters| {
                let per_thread = iters.div_ceil(4);
                let start = Instant::now();
                let threads: Vec<_> = (0..4)
                    .map(|_| {
                        let db = db.clone();
                        std::thread::spawn(move || (0..per_thread).for_each(|_| chat(&db, commits)))
                    })
                    .collect();
                threads.into_iter().for_each(|t| t.join().unwrap());
                // time per chat as if one at a time: the wall clock of the batch
                start
                    .elapsed()
                    .mul_f64(iters as f64 / (per_thread * 4) as f64)
            })
        });
    }
    group.finish();
}

/// The same LOW chat's three commits on a database opened with
/// `SyncMode::Full` (`MADRE_SQLITE_SYNC=full`: one fsync per commit), to
/// compare with `db/low_chat_3_commits_*` of the same run.
fn chat_transactions_synced(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bench-full.db");
    let db = Arc::new(Db::open_with(&path, SyncMode::Full).unwrap());
    let mut group = c.benchmark_group("db_sync_full");
    group.throughput(Throughput::Elements(1));
    group.measurement_time(Duration::from_secs(8));
    group.bench_function("low_chat_3_commits_1_writer", |b| {
        b.iter(|| low_chat(&db, Commits::Seven))
    });
    group.finish();
}

criterion_group!(benches, chat_transactions, chat_transactions_synced);
criterion_main!(benches);

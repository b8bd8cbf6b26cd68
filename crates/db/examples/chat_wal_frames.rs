//! Runs a fixed number of benchmark chats (the writes of `chat_tx`), each
//! committed as one transaction, from 1 or more writer threads, so the WAL
//! frames they cost can be counted from outside:
//!
//! ```text
//! cargo build --release -p madre-db --example chat_wal_frames
//! strace -f -e trace=pwrite64 -o /tmp/wal.trace \
//!     target/release/examples/chat_wal_frames 2000 4
//! grep -c ', 24, ' /tmp/wal.trace   # one 24-byte header per WAL frame
//! ```
//!
//! Arguments: chats (default 2000), writer threads (default 1), and the
//! workload: `chat` (the one before issue 13, one transaction per chat;
//! the default) or `low` (a LOW chat's writes as Madre makes them now, in
//! its three commits).
#![allow(missing_docs)]

#[path = "../benches/support/chat.rs"]
mod chat_workload;

use chat_workload::{Commits, low_chat, one_chat};
use madre_db::Db;
use std::sync::Arc;

fn main() {
    let mut args = std::env::args().skip(1);
    let chats: u64 = args
        .next()
        .map_or(2000, |a| a.parse().expect("chats: a number"));
    let writers: u64 = args
        .next()
        .map_or(1, |a| a.parse().expect("writers: a number"));
    let chat: fn(&Db) = match args.next().as_deref() {
        None | Some("chat") => |db| one_chat(db, Commits::One),
        Some("low") => |db| low_chat(db, Commits::Seven),
        Some(other) => panic!("workload: chat or low, not {other:?}"),
    };
    let dir = tempfile::tempdir().expect("a temporary directory");
    let db = Arc::new(Db::open(&dir.path().join("frames.db")).expect("the database opens"));
    // Warm up: the schema's first pages are written once, not per chat.
    chat(&db);
    let started = std::time::Instant::now();
    let threads: Vec<_> = (0..writers)
        .map(|_| {
            let db = db.clone();
            std::thread::spawn(move || (0..chats / writers).for_each(|_| chat(&db)))
        })
        .collect();
    threads
        .into_iter()
        .for_each(|t| t.join().expect("a writer thread"));
    let elapsed = started.elapsed();
    println!(
        "{} chats from {writers} writer(s) in {:.2} s",
        chats / writers * writers,
        elapsed.as_secs_f64()
    );
}

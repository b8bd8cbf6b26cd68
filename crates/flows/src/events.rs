//! The live event stream (SPEC §14): one reader follows the plan journal,
//! first what it missed (from a `seq` it names), then each event as it
//! commits. New events are read from the database once per process, by one
//! tail that hands them to every follower, so a thousand readers cost what
//! one does; a follower reads the database itself only to replay or to
//! catch up. A reader never slows a plan; one whose buffer stays full too
//! long is let go.

use madre_db::JournalFilter;
use madre_models::JournalEvent;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::{broadcast, mpsc};
use tokio::time::Instant;

use crate::{FlowError, Madre};

/// A journal event with its JSON, made once however many readers get it.
#[derive(Debug, Clone, PartialEq)]
pub struct SharedEvent {
    /// The event.
    pub event: JournalEvent,
    /// Its JSON, as a plan's `events` show it.
    pub json: String,
}

impl SharedEvent {
    fn new(event: JournalEvent) -> Arc<Self> {
        // A journal event always serializes (no maps, no non-string keys).
        let json = serde_json::to_string(&event).unwrap_or_default();
        Arc::new(Self { event, json })
    }
}

/// What a follower hands its reader.
#[derive(Debug, Clone, PartialEq)]
pub enum FeedItem {
    /// A journal event.
    Event(Arc<SharedEvent>),
    /// Nothing happened for a while: a line that keeps proxies from
    /// closing an idle stream.
    KeepAlive,
}

/// How a follower paces itself.
#[derive(Debug, Clone, Copy)]
pub struct FollowPace {
    /// A keep-alive is sent after this long without anything sent.
    pub keep_alive: Duration,
    /// The journal is read again after this long even when no commit of
    /// this process was seen (commits of other replicas, SPEC §16).
    pub poll: Duration,
    /// A reader whose buffer stays full this long is disconnected.
    pub slow_reader: Duration,
}

impl Default for FollowPace {
    fn default() -> Self {
        Self {
            keep_alive: Duration::from_secs(15),
            poll: Duration::from_secs(1),
            slow_reader: Duration::from_secs(10),
        }
    }
}

/// Events read from the journal at a time.
const PAGE: u32 = 256;

/// Why a follower stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FollowEnd {
    /// The reader went away.
    ReaderGone,
    /// The reader's buffer stayed full longer than
    /// [`FollowPace::slow_reader`].
    TooSlow,
    /// The database closed.
    Closed,
}

/// The shared tail as followers reach it: its channel (held weakly: the
/// tail's task holds the sender, so followers see it close with the
/// database), whether it knows where the journal ended (a follower replays
/// only after that, so nothing falls between the two), and a bell to wake
/// it from idling without readers.
pub(crate) struct Tail {
    events: broadcast::WeakSender<Arc<SharedEvent>>,
    ready: tokio::sync::watch::Receiver<bool>,
    wake: Arc<tokio::sync::Notify>,
}

/// Events the tail keeps for followers that are behind; one further behind
/// catches up from the database.
const TAIL_BUFFER: usize = 4096;

/// True when `event` is one `filter` asks for.
fn wanted(filter: &JournalFilter, event: &JournalEvent) -> bool {
    filter.plan_id.is_none_or(|p| p == event.plan_id)
        && filter
            .session_id
            .as_deref()
            .is_none_or(|s| event.session_id.as_deref() == Some(s))
}

impl Madre {
    /// Where a reader that names no `seq` starts: after the newest event,
    /// so it sees only what comes next.
    pub async fn journal_head(&self) -> Result<i64, FlowError> {
        Ok(self.db.run_blocking(|db| db.journal_head()).await?)
    }

    /// The shared tail, started on first use: it waits for a commit that
    /// appended to the journal (or `poll`, for other processes' commits),
    /// reads what is new once, and hands it to every follower. With no
    /// follower it reads nothing, and forgets where it was: the next
    /// follower waits until it has found the journal's end again. Answers
    /// `None` once the tail ended with the database.
    async fn tail(&self, poll: Duration) -> Option<broadcast::Receiver<Arc<SharedEvent>>> {
        let tail = self.tail.get_or_init(|| {
            let (sender, _) = broadcast::channel(TAIL_BUFFER);
            let (ready_tx, ready) = tokio::sync::watch::channel(false);
            let wake = Arc::new(tokio::sync::Notify::new());
            let tail = Tail {
                events: sender.downgrade(),
                ready,
                wake: wake.clone(),
            };
            let db = self.db.clone();
            let mut commits = db.journal_commits();
            tokio::spawn(async move {
                let mut after: Option<i64> = None;
                loop {
                    commits.borrow_and_update();
                    if sender.receiver_count() == 0 {
                        // Not ready first, then look again: a follower that
                        // came in between is seen, one that comes after
                        // waits for the journal's end to be found anew.
                        ready_tx.send_replace(false);
                        if sender.receiver_count() == 0 {
                            after = None;
                            tokio::select! {
                                _ = wake.notified() => {}
                                _ = tokio::time::sleep(poll) => {}
                            }
                            continue;
                        }
                        ready_tx.send_replace(after.is_some());
                    }
                    let read = match after {
                        None => db.run_blocking(|db| db.journal_head()).await.map(|head| {
                            after = Some(head);
                            ready_tx.send_replace(true);
                            Vec::new()
                        }),
                        Some(from) => {
                            db.run_blocking(move |db| {
                                db.journal_after(from, &JournalFilter::default(), PAGE)
                            })
                            .await
                        }
                    };
                    match read {
                        Ok(events) => {
                            let full = events.len() == PAGE as usize;
                            for event in events {
                                after = Some(event.seq);
                                let _ = sender.send(SharedEvent::new(event));
                            }
                            if full {
                                continue;
                            }
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "the event stream's tail could not read the journal");
                        }
                    }
                    tokio::select! {
                        changed = commits.changed() => if changed.is_err() { return },
                        _ = tokio::time::sleep(poll) => {}
                    }
                }
            });
            tail
        });
        let receiver = tail.events.upgrade()?.subscribe();
        tail.wake.notify_one();
        let mut ready = tail.ready.clone();
        ready.wait_for(|ready| *ready).await.ok()?;
        Some(receiver)
    }

    /// Every journal event after `after` that `filter` names, read from the
    /// database and sent to `out`, page by page; answers the last `seq`
    /// sent, or why the reader stopped.
    async fn replay_journal(
        &self,
        filter: &JournalFilter,
        mut after: i64,
        out: &mpsc::Sender<FeedItem>,
        pace: FollowPace,
    ) -> Result<Result<i64, FollowEnd>, FlowError> {
        loop {
            let filter_now = filter.clone();
            let events = self
                .db
                .run_blocking(move |db| db.journal_after(after, &filter_now, PAGE))
                .await?;
            let full_page = events.len() == PAGE as usize;
            for event in events {
                after = event.seq;
                if let Err(end) = send(out, FeedItem::Event(SharedEvent::new(event)), pace).await {
                    return Ok(Err(end));
                }
            }
            if !full_page {
                return Ok(Ok(after));
            }
        }
    }

    /// Sends `out` every journal event after `after` of the plans `filter`
    /// names, oldest first with no gap and no repeat, then each new one as
    /// it commits, until the reader goes, falls too far behind, or the
    /// database closes. An error reading the journal ends it too.
    pub async fn follow_journal(
        &self,
        filter: JournalFilter,
        after: i64,
        out: mpsc::Sender<FeedItem>,
        pace: FollowPace,
    ) -> Result<FollowEnd, FlowError> {
        self.followers.fetch_add(1, Ordering::Relaxed);
        let _counted = Counted(&self.followers);
        // Subscribed before the replay: whatever commits after the replay's
        // read comes through the tail, and what both carry is skipped by
        // its `seq`.
        let Some(mut tail) = self.tail(pace.poll).await else {
            return Ok(FollowEnd::Closed);
        };
        // A `seq` past the journal's end (from another database, say)
        // resumes at the end, not after events that do not exist yet.
        let head = self.journal_head().await?;
        let mut after = match self
            .replay_journal(&filter, after.min(head), &out, pace)
            .await?
        {
            Ok(seq) => seq,
            Err(end) => return Ok(end),
        };
        let mut last_sent = Instant::now();
        loop {
            let keep_alive_at = last_sent + pace.keep_alive;
            let next = tokio::select! {
                next = tail.recv() => next,
                _ = tokio::time::sleep_until(keep_alive_at) => {
                    if let Err(end) = send(&out, FeedItem::KeepAlive, pace).await {
                        return Ok(end);
                    }
                    last_sent = Instant::now();
                    continue;
                }
                _ = out.closed() => return Ok(FollowEnd::ReaderGone),
            };
            match next {
                Ok(shared) => {
                    if shared.event.seq <= after {
                        continue;
                    }
                    after = shared.event.seq;
                    if !wanted(&filter, &shared.event) {
                        continue;
                    }
                    if let Err(end) = send(&out, FeedItem::Event(shared), pace).await {
                        return Ok(end);
                    }
                    last_sent = Instant::now();
                }
                // Further behind than the tail keeps: catch up from the
                // database, then go on with the tail.
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    after = match self.replay_journal(&filter, after, &out, pace).await? {
                        Ok(seq) => seq,
                        Err(end) => return Ok(end),
                    };
                    last_sent = Instant::now();
                }
                Err(broadcast::error::RecvError::Closed) => return Ok(FollowEnd::Closed),
            }
        }
    }
}

/// Counts a follower out when it ends, however it ends.
struct Counted<'a>(&'a AtomicU64);

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Madre {
    /// Readers of the event stream being followed now (`/metrics`).
    pub fn event_stream_readers(&self) -> u64 {
        self.followers.load(Ordering::Relaxed)
    }
}

/// Sends one item, waiting at most [`FollowPace::slow_reader`] for room.
async fn send(
    out: &mpsc::Sender<FeedItem>,
    item: FeedItem,
    pace: FollowPace,
) -> Result<(), FollowEnd> {
    match tokio::time::timeout(pace.slow_reader, out.send(item)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(FollowEnd::ReaderGone),
        Err(_) => Err(FollowEnd::TooSlow),
    }
}

//! The live event stream (SPEC §14): one reader follows the plan journal,
//! first what it missed (from a `seq` it names), then each event as it
//! commits. A reader reads the journal at its own pace, so it never slows
//! a plan; one that falls behind by a whole buffer for too long is let go.

use madre_db::JournalFilter;
use madre_models::JournalEvent;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::{FlowError, Madre};

/// What a follower hands its reader.
#[derive(Debug, Clone, PartialEq)]
pub enum FeedItem {
    /// A journal event.
    Event(Box<JournalEvent>),
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

impl Madre {
    /// Where a reader that names no `seq` starts: after the newest event,
    /// so it sees only what comes next.
    pub async fn journal_head(&self) -> Result<i64, FlowError> {
        Ok(self.db.run_blocking(|db| db.journal_head()).await?)
    }

    /// Sends `out` every journal event after `after` of the plans `filter`
    /// names, oldest first with no gap and no repeat, then each new one as
    /// it commits, until the reader goes, falls too far behind, or the
    /// database closes. An error reading the journal ends it too.
    pub async fn follow_journal(
        &self,
        filter: JournalFilter,
        mut after: i64,
        out: mpsc::Sender<FeedItem>,
        pace: FollowPace,
    ) -> Result<FollowEnd, FlowError> {
        let mut commits = self.db.journal_commits();
        let mut last_sent = Instant::now();
        loop {
            // Marked seen before reading: a commit after this read wakes
            // the wait below, so nothing falls between the two.
            commits.borrow_and_update();
            let filter_now = filter.clone();
            let events = self
                .db
                .run_blocking(move |db| db.journal_after(after, &filter_now, PAGE))
                .await?;
            let full_page = events.len() == PAGE as usize;
            for event in events {
                after = event.seq;
                if let Err(end) = send(&out, FeedItem::Event(Box::new(event)), pace).await {
                    return Ok(end);
                }
                last_sent = Instant::now();
            }
            if full_page {
                continue;
            }
            let keep_alive_at = last_sent + pace.keep_alive;
            tokio::select! {
                changed = commits.changed() => {
                    if changed.is_err() {
                        return Ok(FollowEnd::Closed);
                    }
                }
                _ = tokio::time::sleep(pace.poll) => {}
                _ = tokio::time::sleep_until(keep_alive_at) => {}
                _ = out.closed() => return Ok(FollowEnd::ReaderGone),
            }
            if Instant::now() >= keep_alive_at {
                if let Err(end) = send(&out, FeedItem::KeepAlive, pace).await {
                    return Ok(end);
                }
                last_sent = Instant::now();
            }
        }
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

//! The reads the HTTP face needs from storage, as flows: the plan lists,
//! the counts behind `/metrics`, the storage state behind `/health`, and
//! the first request of an idempotency key. The server takes no type and
//! no handle from madre-db (issue 22, "tidy").

use madre_db::{PlanFilter, StorageFault, WriterStats};
use madre_models::{PlanSummary, Status, TaskView};

use crate::{FlowError, Madre};

/// What storage holds and has room for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StorageSpace {
    /// Plans this process moved to the archives since it started.
    pub plans_archived: u64,
    /// Compressed bytes it appended to them.
    pub bytes_archived: u64,
    /// The database's size.
    pub database_bytes: u64,
    /// The part of it that is free pages, reused by new rows.
    pub free_page_bytes: u64,
    /// Free and total bytes of the file system the database is on.
    pub disk: Option<(u64, u64)>,
}

impl StorageSpace {
    /// Whether the disk is nearly full: under 5 % or under 256 MiB free.
    pub fn disk_nearly_full(&self) -> bool {
        self.disk
            .is_some_and(|(free, total)| free < 256 << 20 || free.saturating_mul(20) < total)
    }
}

/// A page of rows and the cursor of the next page, if any.
pub type Page<T> = (Vec<T>, Option<i64>);

impl Madre {
    /// A page of plans, newest first (`GET /madre/plans`).
    pub async fn list_plans(
        &self,
        filter: PlanFilter,
        limit: u32,
        cursor: Option<i64>,
    ) -> Result<Page<PlanSummary>, FlowError> {
        let page = self
            .db
            .run_blocking(move |db| db.list_plans(&filter, limit, cursor))
            .await?;
        Ok(page)
    }

    /// A page of plans in the v6 task shape, newest first (`GET /tasks`).
    pub async fn list_tasks(
        &self,
        filter: PlanFilter,
        limit: u32,
        cursor: Option<i64>,
    ) -> Result<Page<TaskView>, FlowError> {
        let page = self
            .db
            .run_blocking(move |db| db.list_tasks(&filter, limit, cursor))
            .await?;
        Ok(page)
    }

    /// How many plans are in each status (`/metrics`); never scans plans.
    pub async fn plan_counts(&self) -> Result<Vec<(Status, u64)>, FlowError> {
        Ok(self.db.run_blocking(|db| db.plan_counts()).await?)
    }

    /// What the database writer did since the start (`/metrics`): commits,
    /// writes, statements, WAL frames, commit time, queue depth.
    pub fn writer_stats(&self) -> WriterStats {
        self.db.writer_stats()
    }

    /// What storage holds and has room for (`/metrics`, `/health`).
    pub fn storage_space(&self) -> StorageSpace {
        use std::sync::atomic::Ordering;
        let (database_bytes, free_page_bytes) = self.db.size().unwrap_or((0, 0));
        StorageSpace {
            plans_archived: self.archived.0.load(Ordering::Relaxed),
            bytes_archived: self.archived.1.load(Ordering::Relaxed),
            database_bytes,
            free_page_bytes,
            disk: self.db.disk_space(),
        }
    }

    /// Why storage refuses writes, if it does (`/health`); never waits on
    /// the disk.
    pub fn storage_fault(&self) -> Option<StorageFault> {
        self.db.storage_fault()
    }

    /// The request an idempotency key was first used for (`<path> <body
    /// hash>`), to tell "another endpoint" from "another body".
    pub async fn first_request_of_key(
        &self,
        principal: String,
        key: String,
    ) -> Result<Option<String>, FlowError> {
        Ok(self
            .db
            .run_blocking(move |db| db.idempotency_request_hash(&principal, &key))
            .await?)
    }

    /// Waits (at most `deadline`, on a blocking thread) until every write
    /// queued so far has committed: the last step of a shutdown. Answers
    /// whether everything was written.
    pub async fn drain_writes(&self, deadline: std::time::Duration) -> bool {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || db.drain_writes(deadline))
            .await
            .unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use super::StorageSpace;

    fn space(disk: Option<(u64, u64)>) -> StorageSpace {
        StorageSpace {
            plans_archived: 0,
            bytes_archived: 0,
            database_bytes: 0,
            free_page_bytes: 0,
            disk,
        }
    }

    /// `/health` warns under 5 % or under 256 MiB free, and not when the
    /// disk cannot be asked.
    #[test]
    fn a_disk_is_nearly_full_under_five_percent_or_256_mib_free() {
        const GIB: u64 = 1 << 30;
        assert!(space(Some((GIB / 8, 10 * GIB))).disk_nearly_full());
        assert!(space(Some((4 * GIB, 100 * GIB))).disk_nearly_full());
        assert!(!space(Some((6 * GIB, 100 * GIB))).disk_nearly_full());
        assert!(!space(Some((5 * GIB, 10 * GIB))).disk_nearly_full());
        assert!(!space(None).disk_nearly_full());
    }
}

//! The reads the HTTP face needs from storage, as flows: the plan lists,
//! the counts behind `/metrics`, the storage state behind `/health`, and
//! the first request of an idempotency key. The server takes no type and
//! no handle from madre-db (issue 22, "tidy").

use madre_db::{PlanFilter, StorageFault, WriterStats};
use madre_models::{PlanSummary, Status, TaskView};

use crate::{FlowError, Madre};

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

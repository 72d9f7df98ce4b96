//! The queue a runner uses, whichever its backend (`state.backend`): SQLite in the data dir on
//! one machine, Redis when several runners share work. Async in both cases (SQLite's calls run
//! on tokio's blocking threads), with the same calls and the same promises (docs/jobs.md).
//!
//! Owns: choosing the backend per call. Must not touch: what the calls mean (each backend).

use std::sync::Arc;

use crate::{Backoff, Enqueued, Job, JobError, JobStore, NewJob, RedisQueue, State};

/// A job queue.
#[derive(Clone, Debug)]
pub enum Queue {
    Sqlite(Arc<JobStore>),
    Redis(RedisQueue),
}

impl std::fmt::Debug for JobStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobStore").finish_non_exhaustive()
    }
}

/// Runs a blocking SQLite call off the async threads.
async fn blocking<T: Send + 'static>(
    store: &Arc<JobStore>,
    f: impl FnOnce(&JobStore) -> Result<T, JobError> + Send + 'static,
) -> Result<T, JobError> {
    let store = store.clone();
    tokio::task::spawn_blocking(move || f(&store))
        .await
        .map_err(|e| JobError::Thread(e.to_string()))?
}

impl Queue {
    /// `"sqlite"` or `"redis"`, for logs and metrics.
    pub fn backend(&self) -> &'static str {
        match self {
            Queue::Sqlite(_) => "sqlite",
            Queue::Redis(_) => "redis",
        }
    }

    pub async fn enqueue(&self, new: NewJob, now_ms: u64) -> Result<Enqueued, JobError> {
        match self {
            Queue::Sqlite(s) => blocking(s, move |s| s.enqueue(&new, now_ms)).await,
            Queue::Redis(r) => r.enqueue(&new, now_ms).await,
        }
    }

    /// Claims the job due first whose task is not `at_capacity` (which may take a run slot as a
    /// side effect when it answers `false`; it is called again for the next candidate if the
    /// job was taken meanwhile).
    pub async fn claim(
        &self,
        now_ms: u64,
        lease_ms: u64,
        at_capacity: impl Fn(&Job) -> bool + Send + 'static,
    ) -> Result<Option<Job>, JobError> {
        match self {
            Queue::Sqlite(s) => blocking(s, move |s| s.claim(now_ms, lease_ms, at_capacity)).await,
            Queue::Redis(r) => r.claim(now_ms, lease_ms, at_capacity).await,
        }
    }

    pub async fn extend(
        &self,
        id: i64,
        attempt: u32,
        now_ms: u64,
        lease_ms: u64,
    ) -> Result<bool, JobError> {
        match self {
            Queue::Sqlite(s) => blocking(s, move |s| s.extend(id, attempt, now_ms, lease_ms)).await,
            Queue::Redis(r) => r.extend(id, attempt, now_ms, lease_ms).await,
        }
    }

    pub async fn complete(
        &self,
        id: i64,
        attempt: u32,
        result: Option<String>,
        now_ms: u64,
    ) -> Result<bool, JobError> {
        match self {
            Queue::Sqlite(s) => {
                blocking(s, move |s| {
                    s.complete(id, attempt, result.as_deref(), now_ms)
                })
                .await
            }
            Queue::Redis(r) => r.complete(id, attempt, result.as_deref(), now_ms).await,
        }
    }

    pub async fn fail(
        &self,
        id: i64,
        attempt: u32,
        error: String,
        now_ms: u64,
        backoff: Backoff,
    ) -> Result<Option<State>, JobError> {
        match self {
            Queue::Sqlite(s) => {
                blocking(s, move |s| s.fail(id, attempt, &error, now_ms, backoff)).await
            }
            Queue::Redis(r) => r.fail(id, attempt, &error, now_ms, backoff).await,
        }
    }

    pub async fn get(&self, author: String, id: i64) -> Result<Option<Job>, JobError> {
        match self {
            Queue::Sqlite(s) => blocking(s, move |s| s.get(&author, id)).await,
            Queue::Redis(r) => r.get(&author, id).await,
        }
    }

    pub async fn list(
        &self,
        author: String,
        bundle: Option<String>,
        state: Option<State>,
        before: Option<i64>,
        limit: u32,
    ) -> Result<Vec<Job>, JobError> {
        match self {
            Queue::Sqlite(s) => {
                blocking(s, move |s| {
                    s.list(&author, bundle.as_deref(), state, before, limit)
                })
                .await
            }
            Queue::Redis(r) => {
                r.list(&author, bundle.as_deref(), state, before, limit)
                    .await
            }
        }
    }

    pub async fn cancel(
        &self,
        author: String,
        id: i64,
        now_ms: u64,
    ) -> Result<Option<State>, JobError> {
        match self {
            Queue::Sqlite(s) => blocking(s, move |s| s.cancel(&author, id, now_ms)).await,
            Queue::Redis(r) => r.cancel(&author, id, now_ms).await,
        }
    }

    pub async fn retry(
        &self,
        author: String,
        id: i64,
        now_ms: u64,
        quota: u64,
    ) -> Result<Option<State>, JobError> {
        match self {
            Queue::Sqlite(s) => blocking(s, move |s| s.retry(&author, id, now_ms, quota)).await,
            Queue::Redis(r) => r.retry(&author, id, now_ms, quota).await,
        }
    }

    pub async fn purge(&self, before_ms: u64) -> Result<u64, JobError> {
        match self {
            Queue::Sqlite(s) => blocking(s, move |s| s.purge(before_ms)).await,
            Queue::Redis(r) => r.purge(before_ms).await,
        }
    }

    pub async fn unfinished(
        &self,
        author: String,
        bundle: String,
        task: String,
        key_prefix: String,
    ) -> Result<bool, JobError> {
        match self {
            Queue::Sqlite(s) => {
                blocking(s, move |s| {
                    s.unfinished(&author, &bundle, &task, &key_prefix)
                })
                .await
            }
            Queue::Redis(r) => r.unfinished(&author, &bundle, &task, &key_prefix).await,
        }
    }

    pub async fn counts(&self) -> Result<Vec<(State, u64)>, JobError> {
        match self {
            Queue::Sqlite(s) => blocking(s, |s| s.counts()).await,
            Queue::Redis(r) => r.counts().await,
        }
    }
}

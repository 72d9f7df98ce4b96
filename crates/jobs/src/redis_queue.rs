//! The job queue on Redis, for several runners sharing one (docs/cluster.md): the same jobs,
//! states and promises as the SQLite queue, so a job claimed by a runner that dies is claimed
//! again by another once its lease runs out.
//!
//! Every state change is one call of `queue.lua`, atomic on the server. Queued jobs wait in a
//! sorted set by due time, running ones in another by lease end; a claim first returns lost
//! leases to the queue (or to `dead` after a last attempt), then takes due jobs one by one,
//! skipping those whose task is at its concurrency on this runner. Why sorted sets and not
//! Streams with consumer groups: jobs are delayed, retried later, cancelled while queued and
//! passed over at capacity, none of which a stream entry can be without a second structure
//! to reconcile it with; the sorted sets are the one source of truth, and a lost lease is
//! found by score as a consumer group finds idle entries (docs/design.md, 2026-12-05).
//!
//! Owns: the keys under its prefix and the script. Must not touch: anything else in the
//! Redis (several clusters may share one under other prefixes), or the clock (callers pass
//! unix milliseconds). Needs one Redis primary (not Redis Cluster: the script computes key
//! names).

use std::collections::HashMap;

use redis::aio::ConnectionManager;
use redis::{AsyncCommands, Script};

use crate::{Backoff, Enqueued, Job, JobError, NewJob, State};

/// How many due jobs one claim looks at.
const CLAIM_WINDOW: usize = 64;

/// The queue in one Redis, under one key prefix.
#[derive(Clone)]
pub struct RedisQueue {
    conn: ConnectionManager,
    prefix: String,
    script: Script,
}

impl std::fmt::Debug for RedisQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisQueue")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

fn db(e: redis::RedisError) -> JobError {
    JobError::Redis(e.to_string())
}

impl RedisQueue {
    /// The queue under `prefix` (e.g. `atrund:jobs:`) on the connection `conn`.
    pub fn new(conn: ConnectionManager, prefix: impl Into<String>) -> Self {
        Self {
            conn,
            prefix: prefix.into(),
            script: Script::new(include_str!("queue.lua")),
        }
    }

    async fn run<T: redis::FromRedisValue>(
        &self,
        op: &str,
        args: &[String],
    ) -> Result<T, JobError> {
        let mut inv = self.script.prepare_invoke();
        inv.arg(&self.prefix).arg(op);
        for a in args {
            inv.arg(a);
        }
        let mut conn = self.conn.clone();
        inv.invoke_async(&mut conn).await.map_err(db)
    }

    async fn load(&self, id: i64) -> Result<Option<Job>, JobError> {
        Ok(self.load_many(&[id]).await?.pop().flatten())
    }

    /// The jobs `ids` in one round trip, in order; `None` for those that are gone.
    async fn load_many(&self, ids: &[i64]) -> Result<Vec<Option<Job>>, JobError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for id in ids {
            pipe.hgetall(format!("{}job:{id}", self.prefix));
        }
        let mut conn = self.conn.clone();
        let hashes: Vec<HashMap<String, String>> = pipe.query_async(&mut conn).await.map_err(db)?;
        ids.iter()
            .zip(hashes)
            .map(|(id, h)| job_of(*id, h))
            .collect()
    }

    /// As [`crate::JobStore::enqueue`].
    pub async fn enqueue(&self, new: &NewJob, now_ms: u64) -> Result<Enqueued, JobError> {
        let (code, id): (i64, i64) = self
            .run(
                "enqueue",
                &[
                    new.author.clone(),
                    new.bundle.clone(),
                    new.version.clone(),
                    new.task.clone(),
                    new.payload.clone(),
                    new.idempotency_key.clone().unwrap_or_default(),
                    new.delay_ms.min(crate::MAX_DELAY_MS).to_string(),
                    new.max_attempts.max(1).to_string(),
                    new.author_quota.to_string(),
                    now_ms.to_string(),
                ],
            )
            .await?;
        if code < 0 {
            return Err(JobError::QuotaExceeded {
                author: new.author.clone(),
                limit: new.author_quota,
            });
        }
        let job = self.load(id).await?.ok_or(JobError::Vanished(id))?;
        Ok(Enqueued {
            job,
            created: code == 1,
        })
    }

    /// As [`crate::JobStore::claim`]: the job due first whose task is not `at_capacity`.
    pub async fn claim(
        &self,
        now_ms: u64,
        lease_ms: u64,
        at_capacity: impl Fn(&Job) -> bool,
    ) -> Result<Option<Job>, JobError> {
        let lease_until = now_ms.saturating_add(lease_ms);
        // A small window first: the first due job is nearly always free to run.
        for window in [4, CLAIM_WINDOW] {
            let ids: Vec<i64> = self
                .run("due", &[now_ms.to_string(), window.to_string()])
                .await?;
            let more = ids.len() >= window;
            let mut candidates: Vec<Job> =
                self.load_many(&ids).await?.into_iter().flatten().collect();
            candidates.sort_by_key(|j| (j.run_at_ms, j.id));
            for mut j in candidates {
                if at_capacity(&j) {
                    continue;
                }
                let took: i64 = self
                    .run(
                        "claim",
                        &[
                            j.id.to_string(),
                            now_ms.to_string(),
                            lease_until.to_string(),
                        ],
                    )
                    .await?;
                if took == 1 {
                    j.state = State::Running;
                    j.attempts += 1;
                    j.lease_until_ms = Some(lease_until);
                    return Ok(Some(j));
                }
                // Another runner took it meanwhile: the next one.
            }
            if !more {
                break;
            }
        }
        Ok(None)
    }

    /// As [`crate::JobStore::extend`].
    pub async fn extend(
        &self,
        id: i64,
        attempt: u32,
        now_ms: u64,
        lease_ms: u64,
    ) -> Result<bool, JobError> {
        let n: i64 = self
            .run(
                "extend",
                &[
                    id.to_string(),
                    attempt.to_string(),
                    now_ms.saturating_add(lease_ms).to_string(),
                ],
            )
            .await?;
        Ok(n == 1)
    }

    /// As [`crate::JobStore::complete`].
    pub async fn complete(
        &self,
        id: i64,
        attempt: u32,
        result: Option<&str>,
        now_ms: u64,
    ) -> Result<bool, JobError> {
        let n: i64 = self
            .run(
                "complete",
                &[
                    id.to_string(),
                    attempt.to_string(),
                    result.unwrap_or("").to_string(),
                    now_ms.to_string(),
                ],
            )
            .await?;
        Ok(n == 1)
    }

    /// As [`crate::JobStore::fail`].
    pub async fn fail(
        &self,
        id: i64,
        attempt: u32,
        error: &str,
        now_ms: u64,
        backoff: Backoff,
    ) -> Result<Option<State>, JobError> {
        let state: Option<String> = self
            .run(
                "fail",
                &[
                    id.to_string(),
                    attempt.to_string(),
                    error.to_string(),
                    now_ms.to_string(),
                    backoff.delay_ms(attempt).to_string(),
                ],
            )
            .await?;
        Ok(state.as_deref().and_then(State::parse))
    }

    /// As [`crate::JobStore::get`].
    pub async fn get(&self, author: &str, id: i64) -> Result<Option<Job>, JobError> {
        Ok(self.load(id).await?.filter(|j| j.author == author))
    }

    /// As [`crate::JobStore::list`].
    pub async fn list(
        &self,
        author: &str,
        bundle: Option<&str>,
        state: Option<State>,
        before: Option<i64>,
        limit: u32,
    ) -> Result<Vec<Job>, JobError> {
        let key = format!("{}author:{author}", self.prefix);
        let mut max = before.map_or("+inf".to_string(), |b| format!("({b}"));
        let mut out = Vec::new();
        let mut conn = self.conn.clone();
        loop {
            let ids: Vec<i64> = redis::cmd("ZREVRANGEBYSCORE")
                .arg(&key)
                .arg(&max)
                .arg("-inf")
                .arg("LIMIT")
                .arg(0)
                .arg(200)
                .query_async(&mut conn)
                .await
                .map_err(db)?;
            let Some(last) = ids.last().copied() else {
                return Ok(out);
            };
            for j in self.load_many(&ids).await?.into_iter().flatten() {
                if bundle.is_some_and(|b| b != j.bundle) || state.is_some_and(|s| s != j.state) {
                    continue;
                }
                out.push(j);
                if out.len() as u32 >= limit {
                    return Ok(out);
                }
            }
            max = format!("({last}");
        }
    }

    /// As [`crate::JobStore::cancel`].
    pub async fn cancel(
        &self,
        author: &str,
        id: i64,
        now_ms: u64,
    ) -> Result<Option<State>, JobError> {
        self.control("cancel", author, id, now_ms).await
    }

    /// As [`crate::JobStore::retry`].
    pub async fn retry(
        &self,
        author: &str,
        id: i64,
        now_ms: u64,
        quota: u64,
    ) -> Result<Option<State>, JobError> {
        let state: Option<String> = self
            .run(
                "retry",
                &[
                    author.to_string(),
                    id.to_string(),
                    now_ms.to_string(),
                    quota.to_string(),
                ],
            )
            .await?;
        if state.as_deref() == Some("quota") {
            return Err(JobError::QuotaExceeded {
                author: author.to_string(),
                limit: quota,
            });
        }
        control_state(id, state)
    }

    async fn control(
        &self,
        op: &str,
        author: &str,
        id: i64,
        now_ms: u64,
    ) -> Result<Option<State>, JobError> {
        let state: Option<String> = self
            .run(
                op,
                &[author.to_string(), id.to_string(), now_ms.to_string()],
            )
            .await?;
        control_state(id, state)
    }

    /// As [`crate::JobStore::purge`].
    pub async fn purge(&self, before_ms: u64) -> Result<u64, JobError> {
        let mut total = 0u64;
        loop {
            let n: u64 = self.run("purge", &[before_ms.to_string()]).await?;
            total += n;
            if n < 500 {
                return Ok(total);
            }
        }
    }

    /// As [`crate::JobStore::unfinished`].
    pub async fn unfinished(
        &self,
        author: &str,
        bundle: &str,
        task: &str,
        key_prefix: &str,
    ) -> Result<bool, JobError> {
        let n: i64 = self
            .run(
                "unfinished",
                &[
                    author.to_string(),
                    bundle.to_string(),
                    task.to_string(),
                    key_prefix.to_string(),
                ],
            )
            .await?;
        Ok(n == 1)
    }

    /// As [`crate::JobStore::counts`].
    pub async fn counts(&self) -> Result<Vec<(State, u64)>, JobError> {
        let mut conn = self.conn.clone();
        let h: HashMap<String, i64> = conn
            .hgetall(format!("{}counts", self.prefix))
            .await
            .map_err(db)?;
        Ok(State::ALL
            .iter()
            .map(|s| (*s, h.get(s.as_str()).copied().unwrap_or(0).max(0) as u64))
            .collect())
    }
}

/// Connects to `url` (`redis://` or `rediss://`) and checks that it answers, within 10 s. The
/// connection reconnects by itself later; calls made while Redis is away fail. Cheap to clone:
/// the queue and the cluster's registry share one.
pub async fn connect(url: &str) -> Result<ConnectionManager, JobError> {
    let client = redis::Client::open(url).map_err(|e| {
        JobError::Redis(format!(
            "state.redis_url {} is not usable: {e}",
            redacted(url)
        ))
    })?;
    let config = redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Some(std::time::Duration::from_secs(10)))
        .set_response_timeout(Some(std::time::Duration::from_secs(10)));
    let conn = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        client.get_connection_manager_with_config(config),
    )
    .await
    .map_err(|_| JobError::Redis(format!("{} did not answer within 10 s", redacted(url))))?
    .map_err(|e| JobError::Redis(format!("cannot connect to {}: {e}", redacted(url))))?;
    let mut ping = conn.clone();
    let _: String = redis::cmd("PING")
        .query_async(&mut ping)
        .await
        .map_err(|e| JobError::Redis(format!("{} refused PING: {e}", redacted(url))))?;
    Ok(conn)
}

/// The state a cancel or retry answered (`None`: no such job of the author).
fn control_state(id: i64, state: Option<String>) -> Result<Option<State>, JobError> {
    match state {
        None => Ok(None),
        Some(s) => State::parse(&s)
            .map(Some)
            .ok_or(JobError::UnknownState(id, s)),
    }
}

/// `url` without its password, for logs and errors.
pub fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://***@{}", &url[..s], &url[at + 1..]),
        _ => url.to_string(),
    }
}

/// A job's hash as a [`Job`]; `None` for an empty hash (no such job, or purged).
fn job_of(id: i64, mut h: HashMap<String, String>) -> Result<Option<Job>, JobError> {
    if h.is_empty() {
        return Ok(None);
    }
    let mut take = |k: &str| h.remove(k);
    let num = |v: Option<String>| v.and_then(|s| s.parse::<u64>().ok());
    let state_text = take("state").unwrap_or_default();
    let Some(state) = State::parse(&state_text) else {
        return Err(JobError::UnknownState(id, state_text));
    };
    Ok(Some(Job {
        id,
        author: take("author").unwrap_or_default(),
        bundle: take("bundle").unwrap_or_default(),
        version: take("version").unwrap_or_default(),
        task: take("task").unwrap_or_default(),
        payload: take("payload").unwrap_or_default(),
        idempotency_key: take("key"),
        state,
        attempts: num(take("attempts")).unwrap_or(0) as u32,
        max_attempts: num(take("max_attempts")).unwrap_or(1) as u32,
        run_at_ms: num(take("run_at")).unwrap_or(0),
        lease_until_ms: num(take("lease_until")),
        last_error: take("last_error"),
        result: take("result"),
        created_at_ms: num(take("created_at")).unwrap_or(0),
        finished_at_ms: num(take("finished_at")),
    }))
}

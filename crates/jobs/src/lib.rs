//! The durable job queue (issue 15, docs/jobs.md) on embedded SQLite: one database file in the
//! runner's data dir, no server. The same queue on a Redis that several runners share is
//! `redis_queue` (docs/cluster.md); [`Queue`] is what the runner uses, whichever it is.
//!
//! Owns: the jobs table and its migrations, and every state change of a job. A job is enqueued
//! once per idempotency key, claimed under a lease (a job whose lease runs out, because its runner
//! was killed or lost it, is claimed again: at-least-once), completed, or failed into a retry with
//! exponential back-off or, after its last attempt, the dead-letter state with its last error.
//! Finished jobs are kept until purged. An author sees and controls only their own jobs. Must
//! not touch: running a task (the runner's worker claims, runs through the pool and reports
//! here), who may enqueue (the HTTP layer), the clock (callers pass unix milliseconds, so
//! tests and the worker agree on time), or threads: every `JobStore` call blocks on SQLite, so
//! [`Queue`] runs them on tokio's blocking threads.
//!
//! Durability: WAL with `synchronous = NORMAL`. A committed enqueue survives the runner being
//! killed at any point (the kernel has the write), but the last commits before a power loss or
//! kernel crash may be lost.

use std::path::Path;
use std::sync::{Mutex, MutexGuard};

mod queue;
mod redis_queue;

pub use queue::Queue;
pub use redis::aio::ConnectionManager as RedisConnection;
pub use redis_queue::{connect as connect_redis, redacted, RedisQueue};

use rusqlite::{params, Connection, OptionalExtension, Params, Row, TransactionBehavior};

/// Statements through the connection's statement cache: every queue call runs the same few
/// statements, and parsing them again each time was a third of a claim's cost.
trait Cached {
    fn run(&self, sql: &str, p: impl Params) -> rusqlite::Result<usize>;
    fn one<T>(
        &self,
        sql: &str,
        p: impl Params,
        f: impl FnOnce(&Row<'_>) -> rusqlite::Result<T>,
    ) -> rusqlite::Result<T>;
}

impl Cached for Connection {
    fn run(&self, sql: &str, p: impl Params) -> rusqlite::Result<usize> {
        self.prepare_cached(sql)?.execute(p)
    }
    fn one<T>(
        &self,
        sql: &str,
        p: impl Params,
        f: impl FnOnce(&Row<'_>) -> rusqlite::Result<T>,
    ) -> rusqlite::Result<T> {
        self.prepare_cached(sql)?.query_row(p, f)
    }
}

/// What can go wrong with the queue.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// the job database failed: {0}; check the data dir's disk and permissions
    #[error("the job database failed: {0}; check the data dir's disk and permissions")]
    Db(#[from] rusqlite::Error),
    /// the job database {path} is from a newer at-rund (schema {found}, this one knows up to
    /// {known}); run the newer version or move the file away
    #[error("the job database {path} is from a newer at-rund (schema {found}, this one knows up to {known}); run the newer version or move the file away")]
    NewerSchema {
        path: String,
        found: i64,
        known: i64,
    },
    /// job {0} has a state this version does not know ({1}); the database was changed by hand
    /// or by a newer at-rund
    #[error("job {0} has a state this version does not know ({1}); the database was changed by hand or by a newer at-rund")]
    UnknownState(i64, String),
    /// {author} already has {limit} queued or running jobs on this runner, its most; wait for
    /// some to finish or cancel some
    #[error("{author} already has {limit} queued or running jobs on this runner, its most; wait for some to finish or cancel some")]
    QuotaExceeded { author: String, limit: u64 },
    /// the job queue's Redis failed: {0}; check that it runs and that state.redis_url reaches
    /// it
    #[error(
        "the job queue's Redis failed: {0}; check that it runs and that state.redis_url reaches it"
    )]
    Redis(String),
    /// job {0} vanished while it was read (purged meanwhile); try again
    #[error("job {0} vanished while it was read (purged meanwhile); try again")]
    Vanished(i64),
    /// the job queue's worker thread failed: {0}
    #[error("the job queue's worker thread failed: {0}")]
    Thread(String),
}

/// The longest `delay_ms` a job may have: a year. Longer delays are cut to it.
pub const MAX_DELAY_MS: u64 = 366 * 24 * 3600 * 1000;

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    /// Waiting until its `run_at`, then for a worker.
    Queued,
    /// Claimed by a worker, under a lease.
    Running,
    Succeeded,
    /// Every attempt failed: kept with its last error until retried or purged.
    Dead,
    Cancelled,
}

impl State {
    pub const ALL: [State; 5] = [
        State::Queued,
        State::Running,
        State::Succeeded,
        State::Dead,
        State::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            State::Queued => "queued",
            State::Running => "running",
            State::Succeeded => "succeeded",
            State::Dead => "dead",
            State::Cancelled => "cancelled",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<State> {
        State::ALL.into_iter().find(|st| st.as_str() == s)
    }

    pub fn is_finished(self) -> bool {
        matches!(self, State::Succeeded | State::Dead | State::Cancelled)
    }
}

/// A job to enqueue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewJob {
    /// The author's DID.
    pub author: String,
    /// The bundle's name.
    pub bundle: String,
    /// The bundle version it runs with (its record CID): fixed at enqueue, so a release made
    /// meanwhile does not change what an accepted job runs.
    pub version: String,
    /// The task export's name.
    pub task: String,
    /// The payload, as JSON text.
    pub payload: String,
    /// Jobs of one bundle and task with the same key are one job.
    pub idempotency_key: Option<String>,
    /// Runs no earlier than this many milliseconds after enqueue.
    pub delay_ms: u64,
    /// Attempts before the job is dead (at least 1).
    pub max_attempts: u32,
    /// The most queued or running jobs its author may have: an enqueue that would pass it is
    /// refused with [`JobError::QuotaExceeded`] (one with a known idempotency key is not).
    pub author_quota: u64,
}

/// A job as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    pub id: i64,
    pub author: String,
    pub bundle: String,
    pub version: String,
    pub task: String,
    pub payload: String,
    pub idempotency_key: Option<String>,
    pub state: State,
    /// Attempts started so far (a claim starts one).
    pub attempts: u32,
    pub max_attempts: u32,
    /// When it is due (queued), in unix milliseconds.
    pub run_at_ms: u64,
    /// When its lease ends (running).
    pub lease_until_ms: Option<u64>,
    pub last_error: Option<String>,
    /// What the task returned (JSON text), once succeeded.
    pub result: Option<String>,
    pub created_at_ms: u64,
    pub finished_at_ms: Option<u64>,
}

/// What an enqueue did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enqueued {
    pub job: Job,
    /// `false`: a job with the same idempotency key existed, and this is it.
    pub created: bool,
}

/// Delays between attempts: `base_ms`, then doubling, at most `max_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub base_ms: u64,
    pub max_ms: u64,
}

impl Backoff {
    /// The wait after failed attempt number `attempt` (1 for the first).
    pub fn delay_ms(&self, attempt: u32) -> u64 {
        let doublings = attempt.saturating_sub(1).min(63);
        self.base_ms
            .saturating_mul(1u64 << doublings)
            .min(self.max_ms)
    }
}

/// The queue.
pub struct JobStore {
    conn: Mutex<Connection>,
}

/// The schema versions this code knows, in order; `PRAGMA user_version` says which ran.
const MIGRATIONS: &[&str] = &[
    "
    CREATE TABLE jobs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        author TEXT NOT NULL,
        bundle TEXT NOT NULL,
        version TEXT NOT NULL,
        task TEXT NOT NULL,
        payload TEXT NOT NULL,
        idempotency_key TEXT,
        state TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        max_attempts INTEGER NOT NULL,
        run_at INTEGER NOT NULL,
        lease_until INTEGER,
        last_error TEXT,
        result TEXT,
        created_at INTEGER NOT NULL,
        finished_at INTEGER
    );
    CREATE UNIQUE INDEX jobs_idempotency ON jobs (author, bundle, task, idempotency_key)
        WHERE idempotency_key IS NOT NULL;
    CREATE INDEX jobs_due ON jobs (state, run_at);
    CREATE INDEX jobs_by_author ON jobs (author, bundle, id);
    CREATE INDEX jobs_finished ON jobs (finished_at) WHERE finished_at IS NOT NULL;
",
    "
    CREATE INDEX jobs_unfinished_by_author ON jobs (author) WHERE state IN ('queued', 'running');
",
];

/// How many due jobs one claim looks at past those whose task is at its concurrency.
const CLAIM_WINDOW: i64 = 64;

const COLUMNS: &str = "id, author, bundle, version, task, payload, idempotency_key, state, \
    attempts, max_attempts, run_at, lease_until, last_error, result, created_at, finished_at";

impl JobStore {
    /// Opens (or creates) the database at `path` and brings its schema up to date.
    pub fn open(path: &Path) -> Result<Self, JobError> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.set_prepared_statement_cache_capacity(32);
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        let found: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        let known = MIGRATIONS.len() as i64;
        if found > known {
            return Err(JobError::NewerSchema {
                path: path.display().to_string(),
                found,
                known,
            });
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
            let tx = conn.unchecked_transaction()?;
            tx.execute_batch(sql)?;
            tx.pragma_update(None, "user_version", (i + 1) as i64)?;
            tx.commit()?;
        }
        Ok(Self {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a job, or returns the one with the same idempotency key. The author's quota is
    /// checked in the same transaction, so two enqueues never both take its last place.
    pub fn enqueue(&self, new: &NewJob, now_ms: u64) -> Result<Enqueued, JobError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        if let Some(key) = &new.idempotency_key {
            let existing = tx
                .query_row(
                    &format!(
                        "SELECT {COLUMNS} FROM jobs WHERE author = ?1 AND bundle = ?2 AND task = ?3 AND idempotency_key = ?4"
                    ),
                    params![new.author, new.bundle, new.task, key],
                    read_row,
                )
                .optional()?;
            if let Some(job) = existing {
                return Ok(Enqueued {
                    job: job?,
                    created: false,
                });
            }
        }
        within_quota(&tx, &new.author, new.author_quota)?;
        tx.run(
            "INSERT INTO jobs (author, bundle, version, task, payload, idempotency_key, state, \
             attempts, max_attempts, run_at, created_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'queued', 0, ?7, ?8, ?9)",
            params![
                new.author,
                new.bundle,
                new.version,
                new.task,
                new.payload,
                new.idempotency_key,
                new.max_attempts.max(1),
                ms(now_ms.saturating_add(new.delay_ms.min(MAX_DELAY_MS))),
                ms(now_ms),
            ],
        )?;
        let id = tx.last_insert_rowid();
        let job = get_in(&tx, id)?.ok_or(rusqlite::Error::QueryReturnedNoRows)?;
        tx.commit()?;
        Ok(Enqueued { job, created: true })
    }

    /// Claims the job due first whose task is not `at_capacity`, for `lease_ms`; the claim
    /// starts its next attempt. A running job whose lease ran out is due again (its runner died
    /// or lost it); if that was its last attempt it becomes dead instead.
    pub fn claim(
        &self,
        now_ms: u64,
        lease_ms: u64,
        at_capacity: impl Fn(&Job) -> bool,
    ) -> Result<Option<Job>, JobError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.run(
            "UPDATE jobs SET state = 'dead', lease_until = NULL, finished_at = ?1, \
             last_error = 'the attempt did not finish: its lease ran out (the runner stopped or lost it)' \
             WHERE state = 'running' AND lease_until <= ?1 AND attempts >= max_attempts",
            params![ms(now_ms)],
        )?;
        // Two index range scans, each stopping at the window, rather than one OR query: SQLite
        // plans the OR as a union it must sort in full, which read every due job per claim
        // (thousands when a backlog is due; docs/performance.md, "Job queue"). A small window
        // first: the first due job is nearly always free to run.
        let mut found = None;
        for window in [4, CLAIM_WINDOW] {
            let mut candidates: Vec<Job> = Vec::new();
            for sql in [
                "WHERE state = 'queued' AND run_at <= ?1 ORDER BY run_at, id LIMIT ?2",
                "WHERE state = 'running' AND lease_until <= ?1 ORDER BY run_at, id LIMIT ?2",
            ] {
                let mut stmt = tx.prepare_cached(&format!("SELECT {COLUMNS} FROM jobs {sql}"))?;
                let rows = stmt.query_map(params![ms(now_ms), window], read_row)?;
                for r in rows {
                    candidates.push(r??);
                }
            }
            candidates.sort_by_key(|j| (j.run_at_ms, j.id));
            let more = candidates.len() as i64 >= window;
            candidates.truncate(window as usize);
            found = candidates.into_iter().find(|j| !at_capacity(j));
            if found.is_some() || !more {
                break;
            }
        }
        let Some(mut claimed) = found else {
            // Keeps the lost last attempts marked dead above.
            tx.commit()?;
            return Ok(None);
        };
        let lease_until = now_ms.saturating_add(lease_ms);
        tx.run(
            "UPDATE jobs SET state = 'running', attempts = attempts + 1, lease_until = ?2 WHERE id = ?1",
            params![claimed.id, ms(lease_until)],
        )?;
        claimed.state = State::Running;
        claimed.attempts += 1;
        claimed.lease_until_ms = Some(lease_until);
        tx.commit()?;
        Ok(Some(claimed))
    }

    /// Extends the lease of attempt `attempt` of job `id`; `false` when that attempt no longer
    /// holds it (its lease ran out and another claim took the job, or it was cancelled).
    pub fn extend(
        &self,
        id: i64,
        attempt: u32,
        now_ms: u64,
        lease_ms: u64,
    ) -> Result<bool, JobError> {
        let n = self.conn().run(
            "UPDATE jobs SET lease_until = ?3 WHERE id = ?1 AND attempts = ?2 AND state = 'running'",
            params![id, attempt, ms(now_ms.saturating_add(lease_ms))],
        )?;
        Ok(n == 1)
    }

    /// Attempt `attempt` of job `id` succeeded with `result` (JSON text). `false` when that
    /// attempt no longer holds the job: its outcome is not recorded.
    pub fn complete(
        &self,
        id: i64,
        attempt: u32,
        result: Option<&str>,
        now_ms: u64,
    ) -> Result<bool, JobError> {
        let n = self.conn().run(
            "UPDATE jobs SET state = 'succeeded', result = ?3, lease_until = NULL, finished_at = ?4 \
             WHERE id = ?1 AND attempts = ?2 AND state = 'running'",
            params![id, attempt, result, ms(now_ms)],
        )?;
        Ok(n == 1)
    }

    /// Attempt `attempt` of job `id` failed with `error`: queued again after the back-off, or
    /// dead after its last attempt. `None` when that attempt no longer holds the job.
    pub fn fail(
        &self,
        id: i64,
        attempt: u32,
        error: &str,
        now_ms: u64,
        backoff: Backoff,
    ) -> Result<Option<State>, JobError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let Some(job) = get_in(&tx, id)? else {
            return Ok(None);
        };
        if job.state != State::Running || job.attempts != attempt {
            return Ok(None);
        }
        let state = if job.attempts >= job.max_attempts {
            tx.run(
                "UPDATE jobs SET state = 'dead', last_error = ?2, lease_until = NULL, finished_at = ?3 WHERE id = ?1",
                params![id, error, ms(now_ms)],
            )?;
            State::Dead
        } else {
            let run_at = now_ms.saturating_add(backoff.delay_ms(attempt));
            tx.run(
                "UPDATE jobs SET state = 'queued', last_error = ?2, lease_until = NULL, run_at = ?3 WHERE id = ?1",
                params![id, error, ms(run_at)],
            )?;
            State::Queued
        };
        tx.commit()?;
        Ok(Some(state))
    }

    /// One of `author`'s jobs.
    pub fn get(&self, author: &str, id: i64) -> Result<Option<Job>, JobError> {
        let conn = self.conn();
        Ok(get_in(&conn, id)?.filter(|j| j.author == author))
    }

    /// `author`'s jobs, newest first: of one bundle and in one state if given, with ids below
    /// `before` (the last id of the previous page), at most `limit`.
    pub fn list(
        &self,
        author: &str,
        bundle: Option<&str>,
        state: Option<State>,
        before: Option<i64>,
        limit: u32,
    ) -> Result<Vec<Job>, JobError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {COLUMNS} FROM jobs WHERE author = ?1 \
             AND (?2 IS NULL OR bundle = ?2) AND (?3 IS NULL OR state = ?3) AND (?4 IS NULL OR id < ?4) \
             ORDER BY id DESC LIMIT ?5"
        ))?;
        let rows = stmt.query_map(
            params![author, bundle, state.map(State::as_str), before, limit],
            read_row,
        )?;
        let mut out = Vec::new();
        for r in rows {
            out.push(r??);
        }
        Ok(out)
    }

    /// Cancels one of `author`'s queued jobs. The job's state after the call: `Cancelled`, or
    /// the state that kept it from being cancelled (a running attempt is not stopped; a
    /// finished job stays as it is). `None`: no such job of this author.
    pub fn cancel(&self, author: &str, id: i64, now_ms: u64) -> Result<Option<State>, JobError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let Some(job) = get_in(&tx, id)?.filter(|j| j.author == author) else {
            return Ok(None);
        };
        if job.state != State::Queued {
            return Ok(Some(job.state));
        }
        tx.run(
            "UPDATE jobs SET state = 'cancelled', finished_at = ?2 WHERE id = ?1",
            params![id, ms(now_ms)],
        )?;
        tx.commit()?;
        Ok(Some(State::Cancelled))
    }

    /// Queues one of `author`'s dead or cancelled jobs again, now, with a fresh set of attempts
    /// (its last error is kept until the next attempt ends). The state after the call, as for
    /// [`JobStore::cancel`]. Refused with [`JobError::QuotaExceeded`] when the author already
    /// has `quota` queued or running jobs.
    pub fn retry(
        &self,
        author: &str,
        id: i64,
        now_ms: u64,
        quota: u64,
    ) -> Result<Option<State>, JobError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let Some(job) = get_in(&tx, id)?.filter(|j| j.author == author) else {
            return Ok(None);
        };
        if !matches!(job.state, State::Dead | State::Cancelled) {
            return Ok(Some(job.state));
        }
        within_quota(&tx, author, quota)?;
        tx.run(
            "UPDATE jobs SET state = 'queued', attempts = 0, run_at = ?2, finished_at = NULL WHERE id = ?1",
            params![id, ms(now_ms)],
        )?;
        tx.commit()?;
        Ok(Some(State::Queued))
    }

    /// Deletes finished jobs (succeeded, dead, cancelled) that finished before `before_ms`.
    pub fn purge(&self, before_ms: u64) -> Result<u64, JobError> {
        let n = self.conn().run(
            "DELETE FROM jobs WHERE finished_at IS NOT NULL AND finished_at < ?1",
            params![ms(before_ms)],
        )?;
        Ok(n as u64)
    }

    /// Whether `author`'s bundle has a queued or running job of `task` whose idempotency key
    /// starts with `key_prefix` (a cron's previous run still going).
    pub fn unfinished(
        &self,
        author: &str,
        bundle: &str,
        task: &str,
        key_prefix: &str,
    ) -> Result<bool, JobError> {
        let found: bool = self.conn().one(
            "SELECT EXISTS (SELECT 1 FROM jobs WHERE author = ?1 AND bundle = ?2 AND task = ?3 \
             AND state IN ('queued', 'running') AND substr(idempotency_key, 1, length(?4)) = ?4)",
            params![author, bundle, task, key_prefix],
            |r| r.get(0),
        )?;
        Ok(found)
    }

    /// How many jobs are queued or running (the partial index of unfinished jobs: it reads
    /// only those, however many finished jobs are kept).
    pub fn unfinished_total(&self) -> Result<u64, JobError> {
        let n: i64 = self.conn().one(
            "SELECT COUNT(*) FROM jobs WHERE state IN ('queued', 'running')",
            [],
            |r| r.get(0),
        )?;
        Ok(n.max(0) as u64)
    }

    /// How many jobs are in each state.
    pub fn counts(&self) -> Result<Vec<(State, u64)>, JobError> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT state, COUNT(*) FROM jobs GROUP BY state")?;
        let mut out: Vec<(State, u64)> = State::ALL.iter().map(|s| (*s, 0)).collect();
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
        for r in rows {
            let (name, n) = r?;
            if let Some(slot) = out.iter_mut().find(|(s, _)| s.as_str() == name) {
                slot.1 = n.max(0) as u64;
            }
        }
        Ok(out)
    }
}

/// `Err(QuotaExceeded)` when `author` already has `quota` queued or running jobs.
fn within_quota(conn: &Connection, author: &str, quota: u64) -> Result<(), JobError> {
    let unfinished: i64 = conn.one(
        "SELECT COUNT(*) FROM jobs WHERE author = ?1 AND state IN ('queued', 'running')",
        params![author],
        |r| r.get(0),
    )?;
    if unfinished.max(0) as u64 >= quota {
        return Err(JobError::QuotaExceeded {
            author: author.to_string(),
            limit: quota,
        });
    }
    Ok(())
}

/// Unix milliseconds as SQLite's integer (it has no unsigned type; 2^63 ms is far away).
fn ms(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn get_in(conn: &Connection, id: i64) -> Result<Option<Job>, JobError> {
    let job = conn
        .one(
            &format!("SELECT {COLUMNS} FROM jobs WHERE id = ?1"),
            params![id],
            read_row,
        )
        .optional()?;
    job.transpose()
}

/// A row as a [`Job`]; the outer error is SQLite's, the inner one a state this code does not
/// know.
fn read_row(r: &Row<'_>) -> rusqlite::Result<Result<Job, JobError>> {
    let id: i64 = r.get(0)?;
    let state: String = r.get(7)?;
    let u = |i: usize| -> rusqlite::Result<u64> { Ok(r.get::<_, i64>(i)?.max(0) as u64) };
    let uo = |i: usize| -> rusqlite::Result<Option<u64>> {
        Ok(r.get::<_, Option<i64>>(i)?.map(|v| v.max(0) as u64))
    };
    let Some(state) = State::parse(&state) else {
        return Ok(Err(JobError::UnknownState(id, state)));
    };
    Ok(Ok(Job {
        id,
        author: r.get(1)?,
        bundle: r.get(2)?,
        version: r.get(3)?,
        task: r.get(4)?,
        payload: r.get(5)?,
        idempotency_key: r.get(6)?,
        state,
        attempts: u(8)? as u32,
        max_attempts: u(9)? as u32,
        run_at_ms: u(10)?,
        lease_until_ms: uo(11)?,
        last_error: r.get(12)?,
        result: r.get(13)?,
        created_at_ms: u(14)?,
        finished_at_ms: uo(15)?,
    }))
}

#[cfg(test)]
mod tests;

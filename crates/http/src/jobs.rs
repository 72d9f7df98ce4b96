//! Background jobs (docs/jobs.md): the XRPC methods, the runner calls of bundle code
//! (`ctx.enqueue`, `InstanceCalls`), cron, and the workers that run queued jobs through the pool.
//!
//! Owns: who may enqueue and read jobs (the bundle's author, proven with a service-auth token
//! checked as for logs; the bundle's own instances for their version; anyone for a task the
//! manifest marks public, told less), what an enqueue is checked against (the author policy, the
//! bundle's manifest declaring the task, the payload cap, the author's quota), how a claimed job
//! becomes a task call (the same
//! resolution, policy, limits and instance as an endpoint call of that version), and what its
//! outcome records. Must not touch: the queue's state rules (`atrund-jobs`), the task call on
//! the wire (the sandbox), or token checks (`logs`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use atrund_errors::ErrorClass;
use atrund_jobs::{Backoff, Job, JobError, NewJob, Queue, State};
use axum::extract::{Query, State as AxState};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use tokio::sync::Notify;

use atrund_bundle::record::{CronDecl, TaskDecl};
use atrund_bundle::VersionSelector;
use atrund_config::Config;
use tokio::sync::watch;

use crate::error::ApiError;

/// What the jobs need of the runner's pipeline. The HTTP layer's state implements it (lib.rs),
/// so this file, which the router names, does not name the router's file back.
pub trait JobHost: Clone + Send + Sync + 'static {
    fn queue(&self) -> Option<Arc<Jobs>>;
    fn config(&self) -> Arc<Config>;
    fn draining(&self) -> watch::Receiver<bool>;
    /// `(author, name)` of `at-rund dev`'s local bundle.
    fn local_bundle(&self) -> Option<(String, String)>;
    /// Counts a job attempt in flight like a request (a drain waits for it); `Err` when
    /// draining.
    fn admit(&self) -> Result<atrund_pool::Ticket, ApiError>;
    /// The caller's DID, proven by a service-auth token for `method`.
    fn authenticate(
        &self,
        headers: &HeaderMap,
        method: &str,
    ) -> impl std::future::Future<Output = Result<String, ApiError>> + Send;
    /// An allowed author's bundle version, as an endpoint call would resolve it.
    fn resolve(
        &self,
        author: &str,
        name: &str,
        selector: &VersionSelector,
    ) -> impl std::future::Future<Output = Result<Resolved, ApiError>> + Send;
    /// Runs `job`'s task as a task call of its version (the same policy, limits and instances
    /// as an endpoint call), its answer read up to `max_answer` bytes.
    fn run_task(
        &self,
        job: &Job,
        max_answer: usize,
    ) -> impl std::future::Future<Output = Result<(Resolved, bytes::Bytes), ApiError>> + Send;
}

/// A resolved bundle version, as far as jobs care.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub did: String,
    pub name: String,
    /// The version label (semver).
    pub version: String,
    /// The bundle record's CID (for the local bundle: its content key).
    pub record: String,
    pub tasks: Vec<TaskDecl>,
    pub crons: Vec<CronDecl>,
}

pub use atrund_api::{CANCEL_JOB, ENQUEUE_JOB, GET_JOB, LIST_JOBS, RETRY_JOB};

/// Largest answer of a task read back (its JSON result).
const MAX_RESULT_BYTES: usize = 256 * 1024;
/// Most jobs one `listJobs` page holds.
const MAX_LIST: u32 = 100;

/// The queue, what wakes its workers, and each task's runs in flight here.
pub struct Jobs {
    pub queue: Queue,
    /// The queue's counts by state as last read (Redis: refreshed in the background, so a
    /// scrape never waits on the network).
    counts: Mutex<Vec<(State, u64)>>,
    wake: Notify,
    tasks: Mutex<TaskSlots>,
    /// Attempts ended here since start: succeeded, retried, dead, lost.
    ended: [AtomicU64; 4],
}

const OUTCOMES: [&str; 4] = ["succeeded", "retried", "dead", "lost"];

/// A task of one bundle version: (author, record CID, task).
type TaskKey = (String, String, String);

/// Runs in flight per task, and each task's concurrency as its manifest gave it (under
/// `limits.concurrency.max`), learned at enqueue and at each run.
#[derive(Default)]
struct TaskSlots {
    running: HashMap<TaskKey, u64>,
    limit: HashMap<TaskKey, u64>,
}

fn task_key(j: &Job) -> TaskKey {
    (j.author.clone(), j.version.clone(), j.task.clone())
}

impl Jobs {
    pub fn new(queue: Queue) -> Self {
        Self {
            queue,
            counts: Mutex::default(),
            wake: Notify::new(),
            tasks: Mutex::default(),
            ended: Default::default(),
        }
    }

    /// What `/metrics` shows of the jobs: the queue by state (SQLite: read now, a short indexed
    /// query; Redis: as read at most 2 s ago, for the whole cluster) and the attempts this
    /// runner ended.
    pub fn metrics(&self) -> atrund_metrics::Jobs {
        let counts = match &self.queue {
            Queue::Sqlite(store) => store.counts().unwrap_or_else(|e| {
                tracing::warn!(error = %e, "job queue: cannot count jobs for the metrics");
                Vec::new()
            }),
            Queue::Redis(_) => self
                .counts
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        };
        let by_state = counts.into_iter().map(|(s, n)| (s.as_str(), n)).collect();
        let attempts = OUTCOMES
            .iter()
            .zip(&self.ended)
            .map(|(o, n)| (*o, n.load(Ordering::Relaxed)))
            .collect();
        atrund_metrics::Jobs { by_state, attempts }
    }

    /// Jobs queued or running, for describeRunner's `health` (a public method, so no scan of
    /// finished jobs: SQLite counts the unfinished through their index; Redis: as last read for
    /// the metrics, at most 2 s ago). `None` when it cannot be read.
    pub fn unfinished(&self) -> Option<u64> {
        match &self.queue {
            Queue::Sqlite(store) => store
                .unfinished_total()
                .map_err(|e| tracing::warn!(error = %e, "job queue: cannot count unfinished jobs"))
                .ok(),
            Queue::Redis(_) => Some(
                self.counts
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .iter()
                    .filter(|(s, _)| matches!(s, State::Queued | State::Running))
                    .map(|(_, n)| n)
                    .sum(),
            ),
        }
    }

    fn count(&self, outcome: &str) {
        if let Some(i) = OUTCOMES.iter().position(|o| *o == outcome) {
            self.ended[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, TaskSlots> {
        self.tasks.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes a run slot of `j`'s task if it has one free here (checked and taken under one
    /// lock, so two workers never both take the last). A task whose limit is not known yet
    /// (after a restart, before its first run) runs one at a time until it is.
    fn try_reserve(&self, j: &Job) -> Option<TaskKey> {
        let mut s = self.slots();
        let k = task_key(j);
        let running = s.running.get(&k).copied().unwrap_or(0);
        if running >= s.limit.get(&k).copied().unwrap_or(1) {
            return None;
        }
        s.running.insert(k.clone(), running + 1);
        Some(k)
    }

    fn learn(&self, author: &str, version: &str, task: &str, limit: u64) {
        self.slots()
            .limit
            .insert((author.into(), version.into(), task.into()), limit.max(1));
    }
}

/// A task's concurrency: its manifest's (1 when it gives none), at most the operator's cap.
fn task_limit(tasks: &[TaskDecl], task: &str, cap: u64) -> u64 {
    tasks
        .iter()
        .find(|t| t.name == task)
        .and_then(|t| t.concurrency)
        .unwrap_or(1)
        .min(cap)
        .max(1)
}

/// A run slot of a task (`Jobs::try_reserve`), given back when dropped.
struct Slot {
    jobs: Arc<Jobs>,
    key: TaskKey,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut s = self.jobs.slots();
        if let Some(n) = s.running.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                s.running.remove(&self.key);
            }
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn jobs<H: JobHost>(st: &H) -> Result<Arc<Jobs>, ApiError> {
    st.queue().ok_or_else(|| {
        ApiError::new(
            ErrorClass::NotFound,
            "JobsDisabled",
            "this runner runs no background jobs (its operator set jobs.enabled = false)",
        )
    })
}

/// The author's quota, answered as such; any other failure as [`queue_error`].
fn quota_or_queue_error(e: JobError) -> ApiError {
    match e {
        JobError::QuotaExceeded { .. } => ApiError::new(
            ErrorClass::Busy,
            "JobQuotaExceeded",
            format!("{e} (jobs.max_unfinished_per_author)"),
        ),
        e => queue_error(e),
    }
}

/// A queue failure, logged for the operator and answered as the runner's.
fn queue_error(e: JobError) -> ApiError {
    tracing::error!(error = %e, "job queue");
    runner_error(e.to_string())
}

fn runner_error(detail: String) -> ApiError {
    ApiError::new(
        ErrorClass::Runner,
        "JobQueueFailed",
        format!("the runner's job queue failed ({detail}); its operator finds the cause in the runner's log"),
    )
}

fn job_json(j: &Job) -> serde_json::Value {
    let parse = |s: &Option<String>| {
        s.as_deref()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(t).ok())
    };
    serde_json::json!({
        "id": j.id,
        "author": j.author,
        "bundle": j.bundle,
        "version": j.version,
        "task": j.task,
        "state": j.state.as_str(),
        "attempts": j.attempts,
        "maxAttempts": j.max_attempts,
        "idempotencyKey": j.idempotency_key,
        "runAt": j.run_at_ms,
        "createdAt": j.created_at_ms,
        "finishedAt": j.finished_at_ms,
        "lastError": j.last_error,
        "result": parse(&j.result),
    })
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EnqueueInput {
    /// Whose bundle: the caller's own when not given; another author's only for a public task.
    #[serde(default)]
    author: Option<String>,
    bundle: String,
    #[serde(default)]
    version: Option<String>,
    task: String,
    #[serde(default)]
    payload: serde_json::Value,
    #[serde(default)]
    delay_ms: u64,
    #[serde(default)]
    idempotency_key: Option<String>,
}

/// What to run, the same from every enqueuer; all that bundle code may say (it cannot name
/// another bundle or author: such a field is refused, not ignored).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TaskRun {
    task: String,
    #[serde(default)]
    payload: serde_json::Value,
    #[serde(default)]
    delay_ms: u64,
    #[serde(default)]
    idempotency_key: Option<String>,
}

/// Who asks for a job: decides which tasks they may run and what they are told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Enqueuer {
    /// The bundle's author (a service-auth token): any declared task, the whole job back.
    Author,
    /// The bundle's own code (`ctx.enqueue`): any task of its version, the whole job back.
    Bundle,
    /// Anyone else: tasks the manifest marks `public` only; their idempotency keys live apart
    /// from the author's, and they are told the job's id and state, never its payload or result.
    Public,
}

/// Prefix of public enqueuers' idempotency keys, so they can never match (and so learn of, or
/// suppress) the author's own jobs or crons.
const PUBLIC_KEY_PREFIX: &str = "public:";

/// Checks `run` against `target` and queues it: the payload cap, the key, the task declared
/// (and public for a public enqueuer), the author's quota.
async fn enqueue_checked(
    q: &Jobs,
    config: &Config,
    target: &Resolved,
    run: TaskRun,
    who: Enqueuer,
) -> Result<atrund_jobs::Enqueued, ApiError> {
    let payload = serde_json::to_string(&run.payload).unwrap_or_else(|_| "null".into());
    if payload.len() as u64 > config.jobs.max_payload_bytes {
        return Err(ApiError::new(
            ErrorClass::TooLarge,
            "PayloadTooLarge",
            format!(
                "the payload is {} bytes, over this runner's limit of {} (jobs.max_payload_bytes)",
                payload.len(),
                config.jobs.max_payload_bytes
            ),
        ));
    }
    if run
        .idempotency_key
        .as_ref()
        .is_some_and(|k| k.is_empty() || k.len() > 256)
    {
        return Err(ApiError::new(
            ErrorClass::BadRequest,
            "InvalidInput",
            "idempotencyKey must be 1 to 256 characters",
        ));
    }
    let decl = target.tasks.iter().find(|t| t.name == run.task);
    let Some(decl) = decl.filter(|d| who != Enqueuer::Public || d.public) else {
        return Err(ApiError::new(
            ErrorClass::NotFound,
            "TaskNotFound",
            format!(
                "bundle '{}' version {} declares no {}task '{}' (its manifest's tasks)",
                target.name,
                target.version,
                if who == Enqueuer::Public {
                    "public "
                } else {
                    ""
                },
                run.task
            ),
        ));
    };
    q.learn(
        &target.did,
        &target.record,
        &decl.name,
        task_limit(&target.tasks, &decl.name, config.limits.concurrency.max),
    );
    let idempotency_key = match who {
        Enqueuer::Public => run
            .idempotency_key
            .map(|k| format!("{PUBLIC_KEY_PREFIX}{k}")),
        Enqueuer::Author | Enqueuer::Bundle => run.idempotency_key,
    };
    let new = NewJob {
        author: target.did.clone(),
        bundle: target.name.clone(),
        version: target.record.clone(),
        task: run.task,
        payload,
        idempotency_key,
        delay_ms: run.delay_ms,
        max_attempts: u32::try_from(config.jobs.max_attempts).unwrap_or(u32::MAX),
        author_quota: config.jobs.max_unfinished_per_author,
    };
    let done = q
        .queue
        .enqueue(new, now_ms())
        .await
        .map_err(quota_or_queue_error)?;
    q.wake.notify_one();
    Ok(done)
}

/// The answer to an enqueue: 201 with a new job, 200 with the one its key already named.
fn enqueued_json(done: &atrund_jobs::Enqueued, who: Enqueuer) -> (StatusCode, serde_json::Value) {
    let status = if done.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let mut job = job_json(&done.job);
    if who == Enqueuer::Public {
        // Not the enqueuer's to read: what the author's task made of it.
        if let Some(o) = job.as_object_mut() {
            for k in ["result", "lastError", "idempotencyKey"] {
                o.remove(k);
            }
        }
    }
    (
        status,
        serde_json::json!({"job": job, "created": done.created}),
    )
}

/// `POST /xrpc/dev.atrund.enqueueJob`: the author queues a run of one of their bundle's tasks
/// (with a service-auth token); anyone queues a run of a task the manifest marks `public`
/// (without one, or naming another `author`). The version (`latest` unless given) is resolved
/// now and fixed for the job.
pub async fn enqueue<H: JobHost>(
    AxState(st): AxState<H>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let q = jobs(&st)?;
    let input: EnqueueInput = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            ErrorClass::BadRequest,
            "InvalidInput",
            format!("the body must be {{\"bundle\", \"task\", \"payload\"?, \"version\"?, \"delayMs\"?, \"idempotencyKey\"?, \"author\"?}}: {e}"),
        )
    })?;
    let has_token = headers.contains_key(axum::http::header::AUTHORIZATION);
    let (author, caller) = match (input.author.clone(), has_token) {
        // Without an author the caller can only mean their own bundle: a token is needed.
        (None, _) => {
            let me = st.authenticate(&headers, ENQUEUE_JOB).await?;
            (me.clone(), Some(me))
        }
        (Some(a), true) => (a, Some(st.authenticate(&headers, ENQUEUE_JOB).await?)),
        (Some(a), false) => (a, None),
    };
    let selector = VersionSelector::parse(input.version.as_deref().unwrap_or("latest"))?;
    atrund_bundle::record::validate_name(&input.bundle)?;
    let target = st.resolve(&author, &input.bundle, &selector).await?;
    let who = if caller.as_deref() == Some(target.did.as_str()) {
        Enqueuer::Author
    } else {
        Enqueuer::Public
    };
    let run = TaskRun {
        task: input.task,
        payload: input.payload,
        delay_ms: input.delay_ms,
        idempotency_key: input.idempotency_key,
    };
    let done = enqueue_checked(&q, &st.config(), &target, run, who).await?;
    let (status, json) = enqueued_json(&done, who);
    Ok((status, Json(json)).into_response())
}

/// Answers one instance's calls to its runner (`ctx.enqueue`): acts for that instance's bundle
/// version only, whatever the call says.
pub struct InstanceCalls<H> {
    host: H,
    target: Resolved,
}

impl<H> std::fmt::Debug for InstanceCalls<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InstanceCalls")
            .field("author", &self.target.did)
            .field("bundle", &self.target.name)
            .field("record", &self.target.record)
            .finish_non_exhaustive()
    }
}

/// The runner calls of an instance of `target`, when the runner keeps jobs.
pub fn instance_calls<H: JobHost>(
    host: &H,
    target: Resolved,
) -> Option<atrund_sandbox::RunnerCalls> {
    host.queue()?;
    Some(Arc::new(InstanceCalls {
        host: host.clone(),
        target,
    }))
}

impl<H: JobHost> atrund_sandbox::RunnerService for InstanceCalls<H> {
    fn call(
        &self,
        call: atrund_sandbox::RunnerCall,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = atrund_sandbox::RunnerReply> + Send + '_>>
    {
        Box::pin(async move {
            let (status, json) = match self.answer(call).await {
                Ok(ok) => ok,
                Err(e) => (
                    e.status(),
                    serde_json::json!({"error": e.code, "message": e.message}),
                ),
            };
            atrund_sandbox::RunnerReply {
                status,
                body: bytes::Bytes::from(json.to_string()),
            }
        })
    }
}

impl<H: JobHost> InstanceCalls<H> {
    async fn answer(
        &self,
        call: atrund_sandbox::RunnerCall,
    ) -> Result<(StatusCode, serde_json::Value), ApiError> {
        if call.path != "/v1/enqueue" {
            return Err(ApiError::new(
                ErrorClass::NotFound,
                "NotFound",
                format!(
                    "the runner has no call {} (it knows POST /v1/enqueue)",
                    call.path
                ),
            ));
        }
        if call.method != axum::http::Method::POST {
            return Err(ApiError::new(
                ErrorClass::MethodNotAllowed,
                "MethodNotAllowed",
                "/v1/enqueue takes POST",
            ));
        }
        let q = jobs(&self.host)?;
        let run: TaskRun = serde_json::from_slice(&call.body).map_err(|e| {
            ApiError::new(
                ErrorClass::BadRequest,
                "InvalidInput",
                format!("the body must be {{\"task\", \"payload\"?, \"delayMs\"?, \"idempotencyKey\"?}}: {e}"),
            )
        })?;
        let done =
            enqueue_checked(&q, &self.host.config(), &self.target, run, Enqueuer::Bundle).await?;
        Ok(enqueued_json(&done, Enqueuer::Bundle))
    }
}

#[derive(Deserialize)]
pub struct IdQuery {
    id: i64,
}

fn not_found(id: i64) -> ApiError {
    ApiError::new(
        ErrorClass::NotFound,
        "JobNotFound",
        format!("you have no job {id} on this runner (finished jobs are deleted after jobs.retention_secs)"),
    )
}

/// `GET /xrpc/dev.atrund.getJob?id=N`: one of the caller's jobs.
pub async fn get_job<H: JobHost>(
    AxState(st): AxState<H>,
    headers: HeaderMap,
    Query(q): Query<IdQuery>,
) -> Result<Response, ApiError> {
    let jq = jobs(&st)?;
    let author = st.authenticate(&headers, GET_JOB).await?;
    let id = q.id;
    let job = jq.queue.get(author, id).await.map_err(queue_error)?;
    let job = job.ok_or_else(|| not_found(id))?;
    Ok(Json(serde_json::json!({"job": job_json(&job)})).into_response())
}

#[derive(Deserialize)]
pub struct ListQuery {
    bundle: Option<String>,
    state: Option<String>,
    before: Option<i64>,
    limit: Option<u32>,
}

/// `GET /xrpc/dev.atrund.listJobs?bundle=&state=&before=&limit=`: the caller's jobs, newest
/// first; `cursor` is the `before` of the next page.
pub async fn list_jobs<H: JobHost>(
    AxState(st): AxState<H>,
    headers: HeaderMap,
    Query(q): Query<ListQuery>,
) -> Result<Response, ApiError> {
    let jq = jobs(&st)?;
    let author = st.authenticate(&headers, LIST_JOBS).await?;
    let state = match q.state.as_deref() {
        None => None,
        Some(s) => Some(
            State::ALL
                .into_iter()
                .find(|st| st.as_str() == s)
                .ok_or_else(|| {
                    ApiError::new(
                        ErrorClass::BadRequest,
                        "InvalidInput",
                        format!(
                            "state '{s}' is none of queued, running, succeeded, dead, cancelled"
                        ),
                    )
                })?,
        ),
    };
    let limit = q.limit.unwrap_or(50).clamp(1, MAX_LIST);
    let (bundle, before) = (q.bundle, q.before);
    let page = jq
        .queue
        .list(author, bundle, state, before, limit)
        .await
        .map_err(queue_error)?;
    let cursor = (page.len() as u32 == limit)
        .then(|| page.last().map(|j| j.id))
        .flatten();
    let jobs: Vec<_> = page.iter().map(job_json).collect();
    Ok(Json(serde_json::json!({"jobs": jobs, "cursor": cursor})).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdBody {
    id: i64,
}

/// `POST /xrpc/dev.atrund.cancelJob {"id"}` and `.../retryJob {"id"}`: the job's state after
/// the call; a state that prevented it is answered as a conflict naming it.
async fn control<H: JobHost>(
    st: H,
    headers: HeaderMap,
    body: axum::body::Bytes,
    method: &'static str,
) -> Result<Response, ApiError> {
    let jq = jobs(&st)?;
    let author = st.authenticate(&headers, method).await?;
    let IdBody { id } = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            ErrorClass::BadRequest,
            "InvalidInput",
            format!("the body must be {{\"id\": <job id>}}: {e}"),
        )
    })?;
    let now = now_ms();
    let cancel = method == CANCEL_JOB;
    let quota = st.config().jobs.max_unfinished_per_author;
    let state = if cancel {
        jq.queue.cancel(author, id, now).await
    } else {
        jq.queue.retry(author, id, now, quota).await
    }
    .map_err(quota_or_queue_error)?
    .ok_or_else(|| not_found(id))?;
    let wanted = if cancel {
        State::Cancelled
    } else {
        State::Queued
    };
    if state != wanted {
        return Err(ApiError::new(
            ErrorClass::BadRequest,
            "JobStateConflict",
            format!(
                "job {id} is {}: {}",
                state.as_str(),
                if cancel {
                    "only queued jobs can be cancelled"
                } else {
                    "only dead or cancelled jobs can be retried"
                }
            ),
        ));
    }
    if !cancel {
        jq.wake.notify_one();
    }
    Ok(Json(serde_json::json!({"id": id, "state": state.as_str()})).into_response())
}

pub async fn cancel_job<H: JobHost>(
    AxState(st): AxState<H>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    control(st, headers, body, CANCEL_JOB).await
}

pub async fn retry_job<H: JobHost>(
    AxState(st): AxState<H>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    control(st, headers, body, RETRY_JOB).await
}

/// Fires the manifest `crons` of the bundles in `jobs.cron_bundles` (and, in `at-rund dev`, of
/// the local bundle) at each UTC minute that matches: a job per cron and minute, deduplicated by
/// its idempotency key `cron:<task>:<minute>`. A tick is skipped while the cron's previous run
/// is queued or running (no overlap), and ticks missed while the runner was down are not replayed.
pub fn spawn_cron<H: JobHost>(st: H) {
    let Some(q) = st.queue() else { return };
    let mut entries: Vec<(String, String)> = st
        .config()
        .jobs
        .cron_bundles
        .iter()
        .filter_map(|e| e.split_once('/'))
        .map(|(a, n)| (a.to_string(), n.to_string()))
        .collect();
    if let Some(local) = st.local_bundle() {
        entries.push(local);
    }
    if entries.is_empty() {
        return;
    }
    tokio::spawn(async move {
        let mut draining = st.draining();
        loop {
            let now = now_ms();
            let next_minute = now / 60_000 + 1;
            let wait = Duration::from_millis(next_minute * 60_000 - now);
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = draining.wait_for(|d| *d) => return,
            }
            for (author, name) in &entries {
                if let Err(e) = fire(&st, &q, author, name, next_minute).await {
                    tracing::warn!(%author, bundle = %name, error = %e.message, "cron: cannot fire this bundle's crons");
                }
            }
        }
    });
}

/// Enqueues the runs of `author/name`'s crons that match `minute`.
async fn fire<H: JobHost>(
    st: &H,
    q: &Jobs,
    author: &str,
    name: &str,
    minute: u64,
) -> Result<(), ApiError> {
    let target = st.resolve(author, name, &VersionSelector::Latest).await?;
    let did = target.did.clone();
    let config = st.config();
    for c in &target.crons {
        // The manifest was validated when it was loaded.
        let Ok(schedule) = atrund_bundle::cron::Schedule::parse(&c.schedule) else {
            continue;
        };
        if !schedule.matches(minute) {
            continue;
        }
        let prefix = format!("cron:{}:", c.task);
        let (a, b, t, p) = (
            did.clone(),
            target.name.clone(),
            c.task.clone(),
            prefix.clone(),
        );
        if q.queue.unfinished(a, b, t, p).await.map_err(queue_error)? {
            tracing::info!(author = %did, bundle = %target.name, task = %c.task, "cron: a run of this cron is still queued or running (an earlier tick's, or this tick's queued by another runner); this tick is not queued again");
            continue;
        }
        q.learn(
            &did,
            &target.record,
            &c.task,
            task_limit(&target.tasks, &c.task, config.limits.concurrency.max),
        );
        let new = NewJob {
            author: did.clone(),
            bundle: target.name.clone(),
            version: target.record.clone(),
            task: c.task.clone(),
            payload: "null".into(),
            idempotency_key: Some(format!("{prefix}{minute}")),
            delay_ms: 0,
            max_attempts: u32::try_from(config.jobs.max_attempts).unwrap_or(u32::MAX),
            author_quota: config.jobs.max_unfinished_per_author,
        };
        let done = q.queue.enqueue(new, now_ms()).await.map_err(queue_error)?;
        if done.created {
            tracing::info!(author = %did, bundle = %target.name, task = %c.task, job = done.job.id, schedule = %c.schedule, "cron fired");
        } else {
            // Another runner sharing the queue fired this tick first (or this one did already).
            tracing::debug!(author = %did, bundle = %target.name, task = %c.task, job = done.job.id, "cron tick already queued");
        }
        q.wake.notify_one();
    }
    Ok(())
}

/// Starts `jobs.workers` workers and the purge of old finished jobs; they stop claiming once
/// the runner drains (a running attempt finishes, or its lease brings it back after a restart).
pub fn spawn_workers<H: JobHost>(st: H) {
    let Some(q) = st.queue() else { return };
    let config = st.config();
    for n in 0..config.jobs.workers {
        let (st, q) = (st.clone(), q.clone());
        tokio::spawn(async move { worker(st, q, n).await });
    }
    if let Queue::Redis(_) = q.queue {
        // The cluster's counts for /metrics, read here so a scrape never waits on Redis.
        let (q, mut draining) = (q.clone(), st.draining());
        tokio::spawn(async move {
            loop {
                match q.queue.counts().await {
                    Ok(c) => *q.counts.lock().unwrap_or_else(|p| p.into_inner()) = c,
                    Err(e) => {
                        tracing::warn!(error = %e, "job queue: cannot count jobs for the metrics")
                    }
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                    _ = draining.wait_for(|d| *d) => return,
                }
            }
        });
    }
    let retention = Duration::from_secs(config.jobs.retention_secs);
    let (q, mut draining) = (q.clone(), st.draining());
    tokio::spawn(async move {
        loop {
            let before = now_ms().saturating_sub(retention.as_millis() as u64);
            match q.queue.purge(before).await {
                Ok(n) if n > 0 => {
                    tracing::info!(jobs = n, "finished jobs past jobs.retention_secs deleted")
                }
                _ => {}
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(600)) => {}
                _ = draining.wait_for(|d| *d) => return,
            }
        }
    });
}

async fn worker<H: JobHost>(st: H, q: Arc<Jobs>, n: u64) {
    let mut draining = st.draining();
    loop {
        if *draining.borrow() {
            return;
        }
        let config = st.config();
        let lease = config.jobs.lease_ms;
        // The slot the claim took, whatever becomes of the claim: given back when dropped.
        let reserved: Arc<Mutex<Option<Slot>>> = Arc::default();
        let (slots, taken) = (q.clone(), reserved.clone());
        let claimed = q
            .queue
            .claim(now_ms(), lease, move |j| match slots.try_reserve(j) {
                Some(key) => {
                    let slot = Slot {
                        jobs: slots.clone(),
                        key,
                    };
                    *taken.lock().unwrap_or_else(|p| p.into_inner()) = Some(slot);
                    false
                }
                None => true,
            })
            .await;
        let slot = reserved.lock().unwrap_or_else(|p| p.into_inner()).take();
        match claimed {
            Ok(Some(job)) => {
                let _slot = slot;
                // Counted as in flight like a request, so a drain waits for the attempt.
                let Ok(_ticket) = st.admit() else {
                    tracing::info!(job = job.id, "draining: the claimed job is left to its lease and runs again after the restart");
                    return;
                };
                run(&st, &q, job).await;
                continue;
            }
            Ok(None) => {}
            Err(e) => tracing::error!(worker = n, error = %e, "cannot claim a job"),
        }
        let poll = Duration::from_millis(config.jobs.poll_ms);
        tokio::select! {
            _ = q.wake.notified() => {}
            _ = tokio::time::sleep(poll) => {}
            _ = draining.wait_for(|d| *d) => return,
        }
    }
}

/// One attempt of `job`: its outcome recorded, or left to its lease if the runner stops.
async fn run<H: JobHost>(st: &H, q: &Jobs, job: Job) {
    let span = tracing::info_span!("job", id = job.id, author = %job.author, bundle = %job.bundle, task = %job.task, attempt = job.attempts);
    let outcome = tracing::Instrument::instrument(attempt(st, q, &job), span.clone()).await;
    let config = st.config();
    let backoff = Backoff {
        base_ms: config.jobs.backoff_base_ms,
        max_ms: config.jobs.backoff_max_ms,
    };
    let (id, n) = (job.id, job.attempts);
    // The error's name and the runner's message (never the bundle's own text), for the log.
    let mut failure = None;
    let recorded = match outcome {
        Ok(result) => q
            .queue
            .complete(id, n, Some(result), now_ms())
            .await
            .map(|ok| ok.then_some(State::Succeeded)),
        Err(error) => {
            let msg = format!("{}: {}", error.code, error.message);
            failure = Some(msg.clone());
            q.queue.fail(id, n, msg, now_ms(), backoff).await
        }
    };
    let _g = span.enter();
    match recorded {
        Ok(Some(state)) => {
            q.count(match state {
                State::Queued => "retried",
                other => other.as_str(),
            });
            match &failure {
                Some(error) => tracing::info!(state = state.as_str(), %error, "job attempt ended"),
                None => tracing::info!(state = state.as_str(), "job attempt ended"),
            }
        }
        Ok(None) => {
            q.count("lost");
            tracing::warn!("job attempt ended after its lease: its outcome is not recorded")
        }
        Err(e) => tracing::error!(error = %e, "cannot record a job's outcome"),
    }
}

/// Runs the task as an endpoint call of the job's version would run (`JobHost::run_task`);
/// the task's JSON result.
async fn attempt<H: JobHost>(st: &H, q: &Jobs, job: &Job) -> Result<String, ApiError> {
    let (target, body) = st.run_task(job, MAX_RESULT_BYTES).await?;
    q.learn(
        &job.author,
        &job.version,
        &job.task,
        task_limit(&target.tasks, &job.task, st.config().limits.concurrency.max),
    );
    let answer: serde_json::Value = serde_json::from_slice(&body).map_err(|_| {
        ApiError::new(
            ErrorClass::Author,
            "BundleFailed",
            "the task's answer was not the shim's JSON",
        )
    })?;
    Ok(answer
        .get("result")
        .map(|r| r.to_string())
        .unwrap_or_else(|| "null".into()))
}

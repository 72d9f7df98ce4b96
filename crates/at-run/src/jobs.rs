//! `at-run jobs enqueue|ls|show|cancel|retry`: the author's background jobs on one runner
//! (docs/jobs.md), through its author-only XRPC methods (`authed`).
//!
//! Owns: the subcommands, and how a job is shown. Must not touch: what a job is (the runner
//! decides and answers); the token is never printed.

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::auth::AuthArgs;
use crate::authed::Caller;

pub use atrund_api::{CANCEL_JOB, ENQUEUE_JOB, GET_JOB, LIST_JOBS, RETRY_JOB};

/// The runner and who you are on it.
#[derive(Debug, Clone, clap::Args)]
pub struct OnRunner {
    /// The runner: its URL (e.g. https://runner.example.com), or its operator's handle or DID.
    #[arg(long, env = "ATRUN_RUNNER", value_name = "URL_OR_OPERATOR")]
    pub runner: String,
    #[command(flatten)]
    pub auth: AuthArgs,
    /// Where an operator named by --runner is resolved.
    #[command(flatten)]
    pub net: crate::runners::NetArgs,
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum JobsCommand {
    /// Queue a run of TASK of your bundle NAME (the version is resolved now and fixed).
    Enqueue {
        name: String,
        task: String,
        /// The payload, as JSON [default: null].
        #[arg(long, value_name = "JSON")]
        payload: Option<String>,
        /// Run no earlier than this many milliseconds from now.
        #[arg(long, value_name = "MS")]
        delay_ms: Option<u64>,
        /// Jobs with the same key (per bundle and task) are one job.
        #[arg(long, value_name = "KEY")]
        key: Option<String>,
        /// latest (default), a semver or a record CID.
        #[arg(long, value_name = "VERSION")]
        version: Option<String>,
        #[command(flatten)]
        on: OnRunner,
    },
    /// List your jobs, newest first (of one bundle with NAME).
    Ls {
        name: Option<String>,
        /// queued, running, succeeded, dead or cancelled.
        #[arg(long)]
        state: Option<String>,
        /// Most jobs shown [default: 50, at most 100].
        #[arg(long, value_name = "N")]
        limit: Option<u32>,
        #[command(flatten)]
        on: OnRunner,
    },
    /// Show one job: state, attempts, last error, result.
    Show {
        id: i64,
        #[command(flatten)]
        on: OnRunner,
    },
    /// Cancel a queued job.
    Cancel {
        id: i64,
        #[command(flatten)]
        on: OnRunner,
    },
    /// Queue a dead or cancelled job again, with a fresh set of attempts.
    Retry {
        id: i64,
        #[command(flatten)]
        on: OnRunner,
    },
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum CronCommand {
    /// Fire a cron's TASK now: queue one run, as its schedule would (payload null), on the
    /// runner; with `at-run dev` running, on the local bundle.
    Run {
        task: String,
        /// The bundle [default: the name in the project's at-run.json].
        #[arg(long)]
        name: Option<String>,
        /// Project folder, for the default name.
        #[arg(long, default_value = ".")]
        dir: std::path::PathBuf,
        #[command(flatten)]
        on: OnRunner,
    },
}

/// Runs one `at-run cron` subcommand.
pub async fn cron(cmd: &CronCommand) -> anyhow::Result<Answer> {
    let CronCommand::Run {
        task,
        name,
        dir,
        on,
    } = cmd;
    let name = match name {
        Some(n) => n.clone(),
        None => {
            crate::project::Project::load(dir)
                .context("name the bundle with --name, or run this in its project folder")?
                .file
                .name
        }
    };
    let mut a = run(&JobsCommand::Enqueue {
        name,
        task: task.clone(),
        payload: None,
        delay_ms: None,
        key: None,
        version: None,
        on: on.clone(),
    })
    .await?;
    a.text = a.text.replacen("queued: ", "fired: ", 1);
    Ok(a)
}

/// A job as the runner answers it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Job {
    pub id: i64,
    pub bundle: String,
    pub version: String,
    pub task: String,
    pub state: String,
    pub attempts: u64,
    pub max_attempts: u64,
    #[serde(default)]
    pub idempotency_key: Option<String>,
    #[serde(default)]
    pub last_error: Option<String>,
    #[serde(default)]
    pub result: Option<serde_json::Value>,
}

impl Job {
    pub fn render(&self) -> String {
        let mut s = format!(
            "job {}  {}/{}  {}  attempts {}/{}",
            self.id, self.bundle, self.task, self.state, self.attempts, self.max_attempts
        );
        if let Some(r) = self.result.as_ref().filter(|r| !r.is_null()) {
            s.push_str(&format!("  result {r}"));
        }
        if let Some(e) = &self.last_error {
            s.push_str(&format!("  last error: {e}"));
        }
        s.push('\n');
        s
    }
}

/// What a jobs command answered: JSON for scripts, text for people.
pub struct Answer {
    pub json: serde_json::Value,
    pub text: String,
}

fn job_of(v: &serde_json::Value) -> anyhow::Result<Job> {
    serde_json::from_value(v.get("job").cloned().unwrap_or_default())
        .context("the runner's job answer is not what this at-run reads")
}

/// Runs one `at-run jobs` subcommand.
pub async fn run(cmd: &JobsCommand) -> anyhow::Result<Answer> {
    match cmd {
        JobsCommand::Enqueue {
            name,
            task,
            payload,
            delay_ms,
            key,
            version,
            on,
        } => {
            let payload: serde_json::Value = match payload {
                Some(p) => serde_json::from_str(p).map_err(|e| {
                    anyhow::anyhow!(
                        "--payload is not valid JSON ({e}); pass e.g. --payload '{{\"n\": 1}}'"
                    )
                })?,
                None => serde_json::Value::Null,
            };
            let mut body = serde_json::json!({"bundle": name, "task": task, "payload": payload});
            if let Some(d) = delay_ms {
                body["delayMs"] = (*d).into();
            }
            if let Some(k) = key {
                body["idempotencyKey"] = k.clone().into();
            }
            if let Some(v) = version {
                body["version"] = v.clone().into();
            }
            let caller = Caller::new(&on.runner, &on.net).await?;
            let v: serde_json::Value = caller
                .post(&on.auth, ENQUEUE_JOB, &body)
                .await?
                .json()
                .await?;
            let job = job_of(&v)?;
            let how = if v["created"] == true {
                "queued"
            } else {
                "already queued with this key"
            };
            Ok(Answer {
                text: format!("{how}: {}", job.render()),
                json: v,
            })
        }
        JobsCommand::Ls {
            name,
            state,
            limit,
            on,
        } => {
            let mut q = Vec::new();
            if let Some(n) = name {
                q.push(("bundle", n.clone()));
            }
            if let Some(s) = state {
                q.push(("state", s.clone()));
            }
            if let Some(l) = limit {
                q.push(("limit", l.to_string()));
            }
            let caller = Caller::new(&on.runner, &on.net).await?;
            let v: serde_json::Value = caller
                .get(&on.auth, LIST_JOBS, &q, None)
                .await?
                .json()
                .await?;
            let jobs: Vec<Job> = serde_json::from_value(v.get("jobs").cloned().unwrap_or_default())
                .context("the runner's job list is not what this at-run reads")?;
            let mut text: String = jobs.iter().map(Job::render).collect();
            if jobs.is_empty() {
                text.push_str("no jobs\n");
            }
            Ok(Answer { json: v, text })
        }
        JobsCommand::Show { id, on } => {
            let caller = Caller::new(&on.runner, &on.net).await?;
            let v: serde_json::Value = caller
                .get(&on.auth, GET_JOB, &[("id", id.to_string())], None)
                .await?
                .json()
                .await?;
            let text = job_of(&v)?.render();
            Ok(Answer { json: v, text })
        }
        JobsCommand::Cancel { id, on } | JobsCommand::Retry { id, on } => {
            let method = if matches!(cmd, JobsCommand::Cancel { .. }) {
                CANCEL_JOB
            } else {
                RETRY_JOB
            };
            let caller = Caller::new(&on.runner, &on.net).await?;
            let v: serde_json::Value = caller
                .post(&on.auth, method, &serde_json::json!({ "id": id }))
                .await?
                .json()
                .await?;
            let text = format!("job {id}: {}\n", v["state"].as_str().unwrap_or("?"));
            Ok(Answer { json: v, text })
        }
    }
}

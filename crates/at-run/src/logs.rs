//! `at-run logs NAME [--follow] [--runner URL]`: a bundle's console output as a runner kept it.
//! Asks the author's PDS for a service-auth token (`com.atproto.server.getServiceAuth`,
//! `aud` = the runner's `serviceDid` from describeRunner, `lxm` = the method), then calls the
//! runner's `dev.atrund.getLogs`, or `dev.atrund.tailLogs` with `--follow` (reconnecting with the
//! last cursor when the stream ends, with a new token each time: tokens are single-use).
//!
//! Owns: the calls and printing lines. Must not touch: the author's records; the token is never
//! printed.

use std::io::Write as _;
use std::time::Duration;

use anyhow::Context;
use atrund_api::{GET_LOGS, TAIL_LOGS};
use serde::{Deserialize, Serialize};

use crate::auth::AuthArgs;
use crate::authed::Caller;
use crate::error::Failure;

/// The command line of `at-run logs`.
#[derive(Debug, Clone, clap::Args)]
pub struct LogsArgs {
    /// The bundle's name.
    pub name: String,
    /// Keep printing lines as they arrive (Ctrl-C to stop).
    #[arg(long, short)]
    pub follow: bool,
    /// The runner: its URL (e.g. https://runner.example.com), or its operator's handle or DID.
    #[arg(long, env = "ATRUN_RUNNER", value_name = "URL_OR_OPERATOR")]
    pub runner: String,
    /// Only lines after this cursor (a previous answer's `cursor`).
    #[arg(long, value_name = "CURSOR")]
    pub since: Option<u64>,
    /// Most lines shown (newest, without --since) [default: 100, at most 1000].
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    #[command(flatten)]
    pub auth: AuthArgs,
    /// Where an operator named by --runner is resolved.
    #[command(flatten)]
    pub net: crate::runners::NetArgs,
}

/// One line as the runner answers it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Line {
    pub seq: u64,
    pub time: String,
    pub stream: String,
    pub instance: String,
    pub version: String,
    pub text: String,
}

/// `getLogs`'s answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Logs {
    pub author: String,
    pub bundle: String,
    pub lines: Vec<Line>,
    pub cursor: u64,
    pub missed: u64,
    pub dropped: u64,
    #[serde(default)]
    pub more: bool,
}

impl Logs {
    pub fn render(&self) -> String {
        let mut s = String::new();
        if self.missed > 0 {
            s.push_str(&format!(
                "({} lines dropped by the runner's cap before you read them)\n",
                self.missed
            ));
        } else if self.dropped > 0 {
            s.push_str(&format!(
                "({} older lines dropped by the runner's cap)\n",
                self.dropped
            ));
        }
        for l in &self.lines {
            s.push_str(&render_line(l));
        }
        if self.lines.is_empty() {
            s.push_str(&format!(
                "no lines kept for {} on this runner\n",
                self.bundle
            ));
        }
        s
    }
}

fn render_line(l: &Line) -> String {
    format!("{} {} {} {}\n", l.time, l.version, l.stream, l.text)
}

fn query(args: &LogsArgs, since: Option<u64>) -> Vec<(&'static str, String)> {
    let mut q = vec![("bundle", args.name.clone())];
    if let Some(s) = since {
        q.push(("since", s.to_string()));
    }
    if let Some(l) = args.limit {
        q.push(("limit", l.to_string()));
    }
    q
}

/// A caller of `runner`'s log methods: the runner must keep logs.
async fn log_caller(runner: &str, net: &crate::runners::NetArgs) -> anyhow::Result<Caller> {
    let caller = Caller::new(runner, net).await?;
    if !caller.desc.logs_kept {
        return Err(Failure::RunnerRefused(format!(
            "the runner at {} keeps no logs of bundles (its operator set logs.keep = false)",
            caller.runner
        ))
        .into());
    }
    Ok(caller)
}

/// `at-run logs NAME` without `--follow`: one page.
pub async fn get(args: &LogsArgs) -> anyhow::Result<Logs> {
    let caller = log_caller(&args.runner, &args.net).await?;
    let resp = caller
        .get(
            &args.auth,
            GET_LOGS,
            &query(args, args.since),
            Some(Duration::from_secs(60)),
        )
        .await?;
    resp.json()
        .await
        .context("the runner's getLogs answer is not what this at-run reads")
}

/// `at-run logs NAME --follow`: prints lines as they arrive until interrupted (NDJSON events
/// with `json`).
pub async fn follow(args: &LogsArgs, json: bool) -> anyhow::Result<()> {
    use futures::StreamExt as _;
    let caller = log_caller(&args.runner, &args.net).await?;
    let mut since = args.since;
    let mut failures = 0u32;
    loop {
        let resp = caller
            .get(&args.auth, TAIL_LOGS, &query(args, since), None)
            .await?;
        let mut body = resp.bytes_stream();
        let mut buf: Vec<u8> = Vec::new();
        let mut ended = false;
        while let Some(chunk) = body.next().await {
            let Ok(chunk) = chunk else { break };
            buf.extend_from_slice(&chunk);
            while let Some(nl) = buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buf.drain(..=nl).collect();
                let Ok(ev) = serde_json::from_slice::<serde_json::Value>(&line) else {
                    continue;
                };
                failures = 0;
                match ev.get("type").and_then(|t| t.as_str()) {
                    Some("line") => {
                        if let Ok(l) = serde_json::from_value::<Line>(ev.clone()) {
                            since = Some(l.seq);
                            if json {
                                println!("{ev}");
                            } else {
                                print!("{}", render_line(&l));
                            }
                        }
                    }
                    Some("missed") => {
                        let n = ev.get("count").and_then(|c| c.as_u64()).unwrap_or(0);
                        if json {
                            println!("{ev}");
                        } else {
                            eprintln!(
                                "({n} lines dropped by the runner's cap before you read them)"
                            );
                        }
                    }
                    Some("end") => {
                        since = ev.get("cursor").and_then(|c| c.as_u64()).or(since);
                        ended = true;
                    }
                    _ => {}
                }
                let _ = std::io::stdout().flush();
            }
        }
        if !ended {
            // The connection broke: try again, a few times, then give up.
            failures += 1;
            if failures > 5 {
                return Err(Failure::RunnerUnreachable(format!(
                    "the log stream from {} kept breaking; check the runner",
                    caller.runner
                ))
                .into());
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

//! Calls to a runner's author-only XRPC methods (authors' logs, jobs): each with a fresh
//! service-auth token from the author's PDS (`com.atproto.server.getServiceAuth`, `aud` = the
//! runner's `serviceDid` from describeRunner, `lxm` = the method); tokens are single-use. A
//! runner that is `at-rund dev` (describeRunner names its `localBundle`) gets no token: it takes
//! none for its folder's bundle, and no PDS login is needed.
//!
//! Owns: the token per call and turning the runner's XRPC errors into [`Failure`]s. Must not
//! touch: what the methods mean (`logs`, `jobs`); the token is never printed.

use std::time::Duration;

use anyhow::Context;
use atrund_api::DescribeRunner;

use crate::auth::{self, AuthArgs};
use crate::error::Failure;
use crate::secrets::check_runner_url;

/// A runner that takes service-auth tokens.
pub struct Caller {
    pub runner: String,
    pub desc: DescribeRunner,
    service_did: String,
    http: reqwest::Client,
}

impl Caller {
    /// The runner `runner` names: a URL, or an operator's handle or DID (`runners::named`).
    pub async fn new(runner: &str, net: &crate::runners::NetArgs) -> anyhow::Result<Self> {
        let named = crate::runners::named(runner, net).await?;
        let runner = check_runner_url(&named.url)?;
        let desc = named.describe().await?;
        let service_did = desc.service_did.clone().ok_or_else(|| {
            Failure::RunnerRefused(format!(
                "the runner at {runner} announces no serviceDid: it is older than authors' logs and jobs"
            ))
        })?;
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(15))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .context("could not set up the HTTP client")?;
        Ok(Caller {
            runner,
            desc,
            service_did,
            http,
        })
    }

    /// GET `method` with `query`.
    pub async fn get(
        &self,
        a: &AuthArgs,
        method: &str,
        query: &[(&str, String)],
        timeout: Option<Duration>,
    ) -> anyhow::Result<reqwest::Response> {
        let url = format!("{}/xrpc/{method}", self.runner);
        let mut req = self.http.get(&url).query(query);
        if let Some(t) = timeout {
            req = req.timeout(t);
        }
        self.send(a, method, req).await
    }

    /// POST `body` (JSON) to `method`.
    pub async fn post(
        &self,
        a: &AuthArgs,
        method: &str,
        body: &serde_json::Value,
    ) -> anyhow::Result<reqwest::Response> {
        let url = format!("{}/xrpc/{method}", self.runner);
        let req = self
            .http
            .post(&url)
            .json(body)
            .timeout(Duration::from_secs(60));
        self.send(a, method, req).await
    }

    /// Sends `req` with a fresh token; the runner's XRPC error becomes a [`Failure`].
    async fn send(
        &self,
        a: &AuthArgs,
        method: &str,
        req: reqwest::RequestBuilder,
    ) -> anyhow::Result<reqwest::Response> {
        // `at-rund dev` takes no token for its folder's bundle (its author is `local`).
        let req = if self.desc.local_bundle.is_some() {
            req
        } else {
            let (client, session) = auth::session(a).await?;
            let token = client
                .get_service_auth(&session, &self.service_did, method)
                .await
                .context("your PDS did not mint a service-auth token for the runner")?;
            req.bearer_auth(token)
        };
        let resp = req.send().await.map_err(|e| {
            Failure::RunnerUnreachable(format!(
                "could not reach the runner at {} ({e}); check --runner",
                self.runner
            ))
        })?;
        let status = resp.status().as_u16();
        if (200..300).contains(&status) {
            return Ok(resp);
        }
        let body: serde_json::Value = resp.json().await.unwrap_or_default();
        let name = body.get("error").and_then(|v| v.as_str()).unwrap_or("");
        let message = body.get("message").and_then(|v| v.as_str()).unwrap_or("");
        let text = format!("the runner refused {method}: HTTP {status} {name}: {message}");
        Err(match status {
            401 | 403 => Failure::RunnerAuthRefused(text),
            _ => Failure::RunnerRefused(text),
        }
        .into())
    }
}

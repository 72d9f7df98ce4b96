//! `at-rund announce`: the runner's `dev.atrund.runner` record (key `self`) in its operator's
//! repository, written from what the runner itself answers on describeRunner at the announced
//! URL, so the record and describeRunner agree by construction and the URL is known to reach it
//! (docs/network.md).
//!
//! Owns: the announced URL's rules and the write with its read-back check. Must not touch: the
//! record's shape (`atrund_api::RunnerRecord`), the operator's credentials beyond handing them to
//! the session code. That session code is `at-run`'s (`at_run::auth`): the operator signs in
//! exactly as an author does (a stored `at-run login` session, or `--identifier`, `--pds` and an
//! app password), so the two tools share one implementation of it.

use anyhow::{bail, Context, Result};
use atrund_api::{DescribeRunner, RunnerRecord, DESCRIBE_RUNNER, RUNNER_COLLECTION, RUNNER_RKEY};

/// `--url`, checked: https, or plain http to a loopback host (a runner tried out on this
/// machine); just an origin and an optional path, no query or fragment.
pub fn check_url(url: &str) -> Result<String> {
    let parsed = reqwest::Url::parse(url).with_context(|| {
        format!("--url '{url}' is not a URL; use e.g. https://runner.example.com")
    })?;
    match parsed.scheme() {
        "https" => {}
        "http" if atrund_netpolicy::is_loopback_host(&parsed) => {}
        "http" => bail!(
            "--url '{url}' uses plain http; authors send secrets sealed to this runner and callers their requests, so announce its https:// URL (http is only accepted for localhost)"
        ),
        other => bail!("--url '{url}' has scheme '{other}'; use https://"),
    }
    if parsed.query().is_some() || parsed.fragment().is_some() || !parsed.username().is_empty() {
        bail!("--url '{url}' must be the runner's base URL, e.g. https://runner.example.com");
    }
    Ok(url.trim_end_matches('/').to_string())
}

/// What the runner at `base` says about itself.
async fn describe(base: &str) -> Result<DescribeRunner> {
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(30))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .context("could not set up the HTTP client")?;
    let url = format!("{base}/xrpc/{DESCRIBE_RUNNER}");
    let resp = client.get(&url).send().await.with_context(|| {
        format!("could not reach the runner at {base}; start it first, and check that --url is how others reach it")
    })?;
    if !resp.status().is_success() {
        bail!(
            "{url} answered HTTP {}; check that --url is an at-rund runner's base URL",
            resp.status().as_u16()
        );
    }
    resp.json().await.with_context(|| {
        format!("{url} did not answer a describeRunner document; is it an at-rund runner?")
    })
}

/// The record for the runner at `url`; refuses a dev runner (it serves a folder, not authors).
pub async fn record(url: &str) -> Result<RunnerRecord> {
    let base = check_url(url)?;
    let d = describe(&base).await?;
    if let Some(name) = &d.local_bundle {
        bail!(
            "the runner at {base} is `at-rund dev` serving the folder bundle '{name}'; announce a runner started with `at-rund serve`"
        );
    }
    Ok(RunnerRecord::from_describe(
        &base,
        &d,
        atrund_logs::rfc3339_now(),
    ))
}

/// What `publish` did.
pub enum Announced {
    /// Written (and read back) at this `at://` URI.
    Written(String),
    /// The stored record already says the same and was written today: not written again.
    Unchanged { uri: String, since: String },
}

/// Whether the stored record `old` may stay instead of `new`: the same in everything but
/// `updatedAt`, and written on the same UTC day (so a record is refreshed at most once a day
/// when nothing changes, however often `announce` runs).
fn still_current(old: &RunnerRecord, new: &RunnerRecord) -> bool {
    let same_day =
        old.updated_at.get(..10).is_some() && old.updated_at.get(..10) == new.updated_at.get(..10);
    let mut old = old.clone();
    old.updated_at.clone_from(&new.updated_at);
    same_day && old == *new
}

/// Writes `rec` to the signed-in operator's repository and reads it back, unless the stored
/// record is still current (`force` writes anyway).
pub async fn publish(
    rec: &RunnerRecord,
    auth: &at_run::auth::AuthArgs,
    force: bool,
) -> Result<Announced> {
    let (client, session) = at_run::auth::session(auth).await?;
    let uri = format!("at://{}/{RUNNER_COLLECTION}/{RUNNER_RKEY}", session.did);
    if !force {
        let stored = client
            .get_record(&session.did, RUNNER_COLLECTION, RUNNER_RKEY)
            .await
            .context("could not read the current runner record")?
            .and_then(|v| serde_json::from_value::<RunnerRecord>(v.get("value")?.clone()).ok());
        if let Some(old) = stored.filter(|old| still_current(old, rec)) {
            return Ok(Announced::Unchanged {
                uri,
                since: old.updated_at,
            });
        }
    }
    let value = serde_json::to_value(rec).context("could not encode the runner record")?;
    let written = client
        .put_record(&session, RUNNER_COLLECTION, RUNNER_RKEY, &value, false)
        .await
        .with_context(|| {
            format!(
                "could not write {RUNNER_COLLECTION}/{RUNNER_RKEY} to the repository of {}",
                session.handle
            )
        })?;
    let back = client
        .get_record(&session.did, RUNNER_COLLECTION, RUNNER_RKEY)
        .await
        .context("wrote the runner record but could not read it back")?
        .context("wrote the runner record but the PDS has none at dev.atrund.runner/self")?;
    let stored: RunnerRecord =
        serde_json::from_value(back.get("value").cloned().unwrap_or_default())
            .context("the PDS holds a runner record that does not read as one")?;
    if &stored != rec {
        bail!("the PDS holds a different runner record than the one written (another `at-rund announce` at the same time?); run it again");
    }
    Ok(Announced::Written(written.uri))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unchanged_record_is_rewritten_at_most_once_a_day() {
        let rec = |at: &str, status: &str| RunnerRecord {
            kind: RUNNER_COLLECTION.into(),
            endpoint: "https://r.test".into(),
            public_key: "z6LS".into(),
            service_did: None,
            isolation: "container".into(),
            enforcement: Vec::new(),
            runtimes: Vec::new(),
            permissions: atrund_api::RunnerPermissions::from(
                &atrund_config::PermissionCaps::default(),
            ),
            limits: atrund_api::RunnerLimits::from(&atrund_config::LimitsSection::default()),
            policy: "open".into(),
            software: atrund_api::Software {
                name: "at-rund".into(),
                version: "0.1.0".into(),
            },
            status: status.into(),
            updated_at: at.into(),
        };
        let old = rec("2026-12-05T01:00:00.000Z", "ok");
        assert!(still_current(&old, &rec("2026-12-05T23:59:00.000Z", "ok")));
        assert!(
            !still_current(&old, &rec("2026-12-06T00:00:01.000Z", "ok")),
            "a new day"
        );
        assert!(
            !still_current(&old, &rec("2026-12-05T02:00:00.000Z", "draining")),
            "a change"
        );
        assert!(
            !still_current(&rec("", "ok"), &rec("", "ok")),
            "no date: write"
        );
    }
}

//! `at-run ls` and `at-run rollback`: what versions the author has published, which one
//! `latest` points at, and moving that pointer back to an existing version.
//!
//! Owns: reading `dev.atrund.bundle` / `dev.atrund.release` records and re-pointing a release.
//! Must not touch: bundle records (published versions are immutable).

use anyhow::Context;
use atrund_bundle::record::{
    bundle_rkey, parse_version, validate_name, BUNDLE_COLLECTION, RELEASE_COLLECTION,
};
use serde::Serialize;
use serde_json::Value;

use crate::auth::{self, AuthArgs};
use crate::deploy::{point_release, RecordRef};
use crate::error::Failure;

/// One published version.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VersionInfo {
    pub version: String,
    pub uri: String,
    pub cid: String,
    pub created_at: Option<String>,
    pub size: Option<u64>,
}

/// One bundle name and its versions (oldest first).
#[derive(Debug, Clone, Serialize)]
pub struct BundleInfo {
    pub name: String,
    /// The version `latest` resolves to, if a release pointer exists.
    pub latest: Option<String>,
    pub versions: Vec<VersionInfo>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Listing {
    pub repo: String,
    pub bundles: Vec<BundleInfo>,
}

impl Listing {
    pub fn render(&self) -> String {
        if self.bundles.is_empty() {
            return format!(
                "no bundles published by {} yet; run `at-run deploy`\n",
                self.repo
            );
        }
        let mut s = String::new();
        for b in &self.bundles {
            s.push_str(&format!(
                "{}  (latest: {})\n",
                b.name,
                b.latest.as_deref().unwrap_or("none")
            ));
            for v in &b.versions {
                let mark = if b.latest.as_deref() == Some(v.version.as_str()) {
                    "*"
                } else {
                    " "
                };
                s.push_str(&format!(
                    "  {mark} {:<16} {:>9}  {}  {}\n",
                    v.version,
                    v.size.map(|n| format!("{n} B")).unwrap_or_default(),
                    v.created_at.as_deref().unwrap_or(""),
                    v.cid
                ));
            }
        }
        s
    }
}

/// `at-run ls [NAME]`.
pub async fn list(a: &AuthArgs, only: Option<&str>) -> anyhow::Result<Listing> {
    let (client, repo) = auth::reader(a)?;
    let bundles = client
        .list_records(&repo, BUNDLE_COLLECTION, 50)
        .await
        .context("could not list your bundle records")?;
    let releases = client
        .list_records(&repo, RELEASE_COLLECTION, 50)
        .await
        .context("could not list your release records")?;
    let mut out: Vec<BundleInfo> = Vec::new();
    for r in &bundles {
        let (Some(uri), Some(cid), Some(v)) = (
            r.get("uri").and_then(Value::as_str),
            r.get("cid").and_then(Value::as_str),
            r.get("value"),
        ) else {
            continue;
        };
        let (Some(name), Some(version)) = (
            v.get("name").and_then(Value::as_str),
            v.get("version").and_then(Value::as_str),
        ) else {
            continue;
        };
        if only.is_some_and(|o| o != name) {
            continue;
        }
        let info = VersionInfo {
            version: version.to_string(),
            uri: uri.to_string(),
            cid: cid.to_string(),
            created_at: v.get("createdAt").and_then(Value::as_str).map(String::from),
            size: v
                .get("code")
                .and_then(|c| c.get("size"))
                .and_then(Value::as_u64),
        };
        match out.iter_mut().find(|b| b.name == name) {
            Some(b) => b.versions.push(info),
            None => out.push(BundleInfo {
                name: name.to_string(),
                latest: None,
                versions: vec![info],
            }),
        }
    }
    for b in &mut out {
        b.versions.sort_by(
            |x, y| match (parse_version(&x.version), parse_version(&y.version)) {
                (Ok(a), Ok(b)) => a.cmp(&b),
                _ => x.version.cmp(&y.version),
            },
        );
        let target = releases.iter().find_map(|r| {
            let v = r.get("value")?;
            (v.get("name")?.as_str()? == b.name)
                .then(|| v.get("bundle")?.get("cid")?.as_str().map(String::from))
                .flatten()
        });
        b.latest = target.and_then(|cid| {
            b.versions
                .iter()
                .find(|v| v.cid == cid)
                .map(|v| v.version.clone())
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Listing { repo, bundles: out })
}

/// What `rollback` did.
#[derive(Debug, Clone, Serialize)]
pub struct RolledBack {
    pub name: String,
    pub version: String,
    /// The version `latest` pointed at before, if any.
    pub previous: Option<String>,
    pub bundle: RecordRef,
    pub release: RecordRef,
}

impl RolledBack {
    pub fn render(&self) -> String {
        format!(
            "latest of {} now points at {} (was {})\n  bundle:  {}\n  release: {} (cid {})\n",
            self.name,
            self.version,
            self.previous.as_deref().unwrap_or("none"),
            self.bundle.uri,
            self.release.uri,
            self.release.cid
        )
    }
}

/// `at-run rollback NAME VERSION`: proves the version exists, then re-points the release.
pub async fn rollback(a: &AuthArgs, name: &str, version: &str) -> anyhow::Result<RolledBack> {
    validate_name(name).context("NAME")?;
    parse_version(version).context("VERSION")?;
    let (client, session) = auth::session(a).await?;
    let rkey = bundle_rkey(name, version);
    let Some(rec) = client
        .get_record(&session.did, BUNDLE_COLLECTION, &rkey)
        .await
        .context("could not read the bundle record")?
    else {
        let listing = list(
            &AuthArgs {
                pds: a.pds.clone(),
                identifier: Some(session.did.clone()),
                password: None,
            },
            Some(name),
        )
        .await
        .ok();
        let known = listing
            .and_then(|l| l.bundles.into_iter().next())
            .map(|b| {
                b.versions
                    .into_iter()
                    .map(|v| v.version)
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "none".into());
        return Err(Failure::VersionNotFound(format!(
            "{name} {version} is not published by {}; published versions: {known} (see `at-run ls`)",
            session.handle
        ))
        .into());
    };
    let (Some(uri), Some(cid)) = (
        rec.get("uri").and_then(Value::as_str),
        rec.get("cid").and_then(Value::as_str),
    ) else {
        anyhow::bail!(
            "getRecord returned no uri/cid for {rkey}; check that the PDS is an ATProto PDS"
        );
    };
    let value = rec.get("value").cloned().unwrap_or(Value::Null);
    if value.get("name").and_then(Value::as_str) != Some(name)
        || value.get("version").and_then(Value::as_str) != Some(version)
    {
        anyhow::bail!("the record at {uri} does not describe {name} {version}; refusing to point latest at it");
    }
    let previous = match client
        .get_record(&session.did, RELEASE_COLLECTION, name)
        .await
        .context("could not read the current release")?
    {
        Some(r) => {
            let uri = r
                .pointer("/value/bundle/uri")
                .and_then(Value::as_str)
                .unwrap_or("");
            uri.rsplit_once(':').map(|(_, v)| v.to_string())
        }
        None => None,
    };
    let release = point_release(&client, &session, name, uri, cid).await?;
    Ok(RolledBack {
        name: name.to_string(),
        version: version.to_string(),
        previous,
        bundle: RecordRef {
            uri: uri.to_string(),
            cid: cid.to_string(),
        },
        release,
    })
}

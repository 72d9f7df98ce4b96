//! `at-run secrets set|unset|list`: seal values to one runner's public key and keep them in the
//! author's repo as a `dev.atrund.secrets` record at `{bundle}:{runner key fingerprint}`.
//!
//! Owns: fetching the runner's key from its describeRunner, sealing each value in an envelope
//! bound to this author, bundle, name and runner key (docs/secrets.md), merging with the entries
//! already in the record (their values cannot be read back, so other names keep their sealed
//! bytes), and writing or deleting the record. Must not touch: any value beyond sealing it; no
//! value is printed, logged or put in an error, and `list` shows names only.

use anyhow::{bail, Context};
use atrund_bundle::record::validate_name;
use atrund_secrets::{
    seal_bound, secrets_rkey, validate_secret_name, Binding, RunnerPublicKey, SealedEntry,
    SecretValue, SecretsRecord, MAX_ENTRIES, MAX_VALUE_BYTES, RECORD_FORMAT, SECRETS_COLLECTION,
};
use serde::Serialize;

use crate::xrpc::Client;

/// Which bundle, which runner, which account.
#[derive(Debug, Clone, clap::Args)]
pub struct TargetArgs {
    /// The runner these secrets are for: its URL (its /xrpc/dev.atrund.describeRunner gives the
    /// key), or its operator's handle or DID (their verified dev.atrund.runner record gives the
    /// URL and the key, which the runner must also announce).
    #[arg(long, env = "ATRUN_RUNNER", value_name = "URL_OR_OPERATOR")]
    pub runner: String,
    /// Expected runner public key (multibase); the command refuses if the runner announces
    /// another. Use it when you got the key from the operator out of band.
    #[arg(long, value_name = "KEY")]
    pub runner_key: Option<String>,
    /// Bundle name.
    #[arg(long)]
    pub name: String,
    /// The author's account (`list` needs no password: names are public).
    #[command(flatten)]
    pub auth: crate::auth::AuthArgs,
    /// Where an operator named by --runner is resolved.
    #[command(flatten)]
    pub net: crate::runners::NetArgs,
}

/// `NAME=VALUE`, or `NAME` to take the value from the environment variable of that name (keeps
/// it out of shell history and `ps`). `Debug` never shows the value.
#[derive(Clone)]
pub struct SecretArg {
    pub name: String,
    pub value: SecretValue,
}

impl std::fmt::Debug for SecretArg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}=<redacted>", self.name)
    }
}

impl std::str::FromStr for SecretArg {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (name, value) = match s.split_once('=') {
            Some((n, v)) => (n.to_string(), v.to_string()),
            None => {
                let v = std::env::var(s).map_err(|_| {
                    format!("'{s}' has no '=VALUE' and no environment variable {s} is set")
                })?;
                (s.to_string(), v)
            }
        };
        validate_secret_name(&name).map_err(|e| e.to_string())?;
        if value.len() > MAX_VALUE_BYTES {
            return Err(format!(
                "the value of {name} is {} bytes; at most {MAX_VALUE_BYTES} are allowed",
                value.len()
            ));
        }
        if value.contains('\0') {
            return Err(format!(
                "the value of {name} contains a NUL byte, which an environment cannot hold"
            ));
        }
        Ok(SecretArg {
            name,
            value: SecretValue::new(value),
        })
    }
}

#[derive(Debug, clap::Subcommand)]
pub enum SecretsCommand {
    /// Seal NAME=VALUE pairs for one runner and store them (other names already set are kept).
    Set {
        #[command(flatten)]
        target: TargetArgs,
        /// NAME=VALUE, or NAME to read the value from the environment variable NAME. Parsed by
        /// [`SecretArg`], not clap, whose errors would echo the value.
        #[arg(required = true, value_name = "NAME[=VALUE]")]
        pairs: Vec<String>,
    },
    /// Remove secrets by name (the record is deleted when none are left).
    Unset {
        #[command(flatten)]
        target: TargetArgs,
        #[arg(required = true, value_name = "NAME")]
        names: Vec<String>,
    },
    /// Show the names of the secrets set for a runner (values cannot be read back).
    List {
        #[command(flatten)]
        target: TargetArgs,
    },
}

/// What a command did; names only.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Outcome {
    /// The record's URI (it may no longer exist after `unset`).
    pub uri: String,
    /// CID of the written record; `None` when nothing is stored.
    pub cid: Option<String>,
    pub runner_key: String,
    /// Names now stored, in record order.
    pub names: Vec<String>,
    /// Names this command changed (set or removed).
    pub changed: Vec<String>,
    /// Names of the stored record that `set` could not keep (sealed in the old unbound format,
    /// for another key or bundle): their values cannot be read back, so set them again.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub dropped: Vec<String>,
}

impl Outcome {
    pub fn render(&self, verb: &str) -> String {
        let mut s = format!(
            "{verb} {} for runner key {}\n  record: {}\n",
            if self.changed.is_empty() {
                "nothing".to_string()
            } else {
                self.changed.join(", ")
            },
            self.runner_key,
            self.uri
        );
        if self.names.is_empty() {
            s.push_str("  names:  (none)\n");
        } else {
            s.push_str(&format!("  names:  {}\n", self.names.join(", ")));
        }
        if !self.dropped.is_empty() {
            s.push_str(&format!(
                "  dropped: {} (sealed in an old format or for another key; set them again)\n",
                self.dropped.join(", ")
            ));
        }
        s
    }
}

/// Checks the runner URL: https, or http on loopback only (a key fetched over plain http from
/// elsewhere could be swapped by anyone on the path, and the values sealed to theirs).
pub fn check_runner_url(runner: &str) -> anyhow::Result<String> {
    let url = reqwest::Url::parse(runner).with_context(|| {
        format!("--runner '{runner}' is not a URL; use e.g. https://runner.example.com")
    })?;
    let loopback = atrund_netpolicy::is_loopback_host(&url);
    match url.scheme() {
        "https" => {}
        "http" if loopback => {}
        "http" => bail!(
            "--runner '{runner}' uses plain http, so its key could be replaced in transit; use https:// (or pass --runner-key from the operator)"
        ),
        other => bail!("--runner '{runner}' has scheme '{other}'; use https://"),
    }
    Ok(url.as_str().trim_end_matches('/').to_string())
}

/// The runner's public key from its describeRunner (checked against `--runner-key` if given).
pub async fn runner_key(t: &TargetArgs) -> anyhow::Result<RunnerPublicKey> {
    let mut expected = t
        .runner_key
        .as_deref()
        .map(RunnerPublicKey::from_multibase)
        .transpose()
        .context("--runner-key")?;
    let named = crate::runners::named(&t.runner, &t.net).await?;
    if let Some(rec) = &named.record {
        // Named by its operator: the key their signed record announces is pinned, as
        // --runner-key would pin it.
        let signed = RunnerPublicKey::from_multibase(&rec.public_key)
            .with_context(|| format!("the publicKey in {}'s runner record", t.runner))?;
        if let Some(want) = &expected {
            if *want != signed {
                bail!(
                    "{}'s runner record announces key {signed}, not the --runner-key {want}; ask the operator which is right",
                    t.runner
                );
            }
        }
        expected = Some(signed);
    }
    let base = match check_runner_url(&named.url) {
        Ok(b) => b,
        // A pinned key makes the transport irrelevant: it is what we seal to.
        Err(_) if expected.is_some() && named.url.starts_with("http://") => named.url.clone(),
        Err(e) => return Err(e),
    };
    let desc = named.describe().await?;
    let announced = desc.public_key.as_str();
    let key = RunnerPublicKey::from_multibase(announced)
        .with_context(|| format!("the publicKey announced by the runner at {base}"))?;
    if let Some(want) = expected {
        if want != key {
            bail!(
                "the runner at {base} announces key {key}, not the --runner-key {want}; do not send it secrets until the operator confirms its key"
            );
        }
    }
    Ok(key)
}

/// The record now stored for this bundle and runner key, if any.
async fn current(client: &Client, repo: &str, rkey: &str) -> anyhow::Result<Option<SecretsRecord>> {
    let Some(v) = client
        .get_record(repo, SECRETS_COLLECTION, rkey)
        .await
        .context("could not read the current secrets record")?
    else {
        return Ok(None);
    };
    let value = v.get("value").context("getRecord returned no value")?;
    let rec = SecretsRecord::from_json(value).map_err(|e| {
        anyhow::anyhow!(
            "the stored secrets record at {rkey} is not valid ({e}); unset every name to delete it"
        )
    })?;
    Ok(Some(rec))
}

fn names(r: &SecretsRecord) -> Vec<String> {
    r.entries.iter().map(|e| e.name.clone()).collect()
}

/// Parses `NAME[=VALUE]` arguments; errors name the argument's name part only.
pub fn parse_pairs(args: &[String]) -> anyhow::Result<Vec<SecretArg>> {
    args.iter()
        .map(|a| a.parse::<SecretArg>().map_err(anyhow::Error::msg))
        .collect()
}

/// `set`: seals each value for the runner's key and writes the merged record.
pub async fn set(t: &TargetArgs, pairs: &[SecretArg]) -> anyhow::Result<Outcome> {
    validate_name(&t.name).context("--name")?;
    let (client, session) = crate::auth::session(&t.auth).await?;
    let key = runner_key(t).await?;
    let rkey = secrets_rkey(&t.name, &key);
    let (mut entries, mut dropped): (Vec<SealedEntry>, Vec<String>) =
        match current(&client, &session.did, &rkey).await? {
            Some(r)
                if r.format == Some(RECORD_FORMAT)
                    && r.runner_key == key.to_multibase()
                    && r.name == t.name =>
            {
                (r.entries, Vec::new())
            }
            // Old unbound format, or sealed for another key (written by hand?): those values
            // cannot be re-sealed, only reported.
            Some(r) => (Vec::new(), names(&r)),
            None => (Vec::new(), Vec::new()),
        };
    let mut changed = Vec::new();
    for p in pairs {
        // Bound to this author, bundle, name and runner key: a copy elsewhere opens nothing.
        let place = Binding {
            did: &session.did,
            bundle: &t.name,
            name: &p.name,
            runner_key: &key,
        };
        let sealed = seal_bound(&place, p.value.expose())?;
        dropped.retain(|d| d != &p.name);
        match entries.iter_mut().find(|e| e.name == p.name) {
            Some(e) => e.sealed = sealed,
            None => entries.push(SealedEntry {
                name: p.name.clone(),
                sealed,
            }),
        }
        if !changed.contains(&p.name) {
            changed.push(p.name.clone());
        }
    }
    if entries.len() > MAX_ENTRIES {
        bail!("a bundle may have at most {MAX_ENTRIES} secrets per runner; unset some first");
    }
    let record = SecretsRecord {
        format: Some(RECORD_FORMAT),
        name: t.name.clone(),
        runner_key: key.to_multibase(),
        entries,
        updated_at: crate::time::now_rfc3339(),
    };
    record.validate(&t.name)?;
    let w = client
        .put_record(
            &session,
            SECRETS_COLLECTION,
            &rkey,
            &record.to_json(),
            false,
        )
        .await
        .context("could not write the secrets record")?;
    Ok(Outcome {
        uri: w.uri,
        cid: Some(w.cid),
        runner_key: key.to_multibase(),
        names: names(&record),
        changed,
        dropped,
    })
}

/// `unset`: removes entries by name; deletes the record when none are left.
pub async fn unset(t: &TargetArgs, remove: &[String]) -> anyhow::Result<Outcome> {
    validate_name(&t.name).context("--name")?;
    let (client, session) = crate::auth::session(&t.auth).await?;
    let key = runner_key(t).await?;
    let rkey = secrets_rkey(&t.name, &key);
    let uri = format!("at://{}/{SECRETS_COLLECTION}/{rkey}", session.did);
    let Some(mut record) = current(&client, &session.did, &rkey).await? else {
        return Ok(Outcome {
            uri,
            cid: None,
            runner_key: key.to_multibase(),
            names: Vec::new(),
            changed: Vec::new(),
            dropped: Vec::new(),
        });
    };
    let before = names(&record);
    record.entries.retain(|e| !remove.contains(&e.name));
    let changed: Vec<String> = before.into_iter().filter(|n| remove.contains(n)).collect();
    if record.entries.is_empty() {
        client
            .delete_record(&session, SECRETS_COLLECTION, &rkey)
            .await
            .context("could not delete the secrets record")?;
        return Ok(Outcome {
            uri,
            cid: None,
            runner_key: key.to_multibase(),
            names: Vec::new(),
            changed,
            dropped: Vec::new(),
        });
    }
    record.updated_at = crate::time::now_rfc3339();
    let w = client
        .put_record(
            &session,
            SECRETS_COLLECTION,
            &rkey,
            &record.to_json(),
            false,
        )
        .await
        .context("could not write the secrets record")?;
    Ok(Outcome {
        uri: w.uri,
        cid: Some(w.cid),
        runner_key: key.to_multibase(),
        names: names(&record),
        changed,
        dropped: Vec::new(),
    })
}

/// `list`: the names stored for this bundle and runner (no login needed: names are public).
pub async fn list(t: &TargetArgs) -> anyhow::Result<Outcome> {
    validate_name(&t.name).context("--name")?;
    let (client, repo) = crate::auth::reader(&t.auth)?;
    let key = runner_key(t).await?;
    let rkey = secrets_rkey(&t.name, &key);
    let record = current(&client, &repo, &rkey).await?;
    Ok(Outcome {
        uri: format!("at://{}/{SECRETS_COLLECTION}/{rkey}", repo),
        cid: None,
        runner_key: key.to_multibase(),
        names: record.as_ref().map(names).unwrap_or_default(),
        changed: Vec::new(),
        dropped: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_args_parse_and_never_show_values() {
        let a: SecretArg = "API_TOKEN=s3cr3t=x".parse().unwrap();
        assert_eq!(a.name, "API_TOKEN");
        assert_eq!(a.value.expose(), "s3cr3t=x");
        assert!(!format!("{a:?}").contains("s3cr3t"));
        for bad in ["DENO_DIR=x", "1A=x", "=x", "A-B=x", "HTTPS_PROXY=x"] {
            let e = bad.parse::<SecretArg>().unwrap_err();
            assert!(!e.contains("=x"), "{e}");
        }
        let big = format!("A={}", "x".repeat(MAX_VALUE_BYTES + 1));
        assert!(big.parse::<SecretArg>().unwrap_err().contains("bytes"));
        assert!("AT_RUN_TEST_SURELY_UNSET_VAR".parse::<SecretArg>().is_err());
    }

    #[test]
    fn runner_urls() {
        assert_eq!(
            check_runner_url("https://r.example.com/").unwrap(),
            "https://r.example.com"
        );
        assert!(check_runner_url("http://127.0.0.1:3000").is_ok());
        for bad in ["http://r.example.com", "ftp://x", "r.example.com"] {
            assert!(check_runner_url(bad).is_err(), "{bad}");
        }
    }
}

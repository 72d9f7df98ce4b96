//! `at-run login` and the stored session every other command uses: one JSON file
//! (`$XDG_CONFIG_HOME/at-run/session.json`, else `~/.config/at-run/session.json`, mode 0600 in a
//! 0700 folder) holding the PDS, DID, handle and the two tokens. An access token that has expired
//! (or will within a minute) is swapped with `com.atproto.server.refreshSession` and saved.
//!
//! Owns: that file, credential selection (an explicit password wins over the stored session),
//! the app password type, and the PDS URL rule (https, or http to a loopback host as
//! `atrund-netpolicy` defines it).
//! Must not touch: the password beyond the createSession body; tokens and passwords are never
//! printed, and `StoredSession`'s `Debug` hides the tokens.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Context};
use base64::Engine;
use serde::{Deserialize, Serialize};

use crate::error::Failure;
use crate::xrpc::{Client, Session, XrpcError};

/// An app password. Its `Debug` never shows the value.
#[derive(Clone)]
pub struct Password(String);

impl std::str::FromStr for Password {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Password(s.to_string()))
    }
}

impl Password {
    /// The password, for the createSession body only.
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

/// Checks the PDS URL; plain http is refused except on loopback, since the password goes to it.
pub fn check_pds_url(pds: &str) -> anyhow::Result<String> {
    let url = reqwest::Url::parse(pds)
        .with_context(|| format!("--pds '{pds}' is not a URL; use e.g. https://pds.example.com"))?;
    let loopback = atrund_netpolicy::is_loopback_host(&url);
    match url.scheme() {
        "https" => {}
        "http" if loopback => {}
        "http" => bail!(
            "--pds '{pds}' uses plain http, which would send your password unencrypted; use https:// (http is only allowed for localhost)"
        ),
        other => bail!("--pds '{pds}' has scheme '{other}'; use https://"),
    }
    if url.query().is_some() || url.fragment().is_some() {
        bail!("--pds '{pds}' must be just the PDS origin, e.g. https://pds.example.com");
    }
    Ok(url.as_str().trim_end_matches('/').to_string())
}

/// Refresh when the access token has less than this left.
const REFRESH_MARGIN_SECS: u64 = 60;

/// Credentials shared by every command that talks to the PDS.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct AuthArgs {
    /// Your PDS, e.g. https://pds.example.com [default: the one you logged in to].
    #[arg(long, env = "ATRUN_PDS", value_name = "URL")]
    pub pds: Option<String>,
    /// Your handle or DID [default: the logged-in account].
    #[arg(long, env = "ATRUN_IDENTIFIER", value_name = "HANDLE_OR_DID")]
    pub identifier: Option<String>,
    /// An app password; without it the session stored by `at-run login` is used.
    #[arg(
        long,
        env = "ATRUN_PASSWORD",
        hide_env_values = true,
        value_name = "APP_PASSWORD"
    )]
    pub password: Option<Password>,
}

/// The session file's content.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct StoredSession {
    pub pds: String,
    pub did: String,
    pub handle: String,
    pub access_jwt: String,
    pub refresh_jwt: String,
}

impl std::fmt::Debug for StoredSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredSession")
            .field("pds", &self.pds)
            .field("did", &self.did)
            .field("handle", &self.handle)
            .finish_non_exhaustive()
    }
}

impl StoredSession {
    fn session(&self) -> Session {
        Session {
            did: self.did.clone(),
            handle: self.handle.clone(),
            access_jwt: self.access_jwt.clone(),
            refresh_jwt: Some(self.refresh_jwt.clone()),
            active: None,
            status: None,
        }
    }
}

/// Where the session lives.
pub fn session_path() -> anyhow::Result<PathBuf> {
    let base = match std::env::var_os("XDG_CONFIG_HOME").filter(|v| !v.is_empty()) {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(std::env::var_os("HOME").filter(|v| !v.is_empty()).context(
            "neither XDG_CONFIG_HOME nor HOME is set; set one so at-run can store its session",
        )?)
        .join(".config"),
    };
    Ok(base.join("at-run").join("session.json"))
}

/// The stored session, if any.
pub fn load() -> anyhow::Result<Option<StoredSession>> {
    let path = session_path()?;
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let s = serde_json::from_str(&text).with_context(|| {
        format!(
            "{} is not a session file; delete it and run `at-run login`",
            path.display()
        )
    })?;
    Ok(Some(s))
}

/// Writes the session with mode 0600 (folder 0700), replacing the file atomically.
pub fn save(s: &StoredSession) -> anyhow::Result<PathBuf> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
    let path = session_path()?;
    let dir = path.parent().context("session path has no folder")?;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create {}", dir.display()))?;
    let tmp = dir.join(".session.json.tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    // The mode given at creation is reduced by the umask, never widened; make it exact.
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    f.write_all(serde_json::to_string_pretty(s)?.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, &path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}

/// Deletes the stored session; `false` when there was none.
pub fn logout() -> anyhow::Result<bool> {
    let path = session_path()?;
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e).with_context(|| format!("cannot delete {}", path.display())),
    }
}

/// What `login` reports (no tokens).
#[derive(Debug, Clone, Serialize)]
pub struct LoginInfo {
    pub pds: String,
    pub did: String,
    pub handle: String,
    pub session_file: PathBuf,
}

/// `at-run login`: createSession and store it.
pub async fn login(a: &AuthArgs) -> anyhow::Result<LoginInfo> {
    let (pds, identifier) = pds_and_identifier(a, "(e.g. https://bsky.social)")?;
    let password = a
        .password
        .as_ref()
        .filter(|p| !p.expose().is_empty())
        .context("no password given: set ATRUN_PASSWORD (or --password) to an app password")?;
    let client = Client::new(&pds).context("could not set up the HTTP client")?;
    let s = client
        .create_session(identifier, password.expose())
        .await
        .with_context(|| format!("could not log in as '{identifier}'"))?;
    let refresh_jwt = s
        .refresh_jwt
        .clone()
        .context("the PDS gave no refresh token; check that --pds is an ATProto PDS")?;
    let stored = StoredSession {
        pds: pds.clone(),
        did: s.did.clone(),
        handle: s.handle.clone(),
        access_jwt: s.access_jwt,
        refresh_jwt,
    };
    let session_file = save(&stored)?;
    Ok(LoginInfo {
        pds,
        did: s.did,
        handle: s.handle,
        session_file,
    })
}

/// `exp` of a JWT (seconds since the epoch), read without verifying: only to decide when to
/// refresh. `None` when it has none or is not a JWT.
pub fn jwt_exp(jwt: &str) -> Option<u64> {
    let payload = jwt.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    v.get("exp")?.as_u64()
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A logged-in client for writes: the stored session when it is for the given `pds` /
/// `identifier` (or none were given), refreshed when needed; otherwise, or when it cannot be
/// refreshed, a fresh login with the given password.
pub async fn session(a: &AuthArgs) -> anyhow::Result<(Client, Session)> {
    let password = a.password.as_ref().filter(|p| !p.expose().is_empty());
    let stored = match stored_matching(a) {
        Ok(s) => Some(s),
        Err(e) if password.is_none() => return Err(e),
        Err(_) => None,
    };
    if let Some(mut stored) = stored {
        let client = Client::new(&stored.pds).context("could not set up the HTTP client")?;
        if jwt_exp(&stored.access_jwt).is_some_and(|exp| exp > now_secs() + REFRESH_MARGIN_SECS) {
            return Ok((client, stored.session()));
        }
        match client.refresh_session(&stored.refresh_jwt).await {
            Ok(fresh) => {
                stored.access_jwt = fresh.access_jwt;
                if let Some(r) = fresh.refresh_jwt {
                    stored.refresh_jwt = r;
                }
                stored.handle = fresh.handle;
                save(&stored)?;
                return Ok((client, stored.session()));
            }
            Err(e @ XrpcError::Unreachable { .. }) => return Err(e.into()),
            Err(_) if password.is_none() => {
                return Err(Failure::SessionExpired(stored.handle.clone()).into())
            }
            Err(_) => {} // a password was given: log in afresh below
        }
    }
    let Some(password) = password else {
        return Err(Failure::NotLoggedIn(String::new()).into());
    };
    let (pds, identifier) = pds_and_identifier(a, "(or log in with `at-run login`)")?;
    let client = Client::new(&pds).context("could not set up the HTTP client")?;
    let s = client
        .create_session(identifier, password.expose())
        .await
        .with_context(|| format!("could not log in as '{identifier}'"))?;
    if s.active == Some(false) {
        anyhow::bail!(
            "account {} is not active on its PDS (status: {}); reactivate it first",
            s.handle,
            s.status.as_deref().unwrap_or("unknown")
        );
    }
    Ok((client, s))
}

/// The PDS (checked) and the account the arguments name, both required; `pds_hint` ends the
/// message when the PDS is missing.
fn pds_and_identifier<'a>(a: &'a AuthArgs, pds_hint: &str) -> anyhow::Result<(String, &'a str)> {
    let pds = a
        .pds
        .as_deref()
        .with_context(|| format!("no PDS given: pass --pds URL or set ATRUN_PDS {pds_hint}"))?;
    let pds = check_pds_url(pds)?;
    let identifier = a
        .identifier
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .context("no account given: pass --identifier HANDLE_OR_DID or set ATRUN_IDENTIFIER")?;
    Ok((pds, identifier))
}

/// The stored session, if it is for the given `pds` / `identifier` (when given).
fn stored_matching(a: &AuthArgs) -> anyhow::Result<StoredSession> {
    let Some(stored) = load()? else {
        return Err(Failure::NotLoggedIn(String::new()).into());
    };
    if let Some(pds) = a.pds.as_deref() {
        if check_pds_url(pds)? != stored.pds {
            return Err(Failure::NotLoggedIn(format!(
                " to {pds} (the stored session is for {})",
                stored.pds
            ))
            .into());
        }
    }
    if let Some(id) = a
        .identifier
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        if id != stored.did && !id.eq_ignore_ascii_case(&stored.handle) {
            return Err(Failure::NotLoggedIn(format!(
                " as {id} (the stored session is {})",
                stored.handle
            ))
            .into());
        }
    }
    Ok(stored)
}

/// For reads (no login needed): the PDS client and the repo (DID or handle) to read, from the
/// arguments or the stored session.
pub fn reader(a: &AuthArgs) -> anyhow::Result<(Client, String)> {
    let explicit = a
        .identifier
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty());
    match (a.pds.as_deref(), explicit) {
        (Some(pds), Some(id)) => {
            let pds = check_pds_url(pds)?;
            Ok((Client::new(&pds).context("HTTP client")?, id.to_string()))
        }
        _ => {
            let s = stored_matching(a)?;
            Ok((Client::new(&s.pds).context("HTTP client")?, s.did))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pds_urls() {
        assert_eq!(
            check_pds_url("https://pds.example.com/").expect("ok"),
            "https://pds.example.com"
        );
        assert!(check_pds_url("http://localhost:2583").is_ok());
        assert!(check_pds_url("http://127.0.0.1:2583").is_ok());
        assert!(check_pds_url("http://[::1]:2583").is_ok());
        for bad in [
            "http://pds.example.com",
            "ftp://x",
            "pds.example.com",
            "",
            "https://a/?q=1",
        ] {
            assert!(check_pds_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn password_debug_is_redacted() {
        let p: Password = "hunter2".parse().expect("infallible");
        assert!(!format!("{p:?}").contains("hunter2"));
    }

    fn jwt(payload: &str) -> String {
        let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!("{}.{}.sig", e.encode("{}"), e.encode(payload))
    }

    #[test]
    fn reads_jwt_expiry() {
        assert_eq!(jwt_exp(&jwt(r#"{"exp":1700000000}"#)), Some(1_700_000_000));
        assert_eq!(jwt_exp(&jwt(r#"{"sub":"x"}"#)), None);
        assert_eq!(jwt_exp("not-a-jwt"), None);
        assert_eq!(jwt_exp("a.%%%.c"), None);
    }

    #[test]
    fn debug_hides_tokens() {
        let s = StoredSession {
            pds: "https://p".into(),
            did: "did:plc:x".into(),
            handle: "a.test".into(),
            access_jwt: "ACCESS-SECRET".into(),
            refresh_jwt: "REFRESH-SECRET".into(),
        };
        let d = format!("{s:?}");
        assert!(!d.contains("SECRET"), "{d}");
    }
}

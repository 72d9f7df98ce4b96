//! A minimal XRPC client for the handful of PDS calls `at-run` makes (session, blob upload,
//! record read/write), with errors that carry the PDS's own error name and message plus what the
//! author should do about it.
//!
//! Owns: HTTP to the author's PDS. Must not touch: files, or the password beyond the one
//! `createSession` body (it never appears in an error or a log).
//!
//! Hand-rolled rather than using an ATProto SDK crate: four JSON calls do not justify a large
//! dependency tree, and the SDKs' errors do not carry the hints we want to show.

use serde::Deserialize;
use serde_json::Value;

/// What went wrong talking to the PDS.
#[derive(Debug, thiserror::Error)]
pub enum XrpcError {
    /// the PDS could not be reached at all
    #[error("could not reach the PDS at {url}: {source}; check --pds / ATRUN_PDS and that the PDS is up")]
    Unreachable {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    /// the PDS answered with an XRPC error
    #[error("{nsid} failed: HTTP {status} {error}{}; {hint}", fmt_message(.message))]
    Pds {
        nsid: &'static str,
        status: u16,
        /// The PDS's error name (`error` field), or `HTTP <status>` when it gave none.
        error: String,
        message: Option<String>,
        hint: &'static str,
    },
    /// the PDS answered 2xx with a body that is not what the lexicon promises
    #[error("{nsid} returned an unexpected response ({detail}); check that --pds points at an ATProto PDS")]
    BadResponse { nsid: &'static str, detail: String },
}

fn fmt_message(m: &Option<String>) -> String {
    match m {
        Some(m) if !m.is_empty() => format!(": {m}"),
        _ => String::new(),
    }
}

impl XrpcError {
    /// Stable PascalCase name of this error.
    pub fn code(&self) -> &'static str {
        match self {
            XrpcError::Unreachable { .. } => "PdsUnreachable",
            XrpcError::Pds { .. } => "PdsError",
            XrpcError::BadResponse { .. } => "BadPdsResponse",
        }
    }

    /// The PDS's error name, when the PDS gave one.
    pub fn pds_error(&self) -> Option<&str> {
        match self {
            XrpcError::Pds { error, .. } => Some(error),
            _ => None,
        }
    }
}

/// What to do about an XRPC error, from the call, status and error name.
fn hint(nsid: &str, status: u16, error: &str) -> &'static str {
    match (status, error) {
        (_, "AuthFactorTokenRequired") => {
            "this account has two-factor sign-in; create an app password in your PDS settings and use it"
        }
        (_, "AccountTakedown") => "this account has been taken down by its PDS",
        (_, "InvalidSwap") => "the record changed on the PDS while publishing; run the command again",
        (_, "PayloadTooLarge") | (413, _) => {
            "the bundle is larger than this PDS accepts; make it smaller (bundle it with minification)"
        }
        (_, "RateLimitExceeded") | (429, _) => "the PDS is rate-limiting you; wait a few minutes and retry",
        (401, _) if nsid == "com.atproto.server.createSession" => {
            "check --identifier (handle or DID) and the app password (ATRUN_IDENTIFIER / ATRUN_PASSWORD)"
        }
        (401, _) | (403, _) => {
            "the session was refused; check the identifier and app password, and that the account is active"
        }
        (404, _) | (501, _) => {
            "this server does not implement the call; check that --pds points at an ATProto PDS"
        }
        (500..=599, _) => {
            "the PDS had a problem; retry later, and contact its operator if it persists"
        }
        _ => "see the PDS's message above",
    }
}

/// A logged-in session.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Session {
    pub did: String,
    pub handle: String,
    pub access_jwt: String,
    /// Given by createSession and refreshSession; stored by `at-run login`.
    #[serde(default)]
    pub refresh_jwt: Option<String>,
    #[serde(default)]
    pub active: Option<bool>,
    #[serde(default)]
    pub status: Option<String>,
}

/// The result of a record write.
#[derive(Debug, Clone, Deserialize)]
pub struct WriteResult {
    pub uri: String,
    pub cid: String,
}

/// A client bound to one PDS.
pub struct Client {
    http: reqwest::Client,
    base: String,
}

#[derive(Deserialize)]
struct ErrorBody {
    error: Option<String>,
    message: Option<String>,
}

impl Client {
    /// `base` is the PDS origin, e.g. `https://pds.example.com` (a trailing `/` is ignored).
    pub fn new(base: &str) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .user_agent(concat!("at-run/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(std::time::Duration::from_secs(15))
            .timeout(std::time::Duration::from_secs(300))
            .build()?;
        Ok(Client {
            http,
            base: base.trim_end_matches('/').to_string(),
        })
    }

    fn url(&self, nsid: &str) -> String {
        format!("{}/xrpc/{nsid}", self.base)
    }

    async fn send(
        &self,
        nsid: &'static str,
        req: reqwest::RequestBuilder,
    ) -> Result<Value, XrpcError> {
        let res = req.send().await.map_err(|source| XrpcError::Unreachable {
            url: self.base.clone(),
            source,
        })?;
        let status = res.status();
        let bytes = res.bytes().await.map_err(|source| XrpcError::Unreachable {
            url: self.base.clone(),
            source,
        })?;
        if !status.is_success() {
            let body: Option<ErrorBody> = serde_json::from_slice(&bytes).ok();
            let (error, message) = match body {
                Some(b) => (b.error, b.message),
                None => (None, None),
            };
            let error = error.unwrap_or_else(|| format!("HTTP {}", status.as_u16()));
            return Err(XrpcError::Pds {
                nsid,
                status: status.as_u16(),
                hint: hint(nsid, status.as_u16(), &error),
                error,
                message: message.map(|m| truncate(&m, 500)),
            });
        }
        serde_json::from_slice(&bytes).map_err(|e| XrpcError::BadResponse {
            nsid,
            detail: format!("not JSON: {e}"),
        })
    }

    fn parse<T: serde::de::DeserializeOwned>(nsid: &'static str, v: Value) -> Result<T, XrpcError> {
        serde_json::from_value(v).map_err(|e| XrpcError::BadResponse {
            nsid,
            detail: e.to_string(),
        })
    }

    /// `com.atproto.server.createSession`.
    pub async fn create_session(
        &self,
        identifier: &str,
        password: &str,
    ) -> Result<Session, XrpcError> {
        const NSID: &str = "com.atproto.server.createSession";
        let body = serde_json::json!({ "identifier": identifier, "password": password });
        let v = self
            .send(NSID, self.http.post(self.url(NSID)).json(&body))
            .await?;
        Self::parse(NSID, v)
    }

    /// `com.atproto.repo.uploadBlob`; returns the blob object exactly as the PDS gave it (to be
    /// put into a record unchanged) and its CID string.
    pub async fn upload_blob(
        &self,
        session: &Session,
        bytes: Vec<u8>,
        mime: &str,
    ) -> Result<(Value, String), XrpcError> {
        const NSID: &str = "com.atproto.repo.uploadBlob";
        let req = self
            .http
            .post(self.url(NSID))
            .bearer_auth(&session.access_jwt)
            .header(reqwest::header::CONTENT_TYPE, mime)
            .body(bytes);
        let v = self.send(NSID, req).await?;
        let blob = v.get("blob").cloned().ok_or(XrpcError::BadResponse {
            nsid: NSID,
            detail: "no 'blob' field".into(),
        })?;
        let cid = blob
            .get("ref")
            .and_then(|r| r.get("$link"))
            .and_then(Value::as_str)
            .ok_or(XrpcError::BadResponse {
                nsid: NSID,
                detail: "the blob has no ref.$link".into(),
            })?
            .to_string();
        Ok((blob, cid))
    }

    /// `com.atproto.repo.getRecord`; `None` when the record does not exist.
    pub async fn get_record(
        &self,
        repo: &str,
        collection: &str,
        rkey: &str,
    ) -> Result<Option<Value>, XrpcError> {
        const NSID: &str = "com.atproto.repo.getRecord";
        // `.query` escapes the DID: a did:web's `%3A` must survive the query string.
        let req = self.http.get(self.url(NSID)).query(&[
            ("repo", repo),
            ("collection", collection),
            ("rkey", rkey),
        ]);
        match self.send(NSID, req).await {
            Ok(v) => Ok(Some(v)),
            Err(e) if e.pds_error() == Some("RecordNotFound") => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `com.atproto.repo.putRecord`. `must_not_exist` sends `swapRecord: null`, which makes the
    /// PDS refuse (`InvalidSwap`) if a record is already at that key.
    pub async fn put_record(
        &self,
        session: &Session,
        collection: &str,
        rkey: &str,
        record: &Value,
        must_not_exist: bool,
    ) -> Result<WriteResult, XrpcError> {
        const NSID: &str = "com.atproto.repo.putRecord";
        let mut body = serde_json::json!({
            "repo": session.did,
            "collection": collection,
            "rkey": rkey,
            "record": record,
        });
        if must_not_exist {
            if let Some(obj) = body.as_object_mut() {
                obj.insert("swapRecord".into(), Value::Null);
            }
        }
        let req = self
            .http
            .post(self.url(NSID))
            .bearer_auth(&session.access_jwt)
            .json(&body);
        let v = self.send(NSID, req).await?;
        Self::parse(NSID, v)
    }
}

impl Client {
    /// `com.atproto.repo.deleteRecord` (succeeds when there is nothing to delete).
    pub async fn delete_record(
        &self,
        session: &Session,
        collection: &str,
        rkey: &str,
    ) -> Result<(), XrpcError> {
        const NSID: &str = "com.atproto.repo.deleteRecord";
        let body = serde_json::json!({
            "repo": session.did,
            "collection": collection,
            "rkey": rkey,
        });
        let req = self
            .http
            .post(self.url(NSID))
            .bearer_auth(&session.access_jwt)
            .json(&body);
        self.send(NSID, req).await.map(|_| ())
    }
}

impl Client {
    /// `com.atproto.server.getServiceAuth`: a short token the PDS signs with the account's key,
    /// for the service `aud` and its method `lxm` only (the PDS's default lifetime, 60 s).
    pub async fn get_service_auth(
        &self,
        session: &Session,
        aud: &str,
        lxm: &str,
    ) -> Result<String, XrpcError> {
        const NSID: &str = "com.atproto.server.getServiceAuth";
        let req = self
            .http
            .get(self.url(NSID))
            .bearer_auth(&session.access_jwt)
            .query(&[("aud", aud), ("lxm", lxm)]);
        let v = self.send(NSID, req).await?;
        v.get("token")
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or(XrpcError::BadResponse {
                nsid: NSID,
                detail: "no 'token' field".into(),
            })
    }

    /// `com.atproto.server.refreshSession`: new tokens for a refresh token.
    pub async fn refresh_session(&self, refresh_jwt: &str) -> Result<Session, XrpcError> {
        const NSID: &str = "com.atproto.server.refreshSession";
        let req = self.http.post(self.url(NSID)).bearer_auth(refresh_jwt);
        let v = self.send(NSID, req).await?;
        Self::parse(NSID, v)
    }

    /// `com.atproto.repo.listRecords`, every page (at most `max_pages` of 100).
    pub async fn list_records(
        &self,
        repo: &str,
        collection: &str,
        max_pages: usize,
    ) -> Result<Vec<Value>, XrpcError> {
        const NSID: &str = "com.atproto.repo.listRecords";
        let mut out = Vec::new();
        let mut cursor: Option<String> = None;
        for _ in 0..max_pages {
            let mut q = vec![
                ("repo", repo.to_string()),
                ("collection", collection.to_string()),
                ("limit", "100".to_string()),
            ];
            if let Some(c) = &cursor {
                q.push(("cursor", c.clone()));
            }
            let v = self
                .send(NSID, self.http.get(self.url(NSID)).query(&q))
                .await?;
            let records =
                v.get("records")
                    .and_then(Value::as_array)
                    .ok_or(XrpcError::BadResponse {
                        nsid: NSID,
                        detail: "no 'records' array".into(),
                    })?;
            out.extend(records.iter().cloned());
            cursor = v.get("cursor").and_then(Value::as_str).map(String::from);
            if cursor.is_none() || records.is_empty() {
                break;
            }
        }
        Ok(out)
    }
}

fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", s.get(..i).unwrap_or(s)),
        None => s.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_pds_error_and_what_to_do() {
        let e = XrpcError::Pds {
            nsid: "com.atproto.server.createSession",
            status: 401,
            error: "AuthenticationRequired".into(),
            message: Some("Invalid identifier or password".into()),
            hint: hint(
                "com.atproto.server.createSession",
                401,
                "AuthenticationRequired",
            ),
        };
        let s = e.to_string();
        assert!(
            s.contains("AuthenticationRequired: Invalid identifier or password"),
            "{s}"
        );
        assert!(s.contains("app password"), "{s}");
        assert_eq!(e.code(), "PdsError");
        assert!(hint("x", 413, "HTTP 413").contains("larger"));
        assert!(hint("x", 400, "InvalidSwap").contains("again"));
        assert!(hint("x", 503, "HTTP 503").contains("retry"));
    }

    #[test]
    fn truncate_is_char_safe() {
        assert_eq!(truncate("héllo", 2), "hé…");
        assert_eq!(truncate("hi", 5), "hi");
        assert_eq!(truncate("", 0), "");
    }
}

//! DNS TXT look-ups for handle resolution (`_atproto.<handle>`): the injectable `TxtResolver`
//! trait, its hickory-resolver implementation, and the parsing of `did=` values. Must not do
//! HTTP or decide what a handle resolves to beyond the TXT answer.

use crate::error::IdentityError;
use crate::syntax::Did;
use async_trait::async_trait;
use hickory_resolver::TokioResolver;
use std::time::Duration;
use tokio::sync::OnceCell;

/// Answers DNS TXT queries. Each returned string is one record, its character-strings joined.
/// A name that does not exist or has no TXT records is `Ok(vec![])`, not an error.
#[async_trait]
pub trait TxtResolver: Send + Sync {
    async fn txt(&self, name: &str) -> Result<Vec<String>, IdentityError>;
}

/// The system resolver (`/etc/resolv.conf`), built on first use so that a machine without a
/// resolver configuration can still construct an `IdentityResolver` (and, e.g., turn DNS off),
/// or one DNS server the operator names (`dns_server`).
pub struct HickoryTxtResolver {
    timeout: Duration,
    server: Option<std::net::SocketAddr>,
    resolver: OnceCell<Result<TokioResolver, String>>,
}

impl HickoryTxtResolver {
    pub fn new(timeout: Duration) -> Self {
        HickoryTxtResolver {
            timeout,
            server: None,
            resolver: OnceCell::new(),
        }
    }

    /// Asks only `server`.
    pub fn with_server(server: std::net::SocketAddr, timeout: Duration) -> Self {
        HickoryTxtResolver {
            timeout,
            server: Some(server),
            resolver: OnceCell::new(),
        }
    }
}

#[async_trait]
impl TxtResolver for HickoryTxtResolver {
    async fn txt(&self, name: &str) -> Result<Vec<String>, IdentityError> {
        let (timeout, server) = (self.timeout, self.server);
        let resolver = self
            .resolver
            .get_or_init(|| async move {
                if let Some(server) = server {
                    return Ok(atrund_netpolicy::dns_server_resolver(server, timeout));
                }
                let mut b = TokioResolver::builder_tokio().map_err(|e| e.to_string())?;
                b.options_mut().timeout = timeout;
                b.options_mut().attempts = 1;
                Ok(b.build())
            })
            .await
            .as_ref()
            .map_err(|e| {
                IdentityError::unreachable("DNS", format!("{name}: no DNS resolver: {e}"))
            })?;
        let fqdn = format!("{}.", name.trim_end_matches('.'));
        match tokio::time::timeout(self.timeout, resolver.txt_lookup(fqdn)).await {
            Err(_) => Err(IdentityError::unreachable(
                "DNS",
                format!("{name}: TXT look-up timed out after {:?}", self.timeout),
            )),
            Ok(Err(e)) if e.is_nx_domain() || e.is_no_records_found() => Ok(vec![]),
            Ok(Err(e)) => Err(IdentityError::unreachable("DNS", format!("{name}: {e}"))),
            Ok(Ok(lookup)) => Ok(lookup
                .iter()
                .map(|txt| {
                    txt.txt_data()
                        .iter()
                        .map(|part| String::from_utf8_lossy(part))
                        .collect::<String>()
                })
                .collect()),
        }
    }
}

/// Picks the DID out of `_atproto` TXT records: values starting `did=`, exactly one distinct
/// one. `Ok(None)` when there is none; an error when there are several or it is not a DID.
pub(crate) fn did_from_txt(handle: &str, records: &[String]) -> Result<Option<Did>, String> {
    let mut found: Vec<&str> = records
        .iter()
        .filter_map(|r| r.strip_prefix("did="))
        .map(str::trim)
        .collect();
    found.sort_unstable();
    found.dedup();
    match found.as_slice() {
        [] => Ok(None),
        [one] => one
            .parse()
            .map(Some)
            .map_err(|e| format!("_atproto.{handle} TXT holds an invalid DID: {e}")),
        _ => Err(format!(
            "_atproto.{handle} has {} different did= TXT values; exactly one is allowed",
            found.len()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn txt_parsing() {
        let d = "did:plc:z72i7hdynmk6r22z27h6tvur";
        assert_eq!(did_from_txt("h", &s(&[])), Ok(None));
        assert_eq!(did_from_txt("h", &s(&["v=spf1 -all"])), Ok(None));
        assert_eq!(
            did_from_txt("h", &s(&["v=spf1", &format!("did={d}")]))
                .unwrap()
                .unwrap()
                .as_str(),
            d
        );
        // Duplicates of the same value are fine.
        assert!(
            did_from_txt("h", &s(&[&format!("did={d}"), &format!("did={d}")]))
                .unwrap()
                .is_some()
        );
        assert!(did_from_txt(
            "h",
            &s(&[&format!("did={d}"), "did=did:plc:aaaaaaaaaaaaaaaaaaaaaaaa"])
        )
        .is_err());
        assert!(did_from_txt("h", &s(&["did=nonsense"])).is_err());
        assert!(did_from_txt("h", &s(&["did="])).is_err());
    }
}

//! Who may run, decided before anything a caller named is resolved (docs/security.md, "Who may
//! run"), shared by the invocation routes and the authors' logs (whose token names its issuer):
//! the deny list, the allow-list and the operator's social graph, in that order. Owns: that one
//! check, and the final one after resolution ([`author_admitted`]). Must not touch: resolution
//! beyond the operator's own listed entries.

use atrund_config::AuthorPolicy;
use atrund_identity::{AtIdentifier, IdentityResolver, ResolvedDid};
use atrund_policy::PolicyError;
use atrund_trust::{GraphTrust, Verdict};

use crate::error::ApiError;

/// What decides who may run: the operator's lists and, when on, their social graph.
pub(crate) struct Gate<'a> {
    pub policy: &'a AuthorPolicy,
    pub deny: &'a [String],
    pub graph: Option<&'a GraphTrust>,
}

/// Before anything the caller named is resolved: a denied DID is refused; an unlisted
/// identifier passes only if an operator-listed entry of the other kind resolves, verified, to
/// it, or the graph may admit it (a DID the operator follows, from the snapshot held; a handle,
/// decided once resolved). Only listed entries are resolved here.
pub(crate) async fn author_precheck(
    gate: &Gate<'_>,
    identity: &IdentityResolver,
    id: &AtIdentifier,
) -> Result<(), ApiError> {
    let (text, listed) = match id {
        AtIdentifier::Did(d) => (d.as_str(), None),
        AtIdentifier::Handle(h) => (h.as_str(), Some(h)),
    };
    if listed.is_none() {
        atrund_policy::check_denied(gate.deny, text, None)?;
    }
    let entries = match atrund_policy::precheck_author(gate.policy, text) {
        Ok(atrund_policy::Precheck::Resolve) => return Ok(()),
        Ok(atrund_policy::Precheck::ViaListed(entries)) => entries,
        Err(e) if gate.graph.is_some() && atrund_policy::graph_may_admit(&e) => Vec::new(),
        Err(e) => return Err(e.into()),
    };
    if let Some(graph) = gate.graph {
        match listed {
            // A handle's DID is known only once resolved: the graph decides then.
            Some(_) => return Ok(()),
            None if graph.follows(text)? => return Ok(()),
            None => {}
        }
    }
    for entry in entries {
        let matches = match listed {
            // The caller named an unlisted DID: is it a listed handle's?
            None => match entry.parse() {
                Ok(h) => identity
                    .resolve_handle(&h)
                    .await
                    .is_ok_and(|did| did.as_str() == text),
                Err(_) => false,
            },
            // The caller named an unlisted handle: is it a listed DID's verified handle?
            Some(h) => match entry.parse() {
                Ok(did) => identity
                    .resolve(&AtIdentifier::Did(did))
                    .await
                    .is_ok_and(|(_, verified)| verified.as_ref() == Some(h)),
                Err(_) => false,
            },
        };
        if matches {
            return Ok(());
        }
    }
    Err(match gate.graph {
        Some(g) => PolicyError::NotInGraph {
            did: text.to_string(),
            handle: None,
            reason: g.reason(Verdict::NotFollowed),
        },
        None => PolicyError::AuthorNotAllowed {
            did: text.to_string(),
            handle: None,
        },
    }
    .into())
}

/// After resolution: the deny list (by DID and verified handle), then the allow-list, then the
/// graph for an author the list does not name.
pub(crate) async fn author_admitted(
    gate: &Gate<'_>,
    author: &ResolvedDid,
    verified_handle: Option<&str>,
) -> Result<(), ApiError> {
    let did = author.did.as_str();
    atrund_policy::check_denied(gate.deny, did, verified_handle)?;
    let refused = match atrund_policy::check_author(gate.policy, did, verified_handle) {
        Ok(()) => return Ok(()),
        Err(e) => e,
    };
    let Some(graph) = gate
        .graph
        .filter(|_| atrund_policy::graph_may_admit(&refused))
    else {
        return Err(refused.into());
    };
    match graph.admits(author).await? {
        Verdict::Admitted => Ok(()),
        v => Err(PolicyError::NotInGraph {
            did: did.to_string(),
            handle: verified_handle.map(str::to_string),
            reason: graph.reason(v),
        }
        .into()),
    }
}

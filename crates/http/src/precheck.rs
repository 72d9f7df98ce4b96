//! The allow-list decision made before anything a caller named is resolved (docs/security.md,
//! "Who may run"), shared by the invocation routes and the authors' logs (whose token names its
//! issuer). Owns: that one check. Must not touch: resolution beyond the operator's own listed
//! entries.

use atrund_config::AuthorPolicy;
use atrund_identity::{AtIdentifier, IdentityResolver};

use crate::error::ApiError;

/// The allow-list, before anything the caller named is resolved (docs/security.md, "Who may
/// run"): an unlisted identifier passes only if an operator-listed entry of the other kind
/// resolves, verified, to it. Only listed entries are resolved here.
pub(crate) async fn author_precheck(
    policy: &AuthorPolicy,
    identity: &IdentityResolver,
    id: &AtIdentifier,
) -> Result<(), ApiError> {
    let (text, listed) = match id {
        AtIdentifier::Did(d) => (d.as_str(), None),
        AtIdentifier::Handle(h) => (h.as_str(), Some(h)),
    };
    let atrund_policy::Precheck::ViaListed(entries) = atrund_policy::precheck_author(policy, text)?
    else {
        return Ok(());
    };
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
    Err(atrund_policy::PolicyError::AuthorNotAllowed {
        did: text.to_string(),
        handle: None,
    }
    .into())
}

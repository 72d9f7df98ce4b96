//! DID document parsing: extracts what ATProto needs (claimed handle, `#atproto` signing key,
//! `#atproto_pds` endpoint) from a document of any method. Must not fetch anything; the URL policy
//! comes from `net`. Walks `serde_json::Value` rather than typed structs so that unrelated
//! entries of unexpected shape (other services, other keys) do not fail the whole document.

use crate::error::IdentityError;
use crate::key::PublicKey;
use crate::net::check_url;
use crate::syntax::{Did, Handle};
use serde_json::Value;
use url::Url;

/// The ATProto view of a DID document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocInfo {
    /// The first `at://` entry of `alsoKnownAs`, if it is a valid handle. Not verified.
    pub handle: Option<Handle>,
    pub pds: Url,
    pub signing_key: PublicKey,
}

/// Parses a DID document and checks it belongs to `did`.
pub fn parse_did_doc(
    did: &Did,
    bytes: &[u8],
    allow_http_loopback: bool,
) -> Result<DocInfo, IdentityError> {
    let bad = |reason: String| IdentityError::invalid_doc(did.as_str(), reason);
    let doc: Value =
        serde_json::from_slice(bytes).map_err(|e| bad(format!("not valid JSON: {e}")))?;
    let obj = doc
        .as_object()
        .ok_or_else(|| bad("not a JSON object".into()))?;
    match obj.get("id").and_then(Value::as_str) {
        Some(id) if id == did.as_str() => {}
        Some(id) => return Err(bad(format!("its id is '{id}', not the DID"))),
        None => return Err(bad("it has no string 'id'".into())),
    }

    let handle = first_handle(obj.get("alsoKnownAs"));

    let vm = find_by_fragment(did, obj.get("verificationMethod"), "atproto")
        .ok_or_else(|| bad("no #atproto verification method".into()))?;
    if vm.get("controller").and_then(Value::as_str) != Some(did.as_str()) {
        return Err(bad("the #atproto key's controller is not the DID".into()));
    }
    let kind = vm
        .get("type")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("the #atproto key has no type".into()))?;
    let multibase = vm
        .get("publicKeyMultibase")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("the #atproto key has no publicKeyMultibase".into()))?;
    let signing_key = PublicKey::from_verification_method(kind, multibase)
        .map_err(|e| bad(format!("the #atproto key is unusable: {e}")))?;

    let svc = find_by_fragment(did, obj.get("service"), "atproto_pds")
        .ok_or_else(|| bad("no #atproto_pds service".into()))?;
    if svc.get("type").and_then(Value::as_str) != Some("AtprotoPersonalDataServer") {
        return Err(bad(
            "the #atproto_pds service is not of type AtprotoPersonalDataServer".into(),
        ));
    }
    let endpoint = svc
        .get("serviceEndpoint")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("the #atproto_pds service has no string serviceEndpoint".into()))?;
    let pds = parse_pds_endpoint(did, endpoint, allow_http_loopback)?;

    Ok(DocInfo {
        handle,
        pds,
        signing_key,
    })
}

/// Parses and checks a PDS endpoint URL (shared with the PLC op path).
pub(crate) fn parse_pds_endpoint(
    did: &Did,
    endpoint: &str,
    allow_http_loopback: bool,
) -> Result<Url, IdentityError> {
    let url = Url::parse(endpoint).map_err(|e| {
        IdentityError::invalid_doc(
            did.as_str(),
            format!("PDS endpoint '{endpoint}' is not a URL: {e}"),
        )
    })?;
    if url.query().is_some() || url.fragment().is_some() {
        return Err(IdentityError::invalid_doc(
            did.as_str(),
            format!("PDS endpoint '{endpoint}' must not have a query or fragment"),
        ));
    }
    check_url(&url, allow_http_loopback)?;
    Ok(url)
}

/// The first `at://` entry, as a handle. Per spec only the first such entry counts: if it is
/// malformed there is no handle (we do not fall back to later ones).
pub(crate) fn first_handle(aka: Option<&Value>) -> Option<Handle> {
    let first = aka?
        .as_array()?
        .iter()
        .filter_map(Value::as_str)
        .find(|s| s.starts_with("at://"))?;
    first.strip_prefix("at://")?.parse().ok()
}

/// The first entry of an array whose `id` is `#frag` or `<did>#frag`.
fn find_by_fragment<'a>(
    did: &Did,
    list: Option<&'a Value>,
    frag: &str,
) -> Option<&'a serde_json::Map<String, Value>> {
    list?
        .as_array()?
        .iter()
        .filter_map(Value::as_object)
        .find(|e| {
            e.get("id").and_then(Value::as_str).is_some_and(|id| {
                id.strip_prefix('#') == Some(frag)
                    || id
                        .strip_prefix(did.as_str())
                        .and_then(|r| r.strip_prefix('#'))
                        == Some(frag)
            })
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const DID: &str = "did:plc:ewvi7nxzyoun6zhxrhs64oiz";

    fn did() -> Did {
        DID.parse().unwrap()
    }

    fn k256() -> PublicKey {
        let sk = k256::ecdsa::SigningKey::from_slice(&[5u8; 32]).unwrap();
        PublicKey::K256(*sk.verifying_key())
    }

    fn p256() -> PublicKey {
        let sk = p256::ecdsa::SigningKey::from_slice(&[6u8; 32]).unwrap();
        PublicKey::P256(*sk.verifying_key())
    }

    fn doc(vm_id: &str, kind: &str, mb: &str, endpoint: &str) -> Value {
        json!({
            "@context": ["https://www.w3.org/ns/did/v1"],
            "id": DID,
            "alsoKnownAs": ["https://not-a-handle", "at://Alice.Test", "at://bob.test"],
            "verificationMethod": [
                {"id": format!("{DID}#other"), "type": "Multikey", "controller": DID, "publicKeyMultibase": "zbad"},
                {"id": vm_id, "type": kind, "controller": DID, "publicKeyMultibase": mb}
            ],
            "service": [
                {"id": "#weird", "type": "X", "serviceEndpoint": {"nested": true}},
                {"id": "#atproto_pds", "type": "AtprotoPersonalDataServer", "serviceEndpoint": endpoint}
            ]
        })
    }

    fn parse(v: &Value, allow: bool) -> Result<DocInfo, IdentityError> {
        parse_did_doc(&did(), v.to_string().as_bytes(), allow)
    }

    #[test]
    fn multikey_k256_absolute_id() {
        let key = k256();
        let v = doc(
            &format!("{DID}#atproto"),
            "Multikey",
            &key.to_multikey(),
            "https://pds.example.com",
        );
        let info = parse(&v, false).unwrap();
        assert_eq!(info.signing_key, key);
        assert_eq!(info.handle.unwrap().as_str(), "alice.test");
        assert_eq!(info.pds.as_str(), "https://pds.example.com/");
    }

    #[test]
    fn multikey_p256_relative_id() {
        let key = p256();
        let v = doc(
            "#atproto",
            "Multikey",
            &key.to_multikey(),
            "https://pds.example.com",
        );
        assert_eq!(parse(&v, false).unwrap().signing_key, key);
    }

    #[test]
    fn legacy_key_types() {
        for (key, kind) in [
            (k256(), "EcdsaSecp256k1VerificationKey2019"),
            (p256(), "EcdsaSecp256r1VerificationKey2019"),
        ] {
            let point = match &key {
                PublicKey::K256(k) => k.to_encoded_point(false).as_bytes().to_vec(),
                PublicKey::P256(k) => k.to_encoded_point(false).as_bytes().to_vec(),
            };
            let mb = format!("z{}", bs58::encode(point).into_string());
            let v = doc("#atproto", kind, &mb, "http://localhost:2583");
            assert_eq!(parse(&v, true).unwrap().signing_key, key);
            // Same doc, http loopback not allowed.
            assert_eq!(parse(&v, false).unwrap_err().code(), "InsecureUrl");
        }
    }

    #[test]
    fn missing_or_wrong_pieces() {
        let key = k256().to_multikey();
        let good = doc("#atproto", "Multikey", &key, "https://pds.example.com");
        type Mutation = Box<dyn Fn(&mut Value)>;
        let cases: Vec<(&str, Mutation)> = vec![
            (
                "wrong id",
                Box::new(|v| v["id"] = json!("did:plc:aaaaaaaaaaaaaaaaaaaaaaaa")),
            ),
            (
                "no id",
                Box::new(|v| {
                    v.as_object_mut().unwrap().remove("id");
                }),
            ),
            (
                "no vms",
                Box::new(|v| {
                    v.as_object_mut().unwrap().remove("verificationMethod");
                }),
            ),
            (
                "vms not array",
                Box::new(|v| v["verificationMethod"] = json!({"id": "#atproto"})),
            ),
            (
                "wrong controller",
                Box::new(|v| v["verificationMethod"][1]["controller"] = json!("did:web:evil.com")),
            ),
            (
                "no type",
                Box::new(|v| {
                    v["verificationMethod"][1]
                        .as_object_mut()
                        .unwrap()
                        .remove("type");
                }),
            ),
            (
                "ed25519",
                Box::new(|v| {
                    v["verificationMethod"][1]["type"] = json!("Ed25519VerificationKey2020")
                }),
            ),
            (
                "bad key",
                Box::new(|v| v["verificationMethod"][1]["publicKeyMultibase"] = json!("zQ3sh")),
            ),
            (
                "other did's key",
                Box::new(|v| {
                    v["verificationMethod"][1]["id"] =
                        json!("did:plc:aaaaaaaaaaaaaaaaaaaaaaaa#atproto")
                }),
            ),
            (
                "no service",
                Box::new(|v| {
                    v.as_object_mut().unwrap().remove("service");
                }),
            ),
            (
                "wrong service type",
                Box::new(|v| v["service"][1]["type"] = json!("Other")),
            ),
            (
                "endpoint not string",
                Box::new(|v| v["service"][1]["serviceEndpoint"] = json!(["https://x"])),
            ),
            (
                "endpoint not url",
                Box::new(|v| v["service"][1]["serviceEndpoint"] = json!("not a url")),
            ),
            (
                "endpoint http",
                Box::new(|v| v["service"][1]["serviceEndpoint"] = json!("http://pds.example.com")),
            ),
            (
                "endpoint query",
                Box::new(|v| {
                    v["service"][1]["serviceEndpoint"] = json!("https://pds.example.com/?x=1")
                }),
            ),
        ];
        assert!(parse(&good, false).is_ok());
        for (name, mutate) in cases {
            let mut v = good.clone();
            mutate(&mut v);
            let err = parse(&v, false).expect_err(name);
            assert!(
                matches!(err.code(), "DidDocumentInvalid" | "InsecureUrl"),
                "{name}: {err}"
            );
        }
    }

    #[test]
    fn handle_is_first_at_uri_only() {
        let key = k256().to_multikey();
        let mut v = doc("#atproto", "Multikey", &key, "https://pds.example.com");
        v["alsoKnownAs"] = json!(["at://not_valid!", "at://bob.test"]);
        assert_eq!(parse(&v, false).unwrap().handle, None);
        v["alsoKnownAs"] = json!([]);
        assert_eq!(parse(&v, false).unwrap().handle, None);
        v["alsoKnownAs"] = json!("at://bob.test");
        assert_eq!(parse(&v, false).unwrap().handle, None);
    }

    #[test]
    fn malformed_json_never_panics() {
        let key = k256().to_multikey();
        let good = doc("#atproto", "Multikey", &key, "https://pds.example.com").to_string();
        let bytes = good.as_bytes();
        // Every truncation, and every single-byte corruption at a stride.
        for i in 0..bytes.len() {
            let _ = parse_did_doc(&did(), &bytes[..i], false);
        }
        for i in (0..bytes.len()).step_by(3) {
            for b in [b'"', b'{', b']', 0xff, b'0'] {
                let mut m = bytes.to_vec();
                m[i] = b;
                let _ = parse_did_doc(&did(), &m, false);
            }
        }
        for junk in [
            "",
            "null",
            "[]",
            "1e999",
            "\"x\"",
            "{\"id\":5}",
            &"[".repeat(5000),
        ] {
            assert!(parse_did_doc(&did(), junk.as_bytes(), false).is_err());
        }
    }
}

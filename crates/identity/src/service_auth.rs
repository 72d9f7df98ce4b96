//! ATProto service-auth tokens: the short JWTs an account's PDS signs with the account's signing
//! key (`com.atproto.server.getServiceAuth`) to prove to another service who is calling.
//!
//! Owns: parsing a token (compact JWS, `ES256K` or `ES256`), checking its claims (`aud`, `lxm`,
//! `exp` in the future and not too far, `iat` not in the future) and its signature against a
//! key. Must not touch: the network or which key is current for the issuer (the caller resolves
//! `iss` and passes the key, and retries with a refreshed one), or replay memory (`jti` is
//! returned for the caller to remember).

use base64::Engine as _;

use crate::key::PublicKey;
use crate::syntax::Did;

/// Tokens are small; anything longer is refused before decoding.
pub const MAX_TOKEN_LEN: usize = 8 * 1024;

/// Seconds a token's `iat` may be ahead of our clock (clock skew between PDS and runner).
pub const IAT_SKEW_SECS: u64 = 60;

/// Why a token was refused. Each variant is a distinct error name for the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServiceAuthError {
    /// not three base64url parts of JSON, a claim of the wrong type, or too long
    #[error("the service-auth token is malformed: {0}; mint a new one with com.atproto.server.getServiceAuth")]
    Malformed(String),
    /// `alg` is not one ATProto signing keys use, or not the issuer key's curve
    #[error(
        "the service-auth token's alg '{0}' is not ES256K or ES256 for the issuer's signing key"
    )]
    Algorithm(String),
    /// `typ` says the token is an access, refresh or DPoP token, not a service-auth token
    #[error("the token is a '{0}' token, not a service-auth token; mint one with com.atproto.server.getServiceAuth")]
    WrongType(String),
    /// the signature does not verify with the issuer's current signing key
    #[error("the service-auth token's signature does not verify with the signing key in {0}'s DID document")]
    BadSignature(String),
    /// `exp` is in the past
    #[error("the service-auth token expired at {exp} (now {now}); mint a new one")]
    Expired { exp: u64, now: u64 },
    /// `exp` is further ahead than this service accepts
    #[error("the service-auth token is valid until {exp}, more than {max_secs} s from now ({now}); ask for a shorter exp")]
    TooLong { exp: u64, now: u64, max_secs: u64 },
    /// `iat` is in the future
    #[error("the service-auth token was issued in the future (iat {iat}, now {now}); check the PDS's clock")]
    IssuedInFuture { iat: u64, now: u64 },
    /// `aud` is not this service
    #[error(
        "the service-auth token is for '{got}', not this runner ({want}); mint one with aud={want}"
    )]
    WrongAudience { got: String, want: String },
    /// `lxm` is missing or another method
    #[error(
        "the service-auth token is bound to method '{got}', not {want}; mint one with lxm={want}"
    )]
    WrongMethod { got: String, want: String },
}

impl ServiceAuthError {
    /// Stable PascalCase name, used as the HTTP error name.
    pub fn code(&self) -> &'static str {
        match self {
            ServiceAuthError::Malformed(_)
            | ServiceAuthError::Algorithm(_)
            | ServiceAuthError::WrongType(_)
            | ServiceAuthError::BadSignature(_)
            | ServiceAuthError::IssuedInFuture { .. } => "AuthInvalid",
            ServiceAuthError::Expired { .. } | ServiceAuthError::TooLong { .. } => "AuthExpired",
            ServiceAuthError::WrongAudience { .. } => "AuthWrongAudience",
            ServiceAuthError::WrongMethod { .. } => "AuthWrongMethod",
        }
    }

    /// Every variant: the caller did not prove who it is (401).
    pub fn class(&self) -> atrund_errors::ErrorClass {
        match self {
            ServiceAuthError::Malformed(_)
            | ServiceAuthError::Algorithm(_)
            | ServiceAuthError::WrongType(_)
            | ServiceAuthError::BadSignature(_)
            | ServiceAuthError::Expired { .. }
            | ServiceAuthError::TooLong { .. }
            | ServiceAuthError::IssuedInFuture { .. }
            | ServiceAuthError::WrongAudience { .. }
            | ServiceAuthError::WrongMethod { .. } => atrund_errors::ErrorClass::Unauthorized,
        }
    }
}

/// What the service expects of a token.
#[derive(Debug, Clone, Copy)]
pub struct Expect<'a> {
    /// This service's DID.
    pub aud: &'a str,
    /// The method being called (NSID).
    pub lxm: &'a str,
    /// Seconds since the Unix epoch.
    pub now: u64,
    /// Longest `exp - now` accepted.
    pub max_secs: u64,
}

/// A parsed, not yet verified token.
#[derive(Debug, Clone)]
pub struct ServiceToken {
    alg: String,
    /// `header.payload` as sent: what the signature covers.
    signed: String,
    sig: Vec<u8>,
    pub iss: Did,
    pub aud: String,
    pub exp: u64,
    pub iat: Option<u64>,
    pub lxm: Option<String>,
    pub jti: Option<String>,
}

#[derive(serde::Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    typ: Option<String>,
}

#[derive(serde::Deserialize)]
struct Payload {
    iss: String,
    aud: String,
    exp: u64,
    #[serde(default)]
    iat: Option<u64>,
    #[serde(default)]
    lxm: Option<String>,
    #[serde(default)]
    jti: Option<String>,
}

fn b64(part: &str, what: &str) -> Result<Vec<u8>, ServiceAuthError> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| ServiceAuthError::Malformed(format!("its {what} is not base64url")))
}

impl ServiceToken {
    /// Splits and decodes a compact JWS; checks nothing but its shape.
    pub fn parse(token: &str) -> Result<Self, ServiceAuthError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(ServiceAuthError::Malformed(format!(
                "it is longer than {MAX_TOKEN_LEN} bytes"
            )));
        }
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(ServiceAuthError::Malformed(
                "it is not three dot-separated parts".into(),
            ));
        };
        let header: Header = serde_json::from_slice(&b64(h, "header")?)
            .map_err(|e| ServiceAuthError::Malformed(format!("its header: {e}")))?;
        if let Some(t) = header.typ.as_deref() {
            // Session tokens of the PDS: never accepted as service auth.
            if matches!(
                t.to_ascii_lowercase().as_str(),
                "at+jwt" | "refresh+jwt" | "dpop+jwt"
            ) {
                return Err(ServiceAuthError::WrongType(t.to_string()));
            }
        }
        let payload: Payload = serde_json::from_slice(&b64(p, "payload")?)
            .map_err(|e| ServiceAuthError::Malformed(format!("its payload: {e}")))?;
        let iss: Did = payload
            .iss
            .parse()
            .map_err(|_| ServiceAuthError::Malformed("its iss is not a DID".into()))?;
        Ok(ServiceToken {
            alg: header.alg,
            signed: format!("{h}.{p}"),
            sig: b64(s, "signature")?,
            iss,
            aud: payload.aud,
            exp: payload.exp,
            iat: payload.iat,
            lxm: payload.lxm,
            jti: payload.jti,
        })
    }

    /// Checks the claims (no key needed): audience, method, expiry and issue time.
    pub fn check_claims(&self, want: &Expect<'_>) -> Result<(), ServiceAuthError> {
        if self.aud != want.aud {
            return Err(ServiceAuthError::WrongAudience {
                got: self.aud.clone(),
                want: want.aud.to_string(),
            });
        }
        if self.lxm.as_deref() != Some(want.lxm) {
            return Err(ServiceAuthError::WrongMethod {
                got: self.lxm.clone().unwrap_or_else(|| "(none)".into()),
                want: want.lxm.to_string(),
            });
        }
        if self.exp <= want.now {
            return Err(ServiceAuthError::Expired {
                exp: self.exp,
                now: want.now,
            });
        }
        if self.exp - want.now > want.max_secs {
            return Err(ServiceAuthError::TooLong {
                exp: self.exp,
                now: want.now,
                max_secs: want.max_secs,
            });
        }
        if let Some(iat) = self.iat {
            if iat > want.now + IAT_SKEW_SECS {
                return Err(ServiceAuthError::IssuedInFuture { iat, now: want.now });
            }
        }
        Ok(())
    }

    /// Checks the signature with `key` (the issuer's signing key); `alg` must match its curve.
    pub fn verify(&self, key: &PublicKey) -> Result<(), ServiceAuthError> {
        match (self.alg.as_str(), key) {
            ("ES256K", PublicKey::K256(_)) | ("ES256", PublicKey::P256(_)) => {}
            _ => return Err(ServiceAuthError::Algorithm(self.alg.clone())),
        }
        key.verify(self.signed.as_bytes(), &self.sig)
            .map_err(|_| ServiceAuthError::BadSignature(self.iss.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k256::ecdsa::signature::Signer as _;

    fn enc(v: &serde_json::Value) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    }

    fn sign(
        sk: &k256::ecdsa::SigningKey,
        header: &serde_json::Value,
        payload: &serde_json::Value,
    ) -> String {
        let signed = format!("{}.{}", enc(header), enc(payload));
        let sig: k256::ecdsa::Signature = sk.sign(signed.as_bytes());
        let sig = sig.normalize_s().unwrap_or(sig);
        format!(
            "{signed}.{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sig.to_bytes())
        )
    }

    const NOW: u64 = 1_800_000_000;

    fn want() -> Expect<'static> {
        Expect {
            aud: "did:web:runner.test",
            lxm: "dev.atrund.getLogs",
            now: NOW,
            max_secs: 3600,
        }
    }

    fn claims() -> serde_json::Value {
        serde_json::json!({"iss": "did:plc:ewvi7nxzyoun6zhxrhs64oiz", "aud": "did:web:runner.test",
            "exp": NOW + 60, "iat": NOW, "lxm": "dev.atrund.getLogs", "jti": "j1"})
    }

    fn key(n: u8) -> (k256::ecdsa::SigningKey, PublicKey) {
        let sk = k256::ecdsa::SigningKey::from_slice(&[n; 32]).unwrap();
        let pk = PublicKey::K256(*sk.verifying_key());
        (sk, pk)
    }

    fn h() -> serde_json::Value {
        serde_json::json!({"typ": "JWT", "alg": "ES256K"})
    }

    #[test]
    fn a_good_token_verifies() {
        let (sk, pk) = key(7);
        let t = ServiceToken::parse(&sign(&sk, &h(), &claims())).unwrap();
        assert_eq!(t.iss.as_str(), "did:plc:ewvi7nxzyoun6zhxrhs64oiz");
        assert_eq!(t.jti.as_deref(), Some("j1"));
        t.check_claims(&want()).unwrap();
        t.verify(&pk).unwrap();
    }

    #[test]
    fn each_bad_claim_has_its_name() {
        let (sk, _) = key(7);
        let bad = |k: &str, v: serde_json::Value| {
            let mut c = claims();
            c[k] = v;
            let t = ServiceToken::parse(&sign(&sk, &h(), &c)).unwrap();
            t.check_claims(&want()).unwrap_err().code()
        };
        assert_eq!(bad("aud", "did:web:other.test".into()), "AuthWrongAudience");
        assert_eq!(bad("lxm", "dev.atrund.tailLogs".into()), "AuthWrongMethod");
        assert_eq!(bad("lxm", serde_json::Value::Null), "AuthWrongMethod");
        assert_eq!(bad("exp", (NOW - 1).into()), "AuthExpired");
        assert_eq!(bad("exp", NOW.into()), "AuthExpired");
        assert_eq!(bad("exp", (NOW + 3601).into()), "AuthExpired");
        assert_eq!(bad("iat", (NOW + 600).into()), "AuthInvalid");
    }

    #[test]
    fn another_key_a_tampered_payload_or_alg_do_not_verify() {
        let (sk, pk) = key(7);
        let (other, _) = key(8);
        let t = ServiceToken::parse(&sign(&other, &h(), &claims())).unwrap();
        assert_eq!(t.verify(&pk).unwrap_err().code(), "AuthInvalid");

        let good = sign(&sk, &h(), &claims());
        let mut parts: Vec<&str> = good.split('.').collect();
        let mut c = claims();
        c["iss"] = "did:plc:aaaaaaaaaaaaaaaaaaaaaaaa".into();
        let tampered = enc(&c);
        parts[1] = &tampered;
        let t = ServiceToken::parse(&parts.join(".")).unwrap();
        assert!(matches!(
            t.verify(&pk),
            Err(ServiceAuthError::BadSignature(_))
        ));

        let p256 = serde_json::json!({"alg": "ES256"});
        let t = ServiceToken::parse(&sign(&sk, &p256, &claims())).unwrap();
        assert!(matches!(t.verify(&pk), Err(ServiceAuthError::Algorithm(_))));
        let none = serde_json::json!({"alg": "none"});
        let t = ServiceToken::parse(&sign(&sk, &none, &claims())).unwrap();
        assert!(matches!(t.verify(&pk), Err(ServiceAuthError::Algorithm(_))));
    }

    #[test]
    fn garbage_and_session_tokens_are_refused() {
        for bad in [
            "",
            "a",
            "a.b",
            "a.b.c.d",
            "!!.!!.!!",
            &"x".repeat(MAX_TOKEN_LEN + 1),
        ] {
            assert_eq!(
                ServiceToken::parse(bad).unwrap_err().code(),
                "AuthInvalid",
                "{bad}"
            );
        }
        let (sk, _) = key(7);
        let at = serde_json::json!({"typ": "at+jwt", "alg": "ES256K"});
        assert!(matches!(
            ServiceToken::parse(&sign(&sk, &at, &claims())),
            Err(ServiceAuthError::WrongType(_))
        ));
        let mut c = claims();
        c["iss"] = "not a did".into();
        assert!(ServiceToken::parse(&sign(&sk, &h(), &c)).is_err());
        c["iss"] = 5.into();
        assert!(ServiceToken::parse(&sign(&sk, &h(), &c)).is_err());
    }
}

//! Signed tokens: EdDSA (Ed25519) JWTs, verified with public keys only.
//!
//! Qdrant signs its JWTs with the server's own API key (HS256), so every server holds the power
//! to mint any token. ragd's servers hold only public keys — a JWKS file (`{"keys": [{"kty":
//! "OKP", "crv": "Ed25519", "kid": "...", "x": "<base64url>"}]}`) — and the signer (`ragd token`
//! with the private key) need never run on them. Claims: `sub` (the principal's name, required),
//! `exp` (required), `nbf` (optional), `grants` (the same grants as the keys file; see
//! [`crate::auth`]). Times get [`LEEWAY`] of clock skew. Only `alg: EdDSA` is accepted (no
//! `none`, no algorithm confusion).

use std::path::Path;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use rustls::pki_types::pem::PemObject;
use serde::{Deserialize, Serialize};

use crate::auth::{AuthError, Grant, Principal};

/// Clock skew tolerated on `exp` and `nbf`, in seconds.
pub const LEEWAY: i64 = 30;

#[derive(Debug, Serialize, Deserialize)]
struct Header {
    alg: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    kid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    typ: Option<String>,
}

/// The claims of a ragd token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub exp: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<i64>,
    #[serde(default)]
    pub grants: Vec<Grant>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Jwk {
    kty: String,
    crv: String,
    #[serde(default)]
    kid: Option<String>,
    x: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct JwkSet {
    keys: Vec<Jwk>,
}

/// The public keys tokens are verified with.
#[derive(Debug, Default)]
pub struct Jwks {
    keys: Vec<(Option<String>, Vec<u8>)>,
}

/// Whether a credential is shaped like a JWT (three base64url parts, a JSON header).
pub fn looks_like_jwt(c: &str) -> bool {
    c.starts_with("eyJ") && c.bytes().filter(|b| *b == b'.').count() == 2
}

impl Jwks {
    pub fn parse(text: &str) -> Result<Self, String> {
        let set: JwkSet = serde_json::from_str(text).map_err(|e| format!("not a JWKS: {e}"))?;
        let mut keys = Vec::new();
        for (i, k) in set.keys.into_iter().enumerate() {
            if k.kty != "OKP" || k.crv != "Ed25519" {
                return Err(format!(
                    "key {}: only OKP Ed25519 keys are accepted, not {} {}",
                    i + 1,
                    k.kty,
                    k.crv
                ));
            }
            let x = B64.decode(k.x.trim_end_matches('=')).map_err(|e| format!("key {}: x: {e}", i + 1))?;
            if x.len() != 32 {
                return Err(format!("key {}: x must be 32 bytes, is {}", i + 1, x.len()));
            }
            keys.push((k.kid, x));
        }
        if keys.is_empty() {
            return Err("the JWKS holds no key".into());
        }
        Ok(Self { keys })
    }

    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("{}: cannot read JWKS: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Verifies `token` at `now` and returns its principal.
    pub fn verify(&self, token: &str, now: i64) -> Result<Arc<Principal>, AuthError> {
        let bad = |s: &str| AuthError::BadToken(s.to_string());
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(s), None) = (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad("not three dot-separated parts"));
        };
        let header: Header =
            serde_json::from_slice(&B64.decode(h).map_err(|_| bad("header is not base64url"))?)
                .map_err(|_| bad("header is not JSON"))?;
        if header.alg != "EdDSA" {
            return Err(AuthError::BadToken(format!(
                "algorithm {:?} is not accepted (EdDSA only)",
                header.alg
            )));
        }
        let signature = B64.decode(s).map_err(|_| bad("signature is not base64url"))?;
        let signed = &token.as_bytes()[..h.len() + 1 + p.len()];
        let verified = self
            .keys
            .iter()
            .filter(|(kid, _)| header.kid.is_none() || kid.is_none() || *kid == header.kid)
            .any(|(_, x)| UnparsedPublicKey::new(&ED25519, x).verify(signed, &signature).is_ok());
        if !verified {
            return Err(bad("signature does not verify with any known key"));
        }
        let claims: Claims =
            serde_json::from_slice(&B64.decode(p).map_err(|_| bad("claims are not base64url"))?)
                .map_err(|e| AuthError::BadToken(format!("claims: {e}")))?;
        if now > claims.exp + LEEWAY {
            return Err(AuthError::Expired);
        }
        if claims.nbf.is_some_and(|nbf| now + LEEWAY < nbf) {
            return Err(bad("not valid yet (nbf)"));
        }
        if claims.sub.is_empty() {
            return Err(bad("sub is empty"));
        }
        Ok(Arc::new(Principal { name: claims.sub, grants: claims.grants }))
    }
}

/// A signing key: an Ed25519 private key (PKCS#8 PEM, as `openssl genpkey -algorithm ed25519` or
/// [`generate_signing_key`] writes it).
pub struct SigningKey {
    pair: Ed25519KeyPair,
    kid: String,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey").field("kid", &self.kid).finish_non_exhaustive()
    }
}

fn kid_of(public: &[u8]) -> String {
    crate::auth::hex(&ring::digest::digest(&ring::digest::SHA256, public).as_ref()[..8])
}

impl SigningKey {
    pub fn from_pem(pem: &[u8]) -> Result<Self, String> {
        let der = rustls::pki_types::PrivatePkcs8KeyDer::from_pem_slice(pem)
            .map_err(|e| format!("not a PKCS#8 PEM private key: {e}"))?;
        let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der.secret_pkcs8_der())
            .map_err(|e| format!("not an Ed25519 private key: {e}"))?;
        let kid = kid_of(pair.public_key().as_ref());
        Ok(Self { pair, kid })
    }

    pub fn load(path: &Path) -> Result<Self, String> {
        let pem =
            std::fs::read(path).map_err(|e| format!("{}: cannot read signing key: {e}", path.display()))?;
        Self::from_pem(&pem).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// The JWKS holding this key's public half.
    pub fn jwks_json(&self) -> String {
        let set = JwkSet {
            keys: vec![Jwk {
                kty: "OKP".into(),
                crv: "Ed25519".into(),
                kid: Some(self.kid.clone()),
                x: B64.encode(self.pair.public_key().as_ref()),
            }],
        };
        serde_json::to_string_pretty(&set).unwrap_or_default()
    }

    /// A signed token carrying `claims`.
    pub fn mint(&self, claims: &Claims) -> String {
        let header = Header { alg: "EdDSA".into(), kid: Some(self.kid.clone()), typ: Some("JWT".into()) };
        let h = B64.encode(serde_json::to_vec(&header).unwrap_or_default());
        let p = B64.encode(serde_json::to_vec(claims).unwrap_or_default());
        let signing_input = format!("{h}.{p}");
        let s = B64.encode(self.pair.sign(signing_input.as_bytes()).as_ref());
        format!("{signing_input}.{s}")
    }
}

/// A new Ed25519 private key, PKCS#8 PEM.
pub fn generate_signing_key() -> Result<String, String> {
    let rng = ring::rand::SystemRandom::new();
    let doc = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|e| format!("cannot generate a key: {e}"))?;
    let b64 = base64::engine::general_purpose::STANDARD.encode(doc.as_ref());
    let mut pem = String::from("-----BEGIN PRIVATE KEY-----\n");
    for line in b64.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(line).unwrap_or_default());
        pem.push('\n');
    }
    pem.push_str("-----END PRIVATE KEY-----\n");
    Ok(pem)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{Role, ServiceGrant};

    fn claims(exp: i64) -> Claims {
        Claims {
            sub: "ci".into(),
            exp,
            nbf: None,
            iat: None,
            grants: vec![
                Grant::Collection { collection: "a".into(), role: Role::Write },
                Grant::Service { service: ServiceGrant::Generate },
            ],
        }
    }

    #[test]
    fn tokens_verify_with_the_public_key_only() {
        let key = SigningKey::from_pem(generate_signing_key().expect("key").as_bytes()).expect("pem");
        let jwks = Jwks::parse(&key.jwks_json()).expect("jwks");
        let now = 1_800_000_000;
        let t = key.mint(&claims(now + 60));
        assert!(looks_like_jwt(&t));
        let p = jwks.verify(&t, now).expect("valid");
        assert_eq!(p.name, "ci");
        assert!(p.has_collection("a", Role::Write) && p.has_service(ServiceGrant::Generate));
        // Expiry with leeway.
        assert!(jwks.verify(&t, now + 60 + LEEWAY).is_ok());
        assert_eq!(jwks.verify(&t, now + 61 + LEEWAY), Err(AuthError::Expired));
        // nbf.
        let early = key.mint(&Claims { nbf: Some(now + 600), ..claims(now + 6000) });
        assert!(matches!(jwks.verify(&early, now), Err(AuthError::BadToken(_))));
        // Another signer's token.
        let other = SigningKey::from_pem(generate_signing_key().expect("key").as_bytes()).expect("pem");
        assert!(matches!(jwks.verify(&other.mint(&claims(now + 60)), now), Err(AuthError::BadToken(_))));
        // Tampered claims.
        let mut parts: Vec<&str> = t.split('.').collect();
        let forged =
            B64.encode(serde_json::to_vec(&Claims { sub: "root".into(), ..claims(now + 60) }).expect("json"));
        parts[1] = &forged;
        assert!(matches!(jwks.verify(&parts.join("."), now), Err(AuthError::BadToken(_))));
        // alg none / HS256 are refused before any key is tried.
        let none = format!(
            "{}.{}.",
            B64.encode(br#"{"alg":"none"}"#),
            B64.encode(br#"{"sub":"x","exp":9999999999}"#)
        );
        assert!(matches!(jwks.verify(&none, now), Err(AuthError::BadToken(m)) if m.contains("none")));
    }

    #[test]
    fn jwks_accepts_only_ed25519() {
        assert!(Jwks::parse(r#"{"keys": []}"#).is_err());
        assert!(Jwks::parse(r#"{"keys": [{"kty": "RSA", "crv": "", "x": "AA"}]}"#).is_err());
        assert!(Jwks::parse(r#"{"keys": [{"kty": "OKP", "crv": "Ed25519", "x": "AAAA"}]}"#).is_err());
    }
}

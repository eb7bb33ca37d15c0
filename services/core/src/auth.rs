//! Access control: who may call which RPC on which collection.
//!
//! - **Credentials** arrive in gRPC metadata as `authorization: Bearer <credential>` or
//!   `api-key: <credential>` (what Qdrant's clients send). A credential is an API key listed in
//!   the keys file (`--auth-keys-file`, by the sha256 of the key, never the key) or an Ed25519
//!   JWT verified with the public keys of a JWKS file (`--auth-jwks-file`; see [`crate::jwt`]).
//!   Both files are re-read when they change.
//! - **Grants** say what a principal may do: `{collection = "<name>" | "<prefix>*" | "*", role =
//!   "read" | "write" | "manage"}` (read: Search, Scroll, DocumentStatus, GetDocument, DescribeCollection; write: +
//!   Upsert, Delete; manage: + CreateCollection, DropCollection, ReindexKeywords, Create-, Restore-
//!   and DeleteSnapshot; ListSnapshots lists what the caller may read), and the service grants
//!   `{service = "embed" | "generate" | "metrics"}`.
//! - **One table** ([`RPCS`]) maps every RPC of every service to what it needs; an RPC missing
//!   from it is refused (a test checks the table against the protos). The
//!   [`crate::security::SecurityLayer`] authenticates each call and checks service grants;
//!   collection grants are checked by the handler, which knows the collection, with
//!   [`require_collection`] on the [`Access`] the layer put in the request's extensions.
//! - Refusals: no or unknown credential → UNAUTHENTICATED; a known principal without the grant
//!   → PERMISSION_DENIED naming the missing grant. Neither says which keys exist.
//! - Keys are compared in constant time (sha256 digests, every entry compared); a key is never
//!   logged, traced, echoed in an error, or shown by `Debug`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use sha2::Digest;
use subtle::ConstantTimeEq;

use crate::watch::Watched;

/// What a collection grant allows; each role includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Read,
    Write,
    Manage,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Read => "read",
            Role::Write => "write",
            Role::Manage => "manage",
        })
    }
}

/// Grants that are not about a collection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ServiceGrant {
    /// The embedder's RPCs.
    Embed,
    /// The generator's RPCs (Ask also needs read on its collection).
    Generate,
    /// The Prometheus listener, where `--metrics-auth` is on.
    Metrics,
}

impl std::fmt::Display for ServiceGrant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ServiceGrant::Embed => "embed",
            ServiceGrant::Generate => "generate",
            ServiceGrant::Metrics => "metrics",
        })
    }
}

/// One grant, as written in a keys file or a token's `grants` claim.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(untagged, deny_unknown_fields)]
pub enum Grant {
    Collection { collection: String, role: Role },
    Service { service: ServiceGrant },
}

impl std::str::FromStr for Grant {
    type Err = String;

    /// The command-line form: `embed`, `generate`, `metrics`, or `<role>:<collection pattern>`
    /// (`read:docs`, `write:team-*`, `manage:*`).
    fn from_str(s: &str) -> Result<Self, String> {
        let g = match s {
            "embed" => Grant::Service { service: ServiceGrant::Embed },
            "generate" => Grant::Service { service: ServiceGrant::Generate },
            "metrics" => Grant::Service { service: ServiceGrant::Metrics },
            _ => {
                let (role, collection) = s.split_once(':').ok_or_else(|| {
                    format!(
                        "grant {s:?}: expected embed, generate, metrics or <read|write|manage>:<collection>"
                    )
                })?;
                let role = match role {
                    "read" => Role::Read,
                    "write" => Role::Write,
                    "manage" => Role::Manage,
                    _ => return Err(format!("grant {s:?}: role must be read, write or manage")),
                };
                Grant::Collection { collection: collection.to_string(), role }
            }
        };
        check_grant(&g)?;
        Ok(g)
    }
}

/// Whether a collection pattern (`name`, `prefix*` or `*`) covers `name`.
pub fn pattern_matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => pattern == name,
    }
}

/// Checks a grant as read from a file: a collection pattern may end in `*` only.
fn check_grant(g: &Grant) -> Result<(), String> {
    if let Grant::Collection { collection, .. } = g {
        if collection.is_empty() {
            return Err("a grant's collection is empty (use \"*\" for every collection)".into());
        }
        if collection.trim_end_matches('*').contains('*') || collection.ends_with("**") {
            return Err(format!("collection pattern {collection:?}: '*' may only end a pattern"));
        }
    }
    Ok(())
}

/// Who is calling, and what they may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The key's name or the token's `sub` (what logs and metrics show; never the credential).
    pub name: String,
    pub grants: Vec<Grant>,
}

impl Principal {
    pub fn has_service(&self, s: ServiceGrant) -> bool {
        self.grants.iter().any(|g| matches!(g, Grant::Service { service } if *service == s))
    }

    pub fn has_collection(&self, name: &str, role: Role) -> bool {
        self.grants.iter().any(
            |g| matches!(g, Grant::Collection { collection, role: r } if *r >= role && pattern_matches(collection, name)),
        )
    }
}

/// What a call may do, as the security layer decided: everything (no access control
/// configured, or an open RPC), or what a principal was granted.
#[derive(Debug, Clone)]
pub enum Access {
    Open,
    Principal(Arc<Principal>),
}

impl Access {
    pub fn may(&self, collection: &str, role: Role) -> bool {
        match self {
            Access::Open => true,
            Access::Principal(p) => p.has_collection(collection, role),
        }
    }

    /// The principal's name ("-" when open).
    pub fn name(&self) -> &str {
        match self {
            Access::Open => "-",
            Access::Principal(p) => &p.name,
        }
    }
}

/// PERMISSION_DENIED naming the missing grant.
pub fn denied(grant: impl std::fmt::Display) -> tonic::Status {
    tonic::Status::permission_denied(format!("missing grant: {grant}"))
}

/// The [`Access`] of a call (put there by the security layer).
pub fn access<T>(request: &tonic::Request<T>) -> Result<Access, tonic::Status> {
    request
        .extensions()
        .get::<Access>()
        .cloned()
        .ok_or_else(|| tonic::Status::permission_denied("no credentials were checked for this call"))
}

/// Checks that the call may act on `collection` with `role`.
pub fn require_collection(access: &Access, collection: &str, role: Role) -> Result<(), tonic::Status> {
    if access.may(collection, role) {
        Ok(())
    } else {
        Err(denied(format!("{role} on collection {collection:?}")))
    }
}

/// What an RPC needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Open to anyone (health, reflection), unless `--auth-health`.
    Open,
    /// A service grant.
    Service(ServiceGrant),
    /// A role on the collection named in the request (checked by the handler).
    Collection(Role),
    /// A service grant and a role on the request's collection (Ask).
    ServiceAndCollection(ServiceGrant, Role),
    /// Any valid credential; the answer lists only what the caller may read (ListCollections).
    Listing,
}

/// Every RPC of every ragd service and what it needs. An RPC not listed is refused.
pub const RPCS: &[(&str, Need)] = &[
    ("/grpc.health.v1.Health/Check", Need::Open),
    ("/grpc.health.v1.Health/Watch", Need::Open),
    ("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo", Need::Open),
    ("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", Need::Open),
    ("/ragd.v1.Embedder/Embed", Need::Service(ServiceGrant::Embed)),
    ("/ragd.v1.Embedder/EmbedStream", Need::Service(ServiceGrant::Embed)),
    ("/ragd.v1.Embedder/CountTokens", Need::Service(ServiceGrant::Embed)),
    ("/ragd.v1.Embedder/Tokenize", Need::Service(ServiceGrant::Embed)),
    ("/ragd.v1.Embedder/ListModels", Need::Service(ServiceGrant::Embed)),
    ("/ragd.v1.Embedder/ModelInfo", Need::Service(ServiceGrant::Embed)),
    ("/ragd.v1.Indexer/CreateCollection", Need::Collection(Role::Manage)),
    ("/ragd.v1.Indexer/DropCollection", Need::Collection(Role::Manage)),
    ("/ragd.v1.Indexer/ReindexKeywords", Need::Collection(Role::Manage)),
    ("/ragd.v1.Indexer/CreateSnapshot", Need::Collection(Role::Manage)),
    ("/ragd.v1.Indexer/DeleteSnapshot", Need::Collection(Role::Manage)),
    // Manage on the target and read on the snapshot's collection (both checked by the handler).
    ("/ragd.v1.Indexer/RestoreSnapshot", Need::Collection(Role::Manage)),
    ("/ragd.v1.Indexer/ListSnapshots", Need::Listing),
    ("/ragd.v1.Indexer/ListCollections", Need::Listing),
    ("/ragd.v1.Indexer/DescribeCollection", Need::Collection(Role::Read)),
    ("/ragd.v1.Indexer/Upsert", Need::Collection(Role::Write)),
    ("/ragd.v1.Indexer/UpsertBatch", Need::Collection(Role::Write)),
    ("/ragd.v1.Indexer/Delete", Need::Collection(Role::Write)),
    ("/ragd.v1.Indexer/DocumentStatus", Need::Collection(Role::Read)),
    ("/ragd.v1.Indexer/GetDocument", Need::Collection(Role::Read)),
    ("/ragd.v1.Indexer/Search", Need::Collection(Role::Read)),
    ("/ragd.v1.Indexer/Scroll", Need::Collection(Role::Read)),
    ("/ragd.v1.Generator/Ask", Need::ServiceAndCollection(ServiceGrant::Generate, Role::Read)),
    ("/ragd.v1.Generator/Generate", Need::Service(ServiceGrant::Generate)),
    ("/ragd.v1.Generator/ListBackends", Need::Service(ServiceGrant::Generate)),
];

/// What `path` (`/package.Service/Method`) needs; `None` when it is not in the table.
pub fn need(path: &str) -> Option<Need> {
    RPCS.iter().find(|(p, _)| *p == path).map(|(_, n)| *n)
}

/// Why a credential was not accepted (UNAUTHENTICATED); the messages name no key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing credential: send `authorization: Bearer <key or token>` or `api-key: <key>`")]
    Missing,
    #[error("invalid credential")]
    Unknown,
    #[error("the credential has expired")]
    Expired,
    #[error("invalid token: {0}")]
    BadToken(String),
}

impl From<AuthError> for tonic::Status {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::Missing | AuthError::Unknown | AuthError::Expired | AuthError::BadToken(_) => {
                tonic::Status::unauthenticated(e.to_string())
            }
        }
    }
}

/// One API key of the keys file.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyEntry {
    name: String,
    /// Hex sha256 of the key.
    #[serde(default)]
    sha256: Option<String>,
    /// Instead of a key: the common name of a client certificate that mutual TLS verified.
    #[serde(default)]
    client_cert_cn: Option<String>,
    /// RFC 3339 time after which the key is refused.
    #[serde(default)]
    expires: Option<String>,
    #[serde(default)]
    grants: Vec<Grant>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeysFile {
    #[serde(default)]
    keys: Vec<KeyEntry>,
}

/// How a principal of the keys file proves itself.
enum Credential {
    /// The sha256 of an API key.
    Digest([u8; 32]),
    /// The common name of a client certificate verified by mutual TLS.
    CertCn(String),
}

/// A loaded principal: its credential, expiry and grants.
struct Key {
    credential: Credential,
    expires: Option<i64>,
    principal: Arc<Principal>,
}

/// The keys of a keys file.
#[derive(Default)]
pub struct KeySet {
    keys: Vec<Key>,
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeySet")
            .field("keys", &self.keys.iter().map(|k| &k.principal.name).collect::<Vec<_>>())
            .finish()
    }
}

/// A new random API key: `ragd_` and 32 random bytes, base64url (256 bits).
pub fn random_key() -> Result<String, String> {
    use base64::Engine;
    let mut bytes = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .map_err(|_| "the system's random generator failed".to_string())?;
    Ok(format!("ragd_{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)))
}

/// The sha256 of a key, hex (what a keys file lists).
pub fn key_digest_hex(key: &str) -> String {
    hex(&sha2::Sha256::digest(key.as_bytes()))
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// Parses an RFC 3339 time into Unix seconds.
pub fn parse_time(s: &str) -> Result<i64, String> {
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|t| t.timestamp())
        .map_err(|e| format!("{s:?} is not an RFC 3339 time: {e}"))
}

impl KeySet {
    /// Parses a keys file: TOML, or JSON when it starts with `{`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let file: KeysFile = if text.trim_start().starts_with('{') {
            serde_json::from_str(text).map_err(|e| e.to_string())?
        } else {
            toml::from_str(text).map_err(|e| e.to_string())?
        };
        let mut names = HashMap::new();
        let mut keys = Vec::with_capacity(file.keys.len());
        for (i, k) in file.keys.into_iter().enumerate() {
            let at = format!("key {} ({:?})", i + 1, k.name);
            if k.name.is_empty() {
                return Err(format!("key {}: the name is empty", i + 1));
            }
            if names.insert(k.name.clone(), ()).is_some() {
                return Err(format!("{at}: the name is used twice"));
            }
            let credential = match (&k.sha256, &k.client_cert_cn) {
                (Some(sha), None) => {
                    Credential::Digest(unhex(&sha.to_ascii_lowercase()).ok_or_else(|| {
                        format!("{at}: sha256 must be 64 hex digits (`ragd key new` prints it)")
                    })?)
                }
                (None, Some(cn)) if !cn.is_empty() => Credential::CertCn(cn.clone()),
                _ => return Err(format!("{at}: give exactly one of sha256 and client_cert_cn")),
            };
            let expires = k
                .expires
                .as_deref()
                .map(parse_time)
                .transpose()
                .map_err(|e| format!("{at}: expires: {e}"))?;
            for g in &k.grants {
                check_grant(g).map_err(|e| format!("{at}: {e}"))?;
            }
            keys.push(Key {
                credential,
                expires,
                principal: Arc::new(Principal { name: k.name, grants: k.grants }),
            });
        }
        Ok(Self { keys })
    }

    /// One key, held in memory (never written down): `ragd up`'s own key for its internal hops.
    pub fn single(name: &str, key: &str, grants: Vec<Grant>) -> Self {
        let digest: [u8; 32] = sha2::Sha256::digest(key.as_bytes()).into();
        Self {
            keys: vec![Key {
                credential: Credential::Digest(digest),
                expires: None,
                principal: Arc::new(Principal { name: name.into(), grants }),
            }],
        }
    }

    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("{}: cannot read keys file: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// The principal of `key`: every entry is compared (constant time), so the time taken does
    /// not depend on which entry, if any, matched.
    pub fn verify(&self, key: &str, now: i64) -> Result<Arc<Principal>, AuthError> {
        let digest: [u8; 32] = sha2::Sha256::digest(key.as_bytes()).into();
        let mut found: Option<&Key> = None;
        for k in &self.keys {
            if let Credential::Digest(d) = &k.credential
                && bool::from(d.ct_eq(&digest))
            {
                found = Some(k);
            }
        }
        Self::valid(found, now)
    }

    /// The principal of a client certificate's common name (verified by mutual TLS).
    pub fn verify_cert_cn(&self, cn: &str, now: i64) -> Result<Arc<Principal>, AuthError> {
        let found = self.keys.iter().find(|k| matches!(&k.credential, Credential::CertCn(c) if c == cn));
        Self::valid(found, now)
    }

    fn valid(found: Option<&Key>, now: i64) -> Result<Arc<Principal>, AuthError> {
        let k = found.ok_or(AuthError::Unknown)?;
        if k.expires.is_some_and(|e| now >= e) {
            tracing::debug!(key = %k.principal.name, "expired key refused");
            return Err(AuthError::Expired);
        }
        Ok(k.principal.clone())
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// The credential of a request's metadata: `authorization: Bearer <c>` or `api-key: <c>`.
pub fn credential(headers: &http::HeaderMap) -> Option<&str> {
    if let Some(v) = headers.get(http::header::AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        let v = v.trim();
        let (scheme, rest) = v.split_once(' ')?;
        return scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim()).filter(|c| !c.is_empty());
    }
    headers.get("api-key").and_then(|v| v.to_str().ok()).map(str::trim).filter(|c| !c.is_empty())
}

/// Verifies credentials against the keys file and the JWKS in force.
#[derive(Debug, Clone, Default)]
pub struct Authenticator {
    keys: Option<Watched<KeySet>>,
    jwks: Option<Watched<crate::jwt::Jwks>>,
    /// Keys held in memory beside the file's (`ragd up`'s internal key).
    extra: Option<Arc<KeySet>>,
}

impl Authenticator {
    /// Loads the files (an error names the file) and watches them; `None` when neither is given
    /// (no access control). `extra` keys are accepted beside the file's.
    pub fn start(
        keys_file: Option<&Path>,
        jwks_file: Option<&Path>,
        extra: Option<Arc<KeySet>>,
    ) -> Result<Option<Self>, String> {
        if keys_file.is_none() && jwks_file.is_none() {
            return Ok(None);
        }
        let keys = keys_file
            .map(|p| {
                let p: PathBuf = p.to_path_buf();
                Watched::start("auth-keys", vec![p.clone()], move || KeySet::load(&p))
            })
            .transpose()?;
        let jwks = jwks_file
            .map(|p| {
                let p: PathBuf = p.to_path_buf();
                Watched::start("auth-jwks", vec![p.clone()], move || crate::jwt::Jwks::load(&p))
            })
            .transpose()?;
        Ok(Some(Self { keys, jwks, extra }))
    }

    /// An authenticator over fixed key and token sets (tests).
    pub fn fixed(keys: Option<KeySet>, jwks: Option<crate::jwt::Jwks>) -> Self {
        Self { keys: keys.map(Watched::fixed), jwks: jwks.map(Watched::fixed), extra: None }
    }

    /// The principal presenting `headers`' credential.
    /// The principal presenting `headers`' credential or, without one, the client certificate
    /// (its common name `peer_cn`) that mutual TLS verified.
    pub fn authenticate(
        &self,
        headers: &http::HeaderMap,
        peer_cn: Option<&str>,
    ) -> Result<Arc<Principal>, AuthError> {
        let now = chrono::Utc::now().timestamp();
        let Some(c) = credential(headers) else {
            return match (peer_cn, &self.keys) {
                (Some(cn), Some(k)) => k.get().verify_cert_cn(cn, now).map_err(|e| match e {
                    AuthError::Unknown => AuthError::Missing,
                    e => e,
                }),
                _ => Err(AuthError::Missing),
            };
        };
        if crate::jwt::looks_like_jwt(c) {
            return match &self.jwks {
                Some(j) => j.get().verify(c, now),
                None => Err(AuthError::Unknown),
            };
        }
        let from_file = match &self.keys {
            Some(k) => k.get().verify(c, now),
            None => Err(AuthError::Unknown),
        };
        match (&self.extra, from_file) {
            (Some(extra), Err(AuthError::Unknown)) => extra.verify(c, now),
            (_, r) => r,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEYS: &str = r#"
[[keys]]
name = "reader"
sha256 = "SHA_READER"
grants = [{ collection = "a", role = "read" }]

[[keys]]
name = "writer"
sha256 = "SHA_WRITER"
expires = "2100-01-01T00:00:00Z"
grants = [{ collection = "docs-*", role = "write" }, { service = "embed" }]

[[keys]]
name = "old"
sha256 = "SHA_OLD"
expires = "2001-01-01T00:00:00Z"
grants = [{ collection = "*", role = "manage" }]
"#;

    fn keys() -> KeySet {
        let text = KEYS
            .replace("SHA_READER", &key_digest_hex("k-read"))
            .replace("SHA_WRITER", &key_digest_hex("k-write"))
            .replace("SHA_OLD", &key_digest_hex("k-old"));
        KeySet::parse(&text).expect("parse")
    }

    #[test]
    fn keys_resolve_to_their_grants_and_expire() {
        let k = keys();
        let now = chrono::Utc::now().timestamp();
        let r = k.verify("k-read", now).expect("reader");
        assert_eq!(r.name, "reader");
        assert!(r.has_collection("a", Role::Read) && !r.has_collection("a", Role::Write));
        assert!(!r.has_collection("ab", Role::Read), "an exact name is not a prefix");
        let w = k.verify("k-write", now).expect("writer");
        assert!(w.has_collection("docs-1", Role::Read) && w.has_collection("docs-1", Role::Write));
        assert!(!w.has_collection("docs-1", Role::Manage) && !w.has_collection("doc", Role::Read));
        assert!(w.has_service(ServiceGrant::Embed) && !w.has_service(ServiceGrant::Generate));
        assert_eq!(k.verify("k-old", now), Err(AuthError::Expired));
        assert_eq!(k.verify("k-nope", now), Err(AuthError::Unknown));
        assert_eq!(k.verify("", now), Err(AuthError::Unknown));
    }

    #[test]
    fn json_keys_files_parse_too_and_mistakes_are_named() {
        let json = format!(
            r#"{{"keys": [{{"name": "j", "sha256": "{}", "grants": [{{"service": "generate"}}, {{"collection": "*", "role": "manage"}}]}}]}}"#,
            key_digest_hex("k")
        );
        let k = KeySet::parse(&json).expect("json");
        let p = k.verify("k", 0).expect("j");
        assert!(p.has_service(ServiceGrant::Generate) && p.has_collection("anything", Role::Manage));
        let e = KeySet::parse("[[keys]]\nname = \"x\"\nsha256 = \"abc\"\n").err().unwrap_or_default();
        assert!(e.contains("\"x\"") && e.contains("64 hex"), "{e}");
        let e = KeySet::parse(&format!(
            "[[keys]]\nname = \"x\"\nsha256 = \"{}\"\ngrants = [{{ collection = \"a*b\", role = \"read\" }}]\n",
            key_digest_hex("k")
        ))
        .err()
        .unwrap_or_default();
        assert!(e.contains("a*b"), "{e}");
        let e = KeySet::parse(&format!(
            "[[keys]]\nname = \"x\"\nsha256 = \"{}\"\ngrants = [{{ collection = \"a\", role = \"admin\" }}]\n",
            key_digest_hex("k")
        ))
        .err()
        .unwrap_or_default();
        assert!(!e.is_empty());
        let e = KeySet::parse(&format!(
            "[[keys]]\nname = \"x\"\nsha256 = \"{0}\"\n[[keys]]\nname = \"x\"\nsha256 = \"{0}\"\n",
            key_digest_hex("k")
        ))
        .err()
        .unwrap_or_default();
        assert!(e.contains("twice"), "{e}");
    }

    #[test]
    fn client_certificates_are_principals_by_common_name() {
        let k = KeySet::parse(
            "[[keys]]\nname = \"indexer\"\nclient_cert_cn = \"indexer-1\"\ngrants = [{ service = \"embed\" }]\n",
        )
        .expect("parse");
        let p = k.verify_cert_cn("indexer-1", 0).expect("cn");
        assert!(p.has_service(ServiceGrant::Embed));
        assert_eq!(k.verify_cert_cn("indexer-2", 0), Err(AuthError::Unknown));
        // A certificate name is not a key.
        assert_eq!(k.verify("indexer-1", 0), Err(AuthError::Unknown));
        let both =
            format!("[[keys]]\nname = \"x\"\nsha256 = \"{}\"\nclient_cert_cn = \"x\"\n", key_digest_hex("k"));
        assert!(KeySet::parse(&both).err().unwrap_or_default().contains("exactly one"));
    }

    #[test]
    fn credentials_come_from_bearer_or_api_key() {
        let mut h = http::HeaderMap::new();
        assert_eq!(credential(&h), None);
        h.insert("api-key", "k1".parse().expect("header"));
        assert_eq!(credential(&h), Some("k1"));
        h.insert(http::header::AUTHORIZATION, "Bearer k2".parse().expect("header"));
        assert_eq!(credential(&h), Some("k2"));
        h.insert(http::header::AUTHORIZATION, "Basic abc".parse().expect("header"));
        assert_eq!(credential(&h), None);
    }

    #[test]
    fn the_table_is_total_over_known_rpcs_and_patterns_match() {
        assert_eq!(need("/ragd.v1.Indexer/Search"), Some(Need::Collection(Role::Read)));
        assert_eq!(need("/ragd.v1.Indexer/Nope"), None);
        assert!(pattern_matches("*", "x") && pattern_matches("a*", "ab") && !pattern_matches("a*", "b"));
        let mut seen = std::collections::HashSet::new();
        assert!(RPCS.iter().all(|(p, _)| seen.insert(*p)), "an RPC is listed twice");
    }

    #[test]
    fn debug_output_never_shows_a_digest() {
        let d = format!("{:?}", keys());
        assert!(d.contains("reader") && !d.contains(&key_digest_hex("k-read")), "{d}");
    }
}

//! The security settings of a service, and the layer that applies them to every call.
//!
//! [`SecurityConfig`] is flattened into every service's config (and `ragd up`'s): the server's
//! TLS ([`crate::tls::ServerTlsArgs`]), its access control (`--auth-keys-file`,
//! `--auth-jwks-file`, `--require-auth`, `--auth-health`, `--metrics-auth`) and the client side
//! of its upstream hop ([`UpstreamArgs`]: TLS and `--upstream-key-file`).
//! [`ServerSecurity::start`] loads all of it at start-up (a bad file fails with one line naming
//! it) and [`SecurityLayer`] sits in front of every RPC: it refuses plaintext calls to a TLS
//! port, refuses RPCs missing from [`crate::auth::RPCS`], authenticates the caller, checks
//! service grants, leaves an [`Access`] for the handler's collection check, and counts the
//! outcome per principal (`<service>_auth_requests{principal, outcome}`; the name, never the
//! credential).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use http::HeaderValue;

use crate::auth::{Access, Authenticator, Need};
use crate::tls::{ClientTls, ClientTlsArgs, ConnInfo, ServerTls, ServerTlsArgs};
use crate::watch::Watched;

/// Security flags of a server.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct SecurityConfig {
    #[command(flatten)]
    pub tls: ServerTlsArgs,
    /// API keys (TOML or JSON; each key by name, its sha256, optional expiry and its grants).
    /// Re-read when it changes. Without it and without --auth-jwks-file every call is allowed.
    #[arg(long, env = "RAGD_AUTH_KEYS_FILE")]
    pub auth_keys_file: Option<PathBuf>,
    /// Ed25519 public keys (JWKS) that signed tokens (`ragd token`) are verified with.
    #[arg(long, env = "RAGD_AUTH_JWKS_FILE")]
    pub auth_jwks_file: Option<PathBuf>,
    /// Refuse to start without access control (no keys file and no JWKS).
    #[arg(long, env = "RAGD_REQUIRE_AUTH")]
    pub require_auth: bool,
    /// Require a credential for grpc.health.v1 and reflection too (open by default, so probes and
    /// grpcurl work).
    #[arg(long, env = "RAGD_AUTH_HEALTH")]
    pub auth_health: bool,
    /// Require a credential with the `metrics` grant on the Prometheus listener.
    #[arg(long, env = "RAGD_METRICS_AUTH")]
    pub metrics_auth: bool,
    #[command(flatten)]
    pub upstream: UpstreamArgs,
    /// Keys accepted beside the keys file's, held in memory (`ragd up`'s internal key).
    #[arg(skip)]
    pub internal_keys: Option<Arc<crate::auth::KeySet>>,
}

/// The client side of a hop: TLS and the credential sent upstream.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct UpstreamArgs {
    #[command(flatten)]
    pub tls: ClientTlsArgs,
    /// File holding the API key or token this service sends to its upstream (re-read when it
    /// changes), so it can carry narrower grants than its own callers.
    #[arg(long, env = "RAGD_UPSTREAM_KEY_FILE")]
    pub upstream_key_file: Option<PathBuf>,
    /// A credential held in memory, used where no key file is given (`ragd up`'s internal key).
    #[arg(skip)]
    pub credential: Option<Credential>,
}

/// A start-up error of the security settings, naming the file or flag.
#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error("{0}")]
    Auth(String),
}

/// Per-principal outcome counters.
#[derive(Debug, Clone, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct AuthLabels {
    principal: String,
    outcome: &'static str,
}

type AuthFamily =
    prometheus_client::metrics::family::Family<AuthLabels, prometheus_client::metrics::counter::Counter>;

/// A server's security in force: its TLS, its authenticator, its policy switches.
#[derive(Debug, Clone, Default)]
pub struct ServerSecurity {
    pub tls: Option<ServerTls>,
    pub auth: Option<Authenticator>,
    pub auth_health: bool,
    pub metrics_auth: bool,
    counters: AuthFamily,
}

impl ServerSecurity {
    /// Loads and starts watching every file. With no access control configured it logs one
    /// warning (or refuses, with `--require-auth`).
    pub fn start(config: &SecurityConfig, service: &str) -> Result<Self, SecurityError> {
        let tls = ServerTls::start(&config.tls)?;
        let auth = Authenticator::start(
            config.auth_keys_file.as_deref(),
            config.auth_jwks_file.as_deref(),
            config.internal_keys.clone(),
        )
        .map_err(SecurityError::Auth)?;
        if auth.is_none() {
            if config.require_auth {
                return Err(SecurityError::Auth(
                    "--require-auth: give --auth-keys-file or --auth-jwks-file, or drop --require-auth"
                        .into(),
                ));
            }
            tracing::warn!(
                service,
                "no access control: every caller may use every RPC (set --auth-keys-file or --auth-jwks-file)"
            );
        }
        if config.metrics_auth && auth.is_none() {
            return Err(SecurityError::Auth(
                "--metrics-auth needs --auth-keys-file or --auth-jwks-file".into(),
            ));
        }
        tracing::info!(
            service,
            tls = tls.is_some(),
            mutual_tls = tls.as_ref().is_some_and(ServerTls::mutual),
            access_control = auth.is_some(),
            "security"
        );
        Ok(Self {
            tls,
            auth,
            auth_health: config.auth_health,
            metrics_auth: config.metrics_auth,
            counters: AuthFamily::default(),
        })
    }

    /// Registers `<prefix>_auth_requests` in `registry`.
    pub fn register(&self, registry: &mut crate::metrics::Registry, prefix: &str) {
        registry.sub_registry_with_prefix(prefix).register(
            "auth_requests",
            "Calls by authenticated principal (key name or token subject) and outcome",
            self.counters.clone(),
        );
    }

    /// The URL scheme clients reach this server with.
    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }

    pub fn layer(&self) -> SecurityLayer {
        SecurityLayer { security: Arc::new(self.clone()) }
    }

    fn count(&self, principal: &str, outcome: &'static str) {
        self.counters.get_or_create(&AuthLabels { principal: principal.to_string(), outcome }).inc();
    }

    /// Decides a call: the [`Access`] it runs with, or the status that refuses it.
    pub fn admit(
        &self,
        path: &str,
        headers: &http::HeaderMap,
        conn: Option<&ConnInfo>,
    ) -> Result<Access, tonic::Status> {
        if conn.is_some_and(|c| c.tls_required) {
            return Err(tonic::Status::unavailable(
                "this port speaks TLS only: connect with https:// and trust its CA (--upstream-tls-ca, grpcurl -cacert)",
            ));
        }
        let Some(need) = crate::auth::need(path) else {
            return Err(tonic::Status::permission_denied(format!(
                "rpc {path} is not in ragd's permission table"
            )));
        };
        let Some(auth) = &self.auth else { return Ok(Access::Open) };
        if need == Need::Open && !self.auth_health {
            return Ok(Access::Open);
        }
        let peer_cn = conn
            .and_then(|c| c.peer_certs.as_ref())
            .and_then(|certs| certs.first())
            .and_then(|c| crate::tls::subject_cn(c));
        let principal = match auth.authenticate(headers, peer_cn.as_deref()) {
            Ok(p) => p,
            Err(e) => {
                self.count("-", "unauthenticated");
                return Err(e.into());
            }
        };
        if let Need::Service(s) | Need::ServiceAndCollection(s, _) = need
            && !principal.has_service(s)
        {
            self.count(&principal.name, "denied");
            return Err(crate::auth::denied(s));
        }
        Ok(Access::Principal(principal))
    }
}

/// The tower layer applying a [`ServerSecurity`] to every call (see the module docs).
#[derive(Debug, Clone)]
pub struct SecurityLayer {
    security: Arc<ServerSecurity>,
}

impl<S> tower_layer::Layer<S> for SecurityLayer {
    type Service = SecurityService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        SecurityService { inner, security: self.security.clone() }
    }
}

#[derive(Debug, Clone)]
pub struct SecurityService<S> {
    inner: S,
    security: Arc<ServerSecurity>,
}

impl<S, B, R> tower_service::Service<http::Request<B>> for SecurityService<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
    R: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future =
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let security = self.security.clone();
        let admitted =
            security.admit(request.uri().path(), request.headers(), request.extensions().get::<ConnInfo>());
        match admitted {
            Err(status) => Box::pin(async move { Ok(status.into_http()) }),
            Ok(access) => {
                let principal = matches!(access, Access::Principal(_)).then(|| access.name().to_string());
                request.extensions_mut().insert(access);
                let future = self.inner.call(request);
                Box::pin(async move {
                    let response = future.await;
                    if let (Some(name), Ok(r)) = (principal, &response) {
                        // The handler's collection check answers PERMISSION_DENIED (7) itself.
                        let denied = r.headers().get("grpc-status").is_some_and(|v| v.as_bytes() == b"7");
                        security.count(&name, if denied { "denied" } else { "allowed" });
                    }
                    response
                })
            }
        }
    }
}

/// A credential to send upstream: an `authorization: Bearer …` value marked sensitive (never
/// logged by hyper or shown by `Debug`).
#[derive(Clone)]
pub struct Credential(HeaderValue);

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Credential(<redacted>)")
    }
}

impl Credential {
    pub fn bearer(secret: &str) -> Result<Self, String> {
        let mut v = HeaderValue::from_str(&format!("Bearer {}", secret.trim()))
            .map_err(|_| "the credential holds characters a header cannot carry".to_string())?;
        v.set_sensitive(true);
        Ok(Self(v))
    }

    pub fn header(&self) -> &HeaderValue {
        &self.0
    }

    fn load(path: &Path) -> Result<Self, String> {
        let s = std::fs::read_to_string(path)
            .map_err(|e| format!("{}: cannot read key file: {e}", path.display()))?;
        if s.trim().is_empty() {
            return Err(format!("{}: the key file is empty", path.display()));
        }
        Self::bearer(&s).map_err(|e| format!("{}: {e}", path.display()))
    }
}

/// A secret given on the command line or in the environment (`--api-key`): `Debug` shows
/// `<redacted>`, so a derived `Debug` of a config never prints it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_string()))
    }
}

/// How a client (the CLI, loadgen) reaches a service: TLS, and the credential it presents.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct CallerArgs {
    /// API key or token, sent as `authorization: Bearer …` (RAGD_API_KEY or --api-key-file keep
    /// it out of the process list).
    #[arg(long, env = "RAGD_API_KEY", hide_env_values = true, global = true)]
    pub api_key: Option<Secret>,
    /// File holding the API key or token.
    #[arg(long, env = "RAGD_API_KEY_FILE", conflicts_with = "api_key", global = true)]
    pub api_key_file: Option<PathBuf>,
    #[command(flatten)]
    pub tls: ClientTlsArgs,
}

impl CallerArgs {
    /// TLS (for https:// endpoints) and the credential, as the flags say.
    pub fn security(&self) -> Result<ClientSecurity, SecurityError> {
        let upstream = UpstreamArgs {
            tls: self.tls.clone(),
            upstream_key_file: self.api_key_file.clone(),
            credential: None,
        };
        let security = ClientSecurity::start(&upstream)?;
        Ok(match &self.api_key {
            Some(k) => security.with_credential(Some(
                Credential::bearer(k.expose()).map_err(|e| SecurityError::Auth(format!("--api-key: {e}")))?,
            )),
            None => security,
        })
    }
}

/// What a client hop adds to its connections and calls: TLS and a credential.
#[derive(Debug, Clone, Default)]
pub struct ClientSecurity {
    pub tls: Option<ClientTls>,
    credential: Option<Watched<Credential>>,
}

impl ClientSecurity {
    /// From the upstream flags; TLS is set up when any TLS flag is given (https:// URLs use the
    /// system roots otherwise).
    pub fn start(args: &UpstreamArgs) -> Result<Self, SecurityError> {
        let t = &args.tls;
        let tls = ClientTls::new(t)?;
        let credential = args
            .upstream_key_file
            .clone()
            .map(|p| Watched::start("upstream-key", vec![p.clone()], move || Credential::load(&p)))
            .transpose()
            .map_err(SecurityError::Auth)?
            .or_else(|| args.credential.clone().map(Watched::fixed));
        Ok(Self { tls: Some(tls), credential })
    }

    /// A client with a fixed credential (the CLI's `--api-key`, tests).
    pub fn with_credential(mut self, credential: Option<Credential>) -> Self {
        self.credential = credential.map(Watched::fixed);
        self
    }

    /// The credential to send now.
    pub fn credential(&self) -> Option<Arc<Credential>> {
        self.credential.as_ref().map(Watched::get)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{KeySet, key_digest_hex};

    fn security() -> ServerSecurity {
        let keys = KeySet::parse(&format!(
            "[[keys]]\nname = \"reader\"\nsha256 = \"{}\"\ngrants = [{{ collection = \"a\", role = \"read\" }}]\n",
            key_digest_hex("k1")
        ))
        .expect("keys");
        ServerSecurity { auth: Some(Authenticator::fixed(Some(keys), None)), ..Default::default() }
    }

    fn headers(key: Option<&str>) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        if let Some(k) = key {
            h.insert("api-key", k.parse().expect("header"));
        }
        h
    }

    #[test]
    fn the_layer_decides_by_the_table() {
        let s = security();
        let code = |path: &str, key: Option<&str>| s.admit(path, &headers(key), None).err().map(|e| e.code());
        assert_eq!(code("/ragd.v1.Indexer/Search", None), Some(tonic::Code::Unauthenticated));
        assert_eq!(code("/ragd.v1.Indexer/Search", Some("wrong")), Some(tonic::Code::Unauthenticated));
        assert_eq!(code("/ragd.v1.Indexer/Search", Some("k1")), None);
        assert_eq!(code("/ragd.v1.Embedder/Embed", Some("k1")), Some(tonic::Code::PermissionDenied));
        assert_eq!(code("/ragd.v1.Indexer/Secret", Some("k1")), Some(tonic::Code::PermissionDenied));
        assert_eq!(code("/grpc.health.v1.Health/Check", None), None);
        let closed = ServerSecurity { auth_health: true, ..security() };
        assert_eq!(
            closed.admit("/grpc.health.v1.Health/Check", &headers(None), None).err().map(|e| e.code()),
            Some(tonic::Code::Unauthenticated)
        );
        // Open mode: everything in the table passes, nothing outside it does.
        let open = ServerSecurity::default();
        assert!(open.admit("/ragd.v1.Indexer/DropCollection", &headers(None), None).is_ok());
        assert!(open.admit("/ragd.v1.Indexer/Secret", &headers(None), None).is_err());
        let plaintext = ConnInfo { remote: None, tls: false, tls_required: true, peer_certs: None };
        assert_eq!(
            open.admit("/ragd.v1.Indexer/Search", &headers(None), Some(&plaintext)).err().map(|e| e.code()),
            Some(tonic::Code::Unavailable)
        );
    }

    #[test]
    fn credentials_never_show_in_debug() {
        let c = Credential::bearer("super-secret").expect("credential");
        assert!(!format!("{c:?}").contains("super-secret"));
        assert!(c.header().is_sensitive());
    }
}

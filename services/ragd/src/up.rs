//! `ragd up`: the embedder, the indexer and the generator in one process — the embedded Qdrant
//! engine and the embedded language model, data in one directory, no etcd — each service on its
//! own loopback port (the same gRPC API as the separate services, so every client and CLI verb
//! works unchanged). Ctrl-C / SIGTERM stops them in dependency order: generator, indexer,
//! embedder, each draining its in-flight requests.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use ragd_core::auth::{Grant, KeySet, Role, ServiceGrant};
use ragd_core::pki;
use ragd_core::security::{Credential, SecurityConfig};
use ragd_core::tls::{ClientTlsArgs, ServerTlsArgs};
use ragd_embedder::EmbedderConfig;
use ragd_generator::GeneratorConfig;
use ragd_indexer::IndexerConfig;
use ragd_indexer::store::journal::Durability;
use tokio::sync::{mpsc, oneshot};

#[derive(Debug, Args)]
pub struct UpArgs {
    /// Address the three services listen on.
    #[arg(long, env = "RAGD_HOST", default_value = "127.0.0.1")]
    host: IpAddr,
    /// Embedder port (0 = any free port; the chosen ports are printed as RAGD_LISTENING lines).
    #[arg(long, default_value_t = 50051)]
    embedder_port: u16,
    #[arg(long, default_value_t = 50052)]
    indexer_port: u16,
    #[arg(long, default_value_t = 50053)]
    generator_port: u16,
    /// Where the indexer keeps collections and shards.
    #[arg(long, env = "RAGD_DATA_DIR", default_value = ".ragd/data/up")]
    data_dir: PathBuf,
    /// When the indexer acknowledges a write: fsync (survives a power loss), page-cache
    /// (survives a crash of the process) or none (see `ragd serve indexer --help`).
    #[arg(long, env = "RAGD_DURABILITY", value_enum, default_value_t = Durability::Fsync)]
    durability: Durability,
    /// KiB of vectors a segment holds before its HNSW index is built (Qdrant's default when
    /// unset); search is exact until then (see `ragd serve indexer --help`).
    #[arg(long, env = "RAGD_INDEXING_THRESHOLD_KB")]
    indexing_threshold_kb: Option<usize>,
    /// Embedding models: manifest.json and the exported models (scripts/setup).
    #[arg(long, env = "RAGD_MODELS_DIR", default_value = ragd_embedder::config::DEFAULT_MODELS_DIR)]
    models_dir: PathBuf,
    /// Serve only these embedding models (comma-separated); default: all in the manifest.
    #[arg(long, env = "RAGD_MODELS", value_delimiter = ',')]
    models: Vec<String>,
    #[arg(long, env = "RAGD_ORT_LIBRARY", default_value = ragd_embedder::config::DEFAULT_ORT_LIBRARY)]
    ort_library: PathBuf,
    /// The language model (GGUF).
    #[arg(long, env = "RAGD_LLM_MODEL", default_value = ragd_generator::config::DEFAULT_LLM_MODEL)]
    llm_model: PathBuf,
    /// Sequences the language model generates at the same time.
    #[arg(long, env = "RAGD_LLM_PARALLEL", default_value_t = 2)]
    llm_parallel: usize,
    /// Serve TLS on all three services with DIR/server.pem and DIR/server-key.pem (re-read when
    /// they change); the internal hops trust DIR/ca.pem.
    #[arg(long, env = "RAGD_TLS_DIR")]
    tls_dir: Option<PathBuf>,
    /// Make a throwaway CA, a server certificate for --host, localhost and 127.0.0.1, and a client
    /// certificate in --tls-dir (default: <data-dir>/tls) where none are there yet.
    #[arg(long)]
    tls_generate: bool,
    /// Mutual TLS: every caller must present a certificate signed by DIR/ca.pem (the internal hops
    /// present DIR/client.pem).
    #[arg(long)]
    tls_mutual: bool,
    /// API keys file (see `ragd serve indexer --help`); the three services share it.
    #[arg(long, env = "RAGD_AUTH_KEYS_FILE")]
    auth_keys_file: Option<PathBuf>,
    /// JWKS of the keys that sign tokens (`ragd token`).
    #[arg(long, env = "RAGD_AUTH_JWKS_FILE")]
    auth_jwks_file: Option<PathBuf>,
    /// Refuse to start without --auth-keys-file or --auth-jwks-file.
    #[arg(long, env = "RAGD_REQUIRE_AUTH")]
    require_auth: bool,
    /// Require a credential for health and reflection too.
    #[arg(long, env = "RAGD_AUTH_HEALTH")]
    auth_health: bool,
}

impl UpArgs {
    /// The TLS directory in use, generating its files when asked.
    fn tls_dir(&self) -> anyhow::Result<Option<PathBuf>> {
        let dir = match (&self.tls_dir, self.tls_generate) {
            (None, false) if self.tls_mutual => {
                anyhow::bail!("--tls-mutual needs --tls-dir or --tls-generate")
            }
            (None, false) => return Ok(None),
            (Some(d), _) => d.clone(),
            (None, true) => self.data_dir.join("tls"),
        };
        if self.tls_generate && !dir.join(pki::SERVER_CERT_FILE).exists() {
            let host = self.host.to_string();
            let mut hosts = vec!["localhost", "127.0.0.1"];
            if !hosts.contains(&host.as_str()) {
                hosts.push(&host);
            }
            pki::generate_dir(&dir, &hosts)
                .with_context(|| format!("cannot write certificates to {}", dir.display()))?;
            eprintln!(
                "ragd up: generated a throwaway CA and certificates in {}: trust {} (grpcurl -cacert, --upstream-tls-ca); client certificate {}",
                dir.display(),
                dir.join(pki::CA_FILE).display(),
                dir.join(pki::CLIENT_CERT_FILE).display()
            );
        }
        Ok(Some(dir))
    }

    /// The security settings the three services share: TLS from the directory, the keys file and
    /// JWKS, and — when access control is on — a key made for this process alone that the
    /// internal hops (indexer → embedder, generator → indexer) present. It is never written down.
    fn security(&self) -> anyhow::Result<SecurityConfig> {
        let mut s = SecurityConfig {
            auth_keys_file: self.auth_keys_file.clone(),
            auth_jwks_file: self.auth_jwks_file.clone(),
            require_auth: self.require_auth,
            auth_health: self.auth_health,
            ..SecurityConfig::default()
        };
        if let Some(dir) = self.tls_dir()? {
            s.tls = ServerTlsArgs {
                tls_cert: Some(dir.join(pki::SERVER_CERT_FILE)),
                tls_key: Some(dir.join(pki::SERVER_KEY_FILE)),
                tls_client_ca: self.tls_mutual.then(|| dir.join(pki::CA_FILE)),
            };
            s.upstream.tls = ClientTlsArgs {
                upstream_tls_ca: Some(dir.join(pki::CA_FILE)),
                upstream_tls_cert: self.tls_mutual.then(|| dir.join(pki::CLIENT_CERT_FILE)),
                upstream_tls_key: self.tls_mutual.then(|| dir.join(pki::CLIENT_KEY_FILE)),
                ..ClientTlsArgs::default()
            };
        }
        if self.auth_keys_file.is_some() || self.auth_jwks_file.is_some() {
            let key = ragd_core::auth::random_key().map_err(anyhow::Error::msg)?;
            let grants = vec![
                Grant::Service { service: ServiceGrant::Embed },
                Grant::Collection { collection: "*".into(), role: Role::Read },
            ];
            s.internal_keys = Some(Arc::new(KeySet::single("ragd-up-internal", &key, grants)));
            s.upstream.credential = Some(Credential::bearer(&key).map_err(anyhow::Error::msg)?);
        }
        Ok(s)
    }
}

struct Running<E> {
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), E>>,
}

impl<E: std::error::Error + Send + Sync + 'static> Running<E> {
    async fn stop(mut self, name: &str) -> anyhow::Result<()> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        self.task.await.with_context(|| format!("{name} task"))?.with_context(|| format!("{name} failed"))
    }
}

/// Runs a service; `exited` hears its name when it returns (early, it means it failed).
fn spawn<E, F>(
    name: &'static str,
    exited: &mpsc::UnboundedSender<&'static str>,
    serve: impl FnOnce(oneshot::Receiver<()>) -> F,
) -> Running<E>
where
    F: std::future::Future<Output = Result<(), E>> + Send + 'static,
    E: Send + 'static,
{
    let (tx, rx) = oneshot::channel();
    let fut = serve(rx);
    let exited = exited.clone();
    let task = tokio::spawn(async move {
        let r = fut.await;
        let _ = exited.send(name);
        r
    });
    Running { stop: Some(tx), task }
}

async fn stopped(rx: oneshot::Receiver<()>) {
    let _ = rx.await;
}

pub async fn up(args: UpArgs) -> anyhow::Result<()> {
    let security = args.security()?;
    let scheme = if security.tls.enabled() { "https" } else { "http" };
    let bind = |port| super::bind_quiet(SocketAddr::new(args.host, port));
    let (el, il, gl) =
        (bind(args.embedder_port).await?, bind(args.indexer_port).await?, bind(args.generator_port).await?);
    let url = |l: &tokio::net::TcpListener| l.local_addr().map(|a| format!("{scheme}://{a}"));
    let (embedder_url, indexer_url) = (url(&el)?, url(&il)?);
    for (name, l) in [("embedder", &el), ("indexer", &il), ("generator", &gl)] {
        println!("RAGD_LISTENING {name} {}", l.local_addr()?);
    }

    let embedder = EmbedderConfig {
        models_dir: args.models_dir,
        models: args.models,
        ort_library: args.ort_library,
        security: security.clone(),
        ..EmbedderConfig::default()
    };
    let indexer = IndexerConfig {
        data_dir: args.data_dir,
        durability: args.durability,
        indexing_threshold_kb: args.indexing_threshold_kb,
        embedder_url: embedder_url.clone(),
        security: security.clone(),
        ..IndexerConfig::default()
    };
    let generator = GeneratorConfig {
        indexer_url: indexer_url.clone(),
        llm_model: args.llm_model,
        llm_parallel: args.llm_parallel,
        security,
        ..GeneratorConfig::default()
    };
    tracing::info!(embedder = %embedder_url, indexer = %indexer_url, "ragd up: starting three services in one process");
    let (exited, mut exits) = mpsc::unbounded_channel();
    let e = spawn("embedder", &exited, |rx| ragd_embedder::serve(embedder, el, stopped(rx)));
    let i = spawn("indexer", &exited, |rx| ragd_indexer::serve(indexer, il, stopped(rx)));
    let g = spawn("generator", &exited, |rx| ragd_generator::serve(generator, gl, stopped(rx)));

    tokio::select! {
        () = ragd_core::shutdown::signal() => {}
        Some(name) = exits.recv() => tracing::error!(service = name, "a service stopped on its own; stopping the others"),
    }
    // Dependents first, so in-flight answers can still retrieve while they drain.
    let generator = g.stop("generator").await;
    let indexer = i.stop("indexer").await;
    let embedder = e.stop("embedder").await;
    generator.and(indexer).and(embedder)
}

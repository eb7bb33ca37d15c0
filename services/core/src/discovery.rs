//! Service discovery through etcd.
//!
//! Each instance registers `/<prefix>/<cluster>/<service>/<instance-id>` → JSON `{addr, service,
//! version, meta}` under a lease with a TTL, kept alive every TTL/3; on graceful shutdown the
//! lease is revoked (after the service went NOT_SERVING and drained), so the key disappears at
//! once; a killed instance's key disappears when its lease expires. If etcd restarts or the
//! keep-alive fails, the registration grants a new lease and puts the key again.
//!
//! Clients get an [`Upstream`] over every registered instance of a service: a background task
//! lists the prefix, then watches it from the listed revision, adding and removing members as
//! keys come and go. During an etcd outage the upstream keeps the last known members and the
//! task re-lists and re-watches when etcd is back. A member whose connection fails is skipped
//! for a while at once (see [`crate::upstream`]).

use std::collections::HashMap;
use std::time::Duration;

use clap::Args;
use etcd_client::{Client, EventType, GetOptions, PutOptions, WatchOptions};
use std::sync::Weak;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::upstream::{Members, Upstream};

/// How to reach etcd and which cluster's keys to read: what every etcd user needs, the client
/// verbs of the CLI as well as the services. The flags are global, so a client verb takes them
/// before or after its subcommand (`ragd collections create docs --etcd-endpoints …`).
#[derive(Debug, Clone, Args)]
pub struct EtcdConfig {
    /// etcd endpoints (comma-separated, e.g. 127.0.0.1:2379); empty = no registration and
    /// static URLs only.
    #[arg(long, env = "RAGD_ETCD_ENDPOINTS", value_delimiter = ',', global = true)]
    pub etcd_endpoints: Vec<String>,
    /// Cluster name: instances of different clusters in one etcd do not see each other.
    #[arg(long, env = "RAGD_CLUSTER", default_value = "default", global = true)]
    pub cluster: String,
    /// Key prefix in etcd.
    #[arg(long, env = "RAGD_DISCOVERY_PREFIX", default_value = "ragd", global = true)]
    pub discovery_prefix: String,
    /// etcd user (etcd's own authentication; with --etcd-password).
    #[arg(long, env = "RAGD_ETCD_USER", requires = "etcd_password", global = true)]
    pub etcd_user: Option<String>,
    /// etcd password (prefer the RAGD_ETCD_PASSWORD variable: a flag is visible in ps).
    #[arg(long, env = "RAGD_ETCD_PASSWORD", hide_env_values = true, requires = "etcd_user", global = true)]
    pub etcd_password: Option<crate::security::Secret>,
    /// PEM CA bundle etcd's certificate must chain to; turns on TLS to etcd (give the endpoints
    /// as https://host:2379).
    #[arg(long, env = "RAGD_ETCD_TLS_CA", global = true)]
    pub etcd_tls_ca: Option<std::path::PathBuf>,
    /// PEM client certificate for etcd's --client-cert-auth (with --etcd-tls-key).
    #[arg(long, env = "RAGD_ETCD_TLS_CERT", requires = "etcd_tls_key", global = true)]
    pub etcd_tls_cert: Option<std::path::PathBuf>,
    /// PEM private key of --etcd-tls-cert.
    #[arg(long, env = "RAGD_ETCD_TLS_KEY", requires = "etcd_tls_cert", global = true)]
    pub etcd_tls_key: Option<std::path::PathBuf>,
}

impl Default for EtcdConfig {
    fn default() -> Self {
        crate::config::clap_defaults()
    }
}

impl EtcdConfig {
    pub fn enabled(&self) -> bool {
        !self.etcd_endpoints.is_empty()
    }

    /// `/<prefix>/<cluster>/<service>/`.
    pub fn service_prefix(&self, service: &str) -> String {
        format!("/{}/{}/{service}/", self.discovery_prefix.trim_matches('/'), self.cluster)
    }
}

/// A service's discovery settings: etcd, plus how it registers itself (servers only).
#[derive(Debug, Clone, Args)]
pub struct DiscoveryConfig {
    #[command(flatten)]
    pub etcd: EtcdConfig,
    /// Lease TTL: a killed instance disappears from discovery within this time.
    #[arg(long, env = "RAGD_LEASE_TTL_SECS", default_value_t = DEFAULT_LEASE_TTL_SECS)]
    pub lease_ttl_secs: u64,
    /// Address clients should use to reach this instance (default: the listener's address).
    #[arg(long, env = "RAGD_ADVERTISE_ADDR")]
    pub advertise_addr: Option<String>,
}

/// Default `--lease-ttl-secs`.
pub const DEFAULT_LEASE_TTL_SECS: u64 = 5;

impl Default for DiscoveryConfig {
    fn default() -> Self {
        crate::config::clap_defaults()
    }
}

/// The URL value that asks for discovery instead of a static address (`--embedder-url etcd`).
pub const DISCOVER: &str = "etcd";

impl DiscoveryConfig {
    pub fn enabled(&self) -> bool {
        self.etcd.enabled()
    }

    /// `/<prefix>/<cluster>/<service>/`.
    pub fn service_prefix(&self, service: &str) -> String {
        self.etcd.service_prefix(service)
    }

    fn ttl(&self) -> Duration {
        Duration::from_secs(self.lease_ttl_secs.max(1))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error("discovery is not configured (set --etcd-endpoints)")]
    NotConfigured,
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
    #[error("etcd tls: {0}")]
    Tls(String),
}

/// What an instance publishes about itself.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Instance {
    /// gRPC URL, e.g. `http://10.0.0.5:50051`.
    pub addr: String,
    pub service: String,
    pub version: String,
    /// Service-specific facts: models served, shard ids, ...
    #[serde(default)]
    pub meta: serde_json::Value,
}

async fn connect(config: &EtcdConfig) -> Result<Client, DiscoveryError> {
    let mut options = etcd_client::ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        .with_timeout(Duration::from_secs(5));
    if let (Some(user), Some(password)) = (&config.etcd_user, &config.etcd_password) {
        options = options.with_user(user.clone(), password.expose().to_string());
    }
    if let Some(tls) = etcd_tls(config)? {
        options = options.with_tls(tls);
    }
    Ok(Client::connect(&config.etcd_endpoints, Some(options)).await?)
}

/// The TLS settings of the etcd client (files read at each connection, so rotated files are
/// picked up by the next reconnect).
fn etcd_tls(config: &EtcdConfig) -> Result<Option<etcd_client::TlsOptions>, DiscoveryError> {
    let Some(ca) = &config.etcd_tls_ca else { return Ok(None) };
    let read = |p: &std::path::Path| {
        std::fs::read(p).map_err(|e| DiscoveryError::Tls(format!("{}: {e}", p.display())))
    };
    let mut tls =
        etcd_client::TlsOptions::new().ca_certificate(etcd_client::Certificate::from_pem(read(ca)?));
    if let (Some(cert), Some(key)) = (&config.etcd_tls_cert, &config.etcd_tls_key) {
        tls = tls.identity(etcd_client::Identity::from_pem(read(cert)?, read(key)?));
    }
    Ok(Some(tls))
}

/// A live registration; [`Registration::deregister`] revokes it.
#[derive(Debug)]
pub struct Registration {
    pub key: String,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Registration {
    /// Revokes the lease (the key disappears at once) and stops the keep-alive.
    pub async fn deregister(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

/// Registers `instance` and keeps it registered until [`Registration::deregister`]. The first
/// registration is awaited (so a wrong etcd address fails start-up); later failures are retried
/// in the background.
pub async fn register(config: &DiscoveryConfig, instance: Instance) -> Result<Registration, DiscoveryError> {
    if !config.enabled() {
        return Err(DiscoveryError::NotConfigured);
    }
    let id = format!(
        "{}-{}",
        instance.addr.trim_start_matches("http://").trim_start_matches("https://").replace([':', '/'], "_"),
        std::process::id()
    );
    let key = format!("{}{id}", config.service_prefix(&instance.service));
    let value = serde_json::to_string(&instance).unwrap_or_default();
    let mut client = connect(&config.etcd).await?;
    let lease = put_with_lease(&mut client, config, &key, &value).await?;
    tracing::info!(%key, addr = %instance.addr, ttl = ?config.ttl(), "registered in etcd");
    let (stop, stopped) = oneshot::channel();
    let task = tokio::spawn(keep_registered(config.clone(), key.clone(), value, client, lease, stopped));
    Ok(Registration { key, stop: Some(stop), task: Some(task) })
}

async fn put_with_lease(
    client: &mut Client,
    config: &DiscoveryConfig,
    key: &str,
    value: &str,
) -> Result<i64, DiscoveryError> {
    let lease = client.lease_grant(config.ttl().as_secs() as i64, None).await?.id();
    client.put(key, value, Some(PutOptions::new().with_lease(lease))).await?;
    Ok(lease)
}

/// Keeps `key` registered until `stopped`: hold the lease; when it fails, register again (new
/// connection, new lease) and hold that one.
async fn keep_registered(
    config: DiscoveryConfig,
    key: String,
    value: String,
    mut client: Client,
    mut lease: i64,
    mut stopped: oneshot::Receiver<()>,
) {
    loop {
        let failed = match hold_lease(&mut client, lease, &key, config.ttl() / 3, &mut stopped).await {
            Held::Stopped => return,
            Held::Failed(why) => why,
        };
        tracing::warn!(%key, error = %failed, "etcd keep-alive failed; registering again");
        match register_again(&config, &key, &value, &mut stopped).await {
            Some((c, l)) => (client, lease) = (c, l),
            None => return,
        }
    }
}

/// How [`hold_lease`] ended.
enum Held {
    /// Stopped: the lease was revoked (or will expire).
    Stopped,
    /// The keep-alive failed, for this reason.
    Failed(String),
}

/// Renews `lease` every `every` until stopped (then revokes it) or a renewal fails.
async fn hold_lease(
    client: &mut Client,
    lease: i64,
    key: &str,
    every: Duration,
    stopped: &mut oneshot::Receiver<()>,
) -> Held {
    let (mut keeper, mut responses) = match client.lease_keep_alive(lease).await {
        Ok(k) => k,
        Err(e) => return Held::Failed(e.to_string()),
    };
    loop {
        tokio::select! {
            _ = &mut *stopped => {
                match client.lease_revoke(lease).await {
                    Ok(_) => tracing::info!(%key, "lease revoked"),
                    Err(e) => tracing::warn!(%key, error = %e, "could not revoke the lease; it will expire"),
                }
                return Held::Stopped;
            }
            () = tokio::time::sleep(every) => {}
        }
        if let Err(e) = keeper.keep_alive().await {
            return Held::Failed(e.to_string());
        }
        match responses.message().await {
            Ok(Some(r)) if r.ttl() > 0 => {}
            Ok(Some(_)) => return Held::Failed("lease expired".into()),
            Ok(None) => return Held::Failed("keep-alive stream closed".into()),
            Err(e) => return Held::Failed(e.to_string()),
        }
    }
}

/// Registers `key` again every 500 ms until it works (the new client and lease) or we are
/// stopped (None).
async fn register_again(
    config: &DiscoveryConfig,
    key: &str,
    value: &str,
    stopped: &mut oneshot::Receiver<()>,
) -> Option<(Client, i64)> {
    loop {
        tokio::select! {
            _ = &mut *stopped => return None,
            () = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
        let again = async {
            let mut c = connect(&config.etcd).await?;
            let l = put_with_lease(&mut c, config, key, value).await?;
            Ok::<_, DiscoveryError>((c, l))
        };
        match again.await {
            Ok(registered) => {
                tracing::info!(%key, "registered in etcd again");
                return Some(registered);
            }
            Err(e) => tracing::debug!(%key, error = %e, "etcd still unreachable"),
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct ServiceLabel {
    pub service: String,
}

/// `ragd_discovery_endpoints{service}`: the endpoints a discovered channel balances over now,
/// and `ragd_discovery_watch_failures{service}`: etcd watches lost (and re-established).
#[derive(Debug, Clone, Default)]
pub struct DiscoveryMetrics {
    endpoints:
        prometheus_client::metrics::family::Family<ServiceLabel, prometheus_client::metrics::gauge::Gauge>,
    watch_failures: prometheus_client::metrics::family::Family<
        ServiceLabel,
        prometheus_client::metrics::counter::Counter,
    >,
}

impl DiscoveryMetrics {
    pub fn register(registry: &mut crate::metrics::Registry) -> Self {
        let this = Self::default();
        let r = registry.sub_registry_with_prefix("ragd_discovery");
        r.register("endpoints", "Endpoints a discovered channel balances over", this.endpoints.clone());
        r.register("watch_failures", "etcd watches lost (then re-established)", this.watch_failures.clone());
        this
    }

    pub fn endpoints(&self, service: &str) -> i64 {
        self.endpoints.get_or_create(&ServiceLabel { service: service.to_string() }).get()
    }
}

/// An [`Upstream`] over every registered instance of `service`, kept current by a watch.
pub fn discovered(
    config: &EtcdConfig,
    service: &str,
    metrics: Option<DiscoveryMetrics>,
    security: crate::security::ClientSecurity,
) -> Result<(Upstream, JoinHandle<()>), DiscoveryError> {
    if !config.enabled() {
        return Err(DiscoveryError::NotConfigured);
    }
    let upstream = Upstream::empty(security);
    let follow =
        follow(config.clone(), service.to_string(), upstream.downgrade(), metrics.unwrap_or_default());
    Ok((upstream, tokio::spawn(follow)))
}

async fn follow(config: EtcdConfig, service: String, members: Weak<Members>, metrics: DiscoveryMetrics) {
    let prefix = config.service_prefix(&service);
    let label = ServiceLabel { service };
    // key → addr of the members the upstream has now.
    let mut known: HashMap<String, String> = HashMap::new();
    loop {
        if members.strong_count() == 0 {
            return;
        }
        let endpoints = metrics.endpoints.get_or_create(&label).clone();
        match follow_once(&config, &prefix, &members, &mut known, &endpoints).await {
            Ok(()) => return, // every client is gone
            Err(e) => {
                metrics.watch_failures.get_or_create(&label).inc();
                tracing::warn!(%prefix, error = %e, endpoints = known.len(), "etcd watch failed; keeping the last known endpoints");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

/// Lists, reconciles, then applies watch events until an error (Err) or the channel is gone (Ok).
async fn follow_once(
    config: &EtcdConfig,
    prefix: &str,
    members: &Weak<Members>,
    known: &mut HashMap<String, String>,
    endpoints: &prometheus_client::metrics::gauge::Gauge,
) -> Result<(), DiscoveryError> {
    let mut client = connect(config).await?;
    let listed = client.get(prefix, Some(GetOptions::new().with_prefix())).await?;
    let revision = listed.header().map_or(0, |h| h.revision());
    let mut now: HashMap<String, String> = HashMap::new();
    for kv in listed.kvs() {
        if let (Ok(k), Some(addr)) = (kv.key_str(), addr_of(kv.value())) {
            now.insert(k.to_string(), addr);
        }
    }
    // Reconcile: drop what vanished while we were not watching, add what is new.
    let gone: Vec<String> = known.keys().filter(|k| !now.contains_key(*k)).cloned().collect();
    for k in gone {
        known.remove(&k);
        if !remove(members, &k) {
            return Ok(());
        }
    }
    for (k, addr) in now {
        if known.get(&k) != Some(&addr) && !insert(members, known, k, addr) {
            return Ok(());
        }
    }
    endpoints.set(known.len() as i64);
    let mut events = client
        .watch(prefix, Some(WatchOptions::new().with_prefix().with_start_revision(revision + 1)))
        .await?;
    while let Some(resp) = events.message().await? {
        if !resp.events().iter().all(|ev| apply(members, known, ev)) {
            return Ok(());
        }
        endpoints.set(known.len() as i64);
    }
    Err(DiscoveryError::Etcd(etcd_client::Error::WatchError("watch stream ended".into())))
}

/// Applies one watch event to the members; false once the channel is gone.
fn apply(members: &Weak<Members>, known: &mut HashMap<String, String>, ev: &etcd_client::Event) -> bool {
    let Some(kv) = ev.kv() else { return true };
    let Ok(k) = kv.key_str() else { return true };
    match ev.event_type() {
        EventType::Put => match addr_of(kv.value()) {
            Some(addr) => insert(members, known, k.to_string(), addr),
            None => true,
        },
        EventType::Delete => {
            known.remove(k);
            remove(members, k)
        }
    }
}

/// Registers this instance if discovery is configured: its address is `--advertise-addr` or
/// `<scheme>://<local>` (`https` when the server speaks TLS).
pub async fn register_if_enabled(
    config: &DiscoveryConfig,
    service: &str,
    scheme: &str,
    local: std::net::SocketAddr,
    meta: serde_json::Value,
) -> Result<Option<Registration>, DiscoveryError> {
    if !config.enabled() {
        return Ok(None);
    }
    let addr = config.advertise_addr.clone().unwrap_or_else(|| format!("{scheme}://{local}"));
    let instance =
        Instance { addr, service: service.to_string(), version: env!("CARGO_PKG_VERSION").into(), meta };
    register(config, instance).await.map(Some)
}

/// The instances of `service` registered now (one read, no watch).
pub async fn instances(config: &EtcdConfig, service: &str) -> Result<Vec<Instance>, DiscoveryError> {
    if !config.enabled() {
        return Err(DiscoveryError::NotConfigured);
    }
    let mut client = connect(config).await?;
    let listed = client.get(config.service_prefix(service), Some(GetOptions::new().with_prefix())).await?;
    Ok(listed.kvs().iter().filter_map(|kv| serde_json::from_slice(kv.value()).ok()).collect())
}

/// The transport to `service`: every instance discovered through etcd when `url` is
/// [`DISCOVER`] ("etcd"), else a lazily connected channel to the static `url`; with the TLS and
/// credential of `security`.
pub fn upstream(
    url: &str,
    config: &EtcdConfig,
    service: &str,
    metrics: Option<DiscoveryMetrics>,
    security: &crate::security::ClientSecurity,
) -> Result<Upstream, String> {
    if url == DISCOVER {
        let (upstream, _follow) =
            discovered(config, service, metrics, security.clone()).map_err(|e| e.to_string())?;
        Ok(upstream)
    } else {
        let channel =
            crate::client::connect_lazy_with(url, security.tls.clone()).map_err(|e| format!("{url}: {e}"))?;
        Ok(Upstream::fixed_with(channel, security.clone()))
    }
}

fn addr_of(value: &[u8]) -> Option<String> {
    serde_json::from_slice::<Instance>(value).ok().map(|i| i.addr)
}

/// Adds a member; false once every client is gone.
fn insert(members: &Weak<Members>, known: &mut HashMap<String, String>, key: String, addr: String) -> bool {
    let Some(m) = members.upgrade() else { return false };
    let channel = match crate::client::connect_lazy_with(&addr, m.security.tls.clone()) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(%key, %addr, error = %e, "ignoring an instance with a bad address");
            return true;
        }
    };
    tracing::info!(%key, %addr, "endpoint discovered");
    known.insert(key.clone(), addr);
    m.insert(key, channel);
    true
}

/// Removes a member; false once every client is gone.
fn remove(members: &Weak<Members>, key: &str) -> bool {
    let Some(m) = members.upgrade() else { return false };
    tracing::info!(%key, "endpoint gone");
    m.remove(key);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_the_layout() {
        let c = DiscoveryConfig {
            etcd: EtcdConfig { cluster: "prod".into(), ..EtcdConfig::default() },
            ..DiscoveryConfig::default()
        };
        assert_eq!(c.service_prefix("embedder"), "/ragd/prod/embedder/");
        assert!(!c.enabled());
    }

    #[test]
    fn instances_round_trip_and_bad_values_are_ignored() {
        let i = Instance {
            addr: "http://127.0.0.1:1".into(),
            service: "embedder".into(),
            version: "0.1.0".into(),
            meta: serde_json::json!({"models": ["m"]}),
        };
        let v = serde_json::to_vec(&i).expect("json");
        assert_eq!(addr_of(&v).as_deref(), Some("http://127.0.0.1:1"));
        assert_eq!(addr_of(b"not json"), None);
    }
}

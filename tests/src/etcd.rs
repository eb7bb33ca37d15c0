//! A real etcd server (Debian `etcd-server`, installed by scripts/setup) on loopback ports with a
//! temporary data directory; killed on drop. Restartable on the same ports and data.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

#[derive(Debug)]
pub struct Etcd {
    child: Option<Child>,
    dir: tempfile::TempDir,
    client_port: u16,
    peer_port: u16,
    /// `127.0.0.1:PORT` (`https://127.0.0.1:PORT` with TLS), for `--etcd-endpoints`.
    pub endpoint: String,
    tls: Option<EtcdTls>,
}

/// etcd's own TLS flags: its certificate and key, and the CA its clients' certificates must
/// chain to (`--client-cert-auth`); the client side presents `client_cert`/`client_key`.
#[derive(Debug, Clone)]
pub struct EtcdTls {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl EtcdTls {
    fn client_options(&self) -> etcd_client::ConnectOptions {
        let read = |p: &PathBuf| std::fs::read(p).expect("etcd tls file");
        let tls = etcd_client::TlsOptions::new()
            .ca_certificate(etcd_client::Certificate::from_pem(read(&self.ca)))
            .identity(etcd_client::Identity::from_pem(read(&self.client_cert), read(&self.client_key)));
        etcd_client::ConnectOptions::new().with_tls(tls)
    }
}

impl Etcd {
    /// Starts etcd and waits (up to a minute: a broken set-up, not a slow machine) until it
    /// answers.
    pub async fn start() -> Self {
        Self::start_with(None).await
    }

    /// Starts etcd serving TLS only, requiring client certificates (`--client-cert-auth`).
    pub async fn start_tls(tls: EtcdTls) -> Self {
        Self::start_with(Some(tls)).await
    }

    async fn start_with(tls: Option<EtcdTls>) -> Self {
        let dir = tempfile::tempdir().expect("etcd dir");
        let (client_port, peer_port) = (super::free_port(), super::free_port());
        let endpoint = match tls {
            Some(_) => format!("https://127.0.0.1:{client_port}"),
            None => format!("127.0.0.1:{client_port}"),
        };
        let mut this = Self { child: None, dir, client_port, peer_port, endpoint, tls };
        this.restart().await;
        this
    }

    fn options(&self) -> Option<etcd_client::ConnectOptions> {
        self.tls.as_ref().map(EtcdTls::client_options)
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Kills the server (SIGKILL).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// (Re)starts the server on the same ports and data directory.
    pub async fn restart(&mut self) {
        self.kill();
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let client = format!("{scheme}://127.0.0.1:{}", self.client_port);
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let mut cmd = Command::new("etcd");
        if let Some(t) = &self.tls {
            cmd.arg("--cert-file").arg(&t.cert).arg("--key-file").arg(&t.key);
            cmd.arg("--trusted-ca-file").arg(&t.ca).arg("--client-cert-auth");
        }
        let child = cmd
            .arg("--name")
            .arg("ragd-test")
            .arg("--data-dir")
            .arg(self.data_dir())
            .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("ragd-test={peer}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn etcd (scripts/setup installs etcd-server)");
        self.child = Some(child);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(mut c) = etcd_client::Client::connect([&self.endpoint], self.options()).await
                && c.get("health-probe", None).await.is_ok()
            {
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "etcd did not start on {}", self.endpoint);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Keys (and values) under `prefix`.
    pub async fn list(&self, prefix: &str) -> Vec<(String, String)> {
        let mut c =
            etcd_client::Client::connect([&self.endpoint], self.options()).await.expect("etcd connect");
        let r = c.get(prefix, Some(etcd_client::GetOptions::new().with_prefix())).await.expect("etcd get");
        r.kvs()
            .iter()
            .map(|kv| {
                (kv.key_str().unwrap_or_default().to_string(), kv.value_str().unwrap_or_default().to_string())
            })
            .collect()
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
    }
}

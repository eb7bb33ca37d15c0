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
    /// `127.0.0.1:PORT`, for `--etcd-endpoints`.
    pub endpoint: String,
}

impl Etcd {
    /// Starts etcd and waits (up to a minute: a broken set-up, not a slow machine) until it
    /// answers.
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().expect("etcd dir");
        let (client_port, peer_port) = (super::free_port(), super::free_port());
        let mut this =
            Self { child: None, dir, client_port, peer_port, endpoint: format!("127.0.0.1:{client_port}") };
        this.restart().await;
        this
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
        let client = format!("http://127.0.0.1:{}", self.client_port);
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let child = Command::new("etcd")
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
            if let Ok(mut c) = etcd_client::Client::connect([&self.endpoint], None).await
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
        let mut c = etcd_client::Client::connect([&self.endpoint], None).await.expect("etcd connect");
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

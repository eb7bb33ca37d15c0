//! llama.cpp's own OpenAI-compatible server (PyPI `llama-cpp-python[server]`, installed by
//! scripts/setup into `$RAGD_HOME/llm-venv`) serving the same GGUF as the embedded backend: the
//! real server the generator's openai backend is tested against, and the benchmark baseline.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A running `python -m llama_cpp.server`; killed on drop.
#[derive(Debug)]
pub struct LlamaCppServer {
    child: Child,
    /// Base URL of its OpenAI API, e.g. `http://127.0.0.1:PORT/v1`.
    pub base_url: String,
}

/// The venv's python.
pub fn python() -> PathBuf {
    let p = super::ragd_home().join("llm-venv/bin/python");
    assert!(p.is_file(), "{} missing: run scripts/setup --with-test", p.display());
    p
}

impl LlamaCppServer {
    /// Starts the server on a free loopback port with `n_ctx` tokens of context, `threads` CPU
    /// threads and an optional API key; waits (up to 2 minutes: a broken set-up, not a slow
    /// machine) until `/v1/models` answers.
    pub async fn start(n_ctx: usize, threads: usize, api_key: Option<&str>) -> Self {
        let port = super::free_port();
        let mut cmd = Command::new(python());
        cmd.args(["-m", "llama_cpp.server", "--host", "127.0.0.1"])
            .args(["--port", &port.to_string()])
            .arg("--model")
            .arg(super::llm_model())
            .args(["--model_alias", "smollm2"])
            .args(["--n_ctx", &n_ctx.to_string()])
            .args(["--n_threads", &threads.to_string(), "--n_threads_batch", &threads.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(k) = api_key {
            cmd.args(["--api_key", k]);
        }
        let child = cmd.spawn().expect("spawn llama_cpp.server");
        let this = Self { child, base_url: format!("http://127.0.0.1:{port}/v1") };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        while !this.answers(port).await {
            assert!(tokio::time::Instant::now() < deadline, "llama_cpp.server did not start on port {port}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        this
    }

    /// True once the server answers HTTP at all (401 included: it is up).
    async fn answers(&self, port: u16) -> bool {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else { return false };
        if s.write_all(b"GET /v1/models HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.is_err() {
            return false;
        }
        let mut head = [0u8; 12];
        s.read_exact(&mut head).await.is_ok() && head.starts_with(b"HTTP/1.1")
    }
}

impl Drop for LlamaCppServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

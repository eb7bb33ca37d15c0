//! Real `ragd` processes for multi-process tests: started with `--listen 127.0.0.1:0`, their
//! address read from the `RAGD_LISTENING` line, stopped with real signals.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

/// The `ragd` binary: `$RAGD_BIN`, else the one cargo built next to this test executable.
pub fn ragd_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("RAGD_BIN") {
        return p.into();
    }
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/deps/<test> → target/<profile>/ragd
    let bin = exe.parent().and_then(|d| d.parent()).expect("target dir").join("ragd");
    assert!(bin.is_file(), "{} not built: run `cargo build -p ragd` first (make test does)", bin.display());
    bin
}

/// The `loadgen` binary (ragd-bench), built next to `ragd` (`make test` builds both).
pub fn loadgen_bin() -> PathBuf {
    let bin = ragd_bin().with_file_name("loadgen");
    assert!(
        bin.is_file(),
        "{} not built: run `cargo build -p ragd-bench --bins` first (make test does)",
        bin.display()
    );
    bin
}

/// A running `ragd serve ...` child process; killed on drop.
#[derive(Debug)]
pub struct RagdProcess {
    child: Child,
    pub addr: String,
}

impl RagdProcess {
    /// Spawns `ragd <args>` and reads `n` `RAGD_LISTENING <service> <addr>` lines from its stdout.
    fn spawn(args: &[&str], envs: &[(&str, String)], n: usize) -> (Child, Vec<(String, String)>) {
        Self::spawn_with(args, envs, n, Stdio::inherit())
    }

    fn spawn_with(
        args: &[&str],
        envs: &[(&str, String)],
        n: usize,
        stderr: Stdio,
    ) -> (Child, Vec<(String, String)>) {
        let mut cmd = Command::new(ragd_bin());
        cmd.args(args).current_dir(super::repo_root()).stdout(Stdio::piped()).stderr(stderr);
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn ragd");
        let mut out = BufReader::new(child.stdout.take().expect("stdout"));
        let mut listening = Vec::new();
        for _ in 0..n {
            let mut line = String::new();
            out.read_line(&mut line).expect("read RAGD_LISTENING line");
            match line.split_whitespace().collect::<Vec<_>>()[..] {
                ["RAGD_LISTENING", service, addr] => listening.push((service.to_string(), addr.to_string())),
                _ => panic!("unexpected line {line:?}"),
            }
        }
        (child, listening)
    }

    /// Runs `ragd serve <service> --listen 127.0.0.1:0 <args>` and waits for its address.
    pub fn serve(service: &str, args: &[&str], envs: &[(&str, String)]) -> Self {
        let mut all = vec!["serve", service, "--listen", "127.0.0.1:0"];
        all.extend_from_slice(args);
        let (child, mut listening) = Self::spawn(&all, envs, 1);
        let (named, addr) = listening.remove(0);
        assert_eq!(named, service);
        Self { child, addr }
    }

    /// Like [`RagdProcess::serve`], with the process's log (stderr) written to `log`.
    pub fn serve_logged(
        service: &str,
        args: &[&str],
        envs: &[(&str, String)],
        log: &std::path::Path,
    ) -> Self {
        let mut all = vec!["serve", service, "--listen", "127.0.0.1:0"];
        all.extend_from_slice(args);
        let file = std::fs::File::create(log).expect("log file");
        let (child, mut listening) = Self::spawn_with(&all, envs, 1, Stdio::from(file));
        let (named, addr) = listening.remove(0);
        assert_eq!(named, service);
        Self { child, addr }
    }

    /// The process id (for sampling its resources in /proc).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The `host:port` the service listens on.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Runs `ragd up <args>` (all three services in one process) and reads the three
    /// `RAGD_LISTENING <service> <addr>` lines; returns the process (its `addr` is the
    /// generator's) and the URL of each service.
    pub fn up(args: &[&str], envs: &[(&str, String)]) -> (Self, std::collections::HashMap<String, String>) {
        let mut cmd = Command::new(ragd_bin());
        cmd.arg("up")
            .args(args)
            .current_dir(super::repo_root())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn ragd up");
        let mut out = BufReader::new(child.stdout.take().expect("stdout"));
        let mut urls = std::collections::HashMap::new();
        for _ in 0..3 {
            let mut line = String::new();
            out.read_line(&mut line).expect("read RAGD_LISTENING line");
            let mut parts = line.split_whitespace();
            match (parts.next(), parts.next(), parts.next()) {
                (Some("RAGD_LISTENING"), Some(service), Some(addr)) => {
                    urls.insert(service.to_string(), format!("http://{addr}"));
                }
                _ => panic!("unexpected line {line:?}"),
            }
        }
        let addr = urls["generator"].trim_start_matches("http://").to_string();
        (Self { child, addr }, urls)
    }

    /// `ragd up` on free ports over `data_dir`, with the set-up SmolLM2 GGUF, MiniLM, quiet logs
    /// (`RUST_LOG=warn`) and `extra` flags: the process and the three URLs by service name.
    pub fn up_quiet(
        data_dir: &std::path::Path,
        extra: &[&str],
    ) -> (Self, std::collections::HashMap<String, String>) {
        let (dir, llm) = (data_dir.display().to_string(), crate::llm_model().display().to_string());
        let mut env = model_env();
        env.push(("RUST_LOG", "warn".into()));
        let mut args = vec!["--embedder-port", "0", "--indexer-port", "0", "--generator-port", "0"];
        args.extend(["--data-dir", &dir, "--llm-model", &llm]);
        args.extend_from_slice(extra);
        Self::up(&args, &env)
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Sends a signal (e.g. "TERM", "KILL") with kill(1).
    pub fn signal(&self, name: &str) {
        let ok = Command::new("kill").arg(format!("-{name}")).arg(self.child.id().to_string()).status();
        assert!(ok.map(|s| s.success()).unwrap_or(false), "kill -{name} failed");
    }

    /// Waits for the process to exit, at most `limit`.
    pub fn wait(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = std::time::Instant::now() + limit;
        loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            if std::time::Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for RagdProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Asserts that a process [`RagdProcess::wait`]ed for exited with status 0, saying otherwise how
/// it ended (its exit code or the signal that killed it) or that it was still running.
pub fn assert_clean_stop(status: Option<ExitStatus>) {
    match status {
        Some(s) if s.success() => {}
        Some(s) => panic!("clean stop: the process ended with {s}"),
        None => panic!("clean stop: the process was still running at the deadline"),
    }
}

/// Runs a `ragd` client verb to completion: (success, stdout, stderr).
pub fn ragd_cli(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(ragd_bin()).args(args).current_dir(super::repo_root()).output().expect("run ragd");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Environment for `ragd serve embedder` with the set-up MiniLM model and ONNX Runtime.
pub fn model_env() -> Vec<(&'static str, String)> {
    let home = crate::ragd_home();
    vec![
        ("RAGD_MODELS_DIR", home.join("models").display().to_string()),
        ("RAGD_ORT_LIBRARY", home.join("lib/libonnxruntime.so.1.31.1").display().to_string()),
        ("RAGD_MODELS", "all-MiniLM-L6-v2".to_string()),
    ]
}

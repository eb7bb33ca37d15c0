//! A real container cluster on a private podman network: etcd (Debian's etcd-server in its own
//! image), two embedders, an indexer with its data on a podman volume and a generator — each its
//! own container with its own address, finding the others through etcd — with TLS (mutual) and
//! API keys on every hop, including etcd. From the host: ingest the capitals, ask through the
//! generator, then
//! - kill one embedder container under load (< 1 % of the searches fail),
//! - disconnect the indexer from the network and reconnect it (every acknowledged write is still
//!   there, searches and asks recover),
//! - restart the indexer container (its volume keeps the data),
//! - stop everything (each container exits 0).
//!
//! The image is the one `scripts/build-image` makes (deploy/Containerfile), from the debug
//! binary this test run built (`--debug`, debug info stripped), so the test checks the image
//! recipe and the binary under test together. Needs root and podman (scripts/setup --with-test
//! installs podman, runc and debootstrap); the Debian base is made once (~3 min) and cached.
//! It is `#[ignore]`d for a plain `cargo test` (counted as ignored, never as passed) and run by
//! `make test` on its own, after the other tests, with `--ignored`; `RAGD_CONTAINER_TESTS=0`
//! skips it there with a SKIPPED line (scripts/fresh-check's container cannot run podman).

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use ragd_core::auth::key_digest_hex;
use ragd_core::pki::{Ca, write};
use ragd_core::tls::{ClientTls, ClientTlsArgs};
use ragd_proto::v1::{self, generator_client::GeneratorClient, indexer_client::IndexerClient};
use ragd_tests::process::{loadgen_bin, ragd_bin};
use ragd_tests::{capitals, capitals_search, collect_ask, ragd_home, repo_root};
use tonic::transport::Channel;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

const IMAGE: &str = "localhost/ragd:containers-test";
const ETCD_IMAGE: &str = "localhost/ragd-etcd:3.4";
/// Container user ids of the two images (deploy/Containerfile, deploy/etcd.Containerfile).
const RAGD_UID: u32 = 10001;
const ETCD_UID: u32 = 10002;

/// `scripts/pm <args>` (rootful podman with this machine's settings): its stdout, or a panic
/// with its stderr.
fn pm(args: &[&str]) -> String {
    let out = Command::new(repo_root().join("scripts/pm")).args(args).output().expect("run scripts/pm");
    assert!(
        out.status.success(),
        "podman {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Same, without asserting success (clean-up, probes).
fn pm_try(args: &[&str]) -> bool {
    Command::new(repo_root().join("scripts/pm"))
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Everything this test creates in podman, removed on drop (also when the test fails). The
/// containers' logs are printed first, so a failure shows what each container said.
struct Podman {
    containers: Vec<String>,
    network: String,
    volume: String,
    print_logs: bool,
}

impl Drop for Podman {
    fn drop(&mut self) {
        for c in &self.containers {
            if self.print_logs || std::thread::panicking() {
                let out =
                    Command::new(repo_root().join("scripts/pm")).args(["logs", "--tail", "30", c]).output();
                if let Ok(o) = out {
                    eprintln!(
                        "--- {c} (last lines) ---\n{}{}",
                        String::from_utf8_lossy(&o.stdout),
                        String::from_utf8_lossy(&o.stderr)
                    );
                }
            }
            pm_try(&["rm", "-f", "-t", "0", c]);
        }
        pm_try(&["network", "rm", "-f", &self.network]);
        pm_try(&["volume", "rm", "-f", &self.volume]);
    }
}

/// TLS material and keys for the cluster, in two copies: one readable by the ragd user, one by
/// etcd's (the containers run as those users and the files are owner-only).
struct Material {
    dir: tempfile::TempDir,
    admin: String,
}

impl Material {
    fn new(ips: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = Ca::new("ragd container test CA").expect("ca");
        let mut sans = vec!["localhost"];
        sans.extend_from_slice(ips);
        let server = ca.leaf("ragd", &sans).expect("server cert");
        let client = ca.client("ragd-service").expect("client cert");
        let key = |n: &str| format!("ragd_ct_{n}_{}", std::process::id());
        let (admin, indexer, generator) = (key("admin"), key("indexer"), key("generator"));
        let entry = |name: &str, k: &str, grants: &str| {
            format!(
                "[[keys]]\nname = \"{name}\"\nsha256 = \"{}\"\ngrants = [{grants}]\n\n",
                key_digest_hex(k)
            )
        };
        let keys = entry(
            "admin",
            &admin,
            r#"{ collection = "*", role = "manage" }, { service = "embed" }, { service = "generate" }"#,
        ) + &entry("indexer", &indexer, r#"{ service = "embed" }"#)
            + &entry("generator", &generator, r#"{ collection = "*", role = "read" }"#);
        for (sub, uid) in [("ragd", RAGD_UID), ("etcd", ETCD_UID)] {
            let d = dir.path().join(sub);
            std::fs::create_dir_all(&d).expect("mkdir");
            let p = |n: &str| d.join(n);
            write(&p("ca.pem"), &ca.cert_pem).expect("write");
            write(&p("server.pem"), &server.cert_pem).expect("write");
            write(&p("server-key.pem"), &server.key_pem).expect("write");
            write(&p("client.pem"), &client.cert_pem).expect("write");
            write(&p("client-key.pem"), &client.key_pem).expect("write");
            write(&p("keys.toml"), &keys).expect("write");
            write(&p("indexer.key"), &indexer).expect("write");
            write(&p("generator.key"), &generator).expect("write");
            for f in std::fs::read_dir(&d).expect("ls") {
                std::os::unix::fs::chown(f.expect("entry").path(), Some(uid), Some(uid)).expect("chown");
            }
            std::os::unix::fs::chown(&d, Some(uid), Some(uid)).expect("chown");
        }
        Self { dir, admin }
    }

    fn host_path(&self, sub: &str, file: &str) -> PathBuf {
        self.dir.path().join(sub).join(file)
    }

    fn mount(&self, sub: &str) -> String {
        format!("{}:/tls:ro", self.dir.path().join(sub).display())
    }

    fn client_tls(&self) -> ClientTls {
        ClientTls::new(&ClientTlsArgs {
            upstream_tls_ca: Some(self.host_path("ragd", "ca.pem")),
            upstream_tls_cert: Some(self.host_path("ragd", "client.pem")),
            upstream_tls_key: Some(self.host_path("ragd", "client-key.pem")),
            ..ClientTlsArgs::default()
        })
        .expect("client tls")
    }
}

fn req<T>(msg: T, key: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut().insert("authorization", format!("Bearer {key}").parse().expect("header"));
    r.set_timeout(Duration::from_secs(60));
    r
}

async fn connect(url: &str, tls: &ClientTls) -> Option<Channel> {
    ragd_core::client::connect_with(url, Some(tls.clone())).await.ok()
}

/// Waits until `url`'s grpc.health.v1 says `service` is SERVING.
async fn wait_serving(url: &str, tls: &ClientTls, service: &str, limit: Duration) {
    let deadline = Instant::now() + limit;
    let mut last: String;
    loop {
        if let Some(ch) = connect(url, tls).await {
            match HealthClient::new(ch).check(HealthCheckRequest { service: service.into() }).await {
                Ok(r) if r.get_ref().status == 1 => return,
                Ok(r) => last = format!("status {}", r.get_ref().status),
                Err(e) => last = format!("{e:?}"),
            }
        } else {
            last = "no connection".into();
        }
        assert!(Instant::now() < deadline, "{service} at {url} not serving after {limit:?}: {last}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn ask_text(url: &str, tls: &ClientTls, key: &str, question: &str) -> Result<String, tonic::Status> {
    let ch = connect(url, tls).await.ok_or_else(|| tonic::Status::unavailable("no connection"))?;
    let s = GeneratorClient::new(ch)
        .ask(req(
            v1::AskRequest {
                question: question.into(),
                collection: "capitals".into(),
                k: 4,
                sampling: Some(v1::Sampling { max_tokens: 24, ..Default::default() }),
                ..Default::default()
            },
            key,
        ))
        .await?
        .into_inner();
    Ok(collect_ask(s).await.1)
}

/// The documents of the collection (DescribeCollection).
async fn document_count(url: &str, tls: &ClientTls, key: &str) -> Result<u64, tonic::Status> {
    let ch = connect(url, tls).await.ok_or_else(|| tonic::Status::unavailable("no connection"))?;
    let r = IndexerClient::new(ch)
        .describe_collection(req(v1::DescribeCollectionRequest { name: "capitals".into() }, key))
        .await?;
    Ok(r.into_inner().documents)
}

fn exit_code(container: &str) -> i64 {
    pm(&["inspect", "--format", "{{.State.ExitCode}}", container]).parse().expect("exit code")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root and podman: `make test` runs it (cargo test --workspace --test it -- --ignored containers::)"]
async fn a_container_cluster_with_tls_and_keys_survives_kills_partitions_and_restarts() {
    // The images: ragd from this run's binary, etcd from Debian's package.
    let bin = ragd_bin();
    let out = Command::new(repo_root().join("scripts/build-image"))
        .args(["--debug", "--etcd", "--tag", IMAGE])
        .env("RAGD_IMAGE_BINARY", &bin)
        .output()
        .expect("run scripts/build-image");
    assert!(out.status.success(), "scripts/build-image failed:\n{}", String::from_utf8_lossy(&out.stderr));
    eprintln!("images built: {}", String::from_utf8_lossy(&out.stdout).trim());

    // A private network with fixed addresses (the certificates name them).
    let id = std::process::id();
    let net = format!("ragd-ct-{id}");
    let subnet_byte = 100 + id % 150;
    let ip = |host: u32| format!("10.213.{subnet_byte}.{host}");
    let names = ["etcd", "embedder-1", "embedder-2", "indexer", "generator"];
    let ips: Vec<String> = (0..names.len() as u32).map(|i| ip(10 + i)).collect();
    let addr_of = |name: &str| ips[names.iter().position(|n| *n == name).expect("known")].clone();
    let mut podman = Podman {
        containers: names.iter().map(|n| format!("ragd-ct-{id}-{n}")).collect(),
        network: net.clone(),
        volume: format!("ragd-ct-{id}-indexer-data"),
        print_logs: std::env::var_os("RAGD_CONTAINER_LOGS").is_some(),
    };
    let cname = |name: &str| format!("ragd-ct-{id}-{name}");
    pm(&["network", "create", "--subnet", &format!("10.213.{subnet_byte}.0/24"), &net]);
    pm(&["volume", "create", &podman.volume]);
    let m = Material::new(&ips.iter().map(String::as_str).collect::<Vec<_>>());
    let tls = m.client_tls();

    // etcd with TLS for clients and client-certificate authentication.
    let etcd_url = format!("https://{}:2379", addr_of("etcd"));
    pm(&[
        "run",
        "-d",
        "--name",
        &cname("etcd"),
        "--network",
        &net,
        "--ip",
        &addr_of("etcd"),
        "-v",
        &m.mount("etcd"),
        ETCD_IMAGE,
        "--name",
        "ct",
        "--data-dir",
        "/var/lib/etcd/data",
        "--listen-client-urls",
        "https://0.0.0.0:2379",
        "--advertise-client-urls",
        &etcd_url,
        "--listen-peer-urls",
        "http://127.0.0.1:2380",
        "--initial-advertise-peer-urls",
        "http://127.0.0.1:2380",
        "--initial-cluster",
        "ct=http://127.0.0.1:2380",
        "--cert-file",
        "/tls/server.pem",
        "--key-file",
        "/tls/server-key.pem",
        "--trusted-ca-file",
        "/tls/ca.pem",
        "--client-cert-auth",
    ]);

    // The ragd services: every hop TLS with client certificates; each service its own key.
    let common = |name: &str, port: u16| -> Vec<String> {
        [
            "--listen",
            &format!("0.0.0.0:{port}"),
            "--advertise-addr",
            &format!("https://{}:{port}", addr_of(name)),
            "--tls-cert",
            "/tls/server.pem",
            "--tls-key",
            "/tls/server-key.pem",
            "--tls-client-ca",
            "/tls/ca.pem",
            "--auth-keys-file",
            "/tls/keys.toml",
            "--require-auth",
            "--upstream-tls-ca",
            "/tls/ca.pem",
            "--upstream-tls-cert",
            "/tls/client.pem",
            "--upstream-tls-key",
            "/tls/client-key.pem",
            "--etcd-endpoints",
            &etcd_url,
            "--etcd-tls-ca",
            "/tls/ca.pem",
            "--etcd-tls-cert",
            "/tls/client.pem",
            "--etcd-tls-key",
            "/tls/client-key.pem",
            "--cluster",
            "ct",
            "--lease-ttl-secs",
            "2",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let models = format!("{}:/models:ro", ragd_home().join("models").display());
    let run = |name: &str, extra_podman: &[&str], role: &str, port: u16, extra: &[&str]| {
        let mut args: Vec<String> =
            ["run", "-d", "--name", &cname(name), "--network", &net, "--ip", &addr_of(name)]
                .iter()
                .map(|s| s.to_string())
                .collect();
        args.extend(["-v".to_string(), m.mount("ragd"), "-v".to_string(), models.clone()]);
        args.extend(extra_podman.iter().map(|s| s.to_string()));
        args.extend([IMAGE.to_string(), "serve".into(), role.into()]);
        args.extend(common(name, port));
        args.extend(extra.iter().map(|s| s.to_string()));
        pm(&args.iter().map(String::as_str).collect::<Vec<_>>());
    };
    let url = |name: &str, port: u16| format!("https://{}:{port}", addr_of(name));
    run("embedder-1", &[], "embedder", 50051, &["--models", "all-MiniLM-L6-v2"]);
    run("embedder-2", &[], "embedder", 50051, &["--models", "all-MiniLM-L6-v2"]);
    let volume = format!("{}:/data", podman.volume);
    run(
        "indexer",
        &["-v", &volume],
        "indexer",
        50052,
        &["--embedder-url", "etcd", "--upstream-key-file", "/tls/indexer.key", "--data-dir", "/data/indexer"],
    );
    run(
        "generator",
        &[],
        "generator",
        50053,
        &["--indexer-url", "etcd", "--upstream-key-file", "/tls/generator.key", "--llm-parallel", "1"],
    );
    let (e1, e2, indexer, generator) =
        (url("embedder-1", 50051), url("embedder-2", 50051), url("indexer", 50052), url("generator", 50053));
    for (u, s) in [
        (&e1, "ragd.v1.Embedder"),
        (&e2, "ragd.v1.Embedder"),
        (&indexer, "ragd.v1.Indexer"),
        (&generator, "ragd.v1.Generator"),
    ] {
        wait_serving(u, &tls, s, Duration::from_secs(240)).await;
    }

    // Ingest the capitals through the indexer (its embedders found through etcd), then ask.
    let key = m.admin.clone();
    let mut idx = IndexerClient::new(connect(&indexer, &tls).await.expect("connect indexer"));
    idx.create_collection(req(
        v1::CreateCollectionRequest { name: "capitals".into(), ..Default::default() },
        &key,
    ))
    .await
    .expect("create");
    let documents: Vec<v1::Document> = capitals()
        .into_iter()
        .map(|(country, city)| v1::Document {
            id: country.clone(),
            text: format!("The capital of {country} is {city}."),
            metadata: None,
            vector: Vec::new(),
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        // Until the indexer has seen the embedders' registrations, upserts answer UNAVAILABLE.
        match idx
            .upsert_batch(req(
                v1::UpsertRequest { collection: "capitals".into(), documents: documents.clone() },
                &key,
            ))
            .await
        {
            Ok(r) if r.get_ref().failed.is_empty() => {
                assert_eq!(r.get_ref().documents, 238);
                break;
            }
            other => assert!(Instant::now() < deadline, "ingest: {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let text = ask_text(&generator, &tls, &key, "What is the capital of Germany?").await.expect("ask");
    assert!(text.contains("Berlin"), "{text:?}");
    // Without a key, the cluster refuses the host's call.
    let refused = IndexerClient::new(connect(&indexer, &tls).await.expect("connect"))
        .search(capitals_search("capital of France"))
        .await
        .expect_err("no key");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");

    // 1. Kill one embedder container under load: fewer than 1 % of the searches fail.
    let load = Command::new(loadgen_bin())
        .args(["search", "--endpoint", &indexer, "--collection", "capitals", "--k", "3"])
        .args(["--clients", "4", "--connections", "2", "--duration-secs", "10", "--warmup-secs", "0"])
        .args(["--tries", "1"])
        .args(["--upstream-tls-ca", &m.host_path("ragd", "ca.pem").display().to_string()])
        .args(["--upstream-tls-cert", &m.host_path("ragd", "client.pem").display().to_string()])
        .args(["--upstream-tls-key", &m.host_path("ragd", "client-key.pem").display().to_string()])
        .env("RAGD_API_KEY", &key)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn loadgen");
    tokio::time::sleep(Duration::from_secs(3)).await;
    pm(&["kill", &cname("embedder-1")]);
    let out =
        tokio::task::spawn_blocking(move || load.wait_with_output()).await.expect("join").expect("loadgen");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("loadgen report");
    eprintln!("loadgen through the embedder container's kill: {report}");
    let (ok, failed) =
        (report["requests_ok"].as_u64().unwrap_or(0), report["requests_failed"].as_u64().unwrap_or(0));
    assert!(ok > 0, "{report}");
    assert!(failed * 100 < ok + failed, "{failed} of {} searches failed: {report}", ok + failed);

    // 2. Disconnect the indexer from the network and reconnect it. Writes acknowledged before
    //    the cut are all there after it; searches and asks come back.
    let extra = |n: usize| v1::Document {
        id: format!("extra-{n}"),
        text: format!("Extra document number {n} about the container partition test."),
        metadata: None,
        vector: Vec::new(),
    };
    for n in 0..20 {
        let r = idx
            .upsert_batch(req(
                v1::UpsertRequest { collection: "capitals".into(), documents: vec![extra(n)] },
                &key,
            ))
            .await
            .expect("upsert before the cut");
        assert!(r.get_ref().failed.is_empty(), "{:?}", r.get_ref().failed);
    }
    let acknowledged = 238 + 20;
    assert_eq!(document_count(&indexer, &tls, &key).await.expect("describe"), acknowledged);
    pm(&["network", "disconnect", &net, &cname("indexer")]);
    // Longer than the lease: etcd drops the indexer's registration.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let cut = tokio::time::timeout(Duration::from_secs(10), document_count(&indexer, &tls, &key)).await;
    assert!(!matches!(cut, Ok(Ok(_))), "the indexer answered while disconnected: {cut:?}");
    pm(&["network", "connect", "--ip", &addr_of("indexer"), &net, &cname("indexer")]);
    let deadline = Instant::now() + Duration::from_secs(60);
    let count = loop {
        match document_count(&indexer, &tls, &key).await {
            Ok(n) => break n,
            Err(e) => assert!(Instant::now() < deadline, "indexer not back after reconnecting: {e:?}"),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(count, acknowledged, "acknowledged writes lost across the partition");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        // The generator finds the indexer again when it re-registers.
        match ask_text(&generator, &tls, &key, "What is the capital of France?").await {
            Ok(t) if t.contains("Paris") => break,
            other => {
                assert!(Instant::now() < deadline, "asks did not recover after the partition: {other:?}")
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // 3. Restart the indexer container: the data on its volume is intact.
    pm(&["restart", "-t", "30", &cname("indexer")]);
    wait_serving(&indexer, &tls, "ragd.v1.Indexer", Duration::from_secs(120)).await;
    assert_eq!(document_count(&indexer, &tls, &key).await.expect("describe after restart"), acknowledged);
    let mut idx = IndexerClient::new(connect(&indexer, &tls).await.expect("connect"));
    let hits = idx
        .search(req(capitals_search("What is the capital of Japan?"), &key))
        .await
        .expect("search after restart");
    assert_eq!(hits.into_inner().results[0].hits[0].doc_id, "Japan");

    // 4. Stop everything cleanly: each ragd container drains and exits 0 on SIGTERM (the
    //    killed embedder aside); etcd last (it re-raises the signal: 143 is its clean stop).
    for name in ["generator", "indexer", "embedder-2"] {
        pm(&["stop", "-t", "30", &cname(name)]);
        assert_eq!(exit_code(&cname(name)), 0, "{name} did not stop cleanly");
    }
    pm(&["stop", "-t", "30", &cname("etcd")]);
    assert!([0, 143].contains(&exit_code(&cname("etcd"))), "etcd did not stop cleanly");
    podman.print_logs = false;
}

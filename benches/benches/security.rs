//! What TLS and access control cost, in one run on one machine, written to docs/benchmarks.md:
//! the same RPCs against the same services started twice in this process — open and plaintext
//! (the baseline), and with TLS (rustls, ECDSA P-256 certificate, TLS 1.3) plus an API key
//! checked on every call (keys file, per-collection grants).
//!
//! - **search**: `Search` by raw vector (k = 10, one query per request) on a 2 000-chunk
//!   collection, 8 closed-loop clients over 2 connections: a cheap RPC, so the per-call cost of
//!   TLS and the credential check is the largest share it can be;
//! - **embed**: `Embed` of one 12-word text per call, 8 clients: an RPC bound by inference.
//!
//! Both modes alternate within each round, back to back for the same RPC, and the ratio is taken
//! within a round (the VM drifts); the table gives every round and the median ratio (target ≥
//! 0.95×). All search rounds run first, then all embed rounds, so the two cells compared are
//! always adjacent and of the same RPC.
//!
//! Both pairs serve **copies of one filled storage directory**: the collection is filled once
//! through an open pair, which is stopped, and its directory copied for the TLS pair. Earlier
//! versions filled each pair's collection separately, and the two collections' segment layouts
//! (how the 2 000 points fell into segments, which decides the scan's cost) differed; that
//! difference, not TLS, was most of the 0.89–0.94× those runs measured. A CPU profile (perf, one
//! mode at a time with `RAGD_BENCH_PROFILE_MODE`) of the TLS search cells puts rustls and ring at
//! ~2 % of the samples and the key check (hash, grant lookup, per-principal counter) below
//! 0.2 %, and the system calls per call (strace -c) are the same in both modes.
//! Beside throughput, each cell reports the process's CPU time per call (user + system, from
//! /proc/self/stat, client and server together since both run here): what the call costs
//! the machine; time stolen from the VM does not count in it (it still varies ±10 % from cell to
//! cell with the neighbours' use of caches and memory).
//! `cargo bench -p ragd-bench --bench security`; `RAGD_BENCH_SECS` sets each pair of cells
//! (default 10 s: 5 s per mode), `RAGD_BENCH_ROUNDS` the rounds (default 15);
//! `RAGD_BENCH_SEARCH_ONLY=1` measures only the search cells (for profiling; then the figures are
//! printed, not written to docs/benchmarks.md); `RAGD_BENCH_PROFILE_MODE=on|off` runs only that
//! mode's search cells, for a profiler.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ragd_bench::{LoadConfig, LoadReport, Mode, bench_secs, median, report, run, sample_texts};
use ragd_core::config::DEFAULT_MAX_MESSAGE_BYTES;
use ragd_core::security::{ClientSecurity, Credential, SecurityConfig, UpstreamArgs};
use ragd_core::tls::{ClientTlsArgs, ServerTlsArgs};
use ragd_core::upstream::Upstream;
use ragd_embedder::EmbedderConfig;
use ragd_indexer::IndexerConfig;
use ragd_proto::v1::{self, embedder_client::EmbedderClient, indexer_client::IndexerClient};

const DOCS: usize = 2000;
const CLIENTS: usize = 8;
const KEY: &str = "ragd_bench_key_0123456789abcdefghijklmnopqrstuvwxyz";

fn rounds() -> usize {
    std::env::var("RAGD_BENCH_ROUNDS").ok().and_then(|s| s.parse().ok()).unwrap_or(15)
}

/// CPU time this process has used (user + system), from /proc/self/stat.
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest: Vec<&str> = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("").split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line: 11 and 12 counted from the state (3).
    let field = |i: usize| rest.get(i).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
    // In clock ticks: USER_HZ, 100 on Linux.
    Duration::from_secs_f64((field(11) + field(12)) as f64 / 100.0)
}

/// A load run with the CPU time it cost per completed call.
async fn measured<F: std::future::Future<Output = LoadReport>>(f: F) -> (LoadReport, f64) {
    let before = cpu_time();
    let r = f.await;
    let cpu = (cpu_time() - before).as_secs_f64();
    let calls = (r.requests_ok + r.requests_failed).max(1) as f64;
    (r, cpu / calls * 1e6)
}

/// One pair of services (embedder + indexer) and how clients reach them.
struct Pair {
    embedder: String,
    indexer: String,
    client: ClientSecurity,
    stops: Vec<tokio::sync::oneshot::Sender<()>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

fn security(dir: &Path, on: bool) -> SecurityConfig {
    if !on {
        return SecurityConfig::default();
    }
    let mut s = SecurityConfig {
        tls: ServerTlsArgs {
            tls_cert: Some(dir.join("server.pem")),
            tls_key: Some(dir.join("server-key.pem")),
            tls_client_ca: None,
        },
        auth_keys_file: Some(dir.join("keys.toml")),
        ..SecurityConfig::default()
    };
    s.upstream = UpstreamArgs {
        tls: ClientTlsArgs { upstream_tls_ca: Some(dir.join("ca.pem")), ..ClientTlsArgs::default() },
        upstream_key_file: None,
        credential: Some(Credential::bearer(KEY).expect("credential")),
    };
    s
}

async fn start_pair(dir: &Path, data: &Path, on: bool) -> Pair {
    let scheme = if on { "https" } else { "http" };
    let bind = || async { tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind") };
    let (el, il) = (bind().await, bind().await);
    let embedder = format!("{scheme}://{}", el.local_addr().expect("addr"));
    let indexer = format!("{scheme}://{}", il.local_addr().expect("addr"));
    let (e_stop, e_rx) = tokio::sync::oneshot::channel::<()>();
    let (i_stop, i_rx) = tokio::sync::oneshot::channel::<()>();
    let home = ragd_bench::ragd_home();
    let e_config = EmbedderConfig {
        models_dir: home.join("models"),
        ort_library: home.join("lib/libonnxruntime.so.1.31.1"),
        models: vec!["all-MiniLM-L6-v2".into()],
        security: security(dir, on),
        ..EmbedderConfig::default()
    };
    let i_config = IndexerConfig {
        data_dir: data.to_path_buf(),
        embedder_url: embedder.clone(),
        security: security(dir, on),
        ..IndexerConfig::default()
    };
    let e_task = tokio::spawn(async move {
        ragd_embedder::serve(e_config, el, async {
            let _ = e_rx.await;
        })
        .await
        .expect("embedder")
    });
    let i_task = tokio::spawn(async move {
        ragd_indexer::serve(i_config, il, async {
            let _ = i_rx.await;
        })
        .await
        .expect("indexer")
    });
    let mut client = ClientSecurity::start(&security(dir, on).upstream).expect("client security");
    if on {
        client = client.with_credential(Some(Credential::bearer(KEY).expect("credential")));
    }
    // The indexer stops first (it flushes its shards), then the embedder.
    Pair { embedder, indexer, client, stops: vec![i_stop, e_stop], tasks: vec![i_task, e_task] }
}

impl Pair {
    /// Stops both services and waits for them (before their data directories go away).
    async fn shutdown(self) {
        for (stop, task) in self.stops.into_iter().zip(self.tasks) {
            let _ = stop.send(());
            let _ = task.await;
        }
    }

    async fn channel(&self, url: &str) -> Upstream {
        let until = Instant::now() + Duration::from_secs(120);
        loop {
            if let Ok(ch) = ragd_core::client::connect_with(url, self.client.tls.clone()).await {
                return Upstream::fixed_with(ch, self.client.clone());
            }
            assert!(Instant::now() < until, "{url} never accepted a connection");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn indexer_client(&self) -> IndexerClient<Upstream> {
        IndexerClient::new(self.channel(&self.indexer).await)
            .max_decoding_message_size(DEFAULT_MAX_MESSAGE_BYTES)
    }

    async fn embedder_client(&self) -> EmbedderClient<Upstream> {
        EmbedderClient::new(self.channel(&self.embedder).await)
            .max_decoding_message_size(DEFAULT_MAX_MESSAGE_BYTES)
    }

    /// Waits until the indexer answers and the embedder has loaded its model.
    async fn ready(&self) {
        let mut i = self.indexer_client().await;
        let until = Instant::now() + Duration::from_secs(120);
        while i.list_collections(v1::ListCollectionsRequest {}).await.is_err() {
            assert!(Instant::now() < until, "indexer not ready");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut e = self.embedder_client().await;
        while e.embed(v1::EmbedRequest { texts: vec!["ready".into()], ..Default::default() }).await.is_err() {
            assert!(Instant::now() < until, "embedder not ready");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Creates the collection and ingests the documents; returns query vectors (embeddings of
    /// some of the documents).
    async fn fill(&self, texts: &[String]) -> Vec<Vec<f32>> {
        self.ready().await;
        let mut i = self.indexer_client().await;
        let until = Instant::now() + Duration::from_secs(120);
        // Until the embedder has loaded its model, creating a collection answers UNAVAILABLE.
        loop {
            match i
                .create_collection(v1::CreateCollectionRequest { name: "bench".into(), ..Default::default() })
                .await
            {
                Ok(_) => break,
                Err(s) if s.code() == tonic::Code::Unavailable && Instant::now() < until => {
                    tokio::time::sleep(Duration::from_millis(200)).await
                }
                Err(s) => panic!("create: {s}"),
            }
        }
        for (n, batch) in texts.chunks(250).enumerate() {
            let documents = batch
                .iter()
                .enumerate()
                .map(|(k, t)| v1::Document {
                    id: format!("d{}", n * 250 + k),
                    text: t.clone(),
                    metadata: None,
                    vector: Vec::new(),
                })
                .collect();
            let r = i
                .upsert_batch(v1::UpsertRequest { collection: "bench".into(), documents })
                .await
                .expect("upsert");
            assert!(r.get_ref().failed.is_empty(), "ingest failed: {:?}", r.get_ref().failed);
        }
        let mut e = self.embedder_client().await;
        let r = e
            .embed(v1::EmbedRequest { texts: texts[..100].to_vec(), ..Default::default() })
            .await
            .expect("embed")
            .into_inner();
        r.embeddings.into_iter().map(|e| e.values).collect()
    }

    async fn search(&self, queries: Arc<Vec<Vec<f32>>>, duration: Duration) -> LoadReport {
        let conns = [self.indexer_client().await, self.indexer_client().await];
        let config = LoadConfig { clients: CLIENTS, mode: Mode::Closed, duration, warmup: Duration::ZERO };
        run(&config, move |n| {
            let mut c = conns[n as usize % conns.len()].clone();
            let q = queries[n as usize % queries.len()].clone();
            async move {
                let r = c
                    .search(v1::SearchRequest {
                        collection: "bench".into(),
                        queries: vec![v1::Query {
                            query: Some(v1::query::Query::Vector(v1::Vector { values: q })),
                        }],
                        k: 10,
                        ..Default::default()
                    })
                    .await?;
                Ok(r.into_inner().results.len() as u64)
            }
        })
        .await
    }

    async fn embed(&self, texts: Arc<Vec<String>>, duration: Duration) -> LoadReport {
        let conns = [self.embedder_client().await, self.embedder_client().await];
        let config = LoadConfig { clients: CLIENTS, mode: Mode::Closed, duration, warmup: Duration::ZERO };
        run(&config, move |n| {
            let mut c = conns[n as usize % conns.len()].clone();
            let t = texts[n as usize % texts.len()].clone();
            async move {
                let r = c.embed(v1::EmbedRequest { texts: vec![t], ..Default::default() }).await?;
                Ok(r.into_inner().embeddings.len() as u64)
            }
        })
        .await
    }
}

/// Copies the directory tree `from` into `to` (which exists).
fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            std::fs::create_dir_all(&target)?;
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

fn material(dir: &Path) {
    let ca = ragd_core::pki::Ca::new("bench CA").expect("ca");
    let server = ca.leaf("ragd", &["localhost", "127.0.0.1"]).expect("cert");
    let w = |n: &str, s: &str| ragd_core::pki::write(&dir.join(n), s).expect("write");
    w("ca.pem", &ca.cert_pem);
    w("server.pem", &server.cert_pem);
    w("server-key.pem", &server.key_pem);
    w(
        "keys.toml",
        &format!(
            "[[keys]]\nname = \"bench\"\nsha256 = \"{}\"\ngrants = [{{ collection = \"*\", role = \"manage\" }}, {{ service = \"embed\" }}]\n",
            ragd_core::auth::key_digest_hex(KEY)
        ),
    );
}

struct Row {
    off: f64,
    on: f64,
    /// CPU µs per call, off and on.
    cpu_off: f64,
    cpu_on: f64,
    failed: u64,
}

fn row(off: (LoadReport, f64), on: (LoadReport, f64)) -> Row {
    Row {
        off: off.0.requests_per_sec,
        on: on.0.requests_per_sec,
        cpu_off: off.1,
        cpu_on: on.1,
        failed: off.0.requests_failed + on.0.requests_failed,
    }
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    material(dir.path());
    let (d_off, d_on) = (tempfile::tempdir().expect("tempdir"), tempfile::tempdir().expect("tempdir"));
    let secs = bench_secs();
    let cell = secs / 2;
    let search_only = std::env::var("RAGD_BENCH_SEARCH_ONLY").is_ok_and(|v| v == "1");
    let (search_rows, embed_rows) = rt.block_on(async {
        // One collection, filled once and copied: both pairs serve byte-identical storage, so
        // the segment layout (which decides the scan's cost) is not a difference between them.
        let texts = sample_texts(DOCS, 12);
        let filler = start_pair(dir.path(), d_off.path(), false).await;
        let queries = Arc::new(filler.fill(&texts).await);
        filler.shutdown().await;
        copy_dir(d_off.path(), d_on.path()).expect("copy the filled storage");
        let off = start_pair(dir.path(), d_off.path(), false).await;
        let on = start_pair(dir.path(), d_on.path(), true).await;
        off.ready().await;
        on.ready().await;
        let texts = Arc::new(texts);
        let (mut search_rows, mut embed_rows) = (Vec::new(), Vec::new());
        // Every search round first, then every embed round: the two cells compared are always
        // adjacent and of the same RPC.
        let pairs = |round: usize| if round % 2 == 1 { (&on, &off, true) } else { (&off, &on, false) };
        if let Ok(mode) = std::env::var("RAGD_BENCH_PROFILE_MODE") {
            // For a profiler: one mode's search cells only, printed, nothing written.
            let pair = if mode == "on" { &on } else { &off };
            for round in 0..rounds() {
                let (r, cpu) = measured(pair.search(queries.clone(), cell)).await;
                eprintln!(
                    "profile {mode} round {round}: {:.0} q/s, {cpu:.0} µs CPU/call",
                    r.requests_per_sec
                );
            }
            std::process::exit(0);
        }
        for round in 0..rounds() {
            let (first, second, on_first) = pairs(round);
            let x = measured(first.search(queries.clone(), cell)).await;
            let y = measured(second.search(queries.clone(), cell)).await;
            search_rows.push(if on_first { row(y, x) } else { row(x, y) });
            let r = &search_rows[round];
            eprintln!(
                "search round {round}: {:.0} → {:.0} q/s ({:.0} → {:.0} µs CPU/call)",
                r.off, r.on, r.cpu_off, r.cpu_on
            );
        }
        for round in 0..if search_only { 0 } else { rounds() } {
            let (first, second, on_first) = pairs(round);
            let x = measured(first.embed(texts.clone(), cell)).await;
            let y = measured(second.embed(texts.clone(), cell)).await;
            embed_rows.push(if on_first { row(y, x) } else { row(x, y) });
            let r = &embed_rows[round];
            eprintln!(
                "embed round {round}: {:.0} → {:.0} calls/s ({:.0} → {:.0} µs CPU/call)",
                r.off, r.on, r.cpu_off, r.cpu_on
            );
        }
        off.shutdown().await;
        on.shutdown().await;
        (search_rows, embed_rows)
    });
    let table = |name: &str, unit: &str, rows: &[Row]| {
        let mut t = format!(
            "| round | {name}: open, plaintext ({unit}) | TLS + API key ({unit}) | ratio | CPU µs/call: open | TLS + key | CPU ratio |\n|---:|---:|---:|---|---:|---:|---|\n"
        );
        for (i, r) in rows.iter().enumerate() {
            t += &format!(
                "| {} | {:.0} | {:.0} | {:.3}× | {:.0} | {:.0} | {:.3}× |\n",
                i + 1,
                r.off,
                r.on,
                r.on / r.off,
                r.cpu_off,
                r.cpu_on,
                r.cpu_on / r.cpu_off
            );
        }
        let m = median(rows.iter().map(|r| r.on / r.off).collect());
        let c = median(rows.iter().map(|r| r.cpu_on / r.cpu_off).collect());
        t += &format!("| **median** | | | **{m:.3}×** (target ≥ 0.95×) | | | {c:.3}× |\n");
        (t, m, c)
    };
    let (st, sm, sc) = table("search", "q/s", &search_rows);
    let (et, em, ec) = table("embed", "calls/s", &embed_rows);
    let failed: u64 = search_rows.iter().chain(&embed_rows).map(|r| r.failed).sum();
    let body = format!(
        "## Security: TLS + access control against plaintext and open\n\n\
         Measured by `cargo bench -p ragd-bench --bench security` in one run on: {machine}.\n\n\
         The same embedder + indexer pair started twice in the bench process on copies of one \
         filled storage directory (byte-identical collections): open and plaintext \
         (the baseline), and with TLS 1.3 (rustls, ECDSA P-256) and an API key checked on every call \
         (keys file, per-collection grant; the indexer's own hop to its embedder also TLS with its key). \
         {CLIENTS} closed-loop clients over 2 connections, {s:.0} s per cell, the two modes back to \
         back in each of {n} rounds (which goes first alternates), all search rounds before the \
         embed rounds; the ratio is taken within a round. CPU µs/call: the process's CPU time (user + system, clients and servers \
         together) over the calls completed — the cost per call, in which time stolen from the VM \
         does not count (a CPU ratio above 1 is the extra cost).\n\n\
         **search**: `Search` by raw vector, k = 10, one query per request, {DOCS} chunks (an RPC \
         dominated by its own overhead: the worst case for TLS).\n\n{st}\n\
         **embed**: `Embed` of one 12-word text per call (bound by inference).\n\n{et}\n\
         Failed requests: {failed}. Medians: search {sm:.3}× throughput, {sc:.3}× CPU per call; \
         embed {em:.3}× throughput, {ec:.3}× CPU per call.\n",
        machine = report::machine(),
        s = cell.as_secs_f64(),
        n = search_rows.len(),
    );
    if !search_only {
        report::update_section(&report::benchmarks_md(), "security", &body)
            .expect("write docs/benchmarks.md");
    }
    println!("{body}");
}

//! Goodput under overload: one embedder (real all-MiniLM-L6-v2 on ONNX Runtime, gRPC over
//! loopback) offered 4× the load it can serve, in three settings — latency-bounded admission
//! off (`--max-queue-wait-ms 0`: only the queue's size bounds it, the baseline), on with the
//! default bound, and on with a tight bound and small batches — each with callers that set no
//! deadline and callers with a 2 s deadline. Written to docs/benchmarks.md, section "overload".
//!
//! 1. **Unloaded**: one client in a closed loop, `Embed` of 8 twelve-word texts per call, on a
//!    server that refuses nothing for load: the latency (p99) admitted calls are compared with.
//! 2. **Saturated**: 32 clients in a closed loop on that server: the calls/s it serves flat out.
//! 3. **Overload**, per setting on a fresh server: an open loop at 4× that rate, up to 256 calls
//!    outstanding (calls scheduled while 256 are outstanding are counted as `ClientSaturated`,
//!    not sent), latency measured from each call's scheduled time (no coordinated omission), and
//!    every call scheduled in the window waited for. Goodput counts the calls answered OK within
//!    the window.
//!
//! The goal (issue 19): 0 errors other than RESOURCE_EXHAUSTED, admitted p99 ≤ 3× the unloaded
//! p99, goodput ≥ 90 % of the saturated rate, resident memory flat. `RAGD_BENCH_SECS` sets the
//! overload cells (default 60 s) and, scaled down, the baseline phases.
//! `RAGD_BENCH_OVERLOAD_SETTINGS=WAIT_MS[:BATCH_TEXTS],...` runs those settings instead, to
//! explore, and prints the table without writing it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ragd_bench::{LoadConfig, LoadReport, Mode, report, run, sample_texts};
use ragd_core::config::DEFAULT_MAX_MESSAGE_BYTES;
use ragd_embedder::EmbedderConfig;
use ragd_proto::v1::{self, embedder_client::EmbedderClient};
use tonic::transport::Channel;

const TEXTS_PER_CALL: usize = 8;
const SATURATING_CLIENTS: usize = 32;
const OUTSTANDING: usize = 256;
const CONNECTIONS: usize = 16;
const OVERLOAD: f64 = 4.0;
const DEADLINE: Duration = Duration::from_secs(2);
/// The tight setting: a short bound and small batches, for latency over throughput.
const TIGHT_WAIT_MS: u64 = 50;
const TIGHT_BATCH: usize = 16;

/// Resident set size of this process (VmRSS), in MiB.
fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next().and_then(|kb| kb.parse::<f64>().ok()))
        .map_or(0.0, |kb| kb / 1024.0)
}

struct Server {
    url: String,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

async fn start(max_queue_wait_ms: u64, max_batch_texts: Option<usize>) -> Server {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let home = ragd_bench::ragd_home();
    let config = EmbedderConfig {
        models_dir: home.join("models"),
        ort_library: home.join("lib/libonnxruntime.so.1.31.1"),
        models: vec!["all-MiniLM-L6-v2".into()],
        max_queue_wait_ms,
        ..EmbedderConfig::default()
    };
    let config =
        EmbedderConfig { max_batch_texts: max_batch_texts.unwrap_or(config.max_batch_texts), ..config };
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        ragd_embedder::serve(config, listener, async {
            let _ = rx.await;
        })
        .await
        .expect("embedder")
    });
    Server { url, stop, task }
}

async fn clients(url: &str) -> Vec<EmbedderClient<Channel>> {
    let until = Instant::now() + Duration::from_secs(120);
    let mut out = Vec::new();
    while out.len() < CONNECTIONS {
        match ragd_core::client::connect(url).await {
            Ok(ch) => out.push(EmbedderClient::new(ch).max_decoding_message_size(DEFAULT_MAX_MESSAGE_BYTES)),
            Err(e) => {
                assert!(Instant::now() < until, "{url}: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    // Until the model has loaded, Embed answers UNAVAILABLE.
    let mut c = out[0].clone();
    while c.embed(v1::EmbedRequest { texts: vec!["ready".into()], ..Default::default() }).await.is_err() {
        assert!(Instant::now() < until, "embedder never became ready");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    out
}

async fn load(
    clients: &[EmbedderClient<Channel>],
    texts: &Arc<Vec<String>>,
    config: LoadConfig,
    deadline: Option<Duration>,
) -> LoadReport {
    let clients = clients.to_vec();
    let texts = texts.clone();
    run(&config, move |i| {
        let mut c = clients[i as usize % clients.len()].clone();
        let at = (i as usize * TEXTS_PER_CALL) % (texts.len() - TEXTS_PER_CALL);
        let batch = texts[at..at + TEXTS_PER_CALL].to_vec();
        async move {
            let mut request = tonic::Request::new(v1::EmbedRequest { texts: batch, ..Default::default() });
            let call = async move {
                match deadline {
                    Some(d) => {
                        request.set_timeout(d);
                        // The client gives up at its deadline too (the server's answer may be
                        // on its way).
                        tokio::time::timeout(d, c.embed(request))
                            .await
                            .unwrap_or_else(|_| Err(tonic::Status::deadline_exceeded("client deadline")))
                    }
                    None => c.embed(request).await,
                }
            };
            Ok(call.await?.into_inner().embeddings.len() as u64)
        }
    })
    .await
}

struct Cell {
    admission: String,
    deadline: Option<Duration>,
    rate: f64,
    report: LoadReport,
    rss: (f64, f64),
}

/// One server setting under test.
struct Setting {
    name: String,
    max_queue_wait_ms: u64,
    max_batch_texts: Option<usize>,
}

async fn start_setting(s: &Setting) -> (Server, Vec<EmbedderClient<Channel>>) {
    let server = start(s.max_queue_wait_ms, s.max_batch_texts).await;
    let c = clients(&server.url).await;
    (server, c)
}

/// The unloaded p99 and the saturated calls/s, on a server that refuses nothing for load.
async fn baseline(phase: Duration, texts: &Arc<Vec<String>>) -> (LoadReport, LoadReport) {
    let (server, c) =
        start_setting(&Setting { name: String::new(), max_queue_wait_ms: 0, max_batch_texts: None }).await;
    let closed =
        |clients| LoadConfig { clients, mode: Mode::Closed, duration: phase, warmup: Duration::from_secs(2) };
    let unloaded = load(&c, texts, closed(1), None).await;
    let saturated = load(&c, texts, closed(SATURATING_CLIENTS), None).await;
    eprintln!(
        "unloaded p99 {:.0} ms, saturated {:.1} calls/s",
        unloaded.latency.p99_ms, saturated.requests_per_sec
    );
    let _ = server.stop.send(());
    let _ = server.task.await;
    (unloaded, saturated)
}

/// The overload cells of one setting, at `rate` calls/s, after a saturating warm-up (so the
/// runtime's buffers have grown to full batches before resident memory is compared).
async fn overload(s: &Setting, rate: f64, duration: Duration, texts: &Arc<Vec<String>>) -> Vec<Cell> {
    let (server, c) = start_setting(s).await;
    let warm = LoadConfig {
        clients: 8,
        mode: Mode::Closed,
        duration: Duration::from_secs(5),
        warmup: Duration::ZERO,
    };
    let _ = load(&c, texts, warm, None).await;
    let mut cells = Vec::new();
    for deadline in [None, Some(DEADLINE)] {
        let before = rss_mib();
        let config = LoadConfig {
            clients: OUTSTANDING,
            mode: Mode::Open { rate },
            duration,
            warmup: Duration::from_secs(2),
        };
        let report = load(&c, texts, config, deadline).await;
        let after = rss_mib();
        eprintln!(
            "{}, deadline {deadline:?}: goodput {:.1}/s, p99 {:.0} ms, errors {:?}, RSS {before:.0} → {after:.0} MiB",
            s.name, report.requests_per_sec, report.latency.p99_ms, report.errors
        );
        cells.push(Cell { admission: s.name.clone(), deadline, rate, report, rss: (before, after) });
        // Let the queue drain before the next cell.
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    let _ = server.stop.send(());
    let _ = server.task.await;
    cells
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    let secs = std::env::var("RAGD_BENCH_SECS").ok().and_then(|s| s.parse::<f64>().ok()).unwrap_or(60.0);
    let duration = Duration::from_secs_f64(secs);
    let phase = Duration::from_secs_f64((secs / 4.0).max(5.0));
    let default_wait = EmbedderConfig::default().max_queue_wait_ms;
    let settings = [
        Setting { name: "queue size only (`0`)".into(), max_queue_wait_ms: 0, max_batch_texts: None },
        Setting {
            name: format!("latency-bounded, default (`{default_wait}`)"),
            max_queue_wait_ms: default_wait,
            max_batch_texts: None,
        },
        Setting {
            name: format!("latency-bounded, tight (`{TIGHT_WAIT_MS}`, batches ≤ {TIGHT_BATCH})"),
            max_queue_wait_ms: TIGHT_WAIT_MS,
            max_batch_texts: Some(TIGHT_BATCH),
        },
    ];
    // `RAGD_BENCH_OVERLOAD_SETTINGS=WAIT_MS[:BATCH_TEXTS],...`: those settings instead (to explore
    // a bound and a batch size before changing a default); the section is then not written.
    let explore: Option<Vec<Setting>> = std::env::var("RAGD_BENCH_OVERLOAD_SETTINGS").ok().map(|v| {
        v.split(',')
            .map(|one| {
                let (wait, batch) = one.split_once(':').map_or((one, None), |(w, b)| (w, Some(b)));
                let max_queue_wait_ms = wait.trim().parse().expect("WAIT_MS");
                let max_batch_texts = batch.map(|b| b.trim().parse().expect("BATCH_TEXTS"));
                Setting { name: format!("explore `{one}`"), max_queue_wait_ms, max_batch_texts }
            })
            .collect()
    });
    let exploring = explore.is_some();
    let settings: Vec<Setting> = explore.unwrap_or_else(|| settings.into());
    let texts = Arc::new(sample_texts(4096, 12));
    let (unloaded, saturated, cells) = rt.block_on(async {
        let (unloaded, saturated) = baseline(phase, &texts).await;
        let rate = OVERLOAD * saturated.requests_per_sec;
        let mut cells = Vec::new();
        for s in &settings {
            cells.extend(overload(s, rate, duration, &texts).await);
        }
        (unloaded, saturated, cells)
    });
    let mut rows = String::from(
        "| admission (`--max-queue-wait-ms`) | caller deadline | goodput calls/s | goodput ÷ saturated | \
         RESOURCE_EXHAUSTED | DEADLINE_EXCEEDED | other errors | admitted p50 ms | admitted p99 ms | \
         p99 ÷ unloaded p99 | RSS MiB start → end |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|\n",
    );
    let mut checks = Vec::new();
    for cell in &cells {
        let r = &cell.report;
        let count = |code: &str| r.errors.get(code).copied().unwrap_or(0);
        let exhausted = count("ResourceExhausted");
        let deadline = count("DeadlineExceeded");
        let other = r.requests_failed - exhausted - deadline;
        let goodput = r.requests_per_sec / saturated.requests_per_sec;
        let p99 = r.latency.p99_ms / unloaded.latency.p99_ms;
        let others: Vec<String> = r
            .errors
            .iter()
            .filter(|(k, _)| *k != "ResourceExhausted" && *k != "DeadlineExceeded")
            .map(|(k, v)| format!("{v} {k}"))
            .collect();
        let answered = r.requests_ok > 0;
        let ms = |v: f64| if answered { format!("{v:.0}") } else { "–".into() };
        rows += &format!(
            "| {} | {} | {:.1} | {:.2} | {} | {} | {} | {} | {} | {} | {:.0} → {:.0} |\n",
            cell.admission,
            cell.deadline.map_or("none".to_string(), |d| format!("{} s", d.as_secs())),
            r.requests_per_sec,
            goodput,
            exhausted,
            deadline,
            if others.is_empty() { "0".to_string() } else { others.join(", ") },
            ms(r.latency.p50_ms),
            ms(r.latency.p99_ms),
            if answered { format!("{p99:.1}×") } else { "–".into() },
            cell.rss.0,
            cell.rss.1,
        );
        if cell.admission.starts_with("latency-bounded") {
            checks.push(format!(
                "{}, {} deadline: errors other than RESOURCE_EXHAUSTED {} (goal 0), admitted p99 {p99:.1}× \
                 unloaded (goal ≤ 3×), goodput {:.0} % of saturated (goal ≥ 90 %), RSS {:+.0} MiB",
                cell.admission,
                cell.deadline.map_or("no".to_string(), |d| format!("{} s", d.as_secs())),
                other + deadline,
                goodput * 100.0,
                cell.rss.1 - cell.rss.0,
            ));
        }
    }
    let rate = cells.first().map_or(0.0, |c| c.rate);
    let body = format!(
        "## Overload: latency-bounded admission against a queue bounded by size\n\n\
         Measured by `cargo bench -p ragd-bench --bench overload` in one run on: {machine}.\n\n\
         One embedder (all-MiniLM-L6-v2, ONNX Runtime, one worker) over gRPC on loopback, `Embed` of \
         {TEXTS_PER_CALL} twelve-word texts per call. Baseline, on a server that refuses nothing for \
         load: unloaded (1 client, closed loop) p99 **{u:.0} ms**; saturated ({SATURATING_CLIENTS} \
         clients, closed loop) **{sat:.1} calls/s**. Overload: each setting on a fresh server (after \
         a 5 s saturating warm-up), an open loop at {OVERLOAD}× the saturated rate ({rate:.1} calls/s) \
         for {secs:.0} s, at most {OUTSTANDING} calls outstanding over {CONNECTIONS} connections, \
         latency from each call's scheduled time, every call scheduled in the window waited for; \
         goodput counts the calls answered OK within the window. Latency-bounded admission refuses \
         at once, with RESOURCE_EXHAUSTED and a retry hint, a call whose expected queue wait (the tokens ahead of \
         it ÷ the measured inference rate) is above `--max-queue-wait-ms` or which could not finish \
         before its deadline; `0` turns it off (the behaviour before: the queue admits up to \
         `--max-queue-texts`, 8192 texts). `ClientSaturated`: calls not sent because {OUTSTANDING} \
         were outstanding. RSS: the bench process (clients and server) before and after the cell.\n\n\
         {rows}\nAgainst the goals of issue 19:\n\n{checks}\n",
        machine = report::machine(),
        u = unloaded.latency.p99_ms,
        sat = saturated.requests_per_sec,
        checks = checks.iter().map(|c| format!("- {c}")).collect::<Vec<_>>().join("\n"),
    );
    if exploring {
        eprintln!("RAGD_BENCH_OVERLOAD_SETTINGS given: docs/benchmarks.md not written");
        return;
    }
    report::update_section(&report::benchmarks_md(), "overload", &body).expect("write docs/benchmarks.md");
    println!("{body}");
}

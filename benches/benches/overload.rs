//! Goodput under overload: one embedder (real all-MiniLM-L6-v2 on ONNX Runtime, gRPC over
//! loopback) offered 4× the load it can serve, with latency-bounded admission on (the default
//! `--max-queue-wait-ms`) and off (`0`: only the queue's size bounds it, the baseline), each
//! with callers that set no deadline and callers with a 2 s deadline. Written to
//! docs/benchmarks.md, section "overload".
//!
//! 1. **Unloaded**: one client in a closed loop, `Embed` of 8 twelve-word texts per call: the
//!    unloaded latency (p99) the admitted calls are compared with.
//! 2. **Saturated**: 32 clients in a closed loop: the calls/s the embedder serves flat out.
//! 3. **Overload**: an open loop at 4× that rate, up to 256 calls outstanding (calls scheduled
//!    while 256 are outstanding are counted as `ClientSaturated`, not sent), latency measured
//!    from each call's scheduled time (no coordinated omission), and every call scheduled in
//!    the window waited for. Goodput counts the calls answered OK within the window.
//!
//! The goal (issue 19): 0 errors other than RESOURCE_EXHAUSTED, admitted p99 ≤ 3× the unloaded
//! p99, goodput ≥ 90 % of the saturated rate, resident memory flat. `RAGD_BENCH_SECS` sets the
//! overload cells (default 60 s) and, scaled down, the other phases.

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

async fn start(max_queue_wait_ms: u64) -> Server {
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
    admission: &'static str,
    deadline: Option<Duration>,
    rate: f64,
    report: LoadReport,
    rss: (f64, f64),
}

struct Measured {
    unloaded: LoadReport,
    saturated: LoadReport,
    cells: Vec<Cell>,
}

async fn measure(
    admission: &'static str,
    max_queue_wait_ms: u64,
    phase: Duration,
    overload: Duration,
) -> Measured {
    let server = start(max_queue_wait_ms).await;
    let c = clients(&server.url).await;
    let texts = Arc::new(sample_texts(4096, 12));
    let closed =
        |clients| LoadConfig { clients, mode: Mode::Closed, duration: phase, warmup: Duration::from_secs(2) };
    let unloaded = load(&c, &texts, closed(1), None).await;
    let saturated = load(&c, &texts, closed(SATURATING_CLIENTS), None).await;
    eprintln!(
        "{admission}: unloaded p99 {:.0} ms, saturated {:.1} calls/s",
        unloaded.latency.p99_ms, saturated.requests_per_sec
    );
    let rate = OVERLOAD * saturated.requests_per_sec;
    let mut cells = Vec::new();
    for deadline in [None, Some(DEADLINE)] {
        let before = rss_mib();
        let config = LoadConfig {
            clients: OUTSTANDING,
            mode: Mode::Open { rate },
            duration: overload,
            warmup: Duration::from_secs(2),
        };
        let report = load(&c, &texts, config, deadline).await;
        let after = rss_mib();
        eprintln!(
            "{admission}, deadline {deadline:?}: goodput {:.1}/s, p99 {:.0} ms, errors {:?}, RSS {before:.0} → {after:.0} MiB",
            report.requests_per_sec, report.latency.p99_ms, report.errors
        );
        cells.push(Cell { admission, deadline, rate, report, rss: (before, after) });
        // Let the queue drain before the next cell.
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    let _ = server.stop.send(());
    let _ = server.task.await;
    Measured { unloaded, saturated, cells }
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    let secs = std::env::var("RAGD_BENCH_SECS").ok().and_then(|s| s.parse::<f64>().ok()).unwrap_or(60.0);
    let overload = Duration::from_secs_f64(secs);
    let phase = Duration::from_secs_f64((secs / 4.0).max(5.0));
    let default_wait = EmbedderConfig::default().max_queue_wait_ms;
    let (on, off) = rt.block_on(async {
        let on = measure("latency-bounded", default_wait, phase, overload).await;
        let off = measure("queue size only", 0, phase, overload).await;
        (on, off)
    });
    let mut rows = String::from(
        "| admission | caller deadline | offered calls/s | goodput calls/s | goodput ÷ saturated | \
         RESOURCE_EXHAUSTED | DEADLINE_EXCEEDED | other errors | admitted p50 ms | admitted p99 ms | \
         p99 ÷ unloaded p99 | RSS MiB start → end |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n",
    );
    let mut checks = Vec::new();
    for m in [&on, &off] {
        for cell in &m.cells {
            let r = &cell.report;
            let count = |code: &str| r.errors.get(code).copied().unwrap_or(0);
            let exhausted = count("ResourceExhausted");
            let deadline = count("DeadlineExceeded");
            let other = r.requests_failed - exhausted - deadline;
            let goodput = r.requests_per_sec / m.saturated.requests_per_sec;
            let p99 = r.latency.p99_ms / m.unloaded.latency.p99_ms;
            let others: Vec<String> = r
                .errors
                .iter()
                .filter(|(k, _)| *k != "ResourceExhausted" && *k != "DeadlineExceeded")
                .map(|(k, v)| format!("{v} {k}"))
                .collect();
            rows += &format!(
                "| {} | {} | {:.1} | {:.1} | {:.2} | {} | {} | {} | {:.0} | {:.0} | {:.1}× | {:.0} → {:.0} |\n",
                cell.admission,
                cell.deadline.map_or("none".to_string(), |d| format!("{} s", d.as_secs())),
                cell.rate,
                r.requests_per_sec,
                goodput,
                exhausted,
                deadline,
                if others.is_empty() { "0".to_string() } else { others.join(", ") },
                r.latency.p50_ms,
                r.latency.p99_ms,
                p99,
                cell.rss.0,
                cell.rss.1,
            );
            if cell.admission == "latency-bounded" {
                checks.push(format!(
                    "{} deadline: other errors {other} (goal 0), DEADLINE_EXCEEDED {deadline}, admitted p99 \
                     {p99:.1}× unloaded (goal ≤ 3×), goodput {:.0} % of saturated (goal ≥ 90 %)",
                    cell.deadline.map_or("no".to_string(), |d| format!("{} s", d.as_secs())),
                    goodput * 100.0
                ));
            }
        }
    }
    let body = format!(
        "## Overload: latency-bounded admission against a queue bounded by size\n\n\
         Measured by `cargo bench -p ragd-bench --bench overload` in one run on: {machine}.\n\n\
         One embedder (all-MiniLM-L6-v2, ONNX Runtime, default batching) over gRPC on loopback, \
         `Embed` of {TEXTS_PER_CALL} twelve-word texts per call. Unloaded (1 client, closed loop): \
         p99 **{u_on:.0} ms** / {u_off:.0} ms (the two servers). Saturated ({SATURATING_CLIENTS} \
         clients, closed loop): **{s_on:.1}** / {s_off:.1} calls/s. Overload: an open loop at \
         {OVERLOAD}× the saturated rate for {secs:.0} s, at most {OUTSTANDING} calls outstanding over \
         {CONNECTIONS} connections, latency from each call's scheduled time, every call scheduled \
         in the window waited for; goodput counts the calls answered OK within the window. \
         `latency-bounded` is the default `--max-queue-wait-ms {default_wait}`: a call whose \
         expected queue wait (texts ahead ÷ measured inference rate) is above it, or which could \
         not finish before its deadline, is refused at once with RESOURCE_EXHAUSTED and a retry \
         hint. `queue size only` is `--max-queue-wait-ms 0` (the behaviour before): the queue \
         admits up to `--max-queue-texts` (8192) texts. `ClientSaturated`: calls not sent because \
         {OUTSTANDING} were outstanding.\n\n{rows}\n\
         Against the goals (latency-bounded rows):\n\n{checks}\n",
        machine = report::machine(),
        u_on = on.unloaded.latency.p99_ms,
        u_off = off.unloaded.latency.p99_ms,
        s_on = on.saturated.requests_per_sec,
        s_off = off.saturated.requests_per_sec,
        checks = checks.iter().map(|c| format!("- {c}")).collect::<Vec<_>>().join("\n"),
    );
    report::update_section(&report::benchmarks_md(), "overload", &body).expect("write docs/benchmarks.md");
    println!("{body}");
}

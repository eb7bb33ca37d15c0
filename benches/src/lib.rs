//! ragd-bench: the load generator behind the `loadgen` binary and the benches, reusable for every
//! ragd service: N concurrent clients in a closed loop (each sends its next request when the
//! previous answer arrives, or after a refusal's retry hint has passed) or an open loop (requests scheduled at a fixed rate, latency measured
//! from the scheduled time so a slow server cannot hide queueing: no coordinated omission), at a
//! fixed rate or in a stepped ramp. Latencies go into HDR histograms; the report serialises to
//! JSON, with a second-by-second series (throughput, error codes, latency percentiles) for plots.

pub mod charts;
pub mod report;

/// mimalloc, as in the `ragd` binary: every figure is measured with the allocator ragd ships.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::sync::Semaphore;

/// How load is offered.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mode {
    /// `clients` tasks, each waiting for its answer before sending again.
    Closed,
    /// Requests started at `rate` per second in total, at most `clients` outstanding.
    Open { rate: f64 },
    /// An open loop whose rate starts at `start` (also during the warm-up) and moves by `step`
    /// every `step_secs` of the measured window, up to (or down to) `end`.
    Ramp { start: f64, end: f64, step: f64, step_secs: f64 },
}

impl Mode {
    /// The offered rate `t` seconds into the measured window (warm-up: `t` < 0); None for a
    /// closed loop.
    pub fn rate_at(&self, t: f64) -> Option<f64> {
        match *self {
            Mode::Closed => None,
            Mode::Open { rate } => Some(rate),
            Mode::Ramp { start, end, step, step_secs } => {
                let steps = (t.max(0.0) / step_secs.max(1e-3)).floor();
                let rate = start + step * steps;
                Some(if step >= 0.0 { rate.min(end) } else { rate.max(end) })
            }
        }
    }

    /// How long a ramp takes to reach its end rate and hold it for one step (None: not a ramp).
    pub fn ramp_duration(&self) -> Option<Duration> {
        match *self {
            Mode::Ramp { start, end, step, step_secs } if step != 0.0 => {
                let steps = ((end - start) / step).floor().max(0.0) + 1.0;
                Some(Duration::from_secs_f64(steps * step_secs))
            }
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct LoadConfig {
    pub clients: usize,
    pub mode: Mode,
    /// Measured phase length.
    pub duration: Duration,
    /// Unmeasured phase before it (connections, caches, batch sizes settle).
    pub warmup: Duration,
}

/// Outcome of one request: items processed (e.g. texts embedded) or the gRPC status.
pub type Outcome = Result<u64, tonic::Status>;

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct LoadReport {
    pub clients: usize,
    pub mode: String,
    pub seconds: f64,
    /// Requests started (closed loop) or scheduled (open loop) in the measured window.
    pub requests_offered: u64,
    pub requests_ok: u64,
    /// Of `requests_ok`, those answered after the window ended (open loop only: every request
    /// scheduled in the window is waited for and counted, so a slow server cannot drop its
    /// slowest answers from the percentiles).
    pub requests_ok_late: u64,
    pub requests_failed: u64,
    /// Failed requests by gRPC code.
    pub errors: BTreeMap<String, u64>,
    pub requests_per_sec: f64,
    pub items_per_sec: f64,
    pub latency: Latency,
    /// HDR percentile distribution of the successful requests' latency: from p0 to p99.99 in
    /// steps of a fifth of a "nine" (the x axis of an HDR plot).
    pub percentiles: Vec<Percentile>,
    /// Second by second, by when each request was started (closed loop) or scheduled (open):
    /// what was offered, answered, refused, and how fast.
    pub series: Vec<Second>,
}

/// A point of the latency distribution.
#[derive(Debug, Clone, Serialize)]
pub struct Percentile {
    /// In percent (99.9 = p99.9).
    pub percentile: f64,
    pub ms: f64,
}

/// A rate or a length for people: at most two decimals, trailing zeros dropped (56.4, not
/// 56.400000000000006).
fn short(x: f64) -> String {
    let s = format!("{x:.2}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// The HDR percentile distribution of `hist` (milliseconds): 1 − 10^(−k/5) for k = 0..=20, i.e.
/// p0, p36.9, p60.2, … p90, … p99, … p99.99.
fn percentiles(hist: &Histogram<u64>) -> Vec<Percentile> {
    if hist.is_empty() {
        return Vec::new();
    }
    (0..=20)
        .map(|k| {
            let q = 1.0 - 10f64.powf(-(k as f64) / 5.0);
            Percentile { percentile: q * 100.0, ms: hist.value_at_quantile(q) as f64 / 1000.0 }
        })
        .collect()
}

/// One second of the measured window.
#[derive(Debug, Clone, Serialize)]
pub struct Second {
    /// Seconds since the measured window began.
    pub t: u32,
    /// The schedule's rate in this second (None: closed loop).
    pub offered_rate: Option<f64>,
    pub ok: u64,
    /// Failed requests by gRPC code (and `ClientSaturated`).
    pub errors: BTreeMap<String, u64>,
    /// Latency of the successful requests (0 when there were none).
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// One finished (or refused) request of the measured window: its second, latency, error.
#[derive(Debug, Clone)]
struct Event {
    second: u32,
    latency_us: u64,
    error: Option<String>,
}

#[derive(Default)]
struct Tally {
    offered: u64,
    ok: u64,
    ok_late: u64,
    items: u64,
    errors: BTreeMap<String, u64>,
    events: Vec<Event>,
}

fn histogram() -> Histogram<u64> {
    // 1 µs .. 10 min, 3 significant digits; the bounds are constants, so this cannot fail.
    Histogram::new_with_bounds(1, 600_000_000, 3).unwrap_or_else(|_| unreachable!("constant bounds"))
}

impl Tally {
    /// Records a request started (or scheduled) `since` after the measured window began.
    fn record(&mut self, hist: &mut Histogram<u64>, outcome: Outcome, latency: Duration, since: Duration) {
        let latency_us = latency.as_micros().max(1) as u64;
        let error = match outcome {
            Ok(items) => {
                self.ok += 1;
                self.items += items;
                hist.saturating_record(latency_us);
                None
            }
            Err(s) => {
                let code = format!("{:?}", s.code());
                *self.errors.entry(code.clone()).or_default() += 1;
                Some(code)
            }
        };
        self.events.push(Event { second: since.as_secs() as u32, latency_us, error });
    }

    /// A request the open loop could not send (every client busy).
    fn saturated(&mut self, since: Duration) {
        *self.errors.entry(SATURATED.into()).or_default() += 1;
        self.events.push(Event {
            second: since.as_secs() as u32,
            latency_us: 0,
            error: Some(SATURATED.into()),
        });
    }

    fn merge(&mut self, other: Tally) {
        self.offered += other.offered;
        self.ok += other.ok;
        self.ok_late += other.ok_late;
        self.items += other.items;
        for (k, v) in other.errors {
            *self.errors.entry(k).or_default() += v;
        }
        self.events.extend(other.events);
    }
}

/// The error key of a request an open loop did not send because every client was busy.
const SATURATED: &str = "ClientSaturated";

/// The second-by-second series of a window of `seconds` (every second listed, empty ones too).
fn series(events: &[Event], seconds: f64, mode: Mode) -> Vec<Second> {
    let n = seconds.ceil().max(1.0) as usize;
    // Two significant digits: 1 % resolution is plenty for a plot, and 1/10 of the memory.
    let hist = || {
        Histogram::<u64>::new_with_bounds(1, 600_000_000, 2)
            .unwrap_or_else(|_| unreachable!("constant bounds"))
    };
    let mut buckets: Vec<(u64, BTreeMap<String, u64>, Histogram<u64>)> =
        (0..n).map(|_| (0, BTreeMap::new(), hist())).collect();
    for e in events {
        let Some((ok, errors, h)) = buckets.get_mut(e.second as usize) else { continue };
        match &e.error {
            None => {
                *ok += 1;
                h.saturating_record(e.latency_us);
            }
            Some(code) => *errors.entry(code.clone()).or_default() += 1,
        }
    }
    let ms = |us: u64| us as f64 / 1000.0;
    buckets
        .into_iter()
        .enumerate()
        .map(|(t, (ok, errors, h))| Second {
            t: t as u32,
            offered_rate: mode.rate_at(t as f64),
            ok,
            errors,
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            max_ms: ms(h.max()),
        })
        .collect()
}

/// Runs `request(i)` under `config` and reports what was measured after the warm-up.
pub async fn run<F, Fut>(config: &LoadConfig, request: F) -> LoadReport
where
    F: Fn(u64) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Outcome> + Send + 'static,
{
    let start = Instant::now();
    let measure_from = start + config.warmup;
    let end = measure_from + config.duration;
    let (mut tally, hist) = match config.mode {
        Mode::Closed => closed(config.clients, measure_from, end, request).await,
        Mode::Open { .. } | Mode::Ramp { .. } => {
            open(config.clients, config.mode, measure_from, end, request).await
        }
    };
    let seconds = config.duration.as_secs_f64();
    let series = series(&std::mem::take(&mut tally.events), seconds, config.mode);
    let ms = |us: u64| us as f64 / 1000.0;
    LoadReport {
        clients: config.clients,
        mode: match config.mode {
            Mode::Closed => "closed".into(),
            Mode::Open { rate } => format!("open@{}/s", short(rate)),
            Mode::Ramp { start, end, step, step_secs } => format!(
                "ramp {}→{}/s by {} every {} s",
                short(start),
                short(end),
                short(step),
                short(step_secs)
            ),
        },
        seconds,
        requests_offered: tally.offered,
        requests_ok: tally.ok,
        requests_ok_late: tally.ok_late,
        requests_failed: tally.errors.values().sum(),
        requests_per_sec: (tally.ok - tally.ok_late) as f64 / seconds,
        items_per_sec: tally.items as f64 / seconds,
        errors: tally.errors,
        latency: Latency {
            mean_ms: hist.mean() / 1000.0,
            p50_ms: ms(hist.value_at_quantile(0.50)),
            p90_ms: ms(hist.value_at_quantile(0.90)),
            p99_ms: ms(hist.value_at_quantile(0.99)),
            max_ms: ms(hist.max()),
        },
        percentiles: percentiles(&hist),
        series,
    }
}

async fn closed<F, Fut>(
    clients: usize,
    measure_from: Instant,
    end: Instant,
    request: F,
) -> (Tally, Histogram<u64>)
where
    F: Fn(u64) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Outcome> + Send + 'static,
{
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            let request = request.clone();
            tokio::spawn(async move {
                let (mut tally, mut hist) = (Tally::default(), histogram());
                let mut i = c as u64;
                loop {
                    let t0 = Instant::now();
                    if t0 >= end {
                        break;
                    }
                    if t0 >= measure_from {
                        tally.offered += 1;
                    }
                    let outcome = request(i).await;
                    let t1 = Instant::now();
                    // A refusal with a retry hint (RESOURCE_EXHAUSTED from latency-bounded
                    // admission): the client waits it before its next request, as a well-behaved
                    // client does; retrying at once would spend the server's cores on refusals.
                    let hint = outcome.as_ref().err().and_then(ragd_core::status::retry_after);
                    // Count requests that started in the measured window and finished within it.
                    if t0 >= measure_from && t1 <= end {
                        tally.record(&mut hist, outcome, t1 - t0, t0 - measure_from);
                    }
                    if let Some(wait) = hint {
                        tokio::time::sleep_until((t1 + wait).min(end).into()).await;
                    }
                    i += clients as u64;
                }
                (tally, hist)
            })
        })
        .collect();
    gather(tasks).await
}

/// An open loop's schedule: request times in seconds from the start of the measured window
/// (negative in the warm-up). The run is cut into segments — the warm-up, then each step of a
/// ramp (a fixed rate is one step without end) — and within a segment the requests are 1/rate
/// apart from its start, so each segment holds exactly rate × length requests, with no drift
/// from summing intervals.
struct Schedule {
    mode: Mode,
    warmup: f64,
    /// The segment: -1 the warm-up, then the steps 0, 1, ...
    segment: i64,
    /// The next request's index within its segment.
    j: u64,
}

impl Schedule {
    fn new(mode: Mode, warmup: Duration) -> Self {
        let warmup = warmup.as_secs_f64();
        Self { mode, warmup, segment: if warmup > 0.0 { -1 } else { 0 }, j: 0 }
    }

    /// Start and end of the current segment.
    fn bounds(&self) -> (f64, f64) {
        match (self.segment, self.mode) {
            (k, _) if k < 0 => (-self.warmup, 0.0),
            (k, Mode::Ramp { step_secs, .. }) => (k as f64 * step_secs, (k + 1) as f64 * step_secs),
            _ => (0.0, f64::INFINITY),
        }
    }

    fn next_at(&mut self) -> f64 {
        loop {
            let (start, end) = self.bounds();
            let rate =
                self.mode.rate_at(if self.segment < 0 { -1.0 } else { start }).unwrap_or(1.0).max(1e-3);
            let at = start + self.j as f64 / rate;
            if at < end {
                self.j += 1;
                return at;
            }
            self.segment += 1;
            self.j = 0;
        }
    }
}

async fn open<F, Fut>(
    clients: usize,
    mode: Mode,
    measure_from: Instant,
    end: Instant,
    request: F,
) -> (Tally, Histogram<u64>)
where
    F: Fn(u64) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Outcome> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(clients.max(1)));
    let mut tasks = Vec::new();
    let mut dropped = Tally::default();
    let mut schedule = Schedule::new(mode, measure_from.saturating_duration_since(Instant::now()));
    let offset = |secs: f64| {
        if secs >= 0.0 {
            measure_from + Duration::from_secs_f64(secs)
        } else {
            measure_from.checked_sub(Duration::from_secs_f64(-secs)).unwrap_or(measure_from)
        }
    };
    for i in 0u64.. {
        let scheduled = offset(schedule.next_at());
        if scheduled >= end {
            break;
        }
        tokio::time::sleep_until(scheduled.into()).await;
        let since = scheduled.saturating_duration_since(measure_from);
        if scheduled >= measure_from {
            dropped.offered += 1;
        }
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            // Every client busy: the request is not sent; report it, do not wait.
            if scheduled >= measure_from {
                dropped.saturated(since);
            }
            continue;
        };
        let request = request.clone();
        // Each call returns its outcome, not a histogram of its own: an open loop can start
        // thousands of calls, and a histogram per call would hold megabytes until the end.
        tasks.push(tokio::spawn(async move {
            let outcome = request(i).await;
            let done = Instant::now();
            drop(permit);
            (scheduled >= measure_from).then(|| (outcome, done - scheduled, done > end, since))
        }));
    }
    let (mut tally, mut hist) = (dropped, histogram());
    for t in tasks {
        match t.await {
            Ok(Some((outcome, latency, late, since))) => {
                if late && outcome.is_ok() {
                    tally.ok_late += 1;
                }
                tally.record(&mut hist, outcome, latency, since);
            }
            Ok(None) => {}
            Err(e) => *tally.errors.entry(format!("task failed: {e}")).or_default() += 1,
        }
    }
    (tally, hist)
}

async fn gather(tasks: Vec<tokio::task::JoinHandle<(Tally, Histogram<u64>)>>) -> (Tally, Histogram<u64>) {
    let (mut tally, mut hist) = (Tally::default(), histogram());
    for t in tasks {
        match t.await {
            Ok((t, h)) => {
                tally.merge(t);
                let _ = hist.add(h);
            }
            Err(e) => *tally.errors.entry(format!("task failed: {e}")).or_default() += 1,
        }
    }
    (tally, hist)
}

/// Deterministic embedding-like unit vectors: a mixture of 64 topics in a 32-dimensional latent
/// space, projected to `dim` plus a little noise (sentence embeddings have a low intrinsic
/// dimension; uniform noise in 384-d would be HNSW's worst case, not a realistic one).
pub fn embedding_like_vectors(n: usize, dim: usize, seed: u64) -> Vec<Vec<f32>> {
    const LATENT: usize = 32;
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 11) as f32 / (1u64 << 53) as f32 - 0.5
    };
    // The projection and topics are shared by every call; `seed` only picks the samples.
    let projection: Vec<f32> = (0..dim * LATENT).map(|_| next()).collect();
    let topics: Vec<Vec<f32>> = (0..64).map(|_| (0..LATENT).map(|_| next()).collect()).collect();
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut sample = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s >> 11) as f32 / (1u64 << 53) as f32 - 0.5
    };
    (0..n)
        .map(|i| {
            let t = &topics[(i * 7919 + seed as usize) % topics.len()];
            let z: Vec<f32> = t.iter().map(|c| c + 0.6 * sample()).collect();
            let mut v: Vec<f32> = (0..dim)
                .map(|d| {
                    projection[d * LATENT..(d + 1) * LATENT].iter().zip(&z).map(|(w, x)| w * x).sum::<f32>()
                        + 0.02 * sample()
                })
                .collect();
            let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            v.iter_mut().for_each(|x| *x /= norm);
            v
        })
        .collect()
}

/// Deterministic English-like texts of about `words` words (≈ 1.2 tokens per word for BERT
/// WordPiece), so every bench and run embeds the same inputs.
pub fn sample_texts(n: usize, words: usize) -> Vec<String> {
    const VOCAB: &[&str] = &[
        "the",
        "vector",
        "search",
        "engine",
        "stores",
        "document",
        "chunks",
        "as",
        "embeddings",
        "and",
        "answers",
        "questions",
        "with",
        "citations",
        "from",
        "a",
        "language",
        "model",
        "running",
        "on",
        "two",
        "cores",
        "while",
        "batching",
        "requests",
        "keeps",
        "throughput",
        "high",
        "under",
        "load",
        "capital",
        "city",
        "river",
        "mountain",
        "history",
        "science",
        "music",
        "retrieval",
        "grounded",
        "distributed",
        "cluster",
        "shard",
        "replica",
        "latency",
        "percentile",
        "benchmark",
    ];
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    (0..n)
        .map(|_| {
            (0..words)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    VOCAB[(state % VOCAB.len() as u64) as usize]
                })
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

/// `$RAGD_HOME` or `<repo>/.ragd`, where scripts/setup puts the runtime and models.
pub fn ragd_home() -> std::path::PathBuf {
    std::env::var_os("RAGD_HOME")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.ragd"))
}

/// Length of each bench measurement: `$RAGD_BENCH_SECS` (default 10 s).
pub fn bench_secs() -> Duration {
    Duration::from_secs_f64(
        std::env::var("RAGD_BENCH_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(10.0),
    )
}

/// Sentences/s of tokenise → pad → ONNX Runtime → pool at a fixed batch size, in-process, for
/// [`bench_secs`]: the embedder's raw ceiling, the baseline of the gRPC and ingest figures.
pub fn raw_ort(
    model: &ragd_embedder::model::TextModel,
    backend: &mut ragd_embedder::ort_backend::OrtBackend,
    texts: &[String],
    batch: usize,
) -> f64 {
    raw_ort_for(model, backend, texts, batch, bench_secs())
}

/// The median of `xs` (the mean of the middle two of an even count; 0 for none).
pub fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    match n {
        0 => 0.0,
        _ if n % 2 == 1 => xs[n / 2],
        _ => (xs[n / 2 - 1] + xs[n / 2]) / 2.0,
    }
}

/// Tokens per text as the embedder counts them (special tokens included, no truncation).
pub fn token_lens(model: &ragd_embedder::model::TextModel, texts: &[String]) -> Vec<usize> {
    model
        .tokenize(texts, ragd_embedder::model::InputKind::Unspecified)
        .expect("tokenize")
        .iter()
        .map(|t| t.ids.len())
        .collect()
}

/// The mean of token lengths (0 for none).
pub fn mean_tokens(lens: &[usize]) -> f64 {
    lens.iter().sum::<usize>() as f64 / lens.len().max(1) as f64
}

/// The batch size the embedder's default batching forms of texts with these token lengths (its
/// padded-token budget and text limit): the raw baseline that differs from the embedder only in
/// having no pipeline around it.
pub fn embedder_batch(lens: &[usize]) -> usize {
    let config = ragd_embedder::EmbedderConfig::default();
    planned_batch(lens, config.batch_tokens(), config.max_batch_texts)
}

/// The median batch size `ragd_embedder::batcher::plan` makes of a queue of texts with these
/// token lengths under a padded-token budget and a text limit.
pub fn planned_batch(lens: &[usize], max_tokens: usize, max_texts: usize) -> usize {
    use ragd_embedder::batcher::{BatchPolicy, plan};
    let policy = BatchPolicy { max_tokens, max_texts, max_wait: Duration::ZERO };
    let (mut at, mut sizes) = (0, Vec::new());
    while at < lens.len() {
        let n = plan(lens[at..].iter().copied(), &policy);
        sizes.push(n);
        at += n;
    }
    sizes.sort_unstable();
    sizes.get(sizes.len() / 2).copied().unwrap_or(1)
}

/// [`raw_ort`] for a given measurement length.
pub fn raw_ort_for(
    model: &ragd_embedder::model::TextModel,
    backend: &mut ragd_embedder::ort_backend::OrtBackend,
    texts: &[String],
    batch: usize,
    duration: Duration,
) -> f64 {
    use ragd_embedder::model::{Backend, InputKind, PaddedBatch};
    let run_once = |backend: &mut ragd_embedder::ort_backend::OrtBackend, i: usize| {
        let chunk: Vec<String> = (0..batch).map(|k| texts[(i * batch + k) % texts.len()].clone()).collect();
        let tokens = model.tokenize(&chunk, InputKind::Unspecified).expect("tokenize");
        let padded = PaddedBatch::new(tokens.iter().map(|t| t.ids.as_slice()), model.spec.pad_id);
        backend.embed(&padded).expect("embed").len()
    };
    for i in 0..3 {
        run_once(backend, i);
    }
    let (start, mut done, mut i) = (Instant::now(), 0usize, 0usize);
    while start.elapsed() < duration {
        done += run_once(backend, i);
        i += 1;
    }
    done as f64 / start.elapsed().as_secs_f64()
}

/// CPU time this process has used so far (user + system, all threads), from /proc/self/stat
/// (clock ticks of 1/100 s, Linux's USER_HZ); zero where that file cannot be read.
pub fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may contain spaces) start at field 3; utime and
    // stime are fields 14 and 15.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
    Duration::from_millis((ticks(11) + ticks(12)) * 10)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn closed_loop_counts_items_and_errors() {
        let cfg = LoadConfig {
            clients: 4,
            mode: Mode::Closed,
            duration: Duration::from_millis(200),
            warmup: Duration::ZERO,
        };
        let r = run(&cfg, |i| async move {
            tokio::time::sleep(Duration::from_millis(2)).await;
            if i % 10 == 0 { Err(tonic::Status::unavailable("x")) } else { Ok(3) }
        })
        .await;
        assert!(r.requests_ok > 0);
        assert_eq!(r.errors.get("Unavailable").copied().unwrap_or(0), r.requests_failed);
        assert!(r.requests_failed > 0);
        assert!((r.items_per_sec - 3.0 * r.requests_per_sec).abs() < 1e-6);
        assert!(r.latency.p50_ms >= 2.0 && r.latency.p99_ms >= r.latency.p50_ms);
        // The distribution runs p0 → p99.99, never decreasing, through the report's p50 and p99.
        assert_eq!(r.percentiles.len(), 21);
        assert_eq!(r.percentiles[0].percentile, 0.0);
        assert!((r.percentiles[20].percentile - 99.99).abs() < 1e-9);
        assert!(r.percentiles.windows(2).all(|w| w[0].ms <= w[1].ms));
        let at = |p: f64| r.percentiles.iter().find(|x| (x.percentile - p).abs() < 1e-6).map(|x| x.ms);
        assert_eq!((at(90.0), at(99.0)), (Some(r.latency.p90_ms), Some(r.latency.p99_ms)));
    }

    /// A closed-loop client refused with a retry hint waits it: with a 100 ms hint one client
    /// sends at most 1 + 500 / 100 requests in 0.5 s (at once it would send thousands); a refusal
    /// without a hint is retried at once (UNAVAILABLE here, as before).
    #[tokio::test]
    async fn closed_loop_clients_wait_the_retry_hint() {
        let cfg = LoadConfig {
            clients: 1,
            mode: Mode::Closed,
            duration: Duration::from_millis(500),
            warmup: Duration::ZERO,
        };
        let hinted = run(&cfg, |_| async {
            Err(ragd_core::status::resource_exhausted("busy", Duration::from_millis(100)))
        })
        .await;
        assert!(hinted.requests_offered >= 1 && hinted.requests_offered <= 6, "{}", hinted.requests_offered);
        let bare = run(&cfg, |_| async {
            tokio::time::sleep(Duration::from_millis(1)).await;
            Err(tonic::Status::unavailable("x"))
        })
        .await;
        assert!(bare.requests_offered > 6, "{}", bare.requests_offered);
    }

    #[tokio::test]
    async fn open_loop_offers_the_configured_rate() {
        let cfg = LoadConfig {
            clients: 8,
            mode: Mode::Open { rate: 200.0 },
            duration: Duration::from_millis(500),
            warmup: Duration::ZERO,
        };
        let r = run(&cfg, |_| async { Ok(1) }).await;
        // 200/s for 0.5 s: exactly 100 requests scheduled, however slow the machine.
        assert_eq!(r.requests_offered, 100);
        assert!(r.requests_ok + r.requests_failed <= 100 && r.requests_ok > 0);
    }

    /// A ramp 20 → 60/s by 20 every second: exactly 20, 40 and 60 requests scheduled in its
    /// three seconds (by schedule, however slow the machine), the series says so second by
    /// second, and errors land in the second of their request.
    #[tokio::test]
    async fn a_stepped_ramp_offers_each_steps_rate_and_the_series_shows_it() {
        let mode = Mode::Ramp { start: 20.0, end: 60.0, step: 20.0, step_secs: 1.0 };
        assert_eq!(mode.ramp_duration(), Some(Duration::from_secs(3)));
        let cfg =
            LoadConfig { clients: 1000, mode, duration: Duration::from_secs(3), warmup: Duration::ZERO };
        let r = run(&cfg, |i| async move {
            if i % 4 == 0 { Err(tonic::Status::resource_exhausted("x")) } else { Ok(1) }
        })
        .await;
        assert_eq!(r.requests_offered, 120);
        let per_second: Vec<u64> = r.series.iter().map(|s| s.ok + s.errors.values().sum::<u64>()).collect();
        assert_eq!(per_second, [20, 40, 60]);
        let rates: Vec<Option<f64>> = r.series.iter().map(|s| s.offered_rate).collect();
        assert_eq!(rates, [Some(20.0), Some(40.0), Some(60.0)]);
        // Request i fails when i % 4 == 0: 5 of the first 20, 10 of the next 40, 15 of 60.
        let refused: Vec<u64> =
            r.series.iter().map(|s| s.errors.get("ResourceExhausted").copied().unwrap_or(0)).collect();
        assert_eq!(refused, [5, 10, 15]);
        assert!(r.series.iter().all(|s| s.p99_ms >= s.p50_ms));
    }

    #[test]
    fn ramp_rates_step_and_stop_at_the_end_rate() {
        let up = Mode::Ramp { start: 50.0, end: 120.0, step: 50.0, step_secs: 10.0 };
        let at = |t: f64| up.rate_at(t).expect("open");
        assert_eq!(
            (at(-3.0), at(0.0), at(9.9), at(10.0), at(25.0), at(99.0)),
            (50.0, 50.0, 50.0, 100.0, 120.0, 120.0)
        );
        assert_eq!(up.ramp_duration(), Some(Duration::from_secs(20)));
        let down = Mode::Ramp { start: 100.0, end: 40.0, step: -30.0, step_secs: 1.0 };
        assert_eq!((down.rate_at(1.0), down.rate_at(5.0)), (Some(70.0), Some(40.0)));
        assert_eq!(down.ramp_duration(), Some(Duration::from_secs(3)));
        assert_eq!(Mode::Closed.rate_at(1.0), None);
    }

    #[test]
    fn planned_batch_follows_the_padded_budget() {
        assert_eq!(planned_batch(&[60; 100], 1024, 64), 17);
        assert_eq!(planned_batch(&[10; 100], 1024, 64), 64);
        assert_eq!(planned_batch(&[300; 10], 256, 64), 1);
        assert_eq!(mean_tokens(&[1, 2, 6]), 3.0);
    }

    #[test]
    fn median_of_odd_even_and_empty() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(Vec::new()), 0.0);
    }

    #[test]
    fn sample_texts_are_deterministic() {
        assert_eq!(sample_texts(3, 10), sample_texts(3, 10));
        assert_eq!(sample_texts(1, 7)[0].split(' ').count(), 7);
    }
}

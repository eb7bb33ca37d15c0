//! Dynamic batching: texts of concurrent requests are coalesced into batches by a token budget
//! and a max wait, and run on dedicated inference threads (never on the async runtime).
//!
//! A request becomes a [`Job`] (its texts already tokenised). Jobs wait in a per-model FIFO.
//! A worker takes the oldest model's queue and [`plan`]s a batch: texts in FIFO order while the
//! padded cost (texts × longest text) fits `max_batch_tokens` and the count fits
//! `max_batch_texts`. A job larger than the budget is split across batches and reassembled in
//! order. A batch that is not full waits until its oldest text has waited `max_batch_wait`,
//! so a busy server batches without waiting and an idle one adds at most that latency.
//! Jobs whose deadline passed or whose caller went away are dropped before they cost compute.

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ragd_core::admission::{BatchCost, Estimate};
use tokio::sync::oneshot;

use crate::error::EmbedError;
use crate::metrics::EmbedderMetrics;
use crate::model::{Backend, PaddedBatch, Tokenized};

/// Batch limits.
#[derive(Debug, Clone, Copy)]
pub struct BatchPolicy {
    pub max_tokens: usize,
    pub max_texts: usize,
    pub max_wait: Duration,
}

/// How many of the pending texts (token lengths in FIFO order) the next batch takes: as many as
/// fit the padded token budget and the text limit, and always at least one.
pub fn plan(lens: impl IntoIterator<Item = usize>, policy: &BatchPolicy) -> usize {
    let mut n = 0;
    let mut longest = 0;
    for len in lens {
        let new_longest = longest.max(len);
        if n > 0 && (n == policy.max_texts || (n + 1) * new_longest > policy.max_tokens) {
            break;
        }
        n += 1;
        longest = new_longest;
    }
    n
}

/// What a finished job returns.
#[derive(Debug)]
pub struct JobOutput {
    /// Pooled (not normalised) vectors, in the order of the job's texts.
    pub vectors: Vec<Vec<f32>>,
    pub queue: Duration,
    pub inference: Duration,
    pub batches: u32,
    pub max_batch_texts: u32,
}

#[derive(Debug, Default)]
struct Progress {
    vectors: Vec<Vec<f32>>,
    done: usize,
    batches: u32,
    max_batch_texts: u32,
    inference: Duration,
    first_start: Option<Instant>,
}

/// The queue's two lanes. Interactive work (queries, and calls that do not say) is batched before
/// bulk work (passages being ingested), so an ingest does not hold up searches; within a lane the
/// oldest text goes first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    Interactive = 0,
    Bulk = 1,
}

impl Lane {
    pub fn of(kind: crate::model::InputKind) -> Self {
        match kind {
            crate::model::InputKind::Passage => Lane::Bulk,
            crate::model::InputKind::Query | crate::model::InputKind::Unspecified => Lane::Interactive,
        }
    }
}

/// One request's texts on their way through the queue.
#[derive(Debug)]
pub struct Job {
    model: usize,
    lane: Lane,
    texts: Vec<Tokenized>,
    deadline: Option<Instant>,
    enqueued: Instant,
    span: tracing::Span,
    progress: Mutex<Progress>,
    reply: Mutex<Option<oneshot::Sender<Result<JobOutput, EmbedError>>>>,
}

impl Job {
    /// A job for `model` (index into the worker's backends) in `lane`, and its receiver.
    pub fn new(
        model: usize,
        lane: Lane,
        texts: Vec<Tokenized>,
        deadline: Option<Instant>,
    ) -> (Arc<Self>, oneshot::Receiver<Result<JobOutput, EmbedError>>) {
        let (tx, rx) = oneshot::channel();
        let n = texts.len();
        let job = Arc::new(Self {
            model,
            lane,
            texts,
            deadline,
            enqueued: Instant::now(),
            span: tracing::Span::current(),
            progress: Mutex::new(Progress { vectors: vec![Vec::new(); n], ..Default::default() }),
            reply: Mutex::new(Some(tx)),
        });
        (job, rx)
    }

    fn abandoned(&self) -> bool {
        lock(&self.reply).as_ref().is_none_or(oneshot::Sender::is_closed)
    }

    fn finish(&self, result: Result<JobOutput, EmbedError>) {
        if let Some(tx) = lock(&self.reply).take() {
            let _ = tx.send(result);
        }
    }

    fn complete(
        &self,
        range: Range<usize>,
        vectors: Vec<Vec<f32>>,
        batch_texts: usize,
        start: Instant,
        took: Duration,
    ) {
        let mut p = lock(&self.progress);
        p.done += range.len();
        for (slot, v) in p.vectors[range].iter_mut().zip(vectors) {
            *slot = v;
        }
        p.batches += 1;
        p.max_batch_texts = p.max_batch_texts.max(batch_texts as u32);
        p.inference += took;
        let first = *p.first_start.get_or_insert(start);
        if p.done == self.texts.len() {
            let out = JobOutput {
                vectors: std::mem::take(&mut p.vectors),
                queue: first.saturating_duration_since(self.enqueued),
                inference: p.inference,
                batches: p.batches,
                max_batch_texts: p.max_batch_texts,
            };
            drop(p);
            self.finish(Ok(out));
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding these locks cannot leave them inconsistent (plain data).
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

struct Pending {
    job: Arc<Job>,
    next: usize,
}

struct State {
    /// One queue per lane and model: `lane * models + model`.
    per_model: Vec<VecDeque<Pending>>,
    models: usize,
    closed: bool,
}

/// Texts of one batch: slices of jobs.
struct Batch {
    model: usize,
    parts: Vec<(Arc<Job>, Range<usize>)>,
}

/// The shared queue between request handlers and inference workers.
pub struct Queue {
    state: Mutex<State>,
    cond: Condvar,
    policy: BatchPolicy,
    metrics: Arc<EmbedderMetrics>,
    /// Measured inference cost of a batch on one worker, per model, a fixed part plus a part
    /// per padded token: the service rate admission divides the work ahead by, and the retry
    /// hints. Tokens, not texts: a batch's cost follows its padded tokens (texts × longest),
    /// whatever mix of short queries and long passages; the fixed part keeps one-query batches
    /// from pricing a full batch ahead at their own (high) cost per token. Per model: models
    /// served side by side differ several-fold (mpnet ≈ 5× MiniLM, an int8 variant ≈ 0.45× its
    /// fp32 model), and one fit through all their batches priced every model wrong.
    costs: Vec<BatchCost>,
}

/// Tokens admitted and not yet answered, per lane and model: the work ahead that admission
/// prices with each model's own measured cost.
#[derive(Debug)]
pub struct Backlog {
    /// `lane * models + model`.
    tokens: Vec<AtomicUsize>,
    models: usize,
}

impl Backlog {
    pub fn new(models: usize) -> Self {
        Self { tokens: (0..2 * models).map(|_| AtomicUsize::new(0)).collect(), models }
    }

    fn slot(&self, lane: Lane, model: usize) -> &AtomicUsize {
        &self.tokens[lane as usize * self.models + model]
    }

    pub fn add(&self, lane: Lane, model: usize, tokens: usize) {
        self.slot(lane, model).fetch_add(tokens, Ordering::Relaxed);
    }

    pub fn sub(&self, lane: Lane, model: usize, tokens: usize) {
        self.slot(lane, model).fetch_sub(tokens, Ordering::Relaxed);
    }

    pub fn get(&self, lane: Lane, model: usize) -> usize {
        self.slot(lane, model).load(Ordering::Relaxed)
    }
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue").field("policy", &self.policy).finish_non_exhaustive()
    }
}

impl Queue {
    pub fn new(
        models: usize,
        workers: usize,
        policy: BatchPolicy,
        metrics: Arc<EmbedderMetrics>,
    ) -> Arc<Self> {
        let batch_tokens = policy.max_tokens;
        Arc::new(Self {
            state: Mutex::new(State {
                per_model: (0..2 * models).map(|_| VecDeque::new()).collect(),
                models,
                closed: false,
            }),
            cond: Condvar::new(),
            policy,
            metrics,
            // 100 µs per token until measured (MiniLM runs ≈ 20–60 µs per token on one core).
            costs: (0..models.max(1))
                .map(|_| BatchCost::new(Duration::from_micros(100), workers, batch_tokens))
                .collect(),
        })
    }

    /// Enqueues a job; fails once the queue is closed for shutdown.
    pub fn submit(&self, job: Arc<Job>) -> Result<(), EmbedError> {
        let mut st = lock(&self.state);
        if st.closed {
            return Err(EmbedError::ShuttingDown);
        }
        let index = job.lane as usize * st.models + job.model;
        st.per_model[index].push_back(Pending { job, next: 0 });
        drop(st);
        self.cond.notify_all();
        Ok(())
    }

    fn cost(&self, model: usize) -> &BatchCost {
        &self.costs[model.min(self.costs.len() - 1)]
    }

    /// The measured inference time of one full batch (`max_tokens` padded tokens) of `model`.
    pub fn full_batch_time(&self, model: usize) -> Duration {
        self.cost(model).service_time(self.policy.max_tokens)
    }

    /// How long a client refused `tokens` more for `model` should wait: the estimated time to
    /// drain everything admitted (each model's tokens at its own cost) and its own tokens.
    pub fn retry_after(&self, backlog: &Backlog, model: usize, tokens: usize) -> Duration {
        let queued: Duration = (0..self.costs.len())
            .map(|m| self.costs[m].drain_time(backlog.get(Lane::Interactive, m) + backlog.get(Lane::Bulk, m)))
            .sum();
        (queued + self.cost(model).drain_time(tokens) + self.policy.max_wait)
            .clamp(Duration::from_millis(10), Duration::from_secs(10))
    }

    /// What `tokens` more tokens for `model` in `lane` would meet with `backlog` admitted before
    /// them: the time the workers need for the work ahead (plus the batch wait), each model's
    /// tokens priced at that model's measured cost, and their own inference time. Interactive
    /// work waits for the interactive tokens ahead and at most one running bulk batch (the
    /// dearest one the backlog could be running); bulk work for everything ahead.
    pub fn estimate(&self, backlog: &Backlog, lane: Lane, model: usize, tokens: usize) -> Estimate {
        let models = 0..self.costs.len();
        let interactive: Duration =
            models.clone().map(|m| self.costs[m].drain_time(backlog.get(Lane::Interactive, m))).sum();
        let bulk = match lane {
            Lane::Interactive => models
                .clone()
                .map(|m| self.costs[m].drain_time(backlog.get(Lane::Bulk, m).min(self.policy.max_tokens)))
                .max()
                .unwrap_or_default(),
            Lane::Bulk => models.clone().map(|m| self.costs[m].drain_time(backlog.get(Lane::Bulk, m))).sum(),
        };
        let ahead = interactive + bulk;
        let wait = if ahead.is_zero() { Duration::ZERO } else { ahead + self.policy.max_wait };
        Estimate { wait, service: self.cost(model).service_time(tokens) }
    }

    /// Stops accepting jobs; workers finish what is queued and exit.
    pub fn close(&self) {
        lock(&self.state).closed = true;
        self.cond.notify_all();
    }

    /// Blocks until a batch is due; `None` once closed and drained.
    fn next_batch(&self) -> Option<Batch> {
        let mut st = lock(&self.state);
        loop {
            let now = Instant::now();
            self.purge(&mut st, now);
            // The oldest job of the interactive lane's queues, else of the bulk lane's.
            let models = st.models;
            let oldest = st.per_model.chunks(models.max(1)).enumerate().find_map(|(lane, queues)| {
                queues
                    .iter()
                    .enumerate()
                    .filter_map(|(m, q)| q.front().map(|p| (lane * models + m, p.job.enqueued)))
                    .min_by_key(|&(_, t)| t)
            });
            let Some((index, enqueued)) = oldest else {
                if st.closed {
                    return None;
                }
                st = self.cond.wait(st).unwrap_or_else(std::sync::PoisonError::into_inner);
                continue;
            };
            let closed = st.closed;
            let model = index % models;
            let queue = &mut st.per_model[index];
            let lens = queue.iter().flat_map(|p| p.job.texts[p.next..].iter().map(|t| t.ids.len()));
            let total: usize = queue.iter().map(|p| p.job.texts.len() - p.next).sum();
            let take = plan(lens, &self.policy);
            let due = enqueued + self.policy.max_wait;
            if take == total && now < due && !closed {
                st = self
                    .cond
                    .wait_timeout(st, due - now)
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .0;
                continue;
            }
            let mut parts = Vec::new();
            let mut left = take;
            while left > 0 {
                let Some(front) = queue.front_mut() else {
                    break;
                };
                let n = left.min(front.job.texts.len() - front.next);
                parts.push((front.job.clone(), front.next..front.next + n));
                front.next += n;
                left -= n;
                if front.next == front.job.texts.len() {
                    queue.pop_front();
                }
            }
            return Some(Batch { model, parts });
        }
    }

    /// Drops queued jobs whose caller left or whose deadline passed, before they cost compute.
    fn purge(&self, st: &mut State, now: Instant) {
        for q in &mut st.per_model {
            q.retain(|p| {
                if p.job.abandoned() {
                    self.metrics.cancelled_dropped.inc();
                    false
                } else if p.job.deadline.is_some_and(|d| d <= now) {
                    self.metrics.deadline_dropped.inc();
                    p.job.finish(Err(EmbedError::DeadlineExceeded("queued for inference")));
                    false
                } else {
                    true
                }
            });
        }
    }

    fn record_cost(&self, model: usize, padded_tokens: usize, took: Duration) {
        self.cost(model).record(padded_tokens, took);
    }
}

/// Runs batches from `queue` on `backends` (one per model) until the queue is closed and empty.
pub fn run_worker(queue: &Queue, mut backends: Vec<Box<dyn Backend>>, pad_ids: &[u32]) {
    while let Some(batch) = queue.next_batch() {
        let texts: usize = batch.parts.iter().map(|(_, r)| r.len()).sum();
        let padded = PaddedBatch::new(
            batch.parts.iter().flat_map(|(job, r)| job.texts[r.clone()].iter().map(|t| t.ids.as_slice())),
            pad_ids[batch.model],
        );
        // A batch serves several requests: linked to each request's span (follows-from).
        let span = tracing::info_span!(
            "embed_batch",
            model = batch.model,
            texts,
            padded_tokens = padded.padded_tokens()
        );
        for (job, _) in &batch.parts {
            span.follows_from(job.span.id());
        }
        let _enter = span.enter();
        let start = Instant::now();
        let result = backends[batch.model].embed(&padded);
        let took = start.elapsed();
        queue.metrics.observe_batch(texts, padded.padded_tokens(), took);
        queue.record_cost(batch.model, padded.padded_tokens(), took);
        match result {
            Ok(mut vectors) => {
                for (job, range) in batch.parts.into_iter().rev() {
                    let tail = vectors.split_off(vectors.len() - range.len());
                    job.complete(range, tail, texts, start, took);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "batch inference failed");
                for (job, _) in batch.parts {
                    job.finish(Err(EmbedError::Runtime(e.to_string())));
                }
            }
        }
    }
}

/// Worker threads; joined on shutdown.
#[derive(Debug, Default)]
pub struct Workers {
    handles: Vec<JoinHandle<()>>,
}

impl Workers {
    /// Starts `n` threads; each builds its backends with `factory` before serving. Returns once
    /// every worker is ready, or the first error (the started workers are stopped).
    pub fn start<F>(queue: &Arc<Queue>, n: usize, pad_ids: Vec<u32>, factory: F) -> Result<Self, EmbedError>
    where
        F: Fn(usize) -> Result<Vec<Box<dyn Backend>>, EmbedError> + Send + Sync + 'static,
    {
        let factory = Arc::new(factory);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let mut workers = Workers::default();
        for i in 0..n {
            let (q, factory, ready, pad_ids) =
                (queue.clone(), factory.clone(), ready_tx.clone(), pad_ids.clone());
            let spawned =
                std::thread::Builder::new().name(format!("ragd-embed-{i}")).spawn(move || match factory(i) {
                    Ok(backends) => {
                        let _ = ready.send(Ok(()));
                        run_worker(&q, backends, &pad_ids);
                    }
                    Err(e) => {
                        let _ = ready.send(Err(e));
                    }
                });
            match spawned {
                Ok(h) => workers.handles.push(h),
                Err(e) => {
                    queue.close();
                    workers.join();
                    return Err(EmbedError::Runtime(format!("cannot start worker thread: {e}")));
                }
            }
        }
        drop(ready_tx);
        for _ in 0..n {
            match ready_rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    queue.close();
                    workers.join();
                    return Err(e);
                }
                Err(_) => {
                    queue.close();
                    workers.join();
                    return Err(EmbedError::Runtime("a worker thread died while loading".into()));
                }
            }
        }
        Ok(workers)
    }

    /// Waits for every worker to exit (after [`Queue::close`]).
    pub fn join(&mut self) {
        for h in self.handles.drain(..) {
            if h.join().is_err() {
                tracing::error!("an embedder worker thread panicked");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const P: BatchPolicy = BatchPolicy { max_tokens: 100, max_texts: 4, max_wait: Duration::ZERO };

    #[test]
    fn plan_respects_padded_budget_and_text_limit() {
        assert_eq!(plan([10, 10, 10], &P), 3);
        assert_eq!(plan([10; 9], &P), 4, "text limit");
        assert_eq!(plan([30, 30, 40], &P), 2, "3 x 40 = 120 > 100");
        assert_eq!(plan([500, 1], &P), 1, "an oversized text still goes alone");
        assert_eq!(plan([], &P), 0);
    }

    proptest! {
        #[test]
        fn plan_never_exceeds_limits(lens in proptest::collection::vec(1usize..80, 1..40),
                                     max_tokens in 80usize..400, max_texts in 1usize..16) {
            let p = BatchPolicy { max_tokens, max_texts, max_wait: Duration::ZERO };
            let n = plan(lens.iter().copied(), &p);
            prop_assert!(n >= 1 && n <= lens.len() && n <= max_texts);
            let longest = lens[..n].iter().max().copied().unwrap_or(0);
            prop_assert!(n == 1 || n * longest <= max_tokens);
            // Maximal: one more text would break a limit.
            if n < lens.len() {
                let longer = longest.max(lens[n]);
                prop_assert!(n == max_texts || (n + 1) * longer > max_tokens);
            }
        }
    }

    /// Test backend: the "embedding" of a text is [first id, length] so order is checkable.
    struct Echo;
    impl Backend for Echo {
        fn embed(&mut self, batch: &PaddedBatch) -> Result<Vec<Vec<f32>>, EmbedError> {
            Ok(batch
                .lens
                .iter()
                .enumerate()
                .map(|(i, &l)| vec![batch.input_ids[i * batch.seq] as f32, l as f32])
                .collect())
        }
    }

    fn texts(n: usize, len: usize, base: i64) -> Vec<Tokenized> {
        (0..n).map(|i| Tokenized { ids: vec![base + i as i64; len], truncated: false }).collect()
    }

    fn start(policy: BatchPolicy) -> (Arc<Queue>, Workers) {
        let metrics = Arc::new(EmbedderMetrics::default());
        let q = Queue::new(1, 1, policy, metrics);
        let w = Workers::start(&q, 1, vec![0], |_| Ok(vec![Box::new(Echo) as Box<dyn Backend>]))
            .expect("workers");
        (q, w)
    }

    #[tokio::test]
    async fn oversized_job_is_split_and_reassembled_in_order() {
        let (q, mut w) = start(BatchPolicy { max_tokens: 40, max_texts: 64, max_wait: Duration::ZERO });
        let (job, rx) = Job::new(0, Lane::Bulk, texts(25, 10, 1000), None);
        q.submit(job).expect("submit");
        let out = rx.await.expect("reply").expect("ok");
        assert_eq!(out.batches, 7, "25 texts of 10 tokens with a 40-token budget: 4 per batch");
        assert_eq!(out.max_batch_texts, 4);
        let firsts: Vec<f32> = out.vectors.iter().map(|v| v[0]).collect();
        assert_eq!(firsts, (1000..1025).map(|x| x as f32).collect::<Vec<_>>());
        q.close();
        w.join();
    }

    #[tokio::test]
    async fn concurrent_jobs_coalesce_within_max_wait() {
        let (q, mut w) =
            start(BatchPolicy { max_tokens: 1000, max_texts: 64, max_wait: Duration::from_millis(200) });
        let mut rxs = Vec::new();
        for i in 0..5 {
            let (job, rx) = Job::new(0, Lane::Bulk, texts(1, 5, 100 * i), None);
            q.submit(job).expect("submit");
            rxs.push(rx);
        }
        for (i, rx) in rxs.into_iter().enumerate() {
            let out = rx.await.expect("reply").expect("ok");
            assert_eq!(out.vectors[0][0], (100 * i) as f32);
            assert_eq!(out.max_batch_texts, 5, "all five requests ran in one batch");
        }
        q.close();
        w.join();
    }

    /// Test backend recording the first id of every batch it runs.
    struct Recorder(Arc<Mutex<Vec<i64>>>);
    impl Backend for Recorder {
        fn embed(&mut self, batch: &PaddedBatch) -> Result<Vec<Vec<f32>>, EmbedError> {
            lock(&self.0).push(batch.input_ids[0]);
            Ok(batch.lens.iter().map(|_| vec![0.0]).collect())
        }
    }

    #[tokio::test]
    async fn the_interactive_lane_is_batched_before_older_bulk_work() {
        let metrics = Arc::new(EmbedderMetrics::default());
        // Not-full batches wait 300 ms for company: both jobs are queued before either runs.
        let policy = BatchPolicy { max_tokens: 1000, max_texts: 64, max_wait: Duration::from_millis(300) };
        let q = Queue::new(1, 1, policy, metrics);
        let order = Arc::new(Mutex::new(Vec::new()));
        let o = order.clone();
        let mut w = Workers::start(&q, 1, vec![0], move |_| {
            Ok(vec![Box::new(Recorder(o.clone())) as Box<dyn Backend>])
        })
        .expect("workers");
        let (bulk, rx_bulk) = Job::new(0, Lane::Bulk, texts(2, 3, 500), None);
        q.submit(bulk).expect("submit");
        let (query, rx_query) = Job::new(0, Lane::of(crate::model::InputKind::Query), texts(1, 3, 7), None);
        q.submit(query).expect("submit");
        rx_query.await.expect("reply").expect("ok");
        rx_bulk.await.expect("reply").expect("ok");
        assert_eq!(*lock(&order), vec![7, 500], "the query ran first, alone in its batch");
        assert_eq!(Lane::of(crate::model::InputKind::Unspecified), Lane::Interactive);
        assert_eq!(Lane::of(crate::model::InputKind::Passage), Lane::Bulk);
        q.close();
        w.join();
    }

    /// Admission prices each model's queued tokens at that model's measured cost: a slow
    /// model's backlog delays a fast model's request by the slow model's time, and a request's
    /// own service time is its model's.
    #[test]
    fn the_work_ahead_is_priced_per_model() {
        let q = Queue::new(2, 1, P, Arc::new(EmbedderMetrics::default()));
        // Equal batch sizes: each fit is proportional. Model 0: 100 µs per token, model 1: 500 µs.
        for _ in 0..20 {
            q.record_cost(0, 100, Duration::from_millis(10));
            q.record_cost(1, 100, Duration::from_millis(50));
        }
        let b = Backlog::new(2);
        // The fits are floating point: equal to the microsecond.
        let us = |d: Duration| d.as_secs_f64() * 1e6;
        let near = |got: Duration, ms: f64| assert!((us(got) - ms * 1e3).abs() < 1.0, "{got:?} != {ms} ms");
        let idle = q.estimate(&b, Lane::Interactive, 0, 10);
        assert_eq!(idle.wait, Duration::ZERO);
        near(idle.service, 1.0);
        near(q.estimate(&b, Lane::Interactive, 1, 10).service, 5.0);

        b.add(Lane::Interactive, 1, 200);
        // 200 tokens of model 1 ahead: 100 ms, whichever model asks.
        near(q.estimate(&b, Lane::Interactive, 0, 10).wait, 100.0);
        b.add(Lane::Interactive, 0, 200);
        near(q.estimate(&b, Lane::Interactive, 1, 10).wait, 120.0);
        // Bulk: an interactive request waits for at most one bulk batch (P: 100 tokens), the
        // dearest; a bulk request for all of it.
        b.add(Lane::Bulk, 0, 1000);
        b.add(Lane::Bulk, 1, 300);
        near(q.estimate(&b, Lane::Interactive, 0, 10).wait, 170.0); // 120 + 100 tokens of model 1
        near(q.estimate(&b, Lane::Bulk, 0, 10).wait, 370.0); // 120 + 100 + 150
        near(q.retry_after(&b, 0, 10), 371.0); // + its own 1 ms
        b.sub(Lane::Bulk, 0, 1000);
        b.sub(Lane::Bulk, 1, 300);
        b.sub(Lane::Interactive, 0, 200);
        b.sub(Lane::Interactive, 1, 200);
        assert_eq!(q.estimate(&b, Lane::Bulk, 1, 10).wait, Duration::ZERO);
        // One full batch (P: 100 tokens) of each model.
        near(q.full_batch_time(0), 10.0);
        near(q.full_batch_time(1), 50.0);
    }

    #[tokio::test]
    async fn expired_and_abandoned_jobs_are_dropped_before_inference() {
        let metrics = Arc::new(EmbedderMetrics::default());
        let q = Queue::new(1, 1, P, metrics.clone());
        let (expired, rx_expired) = Job::new(0, Lane::Bulk, texts(1, 3, 1), Some(Instant::now()));
        let (abandoned, rx_abandoned) = Job::new(0, Lane::Bulk, texts(1, 3, 2), None);
        drop(rx_abandoned);
        q.submit(expired).expect("submit");
        q.submit(abandoned).expect("submit");
        // Workers start after both jobs are queued, so the purge sees them first.
        let mut w = Workers::start(&q, 1, vec![0], |_| Ok(vec![Box::new(Echo) as Box<dyn Backend>]))
            .expect("workers");
        let err = rx_expired.await.expect("reply").expect_err("deadline");
        assert!(matches!(err, EmbedError::DeadlineExceeded(_)), "{err}");
        q.close();
        w.join();
        assert_eq!(metrics.deadline_dropped.get(), 1);
        assert_eq!(metrics.cancelled_dropped.get(), 1);
        assert_eq!(metrics.batches_total(), 0, "no inference ran for dropped jobs");
    }

    #[tokio::test]
    async fn closed_queue_rejects_and_failing_factory_reports() {
        let (q, mut w) = start(P);
        q.close();
        w.join();
        let (job, _rx) = Job::new(0, Lane::Bulk, texts(1, 1, 1), None);
        assert!(matches!(q.submit(job), Err(EmbedError::ShuttingDown)));
        let q2 = Queue::new(1, 1, P, Arc::new(EmbedderMetrics::default()));
        let err =
            Workers::start(&q2, 2, vec![0], |_| Err(EmbedError::Runtime("boom".into()))).expect_err("fails");
        assert!(err.to_string().contains("boom"));
    }
}

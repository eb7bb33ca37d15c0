//! Query coalescing: single-query searches submitted concurrently are executed as one batch by
//! a dedicated thread. While a batch runs, new queries queue; the next batch takes all of them
//! (up to `max_batch`), waiting at most `max_wait` for more once the first has arrived. A batch
//! streams the matrix once for all its queries, which is where batched scoring pays off.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, TryRecvError, channel};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::{ExactError, ExactIndex, Neighbor};

struct Job {
    query: Vec<f32>,
    k: usize,
    reply: oneshot::Sender<Result<Vec<Neighbor>, ExactError>>,
}

/// Counters of what the coalescer did (for metrics and tests).
#[derive(Debug, Default)]
pub struct CoalesceStats {
    pub batches: AtomicU64,
    pub queries: AtomicU64,
    pub largest_batch: AtomicU64,
}

/// A batching front for an [`ExactIndex`] shared with writers.
#[derive(Debug, Clone)]
pub struct Coalescer {
    tx: Sender<Job>,
    stats: Arc<CoalesceStats>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job").field("k", &self.k).finish_non_exhaustive()
    }
}

impl Coalescer {
    /// Starts the batching thread; it stops when every `Coalescer` clone is dropped. Fails
    /// (instead of panicking) when the OS refuses a new thread.
    pub fn new(
        index: Arc<RwLock<ExactIndex>>,
        max_batch: usize,
        max_wait: Duration,
    ) -> Result<Self, ExactError> {
        let (tx, rx) = channel();
        let stats = Arc::new(CoalesceStats::default());
        let s = stats.clone();
        std::thread::Builder::new()
            .name("ragd-exact-coalesce".into())
            .spawn(move || run(index, rx, max_batch.max(1), max_wait, s))
            .map_err(|e| {
                tracing::error!(error = %e, "cannot start the exact engine's coalescing thread");
                ExactError::Stopped("could not be started")
            })?;
        Ok(Self { tx, stats })
    }

    pub fn stats(&self) -> &CoalesceStats {
        &self.stats
    }

    /// Searches one query, batched with whatever else is waiting.
    pub async fn search(&self, query: Vec<f32>, k: usize) -> Result<Vec<Neighbor>, ExactError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Job { query, k, reply }).map_err(|_| ExactError::Stopped("stopped"))?;
        rx.await.unwrap_or(Err(ExactError::Stopped("stopped")))
    }
}

fn run(
    index: Arc<RwLock<ExactIndex>>,
    rx: Receiver<Job>,
    max_batch: usize,
    max_wait: Duration,
    stats: Arc<CoalesceStats>,
) {
    while let Ok(first) = rx.recv() {
        let mut jobs = vec![first];
        let until = Instant::now() + max_wait;
        while jobs.len() < max_batch {
            match rx.try_recv() {
                Ok(j) => jobs.push(j),
                Err(TryRecvError::Disconnected) => break,
                Err(TryRecvError::Empty) => {
                    let left = until.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        break;
                    }
                    match rx.recv_timeout(left) {
                        Ok(j) => jobs.push(j),
                        Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
                    }
                }
            }
        }
        // Abandoned callers (dropped futures) cost nothing.
        jobs.retain(|j| !j.reply.is_closed());
        if jobs.is_empty() {
            continue;
        }
        execute(&index, jobs, &stats);
    }
}

fn execute(index: &RwLock<ExactIndex>, jobs: Vec<Job>, stats: &CoalesceStats) {
    let Ok(index) = index.read() else {
        for j in jobs {
            let _ = j.reply.send(Err(ExactError::Poisoned));
        }
        return;
    };
    let dim = index.dim();
    // Malformed queries are answered alone; the rest run as one batch with the largest k.
    let (good, bad): (Vec<Job>, Vec<Job>) = jobs.into_iter().partition(|j| j.query.len() == dim && j.k > 0);
    for j in bad {
        let r = index.search(&j.query, j.k);
        let _ = j.reply.send(r.map(|mut v| v.pop().unwrap_or_default()));
    }
    if good.is_empty() {
        return;
    }
    let k = good.iter().map(|j| j.k).max().unwrap_or(1);
    let queries: Vec<f32> = good.iter().flat_map(|j| j.query.iter().copied()).collect();
    stats.batches.fetch_add(1, Ordering::Relaxed);
    stats.queries.fetch_add(good.len() as u64, Ordering::Relaxed);
    stats.largest_batch.fetch_max(good.len() as u64, Ordering::Relaxed);
    match index.search(&queries, k) {
        Ok(results) => {
            for (j, mut hits) in good.into_iter().zip(results) {
                hits.truncate(j.k);
                let _ = j.reply.send(Ok(hits));
            }
        }
        // One bad query (NaN) must not fail its neighbours: answer each alone.
        Err(_) => {
            for j in good {
                let r = index.search(&j.query, j.k).map(|mut v| v.pop().unwrap_or_default());
                let _ = j.reply.send(r);
            }
        }
    }
}

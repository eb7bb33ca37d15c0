//! Latency-bounded admission, shared by every service.
//!
//! A queue bounded only by its size admits far more work than can finish within any caller's
//! deadline. Under overload every admitted call then waits until it times out: the server works
//! flat out on answers nobody waits for any more (congestion collapse). Instead, each service
//! estimates how long a new request would wait — the work ahead of it divided by the service rate
//! measured on the work done so far — and refuses it at once, with RESOURCE_EXHAUSTED and a retry
//! hint, when:
//!
//! - the expected wait is above the server's bound (`--max-queue-wait-ms`; 0 turns this
//!   admission off, leaving only the queue's size to bound it); or
//! - the caller's deadline comes before the wait plus the request's own expected service time.
//!   A request whose deadline is shorter than its own unloaded service time is *not* refused for
//!   load: it runs and ends DEADLINE_EXCEEDED, which is the truth about it.
//!
//! The admitted requests are then answered within about the bound plus their own service time,
//! and the excess callers learn at once to back off. The same idea as CoDel's "good queue"
//! (Nichols & Jacobson, 2012) and as gRPC's own advice to bound queue delay rather than queue
//! length, applied at admission, where refusing is still cheap.
//!
//! Three estimators of the service rate:
//! - [`UnitCost`]: the cost of one unit of work on one server, measured where the work runs
//!   exclusively (a token step of a generation slot);
//! - [`BatchCost`]: the cost of a batch on one server as a fixed part per batch plus a part per
//!   unit, fitted to the batches run (an inference batch on an embedder worker, whose one-text
//!   query batches cost far more per token than full ingest batches);
//! - [`Throughput`]: completions per second of a pool whose requests share the cores (processor
//!   sharing, like the indexer's searches), by Little's law from each request's latency and the
//!   requests it shared the cores with.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// How much of each new sample an estimate takes (an exponentially weighted mean).
const WEIGHT: f64 = 0.2;

fn ewma(cell: &AtomicU64, sample: f64) {
    // A lost update under a race only drops one sample of a running mean.
    let old = f64::from_bits(cell.load(Ordering::Relaxed));
    cell.store((old * (1.0 - WEIGHT) + sample * WEIGHT).to_bits(), Ordering::Relaxed);
}

/// An exponentially weighted running mean, shared between threads without a lock.
#[derive(Debug)]
pub struct RunningMean(AtomicU64);

impl RunningMean {
    pub fn new(initial: f64) -> Self {
        Self(AtomicU64::new(initial.to_bits()))
    }

    pub fn record(&self, sample: f64) {
        if sample.is_finite() {
            ewma(&self.0, sample);
        }
    }

    pub fn get(&self) -> f64 {
        f64::from_bits(self.0.load(Ordering::Relaxed))
    }
}

fn duration_ns(ns: f64) -> Duration {
    if ns.is_finite() && ns > 0.0 { Duration::from_nanos(ns.min(1e15) as u64) } else { Duration::ZERO }
}

/// The measured cost of one unit of work (a text, a token) on one of `servers` servers that each
/// run one piece of work at a time.
#[derive(Debug)]
pub struct UnitCost {
    ns_per_unit: AtomicU64,
    servers: usize,
}

impl UnitCost {
    /// Starts from `initial` per unit until work has been measured.
    pub fn new(initial: Duration, servers: usize) -> Self {
        Self { ns_per_unit: AtomicU64::new((initial.as_nanos() as f64).to_bits()), servers: servers.max(1) }
    }

    /// Records that `units` of work took `took` on one server.
    pub fn record(&self, units: usize, took: Duration) {
        if units > 0 {
            ewma(&self.ns_per_unit, took.as_nanos() as f64 / units as f64);
        }
    }

    /// The measured cost of one unit on one server.
    pub fn per_unit(&self) -> Duration {
        duration_ns(f64::from_bits(self.ns_per_unit.load(Ordering::Relaxed)))
    }

    /// How long `units` of work take with every server on them.
    pub fn drain_time(&self, units: usize) -> Duration {
        let per = f64::from_bits(self.ns_per_unit.load(Ordering::Relaxed));
        duration_ns(per * units as f64 / self.servers as f64)
    }

    /// How long `units` of work take on one server (a request's own service time).
    pub fn service_time(&self, units: usize) -> Duration {
        let per = f64::from_bits(self.ns_per_unit.load(Ordering::Relaxed));
        duration_ns(per * units as f64)
    }
}

/// How much each earlier batch's weight in the [`BatchCost`] fit keeps per newer batch (a memory
/// of about 50 batches).
const FORGET: f64 = 0.98;

/// The measured cost of a batch on one of `servers` servers that each run one batch at a time:
/// `per_batch + units × per_unit`, a least-squares line through the recent batches (exponential
/// forgetting), so that one-text query batches (mostly the fixed part) and full ingest batches
/// (mostly the per-unit part) are both estimated right. A single per-unit mean over both mixes
/// them: after a run of queries it priced an 8-text ingest batch ahead at 255 ms instead of
/// ≈ 80 ms, and refused searches on an embedder with room to spare.
///
/// Until batches of different sizes have been seen, the fit cannot tell the two parts apart and
/// the cost is proportional (`per_batch` 0), which is exact for the sizes seen.
#[derive(Debug)]
pub struct BatchCost {
    fit: Mutex<AffineFit>,
    servers: usize,
    /// Units one batch holds at most: the work ahead runs as this many units per batch.
    batch_units: usize,
}

/// Exponentially weighted sums of (units, ns) and the line fitted to them.
#[derive(Debug, Clone, Copy)]
struct AffineFit {
    w: f64,
    x: f64,
    y: f64,
    xx: f64,
    xy: f64,
    per_batch_ns: f64,
    per_unit_ns: f64,
}

impl AffineFit {
    fn add(&mut self, x: f64, y: f64) {
        self.w = self.w * FORGET + 1.0;
        self.x = self.x * FORGET + x;
        self.y = self.y * FORGET + y;
        self.xx = self.xx * FORGET + x * x;
        self.xy = self.xy * FORGET + x * y;
        let (mx, my) = (self.x / self.w, self.y / self.w);
        let var = self.xx / self.w - mx * mx;
        // Sizes that vary by less than ~5 % cannot separate the two parts.
        if var > (0.05 * mx).powi(2) {
            let slope = (self.xy / self.w - mx * my) / var;
            let intercept = my - slope * mx;
            if slope > 0.0 && intercept >= 0.0 {
                (self.per_batch_ns, self.per_unit_ns) = (intercept, slope);
                return;
            }
        }
        (self.per_batch_ns, self.per_unit_ns) = (0.0, self.y / self.x.max(f64::MIN_POSITIVE));
    }
}

impl BatchCost {
    /// Starts from `initial` per unit (no fixed part) until batches have been measured;
    /// `batch_units` is the most units one batch holds.
    pub fn new(initial: Duration, servers: usize, batch_units: usize) -> Self {
        let fit = AffineFit {
            w: 0.0,
            x: 0.0,
            y: 0.0,
            xx: 0.0,
            xy: 0.0,
            per_batch_ns: 0.0,
            per_unit_ns: initial.as_nanos() as f64,
        };
        Self { fit: Mutex::new(fit), servers: servers.max(1), batch_units: batch_units.max(1) }
    }

    fn current(&self) -> AffineFit {
        // A poisoned lock only means a panic elsewhere mid-update of plain numbers.
        *self.fit.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records that a batch of `units` took `took` on one server.
    pub fn record(&self, units: usize, took: Duration) {
        if units > 0 {
            self.fit.lock().unwrap_or_else(|e| e.into_inner()).add(units as f64, took.as_nanos() as f64);
        }
    }

    /// The fitted fixed cost of one batch.
    pub fn per_batch(&self) -> Duration {
        duration_ns(self.current().per_batch_ns)
    }

    /// The fitted cost of one more unit in a batch.
    pub fn per_unit(&self) -> Duration {
        duration_ns(self.current().per_unit_ns)
    }

    /// How long `units` of queued work take with every server on them: as full batches.
    pub fn drain_time(&self, units: usize) -> Duration {
        if units == 0 {
            return Duration::ZERO;
        }
        let f = self.current();
        let batches = units.div_ceil(self.batch_units) as f64;
        duration_ns((batches * f.per_batch_ns + units as f64 * f.per_unit_ns) / self.servers as f64)
    }

    /// How long `units` of work take as one batch on one server (a request's own service time).
    pub fn service_time(&self, units: usize) -> Duration {
        let f = self.current();
        duration_ns(f.per_batch_ns + units as f64 * f.per_unit_ns)
    }
}

/// Requests in flight in a pool whose requests share the cores, and its measured throughput.
///
/// Each completion gives one sample of the service rate by Little's law: a request that shared
/// the cores with `n` requests (itself included) for `latency` saw a rate of `n / latency`. Below
/// saturation the samples understate what the cores could do, which only matters when the queue
/// is short, where the wait it estimates is short too.
#[derive(Debug)]
pub struct Throughput {
    in_flight: AtomicUsize,
    /// Units per second (f64 bits).
    rate: AtomicU64,
    /// A unit's latency when alone (ns, f64 bits): the smallest recent per-unit latency.
    alone_ns: AtomicU64,
}

impl Throughput {
    /// Starts from `initial` units per second until completions have been measured.
    pub fn new(initial_per_sec: f64) -> Self {
        Self {
            in_flight: AtomicUsize::new(0),
            rate: AtomicU64::new(initial_per_sec.max(1e-3).to_bits()),
            alone_ns: AtomicU64::new((1e9 / initial_per_sec.max(1e-3)).to_bits()),
        }
    }

    /// Units in flight.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Units per second, as measured.
    pub fn rate(&self) -> f64 {
        f64::from_bits(self.rate.load(Ordering::Relaxed))
    }

    /// The estimate for `units` more units arriving now: how long the work ahead takes to drain,
    /// and how long these units take on their own.
    pub fn estimate(&self, units: usize) -> Estimate {
        let ahead = self.in_flight() as f64;
        let alone = f64::from_bits(self.alone_ns.load(Ordering::Relaxed));
        Estimate {
            wait: duration_ns(ahead / self.rate() * 1e9),
            service: duration_ns(alone * units.max(1) as f64),
        }
    }

    /// Counts `units` in until the returned guard is dropped; the guard's
    /// [`InFlight::complete`] records the completion.
    pub fn enter(&self, units: usize) -> InFlight<'_> {
        let units = units.max(1);
        let sharing = self.in_flight.fetch_add(units, Ordering::Relaxed) + units;
        InFlight { pool: self, units, sharing, started: Instant::now() }
    }
}

/// Units counted in a [`Throughput`] pool while a request runs.
#[derive(Debug)]
pub struct InFlight<'a> {
    pool: &'a Throughput,
    units: usize,
    /// Units in flight when it entered, its own included.
    sharing: usize,
    started: Instant,
}

impl InFlight<'_> {
    /// Records a successful completion (a failed request's latency says little about the rate).
    pub fn complete(self) {
        let latency = self.started.elapsed().as_secs_f64().max(1e-7);
        let now_sharing = self.pool.in_flight();
        // The mean of the load it met at the start and at the end.
        let sharing = (self.sharing + now_sharing) as f64 / 2.0;
        ewma(&self.pool.rate, sharing.max(self.units as f64) / latency);
        let per_unit = latency * 1e9 / self.units as f64;
        if self.sharing == self.units {
            // Alone at the start: its latency is the unloaded service time.
            ewma(&self.pool.alone_ns, per_unit);
        }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.pool.in_flight.fetch_sub(self.units, Ordering::Relaxed);
    }
}

/// What a new request would meet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Estimate {
    /// Until the work ahead of it is done.
    pub wait: Duration,
    /// Its own service time once it runs.
    pub service: Duration,
}

/// Why a request is refused at admission.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The expected wait is above the server's bound.
    QueueWait { expected: Duration, bound: Duration },
    /// The caller's deadline comes before the wait plus its own service time.
    Deadline { expected: Duration, left: Duration },
}

impl Refusal {
    /// When a retry could be admitted: once the work ahead has drained below the bound.
    pub fn retry_after(&self) -> Duration {
        let d = match *self {
            Refusal::QueueWait { expected, bound } => expected.saturating_sub(bound / 2),
            Refusal::Deadline { expected, .. } => expected,
        };
        d.clamp(Duration::from_millis(10), Duration::from_secs(10))
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        match *self {
            Refusal::QueueWait { expected, bound } => write!(
                f,
                "overloaded: expected queue wait {:.0} ms is above the bound of {:.0} ms",
                ms(expected),
                ms(bound)
            ),
            Refusal::Deadline { expected, left } => write!(
                f,
                "overloaded: expected wait and service {:.0} ms is longer than the {:.0} ms left \
                 before the caller's deadline",
                ms(expected),
                ms(left)
            ),
        }
    }
}

/// Admits a request that would meet `estimate`, or says why not. `bound` is the server's
/// queue-wait bound; `deadline` the caller's.
pub fn decide(
    estimate: Estimate,
    bound: Duration,
    deadline: Option<Instant>,
    now: Instant,
) -> Result<(), Refusal> {
    if estimate.wait.is_zero() {
        return Ok(());
    }
    if estimate.wait > bound {
        return Err(Refusal::QueueWait { expected: estimate.wait, bound });
    }
    if let Some(deadline) = deadline {
        let left = deadline.saturating_duration_since(now);
        let expected = estimate.wait + estimate.service;
        // Only when it would fit unloaded: a deadline shorter than the request's own service
        // time is not load's fault, and the request runs to its DEADLINE_EXCEEDED.
        if expected > left && estimate.service <= left {
            return Err(Refusal::Deadline { expected, left });
        }
    }
    Ok(())
}

/// `--max-queue-wait-ms` as a bound: 0 turns latency-bounded admission off (`None`).
pub fn bound_from_ms(ms: u64) -> Option<Duration> {
    (ms > 0).then(|| Duration::from_millis(ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn nothing_ahead_is_always_admitted() {
        let now = Instant::now();
        let e = Estimate { wait: Duration::ZERO, service: 500 * MS };
        assert_eq!(decide(e, MS, Some(now + MS), now), Ok(()));
    }

    #[test]
    fn a_wait_above_the_bound_is_refused_with_a_hint_to_come_back_when_it_drained() {
        let now = Instant::now();
        let e = Estimate { wait: 900 * MS, service: 50 * MS };
        let r = decide(e, 200 * MS, None, now).expect_err("refused");
        assert_eq!(r, Refusal::QueueWait { expected: 900 * MS, bound: 200 * MS });
        assert_eq!(r.retry_after(), 800 * MS);
        assert!(r.to_string().contains("900 ms") && r.to_string().contains("200 ms"), "{r}");
        assert_eq!(decide(e, 900 * MS, None, now), Ok(()), "at the bound is admitted");
    }

    #[test]
    fn a_deadline_before_wait_and_service_is_refused_unless_it_could_never_fit() {
        let now = Instant::now();
        let e = Estimate { wait: 100 * MS, service: 50 * MS };
        let bound = Duration::from_secs(1);
        assert_eq!(
            decide(e, bound, Some(now + 120 * MS), now),
            Err(Refusal::Deadline { expected: 150 * MS, left: 120 * MS })
        );
        assert_eq!(decide(e, bound, Some(now + 150 * MS), now), Ok(()));
        // 40 ms left, 50 ms of its own work: not load's fault, it runs (and times out).
        assert_eq!(decide(e, bound, Some(now + 40 * MS), now), Ok(()));
        // A deadline already passed: it could never fit either.
        assert_eq!(decide(e, bound, Some(now), now), Ok(()));
    }

    #[test]
    fn unit_cost_is_a_running_mean_split_over_the_servers() {
        let c = UnitCost::new(2 * MS, 2);
        assert_eq!(c.drain_time(10), 10 * MS);
        assert_eq!(c.service_time(10), 20 * MS);
        for _ in 0..100 {
            c.record(10, 40 * MS); // 4 ms per unit
        }
        let per = c.per_unit().as_secs_f64() * 1e3;
        assert!((per - 4.0).abs() < 0.01, "{per}");
        assert!((c.drain_time(100).as_secs_f64() - 0.2).abs() < 1e-3);
        c.record(0, Duration::from_secs(1)); // no units: ignored
        assert!((c.per_unit().as_secs_f64() * 1e3 - 4.0).abs() < 0.01);
    }

    /// Batches from a known line (2 ms + 50 µs per token): 20 one-query batches of 12 tokens for
    /// every 2 ingest batches of 512, the mix of a search + ingest load.
    #[test]
    fn batch_cost_separates_the_fixed_part_from_the_per_unit_part() {
        let truth = |units: usize| 2 * MS + Duration::from_micros(50) * units as u32;
        let c = BatchCost::new(Duration::from_micros(100), 1, 1024);
        assert_eq!(c.service_time(10), Duration::from_millis(1), "the initial per-unit guess");
        for _ in 0..20 {
            for _ in 0..10 {
                c.record(12, truth(12));
            }
            c.record(512, truth(512));
        }
        let close = |got: Duration, want: Duration| {
            let (g, w) = (got.as_secs_f64(), want.as_secs_f64());
            assert!((g - w).abs() <= 0.01 * w, "{got:?} vs {want:?}");
        };
        close(c.per_batch(), 2 * MS);
        close(c.per_unit(), Duration::from_micros(50));
        close(c.service_time(512), truth(512));
        close(c.service_time(12), truth(12));
        // An 8 × 64-token ingest batch ahead drains in one batch's time, not at the small
        // batches' price per token (2 ms / 12 tokens + 50 µs ≈ 217 µs per token: 111 ms).
        close(c.drain_time(512), truth(512));
        // 3000 tokens ahead run as three batches of at most 1024.
        close(c.drain_time(3000), 3 * 2 * MS + Duration::from_micros(50) * 3000);
        assert_eq!(c.drain_time(0), Duration::ZERO);
        c.record(0, Duration::from_secs(1)); // no units: ignored
        close(c.per_unit(), Duration::from_micros(50));
    }

    #[test]
    fn batch_cost_is_proportional_while_every_batch_has_one_size() {
        let c = BatchCost::new(Duration::from_micros(100), 2, 1000);
        for _ in 0..30 {
            c.record(100, 10 * MS);
        }
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        assert_eq!(c.per_batch(), Duration::ZERO);
        assert!((ms(c.service_time(100)) - 10.0).abs() < 1e-3, "{:?}", c.service_time(100));
        // Two servers share the work ahead.
        assert!((ms(c.drain_time(200)) - 10.0).abs() < 1e-3, "{:?}", c.drain_time(200));
    }

    #[test]
    fn throughput_follows_littles_law_and_counts_in_flight_until_dropped() {
        let t = Throughput::new(100.0);
        assert_eq!(t.estimate(1), Estimate { wait: Duration::ZERO, service: 10 * MS });
        assert_eq!(t.estimate(3).service, 30 * MS);
        {
            let a = t.enter(3);
            let _b = t.enter(1);
            assert_eq!(t.in_flight(), 4);
            // 4 units ahead at 100/s: 40 ms.
            assert_eq!(t.estimate(1).wait, 40 * MS);
            drop(a); // a failure: counted out, not recorded
            assert_eq!(t.in_flight(), 1);
            assert_eq!(t.rate(), 100.0);
        }
        assert_eq!(t.in_flight(), 0);
        // Ten units sharing the cores for (at least) 100 ms: a sample of at most 100 units/s,
        // weighted 0.2 into the 1000/s it had: between 800 and 820.
        let t = Throughput::new(1000.0);
        let g = t.enter(10);
        std::thread::sleep(100 * MS);
        g.complete();
        let r = t.rate();
        assert!(r > 800.0 && r <= 820.0 + 1e-6, "{r}");
        assert_eq!(t.in_flight(), 0);
        // It started alone: ≥ 10 ms per unit, weighted into the 1 ms it had.
        let alone = t.estimate(1).service;
        assert!(alone >= Duration::from_micros(2790) && alone < 10 * MS, "{alone:?}");
        // Not alone at the start: the unloaded service time is left as it is.
        let first = t.enter(1);
        let second = t.enter(1);
        second.complete();
        drop(first);
        assert_eq!(t.estimate(1).service, alone);
    }

    #[test]
    fn bound_zero_is_off() {
        assert_eq!(bound_from_ms(0), None);
        assert_eq!(bound_from_ms(250), Some(250 * MS));
    }
}

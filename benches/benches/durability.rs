//! What durability costs the embedded store, in one run on one machine, written to
//! docs/benchmarks.md: documents/s written through `EdgeStore::write` (4 chunks of 384-d each,
//! the chunks of the document's old version deleted in the same batch, as an ingest does) by 1
//! and by 8 concurrent writers, at each durability level — `none` (no journal: the path before
//! the journal, the baseline), `page-cache` (journal appended, no sync) and `fsync` (journal
//! synced, group commit) — and for the design not chosen, flushing the shards before every
//! acknowledgement (`none` + a checkpoint after each write). Levels alternate within each round
//! and the ratios are taken within a round (the VM drifts); the table gives the median of the
//! rounds. Vectors are precomputed: this is the store's ceiling, where the journal's cost is
//! the largest share; through the embedder an ingest is bound by inference (see "indexer").
//!
//! `cargo bench -p ragd-bench --bench durability`; `RAGD_BENCH_SECS` sets each measurement
//! (default 10 s; each cell runs a third of it), `RAGD_BENCH_ROUNDS` the rounds (default 3).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ragd_bench::{bench_secs, median, report};
use ragd_indexer::store::edge::{EdgeOptions, EdgeStore};
use ragd_indexer::store::journal::Durability;
use ragd_indexer::store::{ChunkPoint, Distance, StoreSpec, VectorStore, WriteBatch};

const DIM: usize = 384;
const CHUNKS: u32 = 4;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Level {
    None,
    PageCache,
    Fsync,
    /// The alternative design: no journal, every shard flushed before the acknowledgement.
    FlushBeforeAck,
}

impl Level {
    const ALL: [Level; 4] = [Level::None, Level::PageCache, Level::Fsync, Level::FlushBeforeAck];

    fn name(self) -> &'static str {
        match self {
            Level::None => "none (no journal; baseline)",
            Level::PageCache => "page-cache (journal, no sync)",
            Level::Fsync => "fsync (journal, group commit; default)",
            Level::FlushBeforeAck => "flush shards before each ack (not chosen)",
        }
    }

    fn durability(self) -> Durability {
        match self {
            Level::None | Level::FlushBeforeAck => Durability::None,
            Level::PageCache => Durability::PageCache,
            Level::Fsync => Durability::Fsync,
        }
    }
}

fn batch(writer: usize, n: u64) -> WriteBatch {
    let doc = format!("w{writer}-{}", n % 500);
    let mut s = (n.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ writer as u64) | 1;
    let upserts = (0..CHUNKS)
        .map(|chunk| {
            let vector: Vec<f32> = (0..DIM)
                .map(|_| {
                    s ^= s << 13;
                    s ^= s >> 7;
                    s ^= s << 17;
                    (s >> 11) as f32 / (1u64 << 53) as f32 - 0.5
                })
                .collect();
            ChunkPoint {
                doc_id: doc.clone(),
                chunk,
                text: format!("sentence {chunk} of document {doc}, version {n}, with some words in it."),
                metadata: Default::default(),
                vector,
                sparse: None,
            }
        })
        .collect();
    WriteBatch { upserts, delete_chunks_from: vec![(doc, CHUNKS)], delete_documents: Vec::new() }
}

/// Documents/s of `writers` concurrent writers for `secs` on a fresh store at `level`.
async fn measure(level: Level, writers: usize, secs: Duration) -> f64 {
    let dir = tempfile::tempdir().expect("tempdir");
    let options = EdgeOptions { durability: level.durability(), ..EdgeOptions::default() };
    let store = Arc::new(EdgeStore::with_options(dir.path(), options).expect("store"));
    let spec = StoreSpec {
        name: "bench".into(),
        dim: DIM,
        distance: Distance::Cosine,
        shards: 2,
        indexing_threshold_kb: None,
        replication_factor: None,
        write_consistency_factor: None,
        on_disk: None,
        sparse: true,
    };
    store.create(&spec).await.expect("create");
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let (store, done) = (store.clone(), done.clone());
            tokio::spawn(async move {
                let mut n = 0u64;
                while started.elapsed() < secs {
                    store.write("bench", batch(w, n)).await.expect("write");
                    if level == Level::FlushBeforeAck {
                        store.flush().await.expect("flush");
                    }
                    n += 1;
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("writer");
    }
    let rate = done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64();
    drop(store);
    rate
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let rounds: usize = std::env::var("RAGD_BENCH_ROUNDS").ok().and_then(|s| s.parse().ok()).unwrap_or(3);
    let cell = bench_secs() / 3;
    let mut rows = String::new();
    for writers in [1usize, 8] {
        // rates[round][level]
        let mut rates = Vec::new();
        for round in 0..rounds {
            let mut r = Vec::new();
            for level in Level::ALL {
                let rate = measure(level, writers, cell).await;
                eprintln!("round {} · {writers} writer(s) · {:?}: {rate:.0} documents/s", round + 1, level);
                r.push(rate);
            }
            rates.push(r);
        }
        for (i, level) in Level::ALL.iter().enumerate() {
            let per_round: Vec<f64> = rates.iter().map(|r| r[i]).collect();
            let ratio = median(rates.iter().map(|r| r[i] / r[0]).collect());
            rows.push_str(&format!(
                "| {writers} | {} | {} | {:.0} | {ratio:.2}× |\n",
                level.name(),
                per_round.iter().map(|x| format!("{x:.0}")).collect::<Vec<_>>().join(" / "),
                median(per_round.clone()),
            ));
        }
    }
    let body = format!(
        "### Durability (embedded store)\n\n\
         {machine}. Documents of {CHUNKS} chunks (384-d, old chunks deleted in the same batch) \
         written through `EdgeStore::write`, 2 shards, {rounds} rounds of {cell:.1} s per cell, \
         levels alternating within each round; ratio = median over rounds of the level's rate over \
         the baseline's (`none`) in the same round. The journal's cost is largest here, with no \
         inference in the path.\n\n\
         | writers | level | documents/s per round | median | vs none |\n|---:|---|---|---:|---:|\n\
         {rows}",
        machine = report::machine(),
        cell = cell.as_secs_f64(),
    );
    println!("{body}");
    report::update_section(&report::benchmarks_md(), "durability", &body).expect("write docs/benchmarks.md");
}

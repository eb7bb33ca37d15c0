//! The embedded store on the real Qdrant engine (qdrant-edge) in a temp directory: results are
//! checked against brute force, across shards, filters, thresholds, deletes, HNSW and reopening.

use ragd_indexer::IndexError;
use ragd_indexer::filter::{Condition, Filter, Test};
use ragd_indexer::store::edge::EdgeStore;
use ragd_indexer::store::{ChunkPoint, Distance, Hit, SearchOptions, StoreSpec, VectorStore};
use serde_json::json;

const DIM: usize = 32;

/// Deterministic clustered unit vectors (realistic for HNSW, unlike uniform noise).
fn vectors(n: usize, seed: u64) -> Vec<Vec<f32>> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 11) as f32 / (1u64 << 53) as f32 - 0.5
    };
    let centers: Vec<Vec<f32>> = (0..8).map(|_| (0..DIM).map(|_| next()).collect()).collect();
    (0..n)
        .map(|i| {
            let mut v: Vec<f32> = centers[i % 8].iter().map(|c| c + 0.15 * next()).collect();
            let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            v.iter_mut().for_each(|x| *x /= norm);
            v
        })
        .collect()
}

fn points(vs: &[Vec<f32>]) -> Vec<ChunkPoint> {
    vs.iter()
        .enumerate()
        .map(|(i, v)| ChunkPoint {
            doc_id: format!("doc-{}", i / 2),
            chunk: (i % 2) as u32,
            text: format!("text {i}"),
            metadata: json!({"n": i, "group": if i % 3 == 0 { "a" } else { "b" }})
                .as_object()
                .cloned()
                .unwrap_or_default(),
            vector: v.clone(),
        })
        .collect()
}

fn spec(name: &str, shards: u32) -> StoreSpec {
    StoreSpec { name: name.into(), dim: DIM, distance: Distance::Cosine, shards, indexing_threshold_kb: None }
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Brute-force top k (doc, chunk) by cosine among `pts` passing `keep`.
fn brute(pts: &[ChunkPoint], q: &[f32], k: usize, keep: impl Fn(&ChunkPoint) -> bool) -> Vec<(String, u32)> {
    let mut scored: Vec<(f32, &ChunkPoint)> =
        pts.iter().filter(|p| keep(p)).map(|p| (dot(&p.vector, q), p)).collect();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0));
    scored.into_iter().take(k).map(|(_, p)| (p.doc_id.clone(), p.chunk)).collect()
}

fn ids(hits: &[Hit]) -> Vec<(String, u32)> {
    hits.iter().map(|h| (h.doc_id.clone(), h.chunk)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sharded_exact_search_matches_brute_force_with_filters_and_thresholds() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = EdgeStore::new(dir.path()).expect("store");
    store.create(&spec("c", 3)).await.expect("create");
    let pts = points(&vectors(300, 1));
    store.upsert("c", pts.clone()).await.expect("upsert");
    let queries = vectors(5, 99);
    let exact = SearchOptions { k: 10, exact: true, ..Default::default() };
    let results = store.search("c", &queries, &exact).await.expect("search");
    for (q, hits) in queries.iter().zip(&results) {
        assert_eq!(ids(hits), brute(&pts, q, 10, |_| true));
        assert!(hits.windows(2).all(|w| w[0].score >= w[1].score), "best first");
        let top = &hits[0];
        assert!(
            (top.score
                - dot(
                    q,
                    &pts.iter()
                        .find(|p| p.doc_id == top.doc_id && p.chunk == top.chunk)
                        .expect("point")
                        .vector
                ))
            .abs()
                < 1e-4
        );
    }
    // Payload comes back intact.
    let h = &results[0][0];
    let n = h.metadata["n"].as_u64().expect("n") as usize;
    assert_eq!(h.text, format!("text {n}"));

    // Filters: match, range, must_not.
    let filter = Filter {
        must: vec![Condition { key: "group".into(), test: Test::Match(json!("a")) }],
        must_not: vec![Condition {
            key: "n".into(),
            test: Test::Range { gt: None, gte: None, lt: Some(60.0), lte: None },
        }],
        ..Default::default()
    };
    let filtered = SearchOptions { filter: Some(filter), ..exact.clone() };
    let r = store.search("c", &queries[..1], &filtered).await.expect("filtered");
    let keep = |p: &ChunkPoint| p.metadata["group"] == "a" && p.metadata["n"].as_u64().unwrap_or(0) >= 60;
    assert_eq!(ids(&r[0]), brute(&pts, &queries[0], 10, keep));

    // Threshold drops weaker hits.
    let cut = results[0][4].score - 1e-4;
    let thresholded = SearchOptions { score_threshold: Some(cut), ..exact.clone() };
    let r = store.search("c", &queries[..1], &thresholded).await.expect("threshold");
    assert!(r[0].len() >= 5 && r[0].iter().all(|h| h.score >= cut));

    // Stats: 150 documents of 2 chunks.
    let stats = store.stats("c").await.expect("stats");
    assert_eq!((stats.points, stats.documents, stats.shards.len()), (300, 150, 3));
    assert!(stats.shards.iter().all(|s| s.points > 0), "documents spread over shards: {:?}", stats.shards);
    assert!(stats.disk_bytes > 0);

    // Deleting a document removes all its chunks; re-upsert replaces.
    let victim = results[0][0].doc_id.clone();
    assert_eq!(store.count_chunks("c", &victim).await.expect("count"), 2);
    store.delete_documents("c", std::slice::from_ref(&victim)).await.expect("delete");
    assert_eq!(store.count_chunks("c", &victim).await.expect("count"), 0);
    let r = store.search("c", &queries[..1], &exact).await.expect("search");
    assert!(r[0].iter().all(|h| h.doc_id != victim));
    assert_eq!(store.stats("c").await.expect("stats").documents, 149);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_survives_reopen_and_the_directory_is_locked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pts = points(&vectors(100, 7));
    let q = vectors(1, 8);
    let opts = SearchOptions { k: 5, exact: true, ..Default::default() };
    let before = {
        let store = EdgeStore::new(dir.path()).expect("store");
        store.create(&spec("keep", 2)).await.expect("create");
        store.upsert("keep", pts.clone()).await.expect("upsert");
        let second = EdgeStore::new(dir.path()).expect_err("locked");
        assert!(matches!(second, IndexError::StoreUnavailable(_)), "{second}");
        let r = store.search("keep", &q, &opts).await.expect("search");
        store.flush().await.expect("flush");
        r
    };
    let store = EdgeStore::new(dir.path()).expect("reopen");
    store.open(&spec("keep", 2)).await.expect("open");
    let after = store.search("keep", &q, &opts).await.expect("search");
    assert_eq!(ids(&before[0]), ids(&after[0]));
    assert_eq!(store.stats("keep").await.expect("stats").points, 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn optimizer_builds_hnsw_and_it_agrees_with_exact_search() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = EdgeStore::new(dir.path()).expect("store");
    let spec = StoreSpec { indexing_threshold_kb: Some(10), ..spec("h", 1) };
    store.create(&spec).await.expect("create");
    let pts = points(&vectors(2000, 3));
    store.upsert("h", pts).await.expect("upsert");
    assert_eq!(store.stats("h").await.expect("stats").indexed_vectors, 0, "no index before optimize");
    assert!(store.optimize("h").await.expect("optimize"));
    let stats = store.stats("h").await.expect("stats");
    assert!(stats.indexed_vectors >= 1000, "HNSW built: {stats:?}");
    let queries = vectors(20, 5);
    let exact =
        store.search("h", &queries, &SearchOptions { k: 10, exact: true, ..Default::default() }).await;
    let hnsw =
        store.search("h", &queries, &SearchOptions { k: 10, hnsw_ef: Some(128), ..Default::default() }).await;
    let (exact, hnsw) = (exact.expect("exact"), hnsw.expect("hnsw"));
    let found: usize =
        exact.iter().zip(&hnsw).map(|(e, h)| ids(e).iter().filter(|id| ids(h).contains(id)).count()).sum();
    let recall = found as f64 / 200.0;
    assert!(recall >= 0.9, "recall@10 of HNSW vs exact: {recall}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_inputs_are_rejected_without_losing_data() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = EdgeStore::new(dir.path()).expect("store");
    store.create(&spec("c", 1)).await.expect("create");
    assert!(matches!(store.create(&spec("c", 1)).await, Err(IndexError::CollectionExists(_))));
    assert!(matches!(
        store.search("nope", &[vec![0.0; DIM]], &SearchOptions::default()).await,
        Err(IndexError::CollectionNotFound(_))
    ));
    let mut bad = points(&vectors(2, 1));
    bad[1].vector.pop();
    let err = store.upsert("c", bad).await.expect_err("wrong dimension");
    assert!(matches!(err, IndexError::InvalidArgument { field: "vector", .. }), "{err}");
    assert_eq!(store.stats("c").await.expect("stats").points, 0, "a rejected batch writes nothing");
    let err = store
        .search("c", &[vec![0.0; 3]], &SearchOptions { k: 1, ..Default::default() })
        .await
        .expect_err("dim");
    assert!(matches!(err, IndexError::InvalidArgument { field: "queries", .. }), "{err}");
    store.drop_collection("c").await.expect("drop");
    assert!(!dir.path().join("c").exists());
    assert!(matches!(store.drop_collection("c").await, Err(IndexError::CollectionNotFound(_))));
}

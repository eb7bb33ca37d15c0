//! One conformance suite for every `VectorStore`: the embedded store (qdrant-edge) and the remote
//! store (qdrant-client against the Qdrant-protocol test server, or a real Qdrant when
//! `QDRANT_URL` is set) must give the same answers, checked against brute force.

use std::time::{Duration, Instant};

use ragd_indexer::IndexError;
use ragd_indexer::filter::{AnyOf, Condition, Filter, Range, Scalar, Test};
use ragd_indexer::store::{ChunkPoint, Distance, Hit, ScrollPage, SearchOptions, StoreSpec, VectorStore};
use serde_json::json;

pub const DIM: usize = 32;

/// Deterministic clustered unit vectors (realistic for HNSW, unlike uniform noise).
pub fn vectors(n: usize, seed: u64) -> Vec<Vec<f32>> {
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

/// Two chunks per document, metadata `{n, group}`.
pub fn points(vs: &[Vec<f32>]) -> Vec<ChunkPoint> {
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
            sparse: None,
        })
        .collect()
}

pub fn spec(name: &str, shards: u32) -> StoreSpec {
    StoreSpec {
        name: name.into(),
        dim: DIM,
        distance: Distance::Cosine,
        shards,
        indexing_threshold_kb: None,
        replication_factor: None,
        write_consistency_factor: None,
        on_disk: None,
        sparse: true,
    }
}

fn score(distance: Distance, a: &[f32], b: &[f32]) -> f32 {
    match distance {
        Distance::Cosine | Distance::Dot => a.iter().zip(b).map(|(x, y)| x * y).sum(),
        Distance::Euclid => a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum::<f32>().sqrt(),
    }
}

/// Brute-force top k (doc, chunk) among `pts` passing `keep` (vectors are unit length, so
/// cosine is the dot product).
pub fn brute(
    distance: Distance,
    pts: &[ChunkPoint],
    q: &[f32],
    k: usize,
    keep: impl Fn(&ChunkPoint) -> bool,
) -> Vec<(String, u32)> {
    let mut scored: Vec<(f32, &ChunkPoint)> =
        pts.iter().filter(|p| keep(p)).map(|p| (score(distance, &p.vector, q), p)).collect();
    if distance.higher_is_better() {
        scored.sort_by(|a, b| b.0.total_cmp(&a.0));
    } else {
        scored.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    scored.into_iter().take(k).map(|(_, p)| (p.doc_id.clone(), p.chunk)).collect()
}

pub fn ids(hits: &[Hit]) -> Vec<(String, u32)> {
    hits.iter().map(|h| (h.doc_id.clone(), h.chunk)).collect()
}

/// Sharded exact search equals brute force, with payloads, filters, thresholds, stats, deletes.
pub async fn exact_search_matches_brute_force(store: &dyn VectorStore, name: &str) {
    store.create(&spec(name, 3)).await.expect("create");
    let pts = points(&vectors(300, 1));
    store.upsert(name, &pts).await.expect("upsert");
    let queries = vectors(5, 99);
    let exact = SearchOptions { k: 10, exact: true, ..Default::default() };
    let results = store.search(name, &queries, &exact).await.expect("search");
    assert_eq!(results.len(), queries.len(), "one result list per query");
    for (q, hits) in queries.iter().zip(&results) {
        assert_eq!(ids(hits), brute(Distance::Cosine, &pts, q, 10, |_| true));
        assert!(hits.windows(2).all(|w| w[0].score >= w[1].score), "best first");
        let top = &hits[0];
        let p = pts.iter().find(|p| p.doc_id == top.doc_id && p.chunk == top.chunk).expect("point");
        assert!((top.score - score(Distance::Cosine, q, &p.vector)).abs() < 1e-4);
    }
    // Payload comes back intact.
    let h = &results[0][0];
    let n = h.metadata["n"].as_u64().expect("n") as usize;
    assert_eq!(h.text, format!("text {n}"));
    assert_eq!(h.metadata, pts[n].metadata);

    // Filters: match, range, must_not, should.
    let cond = |key: &str, test| Condition::new(key, test).expect("a valid condition");
    let filter = Filter {
        must: vec![cond("group", Test::Match(Scalar::Keyword("a".into())))],
        must_not: vec![cond("n", Test::Range(Range { lt: Some(60.0), ..Range::default() }))],
        ..Default::default()
    };
    let filtered = SearchOptions { filter: Some(filter), ..exact.clone() };
    let r = store.search(name, &queries[..1], &filtered).await.expect("filtered");
    let keep = |p: &ChunkPoint| p.metadata["group"] == "a" && p.metadata["n"].as_u64().unwrap_or(0) >= 60;
    assert_eq!(ids(&r[0]), brute(Distance::Cosine, &pts, &queries[0], 10, keep));
    let should = Filter {
        should: vec![
            cond("n", Test::MatchAny(AnyOf::Integers(vec![3, 4, 250]))),
            cond("n", Test::Range(Range { gt: Some(295.0), ..Range::default() })),
        ],
        ..Default::default()
    };
    let r = store.search(name, &queries[..1], &SearchOptions { filter: Some(should), ..exact.clone() }).await;
    let mut got: Vec<u64> =
        r.expect("should").remove(0).iter().filter_map(|h| h.metadata["n"].as_u64()).collect();
    got.sort_unstable();
    assert_eq!(got, vec![3, 4, 250, 296, 297, 298, 299]);

    // Threshold drops weaker hits.
    let cut = results[0][4].score - 1e-4;
    let thresholded = SearchOptions { score_threshold: Some(cut), ..exact.clone() };
    let r = store.search(name, &queries[..1], &thresholded).await.expect("threshold");
    assert!(r[0].len() >= 5 && r[0].iter().all(|h| h.score >= cut), "{:?}", r[0]);

    // Stats: 150 documents of 2 chunks over 3 shards.
    let stats = store.stats(name).await.expect("stats");
    assert_eq!((stats.points, stats.documents, stats.shards.len()), (300, 150, 3));
    assert!(stats.shards.iter().all(|s| s.points > 0), "points spread over shards: {:?}", stats.shards);

    // Deleting a document removes all its chunks.
    let victim = results[0][0].doc_id.clone();
    assert_eq!(store.count_chunks(name, &victim).await.expect("count"), 2);
    // Distinct stored documents among the ids, over every shard at once.
    let all: Vec<String> = pts.iter().map(|p| p.doc_id.clone()).collect();
    assert_eq!(store.count_documents(name, &all).await.expect("count all"), 150);
    let some = vec![victim.clone(), victim.clone(), "no-such-doc".to_string(), all[299].clone()];
    let expected = if all[299] == victim { 1 } else { 2 };
    assert_eq!(store.count_documents(name, &some).await.expect("count some"), expected);
    store.delete_documents(name, std::slice::from_ref(&victim)).await.expect("delete");
    assert_eq!(store.count_chunks(name, &victim).await.expect("count"), 0);
    let r = store.search(name, &queries[..1], &exact).await.expect("search");
    assert!(r[0].iter().all(|h| h.doc_id != victim));
    assert_eq!(store.stats(name).await.expect("stats").documents, 149);
    store.drop_collection(name).await.expect("drop");
}

/// Scrolling in pages of 7 over 3 shards returns every chunk once, with its payload and (when
/// asked) its vector; a filter keeps exactly the matching chunks; a forged offset is
/// INVALID_ARGUMENT `offset`.
pub async fn scroll_pages_through_every_chunk(store: &dyn VectorStore, name: &str) {
    store.create(&spec(name, 3)).await.expect("create");
    let pts = points(&vectors(50, 21));
    store.upsert(name, &pts).await.expect("upsert");
    let scroll_all = |filter: Option<Filter>, with_vectors: bool| async move {
        let (mut seen, mut offset, mut pages) = (Vec::new(), None, 0);
        loop {
            let page = ScrollPage { filter: filter.clone(), limit: 7, offset, with_vectors };
            let out = store.scroll(name, &page).await.expect("scroll");
            assert!(out.chunks.len() <= 7, "a page holds at most its limit");
            seen.extend(out.chunks);
            pages += 1;
            assert!(pages <= 50, "scroll does not end");
            match out.next {
                Some(next) => offset = Some(next),
                None => break,
            }
        }
        seen
    };
    let mut all = scroll_all(None, true).await;
    all.sort_by(|a, b| (&a.doc_id, a.chunk).cmp(&(&b.doc_id, b.chunk)));
    let mut want = pts.clone();
    want.sort_by(|a, b| (&a.doc_id, a.chunk).cmp(&(&b.doc_id, b.chunk)));
    assert_eq!(all.len(), want.len(), "every chunk exactly once");
    for (got, want) in all.iter().zip(&want) {
        assert_eq!(
            (&got.doc_id, got.chunk, &got.text, &got.metadata),
            (&want.doc_id, want.chunk, &want.text, &want.metadata)
        );
        assert!(
            got.vector.iter().zip(&want.vector).all(|(a, b)| (a - b).abs() < 1e-5),
            "vector of {}",
            got.doc_id
        );
        assert_eq!(got.vector.len(), DIM);
    }
    let group_a = Filter {
        must: vec![Condition::new("group", Test::Match(Scalar::Keyword("a".into()))).expect("condition")],
        ..Default::default()
    };
    let mut a = scroll_all(Some(group_a), false).await;
    a.sort_by_key(|p| p.metadata["n"].as_u64());
    let want_a: Vec<u64> = (0..50).filter(|i| i % 3 == 0).collect();
    assert_eq!(a.iter().filter_map(|p| p.metadata["n"].as_u64()).collect::<Vec<_>>(), want_a);
    assert!(a.iter().all(|p| p.vector.is_empty()), "no vectors unless asked");
    let forged = ScrollPage { limit: 5, offset: Some("not-an-offset".into()), ..Default::default() };
    match store.scroll(name, &forged).await {
        Err(IndexError::InvalidArgument { field, .. }) => assert_eq!(field, "offset"),
        other => panic!("forged offset: {other:?}"),
    }
    store.drop_collection(name).await.expect("drop");
}

/// Storage made before keyword search (`sparse: false`) gets the keyword vector: keyword search
/// is refused before and finds by the given weights after; every chunk keeps its text and dense
/// vector; later writes carry weights too.
pub async fn keyword_vector_rebuild(store: &dyn VectorStore, name: &str) {
    use ragd_indexer::store::{SparseOf, SparseVector};
    let old = StoreSpec { sparse: false, ..spec(name, 2) };
    store.create(&old).await.expect("create");
    let pts = points(&vectors(40, 5));
    store.upsert(name, &pts).await.expect("upsert");
    let q = SparseVector { indices: vec![7], values: vec![1.0] };
    let keyword = SearchOptions { k: 10, ..Default::default() };
    match store.search_keyword(name, std::slice::from_ref(&q), &keyword).await {
        Err(IndexError::FailedPrecondition { .. }) => {}
        other => panic!("keyword search without the vector: {other:?}"),
    }
    // Term 7 for the texts ending in 7 ("text 7", "text 17", ...), else term 1.
    let weights: SparseOf = std::sync::Arc::new(|text: &str| {
        let term = if text.ends_with('7') { 7 } else { 1 };
        SparseVector { indices: vec![term], values: vec![1.0] }
    });
    let (rebuilt, weighted) = store.add_keyword_vector(&old, weights).await.expect("rebuild");
    assert!(rebuilt.sparse && rebuilt.dim == old.dim && rebuilt.shards == old.shards);
    assert_eq!(weighted, 40, "every chunk weighted");
    let found = store.search_keyword(name, std::slice::from_ref(&q), &keyword).await.expect("keyword search");
    let mut texts: Vec<String> = found[0].iter().map(|h| h.text.clone()).collect();
    texts.sort();
    assert_eq!(texts, vec!["text 17", "text 27", "text 37", "text 7"]);
    let exact = SearchOptions { k: 40, exact: true, ..Default::default() };
    let all = store.search(name, &[pts[0].vector.clone()], &exact).await.expect("dense");
    assert_eq!(all[0].len(), 40, "every chunk kept");
    assert_eq!(ids(&all[0][..1]), vec![(pts[0].doc_id.clone(), pts[0].chunk)], "its own vector first");
    let later = ChunkPoint {
        doc_id: "later".into(),
        chunk: 0,
        text: "text 77".into(),
        metadata: Default::default(),
        vector: pts[1].vector.clone(),
        sparse: Some(SparseVector { indices: vec![7], values: vec![2.0] }),
    };
    store.upsert(name, &[later]).await.expect("a write after the rebuild");
    let found = store.search_keyword(name, &[q], &keyword).await.expect("keyword search");
    assert_eq!(found[0][0].doc_id, "later", "the heavier weight ranks first");
    store.drop_collection(name).await.expect("drop");
}

/// Re-upserting a shorter document and deleting its tail leaves exactly the new chunks.
pub async fn reupsert_replaces_a_document(store: &dyn VectorStore, name: &str) {
    store.create(&spec(name, 2)).await.expect("create");
    let vs = vectors(4, 11);
    let chunk = |i: usize, text: &str| ChunkPoint {
        doc_id: "doc".into(),
        chunk: i as u32,
        text: text.into(),
        metadata: Default::default(),
        vector: vs[i].clone(),
        sparse: None,
    };
    store.upsert(name, &(0..3).map(|i| chunk(i, "old")).collect::<Vec<_>>()).await.expect("upsert v1");
    assert_eq!(store.count_chunks(name, "doc").await.expect("count"), 3);
    store.upsert(name, &[chunk(0, "new")]).await.expect("upsert v2");
    store.delete_chunks_from(name, &[("doc".into(), 1)]).await.expect("delete tail");
    assert_eq!(store.count_chunks(name, "doc").await.expect("count"), 1);
    let r = store.search(name, &vs[..1], &SearchOptions { k: 5, exact: true, ..Default::default() }).await;
    let hits = r.expect("search").remove(0);
    assert_eq!(hits.iter().map(|h| (h.chunk, h.text.as_str())).collect::<Vec<_>>(), vec![(0, "new")]);
    store.drop_collection(name).await.expect("drop");
}

/// Chunks read by id (what GetDocument uses): payload and vector of each asked chunk, in the
/// order asked, None for a chunk not stored; a point without keyword weights (empty text) too.
pub async fn retrieve_reads_chunks_by_id(store: &dyn VectorStore, name: &str) {
    store.create(&spec(name, 2)).await.expect("create");
    let mut pts = points(&vectors(6, 5));
    // doc-2 chunk 0 without text and with empty keyword weights: stored with its dense vector only.
    pts[4].text.clear();
    pts[4].sparse = Some(Default::default());
    store.upsert(name, &pts).await.expect("upsert");
    let asked: Vec<(String, u32)> = [("doc-1", 1), ("doc-0", 0), ("doc-9", 0), ("doc-2", 0)]
        .iter()
        .map(|(d, c)| (d.to_string(), *c))
        .collect();
    let hits = store.retrieve(name, &asked).await.expect("retrieve");
    let got: Vec<Option<(String, u32, String, serde_json::Value)>> = hits
        .into_iter()
        .map(|h| h.map(|h| (h.doc_id, h.chunk, h.text, serde_json::Value::Object(h.metadata))))
        .collect();
    let want = |i: usize| {
        Some((
            pts[i].doc_id.clone(),
            pts[i].chunk,
            pts[i].text.clone(),
            serde_json::Value::Object(pts[i].metadata.clone()),
        ))
    };
    assert_eq!(got, vec![want(3), want(0), None, want(4)]);
    let vectors = store.vectors(name, &asked).await.expect("vectors");
    for (v, i) in vectors.iter().zip([Some(3), Some(0), None, Some(4)]) {
        match (v, i) {
            (Some(v), Some(i)) => {
                let diff = v.iter().zip(&pts[i].vector).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
                assert!(diff < 1e-6, "chunk {i}: {diff}");
            }
            (None, None) => {}
            other => panic!("{other:?}"),
        }
    }
    store.drop_collection(name).await.expect("drop");
}

/// A snapshot holds the collection as of the call (writes after it are not in it); restored
/// under a new name it has the same points, payloads and exact answers, while the original goes
/// on; a name taken or a directory without the store's snapshot is refused, nothing created.
/// `dir` and `empty` are new, empty directories.
pub async fn snapshot_restores_into_a_new_name(
    store: &dyn VectorStore,
    name: &str,
    dir: &std::path::Path,
    empty: &std::path::Path,
) {
    let original = spec(name, 2);
    store.create(&original).await.expect("create");
    let pts = points(&vectors(80, 31));
    let (before, after) = pts.split_at(60);
    store.upsert(name, before).await.expect("upsert");
    store.snapshot(name, dir).await.expect("snapshot");
    store.upsert(name, after).await.expect("upsert after the snapshot");

    let copy = format!("{name}-copy");
    let restored = StoreSpec { name: copy.clone(), ..original.clone() };
    store.restore(&restored, dir).await.expect("restore");
    assert_eq!(store.stats(&copy).await.expect("stats").points, 60, "the snapshot's points only");
    assert_eq!(store.stats(name).await.expect("stats").points, 80, "the original goes on");
    let queries = vectors(4, 32);
    let exact = SearchOptions { k: 7, exact: true, ..Default::default() };
    let answers = store.search(&copy, &queries, &exact).await.expect("search the copy");
    for (q, hits) in queries.iter().zip(&answers) {
        assert_eq!(ids(hits), brute(Distance::Cosine, before, q, 7, |_| true));
    }
    let asked: Vec<(String, u32)> = before.iter().step_by(9).map(|p| (p.doc_id.clone(), p.chunk)).collect();
    let hits = store.retrieve(&copy, &asked).await.expect("retrieve");
    for (hit, (doc, chunk)) in hits.iter().zip(&asked) {
        let p = before.iter().find(|p| &p.doc_id == doc && p.chunk == *chunk).expect("point");
        let hit = hit.as_ref().expect("restored chunk");
        assert_eq!((&hit.text, &hit.metadata), (&p.text, &p.metadata));
    }

    let err = store.restore(&restored, dir).await.expect_err("name taken");
    assert!(matches!(err, IndexError::CollectionExists(_)), "{err:?}");
    let other = StoreSpec { name: format!("{name}-none"), ..original };
    let err = store.restore(&other, empty).await.expect_err("no snapshot there");
    assert!(matches!(err, IndexError::FailedPrecondition { field: "snapshot", .. }), "{err:?}");
    assert!(store.stats(&other.name).await.is_err(), "nothing created");
    store.drop_collection(&copy).await.expect("drop copy");
    store.drop_collection(name).await.expect("drop");
}

/// Dot and euclid rank like brute force; euclid scores are distances (ascending).
pub async fn distances_rank_like_brute_force(store: &dyn VectorStore, name: &str) {
    let pts = points(&vectors(120, 21));
    let queries = vectors(3, 22);
    for distance in [Distance::Dot, Distance::Euclid] {
        let spec = StoreSpec { distance, ..spec(name, 2) };
        store.create(&spec).await.expect("create");
        store.upsert(name, &pts).await.expect("upsert");
        let r =
            store.search(name, &queries, &SearchOptions { k: 7, exact: true, ..Default::default() }).await;
        for (q, hits) in queries.iter().zip(r.expect("search")) {
            assert_eq!(ids(&hits), brute(distance, &pts, q, 7, |_| true), "{distance:?}");
            let ordered = hits.windows(2).all(|w| match distance {
                Distance::Euclid => w[0].score <= w[1].score,
                _ => w[0].score >= w[1].score,
            });
            assert!(ordered, "{distance:?} order: {hits:?}");
        }
        store.drop_collection(name).await.expect("drop");
    }
}

/// The store's indexer (embedded: `optimize()`; Qdrant: its own optimizer) builds HNSW, and
/// HNSW search agrees with exact search (recall@10 ≥ 0.9).
pub async fn hnsw_agrees_with_exact(store: &dyn VectorStore, name: &str) {
    let spec = StoreSpec { indexing_threshold_kb: Some(10), ..spec(name, 1) };
    store.create(&spec).await.expect("create");
    store.upsert(name, &points(&vectors(2000, 3))).await.expect("upsert");
    let until = Instant::now() + Duration::from_secs(120);
    loop {
        store.optimize(name).await.expect("optimize");
        let stats = store.stats(name).await.expect("stats");
        if stats.indexed_vectors >= 1000 {
            break;
        }
        assert!(Instant::now() < until, "no HNSW index after 120 s: {stats:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let queries = vectors(20, 5);
    let exact =
        store.search(name, &queries, &SearchOptions { k: 10, exact: true, ..Default::default() }).await;
    let hnsw = store
        .search(name, &queries, &SearchOptions { k: 10, hnsw_ef: Some(256), ..Default::default() })
        .await;
    let (exact, hnsw) = (exact.expect("exact"), hnsw.expect("hnsw"));
    let found: usize =
        exact.iter().zip(&hnsw).map(|(e, h)| ids(e).iter().filter(|id| ids(h).contains(id)).count()).sum();
    let recall = found as f64 / 200.0;
    // ef 256, not 128: until the full-scan threshold followed the indexing threshold, this check
    // only ever saw full scans (recall 1.0). With the index really answering, ef 128 read
    // 0.965–0.995 in six runs and 0.87 once in CI under load; ef 256 read 1.0 in all six.
    assert!(recall >= 0.9, "recall@10 of HNSW vs exact: {recall}");
    // The smallest beam (ef = k) misses some neighbours: the index, an approximate structure, is
    // what answered — not a full scan (Qdrant full-scans segments under its full-scan threshold
    // even when they are indexed, which ragd sets to the indexing threshold).
    let narrow = store
        .search(name, &queries, &SearchOptions { k: 10, hnsw_ef: Some(10), ..Default::default() })
        .await
        .expect("hnsw ef 10");
    let found: usize =
        exact.iter().zip(&narrow).map(|(e, h)| ids(e).iter().filter(|id| ids(h).contains(id)).count()).sum();
    assert!(found < 200, "HNSW with ef 10 found every exact neighbour: a full scan answered");
    store.drop_collection(name).await.expect("drop");
}

/// Duplicates, unknown collections and wrong dimensions get clear errors and lose nothing.
pub async fn bad_inputs_are_rejected_without_losing_data(store: &dyn VectorStore, name: &str) {
    store.create(&spec(name, 1)).await.expect("create");
    assert!(matches!(store.create(&spec(name, 1)).await, Err(IndexError::CollectionExists(_))));
    let missing = format!("{name}-missing");
    assert!(matches!(
        store.search(&missing, &[vec![0.0; DIM]], &SearchOptions { k: 1, ..Default::default() }).await,
        Err(IndexError::CollectionNotFound(_))
    ));
    let good = points(&vectors(2, 1));
    store.upsert(name, &good[..1]).await.expect("upsert");
    let mut bad = good.clone();
    bad[1].vector.pop();
    let err = store.upsert(name, &bad).await.expect_err("wrong dimension");
    assert!(matches!(err, IndexError::InvalidArgument { field: "vector", .. }), "{err}");
    assert_eq!(store.stats(name).await.expect("stats").points, 1, "a rejected batch writes nothing");
    let err = store
        .search(name, &[vec![0.0; 3]], &SearchOptions { k: 1, ..Default::default() })
        .await
        .expect_err("dim");
    assert!(matches!(err, IndexError::InvalidArgument { field: "queries", .. }), "{err}");
    store.drop_collection(name).await.expect("drop");
    assert!(matches!(store.drop_collection(name).await, Err(IndexError::CollectionNotFound(_))));
    assert!(matches!(store.stats(name).await, Err(IndexError::CollectionNotFound(_))));
}

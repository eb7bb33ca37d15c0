//! The embedded store on the real Qdrant engine (qdrant-edge) in a temp directory: the shared
//! store conformance suite (brute-force checks, filters, thresholds, deletes, HNSW), plus what
//! only a local store has: reopening, the directory lock, disk usage.

use ragd_indexer::IndexError;
use ragd_indexer::store::edge::EdgeStore;
use ragd_indexer::store::{SearchOptions, StoreSpec, VectorStore};
use ragd_tests::store_suite::{self, ids, points, spec, vectors};

fn store() -> (tempfile::TempDir, EdgeStore) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = EdgeStore::new(dir.path()).expect("store");
    (dir, store)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exact_search_matches_brute_force() {
    let (_dir, store) = store();
    store_suite::exact_search_matches_brute_force(&store, "c").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reupsert_replaces_a_document() {
    let (_dir, store) = store();
    store_suite::reupsert_replaces_a_document(&store, "c").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distances_rank_like_brute_force() {
    let (_dir, store) = store();
    store_suite::distances_rank_like_brute_force(&store, "c").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn optimizer_builds_hnsw_and_it_agrees_with_exact_search() {
    let (_dir, store) = store();
    let spec = StoreSpec { indexing_threshold_kb: Some(10), ..spec("h", 1) };
    store.create(&spec).await.expect("create");
    store.upsert("h", &points(&vectors(2000, 3))).await.expect("upsert");
    assert_eq!(store.stats("h").await.expect("stats").indexed_vectors, 0, "no index before optimize");
    store.drop_collection("h").await.expect("drop");
    store_suite::hnsw_agrees_with_exact(&store, "h").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_inputs_are_rejected_without_losing_data() {
    let (dir, store) = store();
    store_suite::bad_inputs_are_rejected_without_losing_data(&store, "c").await;
    assert!(!dir.path().join("c").exists(), "drop removes the shard directories");
    let err =
        store.create(&StoreSpec { replication_factor: Some(2), ..spec("r", 1) }).await.expect_err("replicas");
    assert!(matches!(err, IndexError::InvalidArgument { field: "replication_factor", .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_survives_reopen_and_the_directory_is_locked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pts = points(&vectors(100, 7));
    let q = vectors(1, 8);
    let opts = SearchOptions { k: 5, exact: true, ..Default::default() };
    let on_disk = StoreSpec { on_disk: Some(true), ..spec("keep", 2) };
    let before = {
        let store = EdgeStore::new(dir.path()).expect("store");
        store.create(&on_disk).await.expect("create");
        store.upsert("keep", &pts).await.expect("upsert");
        let second = EdgeStore::new(dir.path()).expect_err("locked");
        assert!(matches!(second, IndexError::StoreUnavailable(_)), "{second}");
        let r = store.search("keep", &q, &opts).await.expect("search");
        assert!(store.stats("keep").await.expect("stats").disk_bytes > 0);
        store.flush().await.expect("flush");
        r
    };
    let store = EdgeStore::new(dir.path()).expect("reopen");
    store.open(&on_disk).await.expect("open");
    let after = store.search("keep", &q, &opts).await.expect("search");
    assert_eq!(ids(&before[0]), ids(&after[0]));
    assert_eq!(store.stats("keep").await.expect("stats").points, 100);
}

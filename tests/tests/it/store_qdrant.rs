//! The remote store (qdrant-client over gRPC) through the same conformance suite as the embedded
//! store. It runs against the Qdrant-protocol test server (a test double backed by the real
//! Qdrant engine; see `ragd_tests::qdrant_test_server`) or, when `QDRANT_URL` is set, against a
//! real Qdrant (e.g. `QDRANT_URL=http://localhost:6334`). Each test uses its own collection
//! prefix and drops what it creates.

use std::sync::atomic::{AtomicU32, Ordering};

use qdrant_client::qdrant::GetCollectionInfoRequest;
use ragd_indexer::IndexError;
use ragd_indexer::store::remote::{QdrantConfig, QdrantStore, compatible};
use ragd_indexer::store::{SearchOptions, StoreSpec, VectorStore};
use ragd_tests::qdrant_test_server::{QdrantProtocolTestServer, qdrant_rest_url, qdrant_url_or_test_server};
use ragd_tests::store_suite::{self, ids, points, spec, vectors};

/// A store on the target with a prefix of its own (tests share a real Qdrant).
async fn store() -> (Option<QdrantProtocolTestServer>, QdrantStore, QdrantConfig) {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let (url, server) = qdrant_url_or_test_server().await;
    let config = QdrantConfig {
        rest_url: qdrant_rest_url(server.as_ref()),
        url,
        api_key: std::env::var("QDRANT_API_KEY").ok(),
        collection_prefix: format!(
            "ragdtest_{}_{}_",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ),
        ..QdrantConfig::default()
    };
    let store = QdrantStore::connect(&config).await.expect("connect to qdrant");
    (server, store, config)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exact_search_matches_brute_force() {
    let (_server, store, _) = store().await;
    store_suite::exact_search_matches_brute_force(&store, "c").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retrieve_reads_chunks_by_id() {
    let (_server, store, _) = store().await;
    store_suite::retrieve_reads_chunks_by_id(&store, "r").await;
}

/// Qdrant's own snapshot API: CreateSnapshot over gRPC, the file downloaded and later uploaded
/// (recovered under a new name) over REST, the server's copy deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_restores_into_a_new_name() {
    let (server, store, config) = store().await;
    let (snap, empty) = (tempfile::tempdir().expect("tempdir"), tempfile::tempdir().expect("tempdir"));
    store_suite::snapshot_restores_into_a_new_name(&store, "snap", snap.path(), empty.path()).await;
    let file = snap.path().join(ragd_indexer::store::remote::SNAPSHOT_FILE);
    assert!(std::fs::metadata(&file).expect("the qdrant snapshot file").len() > 0);
    if let Some(server) = &server {
        assert_eq!(server.snapshot_count(), 0, "qdrant's own copy is deleted after the download");
    }

    // The REST URL is implied from a gRPC URL on port 6334; with neither, snapshots are refused
    // naming the setting (the test server's gRPC port is not 6334).
    let implied =
        QdrantConfig { url: "http://qdrant:6334/".into(), rest_url: String::new(), ..config.clone() };
    assert_eq!(implied.rest_url().as_deref(), Some("http://qdrant:6333"));
    if server.is_some() {
        let no_rest = QdrantConfig { rest_url: String::new(), ..config };
        assert_eq!(no_rest.rest_url(), None);
        let store = QdrantStore::connect(&no_rest).await.expect("connect");
        store.create(&spec("plain", 1)).await.expect("create");
        let err = store.snapshot("plain", snap.path()).await.expect_err("no REST URL");
        assert!(matches!(err, IndexError::FailedPrecondition { field: "qdrant_rest_url", .. }), "{err:?}");
        store.drop_collection("plain").await.expect("drop");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reupsert_replaces_a_document() {
    let (_server, store, _) = store().await;
    store_suite::reupsert_replaces_a_document(&store, "c").await;
}

/// Storage from before keyword search gets the keyword vector (UpdateCollection, Qdrant ≥ 1.18,
/// then every point written again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyword_vector_rebuild() {
    let (_server, store, _) = store().await;
    store_suite::keyword_vector_rebuild(&store, "k").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scroll_pages_through_every_chunk() {
    let (_server, store, _) = store().await;
    store_suite::scroll_pages_through_every_chunk(&store, "s").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distances_rank_like_brute_force() {
    let (_server, store, _) = store().await;
    store_suite::distances_rank_like_brute_force(&store, "c").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_side_optimizer_builds_hnsw_and_it_agrees_with_exact_search() {
    let (_server, store, _) = store().await;
    store_suite::hnsw_agrees_with_exact(&store, "h").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_inputs_are_rejected_without_losing_data() {
    let (_server, store, _) = store().await;
    store_suite::bad_inputs_are_rejected_without_losing_data(&store, "c").await;
    // A registered collection whose Qdrant collection is gone cannot be opened.
    let err = store.open(&spec("never-created", 1)).await.expect_err("missing");
    assert!(matches!(err, IndexError::StoreUnavailable(_)), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collection_options_map_to_qdrant_and_data_survives_a_new_client() {
    let (_server, store, config) = store().await;
    let spec = StoreSpec {
        replication_factor: Some(1),
        write_consistency_factor: Some(1),
        on_disk: Some(true),
        ..spec("opts", 2)
    };
    store.create(&spec).await.expect("create");
    let pts = points(&vectors(50, 4));
    store.upsert("opts", &pts).await.expect("upsert");

    // What Qdrant itself was told, read back with qdrant-client.
    let client =
        qdrant_client::Qdrant::from_url(&config.url).skip_compatibility_check().build().expect("client");
    let info = client
        .collection_info(GetCollectionInfoRequest {
            collection_name: format!("{}opts", config.collection_prefix),
        })
        .await
        .expect("info")
        .result
        .expect("result");
    let params = info.config.and_then(|c| c.params).expect("params");
    assert_eq!(
        (params.shard_number, params.replication_factor, params.write_consistency_factor),
        (2, Some(1), Some(1))
    );
    let Some(qdrant_client::qdrant::vectors_config::Config::Params(v)) =
        params.vectors_config.and_then(|v| v.config)
    else {
        panic!("one unnamed vector expected");
    };
    let cold = Some(qdrant_client::qdrant::Memory::Cold as i32);
    assert_eq!((v.size, v.distance, v.memory), (32, qdrant_client::qdrant::Distance::Cosine as i32, cold));
    assert_eq!(params.payload.and_then(|p| p.memory), cold);

    // An indexer restart is a new client that opens the same collection.
    let q = vectors(1, 9);
    let opts = SearchOptions { k: 5, exact: true, ..Default::default() };
    let before = store.search("opts", &q, &opts).await.expect("search");
    drop(store);
    let again = QdrantStore::connect(&config).await.expect("reconnect");
    again.open(&spec).await.expect("open");
    let after = again.search("opts", &q, &opts).await.expect("search");
    assert_eq!(ids(&before[0]), ids(&after[0]));
    let stats = again.stats("opts").await.expect("stats");
    assert_eq!((stats.points, stats.documents, stats.shards.len()), (50, 25, 2));
    assert!(stats.optimizer_state.as_deref().is_some_and(|s| s.starts_with("qdrant ")), "{stats:?}");
    again.drop_collection("opts").await.expect("drop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_qdrant_is_unavailable_not_a_panic() {
    let port = ragd_tests::free_port();
    let config =
        QdrantConfig { url: format!("http://127.0.0.1:{port}"), timeout_secs: 2, ..QdrantConfig::default() };
    let err = QdrantStore::connect(&config).await.expect_err("nothing listens there");
    assert!(matches!(err, IndexError::StoreUnavailable(_)), "{err}");
}

#[test]
fn version_compatibility_follows_qdrants_rule() {
    assert!(compatible("1.20.0") && compatible("1.19.3") && compatible("1.21.0") && compatible("v1.20.1"));
    assert!(!compatible("1.18.0") && !compatible("2.20.0") && !compatible("dev") && !compatible(""));
}

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
async fn retrieve_reads_chunks_by_id() {
    let (_dir, store) = store();
    store_suite::retrieve_reads_chunks_by_id(&store, "r").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_restores_into_a_new_name() {
    let (_dir, store) = store();
    let (snap, empty) = (tempfile::tempdir().expect("tempdir"), tempfile::tempdir().expect("tempdir"));
    store_suite::snapshot_restores_into_a_new_name(&store, "snap", snap.path(), empty.path()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reupsert_replaces_a_document() {
    let (_dir, store) = store();
    store_suite::reupsert_replaces_a_document(&store, "c").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scroll_pages_through_every_chunk() {
    let (_dir, store) = store();
    store_suite::scroll_pages_through_every_chunk(&store, "s").await;
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

/// A copy of a live data directory taken after the writes were acknowledged and before any
/// flush: what the disk holds when the process is killed at that moment (the copy reads the
/// page cache, as a restart after SIGKILL does).
fn crash_image(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read dir").flatten() {
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            crash_image(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).expect("copy");
        }
    }
}

fn chunk(doc: &str, n: u32, text: &str, v: &[f32]) -> ragd_indexer::store::ChunkPoint {
    ragd_indexer::store::ChunkPoint {
        doc_id: doc.into(),
        chunk: n,
        text: text.into(),
        metadata: serde_json::json!({ "doc": doc }).as_object().cloned().unwrap_or_default(),
        vector: v.to_vec(),
        sparse: None,
    }
}

/// Every stored chunk as (doc, chunk, text), sorted: a full scan plus a retrieve of the payloads.
async fn contents(store: &EdgeStore, name: &str) -> Vec<(String, u32, String)> {
    let ids: Vec<(String, u32)> =
        store.scan(name).await.expect("scan").into_iter().map(|p| (p.doc_id, p.chunk)).collect();
    let mut out: Vec<(String, u32, String)> = store
        .retrieve(name, &ids)
        .await
        .expect("retrieve")
        .into_iter()
        .map(|h| h.expect("scanned chunk has a payload"))
        .map(|h| (h.doc_id, h.chunk, h.text))
        .collect();
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_journal_replays_acknowledged_writes_after_a_crash() {
    use ragd_indexer::store::WriteBatch;
    use ragd_indexer::store::edge::EdgeOptions;
    use ragd_indexer::store::journal::Durability;

    let v = vectors(8, 11);
    for durability in [Durability::Fsync, Durability::PageCache] {
        let live = tempfile::tempdir().expect("tempdir");
        let image = tempfile::tempdir().expect("tempdir");
        let options = EdgeOptions { durability, ..EdgeOptions::default() };
        let store = EdgeStore::with_options(live.path(), options).expect("store");
        store.create(&spec("gone", 1)).await.expect("create");
        store.upsert("gone", &[chunk("x", 0, "of a dropped collection", &v[0])]).await.expect("upsert");
        store.drop_collection("gone").await.expect("drop");
        // Created again: the journal's records of its first life must not come back.
        store.create(&spec("gone", 1)).await.expect("re-create");
        store.create(&spec("c", 2)).await.expect("create");
        let first = WriteBatch {
            upserts: vec![
                chunk("a", 0, "a0", &v[1]),
                chunk("a", 1, "a1", &v[2]),
                chunk("a", 2, "a2", &v[3]),
                chunk("b", 0, "b0", &v[4]),
                chunk("c", 0, "c0", &v[5]),
            ],
            ..Default::default()
        };
        store.write("c", first).await.expect("first batch");
        // "a" again, shorter: its new chunks and the removal of chunk 2 are one batch.
        let second = WriteBatch {
            upserts: vec![chunk("a", 0, "a0 v2", &v[6])],
            delete_chunks_from: vec![("a".into(), 1)],
            ..Default::default()
        };
        store.write("c", second).await.expect("second batch");
        store.delete_documents("c", &["b".into()]).await.expect("delete");
        let want = contents(&store, "c").await;
        assert_eq!(
            want,
            vec![("a".into(), 0, "a0 v2".into()), ("c".into(), 0, "c0".into())],
            "{durability:?}: the live store"
        );
        crash_image(live.path(), image.path());
        // A write torn by the crash: half a record at the end of the newest journal file.
        let journal = image.path().join(".journal");
        let newest =
            std::fs::read_dir(&journal).expect("journal").flatten().map(|e| e.path()).max().expect("a file");
        let mut torn = std::fs::read(&newest).expect("read");
        torn.extend_from_slice(&[0x40, 0, 0, 0, 1, 2, 3, 4, 5, 6]);
        std::fs::write(&newest, torn).expect("tear");

        let reopened = EdgeStore::with_options(image.path(), options).expect("reopen");
        let recovery = reopened.open_all(&[spec("gone", 1), spec("c", 2)]).await.expect("open_all");
        assert_eq!(recovery.records, 3, "{durability:?}: {recovery:?}");
        assert_eq!(recovery.skipped, 1, "{durability:?}: the dropped life's record: {recovery:?}");
        assert_eq!((recovery.failed, recovery.torn_bytes), (0, 10), "{durability:?}: {recovery:?}");
        assert_eq!(contents(&reopened, "c").await, want, "{durability:?}: after the crash");
        assert!(contents(&reopened, "gone").await.is_empty(), "{durability:?}: the first life stays gone");
        // The replay was checkpointed: the next start has nothing left to replay.
        drop(reopened);
        let again = EdgeStore::new(image.path()).expect("third open");
        let recovery = again.open_all(&[spec("gone", 1), spec("c", 2)]).await.expect("open_all");
        assert_eq!(recovery, ragd_indexer::store::Recovery::default());
        assert_eq!(contents(&again, "c").await, want);
    }
}

/// What a crash in the middle of a keyword-vector rebuild's swap leaves: between its two renames
/// the old storage is restored; a half-built copy is removed. Then the rebuild itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyword_vector_rebuild_and_an_interrupted_swap() {
    let dir = tempfile::tempdir().expect("tempdir");
    let old = StoreSpec { sparse: false, ..spec("c", 2) };
    let pts = points(&vectors(40, 5));
    {
        let store = EdgeStore::new(dir.path()).expect("store");
        store.create(&old).await.expect("create");
        store.upsert("c", &pts).await.expect("upsert");
        store.flush().await.expect("flush");
    }
    // A crash after the first rename of a swap: the collection's directory is gone, the old
    // storage is under .retired-c, the copy under .rebuild-c.
    std::fs::rename(dir.path().join("c"), dir.path().join(".retired-c")).expect("rename");
    std::fs::create_dir_all(dir.path().join(".rebuild-c/shard-0")).expect("half-built copy");
    let reopened = EdgeStore::new(dir.path()).expect("store");
    reopened.open_all(std::slice::from_ref(&old)).await.expect("open_all restores it");
    assert_eq!(reopened.stats("c").await.expect("stats").points, 40);
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .expect("dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!names.iter().any(|n| n.starts_with(".rebuild") || n.starts_with(".retired")), "{names:?}");
    drop(reopened);
    // The rebuild itself, through the conformance suite (the Qdrant store runs the same).
    let (_dir, fresh) = store();
    store_suite::keyword_vector_rebuild(&fresh, "k").await;
}

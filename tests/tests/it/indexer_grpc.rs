//! The indexer over real gRPC with a real embedder (MiniLM through ONNX Runtime) and the real
//! Qdrant engine (embedded, or behind the Qdrant protocol), on the npm country-json corpus: "The capital of {country} is {city}."

use ragd_indexer::store::remote::QdrantConfig;
use ragd_indexer::{IndexerConfig, StoreKind};
use ragd_proto::json::to_struct;
use ragd_proto::v1::{self, indexer_client::IndexerClient};
use ragd_tests::qdrant_test_server::{qdrant_rest_url, qdrant_url_or_test_server};
use ragd_tests::{TestEmbedder, TestIndexer, embedder_config};
use serde_json::json;
use tonic::Code;
use tonic::transport::Channel;

fn documents(corpus: &[(String, String)]) -> Vec<v1::Document> {
    corpus
        .iter()
        .enumerate()
        .map(|(i, (country, city))| {
            let letter = country.chars().next().map(String::from).unwrap_or_default();
            let meta = json!({"country": country, "city": city, "letter": letter, "index": i});
            v1::Document {
                id: country.clone(),
                text: format!("The capital of {country} is {city}."),
                metadata: meta.as_object().cloned().map(to_struct),
                vector: Vec::new(),
            }
        })
        .collect()
}

fn text_query(collection: &str, q: &str, k: u32) -> v1::SearchRequest {
    v1::SearchRequest {
        collection: collection.into(),
        queries: vec![v1::Query { query: Some(v1::query::Query::Text(q.into())) }],
        k,
        ..Default::default()
    }
}

async fn top(client: &mut IndexerClient<Channel>, req: v1::SearchRequest) -> Vec<v1::Hit> {
    let mut r = client.search(req).await.expect("search").into_inner();
    r.results.remove(0).hits
}

fn indexer_config(data_dir: &std::path::Path, embedder: &str) -> IndexerConfig {
    IndexerConfig {
        data_dir: data_dir.to_path_buf(),
        embedder_url: embedder.into(),
        ..IndexerConfig::default()
    }
}

fn keyword(key: &str, v: &str) -> v1::Condition {
    v1::Condition {
        key: key.into(),
        test: Some(v1::condition::Test::Match(v1::Value { kind: Some(v1::value::Kind::Keyword(v.into())) })),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capitals_ingest_search_filter_threshold_and_restart_embedded_store() {
    let embedder = TestEmbedder::start(embedder_config(&["all-MiniLM-L6-v2"])).await;
    let data = tempfile::tempdir().expect("tempdir");
    capitals_scenario(indexer_config(data.path(), &embedder.url)).await;
    embedder.stop().await.expect("stop");
}

/// The same scenario with the vectors in Qdrant: the Qdrant-protocol test server, or a real
/// Qdrant when `QDRANT_URL` is set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capitals_ingest_search_filter_threshold_and_restart_qdrant_store() {
    let embedder = TestEmbedder::start(embedder_config(&["all-MiniLM-L6-v2"])).await;
    let data = tempfile::tempdir().expect("tempdir");
    let (url, _server) = qdrant_url_or_test_server().await;
    // A data directory that does not exist yet: the registry creates it at start-up whatever
    // the store (it once failed the first CreateCollection with the remote store).
    let data_dir = data.path().join("not-yet");
    let config = IndexerConfig {
        store: StoreKind::Qdrant,
        qdrant: QdrantConfig {
            rest_url: qdrant_rest_url(_server.as_ref()),
            url,
            api_key: std::env::var("QDRANT_API_KEY").ok(),
            collection_prefix: format!("ragdtest_{}_grpc_", std::process::id()),
            ..QdrantConfig::default()
        },
        ..indexer_config(&data_dir, &embedder.url)
    };
    capitals_scenario(config).await;
    embedder.stop().await.expect("stop");
}

/// Ingest the corpus, search (batch, filters, thresholds), replace and delete documents, restart
/// the indexer and get the same answers; drops the collection at the end.
async fn capitals_scenario(config: IndexerConfig) {
    let indexer = TestIndexer::start(config.clone()).await;
    let mut client = indexer.client().await;

    let info = client
        .create_collection(v1::CreateCollectionRequest {
            name: "capitals".into(),
            shards: 3,
            ..Default::default()
        })
        .await
        .expect("create")
        .into_inner();
    assert_eq!((info.dim, info.model.as_str(), info.shards.len()), (384, "all-MiniLM-L6-v2", 3));

    let corpus = ragd_tests::capitals();
    assert_eq!(corpus.len(), 238, "245 records less 7 without a capital");
    let r = client
        .upsert_batch(v1::UpsertRequest { collection: "capitals".into(), documents: documents(&corpus) })
        .await
        .expect("upsert")
        .into_inner();
    assert_eq!((r.documents, r.chunks, r.failed.len()), (238, 238, 0));

    let hits = top(&mut client, text_query("capitals", "What is the capital of Germany?", 3)).await;
    assert_eq!(hits[0].doc_id, "Germany", "{hits:?}");
    assert_eq!(hits[0].text, "The capital of Germany is Berlin.");
    let meta = ragd_proto::json::from_struct(hits[0].metadata.clone().expect("metadata"));
    assert_eq!(meta["city"], "Berlin");
    assert!(hits.windows(2).all(|w| w[0].score >= w[1].score));

    // Several queries in one request, answered in order.
    let batch = v1::SearchRequest {
        collection: "capitals".into(),
        queries: ["capital of Japan", "capital of France"]
            .iter()
            .map(|q| v1::Query { query: Some(v1::query::Query::Text(q.to_string())) })
            .collect(),
        k: 1,
        ..Default::default()
    };
    let r = client.search(batch).await.expect("batch").into_inner();
    let firsts: Vec<&str> = r.results.iter().map(|q| q.hits[0].doc_id.as_str()).collect();
    assert_eq!(firsts, vec!["Japan", "France"]);

    // Filter: only countries starting with F; range on an integer field; exact search.
    let mut req = text_query("capitals", "What is the capital of Germany?", 5);
    req.filter = Some(v1::Filter { must: vec![keyword("letter", "F")], ..Default::default() });
    req.exact = true;
    let hits = top(&mut client, req).await;
    assert!(!hits.is_empty() && hits.iter().all(|h| h.doc_id.starts_with('F')), "{hits:?}");
    let mut req = text_query("capitals", "capital city", 50);
    req.filter = Some(v1::Filter {
        must: vec![v1::Condition {
            key: "index".into(),
            test: Some(v1::condition::Test::Range(v1::Range { lt: Some(10.0), ..Default::default() })),
        }],
        ..Default::default()
    });
    assert_eq!(top(&mut client, req).await.len(), 10);

    // Threshold: everything returned scores at least it; an impossible one returns nothing.
    let mut req = text_query("capitals", "What is the capital of Germany?", 20);
    req.score_threshold = Some(0.5);
    let hits = top(&mut client, req).await;
    assert!(!hits.is_empty() && hits.iter().all(|h| h.score >= 0.5));
    let mut req = text_query("capitals", "What is the capital of Germany?", 20);
    req.score_threshold = Some(0.999);
    assert!(top(&mut client, req).await.is_empty());

    // Re-upsert replaces all chunks; delete removes; status follows.
    let long = "Berlin is the capital. It is big. It has a river. It has a tower. It has a wall. It is old.";
    let docs =
        vec![v1::Document { id: "Germany".into(), text: long.into(), metadata: None, vector: Vec::new() }];
    let r = client.upsert_batch(v1::UpsertRequest { collection: "capitals".into(), documents: docs }).await;
    assert_eq!(r.expect("re-upsert").into_inner().chunks, 3, "6 sentences, windows of 3 sharing 1");
    let docs = vec![v1::Document {
        id: "Germany".into(),
        text: "The capital of Germany is Berlin.".into(),
        metadata: None,
        vector: Vec::new(),
    }];
    client
        .upsert_batch(v1::UpsertRequest { collection: "capitals".into(), documents: docs })
        .await
        .expect("again");
    let status = |id: &str| v1::DocumentStatusRequest { collection: "capitals".into(), id: id.into() };
    let s = client.document_status(status("Germany")).await.expect("status").into_inner();
    assert_eq!((s.state, s.chunks), (v1::IngestState::Stored as i32, 1), "stale chunks were removed");
    let d =
        client.delete(v1::DeleteRequest { collection: "capitals".into(), ids: vec!["France".into()] }).await;
    assert_eq!(d.expect("delete").into_inner().deleted, 1);
    let hits = top(&mut client, text_query("capitals", "What is the capital of France?", 5)).await;
    assert!(hits.iter().all(|h| h.doc_id != "France"));
    let gone = client.document_status(status("France")).await.expect_err("deleted");
    assert_eq!(gone.code(), Code::NotFound);

    let before = client.describe_collection(v1::DescribeCollectionRequest { name: "capitals".into() }).await;
    let before = before.expect("describe").into_inner();
    assert_eq!((before.documents, before.points), (237, 237));

    // A snapshot restored under a new name answers as the collection does (on the Qdrant
    // store through Qdrant's own snapshot API), then goes with its collection.
    let snap = client
        .create_snapshot(v1::CreateSnapshotRequest { collection: "capitals".into(), name: "s1".into() })
        .await
        .expect("snapshot")
        .into_inner();
    assert_eq!((snap.name.as_str(), snap.points), ("s1", 237));
    let restore = v1::RestoreSnapshotRequest {
        collection: "capitals".into(),
        snapshot: "s1".into(),
        target: "capitals-copy".into(),
    };
    client.restore_snapshot(restore.clone()).await.expect("restore");
    for q in ["What is the capital of Germany?", "capital of Japan", "Andean capital"] {
        let (a, b) = (text_query("capitals", q, 5), text_query("capitals-copy", q, 5));
        let ids = |hits: Vec<v1::Hit>| hits.into_iter().map(|h| (h.doc_id, h.chunk)).collect::<Vec<_>>();
        assert_eq!(ids(top(&mut client, a).await), ids(top(&mut client, b).await), "{q}");
    }
    let again = client.restore_snapshot(restore).await.expect_err("target exists");
    assert_eq!(again.code(), Code::AlreadyExists);
    client.drop_collection(v1::DropCollectionRequest { name: "capitals-copy".into() }).await.expect("drop");
    client
        .delete_snapshot(v1::DeleteSnapshotRequest { collection: "capitals".into(), snapshot: "s1".into() })
        .await
        .expect("delete snapshot");

    // Restart the indexer on the same data directory: same collection, same answers.
    indexer.stop().await.expect("clean stop");
    let indexer = TestIndexer::start(config).await;
    let mut client = indexer.client().await;
    let after = client.describe_collection(v1::DescribeCollectionRequest { name: "capitals".into() }).await;
    assert_eq!(after.expect("describe").into_inner().points, before.points);
    let hits = top(&mut client, text_query("capitals", "What is the capital of Germany?", 3)).await;
    assert_eq!(hits[0].doc_id, "Germany");
    client.drop_collection(v1::DropCollectionRequest { name: "capitals".into() }).await.expect("drop");
    indexer.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_clear_statuses_and_lose_nothing() {
    let embedder = TestEmbedder::start(embedder_config(&["all-MiniLM-L6-v2"])).await;
    let data = tempfile::tempdir().expect("tempdir");
    let indexer =
        TestIndexer::start(IndexerConfig { max_k: 100, ..indexer_config(data.path(), &embedder.url) }).await;
    let mut client = indexer.client().await;
    let create = |name: &str| v1::CreateCollectionRequest { name: name.into(), ..Default::default() };
    client.create_collection(create("c")).await.expect("create");
    let code = |r: Result<tonic::Response<v1::CollectionInfo>, tonic::Status>| r.expect_err("error").code();
    assert_eq!(code(client.create_collection(create("c")).await), Code::AlreadyExists);
    assert_eq!(code(client.create_collection(create("bad name!")).await), Code::InvalidArgument);
    // A huge invalid value is quoted by a short prefix: the status stays far below the 16 KB
    // metadata limit of grpc-core clients (it once echoed all 10,000 characters, twice).
    let huge = client.create_collection(create(&"n".repeat(10_000))).await.expect_err("huge name");
    assert_eq!(huge.code(), Code::InvalidArgument);
    assert!(huge.message().contains("(10000 bytes)"), "{}", huge.message());
    assert!(huge.message().len() < 200, "{} bytes: {}", huge.message().len(), huge.message());
    assert!(huge.details().len() < 400, "details {} bytes", huge.details().len());
    let missing_huge =
        client.describe_collection(v1::DescribeCollectionRequest { name: "m".repeat(100_000) }).await;
    let missing_huge = missing_huge.expect_err("unknown huge name");
    assert_eq!(missing_huge.code(), Code::NotFound);
    assert!(
        missing_huge.message().len() <= ragd_core::status::MAX_MESSAGE_BYTES,
        "{} bytes",
        missing_huge.message().len()
    );
    let unknown_model =
        v1::CreateCollectionRequest { name: "m".into(), model: "nope".into(), ..Default::default() };
    assert_eq!(code(client.create_collection(unknown_model).await), Code::NotFound);
    let bad_chunking = v1::CreateCollectionRequest {
        name: "t".into(),
        chunking: Some(v1::Chunking {
            policy: Some(v1::chunking::Policy::Tokens(v1::Window { size: 1000, overlap: 0 })),
        }),
        ..Default::default()
    };
    assert_eq!(code(client.create_collection(bad_chunking).await), Code::InvalidArgument);
    let missing = client.describe_collection(v1::DescribeCollectionRequest { name: "nope".into() }).await;
    assert_eq!(missing.expect_err("missing").code(), Code::NotFound);

    let docs = vec![
        v1::Document {
            id: "ok".into(),
            text: "Oslo is the capital of Norway.".into(),
            metadata: None,
            vector: Vec::new(),
        },
        v1::Document { id: String::new(), text: "no id".into(), metadata: None, vector: Vec::new() },
        v1::Document { id: "blank".into(), text: "   ".into(), metadata: None, vector: Vec::new() },
    ];
    let r = client.upsert_batch(v1::UpsertRequest { collection: "c".into(), documents: docs }).await;
    let r = r.expect("partial upsert").into_inner();
    assert_eq!(r.documents, 1, "the valid document is stored");
    let reasons: Vec<&str> = r.failed.iter().map(|f| f.reason.as_str()).collect();
    assert_eq!(reasons, vec!["id is empty", "text is empty and there is no vector"]);
    let s = client
        .document_status(v1::DocumentStatusRequest { collection: "c".into(), id: "blank".into() })
        .await;
    let s = s.expect("status").into_inner();
    assert_eq!(
        (s.state, s.reason.as_str()),
        (v1::IngestState::Failed as i32, "text is empty and there is no vector")
    );

    let search = |mut f: Box<dyn FnMut(&mut v1::SearchRequest)>| {
        let mut r = text_query("c", "capital of Norway", 3);
        f(&mut r);
        r
    };
    let vector =
        |values: Vec<f32>| v1::Query { query: Some(v1::query::Query::Vector(v1::Vector { values })) };
    for (what, req, field) in [
        ("k = 0", search(Box::new(|r| r.k = 0)), "k"),
        ("k above max", search(Box::new(|r| r.k = 101)), "k"),
        (
            "empty text",
            search(Box::new(|r| {
                r.queries = vec![v1::Query { query: Some(v1::query::Query::Text(" ".into())) }]
            })),
            "queries",
        ),
        ("no queries", search(Box::new(|r| r.queries.clear())), "queries"),
        ("wrong dimension", search(Box::new(move |r| r.queries = vec![vector(vec![0.1; 3])])), "queries"),
        ("NaN", search(Box::new(move |r| r.queries = vec![vector(vec![f32::NAN; 384])])), "queries"),
        (
            "range without bounds",
            search(Box::new(|r| {
                r.filter = Some(v1::Filter {
                    must: vec![v1::Condition {
                        key: "x".into(),
                        test: Some(v1::condition::Test::Range(v1::Range::default())),
                    }],
                    ..Default::default()
                })
            })),
            "filter",
        ),
        (
            "bad key",
            search(Box::new(|r| {
                r.filter = Some(v1::Filter { must: vec![keyword("a b", "x")], ..Default::default() })
            })),
            "filter",
        ),
        (
            "mixed match-any",
            search(Box::new(|r| {
                let values = vec![
                    v1::Value { kind: Some(v1::value::Kind::Keyword("a".into())) },
                    v1::Value { kind: Some(v1::value::Kind::Integer(1)) },
                ];
                r.filter = Some(v1::Filter {
                    must: vec![v1::Condition {
                        key: "k".into(),
                        test: Some(v1::condition::Test::MatchAny(v1::ValueList { values })),
                    }],
                    ..Default::default()
                })
            })),
            "filter",
        ),
    ] {
        let err = client.search(req).await.expect_err(what);
        assert_eq!(err.code(), Code::InvalidArgument, "{what}: {err:?}");
        assert!(err.message().contains(field), "{what}: {}", err.message());
    }
    let unknown = client.search(text_query("nope", "x", 1)).await.expect_err("unknown collection");
    assert_eq!(unknown.code(), Code::NotFound);

    // Nothing was lost: the stored document is still found, by text and by its own vector.
    let hits = top(&mut client, text_query("c", "capital of Norway", 3)).await;
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0].doc_id, "ok");
    indexer.stop().await.expect("stop");
    embedder.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_windows_and_client_streamed_upserts() {
    let embedder = TestEmbedder::start(embedder_config(&["all-MiniLM-L6-v2"])).await;
    let data = tempfile::tempdir().expect("tempdir");
    let indexer = TestIndexer::start(indexer_config(data.path(), &embedder.url)).await;
    let mut client = indexer.client().await;
    let create = v1::CreateCollectionRequest {
        name: "tok".into(),
        chunking: Some(v1::Chunking {
            policy: Some(v1::chunking::Policy::Tokens(v1::Window { size: 16, overlap: 4 })),
        }),
        ..Default::default()
    };
    client.create_collection(create).await.expect("create");
    let long: String = (0..40).map(|i| format!("Fact number {i} is about rivers and mountains. ")).collect();
    let messages = vec![
        v1::UpsertRequest {
            collection: "tok".into(),
            documents: vec![v1::Document {
                id: "long".into(),
                text: long.clone(),
                metadata: None,
                vector: Vec::new(),
            }],
        },
        v1::UpsertRequest {
            collection: "tok".into(),
            documents: vec![v1::Document {
                id: "short".into(),
                text: "A short note.".into(),
                metadata: None,
                vector: Vec::new(),
            }],
        },
    ];
    let r = client.upsert(futures::stream::iter(messages)).await.expect("stream upsert").into_inner();
    assert_eq!(r.documents, 2);
    let s = client
        .document_status(v1::DocumentStatusRequest { collection: "tok".into(), id: "long".into() })
        .await;
    let chunks = s.expect("status").into_inner().chunks;
    // ~360 tokens in windows of 16 advancing by 12.
    assert!(chunks >= 25, "{chunks} chunks");
    let hits = top(&mut client, text_query("tok", "Fact number 17 is about rivers", 3)).await;
    assert_eq!(hits[0].doc_id, "long");
    assert!(
        hits[0].text.split_whitespace().count() <= 16,
        "a chunk is a window of the text: {:?}",
        hits[0].text
    );
    assert!(long.contains(&hits[0].text), "chunks are slices of the original text");
    indexer.stop().await.expect("stop");
    embedder.stop().await.expect("stop");
}

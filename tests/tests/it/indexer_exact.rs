//! The indexer's `exact` mode on the resident exact engine (ragd-exact) returns the same top-k
//! as the store's own exact search, after ingest, after re-upserts and deletes (kept in sync),
//! and after a restart (loaded from the store). Real embedder, real engine, real gRPC.

use ragd_indexer::IndexerConfig;
use ragd_proto::v1::{self, indexer_client::IndexerClient};
use ragd_tests::{TestEmbedder, TestIndexer, embedder_config};
use tonic::transport::Channel;

const QUESTIONS: [&str; 6] = [
    "What is the capital of Germany?",
    "Which city is the capital of Japan?",
    "capital of a country in South America",
    "European capitals on a river",
    "island nation capital",
    "desert country capital city",
];

fn config(data: &std::path::Path, embedder: &str, exact_engine: bool) -> IndexerConfig {
    IndexerConfig {
        data_dir: data.to_path_buf(),
        embedder_url: embedder.into(),
        exact_engine,
        ..IndexerConfig::default()
    }
}

/// (doc id, chunk, score) of the exact top 8 of every question in `collection`.
async fn top8(client: &mut IndexerClient<Channel>, collection: &str) -> Vec<Vec<(String, u32, f32)>> {
    let request = v1::SearchRequest {
        collection: collection.into(),
        queries: QUESTIONS
            .iter()
            .map(|q| v1::Query { query: Some(v1::query::Query::Text(q.to_string())) })
            .collect(),
        k: 8,
        exact: true,
        ..Default::default()
    };
    let r = client.search(request).await.expect("search").into_inner();
    r.results
        .into_iter()
        .map(|q| q.hits.into_iter().map(|h| (h.doc_id, h.chunk, h.score)).collect())
        .collect()
}

/// The exact top 8 of every question, for every distance.
async fn answers(client: &mut IndexerClient<Channel>) -> Vec<Vec<(String, u32, f32)>> {
    let mut out = Vec::new();
    for collection in ["cos", "dot", "l2"] {
        out.extend(top8(client, collection).await);
    }
    out
}

/// One document per country: "The capital of X is Y. It is a city in X."
fn capital_documents() -> Vec<v1::Document> {
    ragd_tests::capitals()
        .iter()
        .map(|(country, city)| v1::Document {
            id: country.clone(),
            text: format!("The capital of {country} is {city}. It is a city in {country}."),
            metadata: None,
            vector: Vec::new(),
        })
        .collect()
}

fn assert_same(engine: &[Vec<(String, u32, f32)>], store: &[Vec<(String, u32, f32)>]) {
    assert_eq!(engine.len(), store.len());
    for (e, s) in engine.iter().zip(store) {
        assert_eq!(e.len(), s.len(), "engine {e:?}\nstore {s:?}");
        for (a, b) in e.iter().zip(s) {
            assert!((a.2 - b.2).abs() < 1e-4, "scores: engine {a:?} store {b:?}");
            // Equal ids, unless two chunks tie within float noise.
            assert!(a.0 == b.0 || (a.2 - b.2).abs() < 1e-5, "engine {e:?}\nstore {s:?}");
        }
    }
}

async fn documents(client: &mut IndexerClient<Channel>, docs: Vec<v1::Document>) {
    for c in ["cos", "dot", "l2"] {
        let r =
            client.upsert_batch(v1::UpsertRequest { collection: c.into(), documents: docs.clone() }).await;
        assert!(r.expect("upsert").into_inner().failed.is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exact_mode_matches_the_store_after_ingest_updates_deletes_and_restart() {
    let embedder = TestEmbedder::start(embedder_config(&["all-MiniLM-L6-v2"])).await;
    let data = tempfile::tempdir().expect("tempdir");
    let indexer = TestIndexer::start(config(data.path(), &embedder.url, true)).await;
    let mut client = indexer.client().await;
    for (name, distance) in
        [("cos", v1::Distance::Cosine), ("dot", v1::Distance::Dot), ("l2", v1::Distance::Euclid)]
    {
        let create = v1::CreateCollectionRequest {
            name: name.into(),
            distance: distance as i32,
            shards: 2,
            ..Default::default()
        };
        client.create_collection(create).await.expect("create");
    }
    let docs = capital_documents();
    documents(&mut client, docs).await;
    let first = answers(&mut client).await;
    assert_eq!(first[0][0].0, "Germany");

    // Updates and deletes reach the resident copy: Germany gets a longer text, France goes.
    let long = "Berlin is the capital of Germany. It has a river. It has a tower. It is old. It is big.";
    documents(
        &mut client,
        vec![v1::Document { id: "Germany".into(), text: long.into(), metadata: None, vector: Vec::new() }],
    )
    .await;
    let short = vec![v1::Document {
        id: "Germany".into(),
        text: "The capital of Germany is Berlin.".into(),
        metadata: None,
        vector: Vec::new(),
    }];
    documents(&mut client, short).await;
    for c in ["cos", "dot", "l2"] {
        client
            .delete(v1::DeleteRequest { collection: c.into(), ids: vec!["France".into()] })
            .await
            .expect("delete");
    }
    let engine = answers(&mut client).await;
    assert!(engine.iter().flatten().all(|h| h.0 != "France"));
    indexer.stop().await.expect("stop");

    // The store's own exact search on the same data.
    let indexer = TestIndexer::start(config(data.path(), &embedder.url, false)).await;
    let store = answers(&mut indexer.client().await).await;
    indexer.stop().await.expect("stop");
    assert_same(&engine, &store);

    // Restart with the engine: it loads the vectors from the store and answers the same.
    let indexer = TestIndexer::start(config(data.path(), &embedder.url, true)).await;
    let reloaded = answers(&mut indexer.client().await).await;
    assert_same(&reloaded, &store);
    indexer.stop().await.expect("stop");
    embedder.stop().await.expect("stop");
}

/// Per-collection exact storage through gRPC on real MiniLM embeddings: every compressed
/// precision with 4× rescoring answers the exact top 8 as the f32 collection does (same ids,
/// scores within 1e-4), without rescoring it keeps most of them; DescribeCollection reports the
/// storage, bytes per vector and resident bytes; bad settings are INVALID_ARGUMENT naming the field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressed_collections_answer_as_f32_with_rescoring_and_report_their_size() {
    use v1::ExactPrecision as P;
    let embedder = TestEmbedder::start(embedder_config(&["all-MiniLM-L6-v2"])).await;
    let data = tempfile::tempdir().expect("tempdir");
    let indexer = TestIndexer::start(config(data.path(), &embedder.url, true)).await;
    let mut client = indexer.client().await;
    let create = |name: &str, precision: P, rescore: u32| v1::CreateCollectionRequest {
        name: name.into(),
        exact: Some(v1::ExactStorage { precision: precision as i32, rescore }),
        ..Default::default()
    };
    for (bad, field) in [
        (
            v1::CreateCollectionRequest {
                exact: Some(v1::ExactStorage { precision: 99, rescore: 0 }),
                ..create("bad", P::F32, 0)
            },
            "exact.precision",
        ),
        (create("bad", P::Int8, 65), "exact.rescore"),
        (create("bad", P::F32, 4), "exact.rescore"),
    ] {
        let status = client.create_collection(bad).await.expect_err(field);
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains(field), "{status:?}");
    }
    let precisions = [P::F16, P::Bf16, P::Int8, P::Int8PerVector];
    let mut names = vec![("f32".to_string(), P::F32, 0)];
    for p in precisions {
        for rescore in [0, 4] {
            names.push((format!("{}-{rescore}", p.as_str_name().to_lowercase()), p, rescore));
        }
    }
    let docs = capital_documents();
    for (name, p, rescore) in &names {
        client.create_collection(create(name, *p, *rescore)).await.expect("create");
        let r = client
            .upsert_batch(v1::UpsertRequest { collection: name.clone(), documents: docs.clone() })
            .await;
        assert!(r.expect("upsert").into_inner().failed.is_empty());
    }
    let want = top8(&mut client, "f32").await;
    let dim_stride = 384;
    for (name, p, rescore) in &names[1..] {
        let got = top8(&mut client, name).await;
        if *rescore > 0 {
            assert_same(&got, &want);
        } else {
            let kept: usize = got
                .iter()
                .zip(&want)
                .map(|(g, w)| w.iter().filter(|h| g.iter().any(|x| x.0 == h.0 && x.1 == h.1)).count())
                .sum();
            let total: usize = want.iter().map(Vec::len).sum();
            assert!(kept * 10 >= total * 8, "{name}: {kept} of {total} of the f32 top 8 without rescoring");
        }
        let info = client
            .describe_collection(v1::DescribeCollectionRequest { name: name.clone() })
            .await
            .expect("describe")
            .into_inner();
        let storage = info.exact.expect("exact storage reported");
        assert_eq!((storage.precision, storage.rescore), (*p as i32, *rescore), "{name}");
        let bytes = match p {
            P::F16 | P::Bf16 => 2 * dim_stride,
            P::Int8 => dim_stride,
            P::Int8PerVector => dim_stride + 4,
            _ => 4 * dim_stride,
        };
        assert_eq!(info.exact_bytes_per_vector, bytes as u64, "{name}");
        let scanned = info.points * bytes as u64;
        let kept_f32 = if *rescore > 0 { info.points * 4 * dim_stride as u64 } else { 0 };
        assert!(info.exact_resident_bytes >= scanned + kept_f32, "{name}: {info:?}");
    }
    indexer.stop().await.expect("stop");
    embedder.stop().await.expect("stop");
}

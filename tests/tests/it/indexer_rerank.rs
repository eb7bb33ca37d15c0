//! Two-stage retrieval over real gRPC: an indexer (embedded Qdrant engine, MiniLM through ONNX
//! Runtime) whose reranker is the **rerank test double** (`ragd_tests::rerank_test_server`: no
//! cross-encoder weights ship in a package registry, so no real reranker runs here), over both
//! rerank APIs. The expected order is the double's own scoring rule applied to the hits' texts
//! here, not anything computed by the indexer.

use ragd_indexer::IndexerConfig;
use ragd_indexer::rerank::{RerankApi, RerankerConfig};
use ragd_proto::v1::{self, indexer_client::IndexerClient};
use ragd_tests::rerank_test_server::{RerankTestServer, score};
use ragd_tests::{TestEmbedder, TestIndexer, embedder_config};
use tonic::Code;
use tonic::transport::Channel;

const QUESTION: &str = "capital of Germany Berlin Spree";

fn corpus() -> Vec<v1::Document> {
    let mut docs: Vec<v1::Document> = ragd_tests::capitals()
        .iter()
        .take(60)
        .map(|(country, city)| v1::Document {
            id: country.clone(),
            text: format!("The capital of {country} is {city}."),
            metadata: None,
            vector: Vec::new(),
        })
        .collect();
    for (i, t) in [
        "The capital of Germany is Berlin, on the Spree.",
        "Berlin is the capital of Germany.",
        "Germany's capital city is Berlin.",
    ]
    .iter()
    .enumerate()
    {
        docs.push(v1::Document {
            id: format!("germany-{i}"),
            text: (*t).into(),
            metadata: None,
            vector: Vec::new(),
        });
    }
    docs
}

fn search(q: &str, k: u32, rerank: Option<u32>) -> v1::SearchRequest {
    v1::SearchRequest {
        collection: "notes".into(),
        queries: vec![v1::Query { query: Some(v1::query::Query::Text(q.into())) }],
        k,
        rerank: rerank.map(|candidates| v1::Rerank { candidates }),
        ..Default::default()
    }
}

async fn indexer(embedder: &TestEmbedder, data: &std::path::Path, reranker: RerankerConfig) -> TestIndexer {
    let indexer = TestIndexer::start(IndexerConfig {
        data_dir: data.to_path_buf(),
        embedder_url: embedder.url.clone(),
        reranker,
        ..IndexerConfig::default()
    })
    .await;
    let mut c = indexer.client().await;
    c.create_collection(v1::CreateCollectionRequest { name: "notes".into(), ..Default::default() })
        .await
        .expect("create");
    let r = c
        .upsert_batch(v1::UpsertRequest { collection: "notes".into(), documents: corpus() })
        .await
        .expect("upsert")
        .into_inner();
    assert!(r.failed.is_empty(), "{:?}", r.failed);
    indexer
}

fn reranker(url: Option<String>, api: RerankApi) -> RerankerConfig {
    RerankerConfig {
        reranker_url: url,
        reranker_api: api,
        reranker_model: Some("test-double".into()),
        reranker_api_key: None,
        reranker_timeout_ms: 1000,
    }
}

async fn hits(c: &mut IndexerClient<Channel>, r: v1::SearchRequest) -> Vec<v1::Hit> {
    c.search(r).await.expect("search").into_inner().results.remove(0).hits
}

async fn code(c: &mut IndexerClient<Channel>, r: v1::SearchRequest) -> (Code, String) {
    let s = c.search(r).await.expect_err("refused");
    (s.code(), s.message().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rerank_orders_by_the_rerankers_scores_over_both_apis_and_maps_its_failures() {
    let embedder = TestEmbedder::start(embedder_config(&["all-MiniLM-L6-v2"])).await;
    let double = RerankTestServer::start().await;
    for (api, path) in [(RerankApi::Tei, "/tei/rerank"), (RerankApi::Cohere, "/cohere/v1/rerank")] {
        let data = tempfile::tempdir().expect("tempdir");
        let indexer =
            indexer(&embedder, data.path(), reranker(Some(format!("{}{path}", double.url)), api)).await;
        let mut c = indexer.client().await;
        // The same 10 candidates, reordered by the double's scores; ties keep the retrieval order.
        let base = hits(&mut c, search(QUESTION, 10, None)).await;
        let reranked = hits(&mut c, search(QUESTION, 10, Some(10))).await;
        let mut expected: Vec<(usize, f32, &str)> =
            base.iter().enumerate().map(|(i, h)| (i, score(QUESTION, &h.text), h.doc_id.as_str())).collect();
        expected.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        let got: Vec<(f32, &str)> = reranked.iter().map(|h| (h.score, h.doc_id.as_str())).collect();
        assert_eq!(got, expected.iter().map(|e| (e.1, e.2)).collect::<Vec<_>>(), "{api:?}");
        assert_eq!(reranked[0].doc_id, "germany-0", "all four words: {api:?}");
        for (i, h) in reranked.iter().enumerate() {
            let before = base.iter().position(|b| b.doc_id == h.doc_id).expect("a candidate");
            let sources: Vec<(&str, u32)> = h.sources.iter().map(|s| (s.source.as_str(), s.rank)).collect();
            assert_eq!(sources, vec![("retrieval", before as u32 + 1), ("rerank", i as u32 + 1)], "{api:?}");
            assert_eq!(h.sources[0].score, base[before].score);
        }
        // Default pool max(4k, 20) for k = 3: three hits, best-scored first.
        let top = hits(&mut c, search(QUESTION, 3, None)).await;
        let pool = hits(&mut c, search(QUESTION, 20, None)).await;
        let best = pool.iter().map(|h| score(QUESTION, &h.text)).fold(f32::MIN, f32::max);
        let three = hits(&mut c, search(QUESTION, 3, Some(0))).await;
        assert_eq!((three.len(), three[0].score), (3, best), "{top:?}");
        // Rerank and MMR together: MMR picks k from the reranked pool.
        let mut both = search(QUESTION, 3, Some(12));
        both.mmr = Some(v1::Mmr { diversity: 0.5, candidates: 0 });
        assert_eq!(hits(&mut c, both).await.len(), 3);
        if api == RerankApi::Tei {
            // The reranker's failures, each with its own status.
            for (word, want) in [
                ("fail500", Code::Unavailable),
                ("busy429", Code::ResourceExhausted),
                ("refuse400", Code::FailedPrecondition),
                ("garbage", Code::Unavailable),
                ("slow", Code::DeadlineExceeded),
            ] {
                let (got, message) = code(&mut c, search(&format!("capital {word}"), 3, Some(0))).await;
                assert_eq!(got, want, "{word}: {message}");
                assert!(message.contains("reranker"), "{word}: {message}");
            }
            // Bad inputs.
            let (got, message) = code(&mut c, search(QUESTION, 3, Some(2))).await;
            assert_eq!(got, Code::InvalidArgument);
            assert!(message.contains("rerank.candidates"), "{message}");
            let mut mixed = search(QUESTION, 3, Some(12));
            mixed.mmr = Some(v1::Mmr { diversity: 0.5, candidates: 20 });
            let (got, message) = code(&mut c, mixed).await;
            assert!(got == Code::InvalidArgument && message.contains("mmr.candidates"), "{message}");
            let mut vector = search(QUESTION, 3, Some(0));
            vector.queries = vec![v1::Query {
                query: Some(v1::query::Query::Vector(v1::Vector { values: vec![0.1; 384] })),
            }];
            let (got, message) = code(&mut c, vector).await;
            assert!(got == Code::InvalidArgument && message.contains("queries"), "{message}");
        }
        // Stopped before its temp dir goes: the shards flush on the way down.
        indexer.stop().await.expect("stop indexer");
    }
    // An indexer without a reranker refuses rerank searches, and serves the rest.
    let data = tempfile::tempdir().expect("tempdir");
    let plain = indexer(&embedder, data.path(), reranker(None, RerankApi::Tei)).await;
    let mut c = plain.client().await;
    let (got, message) = code(&mut c, search(QUESTION, 3, Some(0))).await;
    assert!(got == Code::FailedPrecondition && message.contains("rerank"), "{message}");
    assert_eq!(hits(&mut c, search(QUESTION, 3, None)).await.len(), 3);
    plain.stop().await.expect("stop indexer");
    embedder.stop().await.expect("stop");
}

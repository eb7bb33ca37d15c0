//! Keyword, hybrid and MMR retrieval over real gRPC, with a real embedder (MiniLM through ONNX
//! Runtime) and the real Qdrant engine: embedded, and behind the Qdrant protocol (the
//! Qdrant-protocol test server, or a real Qdrant when `QDRANT_URL` is set). The corpus: the
//! capitals ("The capital of {country} is {city}."), questions of the same form as the one asked
//! ("Who is ...?"), one note that names the person asked about once, in passing, and three
//! near-copies of the sentence about Germany.

use ragd_indexer::store::remote::QdrantConfig;
use ragd_indexer::{IndexerConfig, StoreKind};
use ragd_proto::v1::{self, indexer_client::IndexerClient};
use ragd_tests::qdrant_test_server::qdrant_url_or_test_server;
use ragd_tests::{TestEmbedder, TestIndexer, embedder_config};
use tonic::Code;
use tonic::transport::Channel;

/// Questions of the same form as the one asked, sharing none of its content words ("who" and
/// "is" are stop words).
const MAINTENANCE: [&str; 8] = [
    "Who is the mayor of the city?",
    "Who is the author of this book?",
    "Who is responsible for the budget?",
    "Who is in charge of the night shift?",
    "Who is the new head of the school?",
    "Who is our contact at the bank?",
    "Who is the best player on the team?",
    "Who is speaking at the conference?",
];
/// The only chunk naming the person: a longer note about something else that mentions the
/// name once.
const ORDER: &str = "The warehouse in Leeds ships every weekday before noon. Drivers load the vans from the north gate. The crates were counted by Wojciechowski.";
const QUESTION: &str = "Who is Wojciechowski?";
const GERMANY_COPIES: [&str; 3] = [
    "The capital of Germany is Berlin, on the Spree.",
    "Berlin is the capital of Germany.",
    "Germany's capital city is Berlin.",
];

fn doc(id: &str, text: &str) -> v1::Document {
    v1::Document { id: id.into(), text: text.into(), metadata: None, vector: Vec::new() }
}

fn corpus() -> Vec<v1::Document> {
    let mut docs: Vec<v1::Document> = ragd_tests::capitals()
        .iter()
        .map(|(country, city)| doc(country, &format!("The capital of {country} is {city}.")))
        .collect();
    docs.extend(MAINTENANCE.iter().enumerate().map(|(i, t)| doc(&format!("maintenance-{i}"), t)));
    docs.push(doc("order", ORDER));
    docs.extend(GERMANY_COPIES.iter().enumerate().map(|(i, t)| doc(&format!("germany-copy-{i}"), t)));
    docs
}

fn search(collection: &str, q: &str, k: u32, mode: v1::SearchMode) -> v1::SearchRequest {
    v1::SearchRequest {
        collection: collection.into(),
        queries: vec![v1::Query { query: Some(v1::query::Query::Text(q.into())) }],
        k,
        mode: mode as i32,
        ..Default::default()
    }
}

async fn hits(client: &mut IndexerClient<Channel>, req: v1::SearchRequest) -> Vec<v1::Hit> {
    client.search(req).await.expect("search").into_inner().results.remove(0).hits
}

fn ids(hits: &[v1::Hit]) -> Vec<&str> {
    hits.iter().map(|h| h.doc_id.as_str()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyword_hybrid_and_mmr_embedded_store() {
    let embedder = TestEmbedder::start(embedder_config(&["all-MiniLM-L6-v2"])).await;
    let data = tempfile::tempdir().expect("tempdir");
    let config = IndexerConfig {
        data_dir: data.path().to_path_buf(),
        embedder_url: embedder.url.clone(),
        ..IndexerConfig::default()
    };
    scenario(config).await;
    embedder.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyword_hybrid_and_mmr_qdrant_store() {
    let embedder = TestEmbedder::start(embedder_config(&["all-MiniLM-L6-v2"])).await;
    let data = tempfile::tempdir().expect("tempdir");
    let (url, _server) = qdrant_url_or_test_server().await;
    let config = IndexerConfig {
        data_dir: data.path().to_path_buf(),
        embedder_url: embedder.url.clone(),
        store: StoreKind::Qdrant,
        qdrant: QdrantConfig {
            url,
            api_key: std::env::var("QDRANT_API_KEY").ok(),
            collection_prefix: format!("ragdretrieval_{}_", std::process::id()),
            ..QdrantConfig::default()
        },
        ..IndexerConfig::default()
    };
    scenario(config).await;
    embedder.stop().await.expect("stop");
}

async fn scenario(config: IndexerConfig) {
    let indexer = TestIndexer::start(config.clone()).await;
    let mut client = indexer.client().await;
    let info = client
        .create_collection(v1::CreateCollectionRequest {
            name: "notes".into(),
            shards: 2,
            keyword: Some(v1::KeywordIndex::default()),
            ..Default::default()
        })
        .await
        .expect("create")
        .into_inner();
    let keyword = info.keyword.expect("the keyword index is described");
    assert_eq!(
        (keyword.language.as_str(), keyword.k1, keyword.b, keyword.stop_words, keyword.stemming),
        ("english", Some(1.2), Some(0.75), Some(true), Some(true))
    );
    let docs = corpus();
    let n = docs.len() as u32;
    let r = client
        .upsert_batch(v1::UpsertRequest { collection: "notes".into(), documents: docs })
        .await
        .expect("upsert")
        .into_inner();
    assert_eq!((r.documents, r.failed.len()), (n, 0));

    // Dense retrieval misses the name: questions of the same form are closer.
    let dense = hits(&mut client, search("notes", QUESTION, 5, v1::SearchMode::Dense)).await;
    let dense_all = hits(&mut client, search("notes", QUESTION, 50, v1::SearchMode::Dense)).await;
    let order_rank = dense_all.iter().position(|h| h.doc_id == "order").map(|p| p + 1);
    assert!(
        !ids(&dense).contains(&"order"),
        "dense top 5 should miss the name (dense rank {order_rank:?}): {:?}",
        ids(&dense)
    );
    assert!(dense.iter().all(|h| h.sources.is_empty()), "a dense hit has no fusion sources");
    // Keyword retrieval finds it, alone: the only term of the question is the name.
    let keyword = hits(&mut client, search("notes", QUESTION, 5, v1::SearchMode::Keyword)).await;
    assert_eq!(ids(&keyword), vec!["order"], "no other chunk shares a term with the question");
    assert!(keyword[0].score > 0.0);
    // Hybrid (RRF, k 60) ranks it first too and says where it stood in each list.
    let hybrid = hits(&mut client, search("notes", QUESTION, 5, v1::SearchMode::Hybrid)).await;
    assert_eq!(hybrid[0].doc_id, "order", "{:?}", ids(&hybrid));
    let sources: Vec<(&str, u32)> = hybrid[0].sources.iter().map(|s| (s.source.as_str(), s.rank)).collect();
    assert_eq!(sources.iter().find(|s| s.0 == "keyword"), Some(&("keyword", 1)), "{sources:?}");
    let dense_rank = sources.iter().find(|s| s.0 == "dense").map(|s| s.1).expect("the dense list had it");
    assert!(dense_rank > 5, "dense rank {dense_rank}");
    // RRF by hand: 1/(60 + 1) + 1/(60 + dense rank).
    let want = 1.0 / 61.0 + 1.0 / (60.0 + dense_rank as f32);
    assert!((hybrid[0].score - want).abs() < 1e-6, "{} vs {want}", hybrid[0].score);
    // The dense part of the hybrid list agrees with dense search.
    let second = &hybrid[1];
    assert_eq!(second.sources.len(), 1, "{second:?}");
    assert_eq!(
        (second.sources[0].source.as_str(), second.doc_id.as_str()),
        ("dense", dense[0].doc_id.as_str())
    );
    // DBSF: a keyword list of one hit scales to 0.5, below the best dense hits (about 1), so
    // the name's chunk is fused into the top 3, not first.
    let mut req = search("notes", QUESTION, 3, v1::SearchMode::Hybrid);
    req.fusion = Some(v1::Fusion { method: Some(v1::fusion::Method::Dbsf(v1::Dbsf {})) });
    let dbsf = hits(&mut client, req).await;
    assert!(ids(&dbsf).contains(&"order"), "DBSF: {:?}", ids(&dbsf));
    // Weighted with alpha 0 is the keyword list; alpha 1 the dense one.
    for (alpha, first) in [(0.0, "order"), (1.0, dense[0].doc_id.as_str())] {
        let mut req = search("notes", QUESTION, 3, v1::SearchMode::Hybrid);
        req.fusion = Some(v1::Fusion { method: Some(v1::fusion::Method::Weighted(v1::Weighted { alpha })) });
        let found = hits(&mut client, req).await;
        assert_eq!(found[0].doc_id, first, "alpha {alpha}: {:?}", ids(&found));
    }

    // MMR: plain top 3 for Germany are near-copies of one sentence; with diversity 0.5 the
    // first hit stays and the rest are not copies.
    let germany = |h: &v1::Hit| h.doc_id == "Germany" || h.doc_id.starts_with("germany-copy");
    let q = "What is the capital of Germany?";
    let plain = hits(&mut client, search("notes", q, 3, v1::SearchMode::Dense)).await;
    assert!(plain.iter().all(germany), "plain top 3: {:?}", ids(&plain));
    let mut req = search("notes", q, 3, v1::SearchMode::Dense);
    req.mmr = Some(v1::Mmr { diversity: 0.5, candidates: 20 });
    let diverse = hits(&mut client, req).await;
    assert_eq!(diverse.len(), 3);
    assert_eq!(diverse[0].doc_id, plain[0].doc_id, "the most relevant hit is picked first");
    assert_eq!(diverse.iter().filter(|h| germany(h)).count(), 1, "MMR top 3: {:?}", ids(&diverse));
    // Diversity 0 is the plain top k.
    let mut req = search("notes", q, 3, v1::SearchMode::Dense);
    req.mmr = Some(v1::Mmr { diversity: 0.0, candidates: 0 });
    assert_eq!(ids(&hits(&mut client, req).await), ids(&plain));
    // MMR over a hybrid list.
    let mut req = search("notes", q, 3, v1::SearchMode::Hybrid);
    req.mmr = Some(v1::Mmr { diversity: 0.5, candidates: 0 });
    let diverse_hybrid = hits(&mut client, req).await;
    assert!(diverse_hybrid.iter().filter(|h| germany(h)).count() < 3, "{:?}", ids(&diverse_hybrid));

    bad_inputs(&mut client).await;
    stemming_off(&mut client).await;
    reindex(&mut client).await;

    // Nothing was lost, and the keyword index outlives a restart.
    let again = hits(&mut client, search("notes", QUESTION, 5, v1::SearchMode::Keyword)).await;
    assert_eq!(ids(&again), vec!["order"]);
    indexer.stop().await.expect("stop");
    let indexer = TestIndexer::start(config).await;
    let mut client = indexer.client().await;
    let described = client
        .describe_collection(v1::DescribeCollectionRequest { name: "notes".into() })
        .await
        .expect("describe")
        .into_inner();
    assert_eq!(described.keyword.map(|k| k.language), Some("english".into()));
    let after = hits(&mut client, search("notes", QUESTION, 5, v1::SearchMode::Hybrid)).await;
    assert_eq!(after[0].doc_id, "order", "{:?}", ids(&after));
    indexer.stop().await.expect("stop");
}

/// Without stemming, "run" finds only the text that says "run", not "running" or "runner"; with
/// it (the default), all three. Stop words are dropped either way.
async fn stemming_off(client: &mut IndexerClient<Channel>) {
    let docs = || {
        [
            ("plain", "We run every morning."),
            ("ing", "The dog was running fast."),
            ("er", "A runner crossed the line."),
        ]
        .iter()
        .map(|(id, text)| v1::Document {
            id: id.to_string(),
            text: text.to_string(),
            metadata: None,
            vector: Vec::new(),
        })
        .collect::<Vec<_>>()
    };
    for (name, stemming, want) in
        [("unstemmed", Some(false), vec!["plain"]), ("stemmed", None, vec!["ing", "plain"])]
    {
        let info = client
            .create_collection(v1::CreateCollectionRequest {
                name: name.into(),
                keyword: Some(v1::KeywordIndex { stemming, ..Default::default() }),
                ..Default::default()
            })
            .await
            .expect("create")
            .into_inner();
        assert_eq!(info.keyword.and_then(|k| k.stemming), Some(stemming.unwrap_or(true)));
        client
            .upsert_batch(v1::UpsertRequest { collection: name.into(), documents: docs() })
            .await
            .expect("upsert");
        let mut found = ids(&hits(client, search(name, "the run", 5, v1::SearchMode::Keyword)).await)
            .into_iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>();
        found.sort();
        // Snowball's English stemmer keeps "runner" (a noun) apart from "run".
        assert_eq!(found, want, "{name}");
        client.drop_collection(v1::DropCollectionRequest { name: name.into() }).await.expect("drop");
    }
}

/// A collection created without a keyword index gets one by ReindexKeywords (every chunk
/// rewritten); its settings can be changed the same way; bad requests are refused by name.
async fn reindex(client: &mut IndexerClient<Channel>) {
    client
        .create_collection(v1::CreateCollectionRequest {
            name: "late".into(),
            shards: 2,
            ..Default::default()
        })
        .await
        .expect("create without a keyword index");
    let r = client
        .upsert_batch(v1::UpsertRequest { collection: "late".into(), documents: corpus() })
        .await
        .expect("upsert")
        .into_inner();
    let err =
        client.search(search("late", QUESTION, 5, v1::SearchMode::Keyword)).await.expect_err("no index yet");
    assert_eq!(err.code(), Code::FailedPrecondition);
    let request =
        |keyword: Option<v1::KeywordIndex>| v1::ReindexKeywordsRequest { collection: "late".into(), keyword };
    let done = client.reindex_keywords(request(None)).await.expect("reindex").into_inner();
    assert_eq!(done.chunks, u64::from(r.chunks), "every chunk rewritten");
    let info = done.collection.expect("info");
    assert_eq!(info.keyword.as_ref().map(|k| k.language.as_str()), Some("english"));
    assert_eq!(info.points, u64::from(r.chunks), "nothing added or lost");
    let found = hits(client, search("late", QUESTION, 5, v1::SearchMode::Keyword)).await;
    assert_eq!(ids(&found), vec!["order"]);
    // New settings: stemming off, described and in force.
    let off = v1::KeywordIndex { stemming: Some(false), ..Default::default() };
    let done = client.reindex_keywords(request(Some(off))).await.expect("reindex again").into_inner();
    assert_eq!(done.collection.and_then(|c| c.keyword).and_then(|k| k.stemming), Some(false));
    let found = hits(client, search("late", QUESTION, 5, v1::SearchMode::Keyword)).await;
    assert_eq!(ids(&found), vec!["order"], "the exact name still matches");
    // Bad requests.
    let bad = v1::KeywordIndex { k1: Some(-1.0), ..Default::default() };
    let err = client.reindex_keywords(request(Some(bad))).await.expect_err("k1 < 0");
    assert!(err.code() == Code::InvalidArgument && err.message().contains("keyword.k1"), "{err:?}");
    let unknown = v1::ReindexKeywordsRequest { collection: "nope".into(), keyword: None };
    assert_eq!(client.reindex_keywords(unknown).await.expect_err("unknown").code(), Code::NotFound);
    client.drop_collection(v1::DropCollectionRequest { name: "late".into() }).await.expect("drop");
}

async fn bad_inputs(client: &mut IndexerClient<Channel>) {
    client
        .create_collection(v1::CreateCollectionRequest { name: "plain".into(), ..Default::default() })
        .await
        .expect("create a collection without a keyword index");
    let bad_keyword = v1::CreateCollectionRequest {
        name: "bad".into(),
        keyword: Some(v1::KeywordIndex { b: Some(2.0), ..Default::default() }),
        ..Default::default()
    };
    let err = client.create_collection(bad_keyword).await.expect_err("b = 2");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("keyword.b"), "{}", err.message());
    let klingon = v1::CreateCollectionRequest {
        name: "bad".into(),
        keyword: Some(v1::KeywordIndex { language: "klingon".into(), ..Default::default() }),
        ..Default::default()
    };
    let err = client.create_collection(klingon).await.expect_err("klingon");
    assert!(err.message().contains("keyword.language"), "{}", err.message());

    let base = || search("notes", "capital of Norway", 3, v1::SearchMode::Hybrid);
    let vector = v1::Query { query: Some(v1::query::Query::Vector(v1::Vector { values: vec![0.1; 384] })) };
    let cases: Vec<(&str, v1::SearchRequest, Code, &str)> = vec![
        ("unknown mode", v1::SearchRequest { mode: 99, ..base() }, Code::InvalidArgument, "mode"),
        (
            "diversity above 1",
            v1::SearchRequest { mmr: Some(v1::Mmr { diversity: 1.5, candidates: 0 }), ..base() },
            Code::InvalidArgument,
            "mmr.diversity",
        ),
        (
            "candidates below k",
            v1::SearchRequest { mmr: Some(v1::Mmr { diversity: 0.5, candidates: 2 }), ..base() },
            Code::InvalidArgument,
            "mmr.candidates",
        ),
        (
            "alpha above 1",
            v1::SearchRequest {
                fusion: Some(v1::Fusion {
                    method: Some(v1::fusion::Method::Weighted(v1::Weighted { alpha: 2.0 })),
                }),
                ..base()
            },
            Code::InvalidArgument,
            "fusion.weighted.alpha",
        ),
        ("prefetch below k", v1::SearchRequest { prefetch: 2, ..base() }, Code::InvalidArgument, "prefetch"),
        (
            "a vector query in hybrid mode",
            v1::SearchRequest { queries: vec![vector], ..base() },
            Code::InvalidArgument,
            "queries",
        ),
        (
            "keyword search without a keyword index",
            search("plain", "capital of Norway", 3, v1::SearchMode::Keyword),
            Code::FailedPrecondition,
            "mode",
        ),
        (
            "hybrid search without a keyword index",
            search("plain", "capital of Norway", 3, v1::SearchMode::Hybrid),
            Code::FailedPrecondition,
            "mode",
        ),
    ];
    for (what, req, code, field) in cases {
        let err = client.search(req).await.expect_err(what);
        assert_eq!(err.code(), code, "{what}: {err:?}");
        assert!(err.message().contains(field), "{what}: {}", err.message());
    }
}

//! Vectors brought by the user, through real gRPC: documents that carry their own vector next
//! to documents the indexer embeds (real MiniLM), collections of vectors without a model,
//! GetDocument, the refusal of bad vectors before anything is stored, and `ragd ingest` of
//! JSONL vector fields, `.npy` and `.fvecs` files followed by `ragd get`.

use ragd_indexer::IndexerConfig;
use ragd_proto::v1::{self, embedder_client::EmbedderClient, indexer_client::IndexerClient};
use ragd_tests::process::ragd_cli;
use ragd_tests::{TestEmbedder, TestIndexer, embedder_config, free_port};
use serde_json::Value;
use tonic::Code;
use tonic::transport::Channel;

const PARIS: &str = "The capital of France is Paris.";

fn text_doc(id: &str, text: &str) -> v1::Document {
    v1::Document { id: id.into(), text: text.into(), ..Default::default() }
}

fn vector_doc(id: &str, text: &str, vector: Vec<f32>) -> v1::Document {
    v1::Document { id: id.into(), text: text.into(), vector, ..Default::default() }
}

async fn passage_vector(embedder: &mut EmbedderClient<Channel>, text: &str) -> Vec<f32> {
    let request = v1::EmbedRequest {
        texts: vec![text.into()],
        model: "all-MiniLM-L6-v2".into(),
        kind: v1::InputKind::Passage as i32,
        ..Default::default()
    };
    embedder.embed(request).await.expect("embed").into_inner().embeddings.remove(0).values
}

async fn search(client: &mut IndexerClient<Channel>, collection: &str, q: v1::query::Query) -> Vec<v1::Hit> {
    let request = v1::SearchRequest {
        collection: collection.into(),
        queries: vec![v1::Query { query: Some(q) }],
        k: 5,
        exact: true,
        ..Default::default()
    };
    client.search(request).await.expect("search").into_inner().results.remove(0).hits
}

/// A document carrying MiniLM's own vector of a sentence scores exactly as the document the
/// indexer embedded from that sentence; its text is stored but not embedded; bad vectors
/// refuse the whole request, naming the document, and store nothing of it.
#[tokio::test]
async fn own_vectors_score_as_embedded_ones_and_bad_ones_store_nothing() {
    let data = tempfile::tempdir().expect("data");
    let embedder = TestEmbedder::start(embedder_config(&["all-MiniLM-L6-v2"])).await;
    let config = IndexerConfig {
        data_dir: data.path().to_path_buf(),
        embedder_url: embedder.url.clone(),
        ..IndexerConfig::default()
    };
    let indexer = TestIndexer::start(config).await;
    let mut client = indexer.client().await;
    let mut embedder_client = embedder.client().await;
    let create = v1::CreateCollectionRequest {
        name: "m".into(),
        model: "all-MiniLM-L6-v2".into(),
        ..Default::default()
    };
    client.create_collection(create).await.expect("create");
    let paris = passage_vector(&mut embedder_client, PARIS).await;
    assert_eq!(paris.len(), 384);

    let mut nan = paris.clone();
    nan[7] = f32::NAN;
    for (bad, why) in [
        (vector_doc("short", "", paris[..383].to_vec()), "dimension 383, the collection's is 384"),
        (vector_doc("nan", "", nan), "value 7 is NaN"),
    ] {
        let documents = vec![text_doc("ok", "The capital of Japan is Tokyo."), bad.clone()];
        let err = client
            .upsert_batch(v1::UpsertRequest { collection: "m".into(), documents })
            .await
            .expect_err(why);
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        assert!(err.message().contains(&format!("document 1 (\"{}\")", bad.id)), "{}", err.message());
        assert!(err.message().contains(why), "{}", err.message());
        let status = v1::DocumentStatusRequest { collection: "m".into(), id: "ok".into() };
        let err = client.document_status(status).await.expect_err("nothing stored");
        assert_eq!(err.code(), Code::NotFound, "{err:?}");
    }

    let documents = vec![
        text_doc("embedded", PARIS),
        // Its text says otherwise: it is found by its vector, not its text.
        vector_doc("brought", "A sentence about rivers, not embedded.", paris.clone()),
    ];
    let r = client
        .upsert_batch(v1::UpsertRequest { collection: "m".into(), documents })
        .await
        .expect("upsert")
        .into_inner();
    assert_eq!((r.documents, r.chunks, r.failed.len()), (2, 2, 0));
    let hits =
        search(&mut client, "m", v1::query::Query::Text("Which city is France's capital?".into())).await;
    let top: Vec<&str> = hits.iter().take(2).map(|h| h.doc_id.as_str()).collect();
    assert!(top.contains(&"brought") && top.contains(&"embedded"), "{hits:?}");
    assert!((hits[0].score - hits[1].score).abs() < 1e-5, "{} vs {}", hits[0].score, hits[1].score);
    let brought = hits.iter().find(|h| h.doc_id == "brought").expect("brought");
    assert_eq!(brought.text, "A sentence about rivers, not embedded.");

    let get = |id: &str, with_vectors| v1::GetDocumentRequest {
        collection: "m".into(),
        id: id.into(),
        with_vectors,
    };
    let doc = client.get_document(get("brought", true)).await.expect("get").into_inner();
    assert_eq!(doc.chunks.len(), 1);
    // MiniLM's vectors are unit length: stored (normalised for cosine) as they came.
    assert!(ragd_tests::max_abs_diff(&doc.chunks[0].vector, &paris) < 1e-6);
    let doc = client.get_document(get("embedded", false)).await.expect("get").into_inner();
    assert_eq!((doc.chunks[0].text.as_str(), doc.chunks[0].vector.len()), (PARIS, 0));
    let err = client.get_document(get("nobody", false)).await.expect_err("unknown");
    assert_eq!(err.code(), Code::NotFound);
    let err = client.get_document(get("", false)).await.expect_err("empty");
    assert_eq!(err.code(), Code::InvalidArgument);
}

/// `ragd collections create --dim`, `ragd ingest` of a JSONL vector field, an `.npy` and an
/// `.fvecs` file (rows numbered across files, or named by --ids), `ragd get --vectors`; a
/// dot-product collection keeps vectors exactly as given. No embedder runs at all.
#[tokio::test]
async fn the_cli_ingests_vector_files_into_a_collection_without_a_model() {
    let data = tempfile::tempdir().expect("data");
    let config = IndexerConfig {
        data_dir: data.path().to_path_buf(),
        // Nothing listens there: a collection of vectors never asks an embedder.
        embedder_url: format!("http://127.0.0.1:{}", free_port()),
        ..IndexerConfig::default()
    };
    let indexer = TestIndexer::start(config).await;
    let url = indexer.url.clone();
    let cli = move |args: Vec<String>| async move {
        tokio::task::spawn_blocking(move || ragd_cli(&args.iter().map(String::as_str).collect::<Vec<_>>()))
            .await
            .expect("cli")
    };
    let with_url = |args: &[&str]| {
        let mut v: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        v.splice(1..1, ["--indexer".to_string(), url.clone(), "--json".to_string()]);
        v
    };
    let (ok, out, err) =
        cli(with_url(&["collections", "create", "vecs", "--dim", "3", "--distance", "dot"])).await;
    assert!(ok, "{err}");
    let info: Value = serde_json::from_str(out.trim()).expect("json");
    assert_eq!((info["dim"].as_u64(), info["model"].as_str()), (Some(3), Some("")));

    let files = tempfile::tempdir().expect("files");
    // Rows 0 and 1: an .npy of float32 (NumPy's layout, written by hand here).
    let mut header = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }".to_string();
    while !(10 + header.len() + 1).is_multiple_of(64) {
        header.push(' ');
    }
    header.push('\n');
    let mut npy = b"\x93NUMPY\x01\x00".to_vec();
    npy.extend((header.len() as u16).to_le_bytes());
    npy.extend(header.as_bytes());
    for v in [1.0f32, 2.0, 3.0, -1.5, 0.0, 4.0] {
        npy.extend(v.to_le_bytes());
    }
    std::fs::write(files.path().join("a.npy"), npy).expect("npy");
    // Row 2: an .fvecs record.
    let mut fvecs = 3i32.to_le_bytes().to_vec();
    for v in [0.25f32, -8.0, 2.0] {
        fvecs.extend(v.to_le_bytes());
    }
    std::fs::write(files.path().join("b.fvecs"), fvecs).expect("fvecs");
    std::fs::write(
        files.path().join("c.jsonl"),
        "{\"id\":\"j\",\"text\":\"with words\",\"vector\":[0,0,9],\"tag\":\"t\"}\n",
    )
    .expect("jsonl");
    let paths: Vec<String> =
        ["a.npy", "b.fvecs", "c.jsonl"].iter().map(|f| files.path().join(f).display().to_string()).collect();
    let mut args = with_url(&["ingest", "--collection", "vecs"]);
    args.extend(paths.iter().cloned());
    let (ok, out, err) = cli(args).await;
    assert!(ok, "{err}");
    let summary: Value = serde_json::from_str(out.trim()).expect("json");
    assert_eq!(summary["documents_stored"], 4, "{summary}");

    let get = |id: &str| with_url(&["get", "--collection", "vecs", "--vectors", id]);
    let expect = [("0", vec![1.0, 2.0, 3.0]), ("1", vec![-1.5, 0.0, 4.0]), ("2", vec![0.25, -8.0, 2.0])];
    for (id, vector) in expect {
        let (ok, out, err) = cli(get(id)).await;
        assert!(ok, "{err}");
        let doc: Value = serde_json::from_str(out.trim()).expect("json");
        assert_eq!(doc["chunks"][0]["vector"], serde_json::json!(vector), "{id}");
    }
    let (ok, out, err) = cli(get("j")).await;
    assert!(ok, "{err}");
    let doc: Value = serde_json::from_str(out.trim()).expect("json");
    assert_eq!(doc["chunks"][0]["text"], "with words");
    assert_eq!(doc["chunks"][0]["metadata"], serde_json::json!({"tag": "t"}));

    // --ids names the rows; a count that does not match is refused before anything is sent.
    std::fs::write(files.path().join("ids.txt"), "first\nsecond\nthird\n").expect("ids");
    let ids = files.path().join("ids.txt").display().to_string();
    let mut args = with_url(&["ingest", "--collection", "vecs", "--ids", &ids]);
    args.extend(paths[..2].iter().cloned());
    let (ok, _, err) = cli(args).await;
    assert!(ok, "{err}");
    let (ok, out, _) = cli(get("third")).await;
    assert!(ok);
    let doc: Value = serde_json::from_str(out.trim()).expect("json");
    assert_eq!(doc["chunks"][0]["vector"], serde_json::json!([0.25, -8.0, 2.0]));
    let mut args = with_url(&["ingest", "--collection", "vecs", "--ids", &ids]);
    args.push(paths[0].clone());
    let (ok, _, err) = cli(args).await;
    assert!(!ok && err.contains("more lines"), "{err}");

    // A vector query through gRPC: dot products with (0, 0, 1) are each vector's third value.
    let mut client = indexer.client().await;
    let hits =
        search(&mut client, "vecs", v1::query::Query::Vector(v1::Vector { values: vec![0.0, 0.0, 1.0] }))
            .await;
    assert_eq!((hits[0].doc_id.as_str(), hits[0].score), ("j", 9.0));
    let mut fours: Vec<&str> = hits.iter().filter(|h| h.score == 4.0).map(|h| h.doc_id.as_str()).collect();
    fours.sort();
    assert_eq!(fours, ["1", "second"], "{hits:?}");
    let err = client
        .search(v1::SearchRequest {
            collection: "vecs".into(),
            queries: vec![v1::Query { query: Some(v1::query::Query::Text("words".into())) }],
            k: 3,
            ..Default::default()
        })
        .await
        .expect_err("text query");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
}

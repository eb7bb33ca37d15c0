//! The fuzz targets' bodies: each takes the fuzzer's bytes and panics when a property breaks.
//! `fuzz/` (cargo-fuzz, nightly) drives them with libFuzzer; the integration binary replays the
//! committed corpora (`fuzz/corpus/<target>/`) through the same functions on stable
//! (`tests/tests/it/fuzz_replay.rs`), so what a fuzzer once found stays fixed.
//!
//! Properties, stated without calling the code under test for the expected answer:
//! - loaders: no panic; text formats refuse non-UTF-8; the text and id fields never stay in the
//!   metadata; JSONL gives one document per non-blank line; a text file is one document holding
//!   the input; PDF pages have text, ascending page numbers, unique ids and joined lines;
//!   vector files (`.npy`, `.fvecs`) give rows of one dimension > 0, numbered `0..n`, with no text
//!   or metadata, whose values are the file's bytes read at the place the format puts them (read
//!   here from the bytes, not by the parser), and the accepted file is exactly header + data;
//! - chunkers: a valid window gives chunks that are slices of the text at their byte ranges, in
//!   order, covering every non-white-space character (sentences) or every token (tokens); token
//!   offsets that are not ordered ranges on character boundaries are refused, never a panic;
//! - filter conversion: a decoded `Filter` is refused INVALID_ARGUMENT or converts to both the
//!   embedded engine's and Qdrant's filter;
//! - requests: every request message of the three services, decoded from the bytes and sent over
//!   gRPC to a real cluster (embedder with MiniLM, indexer with the embedded Qdrant engine and a
//!   seeded collection, generator with SmolLM2), answers within 60 s with a status that is not
//!   INTERNAL, UNKNOWN, DATA_LOSS, UNIMPLEMENTED or UNAVAILABLE (a user's mistake is never a server
//!   fault, and a panicking handler shows as UNKNOWN or a reset connection).

use std::sync::OnceLock;
use std::time::Duration;

use prost::Message;
use ragd_indexer::chunk::{Chunk, Chunking, by_sentences, by_tokens};
use ragd_indexer::filter::Selection;
use ragd_loaders::{Columns, Format, load_bytes};
use ragd_proto::v1;
use tonic::{Code, Status};

/// A target's body: the fuzzer's bytes in, a panic when a property breaks.
pub type Target = fn(&[u8]);

/// Every target by name, in the order of `fuzz/fuzz_targets/`.
pub const TARGETS: &[(&str, Target)] = &[
    ("load_csv", load_csv),
    ("load_jsonl", load_jsonl),
    ("load_text", load_text),
    ("load_pdf", load_pdf),
    ("load_npy", load_npy),
    ("load_fvecs", load_fvecs),
    ("chunk_sentences", chunk_sentences),
    ("chunk_tokens", chunk_tokens),
    ("filter", filter),
    ("embedder_requests", embedder_requests),
    ("indexer_requests", indexer_requests),
    ("generator_requests", generator_requests),
];

fn columns() -> Columns {
    Columns::default()
}

fn no_own_fields_in_metadata(docs: &[ragd_loaders::LoadedDocument]) {
    for d in docs {
        assert!(!d.metadata.contains_key("text") && !d.metadata.contains_key("id"), "{d:?}");
    }
}

pub fn load_csv(data: &[u8]) {
    match load_bytes(Format::Csv, data, "f.csv", "f.csv", &columns()) {
        Ok(docs) => no_own_fields_in_metadata(&docs),
        Err(e) => assert!(!e.is_empty()),
    }
}

pub fn load_jsonl(data: &[u8]) {
    match load_bytes(Format::Jsonl, data, "f.jsonl", "f.jsonl", &columns()) {
        Ok(docs) => {
            let text = std::str::from_utf8(data).expect("accepted input is UTF-8");
            let lines = text.split('\n').filter(|l| !l.trim().is_empty()).count();
            assert_eq!(docs.len(), lines, "one document per non-blank line");
            no_own_fields_in_metadata(&docs);
        }
        Err(e) => assert!(!e.is_empty()),
    }
}

pub fn load_text(data: &[u8]) {
    match load_bytes(Format::Text, data, "f.txt", "f.txt", &columns()) {
        Ok(docs) => {
            assert_eq!(docs.len(), 1);
            assert_eq!(docs[0].text.as_bytes(), data);
        }
        Err(_) => assert!(std::str::from_utf8(data).is_err(), "valid UTF-8 refused"),
    }
}

pub fn load_pdf(data: &[u8]) {
    let Ok(docs) = load_bytes(Format::Pdf, data, "f.pdf", "f.pdf", &columns()) else { return };
    assert!(!docs.is_empty());
    let mut ids = std::collections::HashSet::new();
    let mut last_page = 0;
    for d in &docs {
        assert!(ids.insert(d.id.clone()), "duplicate id {}", d.id);
        let page = d.metadata["page"].as_u64().expect("page number");
        assert!(page > last_page, "pages out of order");
        last_page = page;
        assert!(!d.text.trim().is_empty(), "a page without text became a document");
        assert!(!d.text.contains("\n\n\n"), "paragraphs are separated by one blank line");
        for line in d.text.split('\n') {
            assert_eq!(line, line.trim(), "joined lines are trimmed");
        }
    }
}

/// What every vector file's documents share: numbered rows of one dimension > 0, vectors only.
/// Returns (rows, dimension).
fn vector_rows(docs: &[ragd_loaders::LoadedDocument]) -> (usize, usize) {
    let dim = docs.first().map_or(0, |d| d.vector.as_ref().map_or(0, Vec::len));
    for (i, d) in docs.iter().enumerate() {
        assert_eq!(d.id, i.to_string(), "rows are numbered in order");
        assert!(d.text.is_empty() && d.metadata.is_empty(), "a vector row has no text or metadata");
        let v = d.vector.as_ref().expect("a vector row has its vector");
        assert!(!v.is_empty() && v.len() == dim, "row {i}: dimension {} (first {dim})", v.len());
    }
    (docs.len(), dim)
}

fn le_f32(b: &[u8]) -> f32 {
    f32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

/// Equal as stored: the same bits, any NaN equal to any NaN (an f64 NaN narrowed to f32).
fn same_value(got: f32, want: f32) -> bool {
    got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan())
}

pub fn load_npy(data: &[u8]) {
    let Ok(docs) = load_bytes(Format::Npy, data, "f.npy", "f.npy", &columns()) else { return };
    let (n, dim) = vector_rows(&docs);
    // Header: magic (6), version (1, 1 or 2 or 3), a reserved byte, then the header's length as
    // u16 (version 1) or u32; data follows the header.
    assert_eq!(&data[..6], b"\x93NUMPY", "accepted without the magic");
    let start = match data[6] {
        1 => 10 + usize::from(u16::from_le_bytes([data[8], data[9]])),
        2 | 3 => 12 + u32::from_le_bytes([data[8], data[9], data[10], data[11]]) as usize,
        v => panic!("accepted format version {v}"),
    };
    let body = &data[start..];
    let header = std::str::from_utf8(&data[10..start]).expect("accepted header is text");
    // A header field's value: the text after the first `'key':`.
    let field = |key: &str| {
        let at = header.find(&format!("'{key}':")).expect("accepted header has the field");
        header[at + key.len() + 3..].trim_start()
    };
    let width = if field("descr").starts_with("'<f8'") { 8 } else { 4 };
    assert_eq!(body.len(), n * dim * width, "the data is exactly rows × dimension × {width} bytes");
    // C order: row r's values are contiguous; Fortran order: column-major. Either way, every
    // stored value appears once, at its place.
    let fortran = field("fortran_order").starts_with("True");
    for (r, d) in docs.iter().enumerate() {
        for (c, got) in d.vector.as_ref().expect("vector").iter().enumerate() {
            let i = if fortran { c * n + r } else { r * dim + c };
            let b = &body[i * width..(i + 1) * width];
            let want = if width == 4 {
                le_f32(b)
            } else {
                f64::from_le_bytes(b.try_into().expect("8 bytes")) as f32
            };
            assert!(same_value(*got, want), "row {r} column {c}: {got} for {want}");
        }
    }
}

pub fn load_fvecs(data: &[u8]) {
    match load_bytes(Format::Fvecs, data, "f.fvecs", "f.fvecs", &columns()) {
        Ok(docs) => {
            let (n, dim) = vector_rows(&docs);
            let record = 4 + 4 * dim;
            assert_eq!(data.len(), n * record, "the file is exactly n records of 4 + 4 × dimension bytes");
            for (r, d) in docs.iter().enumerate() {
                let rec = &data[r * record..(r + 1) * record];
                assert_eq!(i32::from_le_bytes(rec[..4].try_into().expect("4 bytes")) as usize, dim);
                for (c, got) in d.vector.as_ref().expect("vector").iter().enumerate() {
                    let want = le_f32(&rec[4 + 4 * c..]);
                    assert!(same_value(*got, want), "row {r} column {c}: {got} for {want}");
                }
            }
        }
        // A well-formed file is never refused: records of one positive dimension that fill it.
        Err(e) => {
            let dim = data.get(..4).map(|h| i32::from_le_bytes(h.try_into().expect("4 bytes")));
            if let Some(dim) = dim.filter(|d| *d > 0) {
                let record = 4 + 4 * dim as usize;
                let well_formed =
                    data.len().is_multiple_of(record) && data.chunks(record).all(|rec| rec[..4] == data[..4]);
                assert!(!well_formed, "a well-formed file refused: {e}");
            }
        }
    }
}

/// Window parameters from the first two bytes (0..16 each: small windows meet the edges).
fn window(data: &[u8]) -> Option<(u32, u32, &[u8])> {
    (data.len() >= 2).then(|| (u32::from(data[0] % 16), u32::from(data[1] % 16), &data[2..]))
}

/// Chunks are slices of their ranges, in order of start, none the same range as the one before
/// (token windows may share a start: tokens can share offsets).
fn slices_in_order(text: &str, chunks: &[Chunk]) {
    let mut previous: Option<(usize, usize)> = None;
    for c in chunks {
        assert!(c.start < c.end && c.end <= text.len(), "range {}..{} of {}", c.start, c.end, text.len());
        assert_eq!(c.text, text[c.start..c.end], "a chunk is the slice of its range");
        assert!(
            previous.is_none_or(|p| p.0 <= c.start && p != (c.start, c.end)),
            "chunks in order, no repeats"
        );
        previous = Some((c.start, c.end));
    }
}

pub fn chunk_sentences(data: &[u8]) {
    let Some((size, overlap, rest)) = window(data) else { return };
    let text = String::from_utf8_lossy(rest);
    if (Chunking::Sentences { size, overlap }).validate(usize::MAX).is_err() {
        assert!(size == 0 || overlap >= size, "window {size}/{overlap} refused");
        return;
    }
    let chunks = by_sentences(&text, size, overlap);
    slices_in_order(&text, &chunks);
    for (i, ch) in text.char_indices() {
        if !ch.is_whitespace() {
            assert!(chunks.iter().any(|c| c.start <= i && i < c.end), "character at {i} in no chunk");
        }
    }
}

/// Token chunking: after the window, one byte n, then n (start, end) pairs of u16, then the text.
pub fn chunk_tokens(data: &[u8]) {
    let Some((size, overlap, rest)) = window(data) else { return };
    let Some((&n, rest)) = rest.split_first() else { return };
    let n = usize::from(n);
    if rest.len() < 4 * n || (Chunking::Tokens { size, overlap }).validate(usize::MAX).is_err() {
        return;
    }
    let offsets: Vec<(usize, usize)> = rest[..4 * n]
        .chunks_exact(4)
        .map(|b| {
            (usize::from(u16::from_le_bytes([b[0], b[1]])), usize::from(u16::from_le_bytes([b[2], b[3]])))
        })
        .collect();
    let text = String::from_utf8_lossy(&rest[4 * n..]);
    let valid_range = |&(s, e): &(usize, usize)| {
        s <= e && e <= text.len() && text.is_char_boundary(s) && text.is_char_boundary(e)
    };
    let ordered = offsets.windows(2).all(|w| w[0].0 <= w[1].0 && w[0].1 <= w[1].1);
    match by_tokens(&text, &offsets, size, overlap) {
        Ok(chunks) => {
            assert!(offsets.iter().all(valid_range) && ordered, "accepted bad offsets {offsets:?}");
            slices_in_order(&text, &chunks);
            for &(s, e) in offsets.iter().filter(|(s, e)| s < e) {
                assert!(chunks.iter().any(|c| c.start <= s && e <= c.end), "token {s}..{e} in no chunk");
            }
        }
        Err(_) => assert!(!(offsets.iter().all(valid_range) && ordered), "refused good offsets {offsets:?}"),
    }
}

pub fn filter(data: &[u8]) {
    let Ok(proto) = v1::Filter::decode(data) else { return };
    match ragd_indexer::grpc::filter_from(Some(proto)) {
        Ok(Some(f)) => {
            ragd_indexer::store::edge::edge_filter(Selection::Metadata(&f))
                .unwrap_or_else(|e| panic!("a validated filter does not convert: {e}: {f:?}"));
            let _ = qdrant_client::qdrant::Filter::from(Selection::Metadata(&f));
        }
        Ok(None) => {}
        Err(e) => assert_eq!(Status::from(e).code(), Code::InvalidArgument),
    }
}

/// A real cluster for the request targets, started once per process on its own runtime.
struct Cluster {
    runtime: tokio::runtime::Runtime,
    _dir: tempfile::TempDir,
    _served: (crate::TestEmbedder, crate::TestIndexer, crate::TestGenerator),
    embedder: ragd_proto::v1::embedder_client::EmbedderClient<tonic::transport::Channel>,
    indexer: ragd_proto::v1::indexer_client::IndexerClient<tonic::transport::Channel>,
    generator: ragd_proto::v1::generator_client::GeneratorClient<tonic::transport::Channel>,
}

/// The seeded collection: 16 capitals, MiniLM, default chunking.
pub const SEED_COLLECTION: &str = "fuzz";

async fn seed(indexer: &mut ragd_proto::v1::indexer_client::IndexerClient<tonic::transport::Channel>) {
    indexer
        .create_collection(v1::CreateCollectionRequest {
            name: SEED_COLLECTION.into(),
            model: "all-MiniLM-L6-v2".into(),
            ..Default::default()
        })
        .await
        .expect("create the seed collection");
    let documents = crate::capitals_documents(16);
    indexer
        .upsert_batch(v1::UpsertRequest { collection: SEED_COLLECTION.into(), documents })
        .await
        .expect("seed documents");
}

fn cluster() -> &'static Cluster {
    static CLUSTER: OnceLock<Cluster> = OnceLock::new();
    CLUSTER.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let dir = tempfile::tempdir().expect("tempdir");
        let (served, embedder, mut indexer, generator) = runtime.block_on(async {
            let e = crate::TestEmbedder::start(crate::embedder_config(&["all-MiniLM-L6-v2"])).await;
            let i = crate::TestIndexer::start(ragd_indexer::IndexerConfig {
                data_dir: dir.path().to_path_buf(),
                embedder_url: e.url.clone(),
                ..ragd_indexer::IndexerConfig::default()
            })
            .await;
            // Answers of at most 4 tokens: a fuzzer's valid Ask costs one short generation.
            let g = crate::TestGenerator::start(ragd_generator::GeneratorConfig {
                default_max_tokens: 4,
                max_tokens_limit: 4,
                ..crate::generator_config(&i.url)
            })
            .await;
            let (ec, ic, gc) = (e.client().await, i.client().await, g.client().await);
            ((e, i, g), ec, ic, gc)
        });
        runtime.block_on(seed(&mut indexer));
        Cluster { runtime, _dir: dir, _served: served, embedder, indexer, generator }
    })
}

/// Runs one call on the cluster: within 60 s and never a server-fault status.
fn check<F>(rpc: &str, call: F)
where
    F: std::future::Future<Output = Result<(), Status>>,
{
    let c = cluster();
    let outcome = c.runtime.block_on(async { tokio::time::timeout(Duration::from_secs(60), call).await });
    match outcome {
        Err(_) => panic!("{rpc}: no answer within 60 s"),
        Ok(Ok(())) => {}
        Ok(Err(s)) => assert!(
            !matches!(
                s.code(),
                Code::Internal | Code::Unknown | Code::DataLoss | Code::Unimplemented | Code::Unavailable
            ),
            "{rpc}: {:?}: {}",
            s.code(),
            s.message()
        ),
    }
}

/// Reads a server stream to its end.
async fn drain<T>(s: Result<tonic::Response<tonic::Streaming<T>>, Status>) -> Result<(), Status> {
    let mut s = s?.into_inner();
    while s.message().await?.is_some() {}
    Ok(())
}

/// The first byte picks the RPC, the rest is its request message.
fn split(data: &[u8]) -> Option<(u8, &[u8])> {
    data.split_first().map(|(&b, rest)| (b, rest))
}

macro_rules! decode_or_return {
    ($ty:ty, $bytes:expr) => {
        match <$ty>::decode($bytes) {
            Ok(m) => m,
            Err(_) => return,
        }
    };
}

pub fn embedder_requests(data: &[u8]) {
    let Some((which, bytes)) = split(data) else { return };
    let mut e = cluster().embedder.clone();
    match which % 6 {
        0 => {
            let r = decode_or_return!(v1::EmbedRequest, bytes);
            let texts = r.texts.len();
            check("Embed", async move {
                let out = e.embed(r).await?.into_inner();
                assert_eq!(out.embeddings.len(), texts, "one vector per text");
                for v in &out.embeddings {
                    assert!(v.values.iter().all(|x| x.is_finite()), "finite vectors");
                }
                Ok(())
            })
        }
        1 => {
            let r = decode_or_return!(v1::CountTokensRequest, bytes);
            check("CountTokens", async move { e.count_tokens(r).await.map(drop) })
        }
        2 => {
            let r = decode_or_return!(v1::TokenizeRequest, bytes);
            check("Tokenize", async move { e.tokenize(r).await.map(drop) })
        }
        3 => {
            let r = decode_or_return!(v1::ListModelsRequest, bytes);
            check("ListModels", async move { e.list_models(r).await.map(drop) })
        }
        4 => {
            let r = decode_or_return!(v1::ModelInfoRequest, bytes);
            check("ModelInfo", async move { e.model_info(r).await.map(drop) })
        }
        _ => {
            let r = decode_or_return!(v1::EmbedStreamRequest, bytes);
            check("EmbedStream", async move { drain(e.embed_stream(tokio_stream::iter([r])).await).await })
        }
    }
}

pub fn indexer_requests(data: &[u8]) {
    let Some((which, bytes)) = split(data) else { return };
    let c = cluster();
    let mut i = c.indexer.clone();
    match which % 16 {
        0 => {
            let r = decode_or_return!(v1::CreateCollectionRequest, bytes);
            let name = r.name.clone();
            let mut cleanup = i.clone();
            check("CreateCollection", async move {
                i.create_collection(r).await?;
                // Keep the fuzzer's collections from piling up.
                cleanup.drop_collection(v1::DropCollectionRequest { name }).await.map(drop)
            })
        }
        1 => {
            let r = decode_or_return!(v1::ListCollectionsRequest, bytes);
            check("ListCollections", async move { i.list_collections(r).await.map(drop) })
        }
        2 => {
            let r = decode_or_return!(v1::DescribeCollectionRequest, bytes);
            check("DescribeCollection", async move { i.describe_collection(r).await.map(drop) })
        }
        3 => {
            let r = decode_or_return!(v1::DropCollectionRequest, bytes);
            let reseed = r.name == SEED_COLLECTION;
            check("DropCollection", async move {
                i.drop_collection(r).await?;
                if reseed {
                    seed(&mut i).await;
                }
                Ok(())
            })
        }
        4 => {
            let r = decode_or_return!(v1::UpsertRequest, bytes);
            check("UpsertBatch", async move { i.upsert_batch(r).await.map(drop) })
        }
        5 => {
            let r = decode_or_return!(v1::UpsertRequest, bytes);
            check("Upsert", async move { i.upsert(tokio_stream::iter([r])).await.map(drop) })
        }
        6 => {
            let r = decode_or_return!(v1::DeleteRequest, bytes);
            check("Delete", async move { i.delete(r).await.map(drop) })
        }
        7 => {
            let r = decode_or_return!(v1::DocumentStatusRequest, bytes);
            check("DocumentStatus", async move { i.document_status(r).await.map(drop) })
        }
        8 => {
            let r = decode_or_return!(v1::SearchRequest, bytes);
            check("Search", async move { i.search(r).await.map(drop) })
        }
        9 => {
            let r = decode_or_return!(v1::ScrollRequest, bytes);
            check("Scroll", async move { i.scroll(r).await.map(drop) })
        }
        10 => {
            let r = decode_or_return!(v1::ReindexKeywordsRequest, bytes);
            check("ReindexKeywords", async move { i.reindex_keywords(r).await.map(drop) })
        }
        11 => {
            let r = decode_or_return!(v1::CreateSnapshotRequest, bytes);
            let mut cleanup = i.clone();
            check("CreateSnapshot", async move {
                let info = i.create_snapshot(r).await?.into_inner();
                cleanup
                    .delete_snapshot(v1::DeleteSnapshotRequest {
                        collection: info.collection,
                        snapshot: info.name,
                    })
                    .await
                    .map(drop)
            })
        }
        12 => {
            let r = decode_or_return!(v1::ListSnapshotsRequest, bytes);
            check("ListSnapshots", async move { i.list_snapshots(r).await.map(drop) })
        }
        13 => {
            let r = decode_or_return!(v1::RestoreSnapshotRequest, bytes);
            let mut cleanup = i.clone();
            check("RestoreSnapshot", async move {
                let info = i.restore_snapshot(r).await?.into_inner();
                cleanup.drop_collection(v1::DropCollectionRequest { name: info.name }).await.map(drop)
            })
        }
        14 => {
            let r = decode_or_return!(v1::GetDocumentRequest, bytes);
            check("GetDocument", async move { i.get_document(r).await.map(drop) })
        }
        _ => {
            let r = decode_or_return!(v1::DeleteSnapshotRequest, bytes);
            check("DeleteSnapshot", async move { i.delete_snapshot(r).await.map(drop) })
        }
    }
}

pub fn generator_requests(data: &[u8]) {
    let Some((which, bytes)) = split(data) else { return };
    let mut g = cluster().generator.clone();
    match which % 3 {
        0 => {
            let r = decode_or_return!(v1::AskRequest, bytes);
            check("Ask", async move { drain(g.ask(r).await).await })
        }
        1 => {
            let r = decode_or_return!(v1::GenerateRequest, bytes);
            check("Generate", async move { drain(g.generate(r).await).await })
        }
        _ => {
            let r = decode_or_return!(v1::ListBackendsRequest, bytes);
            check("ListBackends", async move { g.list_backends(r).await.map(drop) })
        }
    }
}

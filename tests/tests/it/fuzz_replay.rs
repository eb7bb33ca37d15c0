//! The committed fuzz corpora (`fuzz/corpus/<target>/`, grown by `make fuzz`) replayed on stable
//! through the targets' bodies (tests/src/fuzz.rs): every input a fuzzer kept — the crashes it
//! found included, once fixed — must pass. Each target must have a corpus (an empty folder would
//! be a replay that cannot fail). The request targets start a real cluster (embedder, indexer,
//! generator) once for the binary.

use std::path::PathBuf;

use prost::Message;
use ragd_proto::v1;
use ragd_tests::fuzz::{SEED_COLLECTION, TARGETS};
use ragd_tests::repo_root;

fn corpus(target: &str) -> PathBuf {
    repo_root().join("fuzz/corpus").join(target)
}

fn replay(target: &str) {
    let (_, body) = TARGETS.iter().find(|(n, _)| *n == target).expect("a known target");
    let mut inputs: Vec<PathBuf> = std::fs::read_dir(corpus(target))
        .unwrap_or_else(|e| panic!("fuzz/corpus/{target}: {e}"))
        .map(|e| e.expect("entry").path())
        .collect();
    inputs.sort();
    assert!(!inputs.is_empty(), "fuzz/corpus/{target} is empty");
    let failed: Vec<String> = inputs
        .iter()
        .filter_map(|path| {
            let data = std::fs::read(path).expect("read input");
            std::panic::catch_unwind(|| body(&data)).err().map(|_| path.display().to_string())
        })
        .collect();
    assert!(failed.is_empty(), "{target}: {} of {} inputs fail: {failed:?}", failed.len(), inputs.len());
    eprintln!("{target}: {} inputs replayed", inputs.len());
}

macro_rules! replays {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                replay(stringify!($name));
            }
        )*
        #[test]
        fn every_target_is_replayed() {
            let replayed = [$(stringify!($name)),*];
            for (name, _) in TARGETS {
                assert!(replayed.contains(name), "target {name} has no replay test");
            }
        }
    };
}

replays!(
    load_csv,
    load_jsonl,
    load_text,
    load_pdf,
    load_npy,
    load_fvecs,
    chunk_sentences,
    chunk_tokens,
    filter,
    embedder_requests,
    indexer_requests,
    generator_requests,
);

fn keyword(key: &str, value: &str) -> v1::Condition {
    v1::Condition {
        key: key.into(),
        test: Some(v1::condition::Test::Match(v1::Value {
            kind: Some(v1::value::Kind::Keyword(value.into())),
        })),
    }
}

fn with_rpc(rpc: u8, m: impl Message) -> Vec<u8> {
    let mut out = vec![rpc];
    m.encode(&mut out).expect("encode");
    out
}

fn text_query(q: &str) -> v1::Query {
    v1::Query { query: Some(v1::query::Query::Text(q.into())) }
}

/// Writes the hand-made seed inputs the fuzzers start from (run once; `make fuzz` grows the
/// corpora from them): `cargo test --test it -- --ignored fuzz_replay::write_seed_inputs`.
#[test]
#[ignore = "writes fuzz/corpus seeds; run by hand"]
fn write_seed_inputs() {
    let filter = v1::Filter {
        must: vec![keyword("country", "France")],
        should: vec![v1::Condition {
            key: "year".into(),
            test: Some(v1::condition::Test::Range(v1::Range {
                gte: Some(1.0),
                lt: Some(5.5),
                ..Default::default()
            })),
        }],
        must_not: vec![v1::Condition {
            key: "tags.kind".into(),
            test: Some(v1::condition::Test::MatchAny(v1::ValueList {
                values: vec![
                    v1::Value { kind: Some(v1::value::Kind::Integer(3)) },
                    v1::Value { kind: Some(v1::value::Kind::Integer(4)) },
                ],
            })),
        }],
    };
    let c = || SEED_COLLECTION.to_string();
    let doc = |id: &str, text: &str| v1::Document {
        id: id.into(),
        text: text.into(),
        metadata: None,
        vector: Vec::new(),
    };
    let mut tokens = vec![4u8, 1, 3];
    for (s, e) in [(0u16, 6u16), (7, 9), (10, 14)] {
        tokens.extend(s.to_le_bytes());
        tokens.extend(e.to_le_bytes());
    }
    tokens.extend(b"Berlin is big.");
    let seeds: Vec<(&str, Vec<u8>)> = vec![
        ("load_csv", b"id,text,year,score\nde,Berlin is big,2024,0.5\n,\"Quoted, text\",x,1\n".to_vec()),
        ("load_jsonl", b"{\"id\":\"a\",\"text\":\"Berlin\",\"n\":1}\n\n{\"text\":5}\n".to_vec()),
        ("load_text", "Grüße aus Berlin.\n\nZweiter Absatz.".as_bytes().to_vec()),
        (
            "chunk_sentences",
            [&[3u8, 1][..], "Berlin is big. Pi is 3.14! 东京。Yes?\n\nNew".as_bytes()].concat(),
        ),
        ("chunk_tokens", tokens),
        ("filter", filter.encode_to_vec()),
        (
            "embedder_requests",
            with_rpc(0, v1::EmbedRequest { texts: vec!["hello world".into()], ..Default::default() }),
        ),
        (
            "embedder_requests",
            with_rpc(1, v1::CountTokensRequest { texts: vec!["a b".into()], ..Default::default() }),
        ),
        (
            "embedder_requests",
            with_rpc(2, v1::TokenizeRequest { texts: vec!["Grüße".into()], ..Default::default() }),
        ),
        ("embedder_requests", with_rpc(3, v1::ListModelsRequest::default())),
        ("embedder_requests", with_rpc(4, v1::ModelInfoRequest { name: "all-MiniLM-L6-v2".into() })),
        (
            "embedder_requests",
            with_rpc(
                5,
                v1::EmbedStreamRequest {
                    id: 7,
                    request: Some(v1::EmbedRequest { texts: vec!["x".into()], ..Default::default() }),
                },
            ),
        ),
        (
            "indexer_requests",
            with_rpc(
                0,
                v1::CreateCollectionRequest {
                    name: "other".into(),
                    model: "all-MiniLM-L6-v2".into(),
                    ..Default::default()
                },
            ),
        ),
        ("indexer_requests", with_rpc(1, v1::ListCollectionsRequest::default())),
        ("indexer_requests", with_rpc(2, v1::DescribeCollectionRequest { name: c() })),
        ("indexer_requests", with_rpc(3, v1::DropCollectionRequest { name: "missing".into() })),
        (
            "indexer_requests",
            with_rpc(
                4,
                v1::UpsertRequest { collection: c(), documents: vec![doc("x", "The capital of X is Y.")] },
            ),
        ),
        (
            "indexer_requests",
            with_rpc(5, v1::UpsertRequest { collection: c(), documents: vec![doc("", "no id")] }),
        ),
        ("indexer_requests", with_rpc(6, v1::DeleteRequest { collection: c(), ids: vec!["x".into()] })),
        ("indexer_requests", with_rpc(7, v1::DocumentStatusRequest { collection: c(), id: "France".into() })),
        (
            "indexer_requests",
            with_rpc(
                8,
                v1::SearchRequest {
                    collection: c(),
                    queries: vec![text_query("capital of France")],
                    k: 3,
                    filter: Some(filter.clone()),
                    ..Default::default()
                },
            ),
        ),
        (
            "indexer_requests",
            with_rpc(
                9,
                v1::ScrollRequest { collection: c(), limit: 5, filter: Some(filter), ..Default::default() },
            ),
        ),
        ("indexer_requests", with_rpc(10, v1::ReindexKeywordsRequest { collection: c(), keyword: None })),
        ("indexer_requests", with_rpc(11, v1::CreateSnapshotRequest { collection: c(), name: "s1".into() })),
        ("indexer_requests", with_rpc(12, v1::ListSnapshotsRequest { collection: c() })),
        (
            "indexer_requests",
            with_rpc(
                13,
                v1::RestoreSnapshotRequest {
                    collection: c(),
                    snapshot: "s1".into(),
                    target: "restored".into(),
                },
            ),
        ),
        (
            "indexer_requests",
            with_rpc(14, v1::DeleteSnapshotRequest { collection: c(), snapshot: "s1".into() }),
        ),
        (
            "generator_requests",
            with_rpc(
                0,
                v1::AskRequest {
                    question: "What is the capital of France?".into(),
                    collection: c(),
                    k: 2,
                    ..Default::default()
                },
            ),
        ),
        (
            "generator_requests",
            with_rpc(
                1,
                v1::GenerateRequest {
                    input: Some(v1::generate_request::Input::Prompt("Say hi".into())),
                    ..Default::default()
                },
            ),
        ),
        ("generator_requests", with_rpc(2, v1::ListBackendsRequest::default())),
    ];
    for (i, (target, data)) in seeds.iter().enumerate() {
        let dir = corpus(target);
        std::fs::create_dir_all(&dir).expect("corpus dir");
        std::fs::write(dir.join(format!("seed-{i:02}")), data).expect("write seed");
    }
    let pdfs = repo_root().join(".ragd/data/pdf");
    std::fs::create_dir_all(corpus("load_pdf")).expect("corpus dir");
    for name in ["03-invalid.pdf", "04-valid.pdf"] {
        std::fs::copy(pdfs.join(name), corpus("load_pdf").join(format!("seed-{name}"))).expect("copy pdf");
    }
}

//! The generator's openai backend against a real OpenAI-compatible server: llama.cpp's own
//! server (PyPI llama-cpp-python[server], installed by scripts/setup) serving the same GGUF.
//! Streaming chat and plain completions, stop sequences, the full Ask path, cancellation, and
//! the HTTP → gRPC error mapping (401 from a wrong key, connection refused).

use std::time::Duration;

use ragd_generator::GeneratorConfig;
use ragd_proto::v1;
use ragd_tests::llama_server::LlamaCppServer;
use ragd_tests::{TestGenerator, capitals_cluster, collect_ask, free_port, generate_text};
use tonic::Code;

const KEY: &str = "ragd-test-key";

fn openai_config(base_url: &str, key: Option<&str>, indexer: &str) -> GeneratorConfig {
    GeneratorConfig {
        indexer_url: indexer.into(),
        // Only the remote backend.
        llm_model: "".into(),
        openai_url: Some(base_url.into()),
        openai_api_key: key.map(str::to_string),
        openai_model: "smollm2".into(),
        openai_context: 2048,
        openai_concurrency: 2,
        ..GeneratorConfig::default()
    }
}

fn chat(text: &str, max_tokens: u32) -> v1::GenerateRequest {
    v1::GenerateRequest {
        input: Some(v1::generate_request::Input::Chat(v1::ChatMessages {
            messages: vec![v1::ChatMessage { role: "user".into(), content: text.into() }],
        })),
        sampling: Some(v1::Sampling { max_tokens, seed: Some(1), ..Default::default() }),
        backend: String::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_backend_streams_from_llama_cpp_server() {
    let server = LlamaCppServer::start(2048, 2, Some(KEY)).await;
    let generator =
        TestGenerator::start(openai_config(&server.base_url, Some(KEY), "http://127.0.0.1:9")).await;
    let mut c = generator.client().await;

    let backends = c.list_backends(v1::ListBackendsRequest {}).await.expect("backends").into_inner().backends;
    assert_eq!(backends.len(), 1);
    assert_eq!((backends[0].kind.as_str(), backends[0].name.as_str()), ("openai", "openai"));

    // Chat completions, streamed.
    let (text, done) = generate_text(&mut c, chat("What is the capital of France? Answer in one word.", 16))
        .await
        .expect("chat");
    assert!(text.contains("Paris"), "{text:?}");
    let usage = done.usage.expect("usage");
    assert!(usage.completion_tokens > 0 && usage.prompt_tokens > 0, "{usage:?}");
    assert!(done.timings.expect("timings").time_to_first_token_us > 0);
    assert_eq!(done.backend, "openai");

    // Plain completions, max_tokens honoured.
    let prompt = v1::GenerateRequest {
        input: Some(v1::generate_request::Input::Prompt("1, 2, 3, 4, 5, 6,".into())),
        sampling: Some(v1::Sampling { max_tokens: 6, ..Default::default() }),
        backend: "openai".into(),
    };
    let (text, done) = generate_text(&mut c, prompt).await.expect("completion");
    assert!(text.contains('7'), "{text:?}");
    assert_eq!(done.finish_reason, v1::FinishReason::Length as i32);
    assert_eq!(done.usage.expect("usage").completion_tokens, 6);

    // A stop sequence.
    let mut req = chat("Count from one to ten in words, separated by commas.", 48);
    req.sampling.as_mut().expect("sampling").stop = vec!["four".into()];
    let (text, _) = generate_text(&mut c, req).await.expect("stop");
    assert!(!text.contains("four") && !text.contains("five"), "{text:?}");

    // Cancellation: drop the stream; the backend stops the request.
    let mut long = v1::GenerateRequest {
        input: Some(v1::generate_request::Input::Prompt("1, 2, 3, 4, 5, 6, 7, 8, 9, 10,".into())),
        sampling: Some(v1::Sampling { max_tokens: 1000, ..Default::default() }),
        backend: String::new(),
    };
    let mut s = c.generate(long.clone()).await.expect("long").into_inner();
    s.message().await.expect("first").expect("some");
    drop(s);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let b = c
            .list_backends(v1::ListBackendsRequest {})
            .await
            .expect("backends")
            .into_inner()
            .backends
            .remove(0);
        if b.cancelled == 1 && b.active == 0 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "not cancelled: {b:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The server is free for the next request.
    long.sampling.as_mut().expect("sampling").max_tokens = 4;
    generate_text(&mut c, long).await.expect("after cancel");
    generator.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_errors_map_to_grpc_statuses() {
    let server = LlamaCppServer::start(512, 1, Some(KEY)).await;
    // Wrong key → 401 → UNAUTHENTICATED.
    let generator =
        TestGenerator::start(openai_config(&server.base_url, Some("wrong"), "http://127.0.0.1:9")).await;
    let mut c = generator.client().await;
    let e = generate_text(&mut c, chat("hello", 4)).await.expect_err("wrong key");
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    assert!(e.message().contains("401"), "{e:?}");
    // Over the configured context window → INVALID_ARGUMENT before any call.
    let e = generate_text(&mut c, chat(&"word ".repeat(6000), 4)).await.expect_err("too long");
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    generator.stop().await.expect("stop");

    // Nothing listening → UNAVAILABLE.
    let url = format!("http://127.0.0.1:{}/v1", free_port());
    let generator = TestGenerator::start(openai_config(&url, None, "http://127.0.0.1:9")).await;
    let mut c = generator.client().await;
    let e = generate_text(&mut c, chat("hello", 4)).await.expect_err("refused");
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    generator.stop().await.expect("stop");
}

/// The full Ask path with the remote backend: retrieval through the indexer, the grounded
/// prompt sent as chat messages, the server's answer streamed with citations.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ask_through_the_openai_backend() {
    let server = LlamaCppServer::start(2048, 2, None).await;
    let data = tempfile::tempdir().expect("tempdir");
    let (embedder, indexer) = capitals_cluster(data.path()).await;
    let generator = TestGenerator::start(openai_config(&server.base_url, None, &indexer.url)).await;
    let mut c = generator.client().await;
    let s = c
        .ask(v1::AskRequest {
            question: "What is the capital of Germany?".into(),
            collection: "capitals".into(),
            k: 4,
            sampling: Some(v1::Sampling { max_tokens: 48, seed: Some(7), ..Default::default() }),
            ..Default::default()
        })
        .await
        .expect("ask")
        .into_inner();
    let (retrieval, text, done) = collect_ask(s).await;
    assert_eq!(retrieval.passages[0].doc_id, "Germany");
    assert!(text.contains("Berlin"), "{text:?}");
    assert!(done.citations.iter().any(|c| c.doc_id == "Germany" && c.number == 1));
    assert_eq!(done.backend, "openai");
    generator.stop().await.expect("stop generator");
    indexer.stop().await.expect("stop indexer");
    embedder.stop().await.expect("stop embedder");
}

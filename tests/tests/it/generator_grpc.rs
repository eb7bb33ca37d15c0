//! The generator over real gRPC with a real embedder (MiniLM, ONNX Runtime), a real indexer (the
//! Qdrant engine in-process) and the real SmolLM2-135M-Instruct GGUF run by llama.cpp in-process,
//! on the npm country-json corpus: "The capital of {country} is {city}."

use std::time::Duration;

use ragd_generator::GeneratorConfig;
use ragd_proto::v1::{self, generator_client::GeneratorClient};
use ragd_tests::{TestGenerator, capitals_cluster, collect_ask, generate_text, generator_config};
use tonic::transport::Channel;
use tonic::{Code, Streaming};

fn ask(question: &str) -> v1::AskRequest {
    v1::AskRequest {
        question: question.into(),
        collection: "capitals".into(),
        k: 4,
        sampling: Some(v1::Sampling { max_tokens: 48, seed: Some(7), ..Default::default() }),
        ..Default::default()
    }
}

async fn backend_stats(c: &mut GeneratorClient<Channel>) -> v1::BackendInfo {
    c.list_backends(v1::ListBackendsRequest {}).await.expect("list backends").into_inner().backends.remove(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ask_streams_a_grounded_answer_with_citations() {
    let data = tempfile::tempdir().expect("tempdir");
    let (embedder, indexer) = capitals_cluster(data.path()).await;
    let generator = TestGenerator::start(generator_config(&indexer.url)).await;
    let mut c = generator.client().await;

    let info = backend_stats(&mut c).await;
    assert_eq!((info.kind.as_str(), info.default), ("embedded", true));
    assert!(info.model.to_lowercase().contains("smollm2"), "{info:?}");

    let (retrieval, text, done) =
        collect_ask(c.ask(ask("What is the capital of Germany?")).await.expect("ask").into_inner()).await;
    // Retrieval: Germany's document first, numbered [1].
    assert!(!retrieval.no_context);
    assert_eq!(retrieval.passages.len(), 4);
    assert_eq!(retrieval.passages[0].doc_id, "Germany");
    assert_eq!(retrieval.passages[0].number, 1);
    assert!(retrieval.passages.windows(2).all(|w| w[0].score >= w[1].score));
    assert!(retrieval.passages[0].metadata.is_some());
    // The answer is grounded in it.
    assert!(text.contains("Berlin"), "answer {text:?} does not mention Berlin");
    let citation = done.citations.iter().find(|c| c.doc_id == "Germany").expect("Germany cited");
    assert_eq!(citation.number, 1);
    let finish = v1::FinishReason::try_from(done.finish_reason).expect("finish reason");
    assert!(matches!(finish, v1::FinishReason::Stop | v1::FinishReason::Length), "{finish:?}");
    let usage = done.usage.expect("usage");
    assert!(usage.prompt_tokens > 50 && usage.completion_tokens > 0, "{usage:?}");
    assert!(usage.completion_tokens <= 48);
    let t = done.timings.expect("timings");
    assert!(t.embed_us > 0 && t.search_us > 0 && t.prompt_us > 0, "{t:?}");
    assert!(t.time_to_first_token_us > t.embed_us + t.search_us, "{t:?}");
    assert!(t.total_us >= t.time_to_first_token_us + t.decode_us, "{t:?}");
    assert!(usage.completion_tokens < 2 || t.decode_tokens_per_second > 0.0, "{t:?}");
    assert_eq!((done.backend.as_str(), done.model.as_str()), (info.name.as_str(), info.model.as_str()));

    // Greedy decoding is reproducible.
    let (_, again, _) =
        collect_ask(c.ask(ask("What is the capital of Germany?")).await.expect("ask").into_inner()).await;
    assert_eq!(again, text);

    // Sampling with a seed is reproducible too (same seed, prompt and settings → same tokens).
    let sampled = |seed| v1::GenerateRequest {
        input: Some(v1::generate_request::Input::Chat(v1::ChatMessages {
            messages: vec![v1::ChatMessage { role: "user".into(), content: "Tell me about the sea.".into() }],
        })),
        sampling: Some(v1::Sampling {
            temperature: 0.9,
            top_p: 0.95,
            max_tokens: 32,
            seed: Some(seed),
            ..Default::default()
        }),
        backend: String::new(),
    };
    let mut texts = Vec::new();
    for seed in [42, 42] {
        let (text, _) = generate_text(&mut c, sampled(seed)).await.expect("generate");
        assert!(!text.is_empty());
        texts.push(text);
    }
    assert_eq!(texts[0], texts[1]);

    // A stop sequence cuts the answer before it and says so.
    let mut stopped = ask("What is the capital of Germany?");
    stopped.sampling.as_mut().expect("sampling").stop = vec!["Berlin".into()];
    let (_, cut, done) = collect_ask(c.ask(stopped).await.expect("ask").into_inner()).await;
    assert_eq!(cut, text[..text.find("Berlin").expect("Berlin")]);
    assert_eq!(done.finish_reason, v1::FinishReason::StopSequence as i32);

    // A filter narrows the retrieval (France only) and the answer follows it.
    let mut filtered = ask("What is the capital?");
    filtered.filter = Some(v1::Filter {
        must: vec![v1::Condition {
            key: "country".into(),
            test: Some(v1::condition::Test::Match(v1::Value {
                kind: Some(v1::value::Kind::Keyword("France".into())),
            })),
        }],
        ..Default::default()
    });
    let (retrieval, text, _) = collect_ask(c.ask(filtered).await.expect("ask").into_inner()).await;
    assert_eq!(retrieval.passages.iter().map(|p| p.doc_id.as_str()).collect::<Vec<_>>(), ["France"]);
    assert!(text.contains("Paris"), "answer {text:?} does not mention Paris");

    generator.stop().await.expect("stop generator");
    indexer.stop().await.expect("stop indexer");
    embedder.stop().await.expect("stop embedder");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn below_threshold_takes_the_no_context_path() {
    let data = tempfile::tempdir().expect("tempdir");
    let (embedder, indexer) = capitals_cluster(data.path()).await;
    let config = generator_config(&indexer.url);
    let refusal = config.no_context_answer.clone();
    let generator = TestGenerator::start(config).await;
    let mut c = generator.client().await;
    let question = "How does a diesel engine ignite its fuel?";

    // Refuse (the default): no model call, the configured answer, no citations.
    let mut req = ask(question);
    req.score_threshold = Some(0.8);
    let (retrieval, text, done) = collect_ask(c.ask(req.clone()).await.expect("ask").into_inner()).await;
    assert!(retrieval.no_context && retrieval.passages.is_empty());
    assert_eq!(text, refusal);
    assert_eq!(done.finish_reason, v1::FinishReason::NoContext as i32);
    assert!(done.citations.is_empty());
    assert_eq!(done.usage.expect("usage").completion_tokens, 0);

    // Answer: the model is called with the no-context prompt, still no citations.
    req.no_context = v1::NoContext::Answer as i32;
    let (retrieval, text, done) = collect_ask(c.ask(req).await.expect("ask").into_inner()).await;
    assert!(retrieval.no_context);
    assert!(!text.is_empty());
    assert!(done.citations.is_empty());
    assert!(done.usage.expect("usage").completion_tokens > 0);

    // The same question without a threshold does retrieve (the threshold is what emptied it).
    let (retrieval, _, _) = collect_ask(c.ask(ask(question)).await.expect("ask").into_inner()).await;
    assert!(!retrieval.no_context && retrieval.passages.len() == 4);

    generator.stop().await.expect("stop generator");
    indexer.stop().await.expect("stop indexer");
    embedder.stop().await.expect("stop embedder");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_inputs_get_clear_statuses() {
    let data = tempfile::tempdir().expect("tempdir");
    let (embedder, indexer) = capitals_cluster(data.path()).await;
    let generator = TestGenerator::start(generator_config(&indexer.url)).await;
    let mut c = generator.client().await;
    let code = |r: Result<tonic::Response<Streaming<v1::AskResponse>>, tonic::Status>| match r {
        Ok(_) => panic!("expected an error"),
        Err(s) => (s.code(), s.message().to_string()),
    };

    let (k, m) = code(c.ask(ask("   ")).await);
    assert_eq!(k, Code::InvalidArgument);
    assert!(m.contains("question"), "{m}");

    let mut r = ask("What is the capital of Germany?");
    r.sampling.as_mut().expect("sampling").max_tokens = 5000;
    let (k, m) = code(c.ask(r).await);
    assert_eq!(k, Code::InvalidArgument);
    assert!(m.contains("max_tokens"), "{m}");

    let mut r = ask("What is the capital of Germany?");
    r.collection = "nope".into();
    let (k, m) = code(c.ask(r).await);
    assert_eq!(k, Code::NotFound);
    assert!(m.contains("nope"), "{m}");

    let mut r = ask("What is the capital of Germany?");
    r.backend = "gpt-17".into();
    assert_eq!(code(c.ask(r).await).0, Code::NotFound);

    let mut r = ask("What is the capital of Germany?");
    r.sampling.as_mut().expect("sampling").temperature = -1.0;
    assert_eq!(code(c.ask(r).await).0, Code::InvalidArgument);

    let mut r = ask("What is the capital of Germany?");
    r.k = 10_000;
    assert_eq!(code(c.ask(r).await).0, Code::InvalidArgument);

    let mut r = ask("What is the capital of Germany?");
    r.filter =
        Some(v1::Filter { must: vec![v1::Condition { key: "".into(), test: None }], ..Default::default() });
    assert_eq!(code(c.ask(r).await).0, Code::InvalidArgument);

    let e = c.generate(v1::GenerateRequest::default()).await.expect_err("no input");
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = c
        .generate(v1::GenerateRequest {
            input: Some(v1::generate_request::Input::Chat(v1::ChatMessages {
                messages: vec![v1::ChatMessage { role: "wizard".into(), content: "hi".into() }],
            })),
            ..Default::default()
        })
        .await
        .expect_err("bad role");
    assert_eq!(e.code(), Code::InvalidArgument);
    // A prompt longer than the context window.
    let e = c
        .generate(v1::GenerateRequest {
            input: Some(v1::generate_request::Input::Prompt("word ".repeat(3000))),
            ..Default::default()
        })
        .await
        .expect_err("too long");
    assert_eq!(e.code(), Code::InvalidArgument);

    generator.stop().await.expect("stop generator");
    indexer.stop().await.expect("stop indexer");
    embedder.stop().await.expect("stop embedder");
}

/// A small context window: the lowest-scored chunks are dropped so prompt + max_tokens fit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_budget_drops_the_lowest_scored_chunks() {
    let data = tempfile::tempdir().expect("tempdir");
    let (embedder, indexer) = capitals_cluster(data.path()).await;
    let generator =
        TestGenerator::start(GeneratorConfig { llm_context: 200, ..generator_config(&indexer.url) }).await;
    let mut c = generator.client().await;
    let mut req = ask("What is the capital of Germany?");
    req.k = 12;
    req.sampling.as_mut().expect("sampling").max_tokens = 32;
    let (retrieval, _, done) = collect_ask(c.ask(req).await.expect("ask").into_inner()).await;
    let used: Vec<u32> = retrieval.passages.iter().map(|p| p.number).collect();
    let kept = used.iter().filter(|&&n| n > 0).count();
    assert!((1..12).contains(&kept), "numbers {used:?}");
    // Kept chunks are the best-scored ones, numbered in order.
    assert_eq!(used[..kept], (1..=kept as u32).collect::<Vec<_>>()[..], "{used:?}");
    assert!(used[kept..].iter().all(|&n| n == 0), "{used:?}");
    assert_eq!(done.citations.len(), kept);
    let usage = done.usage.expect("usage");
    assert!(usage.prompt_tokens + 32 <= 200, "{usage:?}");
    generator.stop().await.expect("stop generator");
    indexer.stop().await.expect("stop indexer");
    embedder.stop().await.expect("stop embedder");
}

/// A raw prompt the model keeps completing for a long time (it counts on).
fn long_story() -> v1::GenerateRequest {
    v1::GenerateRequest {
        input: Some(v1::generate_request::Input::Prompt("1, 2, 3, 4, 5, 6, 7, 8, 9, 10,".into())),
        sampling: Some(v1::Sampling { max_tokens: 1000, ..Default::default() }),
        backend: String::new(),
    }
}

/// One generation slot, no queue: a second request while the first streams is
/// RESOURCE_EXHAUSTED with a retry hint; dropping the first stream cancels its generation in the
/// engine (counted there) and the slot takes new work; a deadline ends a stream with
/// DEADLINE_EXCEEDED.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancellation_frees_the_slot_overload_and_deadlines() {
    let metrics_addr = std::net::SocketAddr::from(([127, 0, 0, 1], ragd_tests::free_port()));
    let generator = TestGenerator::start(GeneratorConfig {
        llm_parallel: 1,
        generation_queue: 0,
        llm_context: 1536,
        metrics_addr: Some(metrics_addr),
        ..generator_config("http://127.0.0.1:9")
    })
    .await;
    let mut c = generator.client().await;
    let mut first = c.generate(long_story()).await.expect("first").into_inner();
    let m = first.message().await.expect("first delta").expect("some");
    assert!(matches!(m.event, Some(v1::generate_response::Event::Delta(_))));
    assert_eq!(backend_stats(&mut c).await.active, 1);

    let e = c.generate(long_story()).await.expect_err("second while the first runs");
    assert_eq!(e.code(), Code::ResourceExhausted);
    assert!(ragd_core::status::retry_after(&e).is_some());

    drop(first);
    // The engine notices the dropped stream at its next step and frees the sequence.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let b = backend_stats(&mut c).await;
        if b.cancelled == 1 && b.active == 0 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "cancelled generation still holds the slot: {b:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut short = long_story();
    short.sampling.as_mut().expect("sampling").max_tokens = 8;
    let (_, done) = generate_text(&mut c, short).await.expect("slot is free again");
    assert_eq!(done.usage.expect("usage").completion_tokens, 8);
    assert_eq!(done.finish_reason, v1::FinishReason::Length as i32);

    // A deadline shorter than the generation ends the stream with DEADLINE_EXCEEDED.
    let mut req = tonic::Request::new(long_story());
    req.set_timeout(Duration::from_millis(1500));
    let result = async {
        let mut s = c.generate(req).await?.into_inner();
        while s.message().await?.is_some() {}
        Ok::<(), tonic::Status>(())
    }
    .await;
    let e = result.expect_err("deadline");
    assert_eq!(e.code(), Code::DeadlineExceeded, "{e:?}");

    // The shared RPC layer counted each Generate by its final status: the overload from the
    // headers (trailers-only), the rest from the end of their streams. The dropped stream and the
    // expired one end as CANCELLED or DEADLINE_EXCEEDED, depending on whether the client's reset
    // or the server's deadline came first.
    let count = |body: &str, code: &str| {
        let series = format!(
            "ragd_generator_rpc_requests_total{{method=\"/ragd.v1.Generator/Generate\",code=\"{code}\"}}"
        );
        ragd_tests::metric_value(body, &series).unwrap_or(0.0)
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let body = ragd_tests::scrape(metrics_addr).await;
        let ended = count(&body, "Cancelled") + count(&body, "DeadlineExceeded");
        if count(&body, "ResourceExhausted") == 1.0 && count(&body, "Ok") == 1.0 && ended == 2.0 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "Generate counts never matched:\n{body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    generator.stop().await.expect("stop generator");
}

/// Dropping the embedded backend stops its engine thread before the drop returns: a generation
/// still running ends with UNAVAILABLE (shutting down) and its stream is closed, instead of
/// decoding on. (A process that exited while the engine was inside `llama_decode` ran ggml's and
/// ONNX Runtime's C++ static destructors under it: `ragd up` ended with SIGSEGV now and then.)
#[test]
fn dropping_the_embedded_backend_joins_its_engine() {
    use ragd_generator::backend::{Event, GenerationRequest, Input, Sampling};
    use tokio::sync::mpsc::error::TryRecvError;

    let config =
        GeneratorConfig { llm_parallel: 1, llm_context: 1536, ..generator_config("http://127.0.0.1:9") };
    let mut backends = ragd_generator::load_backends(&config).expect("load the GGUF");
    assert_eq!(backends.len(), 1, "only the embedded backend is configured");
    let llama = backends.remove(0);
    let mut events = llama
        .generate(GenerationRequest {
            input: Input::Text("1, 2, 3, 4, 5, 6, 7, 8, 9, 10,".into()),
            sampling: Sampling { max_tokens: 1000, ..Default::default() },
            deadline: None,
        })
        .expect("generate");
    match events.blocking_recv() {
        Some(Ok(Event::Delta(_))) => {} // the engine is decoding now
        other => panic!("expected a first delta, got {other:?}"),
    }
    drop(llama);
    // The engine thread has returned: everything it sent is queued and the channel is closed.
    let mut last = None;
    loop {
        match events.try_recv() {
            Ok(event) => last = Some(event),
            Err(TryRecvError::Disconnected) => break,
            Err(TryRecvError::Empty) => panic!("the engine still runs after its backend was dropped"),
        }
    }
    match last {
        Some(Err(e)) => assert_eq!(tonic::Status::from(e).code(), Code::Unavailable),
        other => panic!("expected the generation to end with UNAVAILABLE, got {other:?}"),
    }
}

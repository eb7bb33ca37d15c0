//! Thin tonic handlers over [`Embedder`]: read the deadline, convert the request, call the
//! domain, map the error (one exhaustive `From<EmbedError> for Status`). Requests are counted
//! and timed by the RPC layer every ragd server shares (`ragd_core::metrics::RpcMetrics`).

use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use futures::{Stream, StreamExt};
use ragd_proto::v1::{self, embedder_server};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::instrument;

use crate::error::EmbedError;
use crate::manifest::ModelSpec;
use crate::model::InputKind;
use crate::service::{Admission, EmbedInput, EmbedOutput, Embedder};

/// The `ragd.v1.Embedder` gRPC service. Answers UNAVAILABLE until the models are loaded.
#[derive(Debug, Clone)]
pub struct EmbedderGrpc {
    embedder: Arc<OnceLock<Arc<Embedder>>>,
    stream_window: usize,
}

impl EmbedderGrpc {
    pub fn new(embedder: Arc<OnceLock<Arc<Embedder>>>, stream_window: usize) -> Self {
        Self { embedder, stream_window }
    }

    fn ready(&self) -> Result<Arc<Embedder>, Status> {
        self.embedder.get().cloned().ok_or_else(|| EmbedError::NotReady.into())
    }
}

/// The caller's deadline, answered slightly early (`ragd_core::status::deadline_margin`).
fn deadline<T>(request: &Request<T>) -> Option<Instant> {
    ragd_core::status::request_deadline(request.metadata())
}

fn kind(k: i32) -> InputKind {
    match v1::InputKind::try_from(k) {
        Ok(v1::InputKind::Query) => InputKind::Query,
        Ok(v1::InputKind::Passage) => InputKind::Passage,
        Ok(v1::InputKind::Unspecified) | Err(_) => InputKind::Unspecified,
    }
}

fn input(r: v1::EmbedRequest) -> EmbedInput {
    EmbedInput { kind: kind(r.kind), texts: r.texts, model: r.model, normalize: r.normalize }
}

fn response(out: EmbedOutput) -> v1::EmbedResponse {
    v1::EmbedResponse {
        model: out.model,
        dim: out.dim as u32,
        embeddings: out
            .embeddings
            .into_iter()
            .map(|e| v1::Embedding { values: e.values, tokens: e.tokens as u32, truncated: e.truncated })
            .collect(),
        stats: Some(v1::EmbedStats {
            queue_micros: out.stats.queue.as_micros() as u64,
            inference_micros: out.stats.inference.as_micros() as u64,
            batches: out.stats.batches,
            max_batch_texts: out.stats.max_batch_texts,
            tokens: out.stats.tokens,
        }),
    }
}

fn descriptor(spec: &ModelSpec, is_default: bool, device: &str) -> v1::ModelDescriptor {
    v1::ModelDescriptor {
        name: spec.name.clone(),
        dim: spec.dim as u32,
        max_seq_len: spec.max_seq_len as u32,
        pooling: spec.pooling.as_str().to_string(),
        normalize: spec.normalize,
        query_prefix: spec.query_prefix.clone(),
        passage_prefix: spec.passage_prefix.clone(),
        is_default,
        device: device.to_string(),
        precision: spec.precision.as_str().to_string(),
    }
}

/// Prefixes a status message with the stream request it belongs to, keeping code and details.
fn in_stream_item(id: u64, s: Status) -> Status {
    ragd_core::status::with_context(&format!("stream request {id}"), &s)
}

type EmbedStream = Pin<Box<dyn Stream<Item = Result<v1::EmbedStreamResponse, Status>> + Send>>;

#[tonic::async_trait]
impl embedder_server::Embedder for EmbedderGrpc {
    #[instrument(skip_all, fields(texts = request.get_ref().texts.len(), model = %request.get_ref().model))]
    async fn embed(&self, request: Request<v1::EmbedRequest>) -> Result<Response<v1::EmbedResponse>, Status> {
        let deadline = deadline(&request);
        let out = self.ready()?.embed(input(request.into_inner()), deadline, Admission::Reject).await?;
        Ok(Response::new(response(out)))
    }

    type EmbedStreamStream = EmbedStream;

    #[instrument(skip_all)]
    async fn embed_stream(
        &self,
        request: Request<Streaming<v1::EmbedStreamRequest>>,
    ) -> Result<Response<Self::EmbedStreamStream>, Status> {
        let embedder = self.ready()?;
        let deadline = deadline(&request);
        let window = self.stream_window;
        let (tx, rx) = tokio::sync::mpsc::channel(window);
        let input_stream = request.into_inner();
        tokio::spawn(async move {
            // `buffered` keeps at most `window` requests in flight, in order; while the window
            // (or the response channel) is full, the input is not read and HTTP/2 flow control
            // slows the client down.
            let results = input_stream
                .map(|item| {
                    let embedder = embedder.clone();
                    async move {
                        let item = item.map_err(ragd_core::status::inbound)?;
                        let id = item.id;
                        let request = item.request.ok_or_else(|| {
                            in_stream_item(id, ragd_core::status::invalid_argument("request", "missing"))
                        })?;
                        let out = embedder
                            .embed(input(request), deadline, Admission::Wait)
                            .await
                            .map_err(|e| in_stream_item(id, e.into()))?;
                        Ok(v1::EmbedStreamResponse { id, response: Some(response(out)) })
                    }
                })
                .buffered(window);
            futures::pin_mut!(results);
            // The first error ends the stream; so does a client that went away.
            while let Some(r) = results.next().await {
                let failed = r.is_err();
                if tx.send(r).await.is_err() || failed {
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    #[instrument(skip_all, fields(texts = request.get_ref().texts.len()))]
    async fn count_tokens(
        &self,
        request: Request<v1::CountTokensRequest>,
    ) -> Result<Response<v1::CountTokensResponse>, Status> {
        let r = request.into_inner();
        let counts = self.ready()?.count_tokens(r.texts, &r.model, kind(r.kind)).await?;
        let max = counts.max_seq_len;
        Ok(Response::new(v1::CountTokensResponse {
            truncated: counts.tokens.iter().map(|&n| n > max).collect(),
            tokens: counts.tokens.into_iter().map(|n| n as u32).collect(),
            max_seq_len: max as u32,
        }))
    }

    #[instrument(skip_all, fields(texts = request.get_ref().texts.len()))]
    async fn tokenize(
        &self,
        request: Request<v1::TokenizeRequest>,
    ) -> Result<Response<v1::TokenizeResponse>, Status> {
        let r = request.into_inner();
        let t = self.ready()?.tokenize(r.texts, &r.model).await?;
        Ok(Response::new(v1::TokenizeResponse {
            texts: t
                .offsets
                .into_iter()
                .map(|o| v1::TokenOffsets {
                    starts: o.iter().map(|p| p.0 as u32).collect(),
                    ends: o.iter().map(|p| p.1 as u32).collect(),
                })
                .collect(),
            max_seq_len: t.max_seq_len as u32,
            special_tokens: t.special_tokens as u32,
        }))
    }

    async fn list_models(
        &self,
        _request: Request<v1::ListModelsRequest>,
    ) -> Result<Response<v1::ListModelsResponse>, Status> {
        let e = self.ready()?;
        let device = e.device().to_string();
        Ok(Response::new(v1::ListModelsResponse {
            models: e.models().map(|(spec, default)| descriptor(spec, default, &device)).collect(),
        }))
    }

    async fn model_info(
        &self,
        request: Request<v1::ModelInfoRequest>,
    ) -> Result<Response<v1::ModelInfoResponse>, Status> {
        let e = self.ready()?;
        let (spec, default) = e.model(&request.get_ref().name)?;
        Ok(Response::new(v1::ModelInfoResponse {
            model: Some(descriptor(spec, default, &e.device().to_string())),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ragd_proto::v1::embedder_server::Embedder as _;

    #[tokio::test]
    async fn every_rpc_is_unavailable_until_models_are_loaded() {
        let grpc = EmbedderGrpc::new(Arc::new(OnceLock::new()), 4);
        let embed = grpc
            .embed(Request::new(v1::EmbedRequest { texts: vec!["x".into()], ..Default::default() }))
            .await;
        assert_eq!(embed.expect_err("not ready").code(), tonic::Code::Unavailable);
        let list = grpc.list_models(Request::new(v1::ListModelsRequest {})).await;
        assert_eq!(list.expect_err("not ready").code(), tonic::Code::Unavailable);
        let info = grpc.model_info(Request::new(v1::ModelInfoRequest::default())).await;
        assert_eq!(info.expect_err("not ready").code(), tonic::Code::Unavailable);
        let count = grpc.count_tokens(Request::new(v1::CountTokensRequest::default())).await;
        assert_eq!(count.expect_err("not ready").code(), tonic::Code::Unavailable);
    }
}

//! Thin tonic handlers over [`Generator`]: convert, call, map the error, stream.

use std::pin::Pin;
use std::sync::{Arc, OnceLock};

use futures::Stream;
use ragd_proto::v1::{self, generator_server};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use tracing::instrument;

use crate::backend::{ChatMessage, FinishReason, Input};
use crate::config::NoContextPolicy;
use crate::error::GenError;
use crate::service::{AskEvent, AskIn, AskStream, DoneOut, Generator, SamplingIn, Timings};

type EventStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// The `ragd.v1.Generator` service; UNAVAILABLE until the models are loaded.
#[derive(Debug, Clone)]
pub struct GeneratorGrpc {
    generator: Arc<OnceLock<Arc<Generator>>>,
}

impl GeneratorGrpc {
    pub fn new(generator: Arc<OnceLock<Arc<Generator>>>) -> Self {
        Self { generator }
    }

    fn ready(&self) -> Result<Arc<Generator>, Status> {
        self.generator
            .get()
            .cloned()
            .ok_or_else(|| Status::unavailable("generator is not ready: loading models"))
    }
}

/// Maps the domain stream to protos; ends after the Done event or the first error.
fn stream<T: Send + 'static>(events: AskStream, map: fn(AskEvent) -> Option<T>) -> EventStream<T> {
    Box::pin(ReceiverStream::new(events).filter_map(move |e| match e {
        Ok(event) => map(event).map(Ok),
        Err(e) => Some(Err(Status::from(e))),
    }))
}

fn sampling(s: Option<v1::Sampling>) -> SamplingIn {
    let s = s.unwrap_or_default();
    SamplingIn {
        temperature: s.temperature,
        top_p: s.top_p,
        max_tokens: s.max_tokens as usize,
        stop: s.stop,
        seed: s.seed,
    }
}

fn finish_reason(f: Option<FinishReason>) -> v1::FinishReason {
    match f {
        None => v1::FinishReason::NoContext,
        Some(FinishReason::Stop) => v1::FinishReason::Stop,
        Some(FinishReason::Length) => v1::FinishReason::Length,
        Some(FinishReason::StopSequence) => v1::FinishReason::StopSequence,
        Some(FinishReason::ContextWindow) => v1::FinishReason::ContextWindow,
    }
}

fn timings(t: &Timings) -> v1::Timings {
    let us = |d: std::time::Duration| d.as_micros() as u64;
    v1::Timings {
        embed_us: us(t.embed),
        search_us: us(t.search),
        prompt_us: us(t.prompt),
        time_to_first_token_us: us(t.time_to_first_token),
        queue_us: us(t.queue),
        decode_us: us(t.decode),
        decode_tokens_per_second: t.decode_tokens_per_second,
        total_us: us(t.total),
    }
}

fn done(d: DoneOut) -> v1::Done {
    v1::Done {
        finish_reason: finish_reason(d.finish).into(),
        citations: d
            .citations
            .into_iter()
            .map(|c| v1::Citation { number: c.number, doc_id: c.doc_id, chunk: c.chunk, cited: c.cited })
            .collect(),
        usage: Some(v1::Usage {
            prompt_tokens: d.prompt_tokens as u32,
            completion_tokens: d.completion_tokens as u32,
        }),
        timings: Some(timings(&d.timings)),
        backend: d.backend,
        model: d.model,
    }
}

fn ask_event(e: AskEvent) -> Option<v1::AskResponse> {
    use v1::ask_response::Event;
    let event = match e {
        AskEvent::Retrieval { passages, no_context } => Event::Retrieval(v1::Retrieval {
            passages: passages
                .into_iter()
                .map(|p| v1::Passage {
                    number: p.number,
                    doc_id: p.chunk.doc_id,
                    chunk: p.chunk.chunk,
                    score: p.chunk.score,
                    text: p.chunk.text,
                    metadata: p.metadata,
                })
                .collect(),
            no_context,
        }),
        AskEvent::Delta(t) => Event::Delta(t),
        AskEvent::Done(d) => Event::Done(done(d)),
    };
    Some(v1::AskResponse { event: Some(event) })
}

fn generate_event(e: AskEvent) -> Option<v1::GenerateResponse> {
    use v1::generate_response::Event;
    let event = match e {
        AskEvent::Retrieval { .. } => return None,
        AskEvent::Delta(t) => Event::Delta(t),
        AskEvent::Done(d) => Event::Done(done(d)),
    };
    Some(v1::GenerateResponse { event: Some(event) })
}

#[tonic::async_trait]
impl generator_server::Generator for GeneratorGrpc {
    type AskStream = EventStream<v1::AskResponse>;
    type GenerateStream = EventStream<v1::GenerateResponse>;

    #[instrument(skip_all, fields(collection))]
    async fn ask(&self, request: Request<v1::AskRequest>) -> Result<Response<Self::AskStream>, Status> {
        // The layer checked the generate grant; retrieval needs read on the collection too.
        let access = ragd_core::auth::access(&request)?;
        ragd_core::auth::require_collection(
            &access,
            &request.get_ref().collection,
            ragd_core::auth::Role::Read,
        )?;
        let generator = self.ready()?;
        let deadline = ragd_core::status::request_deadline(request.metadata());
        let r = request.into_inner();
        tracing::Span::current().record("collection", r.collection.as_str());
        let no_context = match v1::NoContext::try_from(r.no_context) {
            Ok(v1::NoContext::Default) => None,
            Ok(v1::NoContext::Refuse) => Some(NoContextPolicy::Refuse),
            Ok(v1::NoContext::Answer) => Some(NoContextPolicy::Answer),
            Err(_) => {
                return Err(GenError::invalid("no_context", format!("unknown value {}", r.no_context)).into());
            }
        };
        let req = AskIn {
            question: r.question,
            collection: r.collection,
            k: r.k as usize,
            score_threshold: r.score_threshold,
            filter: r.filter,
            sampling: sampling(r.sampling),
            backend: r.backend,
            no_context,
            mode: r.mode,
            fusion: r.fusion,
            prefetch: r.prefetch,
            mmr: r.mmr,
            rerank: r.rerank,
        };
        let events = generator.ask(req, deadline).await?;
        Ok(Response::new(stream(events, ask_event)))
    }

    #[instrument(skip_all)]
    async fn generate(
        &self,
        request: Request<v1::GenerateRequest>,
    ) -> Result<Response<Self::GenerateStream>, Status> {
        let generator = self.ready()?;
        let deadline = ragd_core::status::request_deadline(request.metadata());
        let r = request.into_inner();
        let input = match r.input {
            Some(v1::generate_request::Input::Prompt(p)) => Input::Text(p),
            Some(v1::generate_request::Input::Chat(c)) => Input::Chat(
                c.messages.into_iter().map(|m| ChatMessage { role: m.role, content: m.content }).collect(),
            ),
            None => return Err(GenError::invalid("input", "set prompt or chat").into()),
        };
        let events = generator.generate(input, sampling(r.sampling), &r.backend, deadline).await?;
        Ok(Response::new(stream(events, generate_event)))
    }

    async fn list_backends(
        &self,
        _request: Request<v1::ListBackendsRequest>,
    ) -> Result<Response<v1::ListBackendsResponse>, Status> {
        let generator = self.ready()?;
        let backends = generator
            .backends()
            .map(|(b, stats, queued, default)| v1::BackendInfo {
                name: b.name.clone(),
                kind: b.kind.to_string(),
                model: b.model.clone(),
                context_window: b.context_window as u32,
                max_concurrent: b.max_concurrent as u32,
                default,
                active: stats.active() as u32,
                queued: queued as u32,
                cancelled: stats.cancelled(),
            })
            .collect();
        Ok(Response::new(v1::ListBackendsResponse { backends }))
    }
}

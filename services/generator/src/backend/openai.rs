//! The remote backend: any OpenAI-compatible server (vLLM, TGI, Ollama, llama.cpp's server)
//! through streaming completions over server-sent events: `/chat/completions` for chat input
//! (the server applies the model's chat template), `/completions` for a plain prompt.
//!
//! HTTP failures map to gRPC codes: 400 → INVALID_ARGUMENT, 401 → UNAUTHENTICATED,
//! 403 → PERMISSION_DENIED, 404 → NOT_FOUND, 408/504 → DEADLINE_EXCEEDED, 429 →
//! RESOURCE_EXHAUSTED (with the server's Retry-After), other 5xx and connection errors →
//! UNAVAILABLE. Token counts for the prompt budget use the model's `tokenizer.json` when one is
//! configured, else an estimate (one token per 3 bytes, rounded up — conservative for English).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tonic::{Code, Status};

use super::text::StopScanner;
use super::{
    BackendInfo, BackendStats, Event, Events, Finish, FinishReason, GenerationRequest, Input, LanguageModel,
};
use crate::error::GenError;

#[derive(Debug, Clone)]
pub struct OpenAiSettings {
    pub name: String,
    /// e.g. `http://127.0.0.1:8000/v1`.
    pub base_url: String,
    pub api_key: Option<String>,
    /// Model name sent in requests.
    pub model: String,
    pub context_window: usize,
    pub max_concurrent: usize,
    /// The model's Hugging Face `tokenizer.json`, for exact prompt budgets.
    pub tokenizer: Option<PathBuf>,
    pub connect_timeout: Duration,
}

#[derive(Debug)]
pub struct OpenAiBackend {
    info: BackendInfo,
    settings: OpenAiSettings,
    http: reqwest::Client,
    tokenizer: Option<tokenizers::Tokenizer>,
    stats: Arc<BackendStats>,
}

impl OpenAiBackend {
    pub fn new(settings: OpenAiSettings) -> Result<Self, GenError> {
        let http = reqwest::Client::builder()
            .connect_timeout(settings.connect_timeout)
            .tcp_nodelay(true)
            .build()
            .map_err(|e| GenError::Model(format!("http client: {e}")))?;
        let tokenizer = match &settings.tokenizer {
            Some(p) => Some(
                tokenizers::Tokenizer::from_file(p)
                    .map_err(|e| GenError::Model(format!("tokenizer {}: {e}", p.display())))?,
            ),
            None => None,
        };
        let info = BackendInfo {
            name: settings.name.clone(),
            kind: "openai",
            model: settings.model.clone(),
            context_window: settings.context_window,
            max_concurrent: settings.max_concurrent,
        };
        Ok(Self { info, settings, http, tokenizer, stats: Arc::default() })
    }

    fn url(&self, path: &str) -> String {
        format!("{}/{path}", self.settings.base_url.trim_end_matches('/'))
    }
}

impl LanguageModel for OpenAiBackend {
    fn info(&self) -> &BackendInfo {
        &self.info
    }

    fn stats(&self) -> &BackendStats {
        &self.stats
    }

    fn count_tokens(&self, input: &Input) -> Result<usize, GenError> {
        match input {
            Input::Text(t) => self.count_text_tokens(t),
            // Content plus the chat template's markers (≈ 4 tokens a message, 3 to prime the answer).
            Input::Chat(messages) => messages
                .iter()
                .map(|m| Ok(self.count_text_tokens(&m.content)? + self.count_text_tokens(&m.role)? + 4))
                .sum::<Result<usize, GenError>>()
                .map(|n| n + 3),
        }
    }

    fn count_text_tokens(&self, text: &str) -> Result<usize, GenError> {
        match &self.tokenizer {
            Some(t) => {
                t.encode(text, false).map(|e| e.len()).map_err(|e| GenError::Model(format!("tokenizer: {e}")))
            }
            None => Ok(text.len().div_ceil(3)),
        }
    }

    fn generate(&self, request: GenerationRequest) -> Result<Events, GenError> {
        let prompt_tokens = self.count_tokens(&request.input)?;
        super::check_fits(prompt_tokens, request.sampling.max_tokens, self.info.context_window)?;
        let s = &request.sampling;
        let mut body = json!({
            "model": self.settings.model,
            "stream": true,
            "stream_options": {"include_usage": true},
            "max_tokens": s.max_tokens,
            "temperature": s.temperature,
            "top_p": s.top_p,
        });
        if !s.stop.is_empty() {
            body["stop"] = json!(s.stop);
        }
        if let Some(seed) = s.seed {
            body["seed"] = json!(seed);
        }
        let (path, chat) = match &request.input {
            Input::Text(t) => {
                body["prompt"] = json!(t);
                ("completions", false)
            }
            Input::Chat(messages) => {
                body["messages"] =
                    messages.iter().map(|m| json!({"role": m.role, "content": m.content})).collect();
                ("chat/completions", true)
            }
        };
        let mut post = self.http.post(self.url(path)).json(&body);
        if let Some(key) = &self.settings.api_key {
            post = post.bearer_auth(key);
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let stops = StopScanner::new(&request.sampling.stop);
        let deadline = request.deadline;
        let stats = self.stats.clone();
        stats.active.fetch_add(1, Ordering::SeqCst);
        tokio::spawn(async move {
            let _active = Active(&stats);
            let run = stream(post, chat, stops, prompt_tokens, &tx);
            let outcome = tokio::select! {
                r = run => r,
                // The client went away: dropping the response closes the HTTP stream, which
                // the server treats as a cancellation.
                () = tx.closed() => {
                    stats.cancelled.fetch_add(1, Ordering::SeqCst);
                    return;
                }
                () = sleep_until(deadline) => Err(GenError::DeadlineExceeded("while generating")),
            };
            match outcome {
                Ok(finish) => {
                    let _ = tx.send(Ok(Event::Done(finish)));
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                }
            }
        });
        Ok(rx)
    }
}

/// Counts a generation in `active` while alive.
struct Active<'a>(&'a BackendStats);

impl Drop for Active<'_> {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}

/// Sends the request and forwards its SSE stream as deltas; returns how it finished.
async fn stream(
    post: reqwest::RequestBuilder,
    chat: bool,
    mut stops: StopScanner,
    prompt_tokens: usize,
    tx: &mpsc::UnboundedSender<Result<Event, GenError>>,
) -> Result<Finish, GenError> {
    let response = post.send().await.map_err(transport_error)?;
    let status = response.status();
    if !status.is_success() {
        let retry = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let body = response.text().await.unwrap_or_default();
        return Err(GenError::Remote(http_status(status.as_u16(), &error_message(&body), retry)));
    }
    let mut finish = Finish {
        reason: FinishReason::Stop,
        prompt_tokens,
        completion_tokens: 0,
        first_token_at: None,
        last_token_at: None,
    };
    let mut server_completion_tokens = None;
    let mut buffer = Vec::<u8>::new();
    let mut body = response.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(transport_error)?;
        buffer.extend_from_slice(&chunk);
        // SSE events end with a blank line; a `data:` line carries one JSON chunk.
        while let Some(end) = find_event_end(&buffer) {
            let event: Vec<u8> = buffer.drain(..end.1).collect();
            let event = String::from_utf8_lossy(&event[..end.0]).into_owned();
            for line in event.lines() {
                let Some(data) = line.strip_prefix("data:") else { continue };
                let data = data.trim();
                if data == "[DONE]" {
                    return Ok(done(finish, server_completion_tokens, &mut stops, tx));
                }
                let v: Value = serde_json::from_str(data)
                    .map_err(|e| GenError::Model(format!("malformed stream chunk {data:?}: {e}")))?;
                if let Some(err) = v.get("error") {
                    return Err(GenError::Remote(Status::unavailable(error_message(&err.to_string()))));
                }
                if let Some(u) = v.get("usage").filter(|u| !u.is_null()) {
                    if let Some(p) = u.get("prompt_tokens").and_then(Value::as_u64) {
                        finish.prompt_tokens = p as usize;
                    }
                    server_completion_tokens = u.get("completion_tokens").and_then(Value::as_u64);
                }
                let Some(choice) = v.get("choices").and_then(|c| c.get(0)) else { continue };
                let text = if chat {
                    choice.pointer("/delta/content").and_then(Value::as_str)
                } else {
                    choice.get("text").and_then(Value::as_str)
                };
                if let Some(text) = text.filter(|t| !t.is_empty()) {
                    let now = Instant::now();
                    finish.first_token_at.get_or_insert(now);
                    finish.last_token_at = Some(now);
                    finish.completion_tokens += 1;
                    let scan = stops.push(text);
                    if !scan.emit.is_empty() {
                        let _ = tx.send(Ok(Event::Delta(scan.emit)));
                    }
                    if scan.stopped {
                        finish.reason = FinishReason::StopSequence;
                        return Ok(finish);
                    }
                }
                match choice.get("finish_reason").and_then(Value::as_str) {
                    Some("length") => finish.reason = FinishReason::Length,
                    Some(_) => finish.reason = FinishReason::Stop,
                    None => {}
                }
            }
        }
    }
    // Some servers close the stream without [DONE].
    Ok(done(finish, server_completion_tokens, &mut stops, tx))
}

fn done(
    mut finish: Finish,
    server_completion_tokens: Option<u64>,
    stops: &mut StopScanner,
    tx: &mpsc::UnboundedSender<Result<Event, GenError>>,
) -> Finish {
    let rest = stops.finish();
    if !rest.is_empty() {
        let _ = tx.send(Ok(Event::Delta(rest)));
    }
    // The server's count is exact; ours counts stream chunks (one token each on most servers).
    if let Some(n) = server_completion_tokens {
        finish.completion_tokens = n as usize;
    }
    finish
}

/// (end of the event's text, end of its terminator) of the first complete SSE event.
fn find_event_end(buf: &[u8]) -> Option<(usize, usize)> {
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|i| (i, i + 2));
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| (i, i + 4));
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(if a.0 < b.0 { a } else { b }),
        (a, b) => a.or(b),
    }
}

/// The `error.message` of an OpenAI-style error body, else the body itself (shortened).
fn error_message(body: &str) -> String {
    let v: Option<Value> = serde_json::from_str(body).ok();
    let msg = v
        .as_ref()
        .and_then(|v| v.pointer("/error/message").or_else(|| v.get("message")).or_else(|| v.get("detail")))
        .map(|m| m.as_str().map_or_else(|| m.to_string(), str::to_string))
        .unwrap_or_else(|| body.trim().to_string());
    msg.chars().take(500).collect()
}

fn transport_error(e: reqwest::Error) -> GenError {
    if e.is_timeout() {
        GenError::Remote(Status::deadline_exceeded(format!("language model server: {e}")))
    } else {
        GenError::Remote(Status::unavailable(format!("language model server unreachable: {e}")))
    }
}

/// The gRPC status for an HTTP error from an OpenAI-compatible server.
pub fn http_status(code: u16, message: &str, retry_after: Option<Duration>) -> Status {
    let msg = format!("HTTP {code}: {message}");
    let grpc = match code {
        400 | 413 | 422 => Code::InvalidArgument,
        401 => Code::Unauthenticated,
        403 => Code::PermissionDenied,
        404 => Code::NotFound,
        408 | 504 => Code::DeadlineExceeded,
        429 => {
            return ragd_core::status::resource_exhausted(msg, retry_after.unwrap_or(Duration::from_secs(1)));
        }
        500..=599 => Code::Unavailable,
        _ => Code::Unknown,
    };
    Status::new(grpc, msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_errors_map_to_grpc_codes() {
        for (http, code) in [
            (400, Code::InvalidArgument),
            (401, Code::Unauthenticated),
            (403, Code::PermissionDenied),
            (404, Code::NotFound),
            (429, Code::ResourceExhausted),
            (500, Code::Unavailable),
            (502, Code::Unavailable),
            (503, Code::Unavailable),
            (504, Code::DeadlineExceeded),
        ] {
            assert_eq!(http_status(http, "x", None).code(), code, "HTTP {http}");
        }
        let s = http_status(429, "slow down", Some(Duration::from_secs(7)));
        assert_eq!(ragd_core::status::retry_after(&s), Some(Duration::from_secs(7)));
    }

    #[test]
    fn error_bodies_are_read() {
        assert_eq!(error_message(r#"{"error":{"message":"bad key","type":"x"}}"#), "bad key");
        assert_eq!(error_message(r#"{"detail":"Invalid API Key"}"#), "Invalid API Key");
        assert_eq!(error_message(" plain text "), "plain text");
    }

    #[test]
    fn sse_event_boundaries() {
        assert_eq!(find_event_end(b"data: 1\n\ndata: 2"), Some((7, 9)));
        assert_eq!(find_event_end(b"data: 1\r\n\r\n"), Some((7, 11)));
        assert_eq!(find_event_end(b"data: 1\n"), None);
    }

    #[test]
    fn estimate_without_tokenizer_is_conservative() {
        let b = OpenAiBackend::new(OpenAiSettings {
            name: "o".into(),
            base_url: "http://127.0.0.1:1/v1".into(),
            api_key: None,
            model: "m".into(),
            context_window: 2048,
            max_concurrent: 1,
            tokenizer: None,
            connect_timeout: Duration::from_secs(1),
        })
        .expect("backend");
        assert_eq!(b.count_text_tokens("abcdefg").expect("count"), 3);
        let chat = Input::Chat(vec![super::super::ChatMessage::new("user", "abc")]);
        assert_eq!(b.count_tokens(&chat).expect("count"), 1 + 2 + 4 + 3);
    }
}

//! **Test double of a rerank service** (no cross-encoder weights ship in a package registry, so
//! no real reranker can run here): a small HTTP/1.1 server on a loopback socket that speaks the
//! two rerank APIs the indexer supports — text-embeddings-inference's `POST /rerank` at
//! `/tei/rerank` and the Cohere/Jina/llama.cpp shape at `/cohere/v1/rerank` — and scores by its
//! own rule, written here and nowhere else: a text's score is the number of distinct words of
//! four letters or more of the query (lower-cased, split at anything not alphanumeric) that it
//! contains. Words in the query steer failures: `fail500` answers HTTP 500, `busy429` 429,
//! `refuse400` 400, `garbage` a non-rerank body, `slow` waits 3 s before answering.

use std::collections::HashSet;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The double's scoring rule.
pub fn score(query: &str, text: &str) -> f32 {
    let words = |s: &str| -> HashSet<String> {
        s.split(|c: char| !c.is_alphanumeric())
            .filter(|w| w.chars().count() >= 4)
            .map(str::to_lowercase)
            .collect()
    };
    let text = words(text);
    words(query).iter().filter(|w| text.contains(*w)).count() as f32
}

/// A running double; its base URL is `http://<addr>`.
#[derive(Debug)]
pub struct RerankTestServer {
    pub url: String,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RerankTestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RerankTestServer {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let task = tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                tokio::spawn(serve(socket));
            }
        });
        Self { url, task }
    }
}

async fn serve(mut socket: TcpStream) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    // Headers, then Content-Length bytes of body.
    let (head_end, length) = loop {
        let Ok(n) = socket.read(&mut chunk).await else { return };
        if n == 0 {
            return;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..i]).to_lowercase();
            let length = head
                .lines()
                .find_map(|l| {
                    l.strip_prefix("content-length:").map(|v| v.trim().parse::<usize>().unwrap_or(0))
                })
                .unwrap_or(0);
            break (i + 4, length);
        }
    };
    while buf.len() < head_end + length {
        let Ok(n) = socket.read(&mut chunk).await else { return };
        if n == 0 {
            return;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let path = head.split_whitespace().nth(1).unwrap_or("").to_string();
    let body: Value = serde_json::from_slice(&buf[head_end..head_end + length]).unwrap_or(Value::Null);
    let (status, answer) = respond(&path, &body).await;
    let reply = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
        answer.len()
    );
    let _ = socket.write_all(reply.as_bytes()).await;
    let _ = socket.shutdown().await;
}

async fn respond(path: &str, body: &Value) -> (&'static str, String) {
    let query = body["query"].as_str().unwrap_or("").to_lowercase();
    if query.contains("slow") {
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    if query.contains("fail500") {
        return ("500 Internal Server Error", json!({"error": "model crashed"}).to_string());
    }
    if query.contains("busy429") {
        return ("429 Too Many Requests", json!({"error": "queue full"}).to_string());
    }
    if query.contains("refuse400") {
        return (
            "400 Bad Request",
            json!({"error": "batch size 64 > maximum allowed batch size 32"}).to_string(),
        );
    }
    if query.contains("garbage") {
        return ("200 OK", json!({"unexpected": true}).to_string());
    }
    let texts_key = if path == "/tei/rerank" { "texts" } else { "documents" };
    let Some(texts) = body[texts_key].as_array() else {
        return ("422 Unprocessable Entity", json!({"error": format!("no {texts_key}")}).to_string());
    };
    let mut scored: Vec<(usize, f32)> =
        texts.iter().enumerate().map(|(i, t)| (i, score(&query, t.as_str().unwrap_or("")))).collect();
    // Both real APIs answer best first.
    scored.sort_by(|a, b| b.1.total_cmp(&a.1));
    match path {
        "/tei/rerank" => {
            ("200 OK", Value::Array(scored.iter().map(|(i, s)| json!({"index": i, "score": s})).collect()).to_string())
        }
        "/cohere/v1/rerank" => (
            "200 OK",
            json!({"results": scored.iter().map(|(i, s)| json!({"index": i, "relevance_score": s})).collect::<Vec<_>>()})
                .to_string(),
        ),
        _ => ("404 Not Found", json!({"error": "no such route"}).to_string()),
    }
}

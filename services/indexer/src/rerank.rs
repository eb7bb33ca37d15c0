//! The second stage of a search: a reranker scores each retrieved chunk against the query (a
//! cross-encoder reads both together, which a bi-encoder's vectors cannot), and the candidates
//! are reordered by that score. [`Reranker`] is the seam; [`HttpReranker`] speaks the rerank
//! APIs users already run:
//!
//! - `tei`: Hugging Face text-embeddings-inference's `POST /rerank` — `{"query", "texts",
//!   "truncate"}` → `[{"index", "score"}]`;
//! - `cohere`: the `{"model", "query", "documents", "top_n"}` → `{"results": [{"index",
//!   "relevance_score"}]}` shape of Cohere's, Jina's and llama.cpp server's `/v1/rerank`.
//!
//! No cross-encoder weights ship in a package registry, so there is no in-process backend yet;
//! a local ONNX cross-encoder would be one more implementation of the trait.

use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use serde_json::{Value, json};

/// Why a rerank failed; each maps to its own gRPC status (see `error.rs`).
#[derive(Debug, thiserror::Error)]
pub enum RerankError {
    /// Not reachable, or it failed on its side (HTTP 5xx).
    #[error("reranker unavailable: {0}")]
    Unavailable(String),
    /// HTTP 429: over its capacity.
    #[error("reranker overloaded: {0}")]
    Overloaded(String),
    /// The request's deadline or the reranker timeout passed.
    #[error("reranker did not answer in time ({0:?})")]
    Timeout(Duration),
    /// HTTP 4xx other than 429: the reranker refuses this request (too many or too long texts,
    /// an unknown model, the indexer's credentials).
    #[error("reranker refused the request (HTTP {status}): {body}")]
    Refused { status: u16, body: String },
    /// The answer is not a rerank response of the configured API (wrong `--reranker-api`?).
    #[error("reranker answered something else than a {api} rerank response: {reason}")]
    BadResponse { api: &'static str, reason: String },
}

/// Scores texts against a query.
#[tonic::async_trait]
pub trait Reranker: Send + Sync + std::fmt::Debug {
    /// One score per text, in the texts' order; higher is more relevant.
    async fn rerank(
        &self,
        query: &str,
        texts: &[String],
        deadline: Option<Instant>,
    ) -> Result<Vec<f32>, RerankError>;
}

/// Which rerank API the server speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RerankApi {
    /// text-embeddings-inference `/rerank`.
    Tei,
    /// Cohere / Jina / llama.cpp server `/v1/rerank`.
    Cohere,
}

impl RerankApi {
    fn name(self) -> &'static str {
        match self {
            RerankApi::Tei => "tei",
            RerankApi::Cohere => "cohere",
        }
    }
}

/// `--reranker-*`: the second stage of `rerank` searches.
#[derive(Debug, Clone, Args)]
pub struct RerankerConfig {
    /// Full URL of a rerank endpoint (e.g. http://tei:8080/rerank, http://llama:8080/v1/rerank);
    /// unset: searches asking to rerank fail with FAILED_PRECONDITION.
    #[arg(long, env = "RAGD_RERANKER_URL")]
    pub reranker_url: Option<String>,
    /// The API that endpoint speaks.
    #[arg(long, env = "RAGD_RERANKER_API", value_enum, default_value_t = RerankApi::Tei)]
    pub reranker_api: RerankApi,
    /// Model name sent with `cohere` requests.
    #[arg(long, env = "RAGD_RERANKER_MODEL")]
    pub reranker_model: Option<String>,
    /// Bearer token for the reranker.
    #[arg(long, env = "RAGD_RERANKER_API_KEY", hide_env_values = true)]
    pub reranker_api_key: Option<String>,
    /// Longest wait for one rerank call, in milliseconds (a request's own deadline can shorten it).
    #[arg(long, env = "RAGD_RERANKER_TIMEOUT_MS", default_value_t = 10_000)]
    pub reranker_timeout_ms: u64,
}

/// A reranker behind HTTP.
#[derive(Debug, Clone)]
pub struct HttpReranker {
    client: reqwest::Client,
    url: String,
    api: RerankApi,
    model: Option<String>,
    api_key: Option<String>,
    timeout: Duration,
}

impl HttpReranker {
    /// None when no URL is configured; an error for a URL that is not http(s).
    pub fn from_config(c: &RerankerConfig) -> Result<Option<Self>, String> {
        let Some(url) = c.reranker_url.clone() else { return Ok(None) };
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(format!("--reranker-url {url:?}: expected an http:// or https:// URL"));
        }
        let client = reqwest::Client::builder().build().map_err(|e| format!("reranker HTTP client: {e}"))?;
        Ok(Some(Self {
            client,
            url,
            api: c.reranker_api,
            model: c.reranker_model.clone(),
            api_key: c.reranker_api_key.clone(),
            timeout: Duration::from_millis(c.reranker_timeout_ms.max(1)),
        }))
    }

    fn body(&self, query: &str, texts: &[String]) -> Value {
        match self.api {
            RerankApi::Tei => json!({"query": query, "texts": texts, "truncate": true, "raw_scores": false}),
            RerankApi::Cohere => {
                let mut b = json!({"query": query, "documents": texts, "top_n": texts.len()});
                if let Some(m) = &self.model {
                    b["model"] = json!(m);
                }
                b
            }
        }
    }
}

/// (index, score) pairs of a response, by API.
fn parse(api: RerankApi, body: &Value) -> Result<Vec<(u64, f64)>, String> {
    let (list, score_key) = match api {
        RerankApi::Tei => (body.as_array(), "score"),
        RerankApi::Cohere => (body.get("results").and_then(Value::as_array), "relevance_score"),
    };
    let list = list.ok_or_else(|| "no list of results".to_string())?;
    list.iter()
        .map(|r| {
            let index = r.get("index").and_then(Value::as_u64).ok_or("a result without an integer index")?;
            let score = r
                .get(score_key)
                .and_then(Value::as_f64)
                .ok_or_else(|| format!("a result without {score_key}"))?;
            Ok((index, score))
        })
        .collect()
}

/// Scores in text order from (index, score) pairs: every index once, none out of range.
fn in_order(pairs: Vec<(u64, f64)>, n: usize) -> Result<Vec<f32>, String> {
    let mut scores = vec![None; n];
    for (i, s) in pairs {
        let slot =
            scores.get_mut(i as usize).ok_or_else(|| format!("index {i} out of range for {n} texts"))?;
        if slot.replace(s as f32).is_some() {
            return Err(format!("index {i} scored twice"));
        }
    }
    scores
        .into_iter()
        .enumerate()
        .map(|(i, s)| s.filter(|s| s.is_finite()).ok_or_else(|| format!("no finite score for text {i}")))
        .collect()
}

#[tonic::async_trait]
impl Reranker for HttpReranker {
    async fn rerank(
        &self,
        query: &str,
        texts: &[String],
        deadline: Option<Instant>,
    ) -> Result<Vec<f32>, RerankError> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let timeout =
            deadline.map_or(self.timeout, |d| d.saturating_duration_since(Instant::now()).min(self.timeout));
        if timeout.is_zero() {
            return Err(RerankError::Timeout(timeout));
        }
        let mut request = self.client.post(&self.url).timeout(timeout).json(&self.body(query, texts));
        if let Some(key) = &self.api_key {
            request = request.bearer_auth(key);
        }
        let response = request.send().await.map_err(|e| {
            if e.is_timeout() {
                RerankError::Timeout(timeout)
            } else {
                RerankError::Unavailable(e.to_string())
            }
        })?;
        let status = response.status();
        let text = response.text().await.map_err(|e| {
            if e.is_timeout() {
                RerankError::Timeout(timeout)
            } else {
                RerankError::Unavailable(e.to_string())
            }
        })?;
        let snippet = || text.chars().take(300).collect::<String>();
        match status.as_u16() {
            200..=299 => {}
            429 => return Err(RerankError::Overloaded(snippet())),
            400..=499 => return Err(RerankError::Refused { status: status.as_u16(), body: snippet() }),
            _ => return Err(RerankError::Unavailable(format!("HTTP {status}: {}", snippet()))),
        }
        let bad = |reason: String| RerankError::BadResponse { api: self.api.name(), reason };
        let body: Value = serde_json::from_str(&text).map_err(|e| bad(format!("not JSON: {e}")))?;
        in_order(parse(self.api, &body).map_err(bad)?, texts.len()).map_err(bad)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_apis_parse_into_text_order() {
        let tei = json!([{"index": 1, "score": 0.9}, {"index": 0, "score": 0.1}]);
        assert_eq!(in_order(parse(RerankApi::Tei, &tei).expect("tei"), 2).expect("order"), vec![0.1, 0.9]);
        let cohere = json!({"results": [{"index": 0, "relevance_score": 0.5}, {"index": 2, "relevance_score": 0.7}, {"index": 1, "relevance_score": -1.0}]});
        assert_eq!(
            in_order(parse(RerankApi::Cohere, &cohere).expect("cohere"), 3).expect("order"),
            vec![0.5, -1.0, 0.7]
        );
    }

    #[test]
    fn a_response_that_does_not_cover_every_text_once_is_refused() {
        assert!(in_order(vec![(0, 1.0)], 2).expect_err("missing").contains("text 1"));
        assert!(in_order(vec![(0, 1.0), (0, 2.0)], 2).expect_err("twice").contains("twice"));
        assert!(in_order(vec![(5, 1.0)], 2).expect_err("range").contains("out of range"));
        assert!(
            parse(RerankApi::Cohere, &json!([{"index": 0, "score": 1.0}])).is_err(),
            "tei shape for cohere"
        );
        assert!(parse(RerankApi::Tei, &json!([{"index": 0}])).expect_err("no score").contains("score"));
    }

    #[test]
    fn bodies_follow_each_api() {
        let config = RerankerConfig {
            reranker_url: Some("http://x/rerank".into()),
            reranker_api: RerankApi::Cohere,
            reranker_model: Some("m".into()),
            reranker_api_key: None,
            reranker_timeout_ms: 1000,
        };
        let r = HttpReranker::from_config(&config).expect("config").expect("configured");
        let texts = vec!["a".to_string(), "b".to_string()];
        assert_eq!(
            r.body("q", &texts),
            json!({"query": "q", "documents": ["a", "b"], "top_n": 2, "model": "m"})
        );
        let tei = HttpReranker { api: RerankApi::Tei, ..r };
        assert_eq!(
            tei.body("q", &texts),
            json!({"query": "q", "texts": ["a", "b"], "truncate": true, "raw_scores": false})
        );
        let bad = RerankerConfig { reranker_url: Some("tei:8080".into()), ..config };
        assert!(HttpReranker::from_config(&bad).expect_err("scheme").contains("http://"));
    }
}

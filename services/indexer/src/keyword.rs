//! Keyword (BM25) analysis of chunks and queries. ragd runs Qdrant's own BM25 pipeline
//! (`qdrant_edge::bm25_embed`, what a Qdrant server runs for its `qdrant/bm25` model): text is
//! split at every non-alphanumeric character, ASCII-folded, lowercased, stripped of the
//! language's stop words, Snowball-stemmed, and each term hashed to a murmur3 id. A chunk's
//! vector holds each term's BM25 term-frequency part `tf·(k1+1) / (tf + k1·(1−b+b·len/avg_len))`;
//! a query's holds 1 per distinct term, and the store's IDF modifier multiplies it by the term's
//! inverse document frequency in the shard at search time, so the dot product is the BM25 score.
//! The same sparse vectors go to the embedded engine and to a Qdrant cluster.

use ordered_float::NotNan;
use qdrant_edge::bm25_embed::{EdgeBm25, EdgeBm25Config};
use serde::{Deserialize, Serialize};

use crate::chunk::Chunking;
use crate::error::IndexError;
use crate::store::SparseVector;

/// A collection's keyword index settings, every default filled in (kept in the registry).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeywordConfig {
    /// Language of the stop words and the stemmer, by Qdrant's names ("english", "german", ...).
    pub language: String,
    pub stop_words: bool,
    pub lowercase: bool,
    pub ascii_folding: bool,
    pub k1: f32,
    pub b: f32,
    /// Expected chunk length in terms (after stop words).
    pub avg_len: f32,
    /// Snowball stemming of the language (registries written before the setting: on).
    #[serde(default = "stemming_default")]
    pub stemming: bool,
}

fn stemming_default() -> bool {
    true
}

/// A language Qdrant knows for stop words that has no Snowball stemmer. qdrant-edge 0.7's BM25
/// takes the stemmer from the language and has no "disabled" setting (Qdrant's server API has
/// one): stemming off = this language for the stemmer, the configured one for the stop words.
const NO_STEMMER_LANGUAGE: &str = "basque";

/// What a request asked for; `None` = the default.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KeywordRequest {
    pub language: Option<String>,
    pub stop_words: Option<bool>,
    pub lowercase: Option<bool>,
    pub ascii_folding: Option<bool>,
    pub k1: Option<f32>,
    pub b: Option<f32>,
    pub avg_len: Option<f32>,
    pub stemming: Option<bool>,
}

/// Terms a chunk of this policy holds, roughly: ~12 content words per sentence after stop words,
/// about half of a window's model tokens. A wrong guess only shifts the length normalisation.
pub fn estimated_avg_len(chunking: &Chunking) -> f32 {
    match chunking {
        Chunking::Sentences { size, .. } => 12.0 * *size as f32,
        Chunking::Tokens { size, .. } => (*size as f32 / 2.0).max(1.0),
    }
}

impl KeywordConfig {
    /// Fills in the defaults and checks the values (INVALID_ARGUMENT naming `keyword.<field>`).
    pub fn resolve(r: KeywordRequest, chunking: &Chunking) -> Result<Self, IndexError> {
        let config = Self {
            language: r.language.filter(|l| !l.is_empty()).unwrap_or_else(|| "english".into()),
            stop_words: r.stop_words.unwrap_or(true),
            lowercase: r.lowercase.unwrap_or(true),
            ascii_folding: r.ascii_folding.unwrap_or(true),
            k1: r.k1.unwrap_or(1.2),
            b: r.b.unwrap_or(0.75),
            avg_len: r.avg_len.unwrap_or_else(|| estimated_avg_len(chunking)),
            stemming: r.stemming.unwrap_or(true),
        };
        if !(config.k1.is_finite() && config.k1 >= 0.0) {
            return Err(IndexError::invalid("keyword.k1", "must be a finite number >= 0"));
        }
        if !(0.0..=1.0).contains(&config.b) {
            return Err(IndexError::invalid("keyword.b", "must be in [0, 1]"));
        }
        if !(config.avg_len.is_finite() && config.avg_len > 0.0) {
            return Err(IndexError::invalid("keyword.avg_len", "must be a finite number > 0"));
        }
        Analyzer::new(&config)?;
        Ok(config)
    }
}

/// A collection's analyzer.
#[derive(Debug)]
pub struct Analyzer(EdgeBm25);

/// Builds a `NotNan` of a value `resolve` already checked to be finite.
fn not_nan(field: &'static str, v: f32) -> Result<NotNan<f64>, IndexError> {
    NotNan::new(f64::from(v)).map_err(|_| IndexError::invalid(field, "must be a number"))
}

impl Analyzer {
    pub fn new(c: &KeywordConfig) -> Result<Self, IndexError> {
        if !c.stemming {
            // The engine sees the stemmer-free language below: check the configured one first.
            let check = EdgeBm25Config { language: Some(c.language.clone()), ..EdgeBm25Config::default() };
            EdgeBm25::new(check).map_err(|e| IndexError::invalid("keyword.language", e.to_string()))?;
        }
        // qdrant-edge 0.7 does not export the stop-word setting's type, only its JSON shape:
        // `{"languages": [..]}` = those languages' lists, `{"custom": []}` = none; None = the
        // language's own list.
        let stopwords = match (c.stop_words, c.stemming) {
            (true, true) => None,
            (true, false) => Some(serde_json::json!({ "languages": [c.language] })),
            (false, _) => Some(serde_json::json!({ "custom": [] })),
        };
        let stopwords = stopwords
            .map(serde_json::from_value)
            .transpose()
            .map_err(|e| IndexError::Store(format!("stop-word setting: {e}")))?;
        let config = EdgeBm25Config {
            k: not_nan("keyword.k1", c.k1)?,
            b: not_nan("keyword.b", c.b)?,
            avg_len: not_nan("keyword.avg_len", c.avg_len)?,
            language: Some(if c.stemming { c.language.clone() } else { NO_STEMMER_LANGUAGE.to_string() }),
            lowercase: Some(c.lowercase),
            ascii_folding: Some(c.ascii_folding),
            stopwords,
            ..EdgeBm25Config::default()
        };
        EdgeBm25::new(config).map(Self).map_err(|e| IndexError::invalid("keyword.language", e.to_string()))
    }

    /// [`Analyzer::document`] as the stores' weighting function.
    pub fn sparse_of(self: &std::sync::Arc<Self>) -> crate::store::SparseOf {
        let analyzer = self.clone();
        std::sync::Arc::new(move |text: &str| analyzer.document(text))
    }

    /// A chunk's BM25 term weights.
    pub fn document(&self, text: &str) -> SparseVector {
        let v = self.0.embed_document(text);
        SparseVector { indices: v.indices, values: v.values }
    }

    /// A query's terms, weight 1 each (the store multiplies by IDF).
    pub fn query(&self, text: &str) -> SparseVector {
        let v = self.0.embed_query(text);
        SparseVector { indices: v.indices, values: v.values }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(stop_words: bool, avg_len: f32) -> KeywordConfig {
        let r = KeywordRequest { stop_words: Some(stop_words), avg_len: Some(avg_len), ..Default::default() };
        KeywordConfig::resolve(r, &Chunking::Sentences { size: 3, overlap: 1 }).expect("valid")
    }

    /// The weight the document vector gives the (single) term of `query`.
    fn weight_of(a: &Analyzer, doc: &SparseVector, query: &str) -> Option<f32> {
        let q = a.query(query);
        assert_eq!(q.indices.len(), 1, "{query:?} is one term");
        doc.indices.iter().position(|i| *i == q.indices[0]).map(|p| doc.values[p])
    }

    #[test]
    fn bm25_weights_match_the_formula_computed_by_hand() {
        // "alpha beta alpha", k1 1.2, b 0.75, avg_len 3 = its own length (len/avg = 1):
        // alpha tf 2: 2·2.2 / (2 + 1.2) = 1.375; beta tf 1: 2.2 / (1 + 1.2) = 1.0.
        let a = Analyzer::new(&config(false, 3.0)).expect("analyzer");
        let doc = a.document("alpha beta alpha");
        assert_eq!(doc.indices.len(), 2);
        assert!((weight_of(&a, &doc, "alpha").expect("alpha") - 1.375).abs() < 1e-6);
        assert!((weight_of(&a, &doc, "beta").expect("beta") - 1.0).abs() < 1e-6);
        // avg_len 6 (the chunk is half the average): alpha 4.4 / (2 + 1.2·(0.25 + 0.375)) = 1.6
        let a = Analyzer::new(&config(false, 6.0)).expect("analyzer");
        let doc = a.document("alpha beta alpha");
        assert!((weight_of(&a, &doc, "alpha").expect("alpha") - 1.6).abs() < 1e-6);
    }

    #[test]
    fn stems_folds_and_drops_stop_words() {
        let a = Analyzer::new(&config(true, 3.0)).expect("analyzer");
        // "the" is an English stop word; "Running"/"runs" stem to "run"; "Café" folds to "cafe".
        let doc = a.document("The Running runs, Café!");
        assert_eq!(doc.indices.len(), 2, "{doc:?}");
        assert!(weight_of(&a, &doc, "run").is_some());
        assert!(weight_of(&a, &doc, "cafe").is_some());
        assert!(a.query("the").indices.is_empty());
        // Terms come out sorted and distinct, a query's with weight 1.
        let q = a.query("make test make TEST");
        assert_eq!(q.values, vec![1.0, 1.0]);
        assert!(q.indices.windows(2).all(|w| w[0] < w[1]));
        // With stop words kept, "the" is a term.
        let keep = Analyzer::new(&config(false, 3.0)).expect("analyzer");
        assert_eq!(keep.query("the").indices.len(), 1);
    }

    #[test]
    fn stemming_can_be_turned_off_keeping_stop_words_and_folding() {
        let r = KeywordRequest { stemming: Some(false), ..Default::default() };
        let c = KeywordConfig::resolve(r, &Chunking::Sentences { size: 3, overlap: 1 }).expect("valid");
        assert!(!c.stemming);
        let a = Analyzer::new(&c).expect("analyzer");
        let stemmed = Analyzer::new(&config(true, 3.0)).expect("analyzer");
        // Stemmed, "running" and "run" are one term; unstemmed, two.
        assert_eq!(stemmed.query("running run").indices.len(), 1);
        assert_eq!(a.query("running run").indices.len(), 2);
        // English stop words are still dropped and accents still folded.
        assert!(a.query("the").indices.is_empty());
        assert_eq!(a.query("Café").indices, a.query("cafe").indices);
        // Stop words kept too: "the" is a term.
        let r = KeywordRequest { stemming: Some(false), stop_words: Some(false), ..Default::default() };
        let c = KeywordConfig::resolve(r, &Chunking::Sentences { size: 3, overlap: 1 }).expect("valid");
        assert_eq!(Analyzer::new(&c).expect("analyzer").query("the").indices.len(), 1);
        // A registry entry written before the setting existed reads as stemming on.
        let old = r#"{"language":"english","stop_words":true,"lowercase":true,"ascii_folding":true,"k1":1.2,"b":0.75,"avg_len":36.0}"#;
        assert!(serde_json::from_str::<KeywordConfig>(old).expect("old entry").stemming);
    }

    #[test]
    fn bad_settings_name_their_field() {
        let chunking = Chunking::Sentences { size: 3, overlap: 1 };
        let field = |r: KeywordRequest| match KeywordConfig::resolve(r, &chunking) {
            Err(IndexError::InvalidArgument { field, .. }) => field,
            other => panic!("expected INVALID_ARGUMENT, got {other:?}"),
        };
        assert_eq!(field(KeywordRequest { b: Some(1.5), ..Default::default() }), "keyword.b");
        assert_eq!(field(KeywordRequest { k1: Some(-1.0), ..Default::default() }), "keyword.k1");
        assert_eq!(field(KeywordRequest { avg_len: Some(0.0), ..Default::default() }), "keyword.avg_len");
        assert_eq!(
            field(KeywordRequest { language: Some("klingon".into()), ..Default::default() }),
            "keyword.language"
        );
        assert_eq!(
            field(KeywordRequest {
                language: Some("klingon".into()),
                stemming: Some(false),
                ..Default::default()
            }),
            "keyword.language"
        );
        assert_eq!(
            field(KeywordRequest {
                language: Some("klingon".into()),
                stemming: Some(false),
                stop_words: Some(false),
                ..Default::default()
            }),
            "keyword.language"
        );
        let filled = KeywordConfig::resolve(KeywordRequest::default(), &chunking).expect("defaults");
        assert_eq!(
            (filled.language.as_str(), filled.k1, filled.b, filled.avg_len),
            ("english", 1.2, 0.75, 36.0)
        );
    }
}

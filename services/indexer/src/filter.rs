//! Metadata filters: must / should / must_not of match and range conditions on document
//! metadata keys, validated once and translated to Qdrant's filter (the same JSON form Qdrant's
//! REST API takes), so the embedded engine and a Qdrant cluster see the same filter.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::error::IndexError;

/// Payload path under which document metadata is stored.
pub const METADATA: &str = "metadata";

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Filter {
    #[serde(default)]
    pub must: Vec<Condition>,
    #[serde(default)]
    pub should: Vec<Condition>,
    #[serde(default)]
    pub must_not: Vec<Condition>,
}

/// A condition on metadata key `key` (dots address nested objects: `author.name`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Condition {
    pub key: String,
    pub test: Test,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Test {
    /// Equal to the value.
    Match(Value),
    /// Equal to any of the values.
    MatchAny(Vec<Value>),
    /// Numeric range; at least one bound.
    Range { gt: Option<f64>, gte: Option<f64>, lt: Option<f64>, lte: Option<f64> },
}

impl Filter {
    pub fn is_empty(&self) -> bool {
        self.must.is_empty() && self.should.is_empty() && self.must_not.is_empty()
    }

    /// Checks keys, values and bounds; errors name the `filter` field.
    pub fn validate(&self) -> Result<(), IndexError> {
        let bad = |reason: String| Err(IndexError::invalid("filter", reason));
        for c in self.must.iter().chain(&self.should).chain(&self.must_not) {
            let key_ok = !c.key.is_empty()
                && c.key.split('.').all(|part| !part.is_empty())
                && c.key.chars().all(|ch| ch.is_alphanumeric() || "_-.".contains(ch));
            if !key_ok {
                return bad(format!(
                    "key {:?} must be dot-separated names of letters, digits, _ or -",
                    c.key
                ));
            }
            let scalar = |v: &Value| matches!(v, Value::String(_) | Value::Bool(_)) || v.as_i64().is_some();
            match &c.test {
                Test::Match(v) if !scalar(v) => {
                    return bad(format!("match on {:?} needs a string, integer or boolean", c.key));
                }
                // Qdrant matches any of strings or of integers, not a mix (nor booleans).
                Test::MatchAny(vs)
                    if vs.is_empty()
                        || !(vs.iter().all(Value::is_string) || vs.iter().all(|v| v.as_i64().is_some())) =>
                {
                    return bad(format!("match-any on {:?} needs all strings or all integers", c.key));
                }
                Test::Range { gt, gte, lt, lte } => {
                    let bounds = [gt, gte, lt, lte];
                    if bounds.iter().all(|b| b.is_none()) {
                        return bad(format!("range on {:?} needs at least one bound", c.key));
                    }
                    if bounds.iter().flat_map(|b| b.iter()).any(|b| !b.is_finite()) {
                        return bad(format!("range on {:?} has a non-finite bound", c.key));
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Qdrant's filter JSON with keys under `metadata.`.
    pub fn to_qdrant_json(&self) -> Value {
        let conds = |cs: &[Condition]| cs.iter().map(Condition::to_qdrant_json).collect::<Vec<_>>();
        json!({ "must": conds(&self.must), "should": conds(&self.should), "must_not": conds(&self.must_not) })
    }
}

impl Condition {
    fn to_qdrant_json(&self) -> Value {
        let key = format!("{METADATA}.{}", self.key);
        match &self.test {
            Test::Match(v) => json!({ "key": key, "match": { "value": v } }),
            Test::MatchAny(vs) => json!({ "key": key, "match": { "any": vs } }),
            Test::Range { gt, gte, lt, lte } => {
                json!({ "key": key, "range": { "gt": gt, "gte": gte, "lt": lt, "lte": lte } })
            }
        }
    }
}

/// Qdrant filter selecting every chunk of the given documents.
pub fn documents(doc_ids: &[String]) -> Value {
    json!({ "must": [{ "key": "doc_id", "match": { "any": doc_ids } }] })
}

/// Qdrant filter selecting the chunks of one document numbered `from` and above.
pub fn chunks_from(doc_id: &str, from: u32) -> Value {
    json!({ "must": [
        { "key": "doc_id", "match": { "value": doc_id } },
        { "key": "chunk", "range": { "gte": from } },
    ] })
}

/// Qdrant filter selecting, for each `(doc_id, from)`, that document's chunks numbered `from`
/// and above (nested filters under `should`).
pub fn chunks_from_many(docs: &[(String, u32)]) -> Value {
    let each: Vec<Value> = docs.iter().map(|(doc, from)| chunks_from(doc, *from)).collect();
    json!({ "should": each })
}

/// Qdrant filter selecting one chunk index (chunk 0 counts documents).
pub fn chunk(index: u32) -> Value {
    json!({ "must": [{ "key": "chunk", "match": { "value": index } }] })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cond(key: &str, test: Test) -> Condition {
        Condition { key: key.into(), test }
    }

    #[test]
    fn translates_to_qdrant_filter_json_under_metadata() {
        let f = Filter {
            must: vec![cond("country", Test::Match(json!("Germany")))],
            should: vec![cond("year", Test::Range { gt: None, gte: Some(2000.0), lt: None, lte: None })],
            must_not: vec![cond("tag", Test::MatchAny(vec![json!("a"), json!("b")]))],
        };
        f.validate().expect("valid");
        let j = f.to_qdrant_json();
        assert_eq!(j["must"][0], json!({"key": "metadata.country", "match": {"value": "Germany"}}));
        assert_eq!(j["should"][0]["range"]["gte"], json!(2000.0));
        assert_eq!(j["must_not"][0]["match"]["any"], json!(["a", "b"]));
    }

    #[test]
    fn rejects_malformed_conditions() {
        for bad in [
            cond("", Test::Match(json!("x"))),
            cond("a..b", Test::Match(json!("x"))),
            cond("a[0]", Test::Match(json!("x"))),
            cond("k", Test::Match(json!(1.5))),
            cond("k", Test::Match(json!({"nested": 1}))),
            cond("k", Test::MatchAny(vec![])),
            cond("k", Test::MatchAny(vec![json!("a"), json!(3)])),
            cond("k", Test::MatchAny(vec![json!(true)])),
            cond("k", Test::Range { gt: None, gte: None, lt: None, lte: None }),
            cond("k", Test::Range { gt: Some(f64::NAN), gte: None, lt: None, lte: None }),
        ] {
            let f = Filter { must: vec![bad.clone()], ..Default::default() };
            let err = f.validate().expect_err("invalid");
            assert!(err.to_string().contains("filter"), "{bad:?}: {err}");
        }
    }
}

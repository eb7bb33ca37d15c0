//! Filters, typed: a metadata [`Filter`] (must / should / must_not of match, match-any and range
//! conditions on document metadata keys) is converted once from the request and validated by its
//! constructors, so a value that exists is valid; a [`Selection`] is what a store is asked to
//! select — a metadata filter, or one of the selections ragd makes of its own payload (chunks of
//! documents, chunks from a number on, one chunk number). Each store converts a `Selection`
//! straight to its engine's filter type (`store::edge` to qdrant-edge's, `store::remote` to
//! qdrant-client's), with no JSON in between; metadata keys are stored under `metadata.`.

use crate::error::IndexError;

/// Payload path under which document metadata is stored.
pub const METADATA: &str = "metadata";

/// A metadata filter. Every condition in it was checked by [`Condition::new`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Filter {
    pub must: Vec<Condition>,
    pub should: Vec<Condition>,
    pub must_not: Vec<Condition>,
}

impl Filter {
    pub fn is_empty(&self) -> bool {
        self.must.is_empty() && self.should.is_empty() && self.must_not.is_empty()
    }
}

/// A condition on metadata key `key` (dots address nested objects: `author.name`).
#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    key: String,
    test: Test,
}

/// What a condition tests.
#[derive(Debug, Clone, PartialEq)]
pub enum Test {
    /// Equal to the value.
    Match(Scalar),
    /// Equal to any of the values.
    MatchAny(AnyOf),
    /// A numeric range.
    Range(Range),
}

/// A value a key can be matched against (what Qdrant's `match.value` takes).
#[derive(Debug, Clone, PartialEq)]
pub enum Scalar {
    Keyword(String),
    Integer(i64),
    Bool(bool),
}

/// Values a key can match any of: all strings or all integers, as Qdrant's `match.any` takes.
#[derive(Debug, Clone, PartialEq)]
pub enum AnyOf {
    Keywords(Vec<String>),
    Integers(Vec<i64>),
}

/// A numeric range; [`Condition::new`] requires at least one finite bound and no other.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Range {
    pub gt: Option<f64>,
    pub gte: Option<f64>,
    pub lt: Option<f64>,
    pub lte: Option<f64>,
}

fn bad(reason: String) -> IndexError {
    IndexError::invalid("filter", reason)
}

impl Condition {
    /// A condition, or INVALID_ARGUMENT naming the `filter` field: the key must be dot-separated
    /// names of letters, digits, `_` or `-` (exactly what Qdrant's JSON path takes unquoted); a
    /// match-any needs at least one value; a range at least one bound, all finite.
    pub fn new(key: impl Into<String>, test: Test) -> Result<Self, IndexError> {
        let key = key.into();
        let key_ok = !key.is_empty()
            && key.split('.').all(|part| !part.is_empty())
            && key.chars().all(|ch| ch.is_alphanumeric() || "_-.".contains(ch));
        let quoted = ragd_core::status::quote(&key);
        if !key_ok {
            return Err(bad(format!("key {quoted} must be dot-separated names of letters, digits, _ or -")));
        }
        match &test {
            Test::MatchAny(AnyOf::Keywords(v)) if v.is_empty() => {
                return Err(bad(format!("match-any on {quoted} needs at least one value")));
            }
            Test::MatchAny(AnyOf::Integers(v)) if v.is_empty() => {
                return Err(bad(format!("match-any on {quoted} needs at least one value")));
            }
            Test::Range(r) => {
                let bounds = [r.gt, r.gte, r.lt, r.lte];
                if bounds.iter().all(Option::is_none) {
                    return Err(bad(format!("range on {quoted} needs at least one bound")));
                }
                if bounds.iter().flatten().any(|b| !b.is_finite()) {
                    return Err(bad(format!("range on {quoted} has a non-finite bound")));
                }
            }
            _ => {}
        }
        Ok(Self { key, test })
    }

    /// The metadata key (without the `metadata.` prefix).
    pub fn key(&self) -> &str {
        &self.key
    }

    pub fn test(&self) -> &Test {
        &self.test
    }

    /// The payload path the store sees: `metadata.<key>`.
    pub fn payload_key(&self) -> String {
        format!("{METADATA}.{}", self.key)
    }
}

/// What a store is asked to select.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Selection<'a> {
    /// Points whose document metadata passes the filter.
    Metadata(&'a Filter),
    /// Every chunk of these documents.
    Documents(&'a [String]),
    /// For each `(doc_id, from)`, that document's chunks numbered `from` and above.
    ChunksFrom(&'a [(String, u32)]),
    /// Every point with this chunk number (chunk 0 counts documents).
    Chunk(u32),
    /// The first chunk (chunk 0) of each of these documents: counts which of them exist.
    FirstChunks(&'a [String]),
}

/// Payload keys of ragd's own fields, which the stores index.
pub const DOC_ID: &str = "doc_id";
pub const CHUNK: &str = "chunk";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_conditions_keep_their_key_and_test() {
        let c = Condition::new("author.name", Test::Match(Scalar::Keyword("Ada".into()))).expect("valid");
        assert_eq!((c.key(), c.payload_key().as_str()), ("author.name", "metadata.author.name"));
        assert_eq!(c.test(), &Test::Match(Scalar::Keyword("Ada".into())));
        for ok in [
            Test::Match(Scalar::Integer(-3)),
            Test::Match(Scalar::Bool(true)),
            Test::MatchAny(AnyOf::Integers(vec![1, 2])),
            Test::Range(Range { lte: Some(2.5), ..Range::default() }),
        ] {
            Condition::new("k_1-x", ok.clone()).unwrap_or_else(|e| panic!("{ok:?}: {e}"));
        }
    }

    #[test]
    fn malformed_conditions_are_invalid_argument_naming_the_filter() {
        let kw = || Test::Match(Scalar::Keyword("x".into()));
        for (key, test) in [
            ("", kw()),
            ("a..b", kw()),
            (".a", kw()),
            ("a[0]", kw()),
            ("a b", kw()),
            ("k", Test::MatchAny(AnyOf::Keywords(vec![]))),
            ("k", Test::MatchAny(AnyOf::Integers(vec![]))),
            ("k", Test::Range(Range::default())),
            ("k", Test::Range(Range { gt: Some(f64::NAN), ..Range::default() })),
            ("k", Test::Range(Range { lt: Some(f64::INFINITY), ..Range::default() })),
        ] {
            let err = Condition::new(key, test.clone()).expect_err("invalid");
            let status = tonic::Status::from(err);
            assert_eq!(status.code(), tonic::Code::InvalidArgument, "{key:?} {test:?}");
            assert!(status.message().contains("filter"), "{key:?} {test:?}: {}", status.message());
        }
        // A huge key is quoted by a prefix.
        let err = Condition::new("k ".repeat(5000), kw()).expect_err("invalid");
        assert!(err.to_string().len() < 300, "{}", err.to_string().len());
    }
}

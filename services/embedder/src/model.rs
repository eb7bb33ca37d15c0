//! A served model: tokenisation (Hugging Face `tokenizers`), padded batches, pooling and the
//! [`Backend`] trait that runs the encoder.
//!
//! Tokenisation happens per text at admission (so batches can be packed by token count); a batch
//! is padded to its longest text on the worker thread; the backend returns `last_hidden_state`
//! and [`pool`] turns it into one vector per text exactly like sentence-transformers' Pooling
//! (mean over the attention mask, or CLS). Normalisation is per request, applied afterwards.

use tokenizers::{Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

use crate::error::EmbedError;
use crate::manifest::{ModelSpec, Pooling};

/// Whether a text is a query or a passage (selects the model's prefix).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum InputKind {
    #[default]
    Unspecified,
    Query,
    Passage,
}

/// One tokenised text: ids fed to the model (truncated to `max_seq_len`, special tokens included).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tokenized {
    pub ids: Vec<i64>,
    pub truncated: bool,
}

/// Tokenizers of one model: one truncating (what Embed feeds the model) and one that counts
/// the full length (CountTokens).
#[derive(Debug)]
pub struct TextModel {
    pub spec: ModelSpec,
    truncating: Tokenizer,
    counting: Tokenizer,
}

impl TextModel {
    pub fn load(spec: ModelSpec) -> Result<Self, EmbedError> {
        let err = |e: Box<dyn std::error::Error + Send + Sync>| {
            EmbedError::Tokenizer(format!("{}: {e}", spec.tokenizer.display()))
        };
        let mut counting = Tokenizer::from_file(&spec.tokenizer).map_err(err)?;
        // tokenizer.json ships truncation/padding 128: ragd pads batches itself and truncates
        // to the sentence-transformers max_seq_length.
        counting.with_padding(None);
        counting.with_truncation(None).map_err(err)?;
        let mut truncating = counting.clone();
        truncating
            .with_truncation(Some(TruncationParams {
                max_length: spec.max_seq_len,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
                direction: TruncationDirection::Right,
            }))
            .map_err(err)?;
        Ok(Self { spec, truncating, counting })
    }

    fn prefixed<'a>(&self, text: &'a str, kind: InputKind) -> std::borrow::Cow<'a, str> {
        let prefix = match kind {
            InputKind::Query => &self.spec.query_prefix,
            InputKind::Passage => &self.spec.passage_prefix,
            InputKind::Unspecified => return text.into(),
        };
        if prefix.is_empty() { text.into() } else { format!("{prefix}{text}").into() }
    }

    /// Tokenises texts for embedding (truncated to `max_seq_len`).
    pub fn tokenize(&self, texts: &[String], kind: InputKind) -> Result<Vec<Tokenized>, EmbedError> {
        texts
            .iter()
            .map(|t| {
                let enc = self
                    .truncating
                    .encode(self.prefixed(t, kind).as_ref(), true)
                    .map_err(|e| EmbedError::Tokenizer(e.to_string()))?;
                Ok(Tokenized {
                    ids: enc.get_ids().iter().map(|&i| i64::from(i)).collect(),
                    truncated: !enc.get_overflowing().is_empty(),
                })
            })
            .collect()
    }

    /// Byte offsets of each text's tokens, special tokens excluded, no truncation.
    pub fn offsets(&self, texts: &[String]) -> Result<Vec<Vec<(usize, usize)>>, EmbedError> {
        texts
            .iter()
            .map(|t| {
                let enc = self
                    .counting
                    .encode(t.as_str(), true)
                    .map_err(|e| EmbedError::Tokenizer(e.to_string()))?;
                Ok(enc
                    .get_offsets()
                    .iter()
                    .zip(enc.get_special_tokens_mask())
                    .filter(|(_, special)| **special == 0)
                    .map(|(o, _)| *o)
                    .collect())
            })
            .collect()
    }

    /// Special tokens the model adds to every input.
    pub fn special_tokens(&self) -> Result<usize, EmbedError> {
        self.counting.encode("", true).map(|e| e.len()).map_err(|e| EmbedError::Tokenizer(e.to_string()))
    }

    /// Token counts before truncation (special tokens included).
    pub fn count(&self, texts: &[String], kind: InputKind) -> Result<Vec<usize>, EmbedError> {
        texts
            .iter()
            .map(|t| {
                self.counting
                    .encode(self.prefixed(t, kind).as_ref(), true)
                    .map(|e| e.len())
                    .map_err(|e| EmbedError::Tokenizer(e.to_string()))
            })
            .collect()
    }
}

/// A batch padded to its longest text: row-major `[batch, seq]` ids and attention mask.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaddedBatch {
    pub input_ids: Vec<i64>,
    pub attention_mask: Vec<i64>,
    pub lens: Vec<usize>,
    pub seq: usize,
}

impl PaddedBatch {
    pub fn new<'a>(texts: impl IntoIterator<Item = &'a [i64]> + Clone, pad_id: u32) -> Self {
        let seq = texts.clone().into_iter().map(<[i64]>::len).max().unwrap_or(0);
        let mut input_ids = Vec::new();
        let mut attention_mask = Vec::new();
        let mut lens = Vec::new();
        for ids in texts {
            input_ids.extend_from_slice(ids);
            input_ids.resize(input_ids.len() + seq - ids.len(), i64::from(pad_id));
            attention_mask.extend(std::iter::repeat_n(1, ids.len()));
            attention_mask.resize(attention_mask.len() + seq - ids.len(), 0);
            lens.push(ids.len());
        }
        Self { input_ids, attention_mask, lens, seq }
    }

    pub fn batch(&self) -> usize {
        self.lens.len()
    }

    /// Tokens the model computes, padding included (the batch's cost).
    pub fn padded_tokens(&self) -> usize {
        self.batch() * self.seq
    }
}

/// Pools `hidden` (`[batch, seq, dim]`, row-major) into one vector per text.
///
/// Mean pooling divides by `max(len, 1e-9)` like sentence-transformers; CLS takes token 0.
pub fn pool(hidden: &[f32], lens: &[usize], seq: usize, dim: usize, pooling: Pooling) -> Vec<Vec<f32>> {
    lens.iter()
        .enumerate()
        .map(|(b, &len)| {
            let rows = &hidden[b * seq * dim..(b + 1) * seq * dim];
            match pooling {
                Pooling::Cls => rows[..dim].to_vec(),
                Pooling::Mean => {
                    let mut sum = vec![0f32; dim];
                    for row in rows.chunks_exact(dim).take(len) {
                        for (s, x) in sum.iter_mut().zip(row) {
                            *s += x;
                        }
                    }
                    let denom = (len as f32).max(1e-9);
                    sum.iter_mut().for_each(|s| *s /= denom);
                    sum
                }
            }
        })
        .collect()
}

/// L2-normalises in place like `torch.nn.functional.normalize` (norm clamped to 1e-12).
pub fn normalize(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    v.iter_mut().for_each(|x| *x /= norm);
}

/// Runs the encoder on a padded batch and pools it. One instance per worker thread; an
/// implementation owns its engine session (ONNX Runtime on CPU or CUDA).
pub trait Backend: Send {
    fn embed(&mut self, batch: &PaddedBatch) -> Result<Vec<Vec<f32>>, EmbedError>;
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn pads_to_longest_with_pad_id() {
        let a = [101i64, 7, 102];
        let b = [101i64, 102];
        let batch = PaddedBatch::new([&a[..], &b[..]], 1);
        assert_eq!(batch.seq, 3);
        assert_eq!(batch.input_ids, vec![101, 7, 102, 101, 102, 1]);
        assert_eq!(batch.attention_mask, vec![1, 1, 1, 1, 1, 0]);
        assert_eq!(batch.padded_tokens(), 6);
    }

    #[test]
    fn mean_pooling_ignores_padding_and_cls_takes_first_token() {
        // batch 2, seq 2, dim 2; second text has one real token, its padding row must not count.
        let hidden = [1.0, 2.0, 3.0, 4.0, 10.0, 20.0, 99.0, 99.0];
        let mean = pool(&hidden, &[2, 1], 2, 2, Pooling::Mean);
        assert_eq!(mean, vec![vec![2.0, 3.0], vec![10.0, 20.0]]);
        let cls = pool(&hidden, &[2, 1], 2, 2, Pooling::Cls);
        assert_eq!(cls, vec![vec![1.0, 2.0], vec![10.0, 20.0]]);
    }

    proptest! {
        #[test]
        fn normalize_gives_unit_norm(v in proptest::collection::vec(-100f32..100.0, 1..64)) {
            let mut v = v;
            prop_assume!(v.iter().any(|x| x.abs() > 1e-3));
            normalize(&mut v);
            let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            prop_assert!((n - 1.0).abs() < 1e-4);
        }

        #[test]
        fn padding_preserves_every_text(lens in proptest::collection::vec(0usize..20, 1..10)) {
            let texts: Vec<Vec<i64>> = lens.iter().enumerate()
                .map(|(i, &n)| (0..n as i64).map(|t| t + 10 * i as i64 + 2).collect()).collect();
            let batch = PaddedBatch::new(texts.iter().map(Vec::as_slice), 0);
            prop_assert_eq!(batch.seq, *lens.iter().max().unwrap_or(&0));
            for (i, t) in texts.iter().enumerate() {
                let row = &batch.input_ids[i * batch.seq..(i + 1) * batch.seq];
                prop_assert_eq!(&row[..t.len()], t.as_slice());
                prop_assert!(row[t.len()..].iter().all(|&x| x == 0));
                let mask = &batch.attention_mask[i * batch.seq..(i + 1) * batch.seq];
                prop_assert_eq!(mask.iter().sum::<i64>() as usize, t.len());
            }
        }
    }
}

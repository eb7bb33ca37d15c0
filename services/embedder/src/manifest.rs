//! The models manifest written by `scripts/setup`: which models an embedder can serve and how
//! (ONNX file, tokenizer, dimension, max sequence length, pooling, normalisation, prefixes).

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::EmbedError;

/// File name of the manifest inside the models directory.
pub const MANIFEST_FILE: &str = "manifest.json";

/// `manifest.json`: the models and which one an empty request model name selects.
#[derive(Debug, Clone, Deserialize)]
pub struct Manifest {
    #[serde(default)]
    pub default: String,
    pub models: Vec<ModelSpec>,
}

/// How token vectors become one sentence vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pooling {
    /// Mean over the attention mask (sentence-transformers' `pooling_mode_mean_tokens`).
    Mean,
    /// The first ([CLS]) token.
    Cls,
}

impl Pooling {
    pub fn as_str(self) -> &'static str {
        match self {
            Pooling::Mean => "mean",
            Pooling::Cls => "cls",
        }
    }
}

/// One served model. Paths are absolute after [`Manifest::load`].
#[derive(Debug, Clone, Deserialize)]
pub struct ModelSpec {
    pub name: String,
    /// ONNX graph: inputs `input_ids`, `attention_mask` (int64 [batch, seq]); output
    /// `last_hidden_state` (float32 [batch, seq, dim]).
    pub model: PathBuf,
    /// Hugging Face `tokenizer.json`.
    pub tokenizer: PathBuf,
    pub dim: usize,
    /// Longest input in tokens (special tokens included); longer texts are truncated.
    pub max_seq_len: usize,
    pub pooling: Pooling,
    /// Default of the request's `normalize` flag.
    pub normalize: bool,
    /// Token id used for padding (BERT 0, MPNet 1).
    pub pad_id: u32,
    #[serde(default)]
    pub query_prefix: String,
    #[serde(default)]
    pub passage_prefix: String,
    /// Precision of the model's weights: fp32 (the export) or int8 (`scripts/quantize_onnx.py`).
    #[serde(default)]
    pub precision: Precision,
    /// ONNX Runtime graph optimizers this model's session turns off (session option
    /// `optimization.disable_specified_optimizers`); the int8 variants turn off
    /// SkipLayerNormFusion, whose CPU kernel made them ~1.4× slower (scripts/quantize_onnx.py).
    #[serde(default)]
    pub disabled_optimizers: Vec<String>,
}

/// Weight precision of a served model.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    Fp32,
    /// Dynamically quantized: int8 weights, activations quantized at run time.
    Int8,
}

impl Precision {
    pub fn as_str(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Int8 => "int8",
        }
    }
}

impl Manifest {
    /// Reads `<dir>/manifest.json`, resolves file paths against `dir` and validates it.
    pub fn load(dir: &Path) -> Result<Self, EmbedError> {
        let path = dir.join(MANIFEST_FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| {
            EmbedError::Manifest(format!(
                "cannot read {}: {e} (run scripts/setup to download and export the models)",
                path.display()
            ))
        })?;
        let mut manifest: Manifest = serde_json::from_str(&text)
            .map_err(|e| EmbedError::Manifest(format!("{}: {e}", path.display())))?;
        for m in &mut manifest.models {
            m.model = dir.join(&m.model);
            m.tokenizer = dir.join(&m.tokenizer);
        }
        manifest.validate()?;
        Ok(manifest)
    }

    /// Keeps only the named models (all when `names` is empty) and fixes the default.
    pub fn select(mut self, names: &[String]) -> Result<Self, EmbedError> {
        if names.is_empty() {
            return Ok(self);
        }
        for n in names {
            if !self.models.iter().any(|m| &m.name == n) {
                return Err(EmbedError::Manifest(format!(
                    "model {n:?} is not in the manifest; available: {}",
                    self.names().join(", ")
                )));
            }
        }
        self.models.retain(|m| names.contains(&m.name));
        if !names.contains(&self.default) {
            self.default = names[0].clone();
        }
        Ok(self)
    }

    pub fn names(&self) -> Vec<String> {
        self.models.iter().map(|m| m.name.clone()).collect()
    }

    fn validate(&mut self) -> Result<(), EmbedError> {
        let bad = |msg: String| Err(EmbedError::Manifest(msg));
        if self.models.is_empty() {
            return bad("no models in the manifest".into());
        }
        let mut seen = HashSet::new();
        for m in &self.models {
            if !seen.insert(m.name.as_str()) {
                return bad(format!("model {:?} listed twice", m.name));
            }
            if m.name.is_empty() || m.dim == 0 || m.max_seq_len < 2 {
                return bad(format!("model {:?}: name, dim and max_seq_len (>= 2) are required", m.name));
            }
            // The list goes into one comma-separated session option.
            if let Some(o) = m.disabled_optimizers.iter().find(|o| o.is_empty() || o.contains(',')) {
                return bad(format!("model {:?}: disabled optimizer {o:?} is not a name", m.name));
            }
        }
        if self.default.is_empty() {
            self.default = self.models[0].name.clone();
        } else if !seen.contains(self.default.as_str()) {
            return bad(format!("default model {:?} is not listed", self.default));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, json: &str) {
        std::fs::write(dir.join(MANIFEST_FILE), json).expect("write manifest");
    }

    const ONE: &str = r#"{"models":[{"name":"m","model":"m/model.onnx","tokenizer":"m/tokenizer.json",
        "dim":4,"max_seq_len":8,"pooling":"mean","normalize":true,"pad_id":0}]}"#;

    #[test]
    fn resolves_paths_and_defaults_to_first_model() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(dir.path(), ONE);
        let m = Manifest::load(dir.path()).expect("manifest");
        assert_eq!(m.default, "m");
        assert_eq!(m.models[0].model, dir.path().join("m/model.onnx"));
        assert_eq!(m.models[0].pooling, Pooling::Mean);
    }

    #[test]
    fn precision_defaults_to_fp32_and_int8_entries_carry_their_disabled_optimizers() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(dir.path(), ONE);
        let m = Manifest::load(dir.path()).expect("manifest");
        assert_eq!((m.models[0].precision, m.models[0].disabled_optimizers.len()), (Precision::Fp32, 0));

        let int8 = ONE.replace(
            r#""pad_id":0}"#,
            r#""pad_id":0,"precision":"int8","disabled_optimizers":["SkipLayerNormFusion"]}"#,
        );
        write(dir.path(), &int8);
        let m = Manifest::load(dir.path()).expect("manifest");
        assert_eq!(m.models[0].precision, Precision::Int8);
        assert_eq!(m.models[0].precision.as_str(), "int8");
        assert_eq!(m.models[0].disabled_optimizers, ["SkipLayerNormFusion"]);

        // One session option holds the list, comma-separated: a name with a comma is refused.
        write(dir.path(), &int8.replace("SkipLayerNormFusion", "A,B"));
        let err = Manifest::load(dir.path()).expect_err("comma");
        assert!(err.to_string().contains("disabled optimizer \"A,B\""), "{err}");
        write(dir.path(), &int8.replace(r#""int8""#, r#""int4""#));
        assert!(Manifest::load(dir.path()).is_err(), "unknown precision");
    }

    #[test]
    fn missing_manifest_says_to_run_setup() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = Manifest::load(dir.path()).expect_err("no manifest");
        assert!(err.to_string().contains("scripts/setup"), "{err}");
    }

    #[test]
    fn rejects_unknown_default_and_duplicates() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(dir.path(), &ONE.replace(r#"{"models""#, r#"{"default":"x","models""#));
        assert!(Manifest::load(dir.path()).is_err());
        let entry = r#"{"name":"m","model":"a","tokenizer":"b","dim":4,"max_seq_len":8,"pooling":"cls","normalize":false,"pad_id":0}"#;
        write(dir.path(), &format!(r#"{{"models":[{entry},{entry}]}}"#));
        let err = Manifest::load(dir.path()).expect_err("duplicate");
        assert!(err.to_string().contains("twice"), "{err}");
    }

    #[test]
    fn select_filters_models() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(dir.path(), ONE);
        let m = Manifest::load(dir.path()).expect("manifest");
        assert!(m.clone().select(&["nope".into()]).is_err());
        assert_eq!(m.select(&["m".into()]).expect("select").names(), vec!["m"]);
    }
}

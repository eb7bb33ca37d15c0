//! `ragd install-models`: copies models from one models directory to another — what a
//! container's init step runs to fill the `/models` volume of a pod from the "fat" image (whose
//! models live in `/opt/ragd/models`), reading the same `manifest.json` the embedder reads.
//!
//! Idempotent (a file already there with the same size is kept, so a restarted init container
//! does not copy again) and crash-safe (each file is written under a temporary name and renamed;
//! the manifest is written last, so an embedder never sees a manifest naming a missing file).
//! The result is loaded as the embedder would load it before the command succeeds.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use ragd_embedder::manifest::{MANIFEST_FILE, Manifest};

#[derive(Debug, clap::Args)]
pub struct InstallModelsArgs {
    /// Models directory to copy from (holds manifest.json).
    #[arg(long)]
    from: PathBuf,
    /// Models directory to fill (created if missing).
    #[arg(long)]
    to: PathBuf,
    /// Embedding models of the manifest to install (comma-separated); default: all of them.
    #[arg(long, value_delimiter = ',')]
    models: Vec<String>,
    /// Other subdirectories of --from to copy as they are (comma-separated), e.g. a language
    /// model's directory: `--include SmolLM2-135M-Instruct`.
    #[arg(long, value_delimiter = ',')]
    include: Vec<String>,
}

pub fn install(args: InstallModelsArgs) -> anyhow::Result<()> {
    let source = Manifest::load(&args.from)
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .select(&args.models)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    std::fs::create_dir_all(&args.to).with_context(|| format!("cannot create {}", args.to.display()))?;
    let mut dirs: Vec<PathBuf> = Vec::new();
    for m in &source.models {
        for file in [&m.model, &m.tokenizer] {
            let rel = file
                .strip_prefix(&args.from)
                .with_context(|| format!("{}: outside {}", file.display(), args.from.display()))?;
            if let Some(parent) = rel.parent().filter(|p| !p.as_os_str().is_empty())
                && !dirs.iter().any(|d| d == parent)
            {
                dirs.push(parent.to_path_buf());
            }
        }
    }
    for name in &args.include {
        let rel = Path::new(name);
        if rel.is_absolute() || rel.components().any(|c| matches!(c, std::path::Component::ParentDir)) {
            bail!("--include {name}: name a subdirectory of --from");
        }
        if !args.from.join(rel).is_dir() {
            bail!("--include {name}: {} is not a directory", args.from.join(rel).display());
        }
        dirs.push(rel.to_path_buf());
    }
    let (mut copied, mut kept, mut bytes) = (0usize, 0usize, 0u64);
    for dir in &dirs {
        copy_dir(&args.from.join(dir), &args.to.join(dir), &mut copied, &mut kept, &mut bytes)?;
    }
    // The manifest, with the selected models only; written last.
    let text = std::fs::read_to_string(args.from.join(MANIFEST_FILE))?;
    let mut raw: serde_json::Value = serde_json::from_str(&text)?;
    let names: Vec<&str> = source.models.iter().map(|m| m.name.as_str()).collect();
    if let Some(models) = raw.get_mut("models").and_then(|v| v.as_array_mut()) {
        models.retain(|m| m.get("name").and_then(|n| n.as_str()).is_some_and(|n| names.contains(&n)));
    }
    raw["default"] = serde_json::Value::String(source.default.clone());
    write_atomic(&args.to.join(MANIFEST_FILE), serde_json::to_string_pretty(&raw)?.as_bytes())?;
    let installed =
        Manifest::load(&args.to).map_err(|e| anyhow::anyhow!("the installed models do not load: {e}"))?;
    for m in &installed.models {
        for file in [&m.model, &m.tokenizer] {
            if !file.is_file() {
                bail!("model {}: {} is missing after the copy", m.name, file.display());
            }
        }
    }
    eprintln!(
        "installed {} model(s) ({}) and {} other dir(s) into {}: {copied} file(s) copied ({:.1} MB), {kept} already there",
        installed.models.len(),
        names.join(", "),
        args.include.len(),
        args.to.display(),
        bytes as f64 / 1e6,
    );
    Ok(())
}

fn copy_dir(
    from: &Path,
    to: &Path,
    copied: &mut usize,
    kept: &mut usize,
    bytes: &mut u64,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(to).with_context(|| format!("cannot create {}", to.display()))?;
    for entry in std::fs::read_dir(from).with_context(|| format!("cannot read {}", from.display()))? {
        let entry = entry?;
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        let meta = std::fs::metadata(&src)?;
        if meta.is_dir() {
            copy_dir(&src, &dst, copied, kept, bytes)?;
        } else if std::fs::metadata(&dst).is_ok_and(|d| d.len() == meta.len()) {
            *kept += 1;
        } else {
            let tmp = dst.with_extension("ragd-partial");
            std::fs::copy(&src, &tmp)
                .with_context(|| format!("cannot copy {} to {}", src.display(), tmp.display()))?;
            std::fs::rename(&tmp, &dst)?;
            *copied += 1;
            *bytes += meta.len();
        }
    }
    Ok(())
}

fn write_atomic(path: &Path, data: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension("ragd-partial");
    std::fs::write(&tmp, data).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(from: &Path, to: &Path, models: &[&str], include: &[&str]) -> InstallModelsArgs {
        InstallModelsArgs {
            from: from.into(),
            to: to.into(),
            models: models.iter().map(|s| s.to_string()).collect(),
            include: include.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// A models directory with two models and a language-model directory, written by hand.
    fn source(dir: &Path) {
        for (name, size) in [("a", 10usize), ("b", 20)] {
            std::fs::create_dir_all(dir.join(name)).expect("mkdir");
            std::fs::write(dir.join(name).join("model.onnx"), vec![1u8; size]).expect("write");
            std::fs::write(dir.join(name).join("tokenizer.json"), "{}").expect("write");
            std::fs::write(dir.join(name).join("model.json"), "{}").expect("write");
        }
        std::fs::create_dir_all(dir.join("llm")).expect("mkdir");
        std::fs::write(dir.join("llm/m.gguf"), "gguf").expect("write");
        let spec = |n: &str| {
            format!(
                r#"{{"name":"{n}","model":"{n}/model.onnx","tokenizer":"{n}/tokenizer.json","dim":4,"max_seq_len":8,"pooling":"mean","normalize":true,"pad_id":0}}"#
            )
        };
        std::fs::write(
            dir.join(MANIFEST_FILE),
            format!(r#"{{"default":"b","models":[{},{}]}}"#, spec("a"), spec("b")),
        )
        .expect("write");
    }

    #[test]
    fn installs_the_selected_models_and_included_dirs_and_is_idempotent() {
        let (from, to) = (tempfile::tempdir().expect("tmp"), tempfile::tempdir().expect("tmp"));
        source(from.path());
        let dest = to.path().join("models");
        install(args(from.path(), &dest, &["a"], &["llm"])).expect("install");
        assert_eq!(std::fs::read(dest.join("a/model.onnx")).expect("copied"), vec![1u8; 10]);
        assert!(dest.join("a/model.json").exists(), "the model's whole directory is copied");
        assert!(!dest.join("b").exists(), "b was not asked for");
        assert_eq!(std::fs::read_to_string(dest.join("llm/m.gguf")).expect("copied"), "gguf");
        let m: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dest.join(MANIFEST_FILE)).expect("manifest"))
                .expect("json");
        assert_eq!(m["default"], "a", "the default follows the selection");
        assert_eq!(m["models"].as_array().expect("models").len(), 1);
        // Again: nothing copied, same result.
        install(args(from.path(), &dest, &["a"], &["llm"])).expect("install again");
        assert!(!dest.join("a/model.onnx.ragd-partial").exists());
    }

    #[test]
    fn refuses_unknown_models_and_escaping_includes() {
        let (from, to) = (tempfile::tempdir().expect("tmp"), tempfile::tempdir().expect("tmp"));
        source(from.path());
        let e = install(args(from.path(), to.path(), &["nope"], &[])).expect_err("unknown model");
        assert!(e.to_string().contains("nope"), "{e}");
        let e = install(args(from.path(), to.path(), &[], &["../x"])).expect_err("escape");
        assert!(e.to_string().contains("--include ../x"), "{e}");
        let e = install(args(to.path(), from.path(), &[], &[])).expect_err("no manifest");
        assert!(e.to_string().contains("manifest.json"), "{e}");
    }
}

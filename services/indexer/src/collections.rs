//! The collections registry: ragd's metadata of every collection (store spec, embedding model,
//! chunking policy), persisted as one JSON file in the data directory and rewritten atomically
//! and durably (temp file + fsync + rename + fsync of the directory) on every change.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use serde::{Deserialize, Serialize};

use crate::chunk::Chunking;
use crate::config::ExactPrecision;
use crate::error::IndexError;
use crate::keyword::KeywordConfig;
use crate::store::StoreSpec;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CollectionMeta {
    pub store: StoreSpec,
    /// Embedding model name as served by the embedder.
    pub model: String,
    pub chunking: Chunking,
    /// The keyword (BM25) index, if the collection has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keyword: Option<KeywordConfig>,
    /// Index only each document's first this many chunks (None: all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_chunks: Option<u32>,
    /// How the resident exact engine stores the vectors (None: collections made before it was
    /// settable, or without an exact engine — the server's `--exact-precision`, no rescoring).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<ExactStorage>,
}

/// A collection's storage in the resident exact engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExactStorage {
    pub precision: ExactPrecision,
    /// Oversampling of f32 rescoring (0: none).
    #[serde(default)]
    pub rescore: u32,
}

/// Checks a collection name: 1–64 letters, digits, `_` or `-`.
pub fn validate_name(name: &str) -> Result<(), IndexError> {
    let ok = (1..=64).contains(&name.len())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if ok {
        Ok(())
    } else {
        Err(IndexError::invalid(
            "name",
            format!("{}: use 1-64 letters, digits, _ or -", ragd_core::status::quote(name)),
        ))
    }
}

#[derive(Debug)]
pub struct Registry {
    path: PathBuf,
    collections: RwLock<BTreeMap<String, CollectionMeta>>,
}

impl Registry {
    /// Loads `<dir>/collections.json` (empty if absent), creating `dir` if it does not exist
    /// yet — whatever the store, the registry needs it (start-up, not the first write, fails when
    /// it cannot be made).
    pub fn load(dir: &Path) -> Result<Self, IndexError> {
        std::fs::create_dir_all(dir).map_err(|e| IndexError::Store(format!("{}: {e}", dir.display())))?;
        let path = dir.join("collections.json");
        let collections = match std::fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text)
                .map_err(|e| IndexError::Store(format!("{}: {e}", path.display())))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(IndexError::Store(format!("{}: {e}", path.display()))),
        };
        Ok(Self { path, collections: RwLock::new(collections) })
    }

    /// The data directory the registry lives in.
    pub fn dir(&self) -> &Path {
        self.path.parent().unwrap_or(Path::new("."))
    }

    pub fn get(&self, name: &str) -> Result<CollectionMeta, IndexError> {
        self.read()?.get(name).cloned().ok_or_else(|| IndexError::CollectionNotFound(name.to_string()))
    }

    pub fn all(&self) -> Result<Vec<CollectionMeta>, IndexError> {
        Ok(self.read()?.values().cloned().collect())
    }

    pub fn insert(&self, meta: CollectionMeta) -> Result<(), IndexError> {
        let mut map = self.collections.write().map_err(|_| poisoned())?;
        if map.contains_key(&meta.store.name) {
            return Err(IndexError::CollectionExists(meta.store.name));
        }
        map.insert(meta.store.name.clone(), meta);
        self.save(&map)
    }

    /// Replaces a collection's keyword index settings and its store spec (a rebuilt storage's)
    /// — NOT_FOUND once it was dropped.
    pub fn set_keyword(
        &self,
        name: &str,
        keyword: Option<KeywordConfig>,
        store: StoreSpec,
    ) -> Result<CollectionMeta, IndexError> {
        let mut map = self.collections.write().map_err(|_| poisoned())?;
        let mut updated =
            map.get(name).cloned().ok_or_else(|| IndexError::CollectionNotFound(name.to_string()))?;
        updated.keyword = keyword;
        updated.store = store;
        // The file first: memory changes only once the new registry is durable.
        let mut next = map.clone();
        next.insert(name.to_string(), updated.clone());
        self.save(&next)?;
        *map = next;
        Ok(updated)
    }

    pub fn remove(&self, name: &str) -> Result<(), IndexError> {
        let mut map = self.collections.write().map_err(|_| poisoned())?;
        map.remove(name).ok_or_else(|| IndexError::CollectionNotFound(name.to_string()))?;
        self.save(&map)
    }

    fn read(&self) -> Result<std::sync::RwLockReadGuard<'_, BTreeMap<String, CollectionMeta>>, IndexError> {
        self.collections.read().map_err(|_| poisoned())
    }

    /// Replaces the file atomically and durably: a temp file, synced, renamed over the old one,
    /// then the directory synced (so the rename itself survives a power loss).
    fn save(&self, map: &BTreeMap<String, CollectionMeta>) -> Result<(), IndexError> {
        let tmp = self.path.with_extension("json.tmp");
        let text = serde_json::to_string_pretty(map).map_err(|e| IndexError::Store(e.to_string()))?;
        let dir = self.path.parent().unwrap_or(Path::new("."));
        std::fs::write(&tmp, text)
            .and_then(|()| std::fs::File::open(&tmp)?.sync_all())
            .and_then(|()| std::fs::rename(&tmp, &self.path))
            .and_then(|()| crate::store::journal::sync_dir(dir))
            .map_err(|e| IndexError::Store(format!("{}: {e}", self.path.display())))
    }
}

fn poisoned() -> IndexError {
    IndexError::Store("collections registry lock poisoned".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Distance;

    fn meta(name: &str) -> CollectionMeta {
        CollectionMeta {
            store: StoreSpec {
                name: name.into(),
                dim: 4,
                distance: Distance::Cosine,
                shards: 2,
                indexing_threshold_kb: None,
                replication_factor: None,
                write_consistency_factor: None,
                on_disk: None,
                sparse: true,
            },
            model: "m".into(),
            chunking: Chunking::default(),
            keyword: None,
            max_chunks: None,
            exact: None,
        }
    }

    #[test]
    fn persists_across_reloads() {
        let dir = tempfile::tempdir().expect("tempdir");
        let r = Registry::load(dir.path()).expect("load");
        r.insert(meta("a")).expect("insert");
        r.insert(meta("b")).expect("insert");
        assert!(matches!(r.insert(meta("a")), Err(IndexError::CollectionExists(_))));
        r.remove("b").expect("remove");
        let again = Registry::load(dir.path()).expect("reload");
        assert_eq!(again.all().expect("all"), vec![meta("a")]);
        assert!(matches!(again.get("b"), Err(IndexError::CollectionNotFound(_))));
    }

    #[test]
    fn a_data_directory_that_does_not_exist_yet_is_created() {
        let dir = tempfile::tempdir().expect("tempdir");
        let new = dir.path().join("new/data");
        let r = Registry::load(&new).expect("load creates the directory");
        r.insert(meta("a")).expect("the first insert can write collections.json");
        assert!(new.join("collections.json").is_file());
    }

    #[test]
    fn names_are_validated() {
        for ok in ["a", "capitals_2024", "A-b"] {
            validate_name(ok).expect(ok);
        }
        for bad in ["", "has space", "slash/x", "dot.x", &"x".repeat(65)] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
    }
}

//! Snapshots of collections on disk: `<data>/snapshots/<collection>/<name>/`, each a
//! `manifest.json` (format, time, point count, size and the collection's registry entry: model,
//! chunking, keyword settings, store spec) next to the store's copy of the shards
//! (`shard-<i>/`). A snapshot is built in `.partial-<name>/` and renamed into place once its
//! manifest is durable, so a crash leaves no half snapshot under a real name (the partial
//! directories are removed at start-up). Snapshot names are per collection, as in Qdrant.
//!
//! Everything here blocks (file system): callers run it on the blocking pool.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::collections::CollectionMeta;
use crate::error::IndexError;
use crate::store::journal::sync_dir;

/// The manifest's file name inside a snapshot directory.
pub const MANIFEST: &str = "manifest.json";
/// The manifest format this indexer writes and reads.
pub const FORMAT: u32 = 1;
/// Prefix of a snapshot being built.
const PARTIAL: &str = ".partial-";

/// What a snapshot holds besides the shards.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub name: String,
    /// Seconds since the Unix epoch.
    pub created_unix: u64,
    pub points: u64,
    /// Bytes of the snapshot's files (shards and manifest).
    pub size_bytes: u64,
    /// The collection's registry entry when the snapshot was taken (its `store.name` is the
    /// collection's name).
    pub meta: CollectionMeta,
}

impl Manifest {
    pub fn collection(&self) -> &str {
        &self.meta.store.name
    }
}

/// Checks a snapshot name: 1–128 letters, digits, `_`, `-` or `.`, not starting with `.`.
pub fn validate_name(name: &str) -> Result<(), IndexError> {
    let ok = (1..=128).contains(&name.len())
        && !name.starts_with('.')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if ok {
        Ok(())
    } else {
        Err(IndexError::invalid(
            "name",
            format!(
                "snapshot {}: use 1-128 letters, digits, _, - or . (not first)",
                ragd_core::status::quote(name)
            ),
        ))
    }
}

/// The default name of a snapshot of `collection` taken now.
pub fn default_name(collection: &str) -> String {
    format!("{collection}-{}", ragd_core::clock::file_stamp())
}

/// The snapshots under one directory.
#[derive(Debug, Clone)]
pub struct Snapshots {
    dir: PathBuf,
}

fn io_err(path: &Path, e: impl std::fmt::Display) -> IndexError {
    IndexError::Store(format!("{}: {e}", path.display()))
}

impl Snapshots {
    pub fn new(dir: &Path) -> Self {
        Self { dir: dir.to_path_buf() }
    }

    fn collection_dir(&self, collection: &str) -> PathBuf {
        self.dir.join(collection)
    }

    fn path(&self, collection: &str, name: &str) -> PathBuf {
        self.collection_dir(collection).join(name)
    }

    fn partial(&self, collection: &str, name: &str) -> PathBuf {
        self.collection_dir(collection).join(format!("{PARTIAL}{name}"))
    }

    /// Reserves `name` and returns the (new, empty) directory to build the snapshot in:
    /// SNAPSHOT_EXISTS when a snapshot of that name exists or is being built.
    pub fn begin(&self, collection: &str, name: &str) -> Result<PathBuf, IndexError> {
        let exists = || IndexError::SnapshotExists { collection: collection.into(), name: name.into() };
        if self.path(collection, name).exists() {
            return Err(exists());
        }
        let parent = self.collection_dir(collection);
        std::fs::create_dir_all(&parent).map_err(|e| io_err(&parent, e))?;
        let partial = self.partial(collection, name);
        // create_dir (not _all) fails when another call is building the same name.
        match std::fs::create_dir(&partial) {
            Ok(()) => Ok(partial),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Err(exists()),
            Err(e) => Err(io_err(&partial, e)),
        }
    }

    /// Writes the manifest into the partial directory (its size counted in), makes it durable
    /// and renames the directory into place.
    pub fn commit(&self, mut manifest: Manifest) -> Result<Manifest, IndexError> {
        let (collection, name) = (manifest.collection().to_string(), manifest.name.clone());
        let partial = self.partial(&collection, &name);
        let target = self.path(&collection, &name);
        let file = partial.join(MANIFEST);
        let encode =
            |m: &Manifest| serde_json::to_vec_pretty(m).map_err(|e| IndexError::Store(e.to_string()));
        // The manifest's own bytes are part of the size; its length does not depend on the
        // size's digits by more than the digits themselves, so two passes settle it.
        manifest.size_bytes = disk_bytes(&partial);
        for _ in 0..2 {
            let len = encode(&manifest)?.len() as u64;
            manifest.size_bytes = disk_bytes(&partial) + len;
        }
        let bytes = encode(&manifest)?;
        std::fs::write(&file, bytes)
            .and_then(|()| std::fs::File::open(&file)?.sync_all())
            .map_err(|e| io_err(&file, e))?;
        sync_tree(&partial).map_err(|e| io_err(&partial, e))?;
        std::fs::rename(&partial, &target).map_err(|e| io_err(&target, e))?;
        sync_dir(&self.collection_dir(&collection)).map_err(|e| io_err(&target, e))?;
        Ok(manifest)
    }

    /// Removes what [`Self::begin`] reserved (a snapshot that failed).
    pub fn abort(&self, collection: &str, name: &str) {
        let partial = self.partial(collection, name);
        if let Err(e) = std::fs::remove_dir_all(&partial) {
            tracing::warn!(dir = %partial.display(), error = %e, "could not remove a failed snapshot");
        }
    }

    /// A snapshot's manifest and directory: SNAPSHOT_NOT_FOUND when there is none.
    pub fn get(&self, collection: &str, name: &str) -> Result<(Manifest, PathBuf), IndexError> {
        let not_found = || IndexError::SnapshotNotFound { collection: collection.into(), name: name.into() };
        if validate_name(name).is_err() {
            return Err(not_found());
        }
        let dir = self.path(collection, name);
        let file = dir.join(MANIFEST);
        let text = match std::fs::read(&file) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(not_found()),
            Err(e) => return Err(io_err(&file, e)),
        };
        let manifest: Manifest = serde_json::from_slice(&text).map_err(|e| io_err(&file, e))?;
        if manifest.format != FORMAT {
            return Err(IndexError::failed_precondition(
                "snapshot",
                format!(
                    "snapshot {name:?} has format {}; this indexer reads format {FORMAT}",
                    manifest.format
                ),
            ));
        }
        Ok((manifest, dir))
    }

    /// Every complete snapshot of `collection` (None: of every collection), by collection,
    /// then oldest first. Unreadable manifests are reported in the log and left out.
    pub fn list(&self, collection: Option<&str>) -> Result<Vec<Manifest>, IndexError> {
        let collections: Vec<String> = match collection {
            Some(c) => vec![c.to_string()],
            None => match std::fs::read_dir(&self.dir) {
                Ok(entries) => entries
                    .flatten()
                    .filter(|e| e.path().is_dir())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
                Err(e) => return Err(io_err(&self.dir, e)),
            },
        };
        let mut out = Vec::new();
        for c in collections {
            let dir = self.collection_dir(&c);
            let entries = match std::fs::read_dir(&dir) {
                Ok(entries) => entries,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err(&dir, e)),
            };
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.starts_with('.') {
                    continue;
                }
                match self.get(&c, &name) {
                    Ok((m, _)) => out.push(m),
                    Err(e) => {
                        tracing::warn!(collection = %c, snapshot = %name, error = %e, "unreadable snapshot left out")
                    }
                }
            }
        }
        out.sort_by(|a, b| {
            (a.collection(), a.created_unix, &a.name).cmp(&(b.collection(), b.created_unix, &b.name))
        });
        Ok(out)
    }

    /// Deletes a snapshot: SNAPSHOT_NOT_FOUND when there is none.
    pub fn delete(&self, collection: &str, name: &str) -> Result<(), IndexError> {
        let (_, dir) = self.get(collection, name)?;
        // Renamed out of the way first, so a crash mid-removal leaves a partial directory
        // (removed at start-up), never a snapshot with a manifest and half its shards.
        let doomed = self.partial(collection, &format!("deleted-{name}"));
        std::fs::rename(&dir, &doomed).map_err(|e| io_err(&dir, e))?;
        std::fs::remove_dir_all(&doomed).map_err(|e| io_err(&doomed, e))
    }

    /// Removes the partial directories a crash left (start-up).
    pub fn clean(&self) -> Result<(), IndexError> {
        let Ok(collections) = std::fs::read_dir(&self.dir) else { return Ok(()) };
        for c in collections.flatten() {
            let Ok(entries) = std::fs::read_dir(c.path()) else { continue };
            for e in entries.flatten() {
                if e.file_name().to_string_lossy().starts_with(PARTIAL) {
                    tracing::warn!(dir = %e.path().display(), "removing a snapshot a crash left half-built");
                    std::fs::remove_dir_all(e.path()).map_err(|err| io_err(&e.path(), err))?;
                }
            }
        }
        Ok(())
    }
}

/// Bytes of the files under `dir` (lengths, not blocks).
fn disk_bytes(dir: &Path) -> u64 {
    sum_files(dir, &std::fs::Metadata::len)
}

/// `per_file` summed over every file under `dir` (unreadable entries count 0).
pub fn sum_files(dir: &Path, per_file: &dyn Fn(&std::fs::Metadata) -> u64) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => sum_files(&e.path(), per_file),
            Ok(m) => per_file(&m),
            Err(_) => 0,
        })
        .sum()
}

/// fsyncs every file and directory under `dir`.
pub fn sync_tree(dir: &Path) -> std::io::Result<()> {
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        if e.file_type()?.is_dir() {
            sync_tree(&e.path())?;
        } else {
            std::fs::File::open(e.path())?.sync_all()?;
        }
    }
    sync_dir(dir)
}

/// Copies the directory tree `from` to `to` (which must not exist), syncing nothing.
pub fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        let target = to.join(e.file_name());
        if e.file_type()?.is_dir() {
            copy_tree(&e.path(), &target)?;
        } else {
            std::fs::copy(e.path(), &target)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunk::Chunking;
    use crate::store::{Distance, StoreSpec};

    fn manifest(collection: &str, name: &str, created_unix: u64) -> Manifest {
        Manifest {
            format: FORMAT,
            name: name.into(),
            created_unix,
            points: 3,
            size_bytes: 0,
            meta: CollectionMeta {
                store: StoreSpec {
                    name: collection.into(),
                    dim: 4,
                    distance: Distance::Cosine,
                    shards: 1,
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
            },
        }
    }

    #[test]
    fn a_snapshot_is_listed_only_once_committed_and_counts_its_bytes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Snapshots::new(dir.path());
        let partial = s.begin("c", "one").expect("begin");
        std::fs::write(partial.join("data"), [7u8; 1000]).expect("write");
        assert!(s.list(None).expect("list").is_empty(), "a partial snapshot is not listed");
        assert!(matches!(s.get("c", "one"), Err(IndexError::SnapshotNotFound { .. })));
        assert!(matches!(s.begin("c", "one"), Err(IndexError::SnapshotExists { .. })), "being built");
        let m = s.commit(manifest("c", "one", 10)).expect("commit");
        let on_disk = std::fs::metadata(dir.path().join("c/one/manifest.json")).expect("manifest").len();
        assert_eq!(m.size_bytes, 1000 + on_disk, "data and manifest bytes");
        assert_eq!(s.get("c", "one").expect("get").0, m);
        assert!(matches!(s.begin("c", "one"), Err(IndexError::SnapshotExists { .. })), "taken");
        // Another collection may use the same name.
        s.begin("d", "one").expect("per-collection names");
        s.abort("d", "one");
        assert!(!dir.path().join("d/.partial-one").exists());
    }

    #[test]
    fn listing_sorts_by_collection_then_time_and_skips_what_is_unreadable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Snapshots::new(dir.path());
        for (c, n, t) in [("b", "late", 30), ("a", "x", 20), ("b", "early", 10)] {
            s.begin(c, n).expect("begin");
            s.commit(manifest(c, n, t)).expect("commit");
        }
        std::fs::create_dir_all(dir.path().join("b/garbage")).expect("dir without a manifest");
        let names = |v: Vec<Manifest>| v.into_iter().map(|m| m.name).collect::<Vec<_>>();
        assert_eq!(names(s.list(None).expect("all")), ["x", "early", "late"]);
        assert_eq!(names(s.list(Some("b")).expect("b")), ["early", "late"]);
        assert!(s.list(Some("none")).expect("unknown collection").is_empty());
        s.delete("b", "early").expect("delete");
        assert_eq!(names(s.list(Some("b")).expect("b")), ["late"]);
        assert!(matches!(s.delete("b", "early"), Err(IndexError::SnapshotNotFound { .. })));
    }

    #[test]
    fn a_crash_mid_snapshot_leaves_nothing_after_clean() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Snapshots::new(dir.path());
        s.begin("c", "half").expect("begin");
        s.clean().expect("clean");
        assert!(!dir.path().join("c/.partial-half").exists());
        s.begin("c", "half").expect("the name is free again");
    }

    #[test]
    fn names_are_validated_and_unknown_formats_refused() {
        for ok in ["a", "c-2026-12-03-10-00-00-123", "v1.2_x"] {
            validate_name(ok).expect(ok);
        }
        for bad in ["", ".hidden", "a/b", "..", "sp ace", &"x".repeat(129)] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Snapshots::new(dir.path());
        s.begin("c", "old").expect("begin");
        let mut m = manifest("c", "old", 1);
        m.format = 99;
        s.commit(m).expect("commit");
        let err = s.get("c", "old").expect_err("format 99");
        assert!(matches!(err, IndexError::FailedPrecondition { .. }), "{err}");
        // A name that could escape the directory is simply not found.
        assert!(matches!(s.get("c", "../c"), Err(IndexError::SnapshotNotFound { .. })));
    }
}

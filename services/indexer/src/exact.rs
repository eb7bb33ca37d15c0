//! The indexer's resident exact-search engine: for each collection, a copy of its vectors in a
//! [`ragd_exact::ExactIndex`] (loaded from the store at start, kept in sync with every upsert
//! and delete) behind a [`ragd_exact::coalesce::Coalescer`], so concurrent exact searches run as
//! one batch over the matrix. Unfiltered `exact` searches are answered here; the hits' payloads
//! come from the store. Filtered exact searches stay with the store (its filter engine).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use ragd_exact::coalesce::Coalescer;
use ragd_exact::{ExactIndex, Metric, Options};

use crate::collections::ExactStorage;
use crate::config::ExactPrecision;
use crate::error::IndexError;
use crate::store::{ChunkPoint, Distance, Hit, VectorStore};

/// The engine's ids of a mirror's chunks: allocated one by one (never derived from a hash, so
/// two chunks can never share an id), with the way back to `(doc_id, chunk)` for the payloads.
#[derive(Debug, Default)]
struct Keys {
    /// Each document's chunk ids by chunk number ([`NO_ID`] where a chunk has none); the
    /// length is one past the highest chunk mirrored. Looked up by `&str`: no allocation for a
    /// chunk already known.
    docs: HashMap<String, Vec<u64>>,
    by_id: HashMap<u64, (String, u32)>,
    next: u64,
}

/// A chunk number without an id in [`Keys::docs`].
const NO_ID: u64 = u64::MAX;

impl Keys {
    /// The id of `(doc_id, chunk)`, allocating one for a new chunk.
    fn id(&mut self, doc_id: &str, chunk: u32) -> u64 {
        let at = chunk as usize;
        if let Some(&id) = self.docs.get(doc_id).and_then(|ids| ids.get(at))
            && id != NO_ID
        {
            return id;
        }
        let id = self.next;
        self.next += 1;
        let ids = match self.docs.get_mut(doc_id) {
            Some(ids) => ids,
            None => self.docs.entry(doc_id.to_string()).or_default(),
        };
        if ids.len() <= at {
            ids.resize(at + 1, NO_ID);
        }
        ids[at] = id;
        self.by_id.insert(id, (doc_id.to_string(), chunk));
        id
    }

    /// Forgets `(doc_id, chunk)`, returning its id if it had one.
    fn remove(&mut self, doc_id: &str, chunk: u32) -> Option<u64> {
        let slot = self.docs.get_mut(doc_id)?.get_mut(chunk as usize)?;
        let id = std::mem::replace(slot, NO_ID);
        if id == NO_ID {
            return None;
        }
        self.by_id.remove(&id);
        Some(id)
    }

    /// One past the highest chunk of `doc_id` mirrored (0 when none).
    fn chunks(&self, doc_id: &str) -> u32 {
        self.docs.get(doc_id).map_or(0, |ids| ids.len() as u32)
    }
}

#[derive(Debug)]
struct Mirror {
    distance: Distance,
    storage: ExactStorage,
    index: Arc<RwLock<ExactIndex>>,
    coalescer: Coalescer,
    keys: Mutex<Keys>,
}

/// Settings of the resident exact engine.
#[derive(Debug, Clone, Copy)]
pub struct ExactSettings {
    /// For collections that name none.
    pub precision: ExactPrecision,
    /// Most queries executed as one batch.
    pub max_batch: usize,
    /// How long a batch waits for more queries once one has arrived (0: take what is queued).
    pub max_wait: Duration,
}

/// What a collection's mirror costs (DescribeCollection).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExactFootprint {
    pub storage: ExactStorage,
    pub bytes_per_vector: usize,
    pub resident_bytes: usize,
}

/// Resident copies of every collection's vectors.
#[derive(Debug)]
pub struct ExactMirrors {
    settings: ExactSettings,
    collections: RwLock<HashMap<String, Arc<Mirror>>>,
}

fn lock_err() -> IndexError {
    IndexError::Store("exact engine lock poisoned".into())
}

fn exact_err(e: ragd_exact::ExactError) -> IndexError {
    match e {
        ragd_exact::ExactError::InvalidArgument { field, reason } => IndexError::invalid(field, reason),
        e @ ragd_exact::ExactError::Stopped(_) => IndexError::StoreUnavailable(e.to_string()),
        e @ ragd_exact::ExactError::Poisoned => IndexError::Store(e.to_string()),
    }
}

impl ExactMirrors {
    pub fn new(settings: ExactSettings) -> Self {
        Self { settings, collections: RwLock::new(HashMap::new()) }
    }

    fn get(&self, name: &str) -> Option<Arc<Mirror>> {
        self.collections.read().ok()?.get(name).cloned()
    }

    /// The storage of a collection that asks for `storage` (None: the server's default).
    pub fn resolve(&self, storage: Option<ExactStorage>) -> ExactStorage {
        storage.unwrap_or(ExactStorage { precision: self.settings.precision, rescore: 0 })
    }

    /// Starts an empty mirror for a collection of dimension `dim`.
    pub fn create(
        &self,
        name: &str,
        dim: usize,
        distance: Distance,
        storage: Option<ExactStorage>,
    ) -> Result<(), IndexError> {
        let metric = match distance {
            Distance::Cosine => Metric::Cosine,
            Distance::Dot => Metric::InnerProduct,
            Distance::Euclid => Metric::L2,
        };
        let storage = self.resolve(storage);
        let options = Options {
            precision: storage.precision.engine(),
            rescore: storage.rescore as usize,
            ..Options::default()
        };
        let index = Arc::new(RwLock::new(ExactIndex::new(dim, metric, options).map_err(exact_err)?));
        let coalescer = Coalescer::new(index.clone(), self.settings.max_batch, self.settings.max_wait)
            .map_err(exact_err)?;
        let mirror = Mirror { distance, storage, index, coalescer, keys: Mutex::default() };
        self.collections.write().map_err(|_| lock_err())?.insert(name.to_string(), Arc::new(mirror));
        Ok(())
    }

    /// Loads a collection's vectors from the store (start-up).
    pub async fn load(
        &self,
        store: &dyn VectorStore,
        name: &str,
        dim: usize,
        distance: Distance,
        storage: Option<ExactStorage>,
    ) -> Result<usize, IndexError> {
        self.create(name, dim, distance, storage)?;
        let points = store.scan(name).await?;
        let n = points.len();
        self.add(name, &points)?;
        Ok(n)
    }

    /// The mirror's storage and size; None when the collection is not mirrored.
    pub fn footprint(&self, name: &str) -> Option<ExactFootprint> {
        let m = self.get(name)?;
        let index = m.index.read().ok()?;
        Some(ExactFootprint {
            storage: m.storage,
            bytes_per_vector: index.bytes_per_vector(),
            resident_bytes: index.resident_bytes(),
        })
    }

    pub fn drop_collection(&self, name: &str) {
        if let Ok(mut c) = self.collections.write() {
            c.remove(name);
        }
    }

    /// Mirrors an upsert (same ids replace).
    pub fn add(&self, name: &str, points: &[ChunkPoint]) -> Result<(), IndexError> {
        let Some(m) = self.get(name) else { return Ok(()) };
        let mut keys = m.keys.lock().map_err(|_| lock_err())?;
        let ids: Vec<u64> = points.iter().map(|p| keys.id(&p.doc_id, p.chunk)).collect();
        let vectors: Vec<f32> = points.iter().flat_map(|p| p.vector.iter().copied()).collect();
        m.index.write().map_err(|_| lock_err())?.add(&ids, &vectors).map_err(exact_err)?;
        Ok(())
    }

    /// Mirrors `delete_chunks_from`: drops chunks `from..` of each document.
    pub fn remove_from(&self, name: &str, docs: &[(String, u32)]) -> Result<(), IndexError> {
        let Some(m) = self.get(name) else { return Ok(()) };
        let mut keys = m.keys.lock().map_err(|_| lock_err())?;
        let mut ids = Vec::new();
        for (doc, from) in docs {
            let had = keys.chunks(doc);
            ids.extend((*from..had).filter_map(|c| keys.remove(doc, c)));
            if *from == 0 {
                keys.docs.remove(doc);
            } else if let Some(chunks) = keys.docs.get_mut(doc) {
                chunks.truncate(*from as usize);
            }
        }
        m.index.write().map_err(|_| lock_err())?.remove(&ids);
        Ok(())
    }

    /// Mirrors `delete_documents`.
    pub fn remove_documents(&self, name: &str, doc_ids: &[String]) -> Result<(), IndexError> {
        let docs: Vec<(String, u32)> = doc_ids.iter().map(|d| (d.clone(), 0)).collect();
        self.remove_from(name, &docs)
    }

    /// Exact top-k of each query, or None when this collection is not mirrored. Scores are the
    /// store's: similarities for cosine/dot, the euclidean distance (not squared) for euclid.
    pub async fn search(
        &self,
        store: &dyn VectorStore,
        name: &str,
        queries: &[Vec<f32>],
        k: usize,
        threshold: Option<f32>,
    ) -> Result<Option<Vec<Vec<Hit>>>, IndexError> {
        let Some(m) = self.get(name) else { return Ok(None) };
        let searches = queries.iter().map(|q| m.coalescer.search(q.clone(), k));
        let results = futures::future::join_all(searches).await;
        let mut out = Vec::with_capacity(results.len());
        for r in results {
            let neighbors = r.map_err(exact_err)?;
            let located: Vec<((String, u32), f32)> = {
                let keys = m.keys.lock().map_err(|_| lock_err())?;
                neighbors
                    .iter()
                    .filter_map(|n| {
                        let score = match m.distance {
                            Distance::Euclid => n.score.sqrt(),
                            _ => n.score,
                        };
                        keys.by_id.get(&n.id).map(|dc| (dc.clone(), score))
                    })
                    .collect()
            };
            let kept: Vec<((String, u32), f32)> = located
                .into_iter()
                .filter(|(_, s)| match (threshold, m.distance) {
                    (None, _) => true,
                    (Some(t), Distance::Euclid) => *s <= t,
                    (Some(t), _) => *s >= t,
                })
                .collect();
            let refs: Vec<(String, u32)> = kept.iter().map(|(dc, _)| dc.clone()).collect();
            let payloads = store.retrieve(name, &refs).await?;
            out.push(
                kept.into_iter()
                    .zip(payloads)
                    .filter_map(|((_, score), hit)| hit.map(|h| Hit { score, ..h }))
                    .collect(),
            );
        }
        Ok(Some(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_chunk_gets_its_own_id_and_keeps_it_until_removed() {
        let mut keys = Keys::default();
        let mut seen = std::collections::HashSet::new();
        for doc in ["a", "b", "a-very-long-document-id"] {
            for chunk in 0..100 {
                assert!(seen.insert(keys.id(doc, chunk)), "{doc}/{chunk} reused an id");
            }
        }
        let a7 = keys.id("a", 7);
        assert_eq!(keys.id("a", 7), a7, "a re-upserted chunk keeps its id");
        assert_eq!(keys.by_id[&a7], ("a".to_string(), 7));
        assert_eq!(keys.chunks("a"), 100);
        assert_eq!(keys.remove("a", 7), Some(a7));
        assert_eq!(keys.remove("a", 7), None);
        assert!(!keys.by_id.contains_key(&a7));
        assert_ne!(keys.id("a", 7), a7, "ids are never reused");
    }
}

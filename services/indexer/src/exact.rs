//! The indexer's resident exact-search engine: for each collection, a copy of its vectors in a
//! [`ragd_exact::ExactIndex`] (loaded from the store at start, kept in sync with every upsert
//! and delete) behind a [`ragd_exact::coalesce::Coalescer`], so concurrent exact searches run as
//! one batch over the matrix. Unfiltered `exact` searches are answered here; the hits' payloads
//! come from the store. Filtered exact searches stay with the store (its filter engine).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use ragd_exact::coalesce::Coalescer;
use ragd_exact::{ExactIndex, Metric, Options, Precision};

use crate::error::IndexError;
use crate::store::{ChunkPoint, Distance, Hit, VectorStore, point_uuid};

/// The engine's id of a chunk: the first half of its point UUID, which is also kept so the
/// payload can be fetched from the store.
fn key(doc_id: &str, chunk: u32) -> u64 {
    point_uuid(doc_id, chunk).as_u64_pair().0
}

#[derive(Debug)]
struct Mirror {
    distance: Distance,
    index: Arc<RwLock<ExactIndex>>,
    coalescer: Coalescer,
    /// (doc_id, chunk) of every key, and chunks per document (for deletes).
    keys: Mutex<HashMap<u64, (String, u32)>>,
    chunks: Mutex<HashMap<String, u32>>,
}

/// Settings of the resident exact engine.
#[derive(Debug, Clone, Copy)]
pub struct ExactSettings {
    pub precision: Precision,
    /// Most queries executed as one batch.
    pub max_batch: usize,
    /// How long a batch waits for more queries once one has arrived (0: take what is queued).
    pub max_wait: Duration,
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
    }
}

impl ExactMirrors {
    pub fn new(settings: ExactSettings) -> Self {
        Self { settings, collections: RwLock::new(HashMap::new()) }
    }

    fn get(&self, name: &str) -> Option<Arc<Mirror>> {
        self.collections.read().ok()?.get(name).cloned()
    }

    /// Starts an empty mirror for a collection of dimension `dim`.
    pub fn create(&self, name: &str, dim: usize, distance: Distance) -> Result<(), IndexError> {
        let metric = match distance {
            Distance::Cosine => Metric::Cosine,
            Distance::Dot => Metric::InnerProduct,
            Distance::Euclid => Metric::L2,
        };
        let options = Options { precision: self.settings.precision, ..Options::default() };
        let index = Arc::new(RwLock::new(ExactIndex::new(dim, metric, options).map_err(exact_err)?));
        let coalescer = Coalescer::new(index.clone(), self.settings.max_batch, self.settings.max_wait);
        let mirror = Mirror { distance, index, coalescer, keys: Mutex::default(), chunks: Mutex::default() };
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
    ) -> Result<usize, IndexError> {
        self.create(name, dim, distance)?;
        let points = store.scan(name).await?;
        let n = points.len();
        self.add(name, &points)?;
        Ok(n)
    }

    pub fn drop_collection(&self, name: &str) {
        if let Ok(mut c) = self.collections.write() {
            c.remove(name);
        }
    }

    /// Mirrors an upsert (same ids replace).
    pub fn add(&self, name: &str, points: &[ChunkPoint]) -> Result<(), IndexError> {
        let Some(m) = self.get(name) else { return Ok(()) };
        let ids: Vec<u64> = points.iter().map(|p| key(&p.doc_id, p.chunk)).collect();
        let vectors: Vec<f32> = points.iter().flat_map(|p| p.vector.iter().copied()).collect();
        m.index.write().map_err(|_| lock_err())?.add(&ids, &vectors).map_err(exact_err)?;
        let (mut keys, mut chunks) =
            (m.keys.lock().map_err(|_| lock_err())?, m.chunks.lock().map_err(|_| lock_err())?);
        for (id, p) in ids.iter().zip(points) {
            keys.insert(*id, (p.doc_id.clone(), p.chunk));
            let c = chunks.entry(p.doc_id.clone()).or_default();
            *c = (*c).max(p.chunk + 1);
        }
        Ok(())
    }

    /// Mirrors `delete_chunks_from`: drops chunks `from..` of each document.
    pub fn remove_from(&self, name: &str, docs: &[(String, u32)]) -> Result<(), IndexError> {
        let Some(m) = self.get(name) else { return Ok(()) };
        let (mut keys, mut chunks) =
            (m.keys.lock().map_err(|_| lock_err())?, m.chunks.lock().map_err(|_| lock_err())?);
        let mut ids = Vec::new();
        for (doc, from) in docs {
            let had = chunks.get(doc).copied().unwrap_or(0);
            for c in *from..had {
                let id = key(doc, c);
                keys.remove(&id);
                ids.push(id);
            }
            if *from == 0 {
                chunks.remove(doc);
            } else if had > *from {
                chunks.insert(doc.clone(), *from);
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
                        keys.get(&n.id).map(|dc| (dc.clone(), score))
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

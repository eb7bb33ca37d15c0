//! ragd's write-ahead journal for the embedded store.
//!
//! qdrant-edge 0.7.0 logs every update in its own WAL but never replays it when a shard is
//! loaded, so a write that has not been flushed into the segments is lost when the process dies.
//! The embedded store therefore writes each [`WriteBatch`] here first, as one record, and
//! acknowledges it only after the record is in the journal (in the OS page cache, or on the
//! disk after `fdatasync`, by [`Durability`]). At start-up every record is replayed into the
//! shards; once the shards have been flushed (a checkpoint), the journal files before it are
//! deleted.
//!
//! Files: `<root>/journal/<n>.log` (n = 1, 2, ...), appended in order; a checkpoint starts a new
//! file and deletes the older ones after the flush. A record is one frame:
//!
//! ```text
//! u32 len | u32 crc32 (of len and payload) | payload (len bytes)
//! payload: u64 seq | u64 incarnation | str collection
//!          | u32 n × (str doc_id, u32 chunk, str text, str metadata JSON, u32 dim, dim × f32
//!                     [, u32 nnz, nnz × u32 term, nnz × f32 weight])
//!          | u32 n × (str doc_id, u32 from_chunk) | u32 n × str doc_id
//! dim: the dense dimension; bit 31 set when the chunk's sparse (BM25) vector follows, so the
//!      records written before sparse vectors existed read the same.
//! str: u32 byte length | UTF-8 bytes; every integer and float little-endian
//! ```
//!
//! A frame that ends early or whose checksum does not match ends the journal: a write torn by
//! a crash is dropped (its batch was never acknowledged), never a reason to refuse to start.
//! Replaying a record twice is harmless: point ids derive from (document, chunk), an upsert
//! sets the points it names and a delete removes the points of the documents it names, so the
//! effect of a record on a point never depends on the state it meets.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use super::{ChunkPoint, SparseVector, WriteBatch};

/// When a write is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Durability {
    /// After the journal record is on the disk (`fdatasync`): survives a power loss or a kernel
    /// crash. Concurrent writes share one write and one sync (group commit).
    #[default]
    Fsync,
    /// After the journal record is in the OS page cache (`write`): survives the death of the
    /// process (SIGKILL, OOM kill, panic), not a power loss or a kernel crash.
    PageCache,
    /// No journal: writes are applied to the shards only, which persist them at a clean stop.
    /// A crash loses everything acknowledged since the last clean stop; for bulk loads that
    /// can be redone.
    None,
}

/// One journalled batch of one collection.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub seq: u64,
    /// Identifies one life of the collection: a record of a dropped and re-created collection
    /// of the same name is not replayed into the new one.
    pub incarnation: u64,
    pub collection: String,
    pub batch: WriteBatch,
}

/// What opening the journal found.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Recovered {
    pub records: Vec<Record>,
    /// Bytes dropped after the last whole record (a write torn by a crash).
    pub torn_bytes: u64,
    pub files: usize,
}

const HEADER: usize = 8;
/// Bit of a chunk's `dim` field saying that its sparse vector follows the dense one.
const SPARSE_FOLLOWS: u32 = 1 << 31;
/// Frames larger than this are taken as garbage (a torn length field), not allocated.
const MAX_FRAME: usize = 1 << 31;

/// Appends the frame of `r` to `out`.
pub fn encode(r: &Record, out: &mut Vec<u8>) {
    encode_batch(r.seq, r.incarnation, &r.collection, &r.batch, out);
}

/// Appends the frame of a record made of these parts to `out`.
pub fn encode_batch(seq: u64, incarnation: u64, collection: &str, b: &WriteBatch, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0; HEADER]);
    put_u64(out, seq);
    put_u64(out, incarnation);
    put_str(out, collection);
    put_u32(out, b.upserts.len() as u32);
    for p in &b.upserts {
        put_str(out, &p.doc_id);
        put_u32(out, p.chunk);
        put_str(out, &p.text);
        put_str(out, &serde_json::Value::Object(p.metadata.clone()).to_string());
        let sparse_flag = if p.sparse.is_some() { SPARSE_FOLLOWS } else { 0 };
        put_u32(out, p.vector.len() as u32 | sparse_flag);
        for x in &p.vector {
            out.extend_from_slice(&x.to_le_bytes());
        }
        if let Some(sparse) = &p.sparse {
            put_u32(out, sparse.indices.len() as u32);
            for i in &sparse.indices {
                out.extend_from_slice(&i.to_le_bytes());
            }
            for x in &sparse.values {
                out.extend_from_slice(&x.to_le_bytes());
            }
        }
    }
    put_u32(out, b.delete_chunks_from.len() as u32);
    for (doc, from) in &b.delete_chunks_from {
        put_str(out, doc);
        put_u32(out, *from);
    }
    put_u32(out, b.delete_documents.len() as u32);
    for doc in &b.delete_documents {
        put_str(out, doc);
    }
    let len = (out.len() - start - HEADER) as u32;
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    let crc = checksum(len, &out[start + HEADER..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// Decodes the whole frames at the start of `bytes`; returns them and the length they span.
/// Decoding stops at the first frame that is cut short, fails its checksum or does not parse.
pub fn decode(bytes: &[u8]) -> (Vec<Record>, usize) {
    let mut records = Vec::new();
    let mut at = 0;
    while bytes.len() - at >= HEADER {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap_or_default()) as usize;
        let crc = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().unwrap_or_default());
        let end = at + HEADER + len;
        if len == 0 || len > MAX_FRAME || end > bytes.len() {
            break;
        }
        let payload = &bytes[at + HEADER..end];
        if checksum(len as u32, payload) != crc {
            break;
        }
        match parse(payload) {
            Some(r) => records.push(r),
            None => break,
        }
        at = end;
    }
    (records, at)
}

fn checksum(len: u32, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&len.to_le_bytes());
    h.update(payload);
    h.finalize()
}

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_u32(out, s.len() as u32);
    out.extend_from_slice(s.as_bytes());
}

/// A cursor over a payload; every read checks the remaining length.
struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4).map(|b| u32::from_le_bytes(b.try_into().unwrap_or_default()))
    }
    fn u64(&mut self) -> Option<u64> {
        self.take(8).map(|b| u64::from_le_bytes(b.try_into().unwrap_or_default()))
    }
    fn str(&mut self) -> Option<String> {
        let n = self.u32()? as usize;
        String::from_utf8(self.take(n)?.to_vec()).ok()
    }
    /// A count of items that each take at least `min_bytes`, checked against what is left.
    /// `n` little-endian floats.
    fn f32s(&mut self, n: usize) -> Option<Vec<f32>> {
        Some(
            self.take(n.checked_mul(4)?)?
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap_or_default()))
                .collect(),
        )
    }

    fn count(&mut self, min_bytes: usize) -> Option<usize> {
        let n = self.u32()? as usize;
        (n.checked_mul(min_bytes)? <= self.0.len()).then_some(n)
    }
}

fn parse(payload: &[u8]) -> Option<Record> {
    let mut c = Cursor(payload);
    let seq = c.u64()?;
    let incarnation = c.u64()?;
    let collection = c.str()?;
    let mut batch = WriteBatch::default();
    for _ in 0..c.count(20)? {
        let doc_id = c.str()?;
        let chunk = c.u32()?;
        let text = c.str()?;
        let metadata = match serde_json::from_str(&c.str()?).ok()? {
            serde_json::Value::Object(m) => m,
            _ => return None,
        };
        let dim = c.u32()?;
        let vector = c.f32s((dim & !SPARSE_FOLLOWS) as usize)?;
        let sparse = if dim & SPARSE_FOLLOWS != 0 {
            let nnz = c.count(8)?;
            let indices = c
                .take(nnz * 4)?
                .chunks_exact(4)
                .map(|b| u32::from_le_bytes(b.try_into().unwrap_or_default()))
                .collect();
            Some(SparseVector { indices, values: c.f32s(nnz)? })
        } else {
            None
        };
        batch.upserts.push(ChunkPoint { doc_id, chunk, text, metadata, vector, sparse });
    }
    for _ in 0..c.count(8)? {
        let doc = c.str()?;
        batch.delete_chunks_from.push((doc, c.u32()?));
    }
    for _ in 0..c.count(4)? {
        batch.delete_documents.push(c.str()?);
    }
    c.0.is_empty().then_some(Record { seq, incarnation, collection, batch })
}

/// The journal's files: appends to the newest, deletes the older ones after a checkpoint.
#[derive(Debug)]
pub struct Journal {
    dir: PathBuf,
    file: File,
    /// Number of the file being appended to.
    current: u64,
    len: u64,
}

fn file_name(n: u64) -> String {
    format!("{n:012}.log")
}

/// The journal files in `dir`, oldest first.
fn files(dir: &Path) -> std::io::Result<Vec<(u64, PathBuf)>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let n = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".log"))
            .and_then(|n| n.parse::<u64>().ok());
        if let Some(n) = n {
            found.push((n, path));
        }
    }
    found.sort();
    Ok(found)
}

/// Makes a file's creation, rename or removal in `dir` durable.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

impl Journal {
    /// Opens the journal in `dir` (created if needed) and reads every whole record of every
    /// file, oldest first. The journal ends at the first frame that is not whole: it is cut off
    /// its file, and so is everything after it (a crash tears only the last write; anything
    /// after a bad frame is damage, and replaying past it would build a state that never was).
    pub fn open(dir: &Path) -> std::io::Result<(Self, Recovered)> {
        std::fs::create_dir_all(dir)?;
        let mut recovered = Recovered::default();
        let existing = files(dir)?;
        recovered.files = existing.len();
        let mut torn = false;
        for (_, path) in &existing {
            let mut bytes = Vec::new();
            File::open(path)?.read_to_end(&mut bytes)?;
            let valid = if torn {
                0
            } else {
                let (records, valid) = decode(&bytes);
                recovered.records.extend(records);
                valid
            };
            if valid < bytes.len() {
                torn = true;
                recovered.torn_bytes += (bytes.len() - valid) as u64;
                let f = OpenOptions::new().write(true).open(path)?;
                f.set_len(valid as u64)?;
                f.sync_all()?;
            }
        }
        // Appends go to a new file, so a torn file is never written after.
        let current = existing.last().map_or(1, |(n, _)| n + 1);
        let file = OpenOptions::new().create(true).append(true).open(dir.join(file_name(current)))?;
        sync_dir(dir)?;
        Ok((Self { dir: dir.to_path_buf(), file, current, len: 0 }, recovered))
    }

    /// Appends encoded frames; with `sync`, returns once they are on the disk.
    pub fn append(&mut self, frames: &[u8], sync: bool) -> std::io::Result<()> {
        self.file.write_all(frames)?;
        self.len += frames.len() as u64;
        if sync {
            self.file.sync_data()?;
        }
        Ok(())
    }

    /// Bytes appended to the current file.
    pub fn current_bytes(&self) -> u64 {
        self.len
    }

    /// Cuts the current file back to `len` bytes (after a failed append).
    pub fn truncate_to(&mut self, len: u64) -> std::io::Result<()> {
        self.file.set_len(len)?;
        self.file.sync_data()?;
        self.len = len;
        Ok(())
    }

    /// Starts a new file; returns the number of the last file that a checkpoint may delete
    /// once everything written so far is flushed into the shards.
    pub fn rotate(&mut self) -> std::io::Result<u64> {
        let next = self.current + 1;
        let file = OpenOptions::new().create(true).append(true).open(self.dir.join(file_name(next)))?;
        sync_dir(&self.dir)?;
        let done = self.current;
        (self.file, self.current, self.len) = (file, next, 0);
        Ok(done)
    }

    /// Deletes the files numbered `upto` and below (their records are in the flushed shards).
    pub fn delete_upto(dir: &Path, upto: u64) -> std::io::Result<()> {
        for (n, path) in files(dir)? {
            if n <= upto {
                std::fs::remove_file(path)?;
            }
        }
        sync_dir(dir)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(doc: &str, chunk: u32) -> ChunkPoint {
        let mut metadata = serde_json::Map::new();
        metadata.insert("lang".into(), "en".into());
        metadata.insert("year".into(), 2024.into());
        ChunkPoint {
            doc_id: doc.into(),
            chunk,
            text: format!("text of {doc} #{chunk} — ünïcode"),
            metadata,
            vector: vec![0.25, -1.5, f32::MIN_POSITIVE, 3.0e7],
            // Every other chunk has BM25 weights, so both layouts are read back.
            sparse: (chunk % 2 == 1)
                .then(|| SparseVector { indices: vec![7, 4_000_000_000], values: vec![0.5, 1.25] }),
        }
    }

    fn record(seq: u64) -> Record {
        Record {
            seq,
            incarnation: 0xdead_beef_0000_0001,
            collection: "docs".into(),
            batch: WriteBatch {
                upserts: vec![point("a", 0), point("a", 1), point("b", 0)],
                delete_chunks_from: vec![("a".into(), 2), ("b".into(), 1)],
                delete_documents: vec!["gone".into()],
            },
        }
    }

    #[test]
    fn frames_round_trip_field_by_field() {
        let mut bytes = Vec::new();
        encode(&record(1), &mut bytes);
        encode(&record(2), &mut bytes);
        let (records, valid) = decode(&bytes);
        assert_eq!(valid, bytes.len());
        assert_eq!(records, vec![record(1), record(2)]);
        assert_eq!(records[1].batch.upserts[0].text, "text of a #0 — ünïcode");
        assert_eq!(records[1].batch.upserts[2].vector[2], f32::MIN_POSITIVE);
    }

    #[test]
    fn a_torn_or_corrupt_tail_ends_the_journal_at_the_last_whole_record() {
        let mut bytes = Vec::new();
        encode(&record(1), &mut bytes);
        let first = bytes.len();
        encode(&record(2), &mut bytes);
        // Every cut inside the second frame keeps exactly the first record.
        for cut in first..bytes.len() {
            let (records, valid) = decode(&bytes[..cut]);
            assert_eq!((records.len(), valid), (1, first), "cut at {cut}");
        }
        // A flipped bit anywhere in the second frame fails its checksum.
        for at in [first, first + 3, first + 5, first + 9, bytes.len() - 1] {
            let mut bad = bytes.clone();
            bad[at] ^= 0x10;
            let (records, valid) = decode(&bad);
            assert_eq!((records.len(), valid), (1, first), "flip at {at}");
        }
        // Zeros after the end (a file extended by a crash) end it too.
        let mut zeros = bytes.clone();
        zeros.extend_from_slice(&[0; 64]);
        assert_eq!(decode(&zeros).0.len(), 2);
    }

    #[test]
    fn open_cuts_a_torn_tail_and_appends_to_a_new_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let jdir = dir.path().join("journal");
        let (mut j, r) = Journal::open(&jdir).expect("open");
        assert_eq!(r, Recovered::default());
        let mut frames = Vec::new();
        encode(&record(1), &mut frames);
        encode(&record(2), &mut frames);
        j.append(&frames, true).expect("append");
        j.append(&frames[..frames.len() / 3], false).expect("torn append");
        drop(j);

        let (mut j, r) = Journal::open(&jdir).expect("reopen");
        assert_eq!(r.records, vec![record(1), record(2)]);
        assert_eq!(r.torn_bytes, (frames.len() / 3) as u64);
        let mut more = Vec::new();
        encode(&record(3), &mut more);
        j.append(&more, true).expect("append after reopen");
        drop(j);

        let (j, r) = Journal::open(&jdir).expect("third open");
        assert_eq!(r.records.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![1, 2, 3]);
        assert_eq!(r.torn_bytes, 0);
        assert_eq!(r.files, 2);
        drop(j);
    }

    #[test]
    fn a_checkpoint_deletes_only_the_files_before_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut j, _) = Journal::open(dir.path()).expect("open");
        let mut frames = Vec::new();
        encode(&record(1), &mut frames);
        j.append(&frames, false).expect("append");
        let done = j.rotate().expect("rotate");
        let mut later = Vec::new();
        encode(&record(2), &mut later);
        j.append(&later, false).expect("append");
        Journal::delete_upto(j.dir(), done).expect("delete");
        drop(j);
        let (_, r) = Journal::open(dir.path()).expect("reopen");
        assert_eq!(r.records, vec![record(2)]);
    }
}

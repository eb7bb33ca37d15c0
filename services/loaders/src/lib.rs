//! Document loaders of `ragd ingest`: a file becomes documents `{id, text, metadata}`.
//! [`load`] reads a file and picks the format by its extension; [`load_bytes`] parses bytes
//! already in memory (what the fuzz targets in `fuzz/` call).
//!
//! - CSV (`.csv`): one document per row; `--text-column` (default `text`) is the text,
//!   `--id-column` (default `id`, else `<file>:<row>`) the id, every other column metadata
//!   (integers and decimals become numbers);
//! - JSONL (`.jsonl`, `.ndjson`): one JSON object per line, same field rules, and a `vector`
//!   field (`--vector-field`), an array of numbers, is the document's own vector (the text is then
//!   optional);
//! - plain text and markdown (`.txt`, `.md`, `.markdown`): one document per file, id = file name;
//! - PDF (`.pdf`): one document per page with text, id `<file>#p<page>`, metadata `{source, page}`
//!   (pure-Rust `pdf-extract`; a parser panic on a malformed file is caught and reported);
//! - vectors (`.npy`: a 2-D little-endian float32/float64 NumPy array, C or Fortran order;
//!   `.fvecs`: the ANN benchmarks' records of a little-endian i32 dimension and that many f32):
//!   one document per row with its vector and no text, id = the row's number from 0 (the
//!   numbering of ANN benchmarks' ground-truth files).
//!
//! A file that cannot be read or parsed fails alone with its reason.

use std::path::Path;

use serde_json::{Map, Value};

#[derive(Debug, Clone, PartialEq)]
pub struct LoadedDocument {
    pub id: String,
    pub text: String,
    pub metadata: Map<String, Value>,
    /// The document's own vector (vector files, or a JSONL vector field).
    pub vector: Option<Vec<f32>>,
}

#[derive(Debug, Clone)]
pub struct Columns {
    pub text: String,
    pub id: String,
    /// JSON field holding a document's own vector.
    pub vector: String,
}

impl Default for Columns {
    fn default() -> Self {
        Self { text: "text".into(), id: "id".into(), vector: "vector".into() }
    }
}

/// A file format the loaders read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Csv,
    Jsonl,
    Text,
    Pdf,
    Npy,
    Fvecs,
}

impl Format {
    /// The format of a file name's extension (case-insensitive), or the reason there is none.
    pub fn of(path: &Path) -> Result<Self, String> {
        let ext = path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).unwrap_or_default();
        match ext.as_str() {
            "csv" => Ok(Self::Csv),
            "jsonl" | "ndjson" => Ok(Self::Jsonl),
            "txt" | "md" | "markdown" => Ok(Self::Text),
            "pdf" => Ok(Self::Pdf),
            "npy" => Ok(Self::Npy),
            "fvecs" => Ok(Self::Fvecs),
            other => Err(format!(
                "unsupported file type {other:?} (expected csv, jsonl, txt, md, pdf, npy or fvecs)"
            )),
        }
    }

    /// Vector files: documents of vectors, numbered by row.
    pub fn is_vectors(self) -> bool {
        matches!(self, Self::Npy | Self::Fvecs)
    }
}

/// Loads every document of `path`, or the reason it cannot.
pub fn load(path: &Path, columns: &Columns) -> Result<Vec<LoadedDocument>, String> {
    let format = Format::of(path)?;
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read: {e}"))?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("document");
    load_bytes(format, &bytes, name, &path.display().to_string(), columns)
}

/// Parses `bytes` as `format`: `name` makes the fallback ids, `source` the `source` metadata of
/// text and PDF documents. Text formats must be UTF-8.
pub fn load_bytes(
    format: Format,
    bytes: &[u8],
    name: &str,
    source: &str,
    columns: &Columns,
) -> Result<Vec<LoadedDocument>, String> {
    let text = || std::str::from_utf8(bytes).map_err(|e| format!("cannot read: not UTF-8 ({e})"));
    match format {
        Format::Csv => csv_documents(text()?, name, columns),
        Format::Jsonl => jsonl_documents(text()?, name, columns),
        Format::Text => {
            let mut metadata = Map::new();
            metadata.insert("source".into(), Value::String(source.to_string()));
            Ok(vec![LoadedDocument {
                id: name.to_string(),
                text: text()?.to_string(),
                metadata,
                vector: None,
            }])
        }
        Format::Pdf => pdf_documents(bytes, name, source),
        Format::Npy | Format::Fvecs => {
            let rows = if format == Format::Npy { npy_rows(bytes)? } else { fvecs_rows(bytes)? };
            Ok(rows
                .into_iter()
                .enumerate()
                .map(|(i, v)| LoadedDocument {
                    id: i.to_string(),
                    text: String::new(),
                    metadata: Map::new(),
                    vector: Some(v),
                })
                .collect())
        }
    }
}

/// The rows of a 2-D NumPy array (`.npy` format 1.0–3.0; dtype `<f4` or `<f8`).
fn npy_rows(bytes: &[u8]) -> Result<Vec<Vec<f32>>, String> {
    let bad = |why: &str| format!("bad .npy file: {why}");
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(bad("no NumPy magic"));
    }
    let (header_len, start): (usize, usize) = match bytes[6] {
        1 => (usize::from(u16::from_le_bytes([bytes[8], bytes[9]])), 10),
        2 | 3 if bytes.len() >= 12 => {
            (u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize, 12)
        }
        v => return Err(bad(&format!("format version {v} (1, 2 or 3 are read)"))),
    };
    let header = bytes
        .get(start..start.saturating_add(header_len))
        .ok_or_else(|| bad("header longer than the file"))?;
    let header = std::str::from_utf8(header).map_err(|_| bad("header is not text"))?;
    let field = |key: &str| {
        let at =
            header.find(&format!("'{key}':")).ok_or_else(|| bad(&format!("no '{key}' in the header")))?;
        Ok::<&str, String>(header[at + key.len() + 3..].trim_start())
    };
    let descr = field("descr")?;
    let width = if descr.starts_with("'<f4'") {
        4
    } else if descr.starts_with("'<f8'") {
        8
    } else {
        return Err(bad("dtype must be little-endian float32 ('<f4') or float64 ('<f8')"));
    };
    let fortran = field("fortran_order")?.starts_with("True");
    let shape = field("shape")?;
    let shape = shape.strip_prefix('(').and_then(|s| s.split(')').next()).ok_or_else(|| bad("shape"))?;
    let dims: Vec<usize> = shape
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .map(|d| d.parse::<usize>().map_err(|_| bad("shape")))
        .collect::<Result<_, _>>()?;
    let [n, dim] = dims[..] else {
        return Err(bad(&format!("shape {dims:?}: a 2-D array (rows, dimension) is needed")));
    };
    if dim == 0 {
        return Err(bad("dimension 0"));
    }
    let data = &bytes[start + header_len..];
    let values = n.checked_mul(dim).ok_or_else(|| bad("shape too large"))?;
    if data.len() != values.saturating_mul(width) {
        return Err(bad(&format!("{} data bytes for shape ({n}, {dim}) of {width}-byte floats", data.len())));
    }
    let value = |i: usize| -> f32 {
        let b = &data[i * width..(i + 1) * width];
        match width {
            4 => f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            _ => f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32,
        }
    };
    Ok((0..n)
        .map(|r| (0..dim).map(|c| value(if fortran { c * n + r } else { r * dim + c })).collect())
        .collect())
}

/// The rows of an `.fvecs` file: each a little-endian i32 dimension, then that many f32; every
/// row of one dimension.
fn fvecs_rows(bytes: &[u8]) -> Result<Vec<Vec<f32>>, String> {
    let mut rows = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        let bad = |why: String| format!("bad .fvecs file: row {}: {why}", rows.len());
        let head: [u8; 4] =
            rest.get(..4).and_then(|h| h.try_into().ok()).ok_or_else(|| bad("truncated".into()))?;
        let dim = i32::from_le_bytes(head);
        let dim =
            usize::try_from(dim).ok().filter(|d| *d > 0).ok_or_else(|| bad(format!("dimension {dim}")))?;
        if let Some(first) = rows.first().map(Vec::len).filter(|first| *first != dim) {
            return Err(bad(format!("dimension {dim}, the first row's is {first}")));
        }
        let body = rest
            .get(4..4 + dim * 4)
            .ok_or_else(|| bad(format!("{} bytes left for {dim} floats", rest.len() - 4)))?;
        rows.push(body.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect());
        rest = &rest[4 + dim * 4..];
    }
    Ok(rows)
}

/// A CSV cell as JSON: integers and decimals become numbers, the rest strings.
fn cell(s: &str) -> Value {
    if let Ok(i) = s.parse::<i64>() {
        return Value::from(i);
    }
    match s.parse::<f64>() {
        Ok(f) if f.is_finite() && s.contains('.') => Value::from(f),
        _ => Value::String(s.to_string()),
    }
}

fn document(
    mut fields: Map<String, Value>,
    fallback_id: String,
    columns: &Columns,
) -> Result<LoadedDocument, String> {
    let vector = match fields.remove(&columns.vector) {
        None | Some(Value::Null) => None,
        Some(Value::Array(values)) => Some(
            values
                .iter()
                .map(|v| v.as_f64().map(|x| x as f32))
                .collect::<Option<Vec<f32>>>()
                .ok_or_else(|| format!("{:?} is not an array of numbers", columns.vector))?,
        ),
        // A CSV cell holding a JSON array.
        Some(Value::String(s)) => Some(
            serde_json::from_str::<Vec<f32>>(&s)
                .map_err(|e| format!("{:?} is not an array of numbers ({e})", columns.vector))?,
        ),
        Some(_) => return Err(format!("{:?} is not an array of numbers", columns.vector)),
    };
    let text = match fields.remove(&columns.text) {
        Some(Value::String(s)) => s,
        Some(other) => other.to_string(),
        // A document that brings its vector needs no text.
        None if vector.is_some() => String::new(),
        None => return Err(format!("no {:?} field", columns.text)),
    };
    let id = match fields.remove(&columns.id) {
        Some(Value::String(s)) => s,
        Some(Value::Null) | None => fallback_id,
        Some(other) => other.to_string(),
    };
    Ok(LoadedDocument { id, text, metadata: fields, vector })
}

fn csv_documents(data: &str, name: &str, columns: &Columns) -> Result<Vec<LoadedDocument>, String> {
    let mut reader = csv::Reader::from_reader(data.as_bytes());
    let headers = reader.headers().map_err(|e| format!("bad CSV header: {e}"))?.clone();
    if !headers.iter().any(|h| h == columns.text) {
        return Err(format!(
            "no {:?} column (columns: {})",
            columns.text,
            headers.iter().collect::<Vec<_>>().join(", ")
        ));
    }
    reader
        .records()
        .enumerate()
        .map(|(i, record)| {
            let record = record.map_err(|e| format!("row {}: {e}", i + 1))?;
            let fields = headers.iter().zip(record.iter()).map(|(h, v)| (h.to_string(), cell(v))).collect();
            document(fields, format!("{name}:{}", i + 1), columns).map_err(|e| format!("row {}: {e}", i + 1))
        })
        .collect()
}

fn pdf_documents(bytes: &[u8], name: &str, source: &str) -> Result<Vec<LoadedDocument>, String> {
    let pages = std::panic::catch_unwind(|| pdf_extract::extract_text_from_mem_by_pages(bytes))
        .map_err(|_| "malformed PDF (the parser gave up)".to_string())?
        .map_err(|e| format!("cannot parse PDF: {e}"))?;
    let docs: Vec<LoadedDocument> = pages
        .into_iter()
        .enumerate()
        .filter(|(_, text)| !text.trim().is_empty())
        .map(|(i, text)| {
            let mut metadata = Map::new();
            metadata.insert("source".into(), Value::String(source.to_string()));
            metadata.insert("page".into(), Value::from(i + 1));
            LoadedDocument {
                id: format!("{name}#p{}", i + 1),
                text: join_lines(&text),
                metadata,
                vector: None,
            }
        })
        .collect();
    if docs.is_empty() {
        return Err("no extractable text (scanned PDF?)".into());
    }
    Ok(docs)
}

/// PDF text with the layout's hard line breaks joined: lines of one paragraph become one line
/// ("In the\nstudy" → "In the study"; a word hyphenated across lines, "experi-\nment", is
/// joined back when the next line starts in lower case), paragraphs (blank lines) stay apart.
/// The sentence chunker and the embedder then see sentences, not layout.
fn join_lines(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut paragraph = String::new();
    let flush = |paragraph: &mut String, out: &mut String| {
        if !paragraph.is_empty() {
            if !out.is_empty() {
                out.push_str("\n\n");
            }
            out.push_str(paragraph);
            paragraph.clear();
        }
    };
    for line in text.lines().map(|l| l.split_whitespace().collect::<Vec<_>>().join(" ")) {
        if line.is_empty() {
            flush(&mut paragraph, &mut out);
            continue;
        }
        let hyphenated = paragraph.ends_with('-')
            && paragraph[..paragraph.len() - 1].chars().next_back().is_some_and(char::is_alphabetic)
            && line.chars().next().is_some_and(char::is_lowercase);
        if hyphenated {
            paragraph.pop();
        } else if !paragraph.is_empty() {
            paragraph.push(' ');
        }
        paragraph.push_str(&line);
    }
    flush(&mut paragraph, &mut out);
    out
}

fn jsonl_documents(data: &str, name: &str, columns: &Columns) -> Result<Vec<LoadedDocument>, String> {
    data.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, line)| {
            let fields = match serde_json::from_str::<Value>(line) {
                Ok(Value::Object(m)) => m,
                Ok(_) => return Err(format!("line {}: not a JSON object", i + 1)),
                Err(e) => return Err(format!("line {}: {e}", i + 1)),
            };
            document(fields, format!("{name}:{}", i + 1), columns).map_err(|e| format!("line {}: {e}", i + 1))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cols() -> Columns {
        Columns::default()
    }

    fn file(dir: &Path, name: &str, content: &str) -> std::path::PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, content).expect("write");
        p
    }

    #[test]
    fn csv_rows_become_documents_with_typed_metadata() {
        let dir = tempfile::tempdir().expect("dir");
        let p = file(
            dir.path(),
            "c.csv",
            "id,text,year,score,city\nde,Berlin is big,2024,0.5,Berlin\n,No id,1,x,\"Quoted, city\"\n",
        );
        let docs = load(&p, &cols()).expect("csv");
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0].id, "de");
        assert_eq!(docs[0].metadata["year"], Value::from(2024));
        assert_eq!(docs[0].metadata["score"], Value::from(0.5));
        assert_eq!(docs[1].id, "", "an empty id cell stays empty (the indexer rejects it alone)");
        assert_eq!(docs[1].metadata["city"], "Quoted, city");
    }

    #[test]
    fn jsonl_lines_become_documents_and_bad_lines_fail_the_file() {
        let dir = tempfile::tempdir().expect("dir");
        let p = file(
            dir.path(),
            "d.jsonl",
            "{\"id\":\"a\",\"text\":\"one\",\"tags\":[1]}\n\n{\"text\":\"two\"}\n",
        );
        let docs = load(&p, &cols()).expect("jsonl");
        assert_eq!((docs[0].id.as_str(), docs[1].id.as_str()), ("a", "d.jsonl:3"));
        assert_eq!(docs[0].metadata["tags"], serde_json::json!([1]));
        let bad = file(dir.path(), "bad.jsonl", "{\"text\":\"ok\"}\n{not json\n");
        assert!(load(&bad, &cols()).expect_err("corrupt").starts_with("line 2:"));
    }

    #[test]
    fn jsonl_and_csv_vectors_are_the_documents_own_and_text_is_optional_then() {
        let dir = tempfile::tempdir().expect("dir");
        let p = file(
            dir.path(),
            "v.jsonl",
            "{\"id\":\"a\",\"vector\":[1,0.5,-2],\"tag\":\"x\"}\n{\"id\":\"b\",\"text\":\"t\",\"vector\":null}\n",
        );
        let docs = load(&p, &cols()).expect("jsonl");
        assert_eq!((docs[0].text.as_str(), docs[0].vector.as_deref()), ("", Some(&[1.0, 0.5, -2.0][..])));
        assert_eq!(docs[0].metadata.keys().collect::<Vec<_>>(), ["tag"]);
        assert_eq!((docs[1].text.as_str(), docs[1].vector.as_deref()), ("t", None));
        let bad = file(dir.path(), "b.jsonl", "{\"text\":\"t\",\"vector\":[1,\"2\"]}\n");
        assert!(load(&bad, &cols()).expect_err("strings").contains("not an array of numbers"));
        let csv = file(dir.path(), "v.csv", "id,text,vector\nc,hi,\"[0.25, 4]\"\n");
        assert_eq!(load(&csv, &cols()).expect("csv")[0].vector.as_deref(), Some(&[0.25, 4.0][..]));
    }

    /// An .npy file as NumPy writes it: magic, version, little-endian header length, a
    /// space-padded dict header ending in a newline, the data.
    fn npy(version: u8, descr: &str, fortran: bool, shape: &str, data: &[u8]) -> Vec<u8> {
        let mut header = format!(
            "{{'descr': '{descr}', 'fortran_order': {}, 'shape': {shape}, }}",
            if fortran { "True" } else { "False" }
        );
        let prefix = if version == 1 { 10 } else { 12 };
        while !(prefix + header.len() + 1).is_multiple_of(64) {
            header.push(' ');
        }
        header.push('\n');
        let mut out = b"\x93NUMPY".to_vec();
        out.extend([version, 0]);
        match version {
            1 => out.extend((header.len() as u16).to_le_bytes()),
            _ => out.extend((header.len() as u32).to_le_bytes()),
        }
        out.extend(header.as_bytes());
        out.extend(data);
        out
    }

    fn f32s(values: &[f32]) -> Vec<u8> {
        values.iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    #[test]
    fn npy_and_fvecs_rows_become_numbered_vector_documents() {
        let dir = tempfile::tempdir().expect("dir");
        let want = [vec![1.0, 2.0, 3.0], vec![-4.0, 0.5, 6.0]];
        let write = |name: &str, bytes: Vec<u8>| {
            let p = dir.path().join(name);
            std::fs::write(&p, bytes).expect("write");
            p
        };
        // C order float32, version 1.
        let c = write("c.npy", npy(1, "<f4", false, "(2, 3)", &f32s(&[1.0, 2.0, 3.0, -4.0, 0.5, 6.0])));
        // Fortran order (column by column) float64, version 2.
        let f64s: Vec<u8> = [1.0f64, -4.0, 2.0, 0.5, 3.0, 6.0].iter().flat_map(|v| v.to_le_bytes()).collect();
        let f = write("f.npy", npy(2, "<f8", true, "(2, 3)", &f64s));
        let mut fv = Vec::new();
        for row in &want {
            fv.extend(3i32.to_le_bytes());
            fv.extend(f32s(row));
        }
        let fvecs = write("x.fvecs", fv.clone());
        for p in [&c, &f, &fvecs] {
            let docs = load(p, &cols()).expect("vectors");
            let got: Vec<(&str, &str, Option<&[f32]>)> =
                docs.iter().map(|d| (d.id.as_str(), d.text.as_str(), d.vector.as_deref())).collect();
            assert_eq!(
                got,
                [("0", "", Some(&want[0][..])), ("1", "", Some(&want[1][..]))],
                "{}",
                p.display()
            );
        }
        for (name, bytes, why) in [
            ("big.npy", npy(1, ">f4", false, "(2, 3)", &[0; 24]), "dtype"),
            ("int.npy", npy(1, "<i4", false, "(2, 3)", &[0; 24]), "dtype"),
            ("1d.npy", npy(1, "<f4", false, "(6,)", &[0; 24]), "2-D"),
            ("short.npy", npy(1, "<f4", false, "(2, 3)", &[0; 20]), "20 data bytes"),
            ("magic.npy", b"NUMPY\x01\x00".to_vec(), "magic"),
            ("cut.fvecs", fv[..fv.len() - 1].to_vec(), "row 1"),
            ("mixed.fvecs", [&fv[..16], &2i32.to_le_bytes()[..], &f32s(&[1.0, 2.0])].concat(), "dimension 2"),
            ("dim0.npy", npy(1, "<f4", false, "(1000000000000, 0)", &[]), "dimension 0"),
            ("zero.fvecs", 0i32.to_le_bytes().to_vec(), "dimension 0"),
        ] {
            let err = load(&write(name, bytes), &cols()).expect_err(name);
            assert!(err.contains(why), "{name}: {err}");
        }
    }

    #[test]
    fn pdf_line_breaks_inside_paragraphs_are_joined() {
        let page = "In the\nstudy, the experi-\nment ran   twice.\nWell-\nKnown results.\n\n\nA new  paragraph\nhere.\n";
        assert_eq!(
            join_lines(page),
            "In the study, the experiment ran twice. Well- Known results.\n\nA new paragraph here."
        );
        assert_eq!(join_lines(""), "");
        assert_eq!(join_lines("one line"), "one line");
    }

    /// Real PDFs from npm pdf-parse's test data, fetched by scripts/setup (not committed).
    #[test]
    fn pdf_pages_become_documents_and_a_corrupt_pdf_fails_alone() {
        let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.ragd/data/pdf");
        let home = std::env::var_os("RAGD_HOME").map(std::path::PathBuf::from);
        let dir = home.map(|h| h.join("data/pdf")).unwrap_or(dir);
        let valid = dir.join("04-valid.pdf");
        assert!(valid.is_file(), "{} missing: run scripts/setup --with-test", valid.display());
        let docs = load(&valid, &cols()).expect("valid pdf");
        assert!(!docs.is_empty());
        assert_eq!(docs[0].metadata["page"], Value::from(1));
        assert!(docs[0].id.starts_with("04-valid.pdf#p"));
        assert!(
            docs.iter().map(|d| d.text.split_whitespace().count()).sum::<usize>() > 50,
            "real text extracted"
        );
        let err = load(&dir.join("03-invalid.pdf"), &cols()).expect_err("corrupt pdf");
        assert!(err.contains("PDF"), "{err}");
    }

    #[test]
    fn text_files_and_unsupported_types() {
        let dir = tempfile::tempdir().expect("dir");
        let p = file(dir.path(), "notes.md", "# Title\nBody.");
        let docs = load(&p, &cols()).expect("md");
        assert_eq!((docs[0].id.as_str(), docs[0].text.as_str()), ("notes.md", "# Title\nBody."));
        let csv = file(dir.path(), "x.csv", "id,body\n1,a\n");
        assert!(load(&csv, &cols()).expect_err("no text column").contains("no \"text\" column"));
        assert!(
            load(&dir.path().join("missing.txt"), &cols()).expect_err("missing").starts_with("cannot read")
        );
        assert!(load(&file(dir.path(), "x.bin", ""), &cols()).expect_err("type").contains("unsupported"));
    }
}

//! Document loaders of `ragd ingest`: a file becomes documents `{id, text, metadata}`.
//! [`load`] reads a file and picks the format by its extension; [`load_bytes`] parses bytes
//! already in memory (what the fuzz targets in `fuzz/` call).
//!
//! - CSV (`.csv`): one document per row; `--text-column` (default `text`) is the text,
//!   `--id-column` (default `id`, else `<file>:<row>`) the id, every other column metadata
//!   (integers and decimals become numbers);
//! - JSONL (`.jsonl`, `.ndjson`): one JSON object per line, same field rules;
//! - plain text and markdown (`.txt`, `.md`, `.markdown`): one document per file, id = file name;
//! - PDF (`.pdf`): one document per page with text, id `<file>#p<page>`, metadata `{source, page}`
//!   (pure-Rust `pdf-extract`; a parser panic on a malformed file is caught and reported).
//!
//! A file that cannot be read or parsed fails alone with its reason.

use std::path::Path;

use serde_json::{Map, Value};

#[derive(Debug, Clone, PartialEq)]
pub struct LoadedDocument {
    pub id: String,
    pub text: String,
    pub metadata: Map<String, Value>,
}

#[derive(Debug, Clone)]
pub struct Columns {
    pub text: String,
    pub id: String,
}

/// A file format the loaders read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Csv,
    Jsonl,
    Text,
    Pdf,
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
            other => Err(format!("unsupported file type {other:?} (expected csv, jsonl, txt, md or pdf)")),
        }
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
            Ok(vec![LoadedDocument { id: name.to_string(), text: text()?.to_string(), metadata }])
        }
        Format::Pdf => pdf_documents(bytes, name, source),
    }
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
    let text = match fields.remove(&columns.text) {
        Some(Value::String(s)) => s,
        Some(other) => other.to_string(),
        None => return Err(format!("no {:?} field", columns.text)),
    };
    let id = match fields.remove(&columns.id) {
        Some(Value::String(s)) => s,
        Some(Value::Null) | None => fallback_id,
        Some(other) => other.to_string(),
    };
    Ok(LoadedDocument { id, text, metadata: fields })
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
            LoadedDocument { id: format!("{name}#p{}", i + 1), text: join_lines(&text), metadata }
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
        Columns { text: "text".into(), id: "id".into() }
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

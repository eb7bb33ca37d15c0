//! BEIR's dataset layout: `corpus.jsonl` (`{"_id", "title", "text"}`), `queries.jsonl`
//! (`{"_id", "text"}`) and `qrels/<split>.tsv` (`query-id corpus-id score`, a header line), as
//! the BEIR and MTEB downloads ship them; and TREC run files (`qid Q0 docid rank score tag`).

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

use crate::DataError;
use crate::metrics::{Qrels, Run, rank};

/// One corpus document.
#[derive(Debug, Clone, PartialEq)]
pub struct CorpusDoc {
    pub id: String,
    pub title: String,
    pub text: String,
}

impl CorpusDoc {
    /// The text ragd indexes: title and text as one passage, like BEIR's and MTEB's dense
    /// models see them (`title + " " + text`), or the text alone without a title.
    pub fn passage(&self) -> String {
        if self.title.trim().is_empty() { self.text.clone() } else { format!("{} {}", self.title, self.text) }
    }
}

/// A BEIR dataset's files, read whole.
#[derive(Debug, Clone)]
pub struct Dataset {
    pub corpus: Vec<CorpusDoc>,
    /// Query id → text, only the queries judged in the split.
    pub queries: Vec<(String, String)>,
    pub qrels: Qrels,
}

pub(crate) fn read(path: &Path) -> Result<String, DataError> {
    std::fs::read_to_string(path).map_err(|source| DataError::Io { path: path.to_path_buf(), source })
}

fn jsonl(path: &Path) -> Result<Vec<serde_json::Map<String, serde_json::Value>>, DataError> {
    let mut out = Vec::new();
    for (i, line) in read(path)?.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let format = |reason: String| DataError::Format { path: path.to_path_buf(), line: i + 1, reason };
        match serde_json::from_str(line) {
            Ok(serde_json::Value::Object(o)) => out.push(o),
            Ok(_) => return Err(format("not a JSON object".into())),
            Err(e) => return Err(format(e.to_string())),
        }
    }
    Ok(out)
}

/// A field as a string: ids may be numbers in some BEIR sets.
fn field(o: &serde_json::Map<String, serde_json::Value>, key: &str) -> Option<String> {
    match o.get(key)? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Reads `qrels/<split>.tsv`: tab- or space-separated `query-id corpus-id score`; a first line
/// that does not end in an integer is the header.
pub fn read_qrels(path: &Path) -> Result<Qrels, DataError> {
    let mut qrels = Qrels::new();
    for (i, line) in read(path)?.lines().enumerate() {
        let cols: Vec<&str> = line.split_whitespace().collect();
        if cols.is_empty() {
            continue;
        }
        let parsed = match cols.as_slice() {
            [q, d, s] => s.parse::<i32>().ok().map(|s| (*q, *d, s)),
            // TREC qrels: `qid iteration docid rel`.
            [q, _, d, s] => s.parse::<i32>().ok().map(|s| (*q, *d, s)),
            _ => None,
        };
        match parsed {
            Some((q, d, s)) => {
                qrels.entry(q.to_string()).or_default().insert(d.to_string(), s);
            }
            None if i == 0 => {}
            None => {
                return Err(DataError::Format {
                    path: path.to_path_buf(),
                    line: i + 1,
                    reason: "expected `query-id corpus-id score` with an integer score".into(),
                });
            }
        }
    }
    Ok(qrels)
}

impl Dataset {
    /// Reads `dir/corpus.jsonl`, `dir/queries.jsonl` and `dir/qrels/<split>.tsv`.
    pub fn load(dir: &Path, split: &str) -> Result<Dataset, DataError> {
        let corpus_path = dir.join("corpus.jsonl");
        let mut corpus = Vec::new();
        for (i, o) in jsonl(&corpus_path)?.into_iter().enumerate() {
            let id = field(&o, "_id").ok_or_else(|| DataError::Format {
                path: corpus_path.clone(),
                line: i + 1,
                reason: "no `_id`".into(),
            })?;
            let text = field(&o, "text").unwrap_or_default();
            corpus.push(CorpusDoc { id, title: field(&o, "title").unwrap_or_default(), text });
        }
        let qrels = read_qrels(&dir.join("qrels").join(format!("{split}.tsv")))?;
        let queries_path = dir.join("queries.jsonl");
        let mut queries = Vec::new();
        for (i, o) in jsonl(&queries_path)?.into_iter().enumerate() {
            let format = |reason: &str| DataError::Format {
                path: queries_path.clone(),
                line: i + 1,
                reason: reason.into(),
            };
            let id = field(&o, "_id").ok_or_else(|| format("no `_id`"))?;
            if qrels.contains_key(&id) {
                queries.push((id, field(&o, "text").ok_or_else(|| format("no `text`"))?));
            }
        }
        Ok(Dataset { corpus, queries, qrels })
    }
}

/// Writes a run in TREC format (`qid Q0 docid rank score tag`, trec_eval's order), the input of
/// trec_eval, pytrec_eval and ranx.
pub fn write_run(path: &Path, run: &Run, tag: &str) -> Result<(), DataError> {
    let io = |source| DataError::Io { path: path.to_path_buf(), source };
    let mut out = std::io::BufWriter::new(std::fs::File::create(path).map_err(io)?);
    let mut queries: Vec<&String> = run.keys().collect();
    queries.sort();
    let scores: HashMap<&str, HashMap<&str, f64>> =
        run.iter().map(|(q, l)| (q.as_str(), l.iter().map(|(d, s)| (d.as_str(), *s)).collect())).collect();
    for q in queries {
        // The format is whitespace-separated: an id with white space in it cannot be written.
        if let Some(bad) = std::iter::once(q.as_str())
            .chain(run[q].iter().map(|(d, _)| d.as_str()))
            .find(|id| id.contains(char::is_whitespace) || id.is_empty())
        {
            return Err(DataError::Format {
                path: path.to_path_buf(),
                line: 0,
                reason: format!("id {bad:?} is empty or has white space, which a TREC run file cannot hold"),
            });
        }
        for (i, d) in rank(&run[q]).into_iter().enumerate() {
            writeln!(out, "{q} Q0 {d} {} {} {tag}", i + 1, scores[q.as_str()][d]).map_err(io)?;
        }
    }
    out.flush().map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_a_beir_directory_with_header_numbers_and_unjudged_queries() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("qrels")).expect("mkdir");
        std::fs::write(
            dir.path().join("corpus.jsonl"),
            "{\"_id\": \"d1\", \"title\": \"T\", \"text\": \"one\"}\n\n{\"_id\": 2, \"text\": \"two\"}\n",
        )
        .expect("corpus");
        std::fs::write(
            dir.path().join("queries.jsonl"),
            "{\"_id\": \"q1\", \"text\": \"first\"}\n{\"_id\": \"q9\", \"text\": \"unjudged\"}\n",
        )
        .expect("queries");
        std::fs::write(
            dir.path().join("qrels/test.tsv"),
            "query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\t2\t0\n",
        )
        .expect("qrels");
        let d = Dataset::load(dir.path(), "test").expect("load");
        assert_eq!(d.corpus.len(), 2);
        assert_eq!(d.corpus[0].passage(), "T one");
        assert_eq!(d.corpus[1].passage(), "two");
        assert_eq!(d.corpus[1].id, "2");
        assert_eq!(d.queries, vec![("q1".to_string(), "first".to_string())]);
        assert_eq!(d.qrels["q1"]["d1"], 1);
        assert_eq!(d.qrels["q1"]["2"], 0);
    }

    #[test]
    fn a_bad_line_names_the_file_and_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("q.tsv");
        std::fs::write(&path, "q-id\tc-id\tscore\nq1\td1\t1\nq1\td2\n").expect("qrels");
        let e = read_qrels(&path).expect_err("short line");
        assert!(
            e.to_string().ends_with("q.tsv:3: expected `query-id corpus-id score` with an integer score"),
            "{e}"
        );
        assert!(matches!(Dataset::load(dir.path(), "test"), Err(DataError::Io { .. })));
    }

    #[test]
    fn run_files_are_in_trec_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("run");
        let mut run = Run::new();
        run.insert("q".into(), vec![("a".into(), 0.5), ("b".into(), 0.9), ("c".into(), 0.5)]);
        write_run(&path, &run, "t").expect("write");
        let text = std::fs::read_to_string(&path).expect("read");
        assert_eq!(text, "q Q0 b 1 0.9 t\nq Q0 c 2 0.5 t\nq Q0 a 3 0.5 t\n");
        run.insert("q2".into(), vec![("two words".into(), 1.0)]);
        assert!(write_run(&path, &run, "t").expect_err("space").to_string().contains("\"two words\""));
    }
}

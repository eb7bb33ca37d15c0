//! Pairs of texts with human similarity scores, for `ragd eval sts`: the Lee corpus (Lee,
//! Pincombe & Welsh 2005, as gensim ships it: `lee.cor`, 50 news documents, one per line in
//! Latin-1, and `similarities0-1.txt`, the 50 × 50 matrix of averaged human judgements in [0, 1],
//! whose upper triangle holds the 1 225 pairs), or a TSV of `text1 <tab> text2 <tab> score`.

use std::collections::HashMap;
use std::path::Path;

use crate::DataError;

/// Unique texts and the judged pairs over them.
#[derive(Debug, Clone, PartialEq)]
pub struct Pairs {
    pub texts: Vec<String>,
    /// (index of text a, index of text b, human score).
    pub pairs: Vec<(usize, usize, f64)>,
}

fn read_bytes(path: &Path) -> Result<Vec<u8>, DataError> {
    std::fs::read(path).map_err(|source| DataError::Io { path: path.to_path_buf(), source })
}

/// The Lee corpus in `dir` (`lee.cor`, `similarities0-1.txt`).
pub fn lee(dir: &Path) -> Result<Pairs, DataError> {
    let corpus = dir.join("lee.cor");
    // Latin-1: every byte is the code point of the same value.
    let text: String = read_bytes(&corpus)?.into_iter().map(char::from).collect();
    let texts: Vec<String> = text.lines().map(|l| l.trim().to_string()).filter(|l| !l.is_empty()).collect();
    let sims = dir.join("similarities0-1.txt");
    let matrix = crate::beir::read(&sims)?;
    let rows: Vec<Vec<f64>> = matrix
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            l.split_whitespace()
                .map(str::parse::<f64>)
                .collect::<Result<Vec<f64>, _>>()
                .map_err(|e| DataError::Format { path: sims.clone(), line: i + 1, reason: e.to_string() })
        })
        .collect::<Result<_, _>>()?;
    let n = texts.len();
    if rows.len() != n || rows.iter().any(|r| r.len() != n) {
        return Err(DataError::Format {
            path: sims,
            line: 0,
            reason: format!("expected a {n} × {n} matrix for the {n} documents of lee.cor"),
        });
    }
    let pairs =
        (0..n).flat_map(|i| (i + 1..n).map(move |j| (i, j))).map(|(i, j)| (i, j, rows[i][j])).collect();
    Ok(Pairs { texts, pairs })
}

/// `text1 <tab> text2 <tab> score` lines; a first line whose score is not a number is a header.
pub fn tsv(path: &Path) -> Result<Pairs, DataError> {
    let mut texts = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut pairs = Vec::new();
    let mut id = |t: &str, texts: &mut Vec<String>| {
        *index.entry(t.to_string()).or_insert_with(|| {
            texts.push(t.to_string());
            texts.len() - 1
        })
    };
    for (i, line) in crate::beir::read(path)?.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let cols: Vec<&str> = line.split('\t').collect();
        let score = cols.get(2).and_then(|s| s.trim().parse::<f64>().ok());
        match (cols.len(), score) {
            (3, Some(score)) => {
                let (a, b) = (id(cols[0], &mut texts), id(cols[1], &mut texts));
                pairs.push((a, b, score));
            }
            (3, None) if i == 0 => {}
            _ => {
                return Err(DataError::Format {
                    path: path.to_path_buf(),
                    line: i + 1,
                    reason: "expected `text1<TAB>text2<TAB>score`".into(),
                });
            }
        }
    }
    Ok(Pairs { texts, pairs })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lee_takes_the_upper_triangle_and_reads_latin1() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("lee.cor"), b"caf\xe9 one\ntwo\nthree\n").expect("cor");
        std::fs::write(dir.path().join("similarities0-1.txt"), "1\t0.5\t0.25\n0\t1\t0.75\n0\t0\t1\n")
            .expect("sims");
        let p = lee(dir.path()).expect("lee");
        assert_eq!(p.texts[0], "café one");
        assert_eq!(p.pairs, vec![(0, 1, 0.5), (0, 2, 0.25), (1, 2, 0.75)]);
        std::fs::write(dir.path().join("similarities0-1.txt"), "1\t0.5\n0\t1\n").expect("sims");
        assert!(lee(dir.path()).expect_err("2 × 2 for 3 documents").to_string().contains("3 × 3"));
    }

    #[test]
    fn tsv_shares_repeated_texts_and_skips_a_header() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("p.tsv");
        std::fs::write(&path, "a\tb\tscore\nx\ty\t4.5\ny\tz\t1\n").expect("tsv");
        let p = tsv(&path).expect("tsv");
        assert_eq!(p.texts, vec!["x", "y", "z"]);
        assert_eq!(p.pairs, vec![(0, 1, 4.5), (1, 2, 1.0)]);
        std::fs::write(&path, "x\ty\t4.5\nbroken line\n").expect("tsv");
        assert!(
            tsv(&path)
                .expect_err("bad")
                .to_string()
                .ends_with("p.tsv:2: expected `text1<TAB>text2<TAB>score`")
        );
    }
}

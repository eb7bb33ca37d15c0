//! Chunking documents before embedding.
//!
//! - **Sentence windows**: the text is split into sentences (after `.`, `!`, `?` and their CJK
//!   forms when followed by white space or the end, and at blank lines); a chunk is `size`
//!   consecutive sentences, consecutive chunks share `overlap` sentences.
//! - **Token windows**: `size` tokens of the collection's embedding model per chunk, `overlap`
//!   tokens shared; the token offsets come from the model's own tokenizer (the embedder's
//!   `Tokenize` RPC), so windows match what the model will see.
//!
//! Chunks are slices of the original text (byte ranges on char boundaries), never rewritten.

use serde::{Deserialize, Serialize};

use crate::error::IndexError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Chunking {
    Sentences { size: u32, overlap: u32 },
    Tokens { size: u32, overlap: u32 },
}

impl Default for Chunking {
    fn default() -> Self {
        Chunking::Sentences { size: 3, overlap: 1 }
    }
}

impl Chunking {
    /// Checks the window; `max_tokens` is the model's max_seq_len less its special tokens.
    pub fn validate(&self, max_tokens: usize) -> Result<(), IndexError> {
        let (size, overlap) = match *self {
            Chunking::Sentences { size, overlap } | Chunking::Tokens { size, overlap } => (size, overlap),
        };
        if size == 0 || overlap >= size {
            return Err(IndexError::invalid(
                "chunking",
                format!("need size >= 1 and overlap < size, got {size}/{overlap}"),
            ));
        }
        if let Chunking::Tokens { size, .. } = self
            && *size as usize > max_tokens
        {
            return Err(IndexError::invalid(
                "chunking",
                format!("token window {size} exceeds the model's {max_tokens} tokens"),
            ));
        }
        Ok(())
    }
}

/// A chunk: its text and byte range in the document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    pub text: String,
    pub start: usize,
    pub end: usize,
}

/// Byte ranges of the sentences of `text`, trimmed, empty ones dropped.
pub fn sentences(text: &str) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut chars = text.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        let next = chars.peek().map(|&(_, n)| n);
        let terminal = matches!(c, '.' | '!' | '?') && next.is_none_or(char::is_whitespace)
            || matches!(c, '。' | '！' | '？')
            || (c == '\n' && next == Some('\n'));
        if terminal {
            let end = i + c.len_utf8();
            push_trimmed(text, start, end, &mut out);
            start = end;
        }
    }
    push_trimmed(text, start, text.len(), &mut out);
    out
}

fn push_trimmed(text: &str, start: usize, end: usize, out: &mut Vec<(usize, usize)>) {
    let s = &text[start..end];
    let lead = s.len() - s.trim_start().len();
    let trail = s.len() - s.trim_end().len();
    if lead + trail < s.len() {
        out.push((start + lead, end - trail));
    }
}

/// Windows of `size` spans sharing `overlap`, each from its first span's start to its last
/// span's end; the last window may be shorter. Every span is in at least one window.
pub fn windows(text: &str, spans: &[(usize, usize)], size: usize, overlap: usize) -> Vec<Chunk> {
    let step = size.saturating_sub(overlap).max(1);
    let mut out = Vec::new();
    let mut i = 0;
    while i < spans.len() {
        let last = (i + size).min(spans.len()) - 1;
        let (start, end) = (spans[i].0, spans[last].1);
        // Tokens can share offsets (byte-level pieces of one character): a window equal to the
        // one before it is the same text, not a new chunk, and a window of zero-width tokens has
        // no text (both found by the fuzz target chunk_tokens).
        if start < end && out.last().is_none_or(|c: &Chunk| (c.start, c.end) != (start, end)) {
            out.push(Chunk { text: text[start..end].to_string(), start, end });
        }
        if last + 1 == spans.len() {
            break;
        }
        i += step;
    }
    out
}

/// Chunks `text` by sentences.
pub fn by_sentences(text: &str, size: u32, overlap: u32) -> Vec<Chunk> {
    windows(text, &sentences(text), size as usize, overlap as usize)
}

/// Chunks `text` by token windows given the tokens' byte offsets (special tokens excluded).
pub fn by_tokens(
    text: &str,
    offsets: &[(usize, usize)],
    size: u32,
    overlap: u32,
) -> Result<Vec<Chunk>, IndexError> {
    if let Some(bad) = offsets
        .iter()
        .find(|(s, e)| s > e || *e > text.len() || !text.is_char_boundary(*s) || !text.is_char_boundary(*e))
    {
        return Err(IndexError::Store(format!("tokenizer offset {bad:?} is not a valid range of the text")));
    }
    // Windows run from their first token's start to their last token's end: offsets must not go
    // backwards (found by the fuzz target chunk_tokens: [(0, 6), (5, 5)] was accepted, and a
    // decreasing pair made a window end before it started).
    if let Some(w) = offsets.windows(2).find(|w| w[1].0 < w[0].0 || w[1].1 < w[0].1) {
        return Err(IndexError::Store(format!("tokenizer offsets {:?} then {:?} go backwards", w[0], w[1])));
    }
    Ok(windows(text, offsets, size as usize, overlap as usize))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn texts(chunks: &[Chunk]) -> Vec<&str> {
        chunks.iter().map(|c| c.text.as_str()).collect()
    }

    #[test]
    fn token_offsets_that_go_backwards_are_refused() {
        // A window from (3, 4) to (0, 2) would end before it starts (a slice panic before).
        assert!(by_tokens("abcdef", &[(3, 4), (0, 2)], 2, 0).is_err());
        assert!(by_tokens("abcdef", &[(0, 6), (5, 5)], 4, 1).is_err());
        assert_eq!(by_tokens("abcdef", &[(0, 2), (0, 2), (2, 4)], 2, 0).expect("repeats").len(), 2);
        // Two tokens of one character: one chunk, not the same chunk twice.
        let one = by_tokens("é", &[(0, 2), (0, 2)], 1, 0).expect("shared offsets");
        assert_eq!(texts(&one), ["é"]);
    }

    #[test]
    fn splits_sentences_but_not_decimals_or_abbreviations_inside_words() {
        let t = "Berlin is the capital. Pi is 3.14! Is it?  Yes\n\nNew paragraph";
        let s: Vec<&str> = sentences(t).iter().map(|&(a, b)| &t[a..b]).collect();
        assert_eq!(s, vec!["Berlin is the capital.", "Pi is 3.14!", "Is it?", "Yes", "New paragraph"]);
    }

    #[test]
    fn handles_unicode_and_cjk_terminators() {
        let t = "東京は首都です。大阪は都市です。Ça va? Très bien.";
        let s: Vec<&str> = sentences(t).iter().map(|&(a, b)| &t[a..b]).collect();
        assert_eq!(s, vec!["東京は首都です。", "大阪は都市です。", "Ça va?", "Très bien."]);
    }

    #[test]
    fn sentence_windows_overlap() {
        let t = "A. B. C. D. E.";
        assert_eq!(texts(&by_sentences(t, 2, 1)), vec!["A. B.", "B. C.", "C. D.", "D. E."]);
        assert_eq!(texts(&by_sentences(t, 3, 0)), vec!["A. B. C.", "D. E."]);
        assert_eq!(texts(&by_sentences(t, 10, 2)), vec!["A. B. C. D. E."]);
    }

    #[test]
    fn empty_and_blank_texts_have_no_chunks() {
        assert!(by_sentences("", 3, 1).is_empty());
        assert!(by_sentences(" \n\t ", 3, 1).is_empty());
    }

    #[test]
    fn token_windows_slice_the_original_text() {
        let t = "héllo wörld foo bar";
        let offsets = [(0, 6), (7, 13), (14, 17), (18, 21)];
        let c = by_tokens(t, &offsets, 2, 1).expect("chunks");
        assert_eq!(texts(&c), vec!["héllo wörld", "wörld foo", "foo bar"]);
        assert!(by_tokens(t, &[(0, 2)], 2, 0).is_err(), "offset inside a multi-byte char");
    }

    #[test]
    fn chunking_policy_is_validated() {
        assert!(Chunking::Sentences { size: 0, overlap: 0 }.validate(254).is_err());
        assert!(Chunking::Sentences { size: 2, overlap: 2 }.validate(254).is_err());
        assert!(Chunking::Tokens { size: 300, overlap: 10 }.validate(254).is_err());
        Chunking::Tokens { size: 128, overlap: 16 }.validate(254).expect("valid");
    }

    proptest! {
        /// Windows cover every span, in order, each at most `size` spans, sharing `overlap`.
        #[test]
        fn windows_cover_all_spans(n in 0usize..60, size in 1usize..10, overlap_frac in 0usize..10) {
            let overlap = overlap_frac % size;
            let text: String = (0..n).map(|i| format!("s{i}. ")).collect();
            let spans = sentences(&text);
            prop_assert_eq!(spans.len(), n);
            let chunks = windows(&text, &spans, size, overlap);
            let mut covered = vec![false; n];
            for c in &chunks {
                let inside: Vec<usize> = (0..n).filter(|&i| spans[i].0 >= c.start && spans[i].1 <= c.end).collect();
                prop_assert!(!inside.is_empty() && inside.len() <= size);
                for i in inside { covered[i] = true; }
                prop_assert_eq!(&text[c.start..c.end], c.text.as_str());
            }
            prop_assert!(covered.iter().all(|&c| c));
            for pair in chunks.windows(2) {
                prop_assert!(pair[0].start < pair[1].start, "chunks advance");
            }
        }

        /// Arbitrary unicode never panics and chunks are valid slices.
        #[test]
        fn arbitrary_text_is_safe(text in "\\PC{0,200}", size in 1u32..5) {
            for c in by_sentences(&text, size, 0) {
                prop_assert_eq!(&text[c.start..c.end], c.text.as_str());
                prop_assert!(!c.text.trim().is_empty());
            }
        }
    }
}

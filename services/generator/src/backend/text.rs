//! Turning a token stream into text deltas: UTF-8 split across tokens, and stop sequences that
//! may arrive split across tokens too (the text that could still become a stop sequence is held
//! back until it is known not to be one).

/// Bytes in, complete UTF-8 out; an incomplete sequence at the end waits for the next bytes, an
/// invalid one becomes U+FFFD.
#[derive(Debug, Default)]
pub struct Utf8Buffer {
    pending: Vec<u8>,
}

impl Utf8Buffer {
    pub fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let mut out = String::new();
        loop {
            match std::str::from_utf8(&self.pending) {
                Ok(s) => {
                    out.push_str(s);
                    self.pending.clear();
                    return out;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    // Safe: from_utf8 vouched for the first `valid` bytes.
                    out.push_str(std::str::from_utf8(&self.pending[..valid]).unwrap_or_default());
                    match e.error_len() {
                        // Incomplete sequence at the end: keep it for the next token.
                        None => {
                            self.pending.drain(..valid);
                            return out;
                        }
                        Some(bad) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            self.pending.drain(..valid + bad);
                        }
                    }
                }
            }
        }
    }

    /// What is left at the end of the stream (an incomplete sequence becomes U+FFFD).
    pub fn finish(&mut self) -> String {
        let rest = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        rest
    }
}

/// Result of feeding text to a [`StopScanner`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scan {
    /// Text that can be sent now.
    pub emit: String,
    /// A stop sequence was found; `emit` ends right before it.
    pub stopped: bool,
}

/// Finds stop sequences in streamed text.
#[derive(Debug, Default)]
pub struct StopScanner {
    stops: Vec<String>,
    held: String,
}

impl StopScanner {
    pub fn new(stops: &[String]) -> Self {
        Self { stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(), held: String::new() }
    }

    pub fn push(&mut self, text: &str) -> Scan {
        self.held.push_str(text);
        let first = self.stops.iter().filter_map(|s| self.held.find(s.as_str())).min();
        if let Some(at) = first {
            let emit = self.held[..at].to_string();
            self.held.clear();
            return Scan { emit, stopped: true };
        }
        // Hold back the longest tail that is a proper prefix of some stop sequence.
        let hold = self
            .stops
            .iter()
            .map(|s| {
                (1..s.len())
                    .rev()
                    .filter(|&k| s.is_char_boundary(k))
                    .find(|&k| self.held.ends_with(&s[..k]))
                    .unwrap_or(0)
            })
            .max()
            .unwrap_or(0);
        let cut = self.held.len() - hold;
        let emit = self.held[..cut].to_string();
        self.held.drain(..cut);
        Scan { emit, stopped: false }
    }

    /// Text held back at the end of the stream (it never became a stop sequence).
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }
}

/// Numbers cited in `text` as `[n]` (also `[1, 2]` and `[1][2]`).
pub fn cited_numbers(text: &str) -> Vec<u32> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(open) = rest.find('[') {
        rest = &rest[open + 1..];
        let Some(close) = rest.find(']') else { break };
        let inside = &rest[..close];
        if inside.split(',').all(|p| p.trim().parse::<u32>().is_ok()) {
            out.extend(inside.split(',').filter_map(|p| p.trim().parse::<u32>().ok()));
        }
        rest = &rest[close + 1..];
    }
    out.sort_unstable();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn utf8_split_across_tokens_is_joined() {
        let mut b = Utf8Buffer::default();
        let euro = "€".as_bytes();
        assert_eq!(b.push(&euro[..1]), "");
        assert_eq!(b.push(&euro[1..2]), "");
        assert_eq!(b.push(&[euro[2], b'x']), "€x");
        assert_eq!(b.finish(), "");
    }

    #[test]
    fn invalid_utf8_becomes_replacement() {
        let mut b = Utf8Buffer::default();
        assert_eq!(b.push(&[b'a', 0xff, b'b']), "a\u{fffd}b");
        assert_eq!(b.push(&[0xe2, 0x82]), "");
        assert_eq!(b.finish(), "\u{fffd}");
    }

    #[test]
    fn stop_sequence_split_across_pieces() {
        let mut s = StopScanner::new(&["</end>".to_string()]);
        assert_eq!(s.push("Berlin.</"), Scan { emit: "Berlin.".into(), stopped: false });
        assert_eq!(s.push("en"), Scan { emit: "".into(), stopped: false });
        assert_eq!(s.push("d> more"), Scan { emit: "".into(), stopped: true });
    }

    #[test]
    fn held_text_is_released_when_it_is_not_a_stop() {
        let mut s = StopScanner::new(&["\n\n".to_string()]);
        assert_eq!(s.push("a\n").emit, "a");
        assert_eq!(s.push("b").emit, "\nb");
        assert_eq!(s.push("c\n").emit, "c");
        assert_eq!(s.finish(), "\n");
    }

    #[test]
    fn earliest_stop_wins() {
        let mut s = StopScanner::new(&["bb".to_string(), "a".to_string()]);
        assert_eq!(s.push("xbbya"), Scan { emit: "x".into(), stopped: true });
    }

    #[test]
    fn citations_are_parsed() {
        assert_eq!(cited_numbers("Berlin [1]. Also [2, 3][3] and [x] [4"), vec![1, 2, 3]);
        assert!(cited_numbers("no citations").is_empty());
    }

    proptest! {
        /// However the text is split into pieces, the emitted text is the text up to the first
        /// stop sequence, and nothing after it.
        #[test]
        fn scanner_matches_a_whole_text_search(
            text in "[ab\\n€]{0,40}",
            stop in "[ab\\n€]{1,3}",
            cuts in proptest::collection::vec(0usize..40, 0..8),
        ) {
            let mut bounds: Vec<usize> = cuts.into_iter().filter(|&c| c <= text.len() && text.is_char_boundary(c)).collect();
            bounds.push(0);
            bounds.push(text.len());
            bounds.sort_unstable();
            bounds.dedup();
            let mut s = StopScanner::new(std::slice::from_ref(&stop));
            let mut out = String::new();
            let mut stopped = false;
            for w in bounds.windows(2) {
                let scan = s.push(&text[w[0]..w[1]]);
                out.push_str(&scan.emit);
                if scan.stopped { stopped = true; break; }
            }
            if !stopped { out.push_str(&s.finish()); }
            let want = text.find(stop.as_str()).map_or(text.as_str(), |i| &text[..i]);
            prop_assert_eq!(out.as_str(), want);
            prop_assert_eq!(stopped, text.contains(stop.as_str()));
        }
    }
}

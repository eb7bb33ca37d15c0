//! Grounded prompts: retrieved chunks numbered `[1]`, `[2]`, ... in a chat prompt with an
//! instruction to cite them, fitted to the model's context window with the model's own
//! tokenizer (the lowest-scored chunks are dropped first).

use crate::backend::{ChatMessage, Input, LanguageModel, check_fits};
use crate::error::GenError;

/// The configurable parts of a prompt. `{context}` and `{question}` are replaced in `user`,
/// `{question}` in `no_context_user`; each numbered chunk is `passage` with `{n}` and `{text}`
/// (and `{doc_id}`) replaced, chunks separated by a blank line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PromptTemplate {
    pub system: String,
    pub user: String,
    pub passage: String,
    pub no_context_user: String,
}

pub const DEFAULT_SYSTEM: &str = "You are a helpful assistant. Answer the question using only the numbered context \
passages. Cite the passages you use by their numbers in square brackets, like [1]. If the passages do not \
contain the answer, say that you do not know.";
pub const DEFAULT_USER: &str = "Context:\n{context}\n\nQuestion: {question}";
pub const DEFAULT_PASSAGE: &str = "[{n}] {text}";
pub const DEFAULT_NO_CONTEXT_USER: &str = "No context passages were found for this question. Say so, and answer only if you are certain.\n\nQuestion: {question}";

impl Default for PromptTemplate {
    fn default() -> Self {
        Self {
            system: DEFAULT_SYSTEM.into(),
            user: DEFAULT_USER.into(),
            passage: DEFAULT_PASSAGE.into(),
            no_context_user: DEFAULT_NO_CONTEXT_USER.into(),
        }
    }
}

impl PromptTemplate {
    /// Checks the placeholders a template needs are there.
    pub fn validate(&self) -> Result<(), GenError> {
        for (field, text, needs) in [
            ("prompt_template", &self.user, &["{context}", "{question}"][..]),
            ("passage_template", &self.passage, &["{n}", "{text}"][..]),
            ("no_context_template", &self.no_context_user, &["{question}"][..]),
        ] {
            if let Some(missing) = needs.iter().find(|n| !text.contains(**n)) {
                return Err(GenError::invalid(field, format!("must contain {missing}")));
            }
        }
        Ok(())
    }

    fn passage_text(&self, n: usize, p: &Chunk) -> String {
        self.passage.replace("{n}", &n.to_string()).replace("{doc_id}", &p.doc_id).replace("{text}", &p.text)
    }

    fn messages(&self, user: String) -> Input {
        let mut m = Vec::with_capacity(2);
        if !self.system.is_empty() {
            m.push(ChatMessage::new("system", self.system.clone()));
        }
        m.push(ChatMessage::new("user", user));
        Input::Chat(m)
    }

    /// The prompt with `chunks` numbered in order.
    pub fn render(&self, question: &str, chunks: &[&Chunk]) -> Input {
        let context: Vec<String> =
            chunks.iter().enumerate().map(|(i, c)| self.passage_text(i + 1, c)).collect();
        self.messages(self.user.replace("{question}", question).replace("{context}", &context.join("\n\n")))
    }

    /// The prompt of the no-context path.
    pub fn render_no_context(&self, question: &str) -> Input {
        self.messages(self.no_context_user.replace("{question}", question))
    }
}

/// A retrieved chunk.
#[derive(Debug, Clone, PartialEq)]
pub struct Chunk {
    pub doc_id: String,
    pub chunk: u32,
    pub score: f32,
    pub text: String,
}

/// A prompt that fits: `used` are indexes into the retrieved chunks, in prompt order (the
/// chunk at `used[0]` is `[1]`).
#[derive(Debug, Clone)]
pub struct Fitted {
    pub input: Input,
    pub used: Vec<usize>,
    pub prompt_tokens: usize,
}

/// Fits `chunks` (best first) into the context window with room for `max_tokens`, dropping the
/// lowest-scored chunks first. INVALID_ARGUMENT when even the question alone does not fit.
pub fn fit(
    template: &PromptTemplate,
    question: &str,
    chunks: &[Chunk],
    model: &dyn LanguageModel,
    max_tokens: usize,
) -> Result<Fitted, GenError> {
    let window = model.info().context_window;
    let mut used: Vec<usize> = (0..chunks.len()).collect();
    // Drop by an estimate first (the chunks' own token counts: a lower bound of what each adds,
    // separators not counted), then confirm with exact counts of the rendered prompt and drop
    // more while it does not fit.
    let base = model.count_tokens(&template.render(question, &[]))?;
    check_fits(base, max_tokens, window)?;
    let mut sizes = Vec::with_capacity(chunks.len());
    for (i, c) in chunks.iter().enumerate() {
        sizes.push(model.count_text_tokens(&template.passage_text(i + 1, c))?);
    }
    let mut estimate = base + sizes.iter().sum::<usize>();
    while estimate + max_tokens > window && !used.is_empty() {
        if let Some(dropped) = used.pop() {
            estimate -= sizes[dropped];
        }
    }
    loop {
        let refs: Vec<&Chunk> = used.iter().map(|&i| &chunks[i]).collect();
        let input = template.render(question, &refs);
        let prompt_tokens = model.count_tokens(&input)?;
        if prompt_tokens + max_tokens <= window || used.is_empty() {
            check_fits(prompt_tokens, max_tokens, window)?;
            return Ok(Fitted { input, used, prompt_tokens });
        }
        used.pop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{BackendInfo, BackendStats, Events, GenerationRequest};

    /// Counts one token per whitespace-separated word: enough to test the budget arithmetic.
    #[derive(Debug)]
    struct WordCounter(BackendInfo, BackendStats);

    impl LanguageModel for WordCounter {
        fn info(&self) -> &BackendInfo {
            &self.0
        }
        fn stats(&self) -> &BackendStats {
            &self.1
        }
        fn count_tokens(&self, input: &Input) -> Result<usize, GenError> {
            match input {
                Input::Text(t) => self.count_text_tokens(t),
                Input::Chat(m) => Ok(m.iter().map(|m| m.content.split_whitespace().count() + 2).sum()),
            }
        }
        fn count_text_tokens(&self, text: &str) -> Result<usize, GenError> {
            Ok(text.split_whitespace().count())
        }
        fn generate(&self, _: GenerationRequest) -> Result<Events, GenError> {
            Err(GenError::Model("word counter cannot generate".into()))
        }
    }

    fn counter(window: usize) -> WordCounter {
        WordCounter(
            BackendInfo {
                name: "words".into(),
                kind: "test",
                model: "words".into(),
                context_window: window,
                max_concurrent: 1,
            },
            BackendStats::default(),
        )
    }

    fn chunk(doc: &str, score: f32, words: usize) -> Chunk {
        Chunk { doc_id: doc.into(), chunk: 0, score, text: vec!["w"; words].join(" ") }
    }

    #[test]
    fn renders_numbered_passages_and_question() {
        let t = PromptTemplate::default();
        let a = chunk("a", 0.9, 2);
        let Input::Chat(m) = t.render("Why?", &[&a]) else { panic!("chat") };
        assert_eq!(m[0].role, "system");
        assert!(m[0].content.contains("square brackets"));
        assert_eq!(m[1].content, "Context:\n[1] w w\n\nQuestion: Why?");
    }

    #[test]
    fn everything_fits_when_there_is_room() {
        let chunks = vec![chunk("a", 0.9, 10), chunk("b", 0.8, 10)];
        let f = fit(&PromptTemplate::default(), "q", &chunks, &counter(1000), 100).expect("fits");
        assert_eq!(f.used, vec![0, 1]);
    }

    #[test]
    fn lowest_scored_chunks_are_dropped_first() {
        let t = PromptTemplate::default();
        let chunks = vec![chunk("a", 0.9, 30), chunk("b", 0.8, 30), chunk("c", 0.7, 30)];
        let m = counter(0);
        let base = m.count_tokens(&t.render("q", &[])).expect("count");
        let two = m.count_tokens(&t.render("q", &[&chunks[0], &chunks[1]])).expect("count");
        // Room for exactly two chunks and 50 answer tokens.
        let f = fit(&t, "q", &chunks, &counter(two + 50), 50).expect("fits");
        assert_eq!(f.used, vec![0, 1]);
        assert_eq!(f.prompt_tokens, two);
        // Room for none: the question alone.
        let f = fit(&t, "q", &chunks, &counter(base + 50), 50).expect("fits");
        assert!(f.used.is_empty());
    }

    #[test]
    fn a_question_too_long_for_the_window_is_invalid() {
        let e =
            fit(&PromptTemplate::default(), &"w ".repeat(200), &[], &counter(100), 10).expect_err("too long");
        assert!(matches!(e, GenError::InvalidArgument { field: "max_tokens", .. }), "{e:?}");
    }

    #[test]
    fn templates_need_their_placeholders() {
        let mut t = PromptTemplate::default();
        assert!(t.validate().is_ok());
        t.user = "no placeholders".into();
        assert!(t.validate().is_err());
    }
}

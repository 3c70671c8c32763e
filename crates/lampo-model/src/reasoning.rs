//! Reasoning as text: the `<think>…</think>` block that Qwen3, QwQ,
//! DeepSeek-R1 and SmolLM3 write before their answer. The format is
//! recognised from the chat template; [`ReasoningParser`] splits a
//! streamed answer into its reasoning and its content; [`Reasoning::grammar`]
//! lets an output grammar (a schema, tool calls) begin with a reasoning
//! block, so that constrained requests keep their thinking.
//!
//! A block counts as reasoning only at the start of the answer (after
//! whitespace), or from the first token when the prompt itself opened it
//! (templates that make the model think). An unclosed block (the answer
//! cut by `max_tokens`) is all reasoning. Whitespace around the reasoning
//! and between `</think>` and the content is not part of either, as the
//! templates themselves strip it when they render a past turn.

/// The tags a model's reasoning is written between.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reasoning {
    pub open: &'static str,
    pub close: &'static str,
}

/// The tags of Qwen3, QwQ, DeepSeek-R1 and the models trained like them.
pub const THINK: Reasoning = Reasoning {
    open: "<think>",
    close: "</think>",
};

/// A piece of the model's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Part {
    /// Text of the reasoning block, tags left out.
    Reasoning(String),
    /// Text of the answer proper.
    Content(String),
}

impl Reasoning {
    /// The reasoning format a chat template's source teaches, if any: one
    /// that writes both tags (to show past reasoning, or to open or close
    /// a block in the generation prompt).
    pub fn of_template(source: &str) -> Option<Reasoning> {
        (source.contains(THINK.open) && source.contains(THINK.close)).then_some(THINK)
    }

    /// Whether a rendered prompt leaves the model inside a reasoning
    /// block (its generation prompt ends with the opening tag).
    pub fn opened_by(&self, prompt: &str) -> bool {
        prompt.trim_end().ends_with(self.open)
    }

    /// A parser for an answer to a prompt; `inside`: the prompt opened
    /// the block ([`Reasoning::opened_by`]).
    pub fn parser(&self, inside: bool) -> ReasoningParser {
        ReasoningParser {
            tags: *self,
            state: if inside {
                State::Reasoning
            } else {
                State::Start
            },
            pending: String::new(),
            started: false,
            blank: String::new(),
        }
    }

    /// A grammar (llguidance's Lark syntax) for an answer that may begin
    /// with a reasoning block (must finish one, when `inside`) and then
    /// follows `answer`, a Lark grammar whose top rule is `start`.
    pub fn grammar(&self, answer: &str, inside: bool) -> String {
        let mut g = String::new();
        g.push_str(if inside {
            "start: reasoning_text reasoning_gap answer_start\n"
        } else {
            "start: reasoning? answer_start\n"
        });
        let quoted = |s: &str| serde_json::to_string(s).expect("a string serializes");
        g.push_str(&format!(
            "reasoning: {} reasoning_text reasoning_gap\n",
            quoted(self.open)
        ));
        // Any text, ended by the first closing tag (a lazy match).
        g.push_str(&format!(
            "reasoning_text[suffix={}]: /(.|\\n)*/\n",
            quoted(self.close)
        ));
        g.push_str("reasoning_gap: /[ \\t\\r\\n]*/\n");
        for line in answer.lines() {
            match line.strip_prefix("start:") {
                Some(rest) => g.push_str(&format!("answer_start:{rest}\n")),
                None => {
                    g.push_str(line);
                    g.push('\n');
                }
            }
        }
        g
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Nothing but whitespace yet: a block may still open.
    Start,
    /// Inside the block.
    Reasoning,
    /// After the block: whitespace before the content is dropped.
    AfterBlock,
    /// In the content.
    Content,
}

/// Splits streamed answer text into reasoning and content, sending each
/// as soon as it is certain.
#[derive(Debug)]
pub struct ReasoningParser {
    tags: Reasoning,
    state: State,
    /// Text not yet classified: at the start, what may be the opening
    /// tag; in the block, what may be the start of the closing tag.
    pending: String,
    /// Whether any reasoning was sent (leading whitespace is dropped).
    started: bool,
    /// Whitespace in the reasoning, held until more reasoning follows.
    blank: String,
}

impl ReasoningParser {
    pub fn push(&mut self, text: &str) -> Vec<Part> {
        self.pending.push_str(text);
        let mut out = Vec::new();
        loop {
            match self.state {
                State::Start => {
                    let rest = self.pending.trim_start();
                    if rest.starts_with(self.tags.open) {
                        let at = self.pending.len() - rest.len() + self.tags.open.len();
                        self.pending.drain(..at);
                        self.state = State::Reasoning;
                    } else if rest.is_empty() || self.tags.open.starts_with(rest) {
                        break;
                    } else {
                        // An answer without reasoning passes through as written.
                        self.state = State::Content;
                    }
                }
                State::Reasoning => {
                    if let Some(at) = self.pending.find(self.tags.close) {
                        let text: String = self.pending.drain(..at).collect();
                        self.pending.drain(..self.tags.close.len());
                        self.reason(&text, &mut out);
                        self.blank.clear();
                        self.state = State::AfterBlock;
                        continue;
                    }
                    // Keep a tail that may be the start of the closing tag.
                    let keep = (0..self.pending.len())
                        .filter(|&i| self.pending.is_char_boundary(i))
                        .find(|&i| self.tags.close.starts_with(&self.pending[i..]))
                        .unwrap_or(self.pending.len());
                    let text: String = self.pending.drain(..keep).collect();
                    self.reason(&text, &mut out);
                    break;
                }
                State::AfterBlock => {
                    let kept = self.pending.trim_start().len();
                    self.pending.drain(..self.pending.len() - kept);
                    if self.pending.is_empty() {
                        break;
                    }
                    self.state = State::Content;
                }
                State::Content => {
                    if !self.pending.is_empty() {
                        out.push(Part::Content(std::mem::take(&mut self.pending)));
                    }
                    break;
                }
            }
        }
        out
    }

    /// What is held when the answer ends: text that only looked like the
    /// start of a tag.
    pub fn finish(&mut self) -> Vec<Part> {
        let rest = std::mem::take(&mut self.pending);
        let mut out = Vec::new();
        match self.state {
            State::Start | State::Content if !rest.is_empty() => out.push(Part::Content(rest)),
            State::Reasoning => self.reason(&rest, &mut out),
            _ => {}
        }
        out
    }

    fn reason(&mut self, text: &str, out: &mut Vec<Part>) {
        let text = if self.started {
            text
        } else {
            text.trim_start()
        };
        if text.is_empty() {
            return;
        }
        self.started = true;
        let mut t = std::mem::take(&mut self.blank);
        t.push_str(text);
        let kept = t.trim_end().len();
        self.blank = t[kept..].to_string();
        t.truncate(kept);
        if !t.is_empty() {
            out.push(Part::Reasoning(t));
        }
    }
}

/// A whole answer's reasoning (if any) and content.
pub fn split(reasoning: Reasoning, inside: bool, text: &str) -> (Option<String>, String) {
    let mut p = reasoning.parser(inside);
    let mut parts = p.push(text);
    parts.extend(p.finish());
    let (mut thought, mut content) = (None::<String>, String::new());
    for part in parts {
        match part {
            Part::Reasoning(t) => thought.get_or_insert_default().push_str(&t),
            Part::Content(t) => content.push_str(&t),
        }
    }
    (thought, content)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every way of cutting `text` in two, and one character at a time.
    fn splits(text: &str) -> Vec<Vec<&str>> {
        let mut out = vec![vec![text]];
        for (i, _) in text.char_indices().skip(1) {
            out.push(vec![&text[..i], &text[i..]]);
        }
        out.push(
            text.char_indices()
                .map(|(i, c)| &text[i..i + c.len_utf8()])
                .collect(),
        );
        out
    }

    fn parse(inside: bool, pieces: &[&str]) -> (String, String) {
        let mut p = THINK.parser(inside);
        let mut parts: Vec<Part> = pieces.iter().flat_map(|t| p.push(t)).collect();
        parts.extend(p.finish());
        let (mut r, mut c) = (String::new(), String::new());
        for part in parts {
            match part {
                Part::Reasoning(t) => r.push_str(&t),
                Part::Content(t) => c.push_str(&t),
            }
        }
        (r, c)
    }

    #[test]
    fn reasoning_and_content_split_the_same_however_the_text_is_cut() {
        let cases: &[(bool, &str, &str, &str)] = &[
            (
                false,
                "<think>\nLet me see: 2 < 3 and </thin is not a tag.\n</think>\n\nYes, ünïcödé.",
                "Let me see: 2 < 3 and </thin is not a tag.",
                "Yes, ünïcödé.",
            ),
            (false, "  <think>a  b</think>c ", "a  b", "c "),
            (
                true,
                "\nstep one\n\nstep two\n</think>\n\nDone",
                "step one\n\nstep two",
                "Done",
            ),
            // Without a block the answer is untouched.
            (
                false,
                " Paris. <think>no</think>",
                "",
                " Paris. <think>no</think>",
            ),
            (false, "<thin", "", "<thin"),
            (false, "\n\n", "", "\n\n"),
            // Cut off while thinking: all of it is reasoning.
            (false, "<think>I wonder </th", "I wonder </th", ""),
            (true, "x", "x", ""),
            (false, "<think></think>Hi", "", "Hi"),
        ];
        for &(inside, text, reasoning, content) in cases {
            for cut in splits(text) {
                assert_eq!(
                    parse(inside, &cut),
                    (reasoning.to_string(), content.to_string()),
                    "{cut:?}"
                );
            }
            let (r, c) = split(THINK, inside, text);
            assert_eq!(
                (r.unwrap_or_default(), c),
                (reasoning.into(), content.into())
            );
        }
    }

    #[test]
    fn reasoning_streams_as_it_comes() {
        let mut p = THINK.parser(false);
        assert!(p.push("<thi").is_empty());
        assert_eq!(
            p.push("nk>Hmm, let"),
            vec![Part::Reasoning("Hmm, let".into())]
        );
        // Whitespace waits for the text after it; a possible tag waits too.
        assert_eq!(p.push(" "), vec![]);
        assert_eq!(p.push("me</"), vec![Part::Reasoning(" me".into())]);
        assert_eq!(p.push("think>\n"), vec![]);
        assert_eq!(p.push("\nOK"), vec![Part::Content("OK".into())]);
    }

    #[test]
    fn templates_and_prompts_say_where_reasoning_is() {
        assert_eq!(
            Reasoning::of_template("{{ '<think>\\n\\n</think>\\n\\n' }}"),
            Some(THINK)
        );
        assert_eq!(Reasoning::of_template("{{ messages }}"), None);
        assert!(THINK.opened_by("<|im_start|>assistant\n<think>\n"));
        assert!(!THINK.opened_by("<|im_start|>assistant\n<think>\n\n</think>\n\n"));
        let g = THINK.grammar("start: calls\ncalls: \"x\"\n", false);
        assert!(
            g.starts_with("start: reasoning? answer_start\n")
                && g.contains("answer_start: calls\ncalls: \"x\"\n")
                && g.contains("reasoning_text[suffix=\"</think>\"]"),
            "{g}"
        );
        let g = THINK.grammar("start: x\n", true);
        assert!(g.starts_with("start: reasoning_text reasoning_gap answer_start\n"));
    }
}

//! Mistral's later tool-call format (tokenizers v11 and up: Mistral Small
//! 3.x, Devstral, Magistral): each call is `[TOOL_CALLS]name[ARGS]{...}`,
//! perhaps with `[CALL_ID]id` before `[ARGS]`, after text or not. The name
//! is sent once `[ARGS]` follows it; the arguments stream as they come, a
//! scan of the JSON saying where they end.

use super::Piece;
use super::json::Scan;

pub(super) const LEAD: &str = "[TOOL_CALLS]";
pub(super) const ARGS: &str = "[ARGS]";
const CALL_ID: &str = "[CALL_ID]";

/// Longest name (and call id) taken before `[ARGS]`; past it the text is
/// not a call.
const MAX_HEAD: usize = 256;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Text, in which `[TOOL_CALLS]` is looked for.
    Content,
    /// After `[TOOL_CALLS]`: the name, up to `[ARGS]`.
    Name,
    /// The arguments' JSON.
    Args,
    /// After a call: whitespace is dropped.
    After,
}

#[derive(Debug)]
pub struct NamedCallParser {
    state: State,
    pending: String,
    scan: Scan,
    /// Whether the arguments' value has begun (whitespace before it is dropped).
    begun: bool,
    calls: usize,
}

impl Default for NamedCallParser {
    fn default() -> NamedCallParser {
        NamedCallParser {
            state: State::Content,
            pending: String::new(),
            scan: Scan::default(),
            begun: false,
            calls: 0,
        }
    }
}

impl NamedCallParser {
    pub fn calls(&self) -> usize {
        self.calls
    }

    pub fn push(&mut self, text: &str) -> Vec<Piece> {
        self.pending.push_str(text);
        let mut out = Vec::new();
        loop {
            match self.state {
                State::Content => {
                    if let Some(at) = self.pending.find(LEAD) {
                        let before: String = self.pending.drain(..at + LEAD.len()).collect();
                        if at > 0 {
                            out.push(Piece::Content(before[..at].to_string()));
                        }
                        self.state = State::Name;
                        continue;
                    }
                    // Keep a tail that may be the start of the lead.
                    let keep = (0..self.pending.len())
                        .filter(|&i| self.pending.is_char_boundary(i))
                        .find(|&i| LEAD.starts_with(&self.pending[i..]))
                        .unwrap_or(self.pending.len());
                    if keep > 0 {
                        out.push(Piece::Content(self.pending.drain(..keep).collect()));
                    }
                    break;
                }
                State::Name => {
                    let found = self.pending.find(ARGS);
                    // A head longer than any name is no call, however the
                    // text came.
                    let too_long = match found {
                        Some(at) => at > MAX_HEAD,
                        None => self.pending.len() > MAX_HEAD + ARGS.len(),
                    };
                    if too_long {
                        let text = format!("{LEAD}{}", std::mem::take(&mut self.pending));
                        out.push(Piece::Content(text));
                        self.state = State::Content;
                        continue;
                    }
                    let Some(at) = found else {
                        break;
                    };
                    let head: String = self.pending.drain(..at + ARGS.len()).collect();
                    let head = &head[..at];
                    let name = head.split(CALL_ID).next().unwrap_or_default().trim();
                    out.push(Piece::CallStart {
                        index: self.calls,
                        name: name.to_string(),
                    });
                    self.calls += 1;
                    self.scan = Scan::default();
                    self.begun = false;
                    self.state = State::Args;
                }
                State::Args => {
                    if !self.begun {
                        let kept = self.pending.trim_start().len();
                        self.pending.drain(..self.pending.len() - kept);
                        if self.pending.is_empty() {
                            break;
                        }
                        self.begun = true;
                    }
                    let end = self
                        .pending
                        .bytes()
                        .position(|b| self.scan.feed(b))
                        .map(|i| i + 1);
                    let upto = end.unwrap_or(self.pending.len());
                    if upto > 0 {
                        out.push(Piece::Arguments {
                            index: self.calls - 1,
                            text: self.pending.drain(..upto).collect(),
                        });
                    }
                    if end.is_none() {
                        break;
                    }
                    self.state = State::After;
                }
                State::After => {
                    let kept = self.pending.trim_start().len();
                    self.pending.drain(..self.pending.len() - kept);
                    if self.pending.is_empty() {
                        break;
                    }
                    self.state = State::Content;
                }
            }
        }
        out
    }

    pub fn finish(&mut self) -> Vec<Piece> {
        let rest = std::mem::take(&mut self.pending);
        match self.state {
            State::Content if !rest.is_empty() => vec![Piece::Content(rest)],
            State::Name => vec![Piece::Content(format!("{LEAD}{rest}"))],
            _ => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::ToolFormat;
    use super::super::testing::{parse, splits};

    fn named(pieces: &[&str]) -> (String, Vec<(String, String)>) {
        parse(ToolFormat::MistralNamed, pieces)
    }

    #[test]
    fn calls_parse_the_same_however_the_text_is_cut() {
        let text = "Let me look. [TOOL_CALLS]get_weather[ARGS]{\"city\": \"[ARGS] {\\\"x\\\"}\"}[TOOL_CALLS]now[CALL_ID]a1b2c3d4e[ARGS] {}\n";
        let want = (
            "Let me look. ".to_string(),
            vec![
                (
                    "get_weather".to_string(),
                    "{\"city\": \"[ARGS] {\\\"x\\\"}\"}".to_string(),
                ),
                ("now".to_string(), "{}".to_string()),
            ],
        );
        for cut in splits(text) {
            assert_eq!(named(&cut), want, "{cut:?}");
        }
        for text in ["No [TOOL] here.", "[TOOL_CA", "[TOOL_CALLS]half"] {
            for cut in splits(text) {
                assert_eq!(named(&cut), (text.to_string(), vec![]), "{cut:?}");
            }
        }
        let long = format!("[TOOL_CALLS]{}[ARGS]{{}}", "a".repeat(300));
        for cut in splits(&long) {
            assert_eq!(
                named(&cut),
                (long.clone(), vec![]),
                "a {} byte cut",
                cut[0].len()
            );
        }
        // Cut off in the arguments: what came.
        assert_eq!(
            named(&["[TOOL_CALLS]f[ARGS]{\"a\": [1"]),
            (String::new(), vec![("f".into(), "{\"a\": [1".into())])
        );
    }
}

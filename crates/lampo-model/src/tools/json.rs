//! Calls written as JSON objects: as Llama 3.1-3.3 write them, an answer
//! that is `{"name": ..., "parameters": {...}}` (perhaps after
//! `<|python_tag|>`), any other answer being content; as Mistral writes
//! them, `[TOOL_CALLS]` and a list of `{"name": ..., "arguments": {...}}`,
//! after text or not. The arguments stream as they come: a scan of the
//! JSON (strings, escapes, nesting) knows exactly where they end, so no
//! text is held back but what is not yet certain to be a call.

use serde_json::Value;

use super::{Piece, call_head};

/// How a format frames its JSON calls.
#[derive(Clone, Copy, Debug)]
pub struct Framing {
    /// Text that may (Llama 3.1's `<|python_tag|>`) or must (Mistral's
    /// `[TOOL_CALLS]`) come before the calls.
    pub(super) lead: &'static str,
    /// Whether the calls need the lead; then they may follow text.
    lead_required: bool,
    /// Whether the calls come as a JSON list, `[{...}, {...}]`.
    list: bool,
    /// The key the arguments are written under.
    key: &'static str,
}

/// Llama 3.1-3.3: the answer is one `{"name": ..., "parameters": {...}}`.
pub const LLAMA3: Framing = Framing {
    lead: "<|python_tag|>",
    lead_required: false,
    list: false,
    key: "parameters",
};

/// Mistral (v3 tokenizers: Mistral 7B v0.3, Nemo, Small 2409):
/// `[TOOL_CALLS][{"name": ..., "arguments": {...}}, ...]`.
pub const MISTRAL: Framing = Framing {
    lead: "[TOOL_CALLS]",
    lead_required: true,
    list: true,
    key: "arguments",
};

/// Where a JSON value ends: nesting and string state, byte by byte.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Scan {
    depth: usize,
    in_string: bool,
    escaped: bool,
}

impl Scan {
    /// Feeds one byte of an object, array or string; true once it is complete.
    pub(super) fn feed(&mut self, b: u8) -> bool {
        if self.in_string {
            if self.escaped {
                self.escaped = false;
            } else if b == b'\\' {
                self.escaped = true;
            } else if b == b'"' {
                self.in_string = false;
                return self.depth == 0;
            }
            return false;
        }
        match b {
            b'"' => self.in_string = true,
            b'{' | b'[' => self.depth += 1,
            b'}' | b']' => {
                self.depth = self.depth.saturating_sub(1);
                return self.depth == 0;
            }
            _ => {}
        }
        false
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Only whitespace (or part of the lead) so far, where calls need
    /// no lead.
    Start,
    /// After the lead: a list's brackets and commas, or a call's `{`.
    Section,
    /// In a call's object, `pending` holding it from its `{`.
    Call,
    /// After the calls: whitespace is dropped, anything else is content.
    After,
    /// Text (in which, where calls need the lead, the lead is looked for).
    Content,
}

#[derive(Debug)]
pub struct JsonCallParser {
    framing: Framing,
    state: State,
    /// Inside a list of calls.
    in_list: bool,
    pending: String,
    /// Bytes of `pending` scanned for the object's end.
    scanned: usize,
    object: Scan,
    /// Once the name is sent: where the arguments begin in `pending`,
    /// how much of them is sent, their scan, and whether they ended.
    args: Option<(usize, usize, Scan, bool)>,
    calls: usize,
}

impl JsonCallParser {
    pub fn new(framing: Framing) -> JsonCallParser {
        JsonCallParser {
            framing,
            state: if framing.lead_required {
                State::Content
            } else {
                State::Start
            },
            in_list: false,
            pending: String::new(),
            scanned: 0,
            object: Scan::default(),
            args: None,
            calls: 0,
        }
    }

    pub fn calls(&self) -> usize {
        self.calls
    }

    pub fn push(&mut self, text: &str) -> Vec<Piece> {
        self.pending.push_str(text);
        let lead = self.framing.lead;
        let mut out = Vec::new();
        loop {
            match self.state {
                State::Start => {
                    let mut rest = self.pending.trim_start();
                    if let Some(r) = rest.strip_prefix(lead) {
                        rest = r.trim_start();
                    }
                    if rest.starts_with('{') {
                        let at = self.pending.len() - rest.len();
                        self.pending.drain(..at);
                        self.state = State::Call;
                    } else if rest.is_empty() || lead.starts_with(rest) {
                        break;
                    } else {
                        self.state = State::Content;
                    }
                }
                State::Section => {
                    let kept = self.pending.trim_start().len();
                    self.pending.drain(..self.pending.len() - kept);
                    match self.pending.chars().next() {
                        None => break,
                        Some('{') => self.state = State::Call,
                        Some('[') if self.framing.list && !self.in_list => {
                            self.pending.drain(..1);
                            self.in_list = true;
                        }
                        Some(',') if self.in_list => {
                            self.pending.drain(..1);
                        }
                        Some(']') if self.in_list => {
                            self.pending.drain(..1);
                            self.in_list = false;
                            self.state = State::After;
                        }
                        Some(_) => {
                            self.in_list = false;
                            self.state = State::After;
                        }
                    }
                }
                State::Call => {
                    if self.scan(&mut out) {
                        continue;
                    }
                    break;
                }
                State::After => {
                    let kept = self.pending.trim_start().len();
                    self.pending.drain(..self.pending.len() - kept);
                    if self.pending.is_empty() {
                        break;
                    }
                    self.state = State::Content;
                }
                State::Content if self.framing.lead_required => {
                    if let Some(at) = self.pending.find(lead) {
                        let before: String = self.pending.drain(..at + lead.len()).collect();
                        if at > 0 {
                            out.push(Piece::Content(before[..at].to_string()));
                        }
                        self.state = State::Section;
                        continue;
                    }
                    // Keep a tail that may be the start of the lead.
                    let keep = (0..self.pending.len())
                        .filter(|&i| self.pending.is_char_boundary(i))
                        .find(|&i| lead.starts_with(&self.pending[i..]))
                        .unwrap_or(self.pending.len());
                    if keep > 0 {
                        out.push(Piece::Content(self.pending.drain(..keep).collect()));
                    }
                    break;
                }
                State::Content => {
                    if !self.pending.is_empty() {
                        out.push(Piece::Content(std::mem::take(&mut self.pending)));
                    }
                    break;
                }
            }
        }
        out
    }

    pub fn finish(&mut self) -> Vec<Piece> {
        let rest = std::mem::take(&mut self.pending);
        let mut out = Vec::new();
        match (self.state, self.args) {
            (State::Start | State::Content, _) if !rest.is_empty() => {
                out.push(Piece::Content(rest))
            }
            // Cut off in the call: its arguments as far as they go
            // (all of them already sent if they ended).
            (State::Call, Some((start, sent, _, false))) => {
                let args = rest[start..].trim_end();
                if args.len() > sent {
                    out.push(Piece::Arguments {
                        index: self.calls - 1,
                        text: args[sent..].to_string(),
                    });
                }
            }
            (State::Call, None) => out.push(Piece::Content(rest)),
            _ => {}
        }
        self.args = None;
        out
    }

    /// Scans the call's new text: sends its name once its arguments
    /// begin, then the arguments as they come. True when the object
    /// ended (the state moved on).
    fn scan(&mut self, out: &mut Vec<Piece>) -> bool {
        if self.args.is_none()
            && let Some((name, start)) = call_head(&self.pending, self.framing.key)
        {
            out.push(Piece::CallStart {
                index: self.calls,
                name,
            });
            self.calls += 1;
            self.args = Some((start, 0, Scan::default(), false));
        }
        let (mut ended, mut args_end) = (None, None);
        for i in self.scanned..self.pending.len() {
            let b = self.pending.as_bytes()[i];
            if let Some((start, _, scan, done)) = &mut self.args
                && i >= *start
                && !*done
                && scan.feed(b)
            {
                *done = true;
                args_end = Some(i + 1);
            }
            if self.object.feed(b) {
                ended = Some(i + 1);
                break;
            }
        }
        if let Some(e) = args_end {
            self.send_args(e, out);
        }
        self.scanned = ended.unwrap_or(self.pending.len());
        let Some(end) = ended else {
            // Arguments so far (all of them certain: the scan says where they end).
            if matches!(self.args, Some((_, _, _, false))) {
                self.send_args(self.pending.len(), out);
            }
            return false;
        };
        let object: String = self.pending.drain(..end).collect();
        self.scanned = 0;
        self.object = Scan::default();
        match self.args.take() {
            // Arguments that are not an object or array: up to the object's close.
            Some((start, sent, _, false)) => {
                let inner = object[start..end - 1].trim_end();
                if inner.len() > sent {
                    out.push(Piece::Arguments {
                        index: self.calls - 1,
                        text: inner[sent..].to_string(),
                    });
                }
            }
            Some(_) => {}
            // Another layout (arguments first, say): the call re-serialized,
            // or, not a call at all, content.
            None => {
                let parsed: Option<Value> = serde_json::from_str(&object).ok();
                let name = parsed.as_ref().and_then(|v| v.get("name")?.as_str());
                match (name, parsed.as_ref().and_then(|v| v.get(self.framing.key))) {
                    (Some(name), Some(arguments)) => {
                        out.push(Piece::CallStart {
                            index: self.calls,
                            name: name.to_string(),
                        });
                        out.push(Piece::Arguments {
                            index: self.calls,
                            text: arguments.to_string(),
                        });
                        self.calls += 1;
                    }
                    // Not a call: content as written, and what follows is
                    // read as text (where calls may begin again).
                    _ => {
                        out.push(Piece::Content(object));
                        self.in_list = false;
                        self.state = State::Content;
                        return true;
                    }
                }
            }
        }
        self.state = if self.in_list {
            State::Section
        } else {
            State::After
        };
        true
    }

    /// Sends the arguments up to byte `upto` of `pending`.
    fn send_args(&mut self, upto: usize, out: &mut Vec<Piece>) {
        let Some((start, sent, _, _)) = &mut self.args else {
            return;
        };
        let text = &self.pending[*start..upto];
        if text.len() > *sent {
            out.push(Piece::Arguments {
                index: self.calls - 1,
                text: text[*sent..].to_string(),
            });
            *sent = text.len();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::ToolFormat;
    use super::super::testing::{parse, splits};

    fn llama(pieces: &[&str]) -> (String, Vec<(String, String)>) {
        parse(ToolFormat::Llama3Json, pieces)
    }

    fn mistral(pieces: &[&str]) -> (String, Vec<(String, String)>) {
        parse(ToolFormat::MistralList, pieces)
    }

    #[test]
    fn mistral_lists_parse_the_same_however_the_text_is_cut() {
        let text = "Checking. [TOOL_CALLS] [{\"name\": \"a\", \"arguments\": {\"q\": \"[x], {y}\"}, \"id\": \"abc123def\"}, {\"name\": \"b\", \"arguments\": {}}]";
        let want = (
            "Checking. ".to_string(),
            vec![
                ("a".to_string(), "{\"q\": \"[x], {y}\"}".to_string()),
                ("b".to_string(), "{}".to_string()),
            ],
        );
        for cut in splits(text) {
            assert_eq!(mistral(&cut), want, "{cut:?}");
        }
        for text in [
            "No tools needed [here].",
            "[TOOL_",
            "{\"name\": \"a\", \"arguments\": {}}",
        ] {
            for cut in splits(text) {
                assert_eq!(mistral(&cut), (text.to_string(), vec![]), "{cut:?}");
            }
        }
        // A list that holds no call is content; a later lead still opens calls.
        let text = "[TOOL_CALLS][{\"x\": 1}] [TOOL_CALLS][{\"name\": \"f\", \"arguments\": {}}]";
        for cut in splits(text) {
            assert_eq!(
                mistral(&cut),
                ("{\"x\": 1}] ".to_string(), vec![("f".into(), "{}".into())]),
                "{cut:?}"
            );
        }
        // Cut after the arguments, inside the call's object: only the arguments.
        assert_eq!(
            mistral(&["[TOOL_CALLS][{\"name\": \"a\", \"arguments\": {\"q\": 1}, \"id\": \"ab"]),
            (String::new(), vec![("a".into(), "{\"q\": 1}".into())])
        );
        // Cut off inside the list.
        assert_eq!(
            mistral(&["[TOOL_CALLS][{\"name\": \"a\", \"arguments\": {\"q\": 1"]),
            (String::new(), vec![("a".into(), "{\"q\": 1".into())])
        );
    }

    #[test]
    fn a_call_parses_the_same_however_the_text_is_cut() {
        let text = "{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Pa\\\"ris}\", \"when\": {\"days\": [1, 2]}}}";
        let want = (
            String::new(),
            vec![(
                "get_weather".to_string(),
                "{\"city\": \"Pa\\\"ris}\", \"when\": {\"days\": [1, 2]}}".to_string(),
            )],
        );
        for cut in splits(text) {
            assert_eq!(llama(&cut), want, "{cut:?}");
        }
        let tagged = format!("<|python_tag|>{text}\n");
        for cut in splits(&tagged) {
            assert_eq!(llama(&cut), want, "{cut:?}");
        }
        // A character at a time, the arguments stream as they come.
        let mut p = ToolFormat::Llama3Json.parser();
        let fragments = splits(text)
            .pop()
            .unwrap()
            .iter()
            .flat_map(|c| p.push(c))
            .filter(|piece| matches!(piece, super::Piece::Arguments { .. }))
            .count();
        assert!(fragments > 30, "{fragments} argument fragments");
    }

    #[test]
    fn text_and_other_json_stay_content() {
        for text in [
            "The answer is {4}.",
            "  Paris",
            "{\"city\": \"Paris\"}",
            "{\"name\": \"x\"} and more",
            "<|python",
        ] {
            for cut in splits(text) {
                assert_eq!(llama(&cut), (text.to_string(), vec![]), "{cut:?}");
            }
        }
        // Arguments before the name: the call, re-serialized.
        assert_eq!(
            llama(&["{\"parameters\": {\"x\": 1}, \"name\": \"f\"}"]),
            (String::new(), vec![("f".into(), "{\"x\":1}".into())])
        );
        // Text after a call is content.
        assert_eq!(
            llama(&["{\"name\": \"f\", \"parameters\": {}}\n\nDone."]),
            ("Done.".into(), vec![("f".into(), "{}".into())])
        );
    }

    #[test]
    fn an_unfinished_call_keeps_what_came() {
        assert_eq!(
            llama(&["{\"name\": \"f\", \"parameters\": {\"a\": [1, 2"]),
            (String::new(), vec![("f".into(), "{\"a\": [1, 2".into())])
        );
        assert_eq!(llama(&["{\"na"]), ("{\"na".to_string(), vec![]));
    }
}

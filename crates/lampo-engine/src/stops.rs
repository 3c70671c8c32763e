//! Stop strings: text is held back while it might be the start of one,
//! so that a stop string split across tokens is caught and never partly
//! emitted.

/// Holds back text that might be the start of a stop string, so a stop
/// string split across tokens is caught and never partly emitted.
pub struct StopMatcher {
    stops: Vec<String>,
    pending: String,
}

impl StopMatcher {
    pub fn new(stops: &[String]) -> StopMatcher {
        StopMatcher {
            stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(),
            pending: String::new(),
        }
    }

    /// Adds generated text; returns what can be emitted now and whether a
    /// stop string was found (everything from it on is dropped).
    pub fn push(&mut self, text: &str) -> (String, bool) {
        self.pending.push_str(text);
        if let Some(at) = self
            .stops
            .iter()
            .filter_map(|s| self.pending.find(s.as_str()))
            .min()
        {
            let emit = self.pending[..at].to_string();
            self.pending.clear();
            return (emit, true);
        }
        // Keep the longest tail that begins some stop string.
        let keep = self
            .pending
            .char_indices()
            .map(|(i, _)| i)
            .find(|&i| {
                let tail = &self.pending[i..];
                self.stops.iter().any(|s| s.starts_with(tail))
            })
            .unwrap_or(self.pending.len());
        let emit = self.pending[..keep].to_string();
        self.pending.drain(..keep);
        (emit, false)
    }

    /// The text held back when generation ends without a stop string.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_stops(stops: &[&str], pieces: &[&str]) -> (String, bool) {
        let stops: Vec<String> = stops.iter().map(|s| s.to_string()).collect();
        let mut m = StopMatcher::new(&stops);
        let mut out = String::new();
        for p in pieces {
            let (emit, hit) = m.push(p);
            out.push_str(&emit);
            if hit {
                return (out, true);
            }
        }
        out.push_str(&m.finish());
        (out, false)
    }

    #[test]
    fn stop_strings_spanning_pieces_are_cut_and_never_leak() {
        assert_eq!(
            run_stops(&["\n\n"], &["Hello", "\n", "\nWorld"]),
            ("Hello".into(), true)
        );
        assert_eq!(
            run_stops(&["END"], &["abc E", "N", "D more"]),
            ("abc ".into(), true)
        );
        // A partial match that does not complete is emitted in the end.
        assert_eq!(
            run_stops(&["END"], &["abc E", "N", "x"]),
            ("abc ENx".into(), false)
        );
        assert_eq!(run_stops(&["END"], &["abc EN"]), ("abc EN".into(), false));
        // The earliest of several stops wins; multi-byte text stays whole.
        assert_eq!(run_stops(&["b", "é"], &["aéb"]), ("a".into(), true));
        assert_eq!(run_stops(&[], &["x", "y"]), ("xy".into(), false));
    }

    #[test]
    fn nothing_held_back_can_be_emitted_early() {
        let stops = vec!["<|end|>".to_string()];
        let mut m = StopMatcher::new(&stops);
        assert_eq!(m.push("text <|e"), ("text ".into(), false));
        assert_eq!(m.push("nd"), (String::new(), false));
        assert_eq!(m.push("|> after"), (String::new(), true));
    }
}

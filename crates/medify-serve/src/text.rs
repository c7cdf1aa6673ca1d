//! [`AnswerText`]: the answer's text as it streams, cut at the first stop string, with what
//! could still turn into a stop string (and, before the disclaimer, trailing whitespace) held
//! back, so that what was sent is always a prefix of the final answer.

/// The text generated so far and how much of it may be sent.
#[derive(Debug, Clone)]
pub struct AnswerText {
    text: String,
    sent: usize,
    stops: Vec<String>,
    trim_end: bool,
    stopped: bool,
}

impl AnswerText {
    /// `stops`: OpenAI `stop` strings; `trim_end`: the answer is followed by more text (the
    /// disclaimer), which [`medify_chat::Reply::display_text`] puts after the trimmed answer.
    pub fn new(stops: Vec<String>, trim_end: bool) -> AnswerText {
        AnswerText {
            text: String::new(),
            sent: 0,
            stops,
            trim_end,
            stopped: false,
        }
    }

    /// Adds a piece of generated text; returns what can be sent now.
    pub fn push(&mut self, piece: &str) -> String {
        if self.stopped {
            return String::new();
        }
        // A stop string may start in text already held back, so search from there.
        let from = self.sent.saturating_sub(self.longest_stop());
        let from = (0..=from)
            .rev()
            .find(|&i| self.text.is_char_boundary(i))
            .unwrap_or(0);
        self.text.push_str(piece);
        if let Some(cut) = self
            .stops
            .iter()
            .filter_map(|s| self.text[from..].find(s.as_str()).map(|i| from + i))
            .min()
        {
            self.text.truncate(cut);
            self.stopped = true;
        }
        let mut safe = self.text.len();
        if !self.stopped {
            for s in &self.stops {
                for (k, _) in s.char_indices().skip(1) {
                    if self.text.ends_with(&s[..k]) {
                        safe = safe.min(self.text.len() - k);
                    }
                }
            }
        }
        if self.trim_end {
            safe = safe.min(self.text.trim_end().len());
        }
        self.take(safe)
    }

    /// Whether a stop string ended the answer.
    pub fn stopped(&self) -> bool {
        self.stopped
    }

    /// Ends the answer with its `full` text as decoded from every token (which can differ from
    /// the streamed pieces at the very end: a cut-off UTF-8 sequence). Returns the rest to send
    /// and the final answer text.
    pub fn finish(&mut self, full: &str) -> (String, String) {
        if !self.stopped {
            if full.starts_with(&self.text[..self.sent]) {
                self.text = full.to_string();
            }
            // Once the answer is complete, a stop string can no longer be only begun.
            if let Some(cut) = self
                .stops
                .iter()
                .filter_map(|s| self.text.find(s.as_str()))
                .min()
                && cut >= self.sent
            {
                self.text.truncate(cut);
                self.stopped = true;
            }
        }
        let end = if self.trim_end {
            self.text.trim_end().len()
        } else {
            self.text.len()
        };
        let rest = self.take(end.max(self.sent));
        self.text.truncate(end.max(self.sent));
        (rest, self.text.clone())
    }

    fn take(&mut self, upto: usize) -> String {
        if upto <= self.sent {
            return String::new();
        }
        let out = self.text[self.sent..upto].to_string();
        self.sent = upto;
        out
    }

    fn longest_stop(&self) -> usize {
        self.stops.iter().map(String::len).max().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(
        pieces: &[&str],
        stops: &[&str],
        trim: bool,
        full: Option<&str>,
    ) -> (Vec<String>, String) {
        let mut a = AnswerText::new(stops.iter().map(|s| s.to_string()).collect(), trim);
        let mut sent: Vec<String> = pieces.iter().map(|p| a.push(p)).collect();
        let joined: String = pieces.concat();
        let (rest, text) = a.finish(full.unwrap_or(&joined));
        sent.push(rest);
        assert_eq!(sent.concat(), text, "what was sent is the answer");
        (sent, text)
    }

    #[test]
    fn stop_strings_cut_across_pieces_and_are_never_sent() {
        let (sent, text) = run(
            &["Hello", " wor", "ld. EN", "D more"],
            &["END"],
            false,
            None,
        );
        assert_eq!(text, "Hello world. ");
        assert_eq!(sent, ["Hello", " wor", "ld. ", "", ""]);
        let (_, text) = run(&["a<", "/s", "x"], &["</s>"], false, None);
        assert_eq!(
            text, "a</sx",
            "a begun stop string that does not finish is sent"
        );
        let (_, text) = run(&["abc"], &["zz", "b"], false, None);
        assert_eq!(text, "a");
    }

    #[test]
    fn trailing_whitespace_waits_for_more_text() {
        let (sent, text) = run(&["Rest", " \n", "well.", "\n\n"], &[], true, None);
        assert_eq!(text, "Rest \nwell.");
        assert_eq!(sent, ["Rest", "", " \nwell.", "", ""]);
        let (_, text) = run(&["Rest", " \n"], &[], false, None);
        assert_eq!(text, "Rest \n");
    }

    #[test]
    fn the_decoded_end_wins_over_the_pieces() {
        let (sent, text) = run(&["caf"], &[], false, Some("caf\u{FFFD}"));
        assert_eq!(text, "caf\u{FFFD}");
        assert_eq!(sent.last().unwrap(), "\u{FFFD}");
        let (_, text) = run(&["ab", "cS"], &["STOP"], false, None);
        assert_eq!(text, "abcS", "held back text is sent once the answer ends");
        let (_, text) = run(&["é", "x"], &["éé"], false, None);
        assert_eq!(text, "éx");
    }
}

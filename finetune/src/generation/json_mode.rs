//! JSON mode: generation constrained to one JSON object (OpenAI's
//! `response_format: {"type": "json_object"}`).
//!
//! [`JsonPrefix`] is a byte-level pushdown recogniser of JSON text prefixes. The generation
//! loop offers it each candidate token's bytes and takes the most likely token it accepts;
//! once the object is closed, generation ends. Near the end of the token budget only tokens
//! that leave enough room to close every open string, value and bracket are accepted
//! ([`JsonPrefix::accepts_within`]), so the text is a whole JSON object even when the budget
//! ends it: a small model that keeps nesting is steered shut rather than cut off mid-object
//! (OpenAI's JSON mode returns the cut text).

use tokenizers::{DecoderWrapper, Tokenizer};

/// Each token's bytes, by id: what the token adds to the text. Special tokens get none (JSON
/// mode never writes them). Byte-level BPE vocabularies are mapped back through GPT-2's byte
/// table; SentencePiece ones by their own rules (`▁` is a space, `<0xNN>` a byte), since
/// decoding a token alone would drop its leading space.
pub fn token_bytes(tokenizer: &Tokenizer) -> Vec<Vec<u8>> {
    let size = tokenizer.get_vocab_size(true);
    let special: std::collections::HashSet<u32> = tokenizer
        .get_added_tokens_decoder()
        .into_iter()
        .filter(|(_, t)| t.special)
        .map(|(id, _)| id)
        .collect();
    let byte_level = matches!(tokenizer.get_decoder(), Some(DecoderWrapper::ByteLevel(_)));
    let unbyte = gpt2_byte_decoder();
    (0..size as u32)
        .map(|id| {
            if special.contains(&id) {
                return Vec::new();
            }
            let Some(token) = tokenizer.id_to_token(id) else {
                return Vec::new();
            };
            if byte_level {
                let mapped: Option<Vec<u8>> =
                    token.chars().map(|c| unbyte.get(&c).copied()).collect();
                if let Some(bytes) = mapped {
                    return bytes;
                }
            }
            sentencepiece_bytes(&token)
        })
        .collect()
}

/// A SentencePiece token's text: `<0x0A>` is the byte 0x0A, `▁` a space.
fn sentencepiece_bytes(token: &str) -> Vec<u8> {
    if let Some(hex) = token.strip_prefix("<0x").and_then(|t| t.strip_suffix('>'))
        && hex.len() == 2
        && let Ok(byte) = u8::from_str_radix(hex, 16)
    {
        return vec![byte];
    }
    token.replace('\u{2581}', " ").into_bytes()
}

/// GPT-2's table from the printable characters byte-level BPE writes back to bytes.
fn gpt2_byte_decoder() -> std::collections::HashMap<char, u8> {
    let printable = |b: u8| matches!(b, 33..=126 | 161..=172 | 174..=255);
    let mut extra = 0u32;
    (0..=255u8)
        .map(|b| {
            let c = if printable(b) {
                u32::from(b)
            } else {
                extra += 1;
                255 + extra
            };
            (char::from_u32(c).unwrap_or('\0'), b)
        })
        .collect()
}

/// Whitespace bytes allowed in a row between tokens: small models in JSON mode otherwise
/// tend to fill their budget with newlines.
const MAX_WHITESPACE_RUN: u8 = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Container {
    Object,
    Array,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Number {
    /// After `-`.
    Minus,
    /// A leading zero (no more integer digits).
    Zero,
    Int,
    /// After `.`, before a digit.
    Dot,
    Frac,
    /// After `e`/`E`.
    Exp,
    /// After the exponent's sign.
    ExpSign,
    ExpDigits,
}

impl Number {
    fn can_end(self) -> bool {
        matches!(self, Self::Zero | Self::Int | Self::Frac | Self::ExpDigits)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Before the top-level object.
    Start,
    /// A value is due (after `:`, `[` or `,` in an array).
    Value,
    /// After `{`: a key or `}`.
    KeyOrClose,
    /// After `,` in an object: a key.
    Key,
    /// After a key: `:`.
    Colon,
    /// After a value inside a container: `,` or the closing bracket.
    CommaOrClose,
    /// Inside a string; `key` says whether a `:` follows it.
    String {
        key: bool,
        escape: Escape,
    },
    Number(Number),
    /// Inside `true`, `false` or `null`: the bytes still due.
    Literal(&'static [u8]),
    /// The top-level object is closed.
    Done,
    /// `[` was just opened: a value or `]`.
    ValueOrClose,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Escape {
    None,
    /// After `\`.
    Backslash,
    /// Inside `\uXXXX`: hex digits still due.
    Hex(u8),
}

/// A prefix of one JSON object, checked byte by byte.
#[derive(Debug, Clone)]
pub struct JsonPrefix {
    stack: Vec<Container>,
    mode: Mode,
    whitespace: u8,
}

impl Default for JsonPrefix {
    fn default() -> Self {
        Self {
            stack: Vec::new(),
            mode: Mode::Start,
            whitespace: 0,
        }
    }
}

impl JsonPrefix {
    /// Whether the object is complete.
    pub fn is_done(&self) -> bool {
        self.mode == Mode::Done
    }

    /// Whether `bytes` can extend the text so far; the state is unchanged when not.
    pub fn accepts(&self, bytes: &[u8]) -> bool {
        let mut probe = self.clone();
        probe.push(bytes)
    }

    /// As [`JsonPrefix::accepts`], and the object can still be closed in `tokens` more tokens
    /// of one byte each (every byte-level vocabulary has those).
    pub fn accepts_within(&self, bytes: &[u8], tokens: usize) -> bool {
        let mut probe = self.clone();
        probe.push(bytes) && probe.closing_bytes() <= tokens
    }

    /// The fewest bytes that complete the object from here: the current string, literal,
    /// number or key-value pair finished in the shortest way (`"`, `:0`, a digit), then one
    /// closing bracket per open container.
    pub fn closing_bytes(&self) -> usize {
        let escape = |e: Escape| match e {
            Escape::None => 0,
            Escape::Backslash => 1,
            Escape::Hex(n) => usize::from(n),
        };
        let current = match self.mode {
            Mode::Done => return 0,
            Mode::Start => return 2,
            Mode::KeyOrClose | Mode::ValueOrClose | Mode::CommaOrClose => 0,
            Mode::Value => 1,
            Mode::Key => 4,
            Mode::Colon => 2,
            Mode::String { key, escape: e } => escape(e) + 1 + if key { 2 } else { 0 },
            Mode::Number(n) => usize::from(!n.can_end()),
            Mode::Literal(rest) => rest.len(),
        };
        current + self.stack.len()
    }

    /// Extends the text with `bytes`; false (and a state that must be discarded) when the
    /// result is not a prefix of a JSON object.
    pub fn push(&mut self, bytes: &[u8]) -> bool {
        !bytes.is_empty() && bytes.iter().all(|&b| self.byte(b))
    }

    fn byte(&mut self, b: u8) -> bool {
        let whitespace = matches!(b, b' ' | b'\t' | b'\n' | b'\r');
        let in_token = matches!(self.mode, Mode::String { .. } | Mode::Literal(_))
            || matches!(self.mode, Mode::Number(_) if !whitespace);
        if whitespace && !in_token {
            if let Mode::Number(n) = self.mode {
                if !n.can_end() {
                    return false;
                }
                self.mode = self.after_value();
            }
            if self.mode == Mode::Done {
                return false;
            }
            self.whitespace += 1;
            return self.whitespace <= MAX_WHITESPACE_RUN;
        }
        self.whitespace = 0;
        match self.mode {
            Mode::Done => false,
            Mode::Start => {
                if b == b'{' {
                    self.open(Container::Object)
                } else {
                    false
                }
            }
            Mode::Value => self.value(b),
            Mode::ValueOrClose => {
                if b == b']' {
                    self.close(Container::Array)
                } else {
                    self.value(b)
                }
            }
            Mode::KeyOrClose | Mode::Key => match b {
                b'"' => {
                    self.mode = Mode::String {
                        key: true,
                        escape: Escape::None,
                    };
                    true
                }
                b'}' if self.mode == Mode::KeyOrClose => self.close(Container::Object),
                _ => false,
            },
            Mode::Colon => {
                if b == b':' {
                    self.mode = Mode::Value;
                    true
                } else {
                    false
                }
            }
            Mode::CommaOrClose => self.comma_or_close(b),
            Mode::String { key, escape } => self.string(b, key, escape),
            Mode::Number(n) => self.number(b, n),
            Mode::Literal(rest) => {
                if rest.first() == Some(&b) {
                    self.mode = if rest.len() == 1 {
                        self.after_value()
                    } else {
                        Mode::Literal(&rest[1..])
                    };
                    true
                } else {
                    false
                }
            }
        }
    }

    fn value(&mut self, b: u8) -> bool {
        match b {
            b'{' => self.open(Container::Object),
            b'[' => self.open(Container::Array),
            b'"' => {
                self.mode = Mode::String {
                    key: false,
                    escape: Escape::None,
                };
                true
            }
            b'-' => {
                self.mode = Mode::Number(Number::Minus);
                true
            }
            b'0' => {
                self.mode = Mode::Number(Number::Zero);
                true
            }
            b'1'..=b'9' => {
                self.mode = Mode::Number(Number::Int);
                true
            }
            b't' => {
                self.mode = Mode::Literal(b"rue");
                true
            }
            b'f' => {
                self.mode = Mode::Literal(b"alse");
                true
            }
            b'n' => {
                self.mode = Mode::Literal(b"ull");
                true
            }
            _ => false,
        }
    }

    fn open(&mut self, c: Container) -> bool {
        // Deep nesting is never what a client asked for; it also bounds the stack.
        if self.stack.len() >= 64 {
            return false;
        }
        self.stack.push(c);
        self.mode = match c {
            Container::Object => Mode::KeyOrClose,
            Container::Array => Mode::ValueOrClose,
        };
        true
    }

    fn close(&mut self, c: Container) -> bool {
        if self.stack.pop() != Some(c) {
            return false;
        }
        self.mode = self.after_value();
        true
    }

    /// Where a finished value leaves the parse.
    fn after_value(&self) -> Mode {
        if self.stack.is_empty() {
            Mode::Done
        } else {
            Mode::CommaOrClose
        }
    }

    fn comma_or_close(&mut self, b: u8) -> bool {
        match (b, self.stack.last()) {
            (b',', Some(Container::Object)) => {
                self.mode = Mode::Key;
                true
            }
            (b',', Some(Container::Array)) => {
                self.mode = Mode::Value;
                true
            }
            (b'}', _) => self.close(Container::Object),
            (b']', _) => self.close(Container::Array),
            _ => false,
        }
    }

    fn string(&mut self, b: u8, key: bool, escape: Escape) -> bool {
        let next = match escape {
            Escape::None => match b {
                b'"' => {
                    self.mode = if key { Mode::Colon } else { self.after_value() };
                    return true;
                }
                b'\\' => Escape::Backslash,
                0..=0x1f => return false,
                _ => Escape::None,
            },
            Escape::Backslash => match b {
                b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => Escape::None,
                b'u' => Escape::Hex(4),
                _ => return false,
            },
            Escape::Hex(n) => {
                if !b.is_ascii_hexdigit() {
                    return false;
                }
                if n == 1 {
                    Escape::None
                } else {
                    Escape::Hex(n - 1)
                }
            }
        };
        self.mode = Mode::String { key, escape: next };
        true
    }

    fn number(&mut self, b: u8, n: Number) -> bool {
        let digit = b.is_ascii_digit();
        let next = match (n, b) {
            (Number::Minus, b'0') => Number::Zero,
            (Number::Minus, _) if digit => Number::Int,
            (Number::Int, _) if digit => Number::Int,
            (Number::Zero | Number::Int, b'.') => Number::Dot,
            (Number::Dot | Number::Frac, _) if digit => Number::Frac,
            (Number::Zero | Number::Int | Number::Frac, b'e' | b'E') => Number::Exp,
            (Number::Exp, b'+' | b'-') => Number::ExpSign,
            (Number::Exp | Number::ExpSign | Number::ExpDigits, _) if digit => Number::ExpDigits,
            _ => {
                // The number ended: this byte belongs to what follows it.
                if !n.can_end() {
                    return false;
                }
                self.mode = self.after_value();
                return self.byte(b);
            }
        };
        self.mode = Mode::Number(next);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accepts_whole(text: &str) -> bool {
        let mut p = JsonPrefix::default();
        p.push(text.as_bytes()) && p.is_done()
    }

    fn accepts_prefix(text: &str) -> bool {
        JsonPrefix::default().accepts(text.as_bytes())
    }

    #[test]
    fn the_byte_table_maps_gpt2s_characters_back() {
        let table = gpt2_byte_decoder();
        assert_eq!(table.len(), 256);
        assert_eq!(table[&'Ġ'], b' ');
        assert_eq!(table[&'Ċ'], b'\n');
        assert_eq!(table[&'a'], b'a');
    }

    #[test]
    fn objects_that_serde_json_parses_are_accepted_whole() {
        for text in [
            "{}",
            "{\"a\": 1}",
            " {\"a\":[1, -2.5e+3, 0, 0.25, true, false, null, \"x\\n\\u00e9\"], \"b\": {}}",
            "{\"nested\": {\"deep\": [[], [{}]]}, \"emoji\": \"café 😀\"}",
        ] {
            assert!(accepts_whole(text), "{text}");
            assert!(serde_json::from_str::<serde_json::Value>(text).is_ok());
        }
    }

    #[test]
    fn what_is_not_json_is_refused_at_the_first_bad_byte() {
        for text in [
            "[1]",
            "hello",
            "{a: 1}",
            "{\"a\" 1}",
            "{\"a\": 01}",
            "{\"a\": 1.}",
            "{\"a\": -}",
            "{\"a\": tru }",
            "{\"a\": 1,}",
            "{\"a\": [1,]}",
            "{\"a\": \"\\x\"}",
            "{\"a\": \"line\nbreak\"}",
            "{} {}",
            "{\"a\": 1]",
        ] {
            assert!(!accepts_prefix(text), "{text}");
        }
    }

    #[test]
    fn prefixes_are_accepted_but_not_done() {
        for text in [
            "{",
            "{\"ke",
            "{\"key\": [1, 2",
            "{\"k\": -1",
            "{\"k\": \"\\u00",
        ] {
            let mut p = JsonPrefix::default();
            assert!(p.push(text.as_bytes()), "{text}");
            assert!(!p.is_done(), "{text}");
        }
    }

    #[test]
    fn a_number_ends_at_the_byte_that_cannot_continue_it() {
        assert!(accepts_whole("{\"a\":12}"));
        assert!(accepts_whole("{\"a\":[12,3]}"));
        assert!(accepts_whole("{\"a\":12 }"));
    }

    #[test]
    fn endless_whitespace_is_refused() {
        assert!(accepts_prefix(&format!("{{{}", " ".repeat(64))));
        assert!(!accepts_prefix(&format!("{{{}", " ".repeat(65))));
    }

    #[test]
    fn sentencepiece_tokens_keep_their_leading_space() {
        assert_eq!(sentencepiece_bytes("\u{2581}2"), b" 2");
        assert_eq!(sentencepiece_bytes("<0x0A>"), b"\n");
        assert_eq!(sentencepiece_bytes("true"), b"true");
    }

    #[test]
    fn a_refused_probe_leaves_the_state_as_it_was() {
        let mut p = JsonPrefix::default();
        assert!(p.push(b"{\"a\":"));
        assert!(!p.accepts(b"}"));
        assert!(p.accepts(b"1}"));
        assert!(p.push(b"1}"));
        assert!(p.is_done());
    }

    #[test]
    fn closing_bytes_is_what_the_shortest_ending_needs() {
        for (prefix, ending) in [
            ("", "{}"),
            ("{", "}"),
            ("{\"a\"", ":0}"),
            ("{\"a", "\":0}"),
            ("{\"a\":", "0}"),
            ("{\"a\":[1,", "0]}"),
            ("{\"a\":[{\"b\":tr", "ue}]}"),
            ("{\"a\":\"x\\u00", "00\"}"),
            ("{\"a\":1,", "\"\":0}"),
            ("{\"a\":-", "0}"),
            ("{\"a\":{}", "}"),
        ] {
            let mut p = JsonPrefix::default();
            assert!(prefix.is_empty() || p.push(prefix.as_bytes()), "{prefix}");
            assert_eq!(p.closing_bytes(), ending.len(), "{prefix}");
            assert!(
                accepts_whole(&format!("{prefix}{ending}")),
                "{prefix}{ending}"
            );
        }
    }

    /// A "model" that always prefers to nest deeper, with one-byte tokens and a budget of 40:
    /// steered by `accepts_within`, it still ends with a whole object inside the budget.
    #[test]
    fn the_budget_closes_the_object_instead_of_cutting_it() {
        let preference: &[&[u8]] = &[b"[", b"{", b"\"", b"a", b":", b",", b"1", b"]", b"}"];
        for budget in [2, 3, 10, 40] {
            let mut p = JsonPrefix::default();
            let mut text = Vec::new();
            for used in 0..budget {
                let Some(t) = preference
                    .iter()
                    .find(|t| p.accepts_within(t, budget - used - 1))
                else {
                    panic!(
                        "no token fits at {used} of {budget}: {}",
                        String::from_utf8_lossy(&text)
                    );
                };
                assert!(p.push(t));
                text.extend_from_slice(t);
                if p.is_done() {
                    break;
                }
            }
            assert!(
                p.is_done(),
                "budget {budget}: {}",
                String::from_utf8_lossy(&text)
            );
            assert!(text.len() <= budget);
            serde_json::from_slice::<serde_json::Value>(&text).expect("valid JSON");
        }
    }
}

//! Strict parsing of JSON request bodies into `serde_json::Value`.
//!
//! `serde_json` on its own is too lenient for the contract in two ways: it silently
//! keeps the last of duplicate object keys, and its recursion limit rejects 128 levels
//! of nesting (the contract accepts up to 128 and rejects 129). So this module is a
//! small recursive-descent parser of RFC 8259 JSON that builds the same
//! `serde_json::Value` `serde_json` would (numbers are converted by
//! `serde_json::Number`'s own parser, so they come out identical), and rejects:
//! invalid UTF-8, invalid escapes, lone UTF-16 surrogates (`"\ud800"`), raw control
//! characters inside strings, nesting deeper than [`MAX_DEPTH`], duplicate keys in
//! any object (keys are compared after unescaping), and anything but whitespace
//! after the value. Recursion is bounded by [`MAX_DEPTH`], so hostile input cannot
//! exhaust the stack.

use serde_json::map::Entry;
use serde_json::{Map, Number, Value};

/// The deepest nesting of arrays and objects accepted (a bare `[]` is depth 1).
pub const MAX_DEPTH: usize = 128;

/// Why a body is not acceptable JSON: a human-readable detail, with the line and
/// (byte) column of the problem.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct MalformedJson(pub String);

/// Parses a request body: rejects invalid JSON, invalid UTF-8, lone surrogates
/// (`\ud800` escapes), nesting deeper than 128, and duplicate keys in any object
/// (with a detail naming the key and line/column when available).
pub fn parse_strict(body: &[u8]) -> Result<Value, MalformedJson> {
    let text = std::str::from_utf8(body)
        .map_err(|error| error_at(body, error.valid_up_to(), "invalid UTF-8"))?;
    let mut parser = Parser {
        text,
        bytes: body,
        pos: 0,
    };
    parser.skip_whitespace();
    let value = parser.value(0)?;
    parser.skip_whitespace();
    if parser.pos < body.len() {
        return Err(parser.error("trailing characters after the JSON value"));
    }
    Ok(value)
}

/// A detail with the 1-based line and byte column of `pos` in `bytes`.
fn error_at(bytes: &[u8], pos: usize, message: impl std::fmt::Display) -> MalformedJson {
    let before = &bytes[..pos.min(bytes.len())];
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let line_start = before
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |newline| newline + 1);
    let column = before.len() - line_start + 1;
    MalformedJson(format!("{message} at line {line} column {column}"))
}

struct Parser<'a> {
    /// The whole body, known to be valid UTF-8.
    text: &'a str,
    bytes: &'a [u8],
    pos: usize,
}

impl Parser<'_> {
    fn error(&self, message: impl std::fmt::Display) -> MalformedJson {
        error_at(self.bytes, self.pos, message)
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn skip_whitespace(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.pos += 1;
        }
    }

    /// Consumes `byte` (after optional whitespace) or fails with `expected`.
    fn expect(&mut self, byte: u8, expected: &str) -> Result<(), MalformedJson> {
        self.skip_whitespace();
        if self.peek() == Some(byte) {
            self.pos += 1;
            Ok(())
        } else {
            Err(self.unexpected(expected))
        }
    }

    fn unexpected(&self, expected: &str) -> MalformedJson {
        match self.peek() {
            None => self.error(format!("unexpected end of input, expected {expected}")),
            Some(_) => self.error(format!("expected {expected}")),
        }
    }

    /// One value; `depth` is the number of arrays/objects it is nested in.
    fn value(&mut self, depth: usize) -> Result<Value, MalformedJson> {
        match self.peek() {
            Some(b'{') => self.object(depth + 1),
            Some(b'[') => self.array(depth + 1),
            Some(b'"') => self.string().map(Value::String),
            Some(b't') => self.literal("true", Value::Bool(true)),
            Some(b'f') => self.literal("false", Value::Bool(false)),
            Some(b'n') => self.literal("null", Value::Null),
            Some(b'-' | b'0'..=b'9') => self.number().map(Value::Number),
            _ => Err(self.unexpected("a value")),
        }
    }

    fn enter(&self, depth: usize) -> Result<(), MalformedJson> {
        if depth > MAX_DEPTH {
            Err(self.error(format!("nesting deeper than {MAX_DEPTH} levels")))
        } else {
            Ok(())
        }
    }

    fn object(&mut self, depth: usize) -> Result<Value, MalformedJson> {
        self.enter(depth)?;
        self.pos += 1; // `{`
        let mut map = Map::new();
        self.skip_whitespace();
        if self.peek() == Some(b'}') {
            self.pos += 1;
            return Ok(Value::Object(map));
        }
        loop {
            self.skip_whitespace();
            if self.peek() != Some(b'"') {
                return Err(self.unexpected("a string key"));
            }
            let key_pos = self.pos;
            let key = self.string()?;
            self.expect(b':', "':'")?;
            self.skip_whitespace();
            let value = self.value(depth)?;
            match map.entry(key) {
                Entry::Vacant(entry) => {
                    entry.insert(value);
                }
                Entry::Occupied(entry) => {
                    let message = format!("duplicate key {:?}", entry.key());
                    return Err(error_at(self.bytes, key_pos, message));
                }
            }
            self.skip_whitespace();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b'}') => {
                    self.pos += 1;
                    return Ok(Value::Object(map));
                }
                _ => return Err(self.unexpected("',' or '}'")),
            }
        }
    }

    fn array(&mut self, depth: usize) -> Result<Value, MalformedJson> {
        self.enter(depth)?;
        self.pos += 1; // `[`
        let mut items = Vec::new();
        self.skip_whitespace();
        if self.peek() == Some(b']') {
            self.pos += 1;
            return Ok(Value::Array(items));
        }
        loop {
            self.skip_whitespace();
            items.push(self.value(depth)?);
            self.skip_whitespace();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b']') => {
                    self.pos += 1;
                    return Ok(Value::Array(items));
                }
                _ => return Err(self.unexpected("',' or ']'")),
            }
        }
    }

    fn literal(&mut self, word: &str, value: Value) -> Result<Value, MalformedJson> {
        if self.bytes[self.pos..].starts_with(word.as_bytes()) {
            self.pos += word.len();
            Ok(value)
        } else {
            Err(self.error(format!("expected `{word}`")))
        }
    }

    /// A number per the RFC 8259 grammar, converted by `serde_json` itself.
    fn number(&mut self) -> Result<Number, MalformedJson> {
        let start = self.pos;
        if self.peek() == Some(b'-') {
            self.pos += 1;
        }
        match self.peek() {
            Some(b'0') => self.pos += 1,
            Some(b'1'..=b'9') => self.digits(),
            _ => return Err(self.error("invalid number")),
        }
        if self.peek() == Some(b'.') {
            self.pos += 1;
            self.require_digits()?;
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.pos += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.pos += 1;
            }
            self.require_digits()?;
        }
        self.text[start..self.pos]
            .parse::<Number>()
            .map_err(|_| error_at(self.bytes, start, "number out of range"))
    }

    fn digits(&mut self) {
        while let Some(b'0'..=b'9') = self.peek() {
            self.pos += 1;
        }
    }

    fn require_digits(&mut self) -> Result<(), MalformedJson> {
        if !matches!(self.peek(), Some(b'0'..=b'9')) {
            return Err(self.error("invalid number"));
        }
        self.digits();
        Ok(())
    }

    /// A string starting at the opening quote, unescaped.
    fn string(&mut self) -> Result<String, MalformedJson> {
        self.pos += 1; // `"`
        let mut out = String::new();
        let mut run_start = self.pos;
        loop {
            match self.peek() {
                None => return Err(self.error("unterminated string")),
                Some(b'"') => {
                    out.push_str(&self.text[run_start..self.pos]);
                    self.pos += 1;
                    return Ok(out);
                }
                Some(b'\\') => {
                    out.push_str(&self.text[run_start..self.pos]);
                    let escape_pos = self.pos;
                    self.pos += 1;
                    out.push(self.escape(escape_pos)?);
                    run_start = self.pos;
                }
                Some(0x00..=0x1f) => {
                    return Err(self.error("control character in string (must be escaped)"));
                }
                Some(_) => self.pos += 1,
            }
        }
    }

    /// The character of an escape whose backslash is at `escape_pos`.
    fn escape(&mut self, escape_pos: usize) -> Result<char, MalformedJson> {
        let Some(kind) = self.peek() else {
            return Err(self.error("unterminated string"));
        };
        self.pos += 1;
        Ok(match kind {
            b'"' => '"',
            b'\\' => '\\',
            b'/' => '/',
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'u' => {
                let unit = self.hex4()?;
                let bytes = self.bytes;
                let lone = move || error_at(bytes, escape_pos, "lone surrogate in \\u escape");
                match unit {
                    0xD800..=0xDBFF => {
                        if !self.bytes[self.pos..].starts_with(b"\\u") {
                            return Err(lone());
                        }
                        self.pos += 2;
                        let low = self.hex4()?;
                        if !(0xDC00..=0xDFFF).contains(&low) {
                            return Err(lone());
                        }
                        let scalar = 0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00);
                        char::from_u32(scalar).ok_or_else(lone)?
                    }
                    0xDC00..=0xDFFF => return Err(lone()),
                    _ => char::from_u32(unit).ok_or_else(lone)?,
                }
            }
            _ => return Err(error_at(self.bytes, escape_pos, "invalid escape")),
        })
    }

    fn hex4(&mut self) -> Result<u32, MalformedJson> {
        let mut unit = 0;
        for _ in 0..4 {
            let digit = self
                .peek()
                .and_then(|b| char::from(b).to_digit(16))
                .ok_or_else(|| self.error("invalid \\u escape"))?;
            unit = unit * 16 + digit;
            self.pos += 1;
        }
        Ok(unit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn nested(depth: usize, open: &str, close: &str) -> String {
        format!("{}{}", open.repeat(depth), close.repeat(depth))
    }

    fn nested_objects(depth: usize) -> String {
        // {"a":{"a":...{}...}}: `depth` objects.
        format!(
            "{}{{}}{}",
            "{\"a\":".repeat(depth - 1),
            "}".repeat(depth - 1)
        )
    }

    fn err(body: &str) -> String {
        parse_strict(body.as_bytes()).unwrap_err().0
    }

    #[test]
    fn parses_like_serde_json() {
        for body in [
            "null",
            "true",
            " false ",
            "0",
            "-0",
            "12",
            "-7",
            "18446744073709551615",
            "18446744073709551616",
            "-9223372036854775809",
            "1.5",
            "-0.25e-3",
            "6.02E+23",
            "1e2",
            "\"\"",
            r#""plain é ✓ 😀""#,
            r#""esc \" \\ \/ \b \f \n \r \t \u00e9 \ud83d\ude00 \u0000""#,
            "[]",
            "{}",
            " \r\n\t[1, [2, {\"a\": [true, null]}], \"x\"] ",
            r#"{"students":[{"externalReferenceId":"a-1","tags":["x","y"]}],"options":{}}"#,
            r#"{"a":{"a":{"a":1}},"b":[{"a":1},{"a":2}]}"#,
        ] {
            let expected: Value = serde_json::from_str(body).unwrap();
            assert_eq!(parse_strict(body.as_bytes()).unwrap(), expected, "{body}");
        }
    }

    #[test]
    fn rejects_invalid_json() {
        for body in [
            "",
            "   ",
            "{",
            "[1, 2",
            r#"{"a": 1"#,
            r#"{"a" 1}"#,
            r#"{"a": }"#,
            r#"{a: 1}"#,
            "[1,]",
            r#"{"a":1,}"#,
            "[1 2]",
            "\"unterminated",
            "\"bad \\x escape\"",
            "\"\\u12\"",
            "\"tab\tinside\"",
            "01",
            "-",
            "1.",
            ".5",
            "1e",
            "+1",
            "NaN",
            "tru",
            "nul",
            "1e400",
            "'single'",
            "\u{feff}{}",
        ] {
            assert!(parse_strict(body.as_bytes()).is_err(), "accepted {body:?}");
            assert!(serde_json::from_str::<Value>(body).is_err(), "{body:?}");
        }
    }

    #[test]
    fn rejects_trailing_content() {
        assert!(err("{} {}").starts_with("trailing characters"));
        assert!(err("1 x").contains("line 1 column 3"));
        assert!(err("truex").starts_with("trailing characters"));
        assert_eq!(parse_strict(b"{} \n\t").unwrap(), json!({}));
    }

    #[test]
    fn rejects_invalid_utf8() {
        let detail = parse_strict(b"{\"a\": \"\xff\"}").unwrap_err().0;
        assert_eq!(detail, "invalid UTF-8 at line 1 column 8");
        assert!(parse_strict(b"[\"\xc3\"]").is_err());
        assert!(parse_strict(b"\xed\xa0\x80").is_err()); // surrogate encoded as UTF-8
    }

    #[test]
    fn rejects_lone_surrogates() {
        for body in [
            r#""\ud800""#,
            r#""\ud800x""#,
            r#""\udc00""#,
            r#""\ud800\u0041""#,
            r#""\ud800\ud800""#,
            r#"{"\udfff": 1}"#,
        ] {
            assert!(err(body).starts_with("lone surrogate"), "{body}");
        }
        assert_eq!(
            parse_strict(br#""\uD83D\uDE00""#).unwrap(),
            json!("\u{1F600}")
        );
    }

    #[test]
    fn accepts_128_levels_and_rejects_129() {
        // 64 objects each holding an array: 128 levels.
        assert!(parse_strict(nested(64, "{\"k\":[", "]}").as_bytes()).is_ok());
        assert!(err(&format!("[{}]", nested(64, "{\"k\":[", "]}"))).starts_with("nesting"));
        assert!(parse_strict(nested(128, "[", "]").as_bytes()).is_ok());
        assert!(parse_strict(nested_objects(128).as_bytes()).is_ok());
        assert!(err(&nested(129, "[", "]")).starts_with("nesting deeper than 128"));
        assert!(err(&nested_objects(129)).starts_with("nesting deeper than 128"));
        let mixed = format!("{{\"a\":{}}}", nested(128, "[", "]"));
        assert!(err(&mixed).starts_with("nesting deeper than 128"));
        // Far deeper input is rejected without exhausting the stack.
        assert!(parse_strict(nested(1_000_000, "[", "]").as_bytes()).is_err());
        // serde_json itself stops one level earlier, hence this parser.
        assert!(serde_json::from_str::<Value>(&nested(128, "[", "]")).is_err());
    }

    #[test]
    fn rejects_duplicate_keys_with_position() {
        assert_eq!(
            err("{\"a\": 1,\n  \"a\": 2}"),
            "duplicate key \"a\" at line 2 column 3"
        );
        // Nested inside arrays and objects.
        let body = r#"{"students": [{"id": 1}, {"id": 2, "email": "x", "email": "y"}]}"#;
        let detail = err(body);
        assert!(
            detail.starts_with("duplicate key \"email\" at line 1 column"),
            "{detail}"
        );
        assert!(err(r#"[[{"x": {"k": 1, "k": 1}}]]"#).starts_with("duplicate key \"k\""));
        // Keys are compared after unescaping.
        assert!(err(r#"{"a": 1, "\u0061": 2}"#).starts_with("duplicate key \"a\""));
        // The same key in different objects is fine.
        assert_eq!(
            parse_strict(br#"[{"a": 1}, {"a": 2, "b": {"a": 3}}]"#).unwrap(),
            json!([{"a": 1}, {"a": 2, "b": {"a": 3}}])
        );
    }

    #[test]
    fn errors_carry_line_and_column() {
        assert_eq!(err("[1,\n 2,\n x]"), "expected a value at line 3 column 2");
        assert_eq!(
            err("{\"a\": [1, 2"),
            "unexpected end of input, expected ',' or ']' at line 1 column 12"
        );
    }
}

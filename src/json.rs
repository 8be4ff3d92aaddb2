//! Strict parsing of JSON request bodies into `serde_json::Value`.
//!
//! `serde_json` is used for the parsing itself; on top of it this module enforces
//! what the contract asks and `serde_json` alone does not:
//! - nesting deeper than [`MAX_DEPTH`] is rejected by a cheap byte pre-scan (the
//!   scan also keeps hostile input from exhausting the stack, which is why
//!   `serde_json`'s own recursion limit, one level lower than the contract's, can
//!   be turned off);
//! - a duplicate key in any object is rejected (serde_json would keep the last one),
//!   keys compared after unescaping.
//!
//! Invalid UTF-8, lone surrogates (`"\ud800"`), raw control characters in strings
//! and trailing content are rejected by `serde_json` itself.

use std::fmt;

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

/// The deepest nesting of arrays and objects accepted (a bare `[]` is depth 1).
pub const MAX_DEPTH: usize = 128;

/// Why a body is not acceptable JSON: a human-readable detail with the line and
/// column of the problem.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct MalformedJson(pub String);

/// Parses a request body: rejects invalid JSON, invalid UTF-8, lone surrogates
/// (`\ud800` escapes), nesting deeper than 128, and duplicate keys in any object.
pub fn parse_strict(body: &[u8]) -> Result<Value, MalformedJson> {
    check_depth(body)?;
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    deserializer.disable_recursion_limit();
    let value = StrictValue
        .deserialize(&mut deserializer)
        .map_err(|error| MalformedJson(error.to_string()))?;
    deserializer
        .end()
        .map_err(|error| MalformedJson(error.to_string()))?;
    Ok(value)
}

/// Rejects bodies nested deeper than [`MAX_DEPTH`], counting brackets outside
/// strings. Malformed input that passes is left for the parser to reject.
fn check_depth(body: &[u8]) -> Result<(), MalformedJson> {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    let (mut line, mut line_start) = (1usize, 0usize);
    for (offset, &byte) in body.iter().enumerate() {
        if in_string {
            match byte {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return Err(MalformedJson(format!(
                        "nesting deeper than {MAX_DEPTH} at line {line} column {}",
                        offset - line_start + 1
                    )));
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            b'\n' => {
                line += 1;
                line_start = offset + 1;
            }
            _ => {}
        }
    }
    Ok(())
}

/// Deserializes any JSON value like `serde_json::Value` does, but fails on a
/// duplicate object key.
struct StrictValue;

impl<'de> DeserializeSeed<'de> for StrictValue {
    type Value = Value;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for StrictValue {
    type Value = Value;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("a JSON value")
    }

    fn visit_bool<E>(self, value: bool) -> Result<Value, E> {
        Ok(Value::Bool(value))
    }

    fn visit_i64<E>(self, value: i64) -> Result<Value, E> {
        Ok(Value::from(value))
    }

    fn visit_u64<E>(self, value: u64) -> Result<Value, E> {
        Ok(Value::from(value))
    }

    fn visit_f64<E: de::Error>(self, value: f64) -> Result<Value, E> {
        serde_json::Number::from_f64(value)
            .map(Value::Number)
            .ok_or_else(|| E::custom("number out of range"))
    }

    fn visit_str<E>(self, value: &str) -> Result<Value, E> {
        Ok(Value::String(value.to_owned()))
    }

    fn visit_string<E>(self, value: String) -> Result<Value, E> {
        Ok(Value::String(value))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(item) = seq.next_element_seed(StrictValue)? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if object.contains_key(&key) {
                return Err(de::Error::custom(format_args!("duplicate key {key:?}")));
            }
            let value = map.next_value_seed(StrictValue)?;
            object.insert(key, value);
        }
        Ok(Value::Object(object))
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
        assert!(detail.ends_with("at line 1 column 8"), "{detail}");
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
            assert!(parse_strict(body.as_bytes()).is_err(), "accepted {body}");
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
            "duplicate key \"a\" at line 2 column 5"
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
        assert_eq!(err("[1,\n 2,\n x]"), "expected value at line 3 column 2");
        assert_eq!(
            err("{\"a\": [1, 2"),
            "EOF while parsing a list at line 1 column 11"
        );
    }
}

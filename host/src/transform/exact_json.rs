//! JSON values as `transform test --expect` compares them: integers by their digits, however
//! long, floats by their exact value, and object members in any order.
//!
//! `serde_json::Value` reads an integer past `u64` as the nearest `f64`, so two IDs that differ
//! only in their last digits would compare equal, and a golden file could not catch the very bug
//! it was written for. Text stays the caller's check: only valid JSON reaches [`parse`].

/// A JSON value as compared.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Json {
    /// `null`.
    Null,
    /// `true` or `false`.
    Bool(bool),
    /// An integer: whether it is negative, and its digits (`-0` is `0`).
    Int(bool, String),
    /// A number with a fraction or an exponent, read exactly (`2.50` is `2.5`).
    Float(f64),
    /// A number with a fraction or an exponent past `f64`'s range (`1e400`), by its text.
    Huge(String),
    /// A string, unescaped.
    String(String),
    /// A string holding a lone surrogate escape, which Rust's `String` cannot: its JSON text.
    Unpaired(String),
    /// An array, in order.
    Array(Vec<Json>),
    /// Members sorted by name, stably, so duplicate names keep their order and count.
    Object(Vec<(String, Json)>),
}

/// Nesting deeper than this is compared by its text, so that parsing never runs out of stack.
const MAX_DEPTH: usize = 128;

/// Reads valid JSON text; `None` when it nests deeper than [`MAX_DEPTH`] (or is not JSON).
pub(crate) fn parse(text: &str) -> Option<Json> {
    let mut p = Parser {
        b: text.as_bytes(),
        text,
        i: 0,
    };
    let value = p.value(0)?;
    (p.ws() == p.b.len()).then_some(value)
}

struct Parser<'a> {
    b: &'a [u8],
    text: &'a str,
    i: usize,
}

impl Parser<'_> {
    /// Skips whitespace; returns the new position.
    fn ws(&mut self) -> usize {
        while matches!(self.b.get(self.i), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
        self.i
    }

    fn eat(&mut self, byte: u8) -> bool {
        self.ws();
        let hit = self.b.get(self.i) == Some(&byte);
        self.i += usize::from(hit);
        hit
    }

    fn value(&mut self, depth: usize) -> Option<Json> {
        if depth > MAX_DEPTH {
            return None;
        }
        match *self.b.get(self.ws())? {
            b'{' => {
                self.i += 1;
                let mut members = Vec::new();
                if !self.eat(b'}') {
                    loop {
                        self.ws();
                        let name = match self.string()? {
                            Json::String(s) | Json::Unpaired(s) => s,
                            _ => return None,
                        };
                        if !self.eat(b':') {
                            return None;
                        }
                        members.push((name, self.value(depth + 1)?));
                        if self.eat(b'}') {
                            break;
                        }
                        if !self.eat(b',') {
                            return None;
                        }
                    }
                }
                members.sort_by(|a, b| a.0.cmp(&b.0));
                Some(Json::Object(members))
            }
            b'[' => {
                self.i += 1;
                let mut items = Vec::new();
                if !self.eat(b']') {
                    loop {
                        items.push(self.value(depth + 1)?);
                        if self.eat(b']') {
                            break;
                        }
                        if !self.eat(b',') {
                            return None;
                        }
                    }
                }
                Some(Json::Array(items))
            }
            b'"' => self.string(),
            _ => {
                let start = self.i;
                while !matches!(
                    self.b.get(self.i),
                    None | Some(b',' | b':' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r')
                ) {
                    self.i += 1;
                }
                scalar(&self.text[start..self.i])
            }
        }
    }

    /// The string at the cursor (which is a `"`).
    fn string(&mut self) -> Option<Json> {
        let start = self.i;
        self.i += 1;
        let mut escaped = false;
        loop {
            match *self.b.get(self.i)? {
                b'\\' => {
                    escaped = true;
                    self.i += 2;
                }
                b'"' => break,
                _ => self.i += 1,
            }
        }
        self.i += 1;
        let token = &self.text[start..self.i];
        if !escaped {
            return Some(Json::String(token[1..token.len() - 1].to_owned()));
        }
        Some(match serde_json::from_str::<String>(token) {
            Ok(s) => Json::String(s),
            Err(_) => Json::Unpaired(token.to_owned()),
        })
    }
}

/// A literal or a number.
fn scalar(token: &str) -> Option<Json> {
    Some(match token {
        "null" => Json::Null,
        "true" => Json::Bool(true),
        "false" => Json::Bool(false),
        _ if token.contains(['.', 'e', 'E']) => match token.parse::<f64>() {
            Ok(f) if f.is_finite() => Json::Float(f),
            Ok(_) => Json::Huge(token.to_owned()),
            Err(_) => return None,
        },
        _ => {
            let (negative, digits) = match token.strip_prefix('-') {
                Some(digits) => (digits != "0", digits),
                None => (false, token),
            };
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            Json::Int(negative, digits.to_owned())
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn same(a: &str, b: &str) -> bool {
        parse(a).unwrap() == parse(b).unwrap()
    }

    #[test]
    fn integers_compare_by_every_digit() {
        assert!(!same(
            r#"{"id": 18446744073709551617}"#,
            r#"{"id": 18446744073709551616}"#
        ));
        assert!(!same(
            "[-123456789012345678901234567891]",
            "[-123456789012345678901234567890]"
        ));
        assert!(same("[18446744073709551617]", "[18446744073709551617]"));
        assert!(!same("18446744073709551616", "1.8446744073709552e19"));
        assert!(same("-0", "0"));
    }

    #[test]
    fn types_values_and_member_order() {
        // An integer is not a float, as in a printed row; floats compare by value.
        assert!(!same("16", "16.0"));
        assert!(same("[2.50, 1e2]", "[2.5, 100.0]"));
        assert!(same(
            r#"{"a": 1, "b": [true, null]}"#,
            r#" {"b":[true,null],"a":1} "#
        ));
        assert!(!same(r#"{"a": 1, "a": 2}"#, r#"{"a": 2}"#));
        assert!(!same(r#"{"a": 1, "a": 2}"#, r#"{"a": 2, "a": 1}"#));
        assert!(same(r#"["a\"b\u00e9", "x"]"#, r#"["a\"bé", "x"]"#));
        assert!(!same(r#"["\ud800"]"#, r#"["\udc00"]"#));
        assert!(same(r#"["\ud800"]"#, r#"["\ud800"]"#));
        assert!(same("1e400", "1e400"));
        assert!(!same("1e400", "2e400"));
    }

    #[test]
    fn deep_nesting_is_left_to_the_caller() {
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        assert_eq!(parse(&deep), None);
        let ok = format!("{}{}", "[".repeat(100), "]".repeat(100));
        assert!(parse(&ok).is_some());
    }
}

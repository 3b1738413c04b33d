//! The request body parsed as ingest needs it: into a `serde_json::Value`, refusing a member
//! name repeated within one object.
//!
//! `{"amount":1,"amount":1000000}` is valid JSON by the letter of RFC 8259 ("names SHOULD be
//! unique"), but parsers disagree on it: serde_json keeps the last value, many consumers keep
//! the first. Accepting it would let a schema validate one event while a consumer reads
//! another, so a repeated name is refused (with the JSON pointer of the second occurrence)
//! unless the source allows it (`sources.<name>.allow_duplicate_keys`). The other parser
//! differentials are refused by serde_json itself: a leading byte-order mark, a `\u` escape
//! holding a lone surrogate, a number beyond a double's range (docs/security.md).

use std::cell::RefCell;
use std::fmt;

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::map::Entry;
use serde_json::{Map, Number, Value};

/// Why a body is not accepted as JSON.
#[derive(Debug, PartialEq, Eq)]
pub enum BodyError {
    /// Not JSON (serde_json's message, with line and column).
    Invalid(String),
    /// A member name repeated in one object: the JSON pointer of the repeat.
    DuplicateKey(String),
}

/// Parses `bytes` as one JSON value (the nesting limit is serde_json's, 128 levels).
pub fn parse(bytes: &[u8], allow_duplicate_keys: bool) -> Result<Value, BodyError> {
    let repeated = RefCell::new(None);
    let seed = Strict { repeated: &repeated, allow_duplicate_keys };
    let mut input = serde_json::Deserializer::from_slice(bytes);
    let parsed = seed.deserialize(&mut input).and_then(|value| input.end().map(|()| value));
    parsed.map_err(|error| match repeated.into_inner() {
        Some(path) => BodyError::DuplicateKey(pointer(path)),
        None => BodyError::Invalid(error.to_string()),
    })
}

/// Builds one value. On a repeated name it records the path to it in `repeated`, innermost
/// segment first, each enclosing level adding its own as the error passes through.
#[derive(Clone, Copy)]
struct Strict<'a> {
    repeated: &'a RefCell<Option<Vec<String>>>,
    allow_duplicate_keys: bool,
}

impl Strict<'_> {
    /// Adds the segment of the enclosing level to a repeat's path (other errors carry none).
    fn enclosing(&self, segment: impl FnOnce() -> String) {
        if let Some(path) = self.repeated.borrow_mut().as_mut() {
            path.push(segment());
        }
    }
}

impl<'de> DeserializeSeed<'de> for Strict<'_> {
    type Value = Value;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Strict<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        // serde_json never hands out a non-finite number: it refuses them while parsing.
        Number::from_f64(v).map(Value::Number).ok_or_else(|| E::custom("number out of range"))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        loop {
            match seq.next_element_seed(self) {
                Ok(Some(item)) => items.push(item),
                Ok(None) => return Ok(Value::Array(items)),
                Err(error) => {
                    self.enclosing(|| items.len().to_string());
                    return Err(error);
                }
            }
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = Map::new();
        while let Some(name) = map.next_key::<String>()? {
            let value = match map.next_value_seed(self) {
                Ok(value) => value,
                Err(error) => {
                    self.enclosing(|| name);
                    return Err(error);
                }
            };
            match object.entry(name) {
                Entry::Vacant(slot) => {
                    slot.insert(value);
                }
                Entry::Occupied(mut slot) if self.allow_duplicate_keys => {
                    // What serde_json does by default: the last one wins.
                    slot.insert(value);
                }
                Entry::Occupied(slot) => {
                    *self.repeated.borrow_mut() = Some(vec![slot.key().clone()]);
                    return Err(de::Error::custom("repeated member name"));
                }
            }
        }
        Ok(Value::Object(object))
    }
}

/// The RFC 6901 pointer of a path given innermost segment first.
fn pointer(path: Vec<String>) -> String {
    path.iter()
        .rev()
        .map(|segment| format!("/{}", segment.replace('~', "~0").replace('/', "~1")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn duplicate(body: &str) -> String {
        match parse(body.as_bytes(), false) {
            Err(BodyError::DuplicateKey(at)) => at,
            other => panic!("{body}: {other:?}"),
        }
    }

    #[test]
    fn the_same_values_as_serde_json() {
        let body =
            r#"{"a":[1,-2,3.5,"x",true,null,{"b":{}}],"c":18446744073709551615,"d":"\u00e9"}"#;
        let ours = parse(body.as_bytes(), false).unwrap();
        let theirs: Value = serde_json::from_str(body).unwrap();
        assert_eq!(ours, theirs);
    }

    #[test]
    fn a_repeated_name_is_refused_with_its_pointer() {
        assert_eq!(duplicate(r#"{"amount":1,"amount":1000000}"#), "/amount");
        assert_eq!(duplicate(r#"{"a":{"b":[0,{"c":1,"c":2}]}}"#), "/a/b/1/c");
        assert_eq!(duplicate(r#"{"x/y":{"m~n":1,"m~n":1}}"#), "/x~1y/m~0n");
        assert_eq!(duplicate(r#"[{"k":1},{"k":1,"k":1}]"#), "/1/k");
        // Equal names written differently are the same name.
        assert_eq!(duplicate(r#"{"\u0061":1,"a":2}"#), "/a");
    }

    #[test]
    fn a_source_may_allow_repeats_and_then_the_last_wins() {
        let value = parse(br#"{"amount":1,"amount":1000000}"#, true).unwrap();
        assert_eq!(value, json!({"amount": 1000000}));
    }

    #[test]
    fn the_other_differentials_are_refused_as_invalid_json() {
        for body in [
            &b"\xef\xbb\xbf{\"a\":1}"[..],
            br#"{"a":"\ud800"}"#,
            br#"{"a":"\udc00x"}"#,
            br#"{"a":1e400}"#,
            br#"{"a":-1e400}"#,
            br#"{"a":1}{"b":2}"#,
        ] {
            let parsed = parse(body, false);
            assert!(
                matches!(parsed, Err(BodyError::Invalid(_))),
                "{}: {parsed:?}",
                String::from_utf8_lossy(body)
            );
        }
        // A pair of surrogates is one character, and fine.
        assert_eq!(parse(br#"{"a":"\ud83d\ude00"}"#, false).unwrap(), json!({"a": "😀"}));
    }

    #[test]
    fn nesting_stays_limited() {
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        assert!(matches!(parse(deep.as_bytes(), false), Err(BodyError::Invalid(_))));
        let fine = format!("{}{}", "[".repeat(100), "]".repeat(100));
        assert!(parse(fine.as_bytes(), false).is_ok());
    }
}

//! The payload as a borrowed JSON tree, parsed by serde_json.
//!
//! Every received message is parsed once and read through a profile's
//! paths. `serde_json::Value` owns a `String` for every key and string and
//! a `BTreeMap` for every object; decoding a replay spent more time
//! building and freeing those than reading them. This tree borrows keys and
//! strings from the payload (an escaped string is the one copy), keeps an
//! object's members in order in a `Vec` (a device's objects have a handful
//! of keys: a scan beats a tree), and answers the few questions the decoder
//! asks with the same meaning as `Value`'s methods: duplicate keys resolve to
//! the last one, numbers keep serde_json's distinction of unsigned, negative
//! and float. The parser, its depth limit and its errors stay serde_json's.

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};
use std::borrow::Cow;
use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Num {
    /// Non-negative integer.
    U(u64),
    /// Negative integer.
    I(i64),
    F(f64),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Json<'a> {
    Null,
    Bool(bool),
    Num(Num),
    Str(Cow<'a, str>),
    Arr(Vec<Json<'a>>),
    Obj(Vec<(Cow<'a, str>, Json<'a>)>),
}

impl<'a> Json<'a> {
    pub fn parse(text: &'a str) -> serde_json::Result<Self> {
        serde_json::from_str(text)
    }

    /// A member of an object (the last one, should the key repeat).
    pub fn get(&self, key: &str) -> Option<&Json<'a>> {
        match self {
            Json::Obj(m) => m.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }
    pub fn index(&self, i: usize) -> Option<&Json<'a>> {
        self.as_array()?.get(i)
    }
    pub fn is_object(&self) -> bool {
        matches!(self, Json::Obj(_))
    }
    pub fn as_array(&self) -> Option<&[Json<'a>]> {
        match self {
            Json::Arr(a) => Some(a),
            _ => None,
        }
    }
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Json::Str(s) => Some(s),
            _ => None,
        }
    }
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Json::Bool(b) => Some(*b),
            _ => None,
        }
    }
    pub fn as_u64(&self) -> Option<u64> {
        match self {
            Json::Num(Num::U(u)) => Some(*u),
            _ => None,
        }
    }
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Json::Num(Num::U(u)) => Some(*u as f64),
            Json::Num(Num::I(i)) => Some(*i as f64),
            Json::Num(Num::F(f)) => Some(*f),
            _ => None,
        }
    }
}

/// Compact JSON, as `serde_json::Value` prints it.
impl fmt::Display for Json<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&serde_json::to_string(self).map_err(|_| fmt::Error)?)
    }
}

impl Serialize for Json<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Json::Null => s.serialize_unit(),
            Json::Bool(b) => s.serialize_bool(*b),
            Json::Num(Num::U(u)) => s.serialize_u64(*u),
            Json::Num(Num::I(i)) => s.serialize_i64(*i),
            Json::Num(Num::F(f)) => s.serialize_f64(*f),
            Json::Str(v) => s.serialize_str(v),
            Json::Arr(a) => {
                let mut seq = s.serialize_seq(Some(a.len()))?;
                for e in a {
                    seq.serialize_element(e)?;
                }
                seq.end()
            }
            Json::Obj(m) => {
                let mut map = s.serialize_map(Some(m.len()))?;
                for (k, v) in m {
                    map.serialize_entry(k.as_ref(), v)?;
                }
                map.end()
            }
        }
    }
}

/// A string that borrows from the input when it can. (serde's own `Cow<str>`
/// always copies.)
pub struct Text<'a>(pub Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Text<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(v.to_string())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V(std::marker::PhantomData))
    }
}

impl<'de> Deserialize<'de> for Json<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Json<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Json::Null)
            }
            fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Json::Null)
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
                Ok(Json::Bool(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(Json::Num(Num::U(v)))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                // serde_json reports only negative integers here; should
                // another caller hand a non-negative one, it is still unsigned.
                Ok(Json::Num(if v < 0 { Num::I(v) } else { Num::U(v as u64) }))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
                Ok(Json::Num(Num::F(v)))
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Json::Str(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Json::Str(Cow::Owned(v.to_string())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Json::Str(Cow::Owned(v)))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<Self::Value, A::Error> {
                // serde_json gives no size hint: start where a device's arrays and
                // objects mostly end, rather than growing from nothing.
                let mut v = Vec::with_capacity(a.size_hint().unwrap_or(8).min(64));
                while let Some(e) = a.next_element()? {
                    v.push(e);
                }
                Ok(Json::Arr(v))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Self::Value, A::Error> {
                let mut m = Vec::with_capacity(a.size_hint().unwrap_or(8).min(64));
                while let Some((Text(k), v)) = a.next_entry::<Text<'de>, Json<'de>>()? {
                    m.push((k, v));
                }
                Ok(Json::Obj(m))
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    /// The tree answers as `serde_json::Value` does, for the questions the
    /// decoder asks.
    #[test]
    fn reads_as_serde_json_value_does() {
        let text = r#"{"a":1,"b":-2,"c":2.5,"d":"x\"y","e":[true,null,{"f":"g"}],"a":7,"big":18446744073709551615,"huge":1e400}"#;
        let j = Json::parse(text);
        // 1e400 is out of range for serde_json too.
        let v: Result<Value, _> = serde_json::from_str(text);
        assert_eq!(j.is_err(), v.is_err());
        let text =
            r#"{"a":1,"b":-2,"c":2.5,"d":"x\"y","e":[true,null,{"f":"g"}],"a":7,"big":18446744073709551615,"neg0":-0}"#;
        let j = Json::parse(text).unwrap();
        let v: Value = serde_json::from_str(text).unwrap();
        for k in ["a", "b", "c", "d", "e", "big", "neg0", "missing"] {
            let (x, y) = (j.get(k), v.get(k));
            assert_eq!(x.is_some(), y.is_some(), "{k}");
            let (Some(x), Some(y)) = (x, y) else { continue };
            assert_eq!(x.as_u64(), y.as_u64(), "{k}");
            assert_eq!(x.as_f64(), y.as_f64(), "{k}");
            assert_eq!(x.as_str(), y.as_str(), "{k}");
            assert_eq!(x.to_string(), y.to_string(), "{k}");
        }
        assert_eq!(j.get("a").unwrap().as_u64(), Some(7), "the last of a repeated key");
        assert!(matches!(j.get("d"), Some(Json::Str(Cow::Owned(_)))), "escaped: copied");
        let e = j.get("e").unwrap();
        assert_eq!(e.index(0).and_then(Json::as_bool), Some(true));
        assert_eq!(e.index(2).and_then(|o| o.get("f")).and_then(Json::as_str), Some("g"));
        assert!(matches!(
            e.index(2).unwrap().get("f"),
            Some(Json::Str(Cow::Borrowed(_)))
        ));
        assert!(e.index(3).is_none());
        assert!(!e.is_object() && j.is_object());
    }

    #[test]
    fn malformed_and_deep_input_is_an_error_not_a_crash() {
        for bad in ["", "{", "{\"a\":}", "[1,]", "nul", "\"\\ud800\""] {
            assert!(Json::parse(bad).is_err(), "{bad:?}");
        }
        let deep = "[".repeat(100_000);
        assert!(Json::parse(&deep).is_err(), "serde_json's depth limit holds");
    }
}

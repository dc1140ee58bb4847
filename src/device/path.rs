//! A tiny JSON path for profiles: `diag.batt_v`, `pumps[n=1].current_a` (select
//! the array element whose field `n` equals 1) or `pumps.0.run` (by index).
//! Selecting by field keeps a profile right when a device reorders an array.

use super::json::{Json, Num};

#[derive(Debug, Clone, PartialEq)]
enum Step {
    Key(String),
    Index(usize),
    Select {
        key: String,
        field: String,
        equals: String,
        /// `equals` as the integer it spells, when it spells one the way JSON
        /// prints it (`1`, not `01`): compared without formatting a number.
        int: Option<i128>,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct JsonPath {
    text: String,
    steps: Vec<Step>,
}

impl JsonPath {
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.is_empty() {
            return Err("empty path".into());
        }
        let mut steps = Vec::new();
        for part in text.split('.') {
            if part.is_empty() {
                return Err(format!("empty segment in path {text:?}"));
            }
            if let Some((key, rest)) = part.split_once('[') {
                let inner = rest
                    .strip_suffix(']')
                    .ok_or_else(|| format!("missing ']' in path {text:?}"))?;
                let (field, equals) = inner
                    .split_once('=')
                    .ok_or_else(|| format!("selector must be [field=value] in path {text:?}"))?;
                if key.is_empty() || field.is_empty() {
                    return Err(format!("bad selector in path {text:?}"));
                }
                steps.push(Step::Select {
                    key: key.into(),
                    field: field.into(),
                    equals: equals.into(),
                    int: equals.parse::<i128>().ok().filter(|i| i.to_string() == equals),
                });
            } else if let Ok(i) = part.parse::<usize>() {
                steps.push(Step::Index(i));
            } else {
                steps.push(Step::Key(part.into()));
            }
        }
        Ok(Self {
            text: text.into(),
            steps,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn get<'j, 'a>(&self, mut v: &'j Json<'a>) -> Option<&'j Json<'a>> {
        for step in &self.steps {
            v = match step {
                Step::Key(k) => v.get(k)?,
                Step::Index(i) => v.index(*i)?,
                Step::Select {
                    key,
                    field,
                    equals,
                    int,
                } => v.get(key)?.as_array()?.iter().find(|e| match e.get(field) {
                    Some(Json::Str(s)) => s == equals,
                    Some(Json::Num(Num::U(u))) => *int == Some(*u as i128),
                    Some(Json::Num(Num::I(i))) => *int == Some(*i as i128),
                    Some(n @ Json::Num(Num::F(_))) => n.to_string() == *equals,
                    _ => false,
                })?,
            };
        }
        Some(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_select() {
        let text =
            r#"{"diag":{"batt_v":3.5},"pumps":[{"n":2,"a":1.0},{"n":1,"a":6.4},{"n":-3,"a":0.5},{"n":"x","a":9}]}"#;
        let v = Json::parse(text).unwrap();
        let get = |p: &str| JsonPath::parse(p).unwrap().get(&v).and_then(Json::as_f64);
        assert_eq!(get("diag.batt_v"), Some(3.5));
        assert_eq!(get("pumps[n=1].a"), Some(6.4));
        assert_eq!(get("pumps.0.n"), Some(2.0));
        assert_eq!(get("pumps[n=3].a"), None);
        assert_eq!(get("pumps[n=-3].a"), Some(0.5));
        assert_eq!(get("pumps[n=x].a"), Some(9.0));
        assert_eq!(get("pumps[n=01].a"), None, "as JSON prints the number, as before");
        assert!(JsonPath::parse("a..b").is_err());
        assert!(JsonPath::parse("a[n1]").is_err());
    }
}

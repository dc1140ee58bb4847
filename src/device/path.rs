//! A tiny JSON path for profiles: `diag.batt_v`, `pumps[n=1].current_a` (select
//! the array element whose field `n` equals 1) or `pumps.0.run` (by index).
//! Selecting by field keeps a profile right when a device reorders an array.

use serde_json::Value;

#[derive(Debug, Clone, PartialEq)]
enum Step {
    Key(String),
    Index(usize),
    Select { key: String, field: String, equals: String },
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

    pub fn get<'a>(&self, mut v: &'a Value) -> Option<&'a Value> {
        for step in &self.steps {
            v =
                match step {
                    Step::Key(k) => v.get(k.as_str())?,
                    Step::Index(i) => v.get(*i)?,
                    Step::Select { key, field, equals } => v.get(key.as_str())?.as_array()?.iter().find(|e| match e
                        .get(field.as_str())
                    {
                        Some(Value::String(s)) => s == equals,
                        Some(Value::Number(n)) => n.to_string() == *equals,
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
    use serde_json::json;

    #[test]
    fn paths_select() {
        let v = json!({"diag":{"batt_v":3.5},"pumps":[{"n":2,"a":1.0},{"n":1,"a":6.4}]});
        assert_eq!(JsonPath::parse("diag.batt_v").unwrap().get(&v), Some(&json!(3.5)));
        assert_eq!(JsonPath::parse("pumps[n=1].a").unwrap().get(&v), Some(&json!(6.4)));
        assert_eq!(JsonPath::parse("pumps.0.n").unwrap().get(&v), Some(&json!(2)));
        assert_eq!(JsonPath::parse("pumps[n=3].a").unwrap().get(&v), None);
        assert!(JsonPath::parse("a..b").is_err());
        assert!(JsonPath::parse("a[n1]").is_err());
    }
}

//! Eligibility rules: a tree of all/any/not over comparisons of the user's
//! attributes (age, region, tags, ...). Processors evaluate it
//! authoritatively; ingest evaluates the same tree to refuse early.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// A rule node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum Rule {
    /// Every sub-rule holds: `{"all": [...]}`.
    All { all: Vec<Rule> },
    /// At least one sub-rule holds: `{"any": [...]}`.
    Any { any: Vec<Rule> },
    /// The sub-rule does not hold: `{"not": {...}}`.
    Not { not: Box<Rule> },
    /// `{"attr": "age", "op": ">=", "value": 18}`.
    Compare {
        attr: String,
        op: CompareOp,
        value: Value,
    },
}

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum CompareOp {
    #[serde(rename = "=")]
    Eq,
    #[serde(rename = "!=")]
    Ne,
    #[serde(rename = "<")]
    Lt,
    #[serde(rename = "<=")]
    Le,
    #[serde(rename = ">")]
    Gt,
    #[serde(rename = ">=")]
    Ge,
    /// The attribute is one of `value` (a list); for a list attribute (tags),
    /// at least one of its items is.
    #[serde(rename = "in")]
    In,
}

/// The user's attributes, as the request carries them.
pub type Attributes = Map<String, Value>;

fn order(a: &Value, b: &Value) -> Option<std::cmp::Ordering> {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64()?.partial_cmp(&y.as_f64()?),
        (Value::String(x), Value::String(y)) => Some(x.cmp(y)),
        _ => None,
    }
}

fn equal(a: &Value, b: &Value) -> bool {
    order(a, b) == Some(std::cmp::Ordering::Equal) || a == b
}

impl Rule {
    /// Whether `attributes` satisfy the rule. A comparison on a missing
    /// attribute is false (so `not` of it is true).
    pub fn eval(&self, attributes: &Attributes) -> bool {
        match self {
            Rule::All { all } => all.iter().all(|r| r.eval(attributes)),
            Rule::Any { any } => any.iter().any(|r| r.eval(attributes)),
            Rule::Not { not } => !not.eval(attributes),
            Rule::Compare { attr, op, value } => {
                let Some(actual) = attributes.get(attr) else {
                    return false;
                };
                // A list attribute (tags) matches when one of its items does.
                if let Value::Array(items) = actual {
                    return items.iter().any(|item| compare(item, *op, value));
                }
                compare(actual, *op, value)
            }
        }
    }

    /// Depth and size limits, and `in` needs a list.
    pub fn check(&self) -> Result<(), String> {
        fn walk(rule: &Rule, depth: usize, nodes: &mut usize) -> Result<(), String> {
            *nodes += 1;
            if depth > 8 {
                return Err("nests deeper than 8 levels".into());
            }
            if *nodes > 64 {
                return Err("has more than 64 nodes".into());
            }
            match rule {
                Rule::All { all: rules } | Rule::Any { any: rules } => {
                    if rules.is_empty() {
                        return Err("has an empty all/any".into());
                    }
                    rules.iter().try_for_each(|r| walk(r, depth + 1, nodes))
                }
                Rule::Not { not } => walk(not, depth + 1, nodes),
                Rule::Compare { attr, op, value } => {
                    if attr.is_empty() {
                        return Err("compares an empty attribute name".into());
                    }
                    if *op == CompareOp::In && !value.is_array() {
                        return Err(format!("`in` on {attr:?} needs a list value"));
                    }
                    Ok(())
                }
            }
        }
        walk(self, 0, &mut 0)
    }
}

fn compare(actual: &Value, op: CompareOp, expected: &Value) -> bool {
    use std::cmp::Ordering::*;
    match op {
        CompareOp::Eq => equal(actual, expected),
        CompareOp::Ne => !equal(actual, expected),
        CompareOp::Lt => order(actual, expected) == Some(Less),
        CompareOp::Le => matches!(order(actual, expected), Some(Less | Equal)),
        CompareOp::Gt => order(actual, expected) == Some(Greater),
        CompareOp::Ge => matches!(order(actual, expected), Some(Greater | Equal)),
        CompareOp::In => expected
            .as_array()
            .is_some_and(|list| list.iter().any(|v| equal(actual, v))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn attrs(v: Value) -> Attributes {
        v.as_object().cloned().unwrap()
    }

    #[test]
    fn all_any_not_over_comparisons() {
        let rule: Rule = serde_json::from_value(json!({
            "all": [
                {"attr": "age", "op": ">=", "value": 18},
                {"any": [
                    {"attr": "region", "op": "in", "value": ["eu", "uk"]},
                    {"attr": "tags", "op": "=", "value": "vip"}
                ]},
                {"not": {"attr": "tags", "op": "in", "value": ["banned"]}}
            ]
        }))
        .unwrap();
        rule.check().unwrap();
        assert!(rule.eval(&attrs(json!({"age": 30, "region": "eu"}))));
        assert!(rule.eval(&attrs(json!({"age": 18, "region": "us", "tags": ["vip"]}))));
        assert!(!rule.eval(&attrs(json!({"age": 17, "region": "eu"}))));
        assert!(!rule.eval(&attrs(json!({"age": 40, "region": "us"}))));
        assert!(!rule.eval(&attrs(
            json!({"age": 40, "region": "eu", "tags": ["banned"]})
        )));
        assert!(!rule.eval(&attrs(json!({"region": "eu"}))), "missing age");
    }

    #[test]
    fn every_operator() {
        let a = attrs(json!({"n": 5, "s": "b"}));
        let cmp = |attr: &str, op: &str, v: Value| -> bool {
            let r: Rule =
                serde_json::from_value(json!({"attr": attr, "op": op, "value": v})).unwrap();
            r.eval(&a)
        };
        assert!(cmp("n", "=", json!(5)) && !cmp("n", "=", json!(6)));
        assert!(cmp("n", "!=", json!(6)) && !cmp("n", "!=", json!(5)));
        assert!(cmp("n", "<", json!(6)) && !cmp("n", "<", json!(5)));
        assert!(cmp("n", "<=", json!(5)) && !cmp("n", "<=", json!(4)));
        assert!(cmp("n", ">", json!(4)) && !cmp("n", ">", json!(5)));
        assert!(cmp("n", ">=", json!(5)) && !cmp("n", ">=", json!(6)));
        assert!(cmp("s", "in", json!(["a", "b"])) && !cmp("s", "in", json!(["c"])));
        assert!(cmp("s", "<", json!("c")));
    }

    #[test]
    fn limits_are_checked() {
        let bad: Rule =
            serde_json::from_value(json!({"attr": "x", "op": "in", "value": 3})).unwrap();
        assert!(bad.check().is_err());
        let mut deep = json!({"attr": "x", "op": "=", "value": 1});
        for _ in 0..10 {
            deep = json!({"not": deep});
        }
        let deep: Rule = serde_json::from_value(deep).unwrap();
        assert!(deep.check().is_err());
    }
}

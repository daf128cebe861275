//! Label selectors (`=`, `==`, `!=`, `in`, `notin`, `k`, `!k`) and field selectors
//! (`metadata.name`, `metadata.namespace`, and `type` for Secrets), as the apiserver parses them.

use serde_json::Value;

#[derive(Debug, thiserror::Error)]
#[error("unable to parse requirement: {0}")]
pub(crate) struct SelectorError(String);

#[derive(Debug, Clone, PartialEq)]
enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

/// A parsed `labelSelector`; the empty selector matches everything.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct LabelSelector(Vec<Requirement>);

impl LabelSelector {
    pub(crate) fn parse(text: &str) -> Result<Self, SelectorError> {
        split_top_level(text)
            .into_iter()
            .map(|term| parse_requirement(term.trim()))
            .collect::<Result<_, _>>()
            .map(LabelSelector)
    }

    pub(crate) fn matches(&self, object: &Value) -> bool {
        let labels = object.pointer("/metadata/labels");
        let label = |key: &str| labels.and_then(|l| l.get(key)).and_then(Value::as_str);
        self.0.iter().all(|req| match req {
            Requirement::Equals(k, v) => label(k) == Some(v.as_str()),
            // As in the apiserver, `!=` also matches objects without the label.
            Requirement::NotEquals(k, v) => label(k) != Some(v.as_str()),
            Requirement::In(k, vs) => label(k).is_some_and(|l| vs.iter().any(|v| v == l)),
            Requirement::NotIn(k, vs) => label(k).is_none_or(|l| vs.iter().all(|v| v != l)),
            Requirement::Exists(k) => label(k).is_some(),
            Requirement::NotExists(k) => label(k).is_none(),
        })
    }
}

/// Commas separate requirements except inside `in (a,b)` value sets.
fn split_top_level(text: &str) -> Vec<&str> {
    let mut terms = Vec::new();
    let (mut depth, mut start) = (0i32, 0);
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                terms.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    terms.push(&text[start..]);
    terms.retain(|t| !t.trim().is_empty());
    terms
}

fn parse_requirement(term: &str) -> Result<Requirement, SelectorError> {
    let bad = || SelectorError(term.to_string());
    if let Some(key) = term.strip_prefix('!') {
        return valid_key(key.trim())
            .map(|k| Requirement::NotExists(k.to_string()))
            .ok_or_else(bad);
    }
    if let Some((k, v)) = term.split_once("!=") {
        let key = valid_key(k.trim()).ok_or_else(bad)?;
        return Ok(Requirement::NotEquals(key.into(), v.trim().into()));
    }
    if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
        let key = valid_key(k.trim()).ok_or_else(bad)?;
        return Ok(Requirement::Equals(key.into(), v.trim().into()));
    }
    if let Some(open) = term.find('(') {
        let (head, set) = term.split_at(open);
        let set = set
            .strip_prefix('(')
            .and_then(|s| s.trim_end().strip_suffix(')'))
            .ok_or_else(bad)?;
        let values = set.split(',').map(|v| v.trim().to_string()).collect();
        let mut words = head.split_whitespace();
        let key = words
            .next()
            .and_then(valid_key)
            .ok_or_else(bad)?
            .to_string();
        return match (words.next(), words.next()) {
            (Some("in"), None) => Ok(Requirement::In(key, values)),
            (Some("notin"), None) => Ok(Requirement::NotIn(key, values)),
            _ => Err(bad()),
        };
    }
    valid_key(term)
        .map(|k| Requirement::Exists(k.to_string()))
        .ok_or_else(bad)
}

fn valid_key(key: &str) -> Option<&str> {
    let ok = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'));
    ok.then_some(key)
}

/// A parsed `fieldSelector`: equality or inequality on a few well-known fields.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct FieldSelector(Vec<(String, bool, String)>);

impl FieldSelector {
    /// `allowed_type` says whether the kind supports the `type` field (Secrets).
    pub(crate) fn parse(text: &str, allowed_type: bool) -> Result<Self, SelectorError> {
        let mut terms = Vec::new();
        for term in text.split(',').filter(|t| !t.trim().is_empty()) {
            let (field, equal, value) = if let Some((f, v)) = term.split_once("!=") {
                (f, false, v)
            } else if let Some((f, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
                (f, true, v)
            } else {
                return Err(SelectorError(term.to_string()));
            };
            let field = field.trim();
            let known = matches!(field, "metadata.name" | "metadata.namespace")
                || (field == "type" && allowed_type);
            if !known {
                return Err(SelectorError(format!("field label not supported: {field}")));
            }
            terms.push((field.to_string(), equal, value.trim().to_string()));
        }
        Ok(FieldSelector(terms))
    }

    pub(crate) fn matches(&self, object: &Value) -> bool {
        self.0.iter().all(|(field, equal, value)| {
            let actual = match field.as_str() {
                "metadata.name" => object.pointer("/metadata/name"),
                "metadata.namespace" => object.pointer("/metadata/namespace"),
                _ => object.get("type"),
            }
            .and_then(Value::as_str)
            .unwrap_or("");
            (actual == value) == *equal
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn labelled(labels: Value) -> Value {
        json!({"metadata": {"name": "a", "namespace": "ns", "labels": labels}, "type": "kubernetes.io/tls"})
    }

    #[test]
    fn label_operators() {
        let obj = labelled(json!({"app": "web", "tier": "front"}));
        let yes = [
            "app=web",
            "app==web",
            "app!=db",
            "app in (web, db)",
            "tier notin (back)",
            "app",
            "!missing",
            "app=web,tier in (front)",
            "",
        ];
        for s in yes {
            assert!(
                LabelSelector::parse(s)
                    .expect("a valid selector")
                    .matches(&obj),
                "{s}"
            );
        }
        for s in ["app=db", "app notin (web)", "missing", "!app", "x in (a)"] {
            assert!(
                !LabelSelector::parse(s)
                    .expect("a valid selector")
                    .matches(&obj),
                "{s}"
            );
        }
        assert!(LabelSelector::parse("app in web").is_err());
    }

    #[test]
    fn field_selectors() {
        let obj = labelled(json!({}));
        let sel = FieldSelector::parse("metadata.name=a,type=kubernetes.io/tls", true)
            .expect("a valid selector");
        assert!(sel.matches(&obj));
        assert!(
            !FieldSelector::parse("metadata.namespace!=ns", false)
                .expect("a valid selector")
                .matches(&obj)
        );
        assert!(FieldSelector::parse("type=x", false).is_err());
        assert!(FieldSelector::parse("spec.x=y", true).is_err());
    }
}

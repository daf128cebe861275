//! Labels (`metadata.labels`, a Service's `selector`, a subset's `labels`): a string map
//! that is almost always empty or a handful of entries, carried by every object of a
//! cluster. A BTreeMap allocates a whole node (about 540 bytes) for even one label; a
//! boxed slice sorted by key is one allocation of what it holds.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(from = "BTreeMap<String, String>", into = "BTreeMap<String, String>")]
pub struct Labels(Box<[(String, String)]>);

impl Labels {
    pub fn get(&self, key: &str) -> Option<&String> {
        self.0
            .binary_search_by(|(k, _)| k.as_str().cmp(key))
            .ok()
            .map(|i| &self.0[i].1)
    }

    /// In key order.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &String)> {
        self.0.iter().map(|(k, v)| (k, v))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Every label of `want` is here with the same value (a subset's or a selector's
    /// labels against an endpoint's or a workload's).
    pub fn contains_all(&self, want: &Labels) -> bool {
        want.iter().all(|(k, v)| self.get(k) == Some(v))
    }
}

impl From<BTreeMap<String, String>> for Labels {
    fn from(map: BTreeMap<String, String>) -> Self {
        Labels(map.into_iter().collect())
    }
}

impl From<Labels> for BTreeMap<String, String> {
    fn from(labels: Labels) -> Self {
        labels.0.into_vec().into_iter().collect()
    }
}

/// A later pair wins over an earlier one with the same key, as in a map.
impl FromIterator<(String, String)> for Labels {
    fn from_iter<I: IntoIterator<Item = (String, String)>>(pairs: I) -> Self {
        BTreeMap::from_iter(pairs).into()
    }
}

impl<const N: usize> From<[(String, String); N]> for Labels {
    fn from(pairs: [(String, String); N]) -> Self {
        pairs.into_iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn looks_up_by_key_whatever_the_order_given() {
        let l = labels(&[("b", "2"), ("a", "1"), ("c", "3"), ("a", "9")]);
        assert_eq!(l.get("a").map(String::as_str), Some("9"));
        assert_eq!(l.get("b").map(String::as_str), Some("2"));
        assert_eq!(l.get("c").map(String::as_str), Some("3"));
        assert_eq!(l.get("d"), None);
        assert_eq!(l.len(), 3);
        let keys: Vec<&String> = l.iter().map(|(k, _)| k).collect();
        assert_eq!(keys, ["a", "b", "c"]);
    }

    #[test]
    fn contains_all_is_subset_with_equal_values() {
        let have = labels(&[("app", "web"), ("version", "v1")]);
        assert!(have.contains_all(&labels(&[])));
        assert!(have.contains_all(&labels(&[("version", "v1")])));
        assert!(!have.contains_all(&labels(&[("version", "v2")])));
        assert!(!have.contains_all(&labels(&[("tier", "web")])));
    }

    #[test]
    fn reads_and_writes_as_a_yaml_map() -> Result<(), serde_yaml::Error> {
        let l: Labels = serde_yaml::from_str("{z: last, a: first}")?;
        assert_eq!(l.get("z").map(String::as_str), Some("last"));
        assert_eq!(serde_yaml::to_string(&l)?, "a: first\nz: last\n");
        assert!(serde_yaml::from_str::<Labels>("[a]").is_err());
        Ok(())
    }
}

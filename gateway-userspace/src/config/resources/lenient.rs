//! A field that is type-checked on its own. A wrongly typed value does not fail its
//! document: it is kept with the error it gives (the path below the field and the
//! message), the rest of the resource loads, and `compile` reports the error at the field
//! and skips what it would have configured, as it does for any field it cannot apply.
//! A valid value keeps the paths of the keys below it that its type has no place for, so
//! that compile can name them as ignored.

use serde::{Deserialize, Deserializer, Serialize, Serializer, de::DeserializeOwned};

#[derive(Clone, Debug, PartialEq)]
pub enum Lenient<T> {
    /// The value, and the keys below the field it ignored (`attemps`, `match[0].foo`).
    Valid(T, Vec<String>),
    Invalid(Invalid),
}

/// A value that is not of the field's type, as written, and why.
#[derive(Clone, Debug, PartialEq)]
pub struct Invalid {
    /// What was written, kept so that the resource serializes as it was read.
    pub value: serde_yaml::Value,
    /// Where below the field the error is (`match[0].port`); empty at the field itself.
    pub path: String,
    pub message: String,
}

impl<T> Lenient<T> {
    /// The value, or the error with the field path it is at: `field` followed by the
    /// path below it.
    pub fn at(&self, field: &str) -> Result<&T, (String, &str)> {
        match self {
            Lenient::Valid(value, _) => Ok(value),
            Lenient::Invalid(invalid) => Err((invalid.field(field), &invalid.message)),
        }
    }

    /// The keys a valid value ignored, as paths below `field`.
    pub fn ignored_at<'s>(&'s self, field: &'s str) -> impl Iterator<Item = String> + 's {
        let ignored = match self {
            Lenient::Valid(_, ignored) => ignored.as_slice(),
            Lenient::Invalid(_) => &[],
        };
        ignored.iter().map(move |path| {
            let separator = if path.starts_with('[') { "" } else { "." };
            format!("{field}{separator}{path}")
        })
    }

    pub fn valid(&self) -> Option<&T> {
        match self {
            Lenient::Valid(value, _) => Some(value),
            Lenient::Invalid(_) => None,
        }
    }
}

impl Invalid {
    /// `field` and the path below it where the error is.
    pub fn field(&self, field: &str) -> String {
        if self.path.is_empty() {
            field.to_owned()
        } else {
            format!("{field}.{}", self.path)
        }
    }
}

impl<'de, T: DeserializeOwned> Deserialize<'de> for Lenient<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = serde_yaml::Value::deserialize(deserializer)?;
        let mut unknown = Vec::new();
        let mut note = |path: serde_ignored::Path| {
            unknown.push(crate::config::unknown_fields::render(&path));
        };
        let noting = serde_ignored::Deserializer::new(value.clone(), &mut note);
        Ok(match serde_path_to_error::deserialize::<_, T>(noting) {
            Ok(typed) => Lenient::Valid(typed, unknown),
            Err(e) => {
                let path = e.path().to_string();
                Lenient::Invalid(Invalid {
                    value,
                    path: if path == "." { String::new() } else { path },
                    message: e.into_inner().to_string(),
                })
            }
        })
    }
}

impl<T: Serialize> Serialize for Lenient<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Lenient::Valid(value, _) => value.serialize(serializer),
            Lenient::Invalid(invalid) => invalid.value.serialize(serializer),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize, PartialEq)]
    struct Port {
        number: u32,
    }

    #[test]
    fn a_wrong_type_is_kept_with_its_path_and_the_rest_loads() {
        let list: Vec<Lenient<Port>> =
            serde_yaml::from_str("[{number: 80}, {number: eighty}]").expect("a list");
        assert_eq!(list[0], Lenient::Valid(Port { number: 80 }, Vec::new()));
        let Err((field, message)) = list[1].at("spec.ports[1]") else {
            panic!("not valid: {:?}", list[1]);
        };
        assert_eq!(field, "spec.ports[1].number");
        assert!(message.contains("invalid type"), "{message}");
    }

    #[test]
    fn a_valid_value_keeps_the_keys_it_ignored() {
        let list: Vec<Lenient<Vec<Port>>> =
            serde_yaml::from_str("[[{number: 80, nmber: 81}, {number: 1}]]").expect("a list");
        assert_eq!(
            list[0],
            Lenient::Valid(
                vec![Port { number: 80 }, Port { number: 1 }],
                vec!["[0].nmber".to_owned()]
            )
        );
    }
}

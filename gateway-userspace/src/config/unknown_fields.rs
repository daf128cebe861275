//! The fields of a resource's `spec` that its type has no place for. serde skips an
//! unknown key silently; a user who wrote one (a newer API's field, a typo, a field of
//! another implementation) gets told, by `validate` and in the log, that it is ignored.

use serde::de::DeserializeOwned;
use serde_ignored::Path;

/// `value` deserialized as `T`, and the `spec` fields (`spec.http[0].match[0].foo`) it
/// skipped. Fields kept whole in a `serde_yaml::Value` (`Lenient` fields, flattened
/// catch-alls) are not skipped and not named here: a `Lenient` keeps what it ignored
/// for compile to name, a catch-all is named by compile.
pub(super) fn deserialize_noting<T: DeserializeOwned>(
    value: &serde_yaml::Value,
) -> Result<(T, Vec<String>), serde_yaml::Error> {
    let mut unknown = Vec::new();
    let typed = serde_ignored::deserialize(value, |path| {
        let field = render(&path);
        if field.starts_with("spec.") {
            unknown.push(field);
        }
    })?;
    Ok((typed, unknown))
}

/// A path as diagnostics spell fields: keys joined by dots, indexes in brackets.
pub(crate) fn render(path: &Path) -> String {
    let mut out = String::new();
    push(path, &mut out);
    out
}

fn push(path: &Path, out: &mut String) {
    match path {
        Path::Root => {}
        Path::Seq { parent, index } => {
            push(parent, out);
            out.push_str(&format!("[{index}]"));
        }
        Path::Map { parent, key } => {
            push(parent, out);
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(key);
        }
        Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => push(parent, out),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::resources::{VirtualService, gateway_api::HttpRoute as ApiHttpRoute};

    fn unknown<T: DeserializeOwned>(yaml: &str) -> Vec<String> {
        let value: serde_yaml::Value = serde_yaml::from_str(yaml).expect("yaml");
        deserialize_noting::<T>(&value).expect("typed").1
    }

    #[test]
    fn unknown_spec_fields_are_named_with_their_path() {
        let fields = unknown::<VirtualService>(
            "metadata: {name: a, uid: x, resourceVersion: '1'}
spec:
  hosts: [a.example]
  hostz: [typo]
  http:
  - match: [{uri: {prefix: /}, statPrefix: s}]
    route: [{destination: {host: web, port: {number: 80}}, weigth: 5}]
  tcp:
  - match: [{port: 1, sourceSubnet: 10.0.0.0/8}]
status: {conditions: []}
",
        );
        assert_eq!(
            fields,
            [
                "spec.hostz",
                "spec.http[0].match[0].statPrefix",
                "spec.http[0].route[0].weigth",
            ],
            "metadata and status are not ours to judge; Lenient tcp routes say their own"
        );
    }

    #[test]
    fn a_gateway_api_route_s_unknown_fields_are_named() {
        let fields = unknown::<ApiHttpRoute>(
            "metadata: {name: r}
spec:
  parentRefs: [{name: gw}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /}}]
    sessionPersistence: {sessionName: s}
    backendRefs: [{name: web, port: 80, wieght: 2}]
",
        );
        assert_eq!(
            fields,
            [
                "spec.rules[0].sessionPersistence",
                "spec.rules[0].backendRefs[0].wieght"
            ]
        );
    }
}

//! Valid configurations with fuzzed values: the seed documents (`fuzz/seeds/`, the
//! examples) are parsed once, then each input replaces some of their scalars and mapping
//! keys and drops or duplicates some list items before the text is loaded and compiled.
//! Random bytes (`load_config`) rarely get past the loader's type checks; these inputs
//! reach the compiler's every stage with hostile values (huge durations and numbers,
//! non-ASCII keys, empty strings, regexes, percentages, ports, PEM) in the right places.
#![no_main]

use std::{path::Path, sync::OnceLock};

use gateway::{compile, config};
use libfuzzer_sys::fuzz_target;
use serde_yaml::Value;

const SEEDS: [&str; 4] = [
    include_str!("../seeds/everything.yaml"),
    include_str!("../../config/examples/httpbin/httpbin.yaml"),
    include_str!("../../config/examples/gateway-api-httpbin/httpbin.yaml"),
    include_str!("../../config/examples/outside-kubernetes/legacy.yaml"),
];

fn seed_documents() -> &'static Vec<Value> {
    static DOCUMENTS: OnceLock<Vec<Value>> = OnceLock::new();
    DOCUMENTS.get_or_init(|| {
        SEEDS
            .iter()
            .flat_map(|text| serde_yaml::Deserializer::from_str(text))
            .filter_map(|document| serde::Deserialize::deserialize(document).ok())
            .collect()
    })
}

/// The fuzzer's bytes as a stream of edits: one control byte per value visited, with
/// the replacement text (up to a NUL) taken from the same stream.
struct Edits<'a> {
    data: &'a [u8],
}

impl Edits<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (&first, rest) = self.data.split_first()?;
        self.data = rest;
        Some(first)
    }

    fn text(&mut self) -> String {
        let end = self
            .data
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(self.data.len());
        let (text, rest) = self.data.split_at(end);
        self.data = rest.get(1..).unwrap_or_default();
        String::from_utf8_lossy(text).into_owned()
    }

    fn scalar(&mut self) -> Value {
        let text = self.text();
        if let Ok(n) = text.parse::<i64>() {
            Value::Number(n.into())
        } else if let Ok(n) = text.parse::<f64>() {
            Value::Number(n.into())
        } else {
            match text.as_str() {
                "~" => Value::Null,
                "true" => Value::Bool(true),
                "false" => Value::Bool(false),
                _ => Value::String(text),
            }
        }
    }

    fn edit(&mut self, value: &mut Value) {
        let Some(control) = self.byte() else {
            return;
        };
        match value {
            Value::Mapping(map) => {
                let entries: Vec<(Value, Value)> = std::mem::take(map).into_iter().collect();
                for (mut key, mut inner) in entries {
                    // Rename one key in eight (to a fuzzed, possibly non-ASCII, key).
                    if self.byte().is_some_and(|b| b % 8 == 0) {
                        key = Value::String(self.text());
                    }
                    self.edit(&mut inner);
                    map.insert(key, inner);
                }
            }
            Value::Sequence(items) => {
                for item in items.iter_mut() {
                    self.edit(item);
                }
                match control % 8 {
                    0 if !items.is_empty() => {
                        items.pop();
                    }
                    1 if !items.is_empty() => {
                        let first = items[0].clone();
                        items.push(first);
                    }
                    _ => {}
                }
            }
            Value::Tagged(tagged) => self.edit(&mut tagged.value),
            _ => {
                // Replace one scalar in four.
                if control % 4 == 0 {
                    *value = self.scalar();
                }
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut edits = Edits { data };
    let mut text = String::new();
    for document in seed_documents() {
        let mut document = document.clone();
        edits.edit(&mut document);
        let Ok(yaml) = serde_yaml::to_string(&document) else {
            return;
        };
        text.push_str("---\n");
        text.push_str(&yaml);
    }
    let (resources, _diagnostics) = config::load_text(Path::new("fuzz.yaml"), &text);
    let _ = compile::compile(&resources, &compile::Identity::default());
});

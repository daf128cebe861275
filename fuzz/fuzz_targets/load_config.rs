//! Arbitrary bytes as configuration documents: loading and compiling must never panic,
//! whatever users (or a broken ConfigMap) hand us.
#![no_main]

use std::path::Path;

use gateway::{compile, config};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (resources, _diagnostics) = config::load_text(Path::new("fuzz.yaml"), text);
    let _ = compile::compile(&resources, &compile::Identity::default());
});

//! The generated table both sides of the SNI rule are tested against: every pattern
//! crossed with every name, the verdict computed by [`crate::sni::pattern_matches`]
//! and checked here against verdicts written out by hand for the cases that matter.
//! gateway-ebpf's host tests check the hashes, gatewayd's unit tests check userspace's
//! server selection, and the kernel tests check the programs, all on this table.
extern crate std;
use std::{format, string::String, vec::Vec};

use crate::sni::{MAX_WILDCARD_LABELS, pattern_matches};

#[derive(Clone, Debug)]
pub struct Case {
    pub pattern: &'static str,
    /// Always a valid DNS name: the kernel leaves other names to userspace.
    pub name: String,
    pub accepted: bool,
}

/// Patterns: exact, one-label and deeper wildcards, the deepest the kernel matches.
pub const PATTERNS: [&str; 5] = [
    "api.example.com",
    "*.example.com",
    "*.b.example.com",
    "*.c.d.e.f.g.h.example.com",
    "*.com",
];

/// Names probed against each pattern: the wildcard depths, near misses, case.
fn names() -> Vec<String> {
    let mut names: Vec<String> = [
        "api.example.com",
        "API.Example.COM",
        "example.com",
        "a.example.com",
        "a.b.example.com",
        "b.example.com",
        "x.y.z.b.example.com",
        "badexample.com",
        "a.example.com.evil.net",
        "example.org",
        "com",
        "c.d.e.f.g.h.example.com",
        "z.c.d.e.f.g.h.example.com",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    // Every depth below a wildcard, past the kernel's window.
    let mut name = String::from("example.com");
    for depth in 0..MAX_WILDCARD_LABELS + 3 {
        name = format!("l{depth}.{name}");
        names.push(name.clone());
    }
    names
}

pub fn cases() -> Vec<Case> {
    let names = names();
    PATTERNS
        .iter()
        .flat_map(|&pattern| {
            names.iter().map(move |name| Case {
                pattern,
                name: name.clone(),
                accepted: pattern_matches(pattern.as_bytes(), name.as_bytes()),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rule_says_what_envoy_says() {
        let verdict = |pattern: &str, name: &str| {
            cases()
                .into_iter()
                .find(|c| c.pattern == pattern && c.name == name)
                .map(|c| c.accepted)
        };
        let expected = [
            ("api.example.com", "API.Example.COM", true),
            ("api.example.com", "a.example.com", false),
            ("*.example.com", "a.example.com", true),
            ("*.example.com", "a.b.example.com", true),
            (
                "*.example.com",
                "l10.l9.l8.l7.l6.l5.l4.l3.l2.l1.l0.example.com",
                true,
            ),
            ("*.example.com", "example.com", false),
            ("*.example.com", "badexample.com", false),
            ("*.example.com", "a.example.com.evil.net", false),
            ("*.b.example.com", "x.y.z.b.example.com", true),
            ("*.b.example.com", "b.example.com", false),
            (
                "*.c.d.e.f.g.h.example.com",
                "z.c.d.e.f.g.h.example.com",
                true,
            ),
            ("*.com", "a.b.example.com", true),
            ("*.com", "com", false),
        ];
        for (pattern, name, accepted) in expected {
            assert_eq!(verdict(pattern, name), Some(accepted), "{pattern} {name}");
        }
    }

    #[test]
    fn the_deepest_pattern_fits_the_kernel() {
        let deepest = PATTERNS
            .iter()
            .filter_map(|p| crate::sni::wildcard_labels(p.as_bytes()))
            .max();
        assert_eq!(deepest, Some(MAX_WILDCARD_LABELS));
    }
}

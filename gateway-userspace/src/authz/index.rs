//! The rules of one action's policies, in order, with an index that finds the few rules a
//! request can match, so that evaluation does not scan a thousand rules.
//!
//! Every rule gets at most one *guard*: a condition the rule cannot match without, on a
//! field whose values can be looked up rather than tried one by one (an exact header value
//! in `when`, exact hosts, exact or prefix paths, source or remote address blocks). A
//! request looks up its own values in each guard's table; the rules found there and the
//! rules without a guard are the candidates, evaluated in full. The first matching rule in
//! policy order decides which policy is reported, as a scan would.

use std::{collections::HashMap, net::IpAddr};

use http::HeaderName;

use super::{Attributes, Check, PathMatch, Rule, StringMatch, header_value};

type RuleId = u32;
/// Rules by a value they require.
type Table = HashMap<Box<str>, Vec<RuleId>>;

#[derive(Debug, Default)]
pub(super) struct RuleSet {
    /// Every rule in policy order, with the index of its policy in `policies`.
    rules: Vec<(usize, Rule)>,
    /// Policy names (`namespace/name`), in the order they were added.
    policies: Vec<std::sync::Arc<str>>,
    /// Rules without a guard: always candidates.
    unguarded: Vec<RuleId>,
    headers: Vec<(HeaderName, Table)>,
    hosts: Table,
    exact_paths: Table,
    path_prefixes: Table,
    /// The lengths of the prefixes in `path_prefixes`, each once.
    prefix_lengths: Vec<usize>,
    source_ips: IpIndex,
    remote_ips: IpIndex,
}

/// A condition a rule cannot match without.
enum Guard {
    Header(HeaderName, Vec<Box<str>>),
    Host(Vec<Box<str>>),
    Path {
        exact: Vec<Box<str>>,
        prefixes: Vec<Box<str>>,
    },
    SourceIp(Vec<super::Cidr>),
    RemoteIp(Vec<super::Cidr>),
}

impl RuleSet {
    pub(super) fn is_empty(&self) -> bool {
        self.policies.is_empty()
    }

    /// Every rule, in policy order.
    pub(super) fn rules(&self) -> impl Iterator<Item = &Rule> {
        self.rules.iter().map(|(_, rule)| rule)
    }

    /// Adds a policy's rules after those already here.
    pub(super) fn push(&mut self, name: std::sync::Arc<str>, rules: Vec<Rule>) {
        let policy = self.policies.len();
        self.policies.push(name);
        for rule in rules {
            let Ok(id) = RuleId::try_from(self.rules.len()) else {
                // Four billion rules do not fit in memory anyway.
                continue;
            };
            match guard(&rule) {
                None => self.unguarded.push(id),
                Some(Guard::Header(name, values)) => {
                    let table = match self.headers.iter().position(|(n, _)| *n == name) {
                        Some(at) => &mut self.headers[at].1,
                        None => {
                            self.headers.push((name, HashMap::new()));
                            let last = self.headers.len() - 1;
                            &mut self.headers[last].1
                        }
                    };
                    insert_all(table, values, id);
                }
                Some(Guard::Host(hosts)) => insert_all(&mut self.hosts, hosts, id),
                Some(Guard::Path { exact, prefixes }) => {
                    for prefix in &prefixes {
                        if !self.prefix_lengths.contains(&prefix.len()) {
                            self.prefix_lengths.push(prefix.len());
                        }
                    }
                    insert_all(&mut self.exact_paths, exact, id);
                    insert_all(&mut self.path_prefixes, prefixes, id);
                }
                Some(Guard::SourceIp(blocks)) => self.source_ips.insert(&blocks, id),
                Some(Guard::RemoteIp(blocks)) => self.remote_ips.insert(&blocks, id),
            }
            self.rules.push((policy, rule));
        }
    }

    /// The name of the first policy (in order) with a rule that matches.
    pub(super) fn first_match(&self, a: &Attributes<'_>) -> Option<&str> {
        let mut first: Option<RuleId> = None;
        let mut consider = |ids: &[RuleId]| {
            for &id in ids {
                if first.is_some_and(|f| f < id) {
                    continue;
                }
                if self.rules[id as usize].1.matches(a) {
                    first = Some(id);
                }
            }
        };
        consider(&self.unguarded);
        if let Some(http) = a.http {
            for (name, table) in &self.headers {
                if let Some(value) = header_value(http.headers, name)
                    && let Some(ids) = table.get(&*value)
                {
                    consider(ids);
                }
            }
            if !self.hosts.is_empty() {
                let host = lowercase(http.host);
                if let Some(ids) = self.hosts.get(&*host) {
                    consider(ids);
                }
            }
            if let Some(ids) = self.exact_paths.get(http.path) {
                consider(ids);
            }
            for &length in &self.prefix_lengths {
                if let Some(ids) = http
                    .path
                    .get(..length)
                    .and_then(|p| self.path_prefixes.get(p))
                {
                    consider(ids);
                }
            }
        }
        self.source_ips.lookup(a.peer, &mut consider);
        self.remote_ips.lookup(a.remote, &mut consider);
        first.map(|id| &*self.policies[self.rules[id as usize].0])
    }
}

fn insert_all(table: &mut Table, keys: Vec<Box<str>>, id: RuleId) {
    for key in keys {
        let ids = table.entry(key).or_default();
        // A value listed twice in one rule names it once.
        if ids.last() != Some(&id) {
            ids.push(id);
        }
    }
}

fn lowercase(text: &str) -> std::borrow::Cow<'_, str> {
    if text.bytes().any(|b| b.is_ascii_uppercase()) {
        text.to_ascii_lowercase().into()
    } else {
        text.into()
    }
}

/// The guard of `rule`, the most selective first: an exact header value in `when` (all
/// of which must hold), else a field every `to` (or every `from`) alternative requires.
fn guard(rule: &Rule) -> Option<Guard> {
    for check in &rule.when {
        if let Check::Header(name, set) = check
            && let Some(values) = all_exact(&set.any_of)
        {
            return Some(Guard::Header(name.clone(), values));
        }
    }
    // A field every alternative constrains: the union of their values is required.
    fn every<T>(
        alternatives: &[Vec<Check>],
        pick: impl Fn(&Check) -> Option<Vec<T>>,
    ) -> Option<Vec<T>> {
        let mut union = Vec::new();
        for checks in alternatives {
            union.extend(checks.iter().find_map(&pick)?);
        }
        (!alternatives.is_empty()).then_some(union)
    }
    let hosts = every(&rule.to, |c| match c {
        Check::Host(set) if !set.any_of.is_empty() => set
            .any_of
            .iter()
            .map(|m| match m {
                StringMatch::ExactNoCase(v) => Some(Box::from(v.as_str())),
                _ => None,
            })
            .collect(),
        _ => None,
    });
    if let Some(hosts) = hosts {
        return Some(Guard::Host(hosts));
    }
    let paths = every(&rule.to, |c| match c {
        Check::Path(set) if !set.any_of.is_empty() => set
            .any_of
            .iter()
            .map(|m| match m {
                PathMatch::String(StringMatch::Exact(v)) => Some((true, Box::from(v.as_str()))),
                PathMatch::String(StringMatch::Prefix(v)) => Some((false, Box::from(v.as_str()))),
                _ => None,
            })
            .collect(),
        _ => None,
    });
    if let Some(paths) = paths {
        let (exact, prefixes): (Vec<_>, Vec<_>) = paths.into_iter().partition(|(e, _)| *e);
        return Some(Guard::Path {
            exact: exact.into_iter().map(|(_, p)| p).collect(),
            prefixes: prefixes.into_iter().map(|(_, p)| p).collect(),
        });
    }
    let blocks = |want_remote: bool| {
        every(&rule.from, |c| match c {
            Check::SourceIp(set) if !want_remote && !set.any_of.is_empty() => {
                Some(set.any_of.clone())
            }
            Check::RemoteIp(set) if want_remote && !set.any_of.is_empty() => {
                Some(set.any_of.clone())
            }
            _ => None,
        })
    };
    if let Some(blocks) = blocks(false) {
        return Some(Guard::SourceIp(blocks));
    }
    blocks(true).map(Guard::RemoteIp)
}

fn all_exact(values: &[StringMatch]) -> Option<Vec<Box<str>>> {
    if values.is_empty() {
        return None;
    }
    values
        .iter()
        .map(|m| match m {
            StringMatch::Exact(v) => Some(Box::from(v.as_str())),
            _ => None,
        })
        .collect()
}

/// Address blocks by (family, mask) and network: a lookup masks the address once per
/// distinct prefix length.
#[derive(Debug, Default)]
struct IpIndex {
    blocks: HashMap<(bool, u128, u128), Vec<RuleId>>,
    /// (v4, mask) of the blocks, each once.
    masks: Vec<(bool, u128)>,
}

impl IpIndex {
    fn insert(&mut self, blocks: &[super::Cidr], id: RuleId) {
        for block in blocks {
            if !self.masks.contains(&(block.v4, block.mask)) {
                self.masks.push((block.v4, block.mask));
            }
            let ids = self
                .blocks
                .entry((block.v4, block.mask, block.network))
                .or_default();
            if ids.last() != Some(&id) {
                ids.push(id);
            }
        }
    }

    fn lookup(&self, ip: IpAddr, consider: &mut impl FnMut(&[RuleId])) {
        if self.masks.is_empty() {
            return;
        }
        let (v4, bits) = match ip.to_canonical() {
            IpAddr::V4(v4) => (true, u128::from(u32::from(v4))),
            IpAddr::V6(v6) => (false, u128::from(v6)),
        };
        for &(family, mask) in &self.masks {
            if family == v4
                && let Some(ids) = self.blocks.get(&(v4, mask, bits & mask))
            {
                consider(ids);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use http::HeaderMap;

    use super::super::{AuthorizationPolicy, Engine, HttpAttributes};
    use super::*;

    /// A small deterministic generator (xorshift): the same cases on every run.
    struct Dice(u64);

    impl Dice {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn pick<'v, T: ?Sized>(&mut self, values: &'v [&'v T]) -> &'v T {
            values[(self.next() % values.len() as u64) as usize]
        }

        fn chance(&mut self, percent: u64) -> bool {
            self.next() % 100 < percent
        }
    }

    const HOSTS: &[&str] = &["a.example", "B.example", "c.example", "*.example", "a.*"];
    const PATHS: &[&str] = &["/a", "/a/b", "/a/*", "/b*", "/", "*", "/a/{*}", "*b"];
    const BLOCKS: &[&str] = &[
        "10.0.0.0/8",
        "10.1.0.0/16",
        "10.1.2.3",
        "2001:db8::/32",
        "0.0.0.0/0",
    ];
    const METHODS: &[&str] = &["GET", "POST"];
    const TENANTS: &[&str] = &["t1", "t2", "t*"];

    fn list(dice: &mut Dice, values: &[&str]) -> String {
        let mut chosen = vec![dice.pick(values).to_owned()];
        if dice.chance(40) {
            chosen.push(dice.pick(values).to_owned());
        }
        format!(
            "[{}]",
            chosen
                .iter()
                .map(|v| format!("{v:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        )
    }

    /// A random rule in Istio's YAML, with fields the index uses and fields it does not.
    fn rule(dice: &mut Dice) -> String {
        let mut parts = Vec::new();
        if dice.chance(50) {
            let mut sources = Vec::new();
            for _ in 0..if dice.chance(30) { 2 } else { 1 } {
                let mut fields = Vec::new();
                if dice.chance(60) {
                    fields.push(format!("ipBlocks: {}", list(dice, BLOCKS)));
                }
                if dice.chance(30) {
                    fields.push(format!("remoteIpBlocks: {}", list(dice, BLOCKS)));
                }
                if dice.chance(20) {
                    fields.push(format!("notIpBlocks: {}", list(dice, BLOCKS)));
                }
                if fields.is_empty() {
                    fields.push(format!("ipBlocks: {}", list(dice, BLOCKS)));
                }
                sources.push(format!("{{source: {{{}}}}}", fields.join(", ")));
            }
            parts.push(format!("from: [{}]", sources.join(", ")));
        }
        if dice.chance(70) {
            let mut operations = Vec::new();
            for _ in 0..if dice.chance(30) { 2 } else { 1 } {
                let mut fields = Vec::new();
                if dice.chance(50) {
                    fields.push(format!("hosts: {}", list(dice, HOSTS)));
                }
                if dice.chance(60) {
                    fields.push(format!("paths: {}", list(dice, PATHS)));
                }
                if dice.chance(30) {
                    fields.push(format!("methods: {}", list(dice, METHODS)));
                }
                if dice.chance(20) {
                    fields.push(format!("notPaths: {}", list(dice, PATHS)));
                }
                if fields.is_empty() {
                    fields.push(format!("hosts: {}", list(dice, HOSTS)));
                }
                operations.push(format!("{{operation: {{{}}}}}", fields.join(", ")));
            }
            parts.push(format!("to: [{}]", operations.join(", ")));
        }
        if parts.is_empty() || dice.chance(30) {
            parts.push(format!(
                "when: [{{key: 'request.headers[x-tenant]', values: {}}}]",
                list(dice, TENANTS)
            ));
        }
        format!("{{{}}}", parts.join(", "))
    }

    /// The rule sets' answer against the scan they replace, on many generated policies and
    /// requests: the same policy, or none, every time.
    #[test]
    fn the_index_finds_the_policy_a_scan_finds() {
        let mut dice = Dice(0x9e37_79b9_7f4a_7c15);
        let mut compared = 0;
        let mut matched = 0;
        for round in 0..60 {
            let mut engine = Engine::default();
            let mut problems = Vec::new();
            for p in 0..1 + round % 7 {
                let rules: Vec<String> = (0..1 + (round * 3 + p) % 4)
                    .map(|_| format!("  - {}\n", rule(&mut dice)))
                    .collect();
                let policy: AuthorizationPolicy = serde_yaml::from_str(&format!(
                    "metadata: {{name: p{p}, namespace: ns}}\nspec:\n  action: DENY\n  rules:\n{}",
                    rules.concat()
                ))
                .expect("generated policy parses");
                engine.add(&policy, false, false, &mut problems);
            }
            let set = &engine.deny;
            for _ in 0..200 {
                let mut headers = HeaderMap::new();
                if dice.chance(60) {
                    let tenant = dice.pick(&["t1", "t2", "t3", "T1"]);
                    headers.insert("x-tenant", tenant.parse().expect("header value"));
                }
                let peer: IpAddr = dice
                    .pick(&[
                        "10.1.2.3",
                        "10.1.9.9",
                        "10.200.0.1",
                        "192.0.2.1",
                        "2001:db8::5",
                        "::ffff:10.1.2.3",
                    ])
                    .parse()
                    .expect("address");
                let remote: IpAddr = dice
                    .pick(&["10.1.2.3", "192.0.2.1", "2001:db8::5"])
                    .parse()
                    .expect("address");
                let attributes = Attributes {
                    peer,
                    remote,
                    destination: SocketAddr::from(([10, 9, 9, 9], 8080)),
                    sni: None,
                    principal: None,
                    http: Some(HttpAttributes {
                        host: dice.pick(&[
                            "a.example",
                            "A.EXAMPLE",
                            "b.example",
                            "c.example",
                            "d.other",
                        ]),
                        method: dice.pick(&["GET", "POST", "PUT"]),
                        path: dice.pick(&["/a", "/a/b", "/a/b/c", "/b", "/bb", "/", "/c"]),
                        headers: &headers,
                    }),
                };
                let scanned = set
                    .rules
                    .iter()
                    .find(|(_, rule)| rule.matches(&attributes))
                    .map(|(policy, _)| &*set.policies[*policy]);
                assert_eq!(set.first_match(&attributes), scanned, "round {round}");
                compared += 1;
                matched += usize::from(scanned.is_some());
            }
        }
        // The cases exercise both answers, not only "no match".
        assert!(
            matched > compared / 10 && matched < compared * 9 / 10,
            "{matched}/{compared}"
        );
    }

    #[test]
    fn rules_are_guarded_by_what_they_require() {
        let mut engine = Engine::default();
        let mut problems = Vec::new();
        let policy: AuthorizationPolicy = serde_yaml::from_str(
            r#"
metadata: {name: p, namespace: ns}
spec:
  action: DENY
  rules:
  - when: [{key: 'request.headers[x-tenant]', values: [t1]}]
    to: [{operation: {hosts: [a.example]}}]
  - to: [{operation: {hosts: [A.example, b.example]}}, {operation: {hosts: [c.example], paths: [/x]}}]
  - to: [{operation: {paths: [/exact, /prefix/*]}}]
  - from: [{source: {ipBlocks: [10.0.0.0/8]}}]
  - from: [{source: {remoteIpBlocks: [192.0.2.0/24]}}]
  - to: [{operation: {hosts: ["*.example"]}}]
  - from: [{source: {ipBlocks: [10.0.0.0/8]}}, {source: {namespaces: [x]}}]
"#,
        )
        .expect("policy parses");
        engine.add(&policy, false, false, &mut problems);
        assert!(problems.is_empty(), "{problems:?}");
        let set = &engine.deny;
        assert_eq!(set.headers.len(), 1);
        assert_eq!(set.hosts.get("a.example"), Some(&vec![1]));
        assert_eq!(set.hosts.get("c.example"), Some(&vec![1]));
        assert_eq!(set.exact_paths.get("/exact"), Some(&vec![2]));
        assert_eq!(set.path_prefixes.get("/prefix/"), Some(&vec![2]));
        assert_eq!(set.source_ips.blocks.len(), 1);
        assert_eq!(set.remote_ips.blocks.len(), 1);
        // A wildcard host, and a source alternative without addresses, cannot be looked up.
        assert_eq!(set.unguarded, vec![5, 6]);
    }
}

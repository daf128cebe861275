//! Istio AuthorizationPolicy, compiled and evaluated as Envoy's RBAC filters evaluate what
//! istiod generates from it. Pure: no I/O, no clocks; `compile::authz` selects the
//! policies that apply to a listener and the proxy hands each request (or connection)
//! over as [`Attributes`].
//!
//! Order (Istio's filter chain): CUSTOM, then DENY, then ALLOW; AUDIT only logs. When any
//! ALLOW policy applies, a request that matches none of them is denied. A policy without
//! rules matches nothing; a rule without fields (`rules: [{}]`) matches everything.
//!
//! What cannot be evaluated (an unsupported field such as `request.auth.claims`, an
//! HTTP-only field on a TCP port, a value that does not parse) is handled as istiod
//! handles a value it cannot generate: in an ALLOW policy its whole rule is left out (it
//! allows less); in DENY, AUDIT and CUSTOM the value is left out (the rule matches more).
//! CUSTOM policies are not supported: no extension provider can be called, so what they
//! match is denied, as istiod configures it when the provider is missing.

mod index;
mod source_rules;

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use http::{HeaderMap, HeaderName};
use regex::Regex;
use serde::Serialize;

use self::index::RuleSet;
pub use self::source_rules::{IpBlock, SourceRules};
use crate::config::resources::security::{
    Action as SpecAction, AuthorizationPolicy, Condition, Operation, Rule as SpecRule, Source,
};

/// Istio's SPIFFE URI prefix: principals are written without it.
const SPIFFE_PREFIX: &str = "spiffe://";

/// What a request or a connection is known by.
#[derive(Clone, Copy, Debug)]
pub struct Attributes<'a> {
    /// The connection's peer (`ipBlocks`, `source.ip`).
    pub peer: IpAddr,
    /// The client as `x-forwarded-for` names it after `--num-trusted-proxies` hops, else
    /// the peer (`remoteIpBlocks`, `remote.ip`).
    pub remote: IpAddr,
    /// The connection's local address (`destination.ip`, `ports`, `destination.port`).
    pub destination: SocketAddr,
    /// The TLS ClientHello's SNI, lowercase.
    pub sni: Option<&'a str>,
    /// The verified client certificate's identity: its first URI SAN (else DNS SAN), as
    /// Envoy's `principal_name` reads it (`spiffe://cluster.local/ns/a/sa/b`).
    pub principal: Option<&'a str>,
    /// Absent on TCP and TLS passthrough connections.
    pub http: Option<HttpAttributes<'a>>,
}

#[derive(Clone, Copy, Debug)]
pub struct HttpAttributes<'a> {
    /// `:authority` (or Host) as sent, port included when sent.
    pub host: &'a str,
    pub method: &'a str,
    /// The normalized path, without the query.
    pub path: &'a str,
    pub headers: &'a HeaderMap,
}

/// Which policies decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum DecidedBy {
    /// A CUSTOM policy matched: denied, as no provider can be asked.
    Custom,
    /// A DENY policy matched.
    Deny,
    /// An ALLOW policy matched.
    Allow,
    /// ALLOW policies apply and none matched.
    NoAllowMatched,
    /// No policy matched and no ALLOW policy applies.
    Default,
}

impl DecidedBy {
    /// The `action` label of `gateway_authz_decisions_total`.
    pub fn action_label(self) -> &'static str {
        match self {
            DecidedBy::Custom => "CUSTOM",
            DecidedBy::Deny => "DENY",
            DecidedBy::Allow | DecidedBy::NoAllowMatched => "ALLOW",
            DecidedBy::Default => "NONE",
        }
    }
}

/// The outcome for one request or connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verdict<'e> {
    pub allowed: bool,
    pub decided_by: DecidedBy,
    /// `namespace/name` of the policy that matched, when one did.
    pub policy: Option<&'e str>,
    /// The first AUDIT (or dry-run) policy that matched.
    pub audited: Option<&'e str>,
}

/// The policies that apply to one listener: compiled for its HTTP requests and for its
/// TCP and TLS passthrough connections (where HTTP fields cannot be read).
#[derive(Debug, Default)]
pub struct ListenerAuthz {
    pub http: Engine,
    pub tcp: Engine,
    /// `namespace/name` of each policy, for `/config_dump`.
    pub policies: Vec<String>,
}

impl ListenerAuthz {
    pub fn is_empty(&self) -> bool {
        self.policies.is_empty()
    }
}

impl Serialize for ListenerAuthz {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.policies.serialize(serializer)
    }
}

/// The policies that apply to one listener, compiled for HTTP or for TCP.
#[derive(Debug, Default)]
pub struct Engine {
    custom: RuleSet,
    deny: RuleSet,
    allow: RuleSet,
    /// AUDIT policies and dry-run policies of any action: matched only to be logged.
    audit: RuleSet,
    /// Whether any (enforced) ALLOW policy applies, even one that can match nothing.
    has_allow: bool,
}

impl Engine {
    /// No policy applies: every request is allowed without evaluation.
    pub fn is_empty(&self) -> bool {
        self.custom.is_empty()
            && self.deny.is_empty()
            && self.allow.is_empty()
            && self.audit.is_empty()
            && !self.has_allow
    }

    pub fn evaluate<'e>(&'e self, attributes: &Attributes<'_>) -> Verdict<'e> {
        let audited = self.audit.first_match(attributes);
        let first = |policies: &'e RuleSet| policies.first_match(attributes);
        let verdict = |allowed, decided_by, policy| Verdict {
            allowed,
            decided_by,
            policy,
            audited,
        };
        if let Some(policy) = first(&self.custom) {
            return verdict(false, DecidedBy::Custom, Some(policy));
        }
        if let Some(policy) = first(&self.deny) {
            return verdict(false, DecidedBy::Deny, Some(policy));
        }
        if self.has_allow {
            return match first(&self.allow) {
                Some(policy) => verdict(true, DecidedBy::Allow, Some(policy)),
                None => verdict(false, DecidedBy::NoAllowMatched, None),
            };
        }
        verdict(true, DecidedBy::Default, None)
    }

    /// Adds `policy` (`dry_run`: only logged, Istio's `istio.io/dry-run` annotation),
    /// compiled for HTTP or for TCP; what it cannot evaluate goes to `problems`.
    pub fn add(
        &mut self,
        policy: &AuthorizationPolicy,
        dry_run: bool,
        for_tcp: bool,
        problems: &mut Vec<Problem>,
    ) {
        let action = policy.spec.action.unwrap_or(SpecAction::Allow);
        let name: Arc<str> =
            format!("{}/{}", policy.metadata.namespace(), policy.metadata.name).into();
        let mut compiler = RuleCompiler {
            // CUSTOM rules become deny rules here, as istiod builds them without a provider.
            widen: action != SpecAction::Allow,
            for_tcp,
            namespace: policy.metadata.namespace(),
            problems,
        };
        let rules = policy
            .spec
            .rules
            .iter()
            .enumerate()
            .filter_map(|(index, rule)| compiler.rule(rule, &format!("spec.rules[{index}]")))
            .collect();
        if dry_run {
            self.audit.push(name, rules);
            return;
        }
        match action {
            SpecAction::Allow => {
                self.has_allow = true;
                self.allow.push(name, rules);
            }
            SpecAction::Deny => self.deny.push(name, rules),
            SpecAction::Audit => self.audit.push(name, rules),
            SpecAction::Custom => self.custom.push(name, rules),
        }
    }
}

/// Something in a policy that is not evaluated as written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// Path of the field in the policy (`spec.rules[0].when[1].key`).
    pub field: String,
    pub message: String,
}

/// One of `from` and one of `to` (any, when empty) and every `when`.
#[derive(Debug)]
struct Rule {
    from: Vec<Vec<Check>>,
    to: Vec<Vec<Check>>,
    when: Vec<Check>,
}

impl Rule {
    fn matches(&self, a: &Attributes<'_>) -> bool {
        let all = |checks: &[Check]| checks.iter().all(|c| c.matches(a));
        self.when.iter().all(|c| c.matches(a))
            && (self.to.is_empty() || self.to.iter().any(|c| all(c)))
            && (self.from.is_empty() || self.from.iter().any(|c| all(c)))
    }
}

/// Values, any of which must match, and values none of which may (either list may be
/// empty: no constraint).
#[derive(Debug)]
struct Set<T> {
    any_of: Vec<T>,
    none_of: Vec<T>,
}

impl<T> Set<T> {
    fn matches(&self, matches: impl Fn(&T) -> bool) -> bool {
        (self.any_of.is_empty() || self.any_of.iter().any(&matches))
            && !self.none_of.iter().any(&matches)
    }
}

/// One field's condition.
#[derive(Debug)]
enum Check {
    SourceIp(Set<Cidr>),
    RemoteIp(Set<Cidr>),
    DestinationIp(Set<Cidr>),
    DestinationPort(Set<u16>),
    Sni(Set<StringMatch>),
    Principal(Set<StringMatch>),
    /// `namespaces`, `serviceAccounts`: patterns over the principal.
    PrincipalPattern(Set<Regex>),
    Host(Set<StringMatch>),
    Method(Set<StringMatch>),
    Path(Set<PathMatch>),
    Header(HeaderName, Set<StringMatch>),
}

impl Check {
    fn matches(&self, a: &Attributes<'_>) -> bool {
        match self {
            Check::SourceIp(set) => set.matches(|c| c.contains(a.peer)),
            Check::RemoteIp(set) => set.matches(|c| c.contains(a.remote)),
            Check::DestinationIp(set) => set.matches(|c| c.contains(a.destination.ip())),
            Check::DestinationPort(set) => set.matches(|p| *p == a.destination.port()),
            Check::Sni(set) => set.matches(|m| a.sni.is_some_and(|s| m.matches(s))),
            Check::Principal(set) => set.matches(|m| a.principal.is_some_and(|p| m.matches(p))),
            Check::PrincipalPattern(set) => {
                set.matches(|r| a.principal.is_some_and(|p| r.is_match(p)))
            }
            Check::Host(set) => set.matches(|m| a.http.is_some_and(|h| m.matches(h.host))),
            Check::Method(set) => set.matches(|m| a.http.is_some_and(|h| m.matches(h.method))),
            Check::Path(set) => set.matches(|m| a.http.is_some_and(|h| m.matches(h.path))),
            Check::Header(name, set) => set.matches(|m| {
                a.http
                    .and_then(|h| header_value(h.headers, name))
                    .is_some_and(|v| m.matches(&v))
            }),
        }
    }
}

/// A header's values as Envoy's header matcher sees them: several joined with commas.
fn header_value<'h>(
    headers: &'h HeaderMap,
    name: &HeaderName,
) -> Option<std::borrow::Cow<'h, str>> {
    let mut values = headers.get_all(name).iter().filter_map(|v| v.to_str().ok());
    let first = values.next()?;
    match values.next() {
        None => Some(first.into()),
        Some(second) => {
            let mut joined = format!("{first},{second}");
            for more in values {
                joined.push(',');
                joined.push_str(more);
            }
            Some(joined.into())
        }
    }
}

/// Istio's string values: `*` (any non-empty), `*suffix`, `prefix*`, or exact.
#[derive(Debug)]
enum StringMatch {
    Present,
    Exact(String),
    Prefix(String),
    Suffix(String),
    /// `prefix` then anything then `suffix` (a principal's `*suffix` behind `spiffe://`).
    PrefixSuffix(String, String),
    /// Lowercase text compared without case (hosts).
    ExactNoCase(String),
    PrefixNoCase(String),
    SuffixNoCase(String),
}

impl StringMatch {
    fn parse(value: &str) -> Self {
        if value == "*" {
            StringMatch::Present
        } else if let Some(suffix) = value.strip_prefix('*') {
            StringMatch::Suffix(suffix.to_owned())
        } else if let Some(prefix) = value.strip_suffix('*') {
            StringMatch::Prefix(prefix.to_owned())
        } else {
            StringMatch::Exact(value.to_owned())
        }
    }

    /// Hosts: compared without case.
    fn host(value: &str) -> Self {
        let value = value.to_ascii_lowercase();
        match StringMatch::parse(&value) {
            StringMatch::Exact(v) => StringMatch::ExactNoCase(v),
            StringMatch::Prefix(v) => StringMatch::PrefixNoCase(v),
            StringMatch::Suffix(v) => StringMatch::SuffixNoCase(v),
            other => other,
        }
    }

    /// Principals: the value is written without `spiffe://`, the certificate has it.
    fn principal(value: &str) -> Self {
        if value == "*" {
            StringMatch::Present
        } else if let Some(suffix) = value.strip_prefix('*') {
            StringMatch::PrefixSuffix(SPIFFE_PREFIX.to_owned(), suffix.to_owned())
        } else if let Some(prefix) = value.strip_suffix('*') {
            StringMatch::Prefix(format!("{SPIFFE_PREFIX}{prefix}"))
        } else {
            StringMatch::Exact(format!("{SPIFFE_PREFIX}{value}"))
        }
    }

    fn matches(&self, text: &str) -> bool {
        let starts_no_case = |prefix: &str| {
            text.len() >= prefix.len()
                && text.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
        };
        let ends_no_case = |suffix: &str| {
            text.len() >= suffix.len()
                && text.as_bytes()[text.len() - suffix.len()..]
                    .eq_ignore_ascii_case(suffix.as_bytes())
        };
        match self {
            StringMatch::Present => !text.is_empty(),
            StringMatch::Exact(v) => text == v,
            StringMatch::Prefix(v) => text.starts_with(v.as_str()),
            StringMatch::Suffix(v) => text.ends_with(v.as_str()),
            StringMatch::PrefixSuffix(p, s) => {
                text.len() >= p.len() + s.len()
                    && text.starts_with(p.as_str())
                    && text.ends_with(s.as_str())
            }
            StringMatch::ExactNoCase(v) => text.eq_ignore_ascii_case(v),
            StringMatch::PrefixNoCase(v) => starts_no_case(v),
            StringMatch::SuffixNoCase(v) => ends_no_case(v),
        }
    }
}

/// A path value: Istio's string forms, or a template with `{*}` (one segment) and `{**}`
/// (the rest of the path).
#[derive(Debug)]
enum PathMatch {
    String(StringMatch),
    Template(Regex),
}

impl PathMatch {
    fn parse(value: &str) -> Result<Self, String> {
        if !value.contains("{*}") && !value.contains("{**}") {
            return Ok(PathMatch::String(StringMatch::parse(value)));
        }
        // Istio accepts only `{*}` and `{**}` as operators, `{**}` last, and no other
        // `*` or braces.
        let mut pattern = String::from("^");
        let mut rest = value;
        let mut seen_any = false;
        while !rest.is_empty() {
            let (literal, operator, after) = match (rest.find("{**}"), rest.find("{*}")) {
                (Some(a), Some(o)) if a <= o => (&rest[..a], "{**}", &rest[a + 4..]),
                (_, Some(o)) => (&rest[..o], "{*}", &rest[o + 3..]),
                (Some(a), None) => (&rest[..a], "{**}", &rest[a + 4..]),
                (None, None) => (rest, "", ""),
            };
            if literal.contains(['*', '{', '}']) {
                return Err(format!(
                    "path template {value:?}: only {{*}} and {{**}} may be used as operators"
                ));
            }
            if seen_any && !operator.is_empty() {
                return Err(format!(
                    "path template {value:?}: {{**}} must be the last operator"
                ));
            }
            pattern.push_str(&regex::escape(literal));
            match operator {
                "{*}" => pattern.push_str("[^/]+"),
                "{**}" => {
                    seen_any = true;
                    pattern.push_str(".*");
                }
                _ => {}
            }
            rest = after;
        }
        pattern.push('$');
        Regex::new(&pattern)
            .map(PathMatch::Template)
            .map_err(|e| format!("path template {value:?}: {e}"))
    }

    fn matches(&self, path: &str) -> bool {
        match self {
            PathMatch::String(m) => m.matches(path),
            PathMatch::Template(r) => r.is_match(path),
        }
    }
}

/// An address block: `10.0.0.0/8`, `2001:db8::/32`, or one address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    network: u128,
    mask: u128,
    v4: bool,
}

impl Cidr {
    pub fn parse(text: &str) -> Result<Self, String> {
        let (address, length) = match text.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (text, None),
        };
        let address: IpAddr = address
            .parse()
            .map_err(|_| format!("bad IP address ({text})"))?;
        let (bits, v4, width) = match address.to_canonical() {
            IpAddr::V4(v4) => (u128::from(u32::from(v4)), true, 32u32),
            IpAddr::V6(v6) => (u128::from(v6), false, 128u32),
        };
        let length = match length {
            None => width,
            Some(l) => l
                .parse::<u32>()
                .ok()
                .filter(|l| *l <= width)
                .ok_or_else(|| format!("bad CIDR range ({text})"))?,
        };
        let mask = match length {
            0 => 0,
            l => (!0u128 >> (128 - l)) << (width - l),
        };
        Ok(Cidr {
            network: bits & mask,
            mask,
            v4,
        })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match ip.to_canonical() {
            IpAddr::V4(v4) => self.v4 && u128::from(u32::from(v4)) & self.mask == self.network,
            IpAddr::V6(v6) => !self.v4 && u128::from(v6) & self.mask == self.network,
        }
    }
}

/// Why a value is not evaluated.
enum Skip {
    /// Not supported by this gateway, or HTTP-only on a TCP port.
    Unsupported(String),
    /// Does not parse (Istio's validation would have refused it).
    Invalid(String),
}

/// Compiles one policy's rules for one protocol.
struct RuleCompiler<'p> {
    /// DENY, AUDIT, CUSTOM: values that cannot be evaluated are left out (the rule matches
    /// more); ALLOW: their rule is left out.
    widen: bool,
    for_tcp: bool,
    /// The policy's namespace: `serviceAccounts` without one name an account in it.
    namespace: &'p str,
    problems: &'p mut Vec<Problem>,
}

/// A field: which attribute, and how a value of it is read.
#[derive(Clone, Copy)]
enum Key<'k> {
    SourceIp,
    RemoteIp,
    DestinationIp,
    DestinationPort,
    Sni,
    Principal,
    Namespace,
    ServiceAccount,
    Host,
    Method,
    Path,
    Header(&'k str),
    /// Known to Istio, not evaluated here (`request.auth.*`, `requestPrincipals`,
    /// `experimental.envoy.filters.*`).
    Unsupported,
}

impl Key<'_> {
    fn http_only(self) -> bool {
        matches!(
            self,
            Key::Host | Key::Method | Key::Path | Key::Header(_) | Key::Unsupported
        )
    }
}

/// Which `when` key names which attribute; None: not an attribute Istio knows.
fn when_key(key: &str) -> Option<Key<'_>> {
    Some(match key {
        "source.ip" => Key::SourceIp,
        "remote.ip" => Key::RemoteIp,
        "destination.ip" => Key::DestinationIp,
        "destination.port" => Key::DestinationPort,
        "connection.sni" => Key::Sni,
        "source.principal" => Key::Principal,
        "source.namespace" => Key::Namespace,
        "request.auth.principal" | "request.auth.audiences" | "request.auth.presenter" => {
            Key::Unsupported
        }
        _ => {
            if let Some(name) = key
                .strip_prefix("request.headers[")
                .and_then(|rest| rest.strip_suffix(']'))
                .filter(|name| !name.is_empty())
            {
                Key::Header(name)
            } else if key.starts_with("request.auth.claims[")
                || key.starts_with("experimental.envoy.filters.")
            {
                Key::Unsupported
            } else {
                return None;
            }
        }
    })
}

impl RuleCompiler<'_> {
    /// None: the rule is left out (an ALLOW rule with something it cannot evaluate, or
    /// a `when` key Istio does not know).
    /// Every field is compiled even after one left the rule out, so that all of them
    /// are reported.
    fn rule(&mut self, rule: &SpecRule, field: &str) -> Option<Rule> {
        let mut left_out = false;
        let mut when = Vec::new();
        for (index, condition) in rule.when.iter().enumerate() {
            let at = format!("{field}.when[{index}]");
            match self.condition(condition, &at) {
                Some(check) => when.extend(check),
                None => left_out = true,
            }
        }
        let mut from = Vec::new();
        for (index, f) in rule.from.iter().enumerate() {
            let at = format!("{field}.from[{index}].source");
            match f.source.as_ref().map(|s| self.source(s, &at)) {
                Some(Some(checks)) => from.push(checks),
                Some(None) => left_out = true,
                None => from.push(Vec::new()),
            }
        }
        let mut to = Vec::new();
        for (index, t) in rule.to.iter().enumerate() {
            let at = format!("{field}.to[{index}].operation");
            match t.operation.as_ref().map(|o| self.operation(o, &at)) {
                Some(Some(checks)) => to.push(checks),
                Some(None) => left_out = true,
                None => to.push(Vec::new()),
            }
        }
        (!left_out).then_some(Rule { from, to, when })
    }

    fn condition(&mut self, condition: &Condition, at: &str) -> Option<Option<Check>> {
        let Some(key) = when_key(&condition.key) else {
            self.problems.push(Problem {
                field: format!("{at}.key"),
                message: format!(
                    "unknown attribute {:?}: this rule is left out, as Istio does",
                    condition.key
                ),
            });
            return None;
        };
        self.check(
            key,
            &condition.values,
            &condition.not_values,
            &format!("{at}.values"),
        )
    }

    fn source(&mut self, s: &Source, at: &str) -> Option<Vec<Check>> {
        let fields: [(Key<'_>, &[String], &[String], &str); 6] = [
            (Key::SourceIp, &s.ip_blocks, &s.not_ip_blocks, "ipBlocks"),
            (
                Key::RemoteIp,
                &s.remote_ip_blocks,
                &s.not_remote_ip_blocks,
                "remoteIpBlocks",
            ),
            (
                Key::Principal,
                &s.principals,
                &s.not_principals,
                "principals",
            ),
            (
                Key::Namespace,
                &s.namespaces,
                &s.not_namespaces,
                "namespaces",
            ),
            (
                Key::ServiceAccount,
                &s.service_accounts,
                &s.not_service_accounts,
                "serviceAccounts",
            ),
            (
                Key::Unsupported,
                &s.request_principals,
                &s.not_request_principals,
                "requestPrincipals",
            ),
        ];
        self.checks(&fields, at)
    }

    fn operation(&mut self, o: &Operation, at: &str) -> Option<Vec<Check>> {
        let fields: [(Key<'_>, &[String], &[String], &str); 4] = [
            (Key::Host, &o.hosts, &o.not_hosts, "hosts"),
            (Key::DestinationPort, &o.ports, &o.not_ports, "ports"),
            (Key::Method, &o.methods, &o.not_methods, "methods"),
            (Key::Path, &o.paths, &o.not_paths, "paths"),
        ];
        self.checks(&fields, at)
    }

    fn checks(
        &mut self,
        fields: &[(Key<'_>, &[String], &[String], &str)],
        at: &str,
    ) -> Option<Vec<Check>> {
        let mut checks = Vec::new();
        let mut left_out = false;
        for (key, values, not_values, name) in fields {
            match self.check(*key, values, not_values, &format!("{at}.{name}")) {
                Some(check) => checks.extend(check),
                None => left_out = true,
            }
        }
        (!left_out).then_some(checks)
    }

    /// Outer None: the rule is left out; inner None: no condition (nothing evaluable).
    fn check(
        &mut self,
        key: Key<'_>,
        values: &[String],
        not_values: &[String],
        field: &str,
    ) -> Option<Option<Check>> {
        macro_rules! set {
            ($variant:expr, $parse:expr) => {{
                let any_of = self.values(key, values, field, $parse)?;
                let none_of = self.values(key, not_values, field, $parse)?;
                if any_of.is_empty() && none_of.is_empty() {
                    return Some(None);
                }
                Some(Some($variant(Set { any_of, none_of })))
            }};
        }
        let namespace = self.namespace.to_owned();
        match key {
            Key::SourceIp => set!(Check::SourceIp, Cidr::parse),
            Key::RemoteIp => set!(Check::RemoteIp, Cidr::parse),
            Key::DestinationIp => set!(Check::DestinationIp, Cidr::parse),
            Key::DestinationPort => set!(Check::DestinationPort, parse_port),
            Key::Sni => set!(Check::Sni, |v: &str| Ok(StringMatch::parse(v))),
            Key::Principal => set!(Check::Principal, |v: &str| Ok(StringMatch::principal(v))),
            Key::Namespace => set!(Check::PrincipalPattern, namespace_pattern),
            Key::ServiceAccount => set!(Check::PrincipalPattern, |v: &str| {
                service_account_pattern(&namespace, v)
            }),
            Key::Host => set!(Check::Host, |v: &str| Ok(StringMatch::host(v))),
            Key::Method => set!(Check::Method, |v: &str| Ok(StringMatch::parse(v))),
            Key::Path => set!(Check::Path, PathMatch::parse),
            Key::Header(name) => match HeaderName::from_bytes(name.as_bytes()) {
                Ok(header) => set!(|set| Check::Header(header.clone(), set), |v: &str| Ok(
                    StringMatch::parse(v)
                )),
                Err(_) => {
                    let message = format!("{name:?} is not a header name");
                    self.skip_all(values, not_values, field, &Skip::Invalid(message))?;
                    Some(None)
                }
            },
            Key::Unsupported => {
                let message = "not supported by this gateway (request authentication, JWT claims and Envoy metadata are not evaluated)".to_owned();
                self.skip_all(values, not_values, field, &Skip::Unsupported(message))?;
                Some(None)
            }
        }
    }

    /// Reports values that are all skipped; None when that leaves the rule out.
    fn skip_all(
        &mut self,
        values: &[String],
        not_values: &[String],
        field: &str,
        why: &Skip,
    ) -> Option<()> {
        if values.is_empty() && not_values.is_empty() {
            return Some(());
        }
        self.skip(field, why)
    }

    /// Each value parsed; a value that cannot be evaluated is reported and dropped (or
    /// leaves the rule out: None).
    fn values<T>(
        &mut self,
        key: Key<'_>,
        values: &[String],
        field: &str,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Option<Vec<T>> {
        let mut parsed = Vec::with_capacity(values.len());
        for value in values {
            if self.for_tcp && key.http_only() {
                return self
                    .skip(
                        field,
                        &Skip::Unsupported("HTTP-only on a TCP or TLS passthrough port".into()),
                    )
                    .map(|()| Vec::new());
            }
            if value.is_empty() {
                self.skip(field, &Skip::Invalid("empty value".into()))?;
                continue;
            }
            match parse(value) {
                Ok(v) => parsed.push(v),
                Err(message) => self.skip(field, &Skip::Invalid(message))?,
            }
        }
        Some(parsed)
    }

    fn skip(&mut self, field: &str, why: &Skip) -> Option<()> {
        let consequence = if self.widen {
            "the value is left out, so the rule matches more (as Istio does for DENY, AUDIT and CUSTOM)"
        } else {
            "this ALLOW rule is left out, so it allows nothing (as Istio does)"
        };
        let reason = match why {
            Skip::Unsupported(m) | Skip::Invalid(m) => m,
        };
        // On TCP ports the HTTP fields are skipped by design; the HTTP compile reports
        // everything else once.
        if !self.for_tcp {
            self.problems.push(Problem {
                field: field.to_owned(),
                message: format!("{reason}: {consequence}"),
            });
        }
        self.widen.then_some(())
    }
}

fn parse_port(value: &str) -> Result<u16, String> {
    value
        .parse::<u16>()
        .map_err(|_| format!("bad port ({value}): expected 0-65535"))
}

/// Istio's `.*/ns/<namespace>/.*` over the principal, `*` in the value matching anything.
fn namespace_pattern(value: &str) -> Result<Regex, String> {
    let namespace = value
        .split('*')
        .map(regex::escape)
        .collect::<Vec<_>>()
        .join(".*");
    Regex::new(&format!("^.*/ns/{namespace}/.*$")).map_err(|e| e.to_string())
}

/// Istio's service account pattern: `name` (in the policy's namespace) or `ns/name`.
fn service_account_pattern(policy_namespace: &str, value: &str) -> Result<Regex, String> {
    let (namespace, account) = value.split_once('/').unwrap_or((policy_namespace, value));
    Regex::new(&format!(
        "^spiffe://.+/ns/{}/(.+/|)sa/{}(/.+)?$",
        regex::escape(namespace),
        regex::escape(account)
    ))
    .map_err(|e| e.to_string())
}

#[cfg(test)]
#[path = "authz_tests.rs"]
mod tests;

//! Which connections a listener's policies deny from their source address alone, so the
//! kernel filter can drop their SYNs before the daemon accepts them (`ebpf/ip_rules.rs`).
//!
//! The kernel's answer must never differ from userspace's where it acts: it drops only
//! sources every connection from which userspace would deny on that port, and passes
//! everything else to userspace, which still evaluates every policy. So a rule counts
//! only when nothing but the peer address and the destination port can decide it: `from`
//! sources with `ipBlocks` only (no `notIpBlocks`, no `remoteIpBlocks`, no principals),
//! `to` with `ports` only, `when` on `destination.port` only.
//! - DENY (and CUSTOM, which denies what it matches here) rules of that shape give the
//!   blocks the kernel drops; other DENY rules only leave more to userspace.
//! - When ALLOW policies apply and every ALLOW rule has that shape, a source none of them
//!   names is denied too; one ALLOW rule of another shape leaves that to userspace.
//! - AUDIT (and dry-run) policies keep the whole port in userspace: they log what they
//!   match, and a dropped SYN is logged by no one.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::Serialize;

use super::{Check, Cidr, Engine, ListenerAuthz, Rule};

/// An address block as the kernel holds it: `address/length`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct IpBlock {
    pub address: IpAddr,
    pub length: u8,
}

impl IpBlock {
    /// Whether `other` lies inside this block (same family, at least as long).
    pub fn covers(&self, other: &IpBlock) -> bool {
        let (width, this, that): (u32, u128, u128) = match (self.address, other.address) {
            (IpAddr::V4(a), IpAddr::V4(b)) => {
                (32, u128::from(a.to_bits()), u128::from(b.to_bits()))
            }
            (IpAddr::V6(a), IpAddr::V6(b)) => (128, a.to_bits(), b.to_bits()),
            _ => return false,
        };
        let length = u32::from(self.length).min(width);
        let mask = match length {
            0 => 0,
            l => (!0u128 >> (128 - l)) << (width - l),
        };
        other.length >= self.length && this & mask == that & mask
    }
}

impl From<Cidr> for IpBlock {
    fn from(cidr: Cidr) -> Self {
        let length = cidr.mask.count_ones() as u8;
        let address = if cidr.v4 {
            IpAddr::V4(Ipv4Addr::from(cidr.network as u32))
        } else {
            IpAddr::V6(Ipv6Addr::from(cidr.network))
        };
        IpBlock { address, length }
    }
}

/// What a port's policies decide from the source address alone.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SourceRules {
    /// Sources denied whatever else the connection carries.
    pub deny: Vec<IpBlock>,
    /// When set, only these sources can be allowed; every other source is denied.
    pub allow_only: Option<Vec<IpBlock>>,
}

/// What one rule requires of the source on one port.
enum RuleSources {
    /// The rule never matches on this port.
    Never,
    /// The rule matches exactly the connections from these blocks.
    Blocks(Vec<IpBlock>),
    /// Something besides the source address decides.
    Undecidable,
}

impl ListenerAuthz {
    /// The source rules the kernel can enforce on `port`, when the HTTP and the TCP
    /// compiles of the policies agree on them (they differ where a policy has HTTP fields,
    /// which a TCP compile drops: such a port stays in userspace).
    pub fn source_rules(&self, port: u16) -> Option<SourceRules> {
        let http = self.http.source_rules(port)?;
        (self.tcp.source_rules(port)? == http).then_some(http)
    }
}

impl Engine {
    /// None when the kernel can decide nothing on `port` from the source alone.
    pub fn source_rules(&self, port: u16) -> Option<SourceRules> {
        if !self.audit.is_empty() {
            return None;
        }
        let mut deny = Vec::new();
        for rule in self.custom.rules().chain(self.deny.rules()) {
            if let RuleSources::Blocks(blocks) = rule_sources(rule, port) {
                deny.extend(blocks);
            }
        }
        let mut allow_only = None;
        if self.has_allow {
            let mut allowed = Vec::new();
            let mut decidable = true;
            for rule in self.allow.rules() {
                match rule_sources(rule, port) {
                    RuleSources::Never => {}
                    RuleSources::Blocks(blocks) => allowed.extend(blocks),
                    RuleSources::Undecidable => {
                        decidable = false;
                        break;
                    }
                }
            }
            if decidable {
                allowed.sort_unstable();
                allowed.dedup();
                allow_only = Some(allowed);
            }
        }
        deny.sort_unstable();
        deny.dedup();
        (!deny.is_empty() || allow_only.is_some()).then_some(SourceRules { deny, allow_only })
    }
}

/// Every address, IPv4 and IPv6: a rule without sources.
fn everywhere() -> Vec<IpBlock> {
    vec![
        IpBlock {
            address: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            length: 0,
        },
        IpBlock {
            address: IpAddr::V6(Ipv6Addr::UNSPECIFIED),
            length: 0,
        },
    ]
}

fn rule_sources(rule: &Rule, port: u16) -> RuleSources {
    // Each check: Some(matches this port) for a destination port, None for anything else.
    let on_port = |check: &Check| match check {
        Check::DestinationPort(set) => Some(set.matches(|p| *p == port)),
        _ => None,
    };
    for check in &rule.when {
        match on_port(check) {
            Some(true) => {}
            Some(false) => return RuleSources::Never,
            None => return RuleSources::Undecidable,
        }
    }
    if !rule.to.is_empty() {
        let mut any = false;
        for checks in &rule.to {
            let mut all = true;
            for check in checks {
                match on_port(check) {
                    Some(matches) => all &= matches,
                    None => return RuleSources::Undecidable,
                }
            }
            any |= all;
        }
        if !any {
            return RuleSources::Never;
        }
    }
    if rule.from.is_empty() {
        return RuleSources::Blocks(everywhere());
    }
    let mut blocks = Vec::new();
    for checks in &rule.from {
        match checks.as_slice() {
            [] => blocks.extend(everywhere()),
            [Check::SourceIp(set)] if set.none_of.is_empty() && !set.any_of.is_empty() => {
                blocks.extend(set.any_of.iter().copied().map(IpBlock::from));
            }
            _ => return RuleSources::Undecidable,
        }
    }
    RuleSources::Blocks(blocks)
}

#[cfg(test)]
#[path = "source_rules_tests.rs"]
mod tests;

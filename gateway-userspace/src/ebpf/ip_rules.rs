//! Writing the ports' source rules (`authz/source_rules.rs`) into the kernel's LPM trie,
//! one generation beside the live one, as the rest of the policy is written.
//!
//! The kernel's longest-prefix lookup decides: a deny block drops, a pass block passes,
//! and a source no block names is dropped only where the port has an allow list. An
//! allow block inside a deny block is left out, since DENY comes first in Istio and the
//! longer pass entry would hide the deny.

use aya::maps::{
    Map,
    lpm_trie::{Key, LpmTrie},
};
use gateway_ebpf::{
    IpRuleKey,
    maps::{
        IP_RULE_DENY, IP_RULE_FIXED_BITS, IP_RULE_PASS, MAX_IP_RULES_PER_GENERATION,
        SOURCE_DEFAULT_DENY, SOURCE_RULES,
    },
};

use super::KernelError;
use crate::{authz::IpBlock, snapshot::PortSourceRules};

pub(super) type RuleKey = Key<IpRuleKey>;

/// `PortPolicy::flags` for a port with these rules.
pub(super) fn port_flags(rules: &PortSourceRules) -> u32 {
    SOURCE_RULES
        | if rules.rules.allow_only.is_some() {
            SOURCE_DEFAULT_DENY
        } else {
            0
        }
}

/// The trie entries for `port` (a bind port, or a node port leading to the bind port
/// `rules` belong to), in the order they are written.
pub(super) fn entries(generation: u32, port: u16, rules: &PortSourceRules) -> Vec<(RuleKey, u8)> {
    let deny = &rules.rules.deny;
    let pass = rules.rules.allow_only.iter().flatten();
    pass.filter(|allowed| !deny.iter().any(|d| d.covers(allowed)))
        .map(|b| (key(generation, port, b), IP_RULE_PASS))
        .chain(
            deny.iter()
                .map(|b| (key(generation, port, b), IP_RULE_DENY)),
        )
        .collect()
}

fn key(generation: u32, port: u16, block: &IpBlock) -> RuleKey {
    let mut data = IpRuleKey {
        generation,
        port: u32::from(port),
        family: 4,
        addr: [0; 16],
    };
    match block.address {
        std::net::IpAddr::V4(v4) => data.addr[..4].copy_from_slice(&v4.octets()),
        std::net::IpAddr::V6(v6) => {
            data.family = 6;
            data.addr = v6.octets();
        }
    }
    Key::new(IP_RULE_FIXED_BITS + u32::from(block.length), data)
}

/// Replaces what `stale` held with `entries`, recording each key in `written` as it goes
/// (so a write that fails halfway is still cleared by the next reuse of the generation).
pub(super) fn write(
    map: &mut Map,
    stale: &[RuleKey],
    entries: &[(RuleKey, u8)],
    written: &mut Vec<RuleKey>,
) -> Result<(), KernelError> {
    let mut trie: LpmTrie<_, IpRuleKey, u8> = LpmTrie::try_from(map)?;
    for key in stale {
        let _ = trie.remove(key);
    }
    if entries.len() > MAX_IP_RULES_PER_GENERATION as usize {
        return Err(KernelError::TooManyIpRules {
            count: entries.len(),
        });
    }
    for (key, action) in entries {
        written.push(*key);
        trie.insert(key, action, 0)?;
    }
    Ok(())
}

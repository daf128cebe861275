//! The server-name rule shared by the kernel (which hashes the ClientHello's SNI) and
//! gatewayd (which matches SNI in userspace and hashes the names each TLS port accepts
//! into the kernel's map), so the two cannot drift.
//!
//! The rule ([`pattern_matches`]), as Envoy's filter-chain match and Istio apply it: a
//! pattern is an exact name, `*` (anything), or `*.suffix`, which accepts any name that
//! ends in `.suffix` with at least one more label, at any depth: `*.example.com` accepts
//! `a.example.com` and `a.b.example.com`, not `example.com`.
//!
//! The kernel cannot index arrays by a count of dots without the verifier walking every
//! count separately, so the hash is one that lets a single forward pass produce the
//! hash of every `*.suffix` form: a polynomial hash (Horner, odd multiplier, over the
//! ASCII-lowercased bytes, mod 2^64). Its multiplier is invertible, so the suffix after
//! the dot at position j has hash `H(name) - H(name[..j]) * P^(n-j)`, and the wildcard
//! form `*` + suffix one more term. At each dot the pass keeps one number (`A_j`) in a
//! shift register of [`MAX_WILDCARD_LABELS`] slots, updated with masks (no branch, no
//! index), and the forms are finished once the length is known. A port with a wildcard
//! deeper than the register is not policed in the kernel (gatewayd marks it
//! accept-any), so the kernel never rejects a name userspace would serve. A hash
//! collision can only let a hello through to userspace, which checks SNI itself.

use crate::Bytes;

/// The multiplier (odd, so invertible mod 2^64).
const P: u64 = 0x0000_0100_0000_01b3;
/// P's inverse mod 2^64 (Newton's iteration: each step doubles the correct bits).
const P_INV: u64 = {
    let mut x: u64 = P; // correct to 3 bits for any odd P
    let mut i = 0;
    while i < 6 {
        x = x.wrapping_mul(2u64.wrapping_sub(P.wrapping_mul(x)));
        i += 1;
    }
    x
};
const _: () = assert!(P.wrapping_mul(P_INV) == 1);

/// Labels after `*.` the kernel can match: `*.b.example.com` has 3. Istio and Gateway
/// API hosts rarely exceed 5; ports with deeper wildcards are left to userspace.
pub const MAX_WILDCARD_LABELS: usize = 8;

#[inline(always)]
fn step(hash: u64, byte: u8) -> u64 {
    hash.wrapping_mul(P)
        .wrapping_add(u64::from(byte.to_ascii_lowercase()))
}

/// The hash of a configured name, `example.com` or `*.example.com` (case-insensitive).
pub fn host_hash(name: &[u8]) -> u64 {
    name.iter().fold(0, |h, &b| step(h, b))
}

/// The matching rule itself (case-insensitive): does `pattern` accept `name`?
pub fn pattern_matches(pattern: &[u8], name: &[u8]) -> bool {
    if pattern == b"*" || pattern.eq_ignore_ascii_case(name) {
        return true;
    }
    match pattern.strip_prefix(b"*") {
        Some(suffix) if suffix.first() == Some(&b'.') && name.len() > suffix.len() => {
            name[name.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
        }
        _ => false,
    }
}

/// Labels after `*.` of a wildcard pattern (`*.b.example.com`: 3); None for exact
/// names and `*`. Ports with a pattern deeper than [`MAX_WILDCARD_LABELS`] cannot be
/// policed in the kernel.
pub fn wildcard_labels(pattern: &[u8]) -> Option<usize> {
    let suffix = pattern.strip_prefix(b"*.")?;
    Some(suffix.iter().filter(|&&b| b == b'.').count() + 1)
}

/// Why a client's name is not hashed (and so not decided on).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NameError {
    /// A byte no DNS name has (wildcards, spaces, NUL, non-ASCII), an empty label or a
    /// trailing dot, or fewer bytes than the name's length. Userspace judges these.
    NotADnsName,
}

/// 1 for the bytes a host name may hold: letters, digits, `-`, `_` and `.`.
static DNS_BYTE: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut c = 0;
    while c < 256 {
        let b = c as u8;
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.' {
            table[c] = 1;
        }
        c += 1;
    }
    table
};

/// A client's name, hashed: the exact form and the `*.suffix` form at each of its last
/// [`MAX_WILDCARD_LABELS`] dots (shortest suffix first). A name with fewer dots has the
/// exact hash in the remaining slots: looking it up again is harmless.
#[derive(Clone, Copy, Debug)]
pub struct NameHashes {
    pub exact: u64,
    pub wildcards: [u64; MAX_WILDCARD_LABELS],
}

impl NameHashes {
    /// Whether any form of the name is in `accepted` (the host side of the kernel's
    /// lookups, for tests).
    pub fn accepted_by(&self, accepted: impl Fn(u64) -> bool) -> bool {
        accepted(self.exact) || self.wildcards.iter().any(|&w| accepted(w))
    }
}

/// Hashes a client's name one byte at a time, first to last. Branch-light on purpose:
/// the verifier walks this loop once per byte, and every branch whose sides it cannot
/// merge multiplies its work; values are selected with masks instead.
#[derive(Clone, Copy, Debug)]
pub struct NameHasher {
    /// H(name so far).
    prefix: u64,
    /// P^len and P^-len of the name so far.
    power: u64,
    inverse_power: u64,
    /// `(b'*' - H(name[..j])) * P^-j` for the last dots j, most recent first.
    at_dots: [u64; MAX_WILDCARD_LABELS],
    prev_dot: u8,
    bad: u8,
}

impl Default for NameHasher {
    fn default() -> Self {
        Self::new()
    }
}

impl NameHasher {
    /// `prev_dot` starts at 1 so that a leading dot counts as an empty label.
    pub const fn new() -> Self {
        NameHasher {
            prefix: 0,
            power: 1,
            inverse_power: 1,
            at_dots: [0; MAX_WILDCARD_LABELS],
            prev_dot: 1,
            bad: 0,
        }
    }

    #[inline(always)]
    pub fn push(&mut self, c: u8) {
        let dot = u8::from(c == b'.');
        self.bad |= (DNS_BYTE[usize::from(c)] ^ 1) | (dot & self.prev_dot);
        // On a dot, shift the register and put this dot's term in front; otherwise keep
        // it: `mask` is all ones or all zeros.
        let term = u64::from(b'*')
            .wrapping_sub(self.prefix)
            .wrapping_mul(self.inverse_power);
        let mask = 0u64.wrapping_sub(u64::from(dot));
        let mut k = MAX_WILDCARD_LABELS - 1;
        while k > 0 {
            let shifted = self.at_dots[k - 1];
            self.at_dots[k] ^= (self.at_dots[k] ^ shifted) & mask;
            k -= 1;
        }
        self.at_dots[0] ^= (self.at_dots[0] ^ term) & mask;
        self.prefix = step(self.prefix, c);
        self.power = self.power.wrapping_mul(P);
        self.inverse_power = self.inverse_power.wrapping_mul(P_INV);
        self.prev_dot = dot;
    }

    #[inline(always)]
    pub fn finish(self) -> Result<NameHashes, NameError> {
        if self.bad | self.prev_dot != 0 {
            return Err(NameError::NotADnsName);
        }
        let exact = self.prefix;
        let mut wildcards = [exact; MAX_WILDCARD_LABELS];
        let mut k = 0;
        while k < MAX_WILDCARD_LABELS {
            // W_j = H + A_j * P^n; an empty slot (A = 0) gives H itself.
            wildcards[k] = exact.wrapping_add(self.at_dots[k].wrapping_mul(self.power));
            k += 1;
        }
        Ok(NameHashes { exact, wildcards })
    }
}

/// Hashes of the name at `offset..offset + len`.
#[inline(always)]
pub fn sni_hashes<B: Bytes + ?Sized>(
    b: &B,
    offset: usize,
    len: usize,
) -> Result<NameHashes, NameError> {
    let mut hasher = NameHasher::new();
    let mut i = 0;
    while i < crate::client_hello::MAX_SNI_LEN {
        if i >= len {
            break;
        }
        hasher.push(b.at(offset + i).ok_or(NameError::NotADnsName)?);
        i += 1;
    }
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h_exact(name: &[u8]) -> u64 {
        host_hash(name)
    }

    fn hashes(name: &[u8]) -> NameHashes {
        sni_hashes(name, 0, name.len()).expect("valid")
    }

    #[test]
    fn client_names_hash_like_configured_names_at_every_depth() {
        let h = hashes(b"API.b.Example.com");
        assert_eq!(h.exact, host_hash(b"api.b.example.com"));
        let forms: [&[u8]; 3] = [b"*.com", b"*.example.com", b"*.b.example.com"];
        for (i, form) in forms.iter().enumerate() {
            assert_eq!(h.wildcards[i], host_hash(form), "{i}");
        }
        assert_eq!(h.wildcards[3], h.exact, "no `*.api.b.example.com`");
        assert_eq!(
            hashes(b"localhost").wildcards,
            [h_exact(b"localhost"); MAX_WILDCARD_LABELS],
            "no dot, no wildcard form"
        );
    }

    #[test]
    fn names_deeper_than_the_window_keep_their_shortest_suffixes() {
        let name = b"a.b.c.d.e.f.g.h.i.j.example.com";
        let h = hashes(name);
        assert_eq!(h.wildcards[0], host_hash(b"*.com"));
        assert_eq!(
            h.wildcards[MAX_WILDCARD_LABELS - 1],
            host_hash(b"*.e.f.g.h.i.j.example.com")
        );
    }

    #[test]
    fn names_that_are_not_dns_names_are_left_to_userspace() {
        for bad in [
            &b"*.example.com"[..],
            b"a..b",
            b"trailing.",
            b".leading",
            b"sp ace",
            b"nul\0",
        ] {
            assert!(
                matches!(sni_hashes(bad, 0, bad.len()), Err(NameError::NotADnsName)),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn the_hashes_agree_with_the_rule_on_the_generated_table() {
        for case in crate::sni_table::cases() {
            let pattern = host_hash(case.pattern.as_bytes());
            let kernel_accepts = match sni_hashes(case.name.as_bytes(), 0, case.name.len()) {
                Ok(h) => h.accepted_by(|hash| hash == pattern),
                // Not decided in the kernel: passed to userspace.
                Err(_) => true,
            };
            assert_eq!(
                pattern_matches(case.pattern.as_bytes(), case.name.as_bytes()),
                case.accepted,
                "rule: {case:?}"
            );
            assert_eq!(kernel_accepts, case.accepted, "hashes: {case:?}");
        }
    }
}

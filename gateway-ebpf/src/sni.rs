//! Host-name hashing shared by the kernel (which hashes the ClientHello's SNI) and
//! gatewayd (which hashes the names each TLS port accepts), so the two cannot drift.
//!
//! FNV-1a 64 over the ASCII-lowercased name. A wildcard server name `*.example.com`
//! accepts exactly one more label (TLS's rule, RFC 6125): the kernel hashes a client's
//! `api.example.com` twice, as is and as `*` + `.example.com`, and looks both up.
//! A collision can only let a hello through to userspace, which checks SNI itself.

use crate::Bytes;

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

#[inline(always)]
fn step(hash: u64, byte: u8) -> u64 {
    (hash ^ u64::from(byte.to_ascii_lowercase())).wrapping_mul(FNV_PRIME)
}

/// The hash of a configured name: `example.com` or `*.example.com`.
pub fn host_hash(name: &[u8]) -> u64 {
    name.iter().fold(FNV_OFFSET, |h, &b| step(h, b))
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

/// Hashes a client's name one byte at a time, computing the exact and the wildcard form
/// together. Branch-light on purpose: the verifier walks this loop once per byte, and
/// every branch whose sides it cannot merge multiplies its work.
#[derive(Clone, Copy, Debug)]
pub struct NameHasher {
    exact: u64,
    wild: u64,
    /// 1 once the first dot is seen (the wildcard hash restarts there).
    seen_dot: u8,
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
            exact: FNV_OFFSET,
            wild: FNV_OFFSET,
            seen_dot: 0,
            prev_dot: 1,
            bad: 0,
        }
    }

    #[inline(always)]
    pub fn push(&mut self, c: u8) {
        let dot = u8::from(c == b'.');
        self.bad |= (DNS_BYTE[usize::from(c)] ^ 1) | (dot & self.prev_dot);
        self.exact = step(self.exact, c);
        let restart = dot & (self.seen_dot ^ 1);
        self.wild = if restart == 1 {
            step(STAR, c)
        } else {
            step(self.wild, c)
        };
        self.seen_dot |= dot;
        self.prev_dot = dot;
    }

    /// (exact, wildcard form if the name has a dot).
    #[inline(always)]
    pub fn finish(self) -> Result<(u64, Option<u64>), NameError> {
        if self.bad | self.prev_dot != 0 {
            return Err(NameError::NotADnsName);
        }
        Ok((
            self.exact,
            if self.seen_dot == 1 {
                Some(self.wild)
            } else {
                None
            },
        ))
    }
}

/// FNV state after hashing `*`.
const STAR: u64 = (FNV_OFFSET ^ b'*' as u64).wrapping_mul(FNV_PRIME);

/// Hashes of the name at `offset..offset + len`: (exact, wildcard form if it has a dot).
#[inline(always)]
pub fn sni_hashes<B: Bytes + ?Sized>(
    b: &B,
    offset: usize,
    len: usize,
) -> Result<(u64, Option<u64>), NameError> {
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

    #[test]
    fn client_names_hash_like_configured_names() {
        let name = b"API.Example.com";
        let (exact, wild) = sni_hashes(&name[..], 0, name.len()).expect("valid");
        assert_eq!(exact, host_hash(b"api.example.com"));
        assert_eq!(wild, Some(host_hash(b"*.example.com")));
        let (_, wild) = sni_hashes(&b"localhost"[..], 0, 9).expect("valid");
        assert_eq!(wild, None, "no dot, no wildcard form");
        // One label only: a.b.example.com's wildcard form is *.b.example.com.
        let (_, wild) = sni_hashes(&b"a.b.example.com"[..], 0, 15).expect("valid");
        assert_eq!(wild, Some(host_hash(b"*.b.example.com")));
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
            assert_eq!(
                sni_hashes(bad, 0, bad.len()),
                Err(NameError::NotADnsName),
                "{bad:?}"
            );
        }
    }
}

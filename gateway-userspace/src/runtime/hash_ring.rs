//! Consistent hashing over a cluster's endpoints (DestinationRule
//! `loadBalancer.consistentHash`): Envoy's ring hash and Maglev, built from the endpoints'
//! addresses so that every gateway replica with the same endpoints maps a key to the
//! same endpoint, and an endpoint that leaves moves only its own share of the keys.

use std::net::SocketAddr;

use crate::snapshot::LoadBalancer;

/// Envoy's defaults: a ring of at least 1024 entries, a Maglev table of 65537 (a prime).
pub const DEFAULT_MINIMUM_RING_SIZE: u64 = 1024;
pub const DEFAULT_MAGLEV_TABLE_SIZE: u64 = 65_537;
/// Upper bounds on what a DestinationRule may ask for: a table is built per cluster and
/// held in memory (Envoy caps the ring at 8M entries; a gateway needs far fewer).
const MAX_RING_SIZE: u64 = 1 << 20;
const MAX_MAGLEV_TABLE_SIZE: u64 = 1_048_573;

/// A key's 64-bit hash: FNV-1a, then a finalizer so that near keys land far apart.
pub fn hash_key(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    mix(h)
}

/// MurmurHash3's 64-bit finalizer.
fn mix(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

fn hash_parts(addr: &SocketAddr, salt: &str, n: u64) -> u64 {
    hash_key(format!("{addr}{salt}{n}").as_bytes())
}

/// The endpoint table of one hashing cluster, in the order keys are looked up.
#[derive(Debug)]
pub enum HashTable {
    /// Points on a ring, sorted by hash: a key goes to the first point at or after it.
    Ring(Vec<(u64, usize)>),
    /// Maglev's lookup table: a key goes to `table[key % len]`.
    Maglev(Vec<usize>),
}

impl HashTable {
    /// The table for `endpoints` by `balancer`; None for balancers that do not hash.
    pub fn build(balancer: LoadBalancer, endpoints: &[SocketAddr]) -> Option<HashTable> {
        if endpoints.is_empty() {
            return None;
        }
        match balancer {
            LoadBalancer::RingHash { minimum_ring_size } => {
                Some(HashTable::Ring(ring(endpoints, minimum_ring_size)))
            }
            LoadBalancer::Maglev { table_size } => {
                Some(HashTable::Maglev(maglev(endpoints, table_size)))
            }
            _ => None,
        }
    }

    /// Endpoint indexes for `key`, the owner first, then the next distinct endpoints in
    /// table order: a retry or an ejected owner moves to the next, as Envoy walks on.
    pub fn candidates(&self, key: u64) -> impl Iterator<Item = usize> + '_ {
        let (start, len) = match self {
            HashTable::Ring(points) => {
                let at = points.partition_point(|&(h, _)| h < key);
                (if at == points.len() { 0 } else { at }, points.len())
            }
            HashTable::Maglev(table) => {
                let len = table.len();
                (usize::try_from(key % len as u64).unwrap_or(0), len)
            }
        };
        (0..len).map(move |k| {
            let i = (start + k) % len;
            match self {
                HashTable::Ring(points) => points[i].1,
                HashTable::Maglev(table) => table[i],
            }
        })
    }
}

/// Ketama-style ring: each endpoint gets `size` points hashed from its address (fewer
/// only past `MAX_RING_SIZE` in all), so the ring holds at least `size` points and an
/// endpoint's points do not depend on the others: one leaving takes only its own keys.
fn ring(endpoints: &[SocketAddr], minimum_ring_size: u64) -> Vec<(u64, usize)> {
    let size = minimum_ring_size.clamp(1, MAX_RING_SIZE);
    let per_endpoint = size.min(MAX_RING_SIZE / endpoints.len() as u64).max(1);
    let mut points: Vec<(u64, usize)> = endpoints
        .iter()
        .enumerate()
        .flat_map(|(index, addr)| (0..per_endpoint).map(move |n| (hash_parts(addr, "_", n), index)))
        .collect();
    // Ties (vanishingly rare) break by address so every replica agrees.
    points.sort_unstable_by(|a, b| a.0.cmp(&b.0).then(endpoints[a.1].cmp(&endpoints[b.1])));
    points
}

/// Maglev (Eisenbud et al.): each endpoint fills the table along its own permutation,
/// in turns, until the table is full; `table_size` is rounded up to a prime.
fn maglev(endpoints: &[SocketAddr], table_size: u64) -> Vec<usize> {
    let m = next_prime(table_size.clamp(2, MAX_MAGLEV_TABLE_SIZE));
    let len = usize::try_from(m).unwrap_or(usize::MAX);
    // The permutation follows the address, not the list position: replicas agree.
    let mut order: Vec<usize> = (0..endpoints.len()).collect();
    order.sort_by_key(|&i| endpoints[i]);
    let perms: Vec<(u64, u64)> = order
        .iter()
        .map(|&i| {
            let offset = hash_parts(&endpoints[i], "#offset", 0) % m;
            let skip = hash_parts(&endpoints[i], "#skip", 0) % (m - 1) + 1;
            (offset, skip)
        })
        .collect();
    let mut next = vec![0u64; order.len()];
    let mut table = vec![usize::MAX; len];
    let mut filled = 0usize;
    'fill: loop {
        for (slot, &endpoint) in order.iter().enumerate() {
            let (offset, skip) = perms[slot];
            let mut c = (offset + skip * next[slot]) % m;
            while table[c as usize] != usize::MAX {
                next[slot] += 1;
                c = (offset + skip * next[slot]) % m;
            }
            table[c as usize] = endpoint;
            next[slot] += 1;
            filled += 1;
            if filled == len {
                break 'fill;
            }
        }
    }
    table
}

fn next_prime(mut n: u64) -> u64 {
    while !is_prime(n) {
        n += 1;
    }
    n
}

fn is_prime(n: u64) -> bool {
    if n < 2 {
        return false;
    }
    let mut d = 2;
    while d * d <= n {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 1;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoints(n: u8) -> Vec<SocketAddr> {
        (1..=n)
            .map(|i| SocketAddr::from(([10, 0, 0, i], 8080)))
            .collect()
    }

    fn balancers() -> [LoadBalancer; 2] {
        [
            LoadBalancer::RingHash {
                minimum_ring_size: DEFAULT_MINIMUM_RING_SIZE,
            },
            LoadBalancer::Maglev {
                table_size: DEFAULT_MAGLEV_TABLE_SIZE,
            },
        ]
    }

    fn owner(table: &HashTable, endpoints: &[SocketAddr], key: u64) -> SocketAddr {
        endpoints[table.candidates(key).next().expect("an owner")]
    }

    #[test]
    fn every_endpoint_owns_keys_and_a_key_keeps_its_owner() {
        let eps = endpoints(4);
        for balancer in balancers() {
            let table = HashTable::build(balancer, &eps).expect("a table");
            let owners: Vec<SocketAddr> = (0..400u32)
                .map(|k| owner(&table, &eps, hash_key(&k.to_le_bytes())))
                .collect();
            for ep in &eps {
                assert!(owners.contains(ep), "{balancer:?}: {ep} owns nothing");
            }
            let again = HashTable::build(balancer, &eps).expect("a table");
            for k in 0..400u32 {
                let key = hash_key(&k.to_le_bytes());
                assert_eq!(owner(&table, &eps, key), owner(&again, &eps, key));
            }
        }
    }

    /// Keys of the endpoints that stay and that moved anyway, out of 1000.
    fn moved_when_one_leaves(balancer: LoadBalancer) -> usize {
        let before = endpoints(5);
        let after: Vec<SocketAddr> = before.iter().copied().filter(|e| *e != before[2]).collect();
        let old = HashTable::build(balancer, &before).expect("a table");
        let new = HashTable::build(balancer, &after).expect("a table");
        (0..1000u32)
            .map(|k| hash_key(&k.to_le_bytes()))
            .filter(|&key| {
                let was = owner(&old, &before, key);
                was != before[2] && owner(&new, &after, key) != was
            })
            .count()
    }

    #[test]
    fn an_endpoint_leaving_a_ring_moves_only_its_own_keys() {
        let ring = LoadBalancer::RingHash {
            minimum_ring_size: DEFAULT_MINIMUM_RING_SIZE,
        };
        assert_eq!(moved_when_one_leaves(ring), 0);
    }

    #[test]
    fn an_endpoint_leaving_maglev_moves_few_other_keys() {
        // Maglev's disruption is minimal, not zero: a few percent of the other keys.
        let maglev = LoadBalancer::Maglev {
            table_size: DEFAULT_MAGLEV_TABLE_SIZE,
        };
        assert!(moved_when_one_leaves(maglev) < 100);
    }

    #[test]
    fn list_order_does_not_change_the_owner() {
        let eps = endpoints(3);
        let reversed: Vec<SocketAddr> = eps.iter().rev().copied().collect();
        for balancer in balancers() {
            let a = HashTable::build(balancer, &eps).expect("a table");
            let b = HashTable::build(balancer, &reversed).expect("a table");
            for k in 0..200u32 {
                let key = hash_key(&k.to_le_bytes());
                assert_eq!(owner(&a, &eps, key), owner(&b, &reversed, key));
            }
        }
    }

    #[test]
    fn the_walk_from_a_key_visits_other_endpoints() {
        let eps = endpoints(3);
        for balancer in balancers() {
            let table = HashTable::build(balancer, &eps).expect("a table");
            let mut seen: Vec<usize> = table.candidates(hash_key(b"k")).collect();
            seen.sort_unstable();
            seen.dedup();
            assert_eq!(seen, [0, 1, 2], "{balancer:?}");
        }
    }

    #[test]
    fn maglev_tables_are_prime_sized() {
        assert_eq!(next_prime(65_536), 65_537);
        let Some(HashTable::Maglev(table)) =
            HashTable::build(LoadBalancer::Maglev { table_size: 100 }, &endpoints(2))
        else {
            panic!("a Maglev table");
        };
        assert_eq!(table.len(), 101);
    }
}

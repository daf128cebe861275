//! What the kernel programs and `gatewayd` share: the map layouts, the counter indices,
//! and the packet parser. Everything here is `no_std` and allocation-free, so the same
//! code runs under the verifier and in host unit tests, and the two sides cannot drift.
#![no_std]

pub mod client_hello;
pub mod maps;
pub mod packet;
pub mod sni;
#[cfg(any(test, feature = "test-frames"))]
pub mod sni_table;
#[cfg(any(test, feature = "test-frames"))]
pub mod test_frames;

pub use client_hello::{Sni, find_sni};
pub use maps::{
    AddrKey, GlobalCounter, IpRuleKey, MAX_PORTS, NodePortFlow, NodePortFlowState, PolicyKey,
    PortMode, PortPolicy, PortStats, SniKey,
};
pub use packet::{Bytes, HeaderError, Headers, IpVersion, parse_headers};
pub use sni::{NameHashes, host_hash, pattern_matches, sni_hashes};

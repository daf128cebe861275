//! What the kernel programs and `gatewayd` share: the map layouts, the counter indices,
//! and the packet parser. Everything here is `no_std` and allocation-free, so the same
//! code runs under the verifier and in host unit tests, and the two sides cannot drift.
#![no_std]

pub mod maps;
pub mod packet;
#[cfg(any(test, feature = "test-frames"))]
pub mod test_frames;

pub use maps::{GlobalCounter, MAX_PORTS, PortStats};
pub use packet::{Bytes, HeaderError, Headers, IpVersion, parse_headers};

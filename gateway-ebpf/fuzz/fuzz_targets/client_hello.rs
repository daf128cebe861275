//! The kernel's ClientHello walk and name hashing on arbitrary bytes: no panic, and
//! every name it reports lies inside the input and hashes without reading past it.
#![no_main]

use gateway_ebpf::{Sni, find_sni, sni_hashes};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first byte says where the hello starts (1..=8), as a payload offset inside a
    // frame would; the seeds are real ClientHellos behind a 0 byte.
    let start = data.first().map_or(0, |b| 1 + usize::from(*b % 8));
    match find_sni(data, start) {
        Sni::Found { offset, len } => {
            assert!(offset >= start && offset + len <= data.len(), "name outside the input");
            assert!((1..=255).contains(&len));
            if let Ok((exact, _)) = sni_hashes(data, offset, len) {
                // A name the hasher accepts is plain ASCII DNS characters.
                let name = &data[offset..offset + len];
                assert!(name.iter().all(|c| c.is_ascii_alphanumeric() || b"-_.".contains(c)));
                assert_eq!(exact, gateway_ebpf::host_hash(name));
            }
        }
        Sni::Absent | Sni::NotClientHello | Sni::Incomplete | Sni::Malformed => {}
    }
});

//! The gateway's kernel programs. Built for `bpfel-unknown-none` by aya-build (from
//! gateway-userspace/build.rs) and embedded in `gatewayd`; on the host this file is an
//! empty binary so that workspace-wide cargo commands still work.
#![cfg_attr(target_arch = "bpf", no_std, no_main)]

#[cfg(target_arch = "bpf")]
mod nodeport;
#[cfg(target_arch = "bpf")]
mod shared;
#[cfg(target_arch = "bpf")]
mod steer;
#[cfg(target_arch = "bpf")]
mod xdp;

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

/// GPL-compatible, so the programs may call GPL-only helpers.
#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

#[cfg(not(target_arch = "bpf"))]
fn main() {
    eprintln!("gateway-ebpf is a kernel object: gatewayd embeds it (built by aya-build)");
    std::process::exit(2);
}

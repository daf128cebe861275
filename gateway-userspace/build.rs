//! Builds the kernel programs (gateway-ebpf) for the BPF target and leaves the object in
//! OUT_DIR, where `ebpf.rs` embeds it, so one `cargo build` builds both halves.
//!
//! The eBPF build uses the same stable toolchain as everything else: `core` must be built
//! from rust-src for the BPF target (`-Z build-std`), which stable allows with
//! RUSTC_BOOTSTRAP=1. We set it here, for the nested cargo only, so users need no nightly.

use anyhow::Context as _;

fn main() -> anyhow::Result<()> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("gateway-userspace sits inside the workspace")?
        .join("gateway-ebpf");
    let root = root.to_str().context("workspace path is not UTF-8")?;
    // SAFETY: build scripts are single-threaded; this only affects the nested cargo.
    unsafe { std::env::set_var("RUSTC_BOOTSTRAP", "1") };
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "gateway-ebpf",
            root_dir: root,
            no_default_features: false,
            features: &[],
        }],
        aya_build::Toolchain::Custom("stable"),
    )
    .context("building the eBPF programs (needs bpf-linker and rust-src: run `cargo xtask setup`)")
}

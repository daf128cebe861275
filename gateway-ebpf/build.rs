//! Rebuild the eBPF object when bpf-linker changes: the linker is not a cargo
//! dependency, so cargo would not notice a new one otherwise.
fn main() {
    if let Some(path) = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("bpf-linker"))
            .find(|p| p.exists())
    }) {
        println!("cargo:rerun-if-changed={}", path.display());
    }
}

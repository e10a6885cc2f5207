//! Points `FT_EBPF_OBJECT` at the eBPF object that `cargo xtask build-ebpf`
//! writes (built by Debian's toolchain, so not by this build), and rebuilds
//! the crate when that object changes.

use std::path::PathBuf;

fn main() {
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let object = manifest.join("../target/bpf/ft-ebpf.o");
    println!("cargo:rerun-if-changed={}", object.display());
    if !object.exists() {
        panic!(
            "{} is missing: run `cargo xtask build-ebpf` first",
            object.display()
        );
    }
    println!("cargo:rustc-env=FT_EBPF_OBJECT={}", object.display());
}

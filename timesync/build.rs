//! Builds the kernel programs (crate `observer-ebpf`) with the nightly toolchain and bpf-linker,
//! so that this binary embeds them. See docs/build.md.
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let root_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../observer-ebpf");
    aya_build::build_ebpf(
        [Package {
            name: "observer-ebpf",
            root_dir,
            ..Default::default()
        }],
        Toolchain::Custom("nightly"),
    )
}

//! Builds the kernel programs (crate `observer-ebpf`) with the nightly toolchain and bpf-linker,
//! so that this binary embeds them. See docs/build.md.
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    // Read at run time, not with env!(): worktrees sharing one target dir share this compiled
    // build script (cargo hashes workspace members by relative path), and a compiled-in path
    // would build another worktree's eBPF sources.
    let manifest = std::env::var("CARGO_MANIFEST_DIR")?;
    let root_dir = &format!("{manifest}/../observer-ebpf");
    aya_build::build_ebpf(
        [Package {
            name: "observer-ebpf",
            root_dir,
            ..Default::default()
        }],
        Toolchain::Custom("nightly"),
    )
}

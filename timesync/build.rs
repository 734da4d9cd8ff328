//! Builds the kernel programs (crate `observer-ebpf`) so that this binary embeds them.
include!("../observer-ebpf/embed.rs");

fn main() -> anyhow::Result<()> {
    build_kernel_programs("timesync")
}

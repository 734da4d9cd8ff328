// Shared by observer/build.rs and timesync/build.rs (`include!`d there): builds the kernel
// programs of `observer-ebpf` with the nightly toolchain and bpf-linker into `OUT_DIR`, where the
// binaries embed them, then drops the DWARF of the object this binary embeds. See docs/build.md.
//
// The loader reads the objects' BTF (`.BTF`, `.BTF.ext`: types, and line info for verifier
// logs), never their DWARF; bpf-linker needs the debug info to make that BTF and leaves the
// DWARF in the object too, where it was three quarters of the bytes (observer object 832 KB),
// embedded in a binary that is pushed to every host.

use std::path::{Path, PathBuf};

use anyhow::Context;
use aya_build::{Package, Toolchain};

/// Builds the crate and strips `embedded`, the object this binary includes.
fn build_kernel_programs(embedded: &str) -> anyhow::Result<()> {
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
    )?;
    strip_dwarf(&PathBuf::from(std::env::var("OUT_DIR")?).join(embedded))
}

/// Removes the `.debug_*` sections and their relocation sections from an eBPF object, written
/// through a temporary file and a rename (the input may be a hard link to cargo's own output).
fn strip_dwarf(path: &Path) -> anyhow::Result<()> {
    let data = std::fs::read(path).with_context(|| format!("read {}", path.display()))?;
    let mut elf = object::build::elf::Builder::read(&*data)
        .with_context(|| format!("parse {} as ELF", path.display()))?;
    for section in elf.sections.iter_mut() {
        let name = section.name.as_slice();
        if name.starts_with(b".debug_") || name.starts_with(b".rel.debug_") {
            section.delete = true;
        }
    }
    // bpf-linker keeps the section names in the symbols' string table; the writer wants a
    // section-name table of its own.
    if !elf
        .sections
        .iter()
        .any(|s| matches!(s.data, object::build::elf::SectionData::SectionString))
    {
        let names = elf.sections.add();
        names.name = b".shstrtab"[..].into();
        names.sh_type = object::elf::SHT_STRTAB;
        names.sh_addralign = 1;
        names.data = object::build::elf::SectionData::SectionString;
    }
    let mut stripped = Vec::new();
    elf.write(&mut stripped)
        .with_context(|| format!("write {} without DWARF", path.display()))?;
    let tmp = path.with_extension("stripped");
    std::fs::write(&tmp, &stripped).with_context(|| format!("write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("rename {}", tmp.display()))?;
    Ok(())
}

//! Network namespace identities: the inode numbers the kernel programs compare against.
use anyhow::{Context, Result, bail};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

/// Inode of the observer's own network namespace.
pub fn own() -> Result<u32> {
    inode_of("/proc/self/ns/net".into())
}

/// Resolves a container spec: `NAME` (under /run/netns), an absolute path, `pid:N` or `inode:N`.
pub fn resolve(spec: &str) -> Result<u32> {
    if let Some(n) = spec.strip_prefix("inode:") {
        return n
            .parse()
            .with_context(|| format!("bad netns inode in {spec:?}"));
    }
    if let Some(pid) = spec.strip_prefix("pid:") {
        let pid: u32 = pid
            .parse()
            .with_context(|| format!("bad pid in {spec:?}"))?;
        return inode_of(format!("/proc/{pid}/ns/net").into());
    }
    if spec.is_empty() {
        bail!("empty network namespace name");
    }
    let path = if spec.starts_with('/') {
        PathBuf::from(spec)
    } else {
        PathBuf::from("/run/netns").join(spec)
    };
    inode_of(path)
}

fn inode_of(path: PathBuf) -> Result<u32> {
    let md = std::fs::metadata(&path)
        .with_context(|| format!("failed to stat network namespace {}", path.display()))?;
    Ok(md.ino() as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_resolve() {
        let me = own().unwrap();
        assert_eq!(resolve(&format!("pid:{}", std::process::id())).unwrap(), me);
        assert_eq!(resolve("inode:42").unwrap(), 42);
        assert!(
            resolve("no-such-netns-here")
                .unwrap_err()
                .to_string()
                .contains("/run/netns/no-such-netns-here")
        );
        assert!(resolve("pid:x").is_err());
    }
}

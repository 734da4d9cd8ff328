//! The binaries we push (static observer and timesync), found in one directory:
//! `--artifacts DIR`, else `$LATPLAN_ARTIFACTS`, else the directory of the running `latplan`.
use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::transport::shell::sha256_hex;

pub const ARTIFACTS_ENV: &str = "LATPLAN_ARTIFACTS";

/// Names of the binaries latplan knows how to push.
pub const OBSERVER: &str = "observer";
pub const TIMESYNC: &str = "timesync";

#[derive(Debug, Clone)]
pub struct Artifacts {
    pub dir: PathBuf,
}

/// One binary, read into memory with its hash (a few MB: cheaper than re-reading per host).
#[derive(Debug, Clone)]
pub struct Artifact {
    pub name: String,
    pub path: PathBuf,
    pub bytes: std::sync::Arc<Vec<u8>>,
    pub sha256: String,
}

impl Artifacts {
    pub fn locate(cli: Option<&Path>) -> Artifacts {
        let dir = cli
            .map(Path::to_path_buf)
            .or_else(|| std::env::var_os(ARTIFACTS_ENV).map(PathBuf::from))
            .or_else(|| {
                std::env::current_exe()
                    .ok()
                    .and_then(|p| p.parent().map(Path::to_path_buf))
            })
            .unwrap_or_else(|| PathBuf::from("."));
        Artifacts { dir }
    }

    pub fn load(&self, name: &str) -> anyhow::Result<Artifact> {
        let path = self.dir.join(name);
        let bytes = std::fs::read(&path).with_context(|| {
            format!(
                "failed to read the {name} binary at {} (build it with `cargo build --release --target \
                 x86_64-unknown-linux-musl -p {name}`, or point --artifacts / {ARTIFACTS_ENV} at its directory)",
                path.display()
            )
        })?;
        let sha256 = sha256_hex(&bytes);
        Ok(Artifact {
            name: name.to_string(),
            path,
            bytes: std::sync::Arc::new(bytes),
            sha256,
        })
    }
}

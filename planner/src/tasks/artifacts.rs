//! The binaries we push (static observer and timesync), found in one directory:
//! `--artifacts DIR`, else `$LATPLAN_ARTIFACTS`, else the directory of the running `latplan`.
use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::transport::shell::sha256_hex;

pub const ARTIFACTS_ENV: &str = "LATPLAN_ARTIFACTS";

/// Names of the binaries latplan knows how to push, as they are named on the hosts.
pub const OBSERVER: &str = "observer";
pub const TIMESYNC: &str = "timesync";
/// The observer built without its Redis sink (`-p observer --no-default-features`, copied under
/// this name by `ci/build-static`): what a session on the SSH bus pushes as `bin/observer`, 2.6 MB
/// against 4.8 MB (the Redis client, rustls, ring and the web PKI roots are the difference).
pub const OBSERVER_SSH: &str = "observer-ssh";

/// The artifact file pushed as `name` for a session on `bus` ("ssh" or a Redis URL).
pub fn file_for(name: &str, bus: &str) -> &'static str {
    match (name, bus) {
        (OBSERVER, "ssh") => OBSERVER_SSH,
        (OBSERVER, _) => OBSERVER,
        _ => TIMESYNC,
    }
}

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

    /// The binary pushed as `name` (observer, timesync) for a session on `bus`.
    pub fn load(&self, name: &str, bus: &str) -> anyhow::Result<Artifact> {
        let file = file_for(name, bus);
        let path = self.dir.join(file);
        let bytes = std::fs::read(&path).with_context(|| {
            format!(
                "failed to read the {file} binary at {} (build the static binaries with \
                 `ci/build-static`, or point --artifacts / {ARTIFACTS_ENV} at their directory)",
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

    /// Both binaries a session on `bus` pushes.
    pub fn for_session(&self, bus: &str) -> anyhow::Result<Vec<Artifact>> {
        Ok(vec![self.load(OBSERVER, bus)?, self.load(TIMESYNC, bus)?])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ssh_session_pushes_the_observer_without_the_redis_sink() {
        assert_eq!(file_for(OBSERVER, "ssh"), OBSERVER_SSH);
        assert_eq!(file_for(OBSERVER, "redis://10.0.0.1:6379"), OBSERVER);
        assert_eq!(file_for(OBSERVER, "rediss://bus:6380"), OBSERVER);
        assert_eq!(file_for(TIMESYNC, "ssh"), TIMESYNC);
        assert_eq!(file_for(TIMESYNC, "redis://10.0.0.1:6379"), TIMESYNC);
    }

    #[test]
    fn a_missing_binary_is_named_with_how_to_build_it() {
        let dir = tempfile::tempdir().unwrap();
        let arts = Artifacts {
            dir: dir.path().to_path_buf(),
        };
        let e = format!("{:#}", arts.load(OBSERVER, "ssh").unwrap_err());
        assert!(
            e.contains("observer-ssh") && e.contains("ci/build-static"),
            "{e}"
        );
        std::fs::write(dir.path().join(OBSERVER_SSH), b"lean").unwrap();
        let a = arts.load(OBSERVER, "ssh").unwrap();
        // Pushed under the host's name, read from the lean build's file.
        assert_eq!(a.name, OBSERVER);
        assert_eq!(a.path, dir.path().join(OBSERVER_SSH));
        assert_eq!(a.sha256, sha256_hex(b"lean"));
    }
}

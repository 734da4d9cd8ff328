//! Facts → diff → push: a host gets the observer and timesync binaries and the observer's
//! configuration only where its copy's SHA-256 differs (atomic rename into a private directory).
use std::path::PathBuf;

use crate::facts::{self, Facts};
use crate::inventory::{Host, Inventory};
use crate::session::{Layout, observer_config};
use crate::tasks::artifacts::Artifact;
use crate::transport::Transport;
use crate::transport::shell::sha256_hex;

/// One file a host should have.
#[derive(Debug, Clone)]
pub struct Wanted {
    pub dest: PathBuf,
    pub bytes: std::sync::Arc<Vec<u8>>,
    pub sha256: String,
    pub mode: u32,
}

/// What a host needs: the two binaries and the observer's configuration.
pub fn wanted(inv: &Inventory, host: &Host, artifacts: &[Artifact]) -> Vec<Wanted> {
    let layout = Layout::of(host);
    let mut v: Vec<Wanted> = artifacts
        .iter()
        .map(|a| Wanted {
            dest: layout.bin(&a.name),
            bytes: a.bytes.clone(),
            sha256: a.sha256.clone(),
            mode: 0o755,
        })
        .collect();
    let mut cfg = serde_json::to_vec_pretty(&observer_config(inv, host)).expect("JSON");
    cfg.push(b'\n');
    v.push(Wanted {
        dest: layout.observer_config(),
        sha256: sha256_hex(&cfg),
        bytes: std::sync::Arc::new(cfg),
        mode: 0o644,
    });
    v
}

/// The files whose copy on the host is missing or differs.
pub fn diff<'a>(facts: &Facts, wanted: &'a [Wanted]) -> Vec<&'a Wanted> {
    wanted
        .iter()
        .filter(|w| facts.files.get(&w.dest) != Some(&w.sha256))
        .collect()
}

/// Gathers facts and, unless `check_only`, pushes what differs. Returns the facts and the paths
/// that changed (or would change).
pub async fn converge(
    t: &dyn Transport,
    inv: &Inventory,
    host: &Host,
    artifacts: &[Artifact],
    check_only: bool,
) -> anyhow::Result<(Facts, Vec<PathBuf>)> {
    let containers: Vec<&Host> = inv.containers_of(&host.name).collect();
    let facts = facts::gather(t, host, &containers).await?;
    let wanted = wanted(inv, host, artifacts);
    let changes = diff(&facts, &wanted);
    if !check_only {
        // Each file on a channel of its own, all at once: their round trips overlap.
        let puts = changes
            .iter()
            .map(|w| t.put_checked(&w.bytes, &w.sha256, &w.dest, w.mode, host.become_root));
        for r in futures::future::join_all(puts).await {
            r?;
        }
    }
    Ok((facts, changes.into_iter().map(|w| w.dest.clone()).collect()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn only_missing_or_different_files_are_pushed() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../inventory/lab");
        let inv = crate::inventory::load(&dir).unwrap();
        let host = &inv.hosts["metal1"];
        let art = Artifact {
            name: "observer".into(),
            path: "/x/observer".into(),
            bytes: std::sync::Arc::new(b"binary".to_vec()),
            sha256: sha256_hex(b"binary"),
        };
        let w = wanted(&inv, host, std::slice::from_ref(&art));
        assert_eq!(w.len(), 2);
        let mut f = crate::facts::parse(
            "arch\tx86_64\nkernel\t6.18\nbtf\t1\nboot_id\tb\nuid\t0\nuser\troot\nsudo\troot\ninstall_dir\t0\n",
        )
        .expect("minimal facts parse");
        assert_eq!(diff(&f, &w).len(), 2);
        f.files.insert(w[0].dest.clone(), art.sha256.clone());
        f.files.insert(w[1].dest.clone(), "stale".into());
        let d = diff(&f, &w);
        assert_eq!(d.len(), 1);
        assert!(d[0].dest.ends_with("run/observer.json"));
        f.files.insert(w[1].dest.clone(), w[1].sha256.clone());
        assert!(diff(&f, &w).is_empty());
    }
}

//! `observer cleanup`: removes what a crashed or misused observer could leave behind.
//!
//! A running observer's attachments are all fd-owned links, so a dead observer leaves nothing —
//! unless something outlives the process: a pin in bpffs (`bpftool link pin`, a detached mode)
//! or a legacy netlink XDP attachment. Cleanup removes those when they are ours (name `lp_*`, or
//! under `/sys/fs/bpf/latplan`). It never touches links held open by a live process: those
//! belong to a running observer (or timesync) and go away when it stops. Idempotent.
use anyhow::{Context, Result};
use serde::Serialize;
use std::collections::HashSet;
use std::path::Path;
use std::process::Command;

#[derive(Debug, Serialize, Default)]
pub struct Report {
    /// Pinned bpffs paths removed.
    pub unpinned: Vec<String>,
    /// Interfaces whose netlink-attached `lp_*` XDP program was removed.
    pub xdp_detached: Vec<String>,
    pub errors: Vec<String>,
}

const BPFFS: &str = "/sys/fs/bpf";

pub fn cleanup() -> Report {
    let mut r = Report::default();
    if Path::new(BPFFS).is_dir() {
        walk(Path::new(BPFFS), 0, false, &mut r);
    }
    // After the unpinning above, an XDP program still behind a bpf link is held by a live
    // process (a running observer or reflector, perhaps another session's): not a leftover.
    let held: HashSet<u32> = aya::programs::loaded_links()
        .filter_map(Result::ok)
        .map(|l| l.program_id())
        .collect();
    match interfaces() {
        Ok(ifaces) => {
            for iface in ifaces {
                for (id, name) in xdp_programs(&iface) {
                    if name.starts_with("lp_") && !held.contains(&id) {
                        match detach_xdp(&iface) {
                            Ok(()) => r.xdp_detached.push(iface.clone()),
                            Err(e) => r.errors.push(format!("{iface}: {e:#}")),
                        }
                        break;
                    }
                }
            }
        }
        Err(e) => r.errors.push(format!("{e:#}")),
    }
    r
}

fn walk(dir: &Path, depth: u32, ours: bool, r: &mut Report) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let path = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        let is_ours = ours || name.starts_with("lp_") || name == "latplan";
        let is_dir = e.file_type().map(|t| t.is_dir()).unwrap_or(false);
        if is_dir && depth < 4 {
            walk(&path, depth + 1, is_ours, r);
            if is_ours && std::fs::remove_dir(&path).is_ok() {
                r.unpinned.push(path.display().to_string());
            }
        } else if is_ours && !is_dir {
            // Removing the last pin of a link with no fd holder detaches it.
            match std::fs::remove_file(&path) {
                Ok(()) => r.unpinned.push(path.display().to_string()),
                Err(e) => r
                    .errors
                    .push(format!("failed to unpin {}: {e}", path.display())),
            }
        }
    }
}

fn interfaces() -> Result<Vec<String>> {
    let mut v = Vec::new();
    for e in std::fs::read_dir("/sys/class/net").context("failed to list /sys/class/net")? {
        v.push(e?.file_name().to_string_lossy().into_owned());
    }
    Ok(v)
}

/// The XDP programs (id, name) attached to an interface, as iproute2 reports them.
pub fn xdp_programs(iface: &str) -> Vec<(u32, String)> {
    let Ok(out) = Command::new("ip")
        .args(["-j", "-d", "link", "show", "dev", iface])
        .output()
    else {
        return Vec::new();
    };
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(&out.stdout) else {
        return Vec::new();
    };
    let mut found = Vec::new();
    collect_progs(
        &v.pointer("/0/xdp").cloned().unwrap_or_default(),
        &mut found,
    );
    found
}

fn collect_progs(v: &serde_json::Value, out: &mut Vec<(u32, String)>) {
    match v {
        serde_json::Value::Object(m) => {
            if let (Some(id), Some(name)) = (
                m.get("id").and_then(|x| x.as_u64()),
                m.get("name").and_then(|x| x.as_str()),
            ) {
                out.push((id as u32, name.to_string()));
            }
            m.values().for_each(|x| collect_progs(x, out));
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| collect_progs(x, out)),
        _ => {}
    }
}

fn detach_xdp(iface: &str) -> Result<()> {
    let mut last = String::new();
    for mode in ["xdp", "xdpgeneric", "xdpdrv"] {
        let o = Command::new("ip")
            .args(["link", "set", "dev", iface, mode, "off"])
            .output()
            .context("failed to run ip")?;
        if o.status.success()
            && xdp_programs(iface)
                .iter()
                .all(|(_, n)| !n.starts_with("lp_"))
        {
            return Ok(());
        }
        last = String::from_utf8_lossy(&o.stderr).trim().to_string();
    }
    anyhow::bail!("could not remove XDP program: {last}")
}

pub fn print(r: &Report, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string(r)?);
        return Ok(());
    }
    if r.unpinned.is_empty() && r.xdp_detached.is_empty() {
        println!("nothing of ours found");
    }
    for p in &r.unpinned {
        println!("unpinned {p}");
    }
    for i in &r.xdp_detached {
        println!("detached XDP from {i}");
    }
    for e in &r.errors {
        eprintln!("error: {e}");
    }
    Ok(())
}

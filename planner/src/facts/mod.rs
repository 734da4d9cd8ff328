//! Facts about a host, gathered with one remote command (a small `sh` script) and parsed into a
//! typed struct: what `check` judges and what `plan` diffs against.
//!
//! The script prints one fact per line, `key<TAB>fields…`, so parsing needs no remote tools
//! beyond POSIX sh, coreutils and (optionally) iproute2/bpftool.
pub mod preflight;
pub mod probe;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::inventory::Host;
use crate::transport::shell::quote;
use crate::transport::{Cmd, Transport, TransportError, check};

/// Whether privileged steps can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Sudo {
    /// Logged in as root.
    Root,
    /// `sudo -n` works.
    Passwordless,
    /// Not root and `sudo -n` fails.
    No,
}

/// An eBPF program attached to an interface, as iproute2/bpftool report it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AttachedProg {
    pub id: u64,
    pub name: String,
    /// `xdp`, `xdpgeneric`, `xdpdrv`, `tcx_ingress`, `tc_egress`, …
    pub attach: String,
}

impl AttachedProg {
    /// Ours start with `lp_` (team contract); anything else belongs to someone else.
    pub fn is_ours(&self) -> bool {
        self.name.starts_with("lp_")
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Interface {
    pub exists: bool,
    pub ifindex: Option<u32>,
    pub operstate: Option<String>,
    pub programs: Vec<AttachedProg>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Facts {
    pub arch: String,
    pub kernel: String,
    /// `/sys/kernel/btf/vmlinux` is readable (needed to resolve struct offsets at load time).
    pub btf: bool,
    /// The kernel's boot id: hosts with the same one share a clock.
    pub boot_id: String,
    pub uid: u32,
    pub user: String,
    pub sudo: Sudo,
    /// `/sys/kernel/security/lockdown`, e.g. `none [integrity] confidentiality`.
    pub lockdown: Option<String>,
    pub install_dir_exists: bool,
    /// Free bytes on the filesystem that holds (or will hold) install_dir.
    pub disk_free_bytes: Option<u64>,
    /// SHA-256 of every regular file under install_dir.
    pub files: BTreeMap<PathBuf, String>,
    pub interfaces: BTreeMap<String, Interface>,
    /// Our processes found through their pid files under install_dir/run (name → pid), alive only.
    pub running: BTreeMap<String, u32>,
    /// Whether `ip` and `bpftool` exist (the latter makes foreign TC programs visible).
    pub has_ip: bool,
    pub has_bpftool: bool,
}

impl Facts {
    pub fn can_become_root(&self) -> bool {
        self.sudo != Sudo::No
    }
}

/// Interfaces facts look at: the host's own plus its containers' host-side ends.
pub fn interfaces_for(host: &Host, containers: &[&Host]) -> Vec<String> {
    let mut v = host.interfaces.clone();
    for c in containers {
        if let Some(i) = &c.host_interface
            && !v.contains(i)
        {
            v.push(i.clone());
        }
    }
    v
}

/// The script that prints the facts. `install_dir` and interface names are quoted; nothing from
/// the inventory reaches the shell unquoted.
pub fn script(install_dir: &Path, interfaces: &[String]) -> String {
    let dir = quote(&install_dir.to_string_lossy());
    let ifaces = interfaces
        .iter()
        .map(|i| quote(i))
        .collect::<Vec<_>>()
        .join(" ");
    format!(
        r#"export LC_ALL=C
{running}t="$(printf '\t')"
echo "arch${{t}}$(uname -m)"
echo "kernel${{t}}$(uname -r)"
if [ -r /sys/kernel/btf/vmlinux ]; then echo "btf${{t}}1"; else echo "btf${{t}}0"; fi
echo "boot_id${{t}}$(cat /proc/sys/kernel/random/boot_id)"
echo "uid${{t}}$(id -u)"
echo "user${{t}}$(id -un)"
if [ "$(id -u)" = 0 ]; then echo "sudo${{t}}root"; elif sudo -n true >/dev/null 2>&1; then echo "sudo${{t}}ok"; else echo "sudo${{t}}no"; fi
[ -r /sys/kernel/security/lockdown ] && echo "lockdown${{t}}$(cat /sys/kernel/security/lockdown)"
D={dir}
if [ -d "$D" ]; then echo "install_dir${{t}}1"; else echo "install_dir${{t}}0"; fi
P="$D"; while [ ! -d "$P" ]; do P=$(dirname -- "$P"); done
echo "disk_free_kb${{t}}$(df -Pk -- "$P" | awk 'NR==2 {{print $4}}')"
if [ -d "$D" ]; then find "$D" -xdev -type f -size -64M 2>/dev/null | while IFS= read -r f; do
  echo "file${{t}}$(sha256sum < "$f" | cut -d' ' -f1)${{t}}$f"; done; fi
if [ -d "$D/run" ]; then for p in "$D"/run/*.pid; do [ -f "$p" ] || continue
  n=$(basename "$p" .pid); pid=$(cat "$p"); if running "$pid"; then echo "pid${{t}}$n${{t}}$pid"; fi; done; fi
command -v ip >/dev/null 2>&1 && echo "tool${{t}}ip" 
command -v bpftool >/dev/null 2>&1 && echo "tool${{t}}bpftool"
for i in {ifaces}; do
  if [ -e "/sys/class/net/$i" ]; then
    echo "iface${{t}}$i${{t}}1${{t}}$(cat /sys/class/net/$i/ifindex)${{t}}$(cat /sys/class/net/$i/operstate)"
    command -v ip >/dev/null 2>&1 && echo "ipjson${{t}}$i${{t}}$(ip -j -d link show dev "$i" 2>/dev/null | tr -d '\n')"
    command -v bpftool >/dev/null 2>&1 && echo "bpfnet${{t}}$i${{t}}$(bpftool -j net show dev "$i" 2>/dev/null | tr -d '\n')"
  else
    echo "iface${{t}}$i${{t}}0"
  fi
done
exit 0
"#,
        running = crate::transport::shell::RUNNING_FN,
    )
}

#[derive(Debug, thiserror::Error)]
pub enum FactsError {
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error("{host}: unexpected facts output: {reason}")]
    Parse { host: String, reason: String },
}

/// Runs the script on a host and parses it. Runs privileged (when `become`) so bpftool sees all.
pub async fn gather(
    t: &dyn Transport,
    host: &Host,
    containers: &[&Host],
) -> Result<Facts, FactsError> {
    let dir = host
        .install_dir
        .clone()
        .unwrap_or_else(|| crate::inventory::DEFAULT_INSTALL_DIR.into());
    let cmd =
        Cmd::new(script(&dir, &interfaces_for(host, containers))).become_root(host.become_root);
    let out = check(t.host(), "gather facts", t.exec(cmd).await?)?;
    parse(&out.stdout_str()).map_err(|reason| FactsError::Parse {
        host: host.name.clone(),
        reason,
    })
}

/// Parses the script's output.
pub fn parse(text: &str) -> Result<Facts, String> {
    let mut kv: BTreeMap<&str, &str> = BTreeMap::new();
    let mut files = BTreeMap::new();
    let mut interfaces: BTreeMap<String, Interface> = BTreeMap::new();
    let mut running = BTreeMap::new();
    let (mut has_ip, mut has_bpftool) = (false, false);
    for line in text.lines() {
        let f: Vec<&str> = line.split('\t').collect();
        match f.as_slice() {
            ["file", sha, path] => {
                files.insert(PathBuf::from(path), sha.to_string());
            }
            ["pid", name, pid] => {
                if let Ok(p) = pid.parse() {
                    running.insert(name.to_string(), p);
                }
            }
            ["tool", "ip"] => has_ip = true,
            ["tool", "bpftool"] => has_bpftool = true,
            ["iface", name, "0"] => {
                interfaces.insert(
                    name.to_string(),
                    Interface {
                        exists: false,
                        ifindex: None,
                        operstate: None,
                        programs: vec![],
                    },
                );
            }
            ["iface", name, "1", idx, state] => {
                let i = Interface {
                    exists: true,
                    ifindex: idx.parse().ok(),
                    operstate: Some(state.to_string()),
                    programs: vec![],
                };
                interfaces.insert(name.to_string(), i);
            }
            ["ipjson", name, json] => {
                let progs = xdp_from_ip_json(json);
                add_progs(&mut interfaces, name, progs);
            }
            ["bpfnet", name, json] => {
                let progs = progs_from_bpftool_json(json);
                add_progs(&mut interfaces, name, progs);
            }
            [k, v] => {
                kv.insert(k, v);
            }
            [""] => {}
            _ => return Err(format!("cannot read line {line:?}")),
        }
    }
    let get = |k: &str| {
        kv.get(k)
            .map(|s| s.to_string())
            .ok_or_else(|| format!("missing `{k}`"))
    };
    Ok(Facts {
        arch: get("arch")?,
        kernel: get("kernel")?,
        btf: get("btf")? == "1",
        boot_id: get("boot_id")?,
        uid: get("uid")?.parse().map_err(|_| "bad uid".to_string())?,
        user: get("user")?,
        sudo: match get("sudo")?.as_str() {
            "root" => Sudo::Root,
            "ok" => Sudo::Passwordless,
            _ => Sudo::No,
        },
        lockdown: kv.get("lockdown").map(|s| s.to_string()),
        install_dir_exists: get("install_dir")? == "1",
        disk_free_bytes: kv
            .get("disk_free_kb")
            .and_then(|s| s.parse::<u64>().ok())
            .map(|kb| kb * 1024),
        files,
        interfaces,
        running,
        has_ip,
        has_bpftool,
    })
}

fn add_progs(interfaces: &mut BTreeMap<String, Interface>, name: &str, progs: Vec<AttachedProg>) {
    if let Some(i) = interfaces.get_mut(name) {
        for p in progs {
            // iproute2 and bpftool both report XDP: keep one entry per program id.
            if !i.programs.iter().any(|q| q.id == p.id) {
                i.programs.push(p);
            }
        }
    }
}

/// `ip -j -d link show dev X`: `[{"xdp": {"mode": N, "prog": {"id": …, "name": …}}}]`, or
/// `"attached": [...]` with several programs.
fn xdp_from_ip_json(json: &str) -> Vec<AttachedProg> {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(json) else {
        return vec![];
    };
    let mut out = vec![];
    for link in v.as_array().into_iter().flatten() {
        let Some(xdp) = link.get("xdp") else { continue };
        let mode = match xdp.get("mode").and_then(|m| m.as_u64()) {
            Some(1) => "xdpdrv",
            Some(2) => "xdpgeneric",
            Some(3) => "xdpoffload",
            _ => "xdp",
        };
        let mut progs: Vec<&serde_json::Value> = xdp.get("prog").into_iter().collect();
        for a in xdp
            .get("attached")
            .and_then(|a| a.as_array())
            .into_iter()
            .flatten()
        {
            progs.push(a.get("prog").unwrap_or(a));
        }
        for p in progs {
            if let Some(id) = p.get("id").and_then(|i| i.as_u64()) {
                let name = p
                    .get("name")
                    .and_then(|n| n.as_str())
                    .unwrap_or("")
                    .to_string();
                out.push(AttachedProg {
                    id,
                    name,
                    attach: mode.to_string(),
                });
            }
        }
    }
    out
}

/// `bpftool -j net show dev X`: `[{"xdp": [...], "tc": [...], "flow_dissector": [...], …}]`.
fn progs_from_bpftool_json(json: &str) -> Vec<AttachedProg> {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(json) else {
        return vec![];
    };
    let mut out = vec![];
    for section in v.as_array().into_iter().flatten() {
        let Some(obj) = section.as_object() else {
            continue;
        };
        for (kind, entries) in obj {
            for e in entries.as_array().into_iter().flatten() {
                // xdp/tc entries carry `id`, tcx entries `prog_id`.
                let Some(id) = e
                    .get("id")
                    .or_else(|| e.get("prog_id"))
                    .and_then(|i| i.as_u64())
                else {
                    continue;
                };
                let name = e
                    .get("name")
                    .or_else(|| e.get("prog_name"))
                    .and_then(|n| n.as_str())
                    .unwrap_or("")
                    .to_string();
                let attach = match (
                    kind.as_str(),
                    e.get("mode").and_then(|m| m.as_str()),
                    e.get("kind").and_then(|k| k.as_str()),
                ) {
                    ("xdp", Some(m), _) => format!("xdp{m}"),
                    (k, _, Some(sub)) => format!("{k}_{sub}"),
                    (k, _, _) => k.to_string(),
                };
                out.push(AttachedProg { id, name, attach });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests;

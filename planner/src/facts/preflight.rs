//! Judging facts and probe reports: the rows of `latplan check`. Pure functions over evidence
//! gathered elsewhere, so every verdict, reason and fix is unit-tested without hosts.
use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use super::probe::ProbeReport;
use super::{Facts, Sudo};
use crate::inventory::{Host, Kind, Sampling};
use latplan_common::layer::Layer;

/// The checks, in table order.
pub const CHECKS: &[&str] = &[
    "reachable",
    "arch",
    "kernel",
    "btf",
    "sudo",
    "disk",
    "clock",
    "interfaces",
    "foreign",
    "bpf",
    "xdp",
    "tc",
    "hooks",
];

/// Observer + timesync + config, with room to spare.
pub const MIN_FREE_BYTES: u64 = 64 << 20;
/// BPF ring buffer (5.8); older kernels cannot run the observer.
pub const MIN_KERNEL: (u32, u32) = (5, 8);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Pass,
    Fail,
    /// Does not apply to this host (e.g. SSH checks for a container), or could not be tried
    /// because an earlier check failed.
    Skip,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verdict {
    pub status: Status,
    /// Short value for the table (`x86_64`, `native`, `1.2 GiB`).
    pub detail: String,
    pub reason: Option<String>,
    pub fix: Option<String>,
}

impl Verdict {
    pub fn pass(detail: impl Into<String>) -> Self {
        Verdict {
            status: Status::Pass,
            detail: detail.into(),
            reason: None,
            fix: None,
        }
    }

    pub fn fail(
        detail: impl Into<String>,
        reason: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        Verdict {
            status: Status::Fail,
            detail: detail.into(),
            reason: Some(reason.into()),
            fix: Some(fix.into()),
        }
    }

    pub fn skip(detail: impl Into<String>) -> Self {
        Verdict {
            status: Status::Skip,
            detail: detail.into(),
            reason: None,
            fix: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HostReport {
    pub name: String,
    pub kind: Kind,
    pub ok: bool,
    pub checks: BTreeMap<String, Verdict>,
}

/// What was learned about one kernel host.
#[derive(Debug, Clone, Default)]
pub struct Evidence {
    /// `Err(reason)` when the host could not be reached.
    pub reach: Option<Result<(), String>>,
    pub facts: Option<Result<Facts, String>>,
    /// `None`: not tried (an earlier step failed).
    pub probe: Option<Result<ProbeReport, String>>,
}

/// What was learned about a container (beyond its parent's evidence).
#[derive(Debug, Clone, Default)]
pub struct ContainerEvidence {
    /// Its own interfaces as seen inside its namespace: name → exists. `Err` if entering failed.
    pub interfaces: Option<Result<BTreeMap<String, bool>, String>>,
}

fn parse_kernel(release: &str) -> Option<(u32, u32)> {
    let mut it = release
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty());
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

fn human_bytes(b: u64) -> String {
    if b >= 1 << 30 {
        format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64)
    } else {
        format!("{} MiB", b >> 20)
    }
}

/// Judges a metal or vm. `interfaces` = its own plus its containers' host-side ends; `sampling`
/// says which layers the session records, and only their hooks are judged.
pub fn judge_kernel_host(
    host: &Host,
    interfaces: &[String],
    sampling: &Sampling,
    ev: &Evidence,
) -> HostReport {
    let mut c: BTreeMap<String, Verdict> = BTreeMap::new();
    let mut put = |k: &str, v: Verdict| {
        c.insert(k.to_string(), v);
    };
    let target = host
        .ssh
        .as_ref()
        .and_then(|s| s.config_alias.clone())
        .or_else(|| host.address.clone())
        .unwrap_or_else(|| "localhost".into());
    match &ev.reach {
        Some(Ok(())) => put("reachable", Verdict::pass(target.clone())),
        Some(Err(reason)) => {
            let fix = reach_fix(host, &target, reason);
            put(
                "reachable",
                Verdict::fail(target.clone(), reason.clone(), fix),
            );
        }
        None => put("reachable", Verdict::skip("")),
    }
    let facts = match &ev.facts {
        Some(Ok(f)) => Some(f),
        Some(Err(reason)) => {
            put(
                "arch",
                Verdict::fail(
                    "?",
                    format!("facts could not be gathered: {reason}"),
                    "run `sh -c true` over ssh by hand and fix what it reports (sh, coreutils and /proc must be present)",
                ),
            );
            None
        }
        None => None,
    };
    if let Some(f) = facts {
        put(
            "arch",
            if f.arch == "x86_64" {
                Verdict::pass(&f.arch)
            } else {
                Verdict::fail(
                    &f.arch,
                    format!("the observer is built for x86_64, this host is {}", f.arch),
                    format!(
                        "build the observer and timesync for {}-unknown-linux-musl and pass --artifacts",
                        f.arch
                    ),
                )
            },
        );
        put(
            "kernel",
            match parse_kernel(&f.kernel) {
                Some(v) if v >= MIN_KERNEL => Verdict::pass(&f.kernel),
                _ => Verdict::fail(
                    &f.kernel,
                    format!(
                        "kernel {} is older than {}.{} (no BPF ring buffer)",
                        f.kernel, MIN_KERNEL.0, MIN_KERNEL.1
                    ),
                    "upgrade the kernel, or leave this host out of the inventory",
                ),
            },
        );
        put(
            "btf",
            if f.btf {
                Verdict::pass("vmlinux")
            } else {
                Verdict::fail(
                    "missing",
                    "/sys/kernel/btf/vmlinux is missing: struct offsets cannot be resolved at load time",
                    "use a kernel built with CONFIG_DEBUG_INFO_BTF=y (most distribution kernels are)",
                )
            },
        );
        put(
            "sudo",
            match (f.sudo, host.become_root) {
                (Sudo::Root, _) => Verdict::pass("root"),
                (Sudo::Passwordless, true) => Verdict::pass(format!("{} via sudo -n", f.user)),
                (Sudo::Passwordless, false) => Verdict::fail(
                    &f.user,
                    format!("logged in as {} (not root) and `become` is off", f.user),
                    format!(
                        "set `become: true` for {} in the inventory, or log in as root",
                        host.name
                    ),
                ),
                (Sudo::No, _) => Verdict::fail(
                    &f.user,
                    format!("{} is not root and `sudo -n` asks for a password", f.user),
                    format!(
                        "allow passwordless sudo for {} (a sudoers line with NOPASSWD), or log in as root",
                        f.user
                    ),
                ),
            },
        );
        let dir = host
            .install_dir
            .as_ref()
            .map(|d| d.display().to_string())
            .unwrap_or_default();
        put(
            "disk",
            match f.disk_free_bytes {
                Some(b) if b >= MIN_FREE_BYTES => Verdict::pass(human_bytes(b)),
                Some(b) => Verdict::fail(
                    human_bytes(b),
                    format!("only {} free where {dir} lives", human_bytes(b)),
                    format!(
                        "free at least {} there, or set install_dir to a roomier filesystem",
                        human_bytes(MIN_FREE_BYTES)
                    ),
                ),
                None => Verdict::fail(
                    "?",
                    format!("free space at {dir} could not be read"),
                    "check that `df -Pk` works on the host",
                ),
            },
        );
        put(
            "clock",
            Verdict::pass(format!(
                "{} ({})",
                host.clock_domain,
                &f.boot_id[..f.boot_id.len().min(8)]
            )),
        );
        let missing: Vec<&String> = interfaces
            .iter()
            .filter(|i| !f.interfaces.get(*i).is_some_and(|x| x.exists))
            .collect();
        put(
            "interfaces",
            if missing.is_empty() {
                Verdict::pass(interfaces.len().to_string())
            } else {
                let names = missing
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ");
                Verdict::fail(
                    format!("{names} missing"),
                    format!("no interface named {names} on {}", host.name),
                    format!(
                        "create it, or fix or remove it in `interfaces:` of {} (see `ip -br link` on the host)",
                        host.name
                    ),
                )
            },
        );
    }
    judge_probe(host, interfaces, sampling, facts, ev, &mut c);
    finish(host, c)
}

fn reach_fix(host: &Host, target: &str, reason: &str) -> String {
    let user = host
        .ssh
        .as_ref()
        .and_then(|s| s.user.clone())
        .map(|u| format!("{u}@"))
        .unwrap_or_default();
    if reason.contains("Host key verification failed") || reason.contains("host key") {
        format!(
            "verify the host key and add it to known_hosts (ssh-keyscan {target}), or pass --accept-new-host-keys once for hosts never seen before"
        )
    } else if reason.contains("Permission denied") {
        format!(
            "install your public key on the host (ssh-copy-id {user}{target}) or load the right key in ssh-agent / set ssh.identity_file"
        )
    } else {
        format!(
            "check that sshd runs on {target} and the network path is open: `ssh {user}{target} true`"
        )
    }
}

fn judge_probe(
    host: &Host,
    interfaces: &[String],
    sampling: &Sampling,
    facts: Option<&Facts>,
    ev: &Evidence,
    c: &mut BTreeMap<String, Verdict>,
) {
    // Foreign programs: what facts saw, plus what the probe saw (TCX is only visible to it or bpftool).
    let mut foreign: BTreeSet<(String, String, String, u64)> = BTreeSet::new();
    if let Some(f) = facts {
        for i in interfaces {
            for p in f
                .interfaces
                .get(i)
                .map(|x| x.programs.as_slice())
                .unwrap_or_default()
            {
                if !p.is_ours() {
                    foreign.insert((i.clone(), p.attach.clone(), p.name.clone(), p.id));
                }
            }
        }
    }
    if let Some(Ok(p)) = &ev.probe {
        for (i, ip) in &p.interfaces {
            for fp in &ip.foreign {
                if !fp.name.starts_with("lp_") && !foreign.iter().any(|x| x.3 == fp.prog_id) {
                    let attach = fp.hook.replace(' ', "_");
                    foreign.insert((i.clone(), attach, fp.name.clone(), fp.prog_id));
                }
            }
        }
    }
    // Someone else's XDP program stands in the way only of dev_recv, and only where dev_recv
    // cannot attach beside it: the observer's `auto` mode moves to TC ingress when XDP is taken
    // (an observer too old to say so is taken to need XDP).
    let records_recv = sampling.records(Layer::DevRecv.name());
    let recv_attaches = |iface: &str| {
        matches!(&ev.probe, Some(Ok(p)) if p.interfaces.get(iface)
            .and_then(|i| i.dev_recv.as_ref())
            .is_some_and(|c| c.ok))
    };
    let xdp_foreign: Vec<_> = foreign
        .iter()
        .filter(|f| records_recv && f.1.starts_with("xdp") && !recv_attaches(&f.0))
        .collect();
    if facts.is_some() || matches!(ev.probe, Some(Ok(_))) {
        c.insert(
            "foreign".into(),
            if xdp_foreign.is_empty() {
                let n = foreign.len();
                Verdict::pass(if n == 0 { "none".to_string() } else { format!("{n} (coexisting)") })
            } else {
                let list = xdp_foreign.iter().map(|(i, a, n, id)| format!("{i}: {a} program `{n}` (id {id})")).collect::<Vec<_>>().join("; ");
                let first = xdp_foreign[0];
                Verdict::fail(
                    xdp_foreign.iter().map(|f| f.0.as_str()).collect::<Vec<_>>().join(","),
                    format!("someone else's XDP program is attached: {list}; latplan never replaces or detaches programs it did not load"),
                    format!("detach it if it is not needed (`ip link set dev {} {} off`), remove {} from `interfaces:` of {}, or leave dev_recv out of `sampling.layers`", first.0, if first.1 == "xdpdrv" { "xdpdrv" } else { first.1.as_str() }, first.0, host.name),
                )
            },
        );
    }
    let probe = match &ev.probe {
        None => return,
        Some(Err(reason)) => {
            let v = Verdict::fail(
                "?",
                format!("observer probe failed: {reason}"),
                "see the reason; `observer probe --interfaces …` can be run by hand in install_dir/bin",
            );
            for k in ["bpf", "xdp", "tc", "hooks"] {
                c.insert(k.into(), v.clone());
            }
            return;
        }
        Some(Ok(p)) => p,
    };
    // bpf() works when anything at all loaded; otherwise the first error says why.
    let all_checks = || {
        probe.layers.values().chain(
            probe
                .interfaces
                .values()
                .flat_map(|i| [&i.xdp_native, &i.xdp_generic, &i.tc_egress]),
        )
    };
    let loaded = all_checks().any(|c| c.ok);
    c.insert(
        "bpf".into(),
        if let Some(e) = &probe.btf_error {
            Verdict::fail("no offsets", format!("kernel struct offsets could not be resolved from BTF: {e}"), "use a kernel with complete BTF (CONFIG_DEBUG_INFO_BTF=y)")
        } else if loaded {
            Verdict::pass("ok")
        } else {
            let e = all_checks().find_map(|c| c.error.clone()).unwrap_or_else(|| "nothing loaded".into());
            Verdict::fail("refused", format!("no eBPF program could be loaded: {e}"), "run as root (or with CAP_BPF+CAP_NET_ADMIN+CAP_PERFMON); check kernel.unprivileged_bpf_disabled and the lockdown/LSM policy")
        },
    );
    let mut xdp_modes = Vec::new();
    let mut xdp_bad = Vec::new();
    let mut tc_bad = Vec::new();
    for i in interfaces {
        // A missing interface fails `interfaces`; failing xdp and tc for it too would only repeat that.
        if facts.is_some_and(|f| !f.interfaces.get(i).is_some_and(|x| x.exists)) {
            continue;
        }
        match probe.interfaces.get(i) {
            Some(ip) if ip.exists => {
                // The observer's own answer when it gives one, else the first XDP mode that works.
                let mode = match &ip.dev_recv {
                    Some(r) if r.ok => Some(r.hook.trim_start_matches("xdp-")),
                    Some(_) => None,
                    None if ip.xdp_native.ok => Some("native"),
                    None if ip.xdp_generic.ok => Some("generic"),
                    None => None,
                };
                if let Some(m) = mode {
                    xdp_modes.push(m);
                } else if let Some(f) = xdp_foreign.iter().find(|f| f.0 == *i) {
                    xdp_bad.push(format!(
                        "{i}: held by someone else's program `{}` (see `foreign`)",
                        f.2
                    ));
                } else {
                    let e = ip
                        .dev_recv
                        .as_ref()
                        .and_then(|r| r.error.clone())
                        .or_else(|| ip.xdp_generic.error.clone())
                        .or_else(|| ip.xdp_native.error.clone());
                    xdp_bad.push(format!(
                        "{i}: {}",
                        e.unwrap_or_else(|| "no XDP mode attaches".into())
                    ));
                }
                if !ip.tc_egress.ok {
                    tc_bad.push(format!(
                        "{i}: {}",
                        ip.tc_egress
                            .error
                            .clone()
                            .unwrap_or_else(|| "TC egress attach failed".into())
                    ));
                }
            }
            _ => {
                xdp_bad.push(format!("{i}: not found by the observer"));
                tc_bad.push(format!("{i}: not found by the observer"));
            }
        }
    }
    c.insert(
        "xdp".into(),
        if !records_recv {
            not_recorded(Layer::DevRecv)
        } else if xdp_bad.is_empty() {
            Verdict::pass(mode_summary(&xdp_modes))
        } else {
            Verdict::fail(
                format!("{} failed", xdp_bad.len()),
                format!("dev_recv cannot attach: {}", xdp_bad.join("; ")),
                "free the interface (another XDP program?) or remove it from `interfaces:`",
            )
        },
    );
    c.insert(
        "tc".into(),
        if !sampling.records(Layer::DevSend.name()) {
            not_recorded(Layer::DevSend)
        } else if tc_bad.is_empty() {
            Verdict::pass("egress")
        } else {
            Verdict::fail(
                format!("{} failed", tc_bad.len()),
                format!("TC cannot attach: {}", tc_bad.join("; ")),
                "kernels before 6.6 need the clsact qdisc (CONFIG_NET_CLS_ACT); see the reason",
            )
        },
    );
    let wanted: Vec<_> = probe
        .layers
        .iter()
        .filter(|(l, _)| sampling.records(l))
        .collect();
    let bad: Vec<String> = wanted
        .iter()
        .filter(|(_, h)| !h.ok)
        .map(|(l, h)| format!("{l} ({}): {}", h.hook, h.error.clone().unwrap_or_default()))
        .collect();
    let ok = wanted.iter().filter(|(_, h)| h.ok).count();
    c.insert(
        "hooks".into(),
        if probe.layers.is_empty() {
            Verdict::fail("none", "the observer reported no layer hooks", "update the observer binary (`observer probe` must list its layers)")
        } else if wanted.is_empty() {
            Verdict::skip("unused")
        } else if bad.is_empty() {
            Verdict::pass(format!("{ok}/{}", wanted.len()))
        } else {
            Verdict::fail(format!("{ok}/{}", wanted.len()), format!("layers without a working hook: {}", bad.join("; ")), "those layers will be missing from the report; a kernel with BTF and these tracepoints provides them, or leave them out of `sampling.layers`")
        },
    );
}

/// The dev_recv modes of a host's interfaces in a few words: `native` when all are, else each
/// mode with its count (`native 1, tc 3`), in the order first seen.
fn mode_summary(modes: &[&str]) -> String {
    let mut counts: Vec<(&str, usize)> = Vec::new();
    for m in modes {
        match counts.iter_mut().find(|(k, _)| k == m) {
            Some((_, n)) => *n += 1,
            None => counts.push((m, 1)),
        }
    }
    match counts.as_slice() {
        [] => "no interfaces".to_string(),
        [(m, _)] => m.to_string(),
        _ => counts
            .iter()
            .map(|(m, n)| format!("{m} {n}"))
            .collect::<Vec<_>>()
            .join(", "),
    }
}

/// A check of a hook the session's `sampling.layers` leaves out: nothing will attach there.
fn not_recorded(layer: Layer) -> Verdict {
    Verdict {
        reason: Some(format!(
            "`sampling.layers` leaves out {}, the layer that attaches here",
            layer.name()
        )),
        ..Verdict::skip("unused")
    }
}

/// A container: reached through its parent, shares its kernel; judged on what identifies it.
pub fn judge_container(
    host: &Host,
    parent: &HostReport,
    parent_facts: Option<&Facts>,
    ev: &ContainerEvidence,
) -> HostReport {
    let mut c = BTreeMap::new();
    let parent_name = host.parent.clone().unwrap_or_default();
    let parent_ok = parent
        .checks
        .get("reachable")
        .is_some_and(|v| v.status == Status::Pass);
    c.insert(
        "reachable".to_string(),
        if parent_ok {
            Verdict::pass(format!("via {parent_name}"))
        } else {
            Verdict::fail(
                format!("via {parent_name}"),
                format!("its parent {parent_name} is unreachable"),
                format!("fix {parent_name} first"),
            )
        },
    );
    if let Some(v) = parent.checks.get("clock") {
        c.insert(
            "clock".into(),
            if v.status == Status::Pass {
                Verdict::pass(format!("{} (parent)", host.clock_domain))
            } else {
                v.clone()
            },
        );
    }
    let mut missing = Vec::new();
    if let (Some(hi), Some(f)) = (&host.host_interface, parent_facts)
        && !f.interfaces.get(hi).is_some_and(|i| i.exists)
    {
        missing.push(format!("{hi} (on {parent_name})"));
    }
    match &ev.interfaces {
        Some(Ok(found)) => {
            for i in &host.interfaces {
                if !found.get(i).copied().unwrap_or(false) {
                    missing.push(format!(
                        "{i} (inside {})",
                        host.netns.clone().unwrap_or_default()
                    ));
                }
            }
        }
        Some(Err(reason)) => {
            c.insert(
                "interfaces".into(),
                Verdict::fail(
                    "?",
                    format!("could not look inside the container: {reason}"),
                    format!(
                        "check that netns {} exists on {parent_name} (`ip netns list`)",
                        host.netns.clone().unwrap_or_default()
                    ),
                ),
            );
        }
        None => {}
    }
    if !c.contains_key("interfaces") && parent_ok {
        c.insert(
            "interfaces".into(),
            if missing.is_empty() {
                Verdict::pass(
                    (host.interfaces.len() + usize::from(host.host_interface.is_some()))
                        .to_string(),
                )
            } else {
                let m = missing.join(", ");
                Verdict::fail(
                    format!("{m} missing"),
                    format!("interface {m} not found"),
                    format!(
                        "create it, or fix `interfaces:` / `host_interface:` of {}",
                        host.name
                    ),
                )
            },
        );
    }
    finish(host, c)
}

/// Hosts that claim one clock domain must run one kernel (same boot_id); fails the others.
pub fn judge_clock_domains(
    reports: &mut [HostReport],
    hosts: &BTreeMap<String, Host>,
    boot_ids: &BTreeMap<String, String>,
) {
    let mut by_domain: BTreeMap<&str, BTreeMap<&str, Vec<&str>>> = BTreeMap::new();
    for (name, boot) in boot_ids {
        let d = hosts[name].clock_domain.as_str();
        by_domain
            .entry(d)
            .or_default()
            .entry(boot.as_str())
            .or_default()
            .push(name.as_str());
    }
    for r in reports.iter_mut() {
        let h = &hosts[&r.name];
        if h.kind == Kind::Container {
            continue;
        }
        let Some(kernels) = by_domain.get(h.clock_domain.as_str()) else {
            continue;
        };
        if kernels.len() > 1 {
            let groups = kernels
                .values()
                .map(|v| v.join("+"))
                .collect::<Vec<_>>()
                .join(" vs ");
            r.checks.insert(
                "clock".into(),
                Verdict::fail(
                    h.clock_domain.clone(),
                    format!("clock domain {} spans different kernels (boot_id differs: {groups})", h.clock_domain),
                    "give each kernel its own clock_domain (or drop clock_domain: the default is one per metal/vm)",
                ),
            );
            r.ok = false;
        }
    }
}

fn finish(host: &Host, mut c: BTreeMap<String, Verdict>) -> HostReport {
    for k in CHECKS {
        c.entry(k.to_string()).or_insert_with(|| Verdict::skip(""));
    }
    let ok = c.values().all(|v| v.status != Status::Fail);
    HostReport {
        name: host.name.clone(),
        kind: host.kind,
        ok,
        checks: c,
    }
}

#[cfg(test)]
mod tests;

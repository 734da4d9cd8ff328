//! `latplan check INVENTORY [--format table|json]`: a table host × check with ✓/✗, and for
//! every ✗ the reason and the fix. Exit code 1 when any host fails. Changes nothing on the hosts
//! except pushing the observer binary into install_dir (when its hash differs) to run
//! `observer probe`, the real attach test.
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use comfy_table::{Cell, Color, Table};
use indicatif::ProgressBar;
use tokio::sync::Semaphore;

use super::inventory::load;
use super::{Command, ConnectArgs, Global, Outcome, print_out};
use crate::facts::preflight::{self, CHECKS, ContainerEvidence, Evidence, HostReport, Status};
use crate::facts::{self, Facts, probe};
use crate::inventory::{Host, Inventory, Kind};
use crate::tasks::artifacts::{Artifact, Artifacts, OBSERVER};
use crate::transport::shell::quote;
use crate::transport::{Cmd, ConnectOptions, ContainerTransport, Transport, connect_host};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Inventory directory (hosts.yaml, group_vars/, host_vars/) or file.
    inventory: PathBuf,
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
    /// Only these hosts (comma-separated names).
    #[arg(long, value_delimiter = ',')]
    limit: Vec<String>,
    #[command(flatten)]
    connect: ConnectArgs,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Format {
    Table,
    Json,
}

/// Everything learned about one kernel host and its containers.
struct Gathered {
    name: String,
    evidence: Evidence,
    containers: BTreeMap<String, ContainerEvidence>,
}

impl Command for Args {
    fn run(self, _global: &Global) -> anyhow::Result<Outcome> {
        let inv = load(&self.inventory)?;
        for l in &self.limit {
            anyhow::ensure!(
                inv.hosts.contains_key(l),
                "--limit names `{l}`, which is not a host of {}",
                self.inventory.display()
            );
        }
        let selected: Vec<&Host> = inv
            .hosts()
            .filter(|h| self.limit.is_empty() || self.limit.contains(&h.name))
            .collect();
        let observer = Artifacts::locate(self.connect.artifacts.as_deref())
            .load(OBSERVER, &inv.session.bus)
            .map_err(|e| format!("{e:#}"));
        let (opts, control_dir) = self.connect.options()?;
        let started = Instant::now();
        let (inv_ref, selected, observer_ref, opts_ref) = (&inv, &selected, &observer, &opts);
        let reports = super::block_on_hosts(|_| async move {
            Ok(run_checks(inv_ref, selected, observer_ref, opts_ref).await)
        })?;
        control_dir.close();
        let elapsed = started.elapsed();
        let failed = reports.iter().filter(|r| !r.ok).count();
        match self.format {
            Format::Json => {
                let j = serde_json::json!({ "ok": failed == 0, "hosts": reports, "seconds": elapsed.as_secs_f64() });
                print_out(&serde_json::to_string_pretty(&j)?)?;
            }
            Format::Table => {
                print_out(&render_table(&reports))?;
                eprintln!(
                    "{} host(s) checked in {:.1} s, {failed} failing",
                    reports.len(),
                    elapsed.as_secs_f64()
                );
            }
        }
        Ok(if failed == 0 {
            Outcome::Success
        } else {
            Outcome::Failed
        })
    }
}

/// Connects, gathers facts, probes, and judges; one task per kernel host, at most `forks` at once.
/// An unreachable host is a row of the report, never the end of the run.
async fn run_checks(
    inv: &Inventory,
    selected: &[&Host],
    observer: &Result<Artifact, String>,
    opts: &ConnectOptions,
) -> Vec<HostReport> {
    // Kernel hosts to visit: the selected ones, and parents of selected containers.
    let mut kernels: Vec<&Host> = Vec::new();
    for h in selected {
        let k = if h.kind == Kind::Container {
            &inv.hosts[h.parent.as_ref().expect("validated")]
        } else {
            *h
        };
        let k = climb_to_kernel(inv, k);
        if !kernels.iter().any(|x| x.name == k.name) {
            kernels.push(k);
        }
    }
    let bar = super::host_progress(kernels.len(), "checking");
    let sem = Arc::new(Semaphore::new(opts.forks.max(1)));
    let tasks = kernels.iter().map(|h| {
        let sem = sem.clone();
        let bar = bar.clone();
        async move {
            let _permit = sem.acquire().await.expect("never closed");
            let g = gather_one(inv, h, observer, opts, &bar).await;
            bar.inc(1);
            g
        }
    });
    let gathered: Vec<Gathered> = futures::future::join_all(tasks).await;
    bar.finish_and_clear();

    let mut reports = Vec::new();
    let mut kernel_reports: BTreeMap<String, HostReport> = BTreeMap::new();
    let mut facts_of: BTreeMap<String, Facts> = BTreeMap::new();
    for g in &gathered {
        let h = &inv.hosts[&g.name];
        let containers: Vec<&Host> = inv.containers_of(&h.name).collect();
        let ifaces = facts::interfaces_for(h, &containers);
        kernel_reports.insert(
            g.name.clone(),
            preflight::judge_kernel_host(h, &ifaces, &inv.session.sampling, &g.evidence),
        );
        if let Some(Ok(f)) = &g.evidence.facts {
            facts_of.insert(g.name.clone(), f.clone());
        }
    }
    let boot_ids = facts_of
        .iter()
        .map(|(n, f)| (n.clone(), f.boot_id.clone()))
        .collect();
    let mut all: Vec<HostReport> = kernel_reports.values().cloned().collect();
    preflight::judge_clock_domains(&mut all, &inv.hosts, &boot_ids);
    let kernel_reports: BTreeMap<String, HostReport> =
        all.into_iter().map(|r| (r.name.clone(), r)).collect();
    for h in selected {
        if h.kind == Kind::Container {
            let parent = h.parent.as_ref().expect("validated");
            let ev = gathered
                .iter()
                .find_map(|g| g.containers.get(&h.name))
                .cloned()
                .unwrap_or_default();
            reports.push(preflight::judge_container(
                h,
                &kernel_reports[parent],
                facts_of.get(parent),
                &ev,
            ));
        } else {
            reports.push(kernel_reports[&h.name].clone());
        }
    }
    reports
}

fn climb_to_kernel<'a>(inv: &'a Inventory, mut h: &'a Host) -> &'a Host {
    while h.kind == Kind::Container {
        h = &inv.hosts[h.parent.as_ref().expect("validated")];
    }
    h
}

async fn gather_one(
    inv: &Inventory,
    h: &Host,
    observer: &Result<Artifact, String>,
    opts: &ConnectOptions,
    bar: &ProgressBar,
) -> Gathered {
    let mut g = Gathered {
        name: h.name.clone(),
        evidence: Evidence::default(),
        containers: BTreeMap::new(),
    };
    bar.set_message(format!("{}: connecting", h.name));
    let t = match connect_host(h, opts).await {
        Ok(t) => t,
        Err(e) => {
            g.evidence.reach = Some(Err(reason_of(&e)));
            return g;
        }
    };
    g.evidence.reach = Some(Ok(()));
    let containers: Vec<&Host> = inv.containers_of(&h.name).collect();
    bar.set_message(format!("{}: gathering facts", h.name));
    let f = match facts::gather(t.as_ref(), h, &containers).await {
        Ok(f) => f,
        Err(e) => {
            g.evidence.facts = Some(Err(e.to_string()));
            let _ = t.close().await;
            return g;
        }
    };
    bar.set_message(format!("{}: probing", h.name));
    let xdp_mode = &inv.session.sampling.xdp_mode;
    g.evidence.probe =
        Some(push_and_probe(t.as_ref(), h, &f, &containers, observer, xdp_mode).await);
    for c in &containers {
        let ct = ContainerTransport::new(c.name.clone(), c.netns.clone(), t.clone());
        g.containers.insert(
            c.name.clone(),
            ContainerEvidence {
                interfaces: Some(container_interfaces(&ct, c, h.become_root).await),
            },
        );
    }
    g.evidence.facts = Some(Ok(f));
    let _ = t.close().await;
    g
}

fn reason_of(e: &crate::transport::TransportError) -> String {
    match e {
        crate::transport::TransportError::Unreachable { reason, .. } => reason.clone(),
        other => other.to_string(),
    }
}

async fn push_and_probe(
    t: &dyn Transport,
    h: &Host,
    f: &Facts,
    containers: &[&Host],
    observer: &Result<Artifact, String>,
    xdp_mode: &str,
) -> Result<probe::ProbeReport, String> {
    let observer = observer.as_ref().map_err(Clone::clone)?;
    let dir = h
        .install_dir
        .clone()
        .unwrap_or_else(|| crate::inventory::DEFAULT_INSTALL_DIR.into());
    let dest = dir.join("bin").join(OBSERVER);
    if f.files.get(&dest) != Some(&observer.sha256) {
        t.put(&observer.bytes, &dest, 0o755, h.become_root)
            .await
            .map_err(|e| format!("failed to push the observer: {e}"))?;
    }
    let ifaces = facts::interfaces_for(h, containers);
    probe::run(t, &dest, &ifaces, xdp_mode, h.become_root)
        .await
        .map_err(|e| e.to_string())
}

/// Which of the container's own interfaces exist inside its namespace.
async fn container_interfaces(
    t: &ContainerTransport,
    c: &Host,
    _become: bool,
) -> Result<BTreeMap<String, bool>, String> {
    if c.interfaces.is_empty() {
        return Ok(BTreeMap::new());
    }
    let list = c
        .interfaces
        .iter()
        .map(|i| quote(i))
        .collect::<Vec<_>>()
        .join(" ");
    let script = format!(
        "for i in {list}; do if [ -e \"/sys/class/net/$i\" ]; then echo \"$i 1\"; else echo \"$i 0\"; fi; done"
    );
    let out = t.exec(Cmd::new(script)).await.map_err(|e| e.to_string())?;
    if !out.success() {
        return Err(out.stderr_str());
    }
    Ok(out
        .stdout_str()
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(i, v)| (i.to_string(), v == "1"))
        .collect())
}

fn render_table(reports: &[HostReport]) -> String {
    let mut t = Table::new();
    t.load_preset(comfy_table::presets::UTF8_FULL_CONDENSED);
    let mut header = vec![Cell::new("host")];
    header.extend(CHECKS.iter().map(Cell::new));
    t.set_header(header);
    for r in reports {
        let mut row = vec![Cell::new(format!("{} ({})", r.name, r.kind.as_str()))];
        for k in CHECKS {
            let v = &r.checks[*k];
            let cell = match v.status {
                Status::Pass
                    if ["xdp", "hooks", "interfaces"].contains(k) && !v.detail.is_empty() =>
                {
                    Cell::new(format!("✓ {}", v.detail)).fg(Color::Green)
                }
                Status::Pass => Cell::new("✓").fg(Color::Green),
                Status::Fail => Cell::new("✗").fg(Color::Red),
                Status::Skip if v.detail.is_empty() => Cell::new("–"),
                Status::Skip => Cell::new(format!("– {}", v.detail)),
            };
            row.push(cell);
        }
        t.add_row(row);
    }
    let mut out = t.to_string();
    // One line per distinct problem of a host: a failed probe fails four checks for one reason.
    let mut problems = String::new();
    for r in reports {
        let mut seen: Vec<(Vec<&str>, &str, &str)> = Vec::new();
        for k in CHECKS {
            let v = &r.checks[*k];
            if v.status != Status::Fail {
                continue;
            }
            let (reason, fix) = (
                v.reason.as_deref().unwrap_or(""),
                v.fix.as_deref().unwrap_or(""),
            );
            match seen.iter_mut().find(|(_, r, f)| *r == reason && *f == fix) {
                Some(entry) => entry.0.push(k),
                None => seen.push((vec![k], reason, fix)),
            }
        }
        for (checks, reason, fix) in seen {
            problems.push_str(&format!(
                "\n✗ {} {}: {reason}\n    fix: {fix}",
                r.name,
                checks.join(", ")
            ));
        }
    }
    if !problems.is_empty() {
        out.push_str("\n\nProblems:");
        out.push_str(&problems);
    }
    out
}

//! `latplan plan INVENTORY`: each host's rendered plan and what it would change against the
//! host's facts (ok / changed), with diffs of rendered files. Changes nothing on any host.
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::Semaphore;

use super::inventory::load;
use super::{Command, ConnectArgs, Global, Outcome, print_out};
use crate::facts::{self, Facts};
use crate::inventory::{Host, Inventory, Kind};
use crate::plan::{Change, HostPlan, PlannedStep, Playbooks, RunVars, diff_plan, unified_diff};
use crate::tasks::Task;
use crate::tasks::artifacts::{Artifacts, OBSERVER, TIMESYNC};
use crate::transport::{ConnectOptions, connect_host};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Inventory directory (hosts.yaml, group_vars/, host_vars/) or file.
    inventory: PathBuf,
    /// Which playbook to plan.
    #[arg(long, default_value = "apply", value_parser = ["apply", "teardown"])]
    playbook: String,
    /// Render only; do not connect (every step shows as unknown).
    #[arg(long)]
    offline: bool,
    /// Use the playbooks of this directory instead of the built-in ones.
    #[arg(long, value_name = "DIR")]
    playbooks: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
    #[command(flatten)]
    connect: ConnectArgs,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Format {
    Text,
    Json,
}

/// A host's plan with its verdicts; `error` when the host could not be asked.
#[derive(Debug, serde::Serialize)]
struct HostResult {
    host: String,
    kind: Kind,
    error: Option<String>,
    steps: Vec<PlannedStep>,
    /// Unified diffs of rendered files that would change, by destination.
    diffs: BTreeMap<PathBuf, String>,
}

impl Command for Args {
    fn run(self, _global: &Global) -> anyhow::Result<Outcome> {
        let inv = load(&self.inventory)?;
        let playbooks = Playbooks::load(self.playbooks.as_deref())?;
        // Session ids are minted by apply; the plan shows a placeholder, which never reaches a host.
        let run = RunVars {
            id: "<session id>".into(),
            token: "<token>".into(),
        };
        // Render everything before touching any host: a bad template stops here.
        let mut plans = Vec::new();
        for h in inv.kernel_hosts() {
            plans.push(playbooks.render(&self.playbook, &inv, h, &run)?);
        }
        let arts = Artifacts::locate(self.connect.artifacts.as_deref());
        let shas: BTreeMap<String, Result<String, String>> = [OBSERVER, TIMESYNC]
            .into_iter()
            .map(|n| {
                (
                    n.to_string(),
                    arts.load(n, &inv.session.bus)
                        .map(|a| a.sha256)
                        .map_err(|e| format!("{e:#}")),
                )
            })
            .collect();
        let (opts, dir) = self.connect.options()?;
        let results = if self.offline {
            plans
                .iter()
                .map(|p| result(&inv, p, None, &shas, None, BTreeMap::new()))
                .collect()
        } else {
            let (inv, plans, shas, opts) = (&inv, &plans, &shas, &opts);
            super::block_on_hosts(|_| async move { Ok(plan_online(inv, plans, shas, opts).await) })?
        };
        dir.close();
        match self.format {
            Format::Json => print_out(&serde_json::to_string_pretty(&results)?)?,
            Format::Text => print_out(&render_text(&inv, &results))?,
        }
        let unreachable = results.iter().any(|r| r.error.is_some());
        Ok(if unreachable {
            Outcome::Failed
        } else {
            Outcome::Success
        })
    }
}

fn result(
    inv: &Inventory,
    plan: &HostPlan,
    facts: Option<&Facts>,
    shas: &BTreeMap<String, Result<String, String>>,
    error: Option<String>,
    diffs: BTreeMap<PathBuf, String>,
) -> HostResult {
    HostResult {
        host: plan.host.clone(),
        kind: inv.hosts[&plan.host].kind,
        error,
        steps: diff_plan(plan, facts, shas),
        diffs,
    }
}

async fn plan_online(
    inv: &Inventory,
    plans: &[HostPlan],
    shas: &BTreeMap<String, Result<String, String>>,
    opts: &ConnectOptions,
) -> Vec<HostResult> {
    let sem = Arc::new(Semaphore::new(opts.forks.max(1)));
    let bar = super::host_progress(plans.len(), "gathering facts");
    let tasks = plans.iter().map(|plan| {
        let sem = sem.clone();
        let bar = bar.clone();
        async move {
            let _p = sem.acquire().await.expect("never closed");
            let _done = Tick(bar);
            let h: &Host = &inv.hosts[&plan.host];
            let t = match connect_host(h, opts).await {
                Ok(t) => t,
                Err(e) => {
                    return result(inv, plan, None, shas, Some(e.to_string()), BTreeMap::new());
                }
            };
            let containers: Vec<&Host> = inv.containers_of(&h.name).collect();
            let r = match facts::gather(t.as_ref(), h, &containers).await {
                Err(e) => result(inv, plan, None, shas, Some(e.to_string()), BTreeMap::new()),
                Ok(f) => {
                    let mut diffs = BTreeMap::new();
                    for step in diff_plan(plan, Some(&f), shas) {
                        if let (Task::Render { dest, .. }, Change::Changed) =
                            (&step.task, step.change)
                        {
                            // Show what would change: the host's current file against the rendered one.
                            let old = if f.files.contains_key(dest) {
                                t.get(dest, h.become_root)
                                    .await
                                    .map(|b| String::from_utf8_lossy(&b).into_owned())
                                    .unwrap_or_default()
                            } else {
                                String::new()
                            };
                            let new = plan.files.get(dest).cloned().unwrap_or_default();
                            diffs.insert(
                                dest.clone(),
                                unified_diff(&old, &new, &dest.display().to_string()),
                            );
                        }
                    }
                    result(inv, plan, Some(&f), shas, None, diffs)
                }
            };
            let _ = t.close().await;
            r
        }
    });
    let results = futures::future::join_all(tasks).await;
    bar.finish_and_clear();
    results
}

/// Advances the bar when a host's work ends, whichever way it ends.
struct Tick(indicatif::ProgressBar);

impl Drop for Tick {
    fn drop(&mut self) {
        self.0.inc(1);
    }
}

fn describe(t: &Task) -> String {
    match t {
        Task::Facts {} => String::new(),
        Task::Upload {
            artifact,
            dest,
            mode,
        } => format!("{artifact} → {} ({mode})", dest.display()),
        Task::Render {
            template,
            dest,
            mode,
        } => format!("{template} → {} ({mode})", dest.display()),
        Task::Run { name, .. } => name.clone(),
        Task::StartObserver { args } | Task::StartTimesync { args } => args.join(" "),
        Task::StopObserver {} | Task::StopTimesync {} => String::new(),
        Task::Step { on, action, at } => {
            format!("{} on {on}: {}  ({at})", action.name(), action.command())
        }
        Task::Cleanup { paths } => paths
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(" "),
    }
}

fn render_text(inv: &Inventory, results: &[HostResult]) -> String {
    let mut out = String::new();
    for r in results {
        let h = &inv.hosts[&r.host];
        let target = h
            .address
            .clone()
            .or_else(|| h.ssh.as_ref().and_then(|s| s.config_alias.clone()))
            .unwrap_or_else(|| "local".into());
        out.push_str(&format!("{} ({}, {target})\n", r.host, r.kind.as_str()));
        if let Some(e) = &r.error {
            out.push_str(&format!("  unreachable: {e}\n"));
        }
        for s in &r.steps {
            let word = match s.change {
                Change::Ok => "ok",
                Change::Changed => "changed",
                Change::Unknown => "?",
            };
            out.push_str(&format!(
                "  {word:<8} {:<15} {}  [{}]\n",
                s.task.kind(),
                describe(&s.task),
                s.why
            ));
            if let Task::Render { dest, .. } = &s.task
                && let Some(d) = r.diffs.get(dest)
            {
                for line in d.lines() {
                    out.push_str(&format!("             {line}\n"));
                }
            }
        }
        for c in inv.containers_of(&r.host) {
            out.push_str(&format!(
                "  (covers container {}: netns {})\n",
                c.name,
                c.netns.as_deref().unwrap_or("-")
            ));
        }
        let ok = r.steps.iter().filter(|s| s.change == Change::Ok).count();
        let changed = r
            .steps
            .iter()
            .filter(|s| s.change == Change::Changed)
            .count();
        out.push_str(&format!(
            "  recap: ok={ok} changed={changed}{}\n\n",
            if r.error.is_some() {
                " unreachable=1"
            } else {
                ""
            }
        ));
    }
    out.push_str("plan only: nothing was changed on any host");
    out
}

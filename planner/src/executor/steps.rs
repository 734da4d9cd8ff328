//! The user's own steps (steps.yaml, docs/inventory.md) during a session: one-shot `run` commands
//! and background `start` processes, run right after the observers are started (so the workload
//! runs while they observe); background processes are stopped when the session ends and by
//! teardown.
//!
//! Steps run in file order; every host's step of one index ends before any host begins the next
//! (Ansible's linear strategy), so a receiver started in one play is up before a sender of a later
//! play. A host whose step fails is reported failed and skips its later steps; the others go on.
//! A container's steps run inside its network namespace, entered by its parent.
//!
//! A background process runs in a session of its own (`setsid`), its PID (= its process group)
//! and output in `install_dir/run/steps/` of the kernel host: stopping it signals the whole group,
//! so a command that forks (a pipeline, a wrapper script) leaves nothing behind.
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;

use crate::inventory::{Inventory, Kind, StepAction, UserStep};
use crate::session::Layout;
use crate::transport::shell::{quote, quote_path};
use crate::transport::{Cmd, ContainerTransport, Transport, check};

/// Seconds a stopped process gets between TERM and KILL.
const STOP_GRACE_TENTHS: u32 = 50;

/// Where a kernel host keeps the PID and log files of its own and its containers' `start` steps.
pub fn steps_dir(layout: &Layout) -> PathBuf {
    layout.run_dir().join("steps")
}

/// File name stem of one background process: `HOST.NAME` (both validated names, no `/`).
fn stem(host: &str, name: &str) -> String {
    format!("{host}.{name}")
}

/// Starts `command` in a session of its own, its output in a log; fails when it ends within
/// 0.2 s (a typo, a missing binary), with the end of its log. Already running: nothing to do.
pub fn start_script(dir: &std::path::Path, stem: &str, command: &str) -> String {
    format!(
        "set -e\n\
         d={dir}\n\
         mkdir -p \"$d\"\n\
         pidf=\"$d/{stem}.pid\"; logf=\"$d/{stem}.log\"\n\
         if [ -f \"$pidf\" ] && p=$(cat \"$pidf\") && [ \"$p\" -gt 1 ] 2>/dev/null && kill -0 \"$p\" 2>/dev/null; then echo \"already running: $p\"; exit 0; fi\n\
         setsid sh -c {cmd} </dev/null >\"$logf\" 2>&1 &\n\
         p=$!\n\
         echo \"$p\" >\"$pidf\"\n\
         sleep 0.2\n\
         if ! kill -0 \"$p\" 2>/dev/null; then\n\
         \x20 st=0; wait \"$p\" || st=$?\n\
         \x20 rm -f \"$pidf\"\n\
         \x20 echo \"it ended at once (exit $st): $(tail -n 5 \"$logf\" | tr '\\n' ' ')\" >&2\n\
         \x20 exit 1\n\
         fi\n\
         echo \"started: $p\"",
        dir = quote_path(dir),
        stem = stem,
        cmd = quote(command),
    )
}

/// A one-shot command, skipped when `creates` exists.
pub fn run_script(command: &str, creates: Option<&std::path::Path>) -> String {
    let run = format!("sh -c {}", quote(command));
    match creates {
        None => run,
        Some(p) => format!(
            "if [ -e {p} ]; then echo \"skipped: {shown} exists\"; exit 0; fi\n{run}",
            p = quote_path(p),
            shown = p.display().to_string().replace(['"', '$', '`', '\\'], "_"),
        ),
    }
}

/// Stops every background process recorded under `dir` (TERM to its process group, KILL after
/// the grace period) and removes its PID file. Prints `removed: step:NAME(PID) …`. Safe to run
/// twice and after crashes: a PID file whose group is gone is just removed.
pub fn stop_script(dir: &std::path::Path) -> String {
    format!(
        "d={dir}\n\
         removed=''\n\
         # A group is alive while one of its members is not a zombie.\n\
         alive() {{ ps -eo pgid=,stat= | awk -v g=\"$1\" '$1 == g && $2 !~ /^Z/ {{ f = 1 }} END {{ exit !f }}'; }}\n\
         pid_of() {{ p=$(cat \"$1\" 2>/dev/null) || return 1; case $p in ''|*[!0-9]*) return 1;; esac; [ \"$p\" -gt 1 ]; }}\n\
         for f in \"$d\"/*.pid; do\n\
         \x20 [ -f \"$f\" ] && pid_of \"$f\" || continue\n\
         \x20 if alive \"$p\"; then kill -TERM -\"$p\" 2>/dev/null || true; removed=\"$removed step:$(basename \"$f\" .pid)($p)\"; fi\n\
         done\n\
         for f in \"$d\"/*.pid; do\n\
         \x20 [ -f \"$f\" ] || continue\n\
         \x20 if pid_of \"$f\"; then\n\
         \x20   i=0; while alive \"$p\" && [ $i -lt {grace} ]; do sleep 0.1; i=$((i+1)); done\n\
         \x20   alive \"$p\" && kill -KILL -\"$p\" 2>/dev/null || true\n\
         \x20 fi\n\
         \x20 rm -f \"$f\"\n\
         done\n\
         echo \"removed:$removed\"",
        dir = quote_path(dir),
        grace = STOP_GRACE_TENTHS,
    )
}

/// What the user's steps did in a session.
#[derive(Debug, Default)]
pub struct StepsOutcome {
    /// Hosts (kernel hosts or containers) whose step failed, with why.
    pub failed: BTreeMap<String, String>,
    /// Kernel hosts holding background processes of this session (stopped at its end).
    pub started_on: BTreeSet<String>,
}

/// The transport a step of `host` runs through: its own connection, or a container's parent's,
/// entering the container's network namespace.
fn transport_for(
    inv: &Inventory,
    connected: &BTreeMap<String, Arc<dyn Transport>>,
    host: &str,
) -> Option<(Arc<dyn Transport>, String)> {
    let h = &inv.hosts[host];
    if h.kind != Kind::Container {
        return connected.get(host).map(|t| (t.clone(), host.to_string()));
    }
    let parent = h.parent.as_ref()?;
    let p = connected.get(parent)?;
    let t: Arc<dyn Transport> = Arc::new(ContainerTransport::new(host, h.netns.clone(), p.clone()));
    Some((t, parent.clone()))
}

/// Runs every user step on the hosts whose kernel host is in `live`, in order. Progress and
/// failures are printed; the outcome says which hosts failed and where processes were started.
pub async fn run_steps(
    inv: &Inventory,
    connected: &BTreeMap<String, Arc<dyn Transport>>,
    live: &BTreeSet<String>,
) -> StepsOutcome {
    let mut out = StepsOutcome::default();
    let mut by_index: BTreeMap<usize, Vec<&UserStep>> = BTreeMap::new();
    for s in &inv.steps {
        by_index.entry(s.index).or_default().push(s);
    }
    for steps in by_index.values() {
        let jobs = steps.iter().filter_map(|s| {
            if out.failed.contains_key(&s.host) {
                return None;
            }
            let (t, kernel) = transport_for(inv, connected, &s.host)?;
            if !live.contains(&kernel) {
                return None;
            }
            let layout = Layout::of(&inv.hosts[&kernel]);
            let become_root = inv.hosts[&kernel].become_root;
            Some(async move {
                let r = run_one(t.as_ref(), s, &layout, become_root).await;
                (s, kernel, r)
            })
        });
        for (s, kernel, r) in join_all(jobs).await {
            let what = format!("{} `{}`", s.action.kind(), s.action.name());
            match r {
                Ok(msg) => {
                    eprintln!("{}: {what}: {msg}", s.host);
                    if matches!(s.action, StepAction::Start { .. }) {
                        out.started_on.insert(kernel);
                    }
                }
                Err(e) => {
                    let why = format!("step {what} ({}) failed: {e:#}", s.location);
                    eprintln!("{}: {why}", s.host);
                    out.failed.insert(s.host.clone(), why);
                }
            }
        }
    }
    out
}

async fn run_one(
    t: &dyn Transport,
    s: &UserStep,
    layout: &Layout,
    host_become: bool,
) -> anyhow::Result<String> {
    let (cmd, what) = match &s.action {
        StepAction::Run {
            command,
            creates,
            become_root,
            ..
        } => (
            Cmd::new(run_script(command, creates.as_deref())).become_root(*become_root),
            "run",
        ),
        // PID files live in install_dir: the start wrapper needs what our other files need.
        StepAction::Start {
            name,
            command,
            become_root,
        } => (
            Cmd::new(start_script(
                &steps_dir(layout),
                &stem(&s.host, name),
                command,
            ))
            .become_root(*become_root || host_become),
            "start",
        ),
    };
    let o = check(t.host(), what, t.exec(cmd).await?)?;
    let last = o
        .stdout_str()
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .to_string();
    Ok(match &s.action {
        StepAction::Run { .. } if last.starts_with("skipped:") => last,
        StepAction::Run { .. } => "ok".to_string(),
        StepAction::Start { .. } => last,
    })
}

/// Stops the background processes of the kernel hosts in `on` (the end of a session).
pub async fn stop_started(
    inv: &Inventory,
    connected: &BTreeMap<String, Arc<dyn Transport>>,
    on: &BTreeSet<String>,
) {
    let jobs = on.iter().filter_map(|h| {
        let t = connected.get(h)?.clone();
        let host = &inv.hosts[h];
        Some(async move {
            (
                h,
                stop_all(t.as_ref(), &Layout::of(host), host.become_root).await,
            )
        })
    });
    for (h, r) in join_all(jobs).await {
        match r {
            Ok(v) if v.is_empty() => eprintln!("{h}: user steps: nothing left running"),
            Ok(v) => eprintln!("{h}: user steps stopped: {}", v.join(", ")),
            Err(e) => eprintln!("{h}: failed to stop user steps: {e:#}"),
        }
    }
}

/// Stops every background step process of a kernel host (its own and its containers'); what
/// teardown runs first. Returns what it stopped.
pub async fn stop_all(
    t: &dyn Transport,
    layout: &Layout,
    become_root: bool,
) -> anyhow::Result<Vec<String>> {
    let cmd = Cmd::new(stop_script(&steps_dir(layout)))
        .become_root(become_root)
        .timeout(Duration::from_secs(30));
    let out = check(t.host(), "stop user steps", t.exec(cmd).await?)?;
    Ok(out
        .stdout_str()
        .lines()
        .filter_map(|l| l.strip_prefix("removed:"))
        .flat_map(|l| l.split_whitespace().map(str::to_string))
        .collect())
}

#[cfg(test)]
mod tests;

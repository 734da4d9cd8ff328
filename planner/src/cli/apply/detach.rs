//! `apply --detach`: the same session, run by a background `latplan` (this binary, re-executed
//! with `--detached-child` in a new session of its own, output to the session's private state
//! directory). The foreground returns once the observers run; the background renews their
//! leases and collects until `latplan stop` sends it SIGTERM, then finishes as `apply` does and
//! leaves the report and the final status for `stop` to print.
use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use super::super::{Outcome, print_out};
use super::{Args, Prober, worst_sync_us};
use crate::collector::Snapshot;
use crate::inventory::Inventory;
use crate::session::state::{HostStatus, SessionDir, Status};

/// How long the foreground waits for the background to have its observers running.
const START_LIMIT: Duration = Duration::from_secs(300);
/// A detached session runs until stopped; this only bounds the timer.
const FOREVER: Duration = Duration::from_secs(365 * 24 * 3600);

pub fn start(inv: &Inventory, session: Option<String>) -> anyhow::Result<Outcome> {
    if inv.session.bus == "ssh" {
        bail!(
            "--detach needs the Redis bus: observers must outlive this command (set session.bus to redis://HOST:PORT, or pass --bus)"
        );
    }
    let name = session.unwrap_or_else(crate::session::new_session_name);
    let d = SessionDir::create(&name)?;
    let mut args: Vec<OsString> = std::env::args_os()
        .skip(1)
        .filter(|a| a != "--detach")
        .collect();
    let named = args.iter().any(|a| {
        let a = a.to_string_lossy();
        a == "--session" || a.starts_with("--session=")
    });
    if !named {
        args.push("--session".into());
        args.push(name.clone().into());
    }
    args.push("--detached-child".into());
    let exe = std::env::current_exe().context("failed to find this latplan binary")?;
    let mut cmd = std::process::Command::new(exe);
    cmd.args(&args)
        .stdin(Stdio::null())
        .stdout(d.create_file(&d.report())?)
        .stderr(d.create_file(&d.log())?);
    // SAFETY: setsid is async-signal-safe; a session of its own keeps the terminal's Ctrl-C and
    // hang-up away from the background collector.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .context("failed to start the background latplan")?;
    d.set_pid(child.id())?;
    eprintln!(
        "starting session {name} in the background (pid {}, log {})…",
        child.id(),
        d.log().display()
    );
    let t = Instant::now();
    loop {
        if d.read_status().is_some_and(|s| s.state == "running") {
            break;
        }
        if let Some(code) = child.try_wait()? {
            let log = std::fs::read_to_string(d.log()).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(15).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            bail!(
                "the background session ended during start-up ({code}):\n{}",
                tail.join("\n")
            );
        }
        if t.elapsed() > START_LIMIT {
            bail!(
                "the background session did not start its observers within {}; see {}",
                humantime::format_duration(START_LIMIT),
                d.log().display()
            );
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    print_out(&format!(
        "session {name} running in the background (collector pid {})\n  latplan status {name}\n  latplan stop {name}\n",
        child.id()
    ))?;
    Ok(Outcome::Success)
}

/// The background side: the session as `apply` runs it, without an end but `stop`, then the
/// final status.
pub fn run_child(mut args: Args, inv: Inventory) -> anyhow::Result<Outcome> {
    let name = args.session.clone().expect("clap requires --session");
    let d = SessionDir::open(&name)?;
    args.duration = FOREVER;
    d.write_status(&Status {
        session: name.clone(),
        state: "starting".into(),
        ..Status::default()
    })?;
    let r = args.run_with(inv);
    let mut st = d.read_status().unwrap_or_default();
    st.session = name;
    match &r {
        Ok(_) => st.state = "completed".into(),
        Err(e) => {
            st.state = "failed".into();
            st.error = Some(format!("{e:#}"));
        }
    }
    for h in st.hosts.values_mut() {
        if h.state == "running" {
            h.state = "ok".into();
        }
        h.records_per_sec = 0.0;
    }
    st.records_per_sec = 0.0;
    d.write_status(&st)?;
    r
}

/// Writes the live status `latplan status` shows.
#[expect(clippy::too_many_arguments, reason = "one status line's inputs")]
pub(super) fn write_status(
    d: &SessionDir,
    session: &str,
    state: &str,
    hosts: &[String],
    now: &Snapshot,
    last: &Snapshot,
    prober: &Prober,
    lost: &[String],
) {
    let secs = now.at.duration_since(last.at).as_secs_f64().max(1e-3);
    let hosts = hosts
        .iter()
        .map(|h| {
            let c = now.hosts.get(h).cloned().unwrap_or_default();
            let before = last.hosts.get(h).map(|c| c.records).unwrap_or(0);
            let state = if lost.contains(h) { "lost" } else { "running" };
            let hs = HostStatus {
                state: state.into(),
                records: c.records,
                records_per_sec: (c.records - before.min(c.records)) as f64 / secs,
                drops: c.drops(),
                missing: c.missing,
            };
            (h.clone(), hs)
        })
        .collect();
    let st = Status {
        session: session.to_string(),
        state: state.to_string(),
        records: now.records,
        records_per_sec: now.records_per_sec_since(last),
        drops: now.drops(),
        missing: now.missing,
        sync_error_us: worst_sync_us(prober),
        hosts,
        ..Status::default()
    };
    if let Err(e) = d.write_status(&st) {
        eprintln!("{e:#}");
    }
}

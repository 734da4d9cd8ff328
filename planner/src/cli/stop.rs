//! `latplan stop [SESSION]`: ends a detached session. The background collector is asked to stop
//! (SIGTERM); it stops the observers through their lease keys, collects the last records, runs
//! the analysis and writes the report, which this prints. When the collector died without
//! finishing (killed), this process finishes the session in its place (`apply::resume`).
use std::time::{Duration, Instant};

use anyhow::bail;

use super::{Command, Global, Outcome, print_out};
use crate::session::state::SessionDir;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The session (default: the only detached session still running, or whose collector
    /// died without finishing it).
    session: Option<String>,
    /// How long to wait for the final collection and report.
    #[arg(long, default_value = "180s", value_parser = humantime::parse_duration)]
    timeout: Duration,
}

impl Command for Args {
    fn run(self, _global: &Global) -> anyhow::Result<Outcome> {
        let d = match &self.session {
            Some(s) => SessionDir::open(s)?,
            None => {
                let mut alive: Vec<SessionDir> = SessionDir::list()?
                    .into_iter()
                    .filter(|d| d.alive() || unfinished(d))
                    .collect();
                match alive.len() {
                    1 => alive.remove(0),
                    0 => bail!("no detached session is running (see `latplan status`)"),
                    n => {
                        bail!("{n} detached sessions are running: name one (see `latplan status`)")
                    }
                }
            }
        };
        if !d.alive() && unfinished(&d) {
            return super::apply::resume::finish_dead(&d, self.timeout);
        }
        if d.alive() {
            let pid = d.pid().expect("alive has a pid");
            // SAFETY: plain syscall on a PID we checked is a latplan of this session.
            if unsafe { libc::kill(pid, libc::SIGTERM) } != 0 {
                bail!(
                    "failed to signal the collector (pid {pid}): {}",
                    std::io::Error::last_os_error()
                );
            }
            eprintln!("stopping session {} (collector pid {pid})…", d.name());
            let t = Instant::now();
            while d.alive() {
                if t.elapsed() > self.timeout {
                    bail!(
                        "the collector (pid {pid}) did not finish within {}; its log: {}",
                        humantime::format_duration(self.timeout),
                        d.log().display()
                    );
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        let st = d.read_status();
        let state = st.as_ref().map(|s| s.state.clone()).unwrap_or_default();
        if !matches!(state.as_str(), "completed" | "interrupted" | "failed") {
            bail!(
                "the collector of session {} ended without finishing (state {state:?}); its log: {}",
                d.name(),
                d.log().display()
            );
        }
        let report = std::fs::read_to_string(d.report()).unwrap_or_default();
        print_out(&report)?;
        if let Some(e) = st.as_ref().and_then(|s| s.error.clone()) {
            bail!("session {} failed: {e}", d.name());
        }
        let failed = st.is_some_and(|s| s.hosts.values().any(|h| h.state != "ok"));
        Ok(if failed {
            Outcome::Failed
        } else {
            Outcome::Success
        })
    }
}

/// A session whose collector is gone without having finished it (killed): `stop` finishes it.
fn unfinished(d: &SessionDir) -> bool {
    !d.alive()
        && d.read_status()
            .is_some_and(|s| !matches!(s.state.as_str(), "completed" | "interrupted" | "failed"))
}

//! `latplan status [SESSION]`: detached sessions (`apply --detach`) as their background
//! collectors last reported them: state, and per host records/s, drops, missing, sync error.
use comfy_table::Table;

use super::{Command, Global, Outcome, print_out};
use crate::session::state::{SessionDir, Status, now_ms};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// One session (default: every detached session known here).
    session: Option<String>,
    /// `table` or `json`.
    #[arg(long, default_value = "table")]
    format: String,
}

/// The state to show: what the collector wrote, unless it died without saying so.
pub fn effective_state(d: &SessionDir, st: Option<&Status>) -> String {
    let written = st.map(|s| s.state.as_str()).unwrap_or("starting");
    let finished = matches!(written, "completed" | "interrupted" | "failed");
    if !finished && !d.alive() {
        "dead (collector gone: `latplan stop` collects the rest)".into()
    } else {
        written.to_string()
    }
}

impl Command for Args {
    fn run(self, _global: &Global) -> anyhow::Result<Outcome> {
        let dirs = match &self.session {
            Some(s) => vec![SessionDir::open(s)?],
            None => SessionDir::list()?,
        };
        let rows: Vec<(SessionDir, Option<Status>)> = dirs
            .into_iter()
            .map(|d| {
                let s = d.read_status();
                (d, s)
            })
            .collect();
        if self.format == "json" {
            let v: Vec<serde_json::Value> = rows
                .iter()
                .map(|(d, s)| {
                    serde_json::json!({
                        "session": d.name(), "state": effective_state(d, s.as_ref()),
                        "pid": d.pid(), "status": s,
                    })
                })
                .collect();
            print_out(&format!("{}\n", serde_json::to_string_pretty(&v)?))?;
            return Ok(Outcome::Success);
        }
        if rows.is_empty() {
            print_out("no detached sessions\n")?;
            return Ok(Outcome::Success);
        }
        let mut t = Table::new();
        t.set_header(vec![
            "session",
            "state",
            "host",
            "host state",
            "records",
            "records/s",
            "drops",
            "missing",
            "sync ±µs",
            "updated",
        ]);
        for (d, st) in &rows {
            let state = effective_state(d, st.as_ref());
            let Some(st) = st else {
                t.add_row(vec![d.name().to_string(), state]);
                continue;
            };
            let age = format!(
                "{:.0} s ago",
                now_ms().saturating_sub(st.updated_unix_ms) as f64 / 1e3
            );
            t.add_row(vec![
                d.name().to_string(),
                state.clone(),
                "(all)".into(),
                String::new(),
                st.records.to_string(),
                format!("{:.0}", st.records_per_sec),
                st.drops.to_string(),
                st.missing.to_string(),
                format!("{:.1}", st.sync_error_us),
                age,
            ]);
            for (h, hs) in &st.hosts {
                t.add_row(vec![
                    d.name().to_string(),
                    state.clone(),
                    h.clone(),
                    hs.state.clone(),
                    hs.records.to_string(),
                    format!("{:.0}", hs.records_per_sec),
                    hs.drops.to_string(),
                    hs.missing.to_string(),
                    String::new(),
                    String::new(),
                ]);
            }
        }
        print_out(&format!("{t}\n"))?;
        Ok(Outcome::Success)
    }
}

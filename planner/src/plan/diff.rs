//! What each step would change on a host, judged from its facts alone (nothing is run).
use std::collections::BTreeMap;

use serde::Serialize;

use super::HostPlan;
use crate::facts::Facts;
use crate::inventory::StepAction;
use crate::tasks::Task;
use crate::transport::shell::sha256_hex;

/// Ansible's recap vocabulary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    /// Already as wanted: the step would do nothing.
    Ok,
    /// The step would change the host.
    Changed,
    /// Cannot tell (no facts: host unreachable, or planned offline).
    Unknown,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlannedStep {
    pub task: Task,
    pub change: Change,
    /// Why, in a few words ("sha256 differs", "not running").
    pub why: String,
}

/// Compares each step with the facts. `artifacts` maps artifact names to their SHA-256 (or why
/// it could not be read).
pub fn diff_plan(
    plan: &HostPlan,
    facts: Option<&Facts>,
    artifacts: &BTreeMap<String, Result<String, String>>,
) -> Vec<PlannedStep> {
    plan.tasks
        .iter()
        .map(|t| {
            let (change, why) = match facts {
                None => (Change::Unknown, "no facts".to_string()),
                Some(f) => judge(t, f, plan, artifacts),
            };
            PlannedStep {
                task: t.clone(),
                change,
                why,
            }
        })
        .collect()
}

fn short(sha: &str) -> &str {
    &sha[..sha.len().min(12)]
}

fn judge(
    t: &Task,
    f: &Facts,
    plan: &HostPlan,
    artifacts: &BTreeMap<String, Result<String, String>>,
) -> (Change, String) {
    let has = |name: &str| f.running.contains_key(name);
    match t {
        Task::Facts {} => (Change::Ok, "read only".into()),
        Task::Upload { artifact, dest, .. } => match artifacts.get(artifact) {
            None => (Change::Unknown, format!("unknown artifact `{artifact}`")),
            Some(Err(e)) => (Change::Unknown, e.clone()),
            Some(Ok(want)) => match f.files.get(dest) {
                Some(have) if have == want => (Change::Ok, format!("sha256 {}", short(want))),
                Some(have) => (
                    Change::Changed,
                    format!("sha256 {} → {}", short(have), short(want)),
                ),
                None => (
                    Change::Changed,
                    format!("missing, will be sha256 {}", short(want)),
                ),
            },
        },
        Task::Render { dest, .. } => {
            let want = plan
                .files
                .get(dest)
                .map(|c| sha256_hex(c.as_bytes()))
                .unwrap_or_default();
            match f.files.get(dest) {
                Some(have) if *have == want => (Change::Ok, "content unchanged".into()),
                Some(_) => (Change::Changed, "content differs".into()),
                None => (Change::Changed, "missing".into()),
            }
        }
        Task::Run {
            creates: Some(p), ..
        } if f.files.contains_key(p) => (Change::Ok, format!("{} exists", p.display())),
        Task::Run { .. } => (Change::Changed, "runs every time".into()),
        Task::StartObserver { .. } => {
            if has("observer") {
                (Change::Ok, "already running".into())
            } else {
                (Change::Changed, "not running".into())
            }
        }
        Task::StartTimesync { .. } => {
            if has("timesync") {
                (Change::Ok, "already running".into())
            } else {
                (Change::Changed, "not running".into())
            }
        }
        Task::StopObserver {} => {
            if has("observer") {
                (Change::Changed, "running".into())
            } else {
                (Change::Ok, "not running".into())
            }
        }
        Task::StopTimesync {} => {
            if has("timesync") {
                (Change::Changed, "running".into())
            } else {
                (Change::Ok, "not running".into())
            }
        }
        Task::Step { action, .. } => match action {
            StepAction::Run {
                creates: Some(p), ..
            } => (
                Change::Changed,
                format!("runs with the session unless {} exists", p.display()),
            ),
            StepAction::Run { .. } => (Change::Changed, "runs with the session".into()),
            StepAction::Start { .. } => (
                Change::Changed,
                "starts once observers are up, stopped at the end".into(),
            ),
        },
        Task::Cleanup { paths } => {
            let present = paths
                .iter()
                .any(|p| f.files.keys().any(|k| k.starts_with(p)));
            if present || f.install_dir_exists {
                (Change::Changed, "files present".into())
            } else {
                (Change::Ok, "nothing to remove".into())
            }
        }
    }
}

/// A unified diff of a rendered file against what the host has (for `plan`'s --diff output).
pub fn unified_diff(old: &str, new: &str, path: &str) -> String {
    similar::TextDiff::from_lines(old, new)
        .unified_diff()
        .context_radius(3)
        .header(&format!("{path} (host)"), &format!("{path} (plan)"))
        .to_string()
}

//! The small set of task kinds a plan is made of, and the artifacts they push.
//!
//! Playbooks (playbooks/*.yaml.j2) render to a YAML list of these, one key per step:
//! `- upload: {artifact: observer, dest: …, mode: "0755"}`. Anything else is an error naming the
//! playbook and the line.
pub mod artifacts;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::inventory::StepAction;

/// One step of a host's plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Task {
    /// Gather facts (what later steps are diffed against).
    Facts {},
    /// Push an artifact (observer, timesync) unless the host already has one with its SHA-256.
    Upload {
        artifact: String,
        dest: PathBuf,
        /// Octal, as a string: "0755".
        mode: String,
    },
    /// Render a template from playbooks/files/ with the host's variables and write it if it differs.
    Render {
        template: String,
        dest: PathBuf,
        mode: String,
    },
    /// Run a shell command. With `creates`, skipped when that path already exists.
    Run {
        name: String,
        command: String,
        #[serde(default)]
        creates: Option<PathBuf>,
        #[serde(default, rename = "become")]
        become_root: bool,
    },
    /// Start the observer with these arguments (after `observer run`).
    StartObserver {
        args: Vec<String>,
    },
    StopObserver {},
    /// Start the timesync reflector with these arguments (after `timesync reflect`).
    StartTimesync {
        args: Vec<String>,
    },
    StopTimesync {},
    /// Remove what we put on the host.
    Cleanup {
        paths: Vec<PathBuf>,
    },
    /// One of the user's own steps (the inventory's steps.yaml), run by apply once observers are
    /// up. Playbooks cannot write it: it comes from the inventory only.
    #[serde(skip_deserializing)]
    Step {
        /// The host it runs on: the planned host itself, or one of its containers (inside the
        /// container's network namespace).
        on: String,
        action: StepAction,
        /// Where it is written (steps.yaml:line:column).
        at: String,
    },
}

impl Task {
    /// The step's kind, as the playbook names it.
    pub fn kind(&self) -> &'static str {
        match self {
            Task::Facts {} => "facts",
            Task::Upload { .. } => "upload",
            Task::Render { .. } => "render",
            Task::Run { .. } => "run",
            Task::StartObserver { .. } => "start_observer",
            Task::StopObserver {} => "stop_observer",
            Task::StartTimesync { .. } => "start_timesync",
            Task::StopTimesync {} => "stop_timesync",
            Task::Cleanup { .. } => "cleanup",
            Task::Step { action, .. } => action.kind(),
        }
    }
}

/// Parses "0755" / "755" / "0o755".
pub fn parse_mode(s: &str) -> Option<u32> {
    let t = s.trim_start_matches("0o");
    if t.is_empty() || t.len() > 4 {
        return None;
    }
    u32::from_str_radix(t, 8).ok().filter(|m| *m <= 0o7777)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes() {
        assert_eq!(parse_mode("0755"), Some(0o755));
        assert_eq!(parse_mode("644"), Some(0o644));
        assert_eq!(parse_mode("0o600"), Some(0o600));
        assert_eq!(parse_mode("0999"), None);
        assert_eq!(parse_mode(""), None);
    }
}

//! Plans: playbooks rendered per host into typed tasks, and what each task would change
//! against the host's facts (Ansible's --check --diff, Terraform's plan).
mod diff;
mod render;

pub use diff::{Change, PlannedStep, diff_plan, unified_diff};
pub use render::{Playbooks, RenderError, RunVars};

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Serialize;

use crate::tasks::Task;

/// One host's rendered plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HostPlan {
    pub host: String,
    /// The playbook it came from (`apply`, `teardown`).
    pub playbook: String,
    pub tasks: Vec<Task>,
    /// Contents of `render` steps, by destination.
    pub files: BTreeMap<PathBuf, String>,
}

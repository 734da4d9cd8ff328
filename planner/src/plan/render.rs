//! Rendering playbooks (minijinja, strict undefined) with a host's variables, and reading the
//! result as typed tasks. Both steps fail with the playbook's name and line.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use minijinja::{Environment, UndefinedBehavior};
use serde::Serialize;

use super::HostPlan;
use crate::facts::interfaces_for;
use crate::inventory::{Host, Inventory};
use crate::tasks::{Task, parse_mode};

/// The playbooks shipped in the binary (playbooks/ of the source tree).
const EMBEDDED: &[(&str, &str)] = &[
    (
        "apply.yaml.j2",
        include_str!("../../../playbooks/apply.yaml.j2"),
    ),
    (
        "teardown.yaml.j2",
        include_str!("../../../playbooks/teardown.yaml.j2"),
    ),
    (
        "files/observer.json.j2",
        include_str!("../../../playbooks/files/observer.json.j2"),
    ),
];

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("playbook {name} (for host {host}): {message}")]
    Template {
        name: String,
        host: String,
        message: String,
    },
    #[error(
        "playbook {name} (for host {host}), rendered line {line}, column {column}: {message}\n  the line: {text}"
    )]
    Steps {
        name: String,
        host: String,
        line: usize,
        column: usize,
        message: String,
        text: String,
    },
    #[error("failed to read playbooks from {dir}: {reason}")]
    Read { dir: PathBuf, reason: String },
}

/// Values that differ per run rather than per host.
#[derive(Debug, Clone, Serialize)]
pub struct RunVars {
    /// Session id (stamped into records).
    pub id: String,
    /// Time sync token (hex): reflectors only answer probes carrying it.
    pub token: String,
}

pub struct Playbooks {
    env: Environment<'static>,
}

impl Playbooks {
    /// The embedded playbooks, or those of `dir` (same file names) when given.
    pub fn load(dir: Option<&Path>) -> Result<Playbooks, RenderError> {
        let mut env = Environment::new();
        // A typo in a variable name must fail, never render as an empty string.
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        // minijinja would JSON-escape `.yaml.j2`/`.json.j2` output; our templates quote explicitly
        // (`tojson` for JSON, YAML double quotes for plain values).
        env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        for (name, text) in EMBEDDED {
            let text = match dir {
                Some(d) => {
                    std::fs::read_to_string(d.join(name)).map_err(|e| RenderError::Read {
                        dir: d.to_path_buf(),
                        reason: format!("{name}: {e}"),
                    })?
                }
                None => text.to_string(),
            };
            env.add_template_owned(name.to_string(), text)
                .map_err(|e| template_error(name, "-", &e))?;
        }
        Ok(Playbooks { env })
    }

    /// Renders `playbook` (`apply`, `teardown`) for a metal or vm.
    pub fn render(
        &self,
        playbook: &str,
        inv: &Inventory,
        host: &Host,
        run: &RunVars,
    ) -> Result<HostPlan, RenderError> {
        let name = format!("{playbook}.yaml.j2");
        let containers: Vec<&Host> = inv.containers_of(&host.name).collect();
        let ctx = minijinja::context! {
            host => host,
            containers => containers,
            interfaces => interfaces_for(host, &containers),
            session => &inv.session,
            run => run,
            params => &host.params,
        };
        let tmpl = self
            .env
            .get_template(&name)
            .map_err(|e| template_error(&name, &host.name, &e))?;
        let text = tmpl
            .render(&ctx)
            .map_err(|e| template_error(&name, &host.name, &e))?;
        let mut tasks = parse_steps(&name, &host.name, &text)?;
        if playbook == "apply" {
            tasks.extend(user_steps(inv, host));
        }
        let mut files = BTreeMap::new();
        for t in &tasks {
            if let Task::Render { template, dest, .. } = t {
                let fname = format!("files/{template}");
                let tmpl = self
                    .env
                    .get_template(&fname)
                    .map_err(|e| template_error(&fname, &host.name, &e))?;
                let content = tmpl
                    .render(&ctx)
                    .map_err(|e| template_error(&fname, &host.name, &e))?;
                files.insert(dest.clone(), content);
            }
        }
        Ok(HostPlan {
            host: host.name.clone(),
            playbook: playbook.to_string(),
            tasks,
            files,
        })
    }
}

/// The user's steps (steps.yaml) that run through `host`: its own and its containers'.
fn user_steps<'a>(inv: &'a Inventory, host: &'a Host) -> impl Iterator<Item = Task> + 'a {
    inv.steps
        .iter()
        .filter(move |s| {
            s.host == host.name
                || inv.hosts[&s.host].kind == crate::inventory::Kind::Container
                    && inv.hosts[&s.host].parent.as_deref() == Some(host.name.as_str())
        })
        .map(|s| Task::Step {
            on: s.host.clone(),
            action: s.action.clone(),
            at: s.location.to_string(),
        })
}

fn template_error(name: &str, host: &str, e: &minijinja::Error) -> RenderError {
    let mut message = e.to_string();
    if let Some(line) = e.line() {
        message = format!("line {line}: {message}");
    }
    if let Some(d) = e
        .display_debug_info()
        .to_string()
        .lines()
        .find(|l| l.trim_start().starts_with(">"))
    {
        message.push_str(&format!("\n  {}", d.trim()));
    }
    RenderError::Template {
        name: name.to_string(),
        host: host.to_string(),
        message,
    }
}

/// Reads rendered YAML as a list of tasks and checks what serde cannot (modes, absolute paths).
fn parse_steps(name: &str, host: &str, text: &str) -> Result<Vec<Task>, RenderError> {
    let err = |line: usize, column: usize, message: String| RenderError::Steps {
        name: name.to_string(),
        host: host.to_string(),
        line,
        column,
        message,
        text: text
            .lines()
            .nth(line.saturating_sub(1))
            .unwrap_or("")
            .trim()
            .to_string(),
    };
    let opts = marked_yaml::LoaderOptions::default()
        .toplevel_sequence()
        .error_on_duplicate_keys(true);
    let node = marked_yaml::parse_yaml_with_options(0, text, opts).map_err(|e| {
        let (l, c) = load_error_mark(&e);
        err(l, c, format!("not a YAML list of steps: {e}"))
    })?;
    let seq = node.as_sequence().expect("top level is a sequence");
    let mut tasks = Vec::new();
    for item in seq.iter() {
        let start = item
            .span()
            .start()
            .map(|m| (m.line(), m.column()))
            .unwrap_or((0, 0));
        let task: Task = marked_yaml::from_node(item).map_err(|e| {
            let (l, c) = e
                .start_mark()
                .map(|m| (m.line(), m.column()))
                .unwrap_or(start);
            err(l, c, format!("not a valid step: {e}"))
        })?;
        match &task {
            Task::Upload { mode, dest, .. } | Task::Render { mode, dest, .. } => {
                if parse_mode(mode).is_none() {
                    return Err(err(
                        start.0,
                        start.1,
                        format!("invalid mode `{mode}` (write it in octal, e.g. \"0755\")"),
                    ));
                }
                if !dest.is_absolute() {
                    return Err(err(
                        start.0,
                        start.1,
                        format!("destination {} is not absolute", dest.display()),
                    ));
                }
            }
            Task::Cleanup { paths } => {
                if let Some(p) = paths
                    .iter()
                    .find(|p| !p.is_absolute() || p.components().count() < 3)
                {
                    return Err(err(
                        start.0,
                        start.1,
                        format!(
                            "refusing to clean up {}: not a directory of its own",
                            p.display()
                        ),
                    ));
                }
            }
            _ => {}
        }
        tasks.push(task);
    }
    Ok(tasks)
}

fn load_error_mark(e: &marked_yaml::LoadError) -> (usize, usize) {
    use marked_yaml::LoadError::*;
    let m = match e {
        TopLevelMustBeMapping(m)
        | TopLevelMustBeSequence(m)
        | UnexpectedAnchor(m)
        | MappingKeyMustBeScalar(m)
        | UnexpectedTag(m)
        | ScanError(m, _) => Some(*m),
        DuplicateKey(d) => d.key.span().start().copied(),
    };
    m.map(|m| (m.line(), m.column())).unwrap_or((0, 0))
}

#[cfg(test)]
mod tests;

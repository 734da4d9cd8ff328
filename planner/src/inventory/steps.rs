//! The user's own steps (`steps.yaml` beside hosts.yaml): plays in the habits of Ansible users,
//! each naming the hosts or groups it targets and the steps it runs there, rendered per host with
//! minijinja. Checked completely at load time, like the rest of the inventory: a bad step is an
//! error with file:line:column, and nothing runs.
//!
//! ```yaml
//! - hosts: vm2                  # a host, a group, `all`, or a list of them
//!   steps:
//!     - start: {name: sink, command: "iperf3 -s -B {{ host.addresses[0] }}"}
//! - hosts: [ct1]
//!   steps:
//!     - run: {name: warm up, command: "ping -c1 {{ hostvars.vm2.addresses[0] }}", creates: /tmp/x}
//!     - start: {name: load, command: "iperf3 -c {{ hostvars.vm2.addresses[0] }} -t 600"}
//! ```
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use marked_yaml::types::MarkedMappingNode;
use marked_yaml::{Node, Span};
use minijinja::{Environment, UndefinedBehavior};
use serde::Serialize;

use super::error::{Location, Result};
use super::model::{Host, Inventory, Kind};
use super::source::Sources;
use super::tree::valid_name;

/// File names of the steps file in an inventory directory.
pub const STEPS_FILES: [&str; 2] = ["steps.yaml", "steps.yml"];

/// What a user step does on its host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StepAction {
    /// A one-shot command, run to completion before the next step; skipped when `creates` exists.
    Run {
        name: String,
        command: String,
        creates: Option<PathBuf>,
        #[serde(rename = "become")]
        become_root: bool,
    },
    /// A process started in the background once observers are up, stopped at the end of the
    /// session (and by teardown): a workload, a traffic generator.
    Start {
        name: String,
        command: String,
        #[serde(rename = "become")]
        become_root: bool,
    },
}

impl StepAction {
    pub fn name(&self) -> &str {
        match self {
            StepAction::Run { name, .. } | StepAction::Start { name, .. } => name,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            StepAction::Run { .. } => "run",
            StepAction::Start { .. } => "start",
        }
    }

    pub fn command(&self) -> &str {
        match self {
            StepAction::Run { command, .. } | StepAction::Start { command, .. } => command,
        }
    }
}

/// One user step for one host, rendered with that host's variables.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UserStep {
    /// Position of the step in steps.yaml (plays in order, steps in order): every host's step of
    /// one index finishes before any host starts the next one, as Ansible's linear strategy does.
    pub index: usize,
    /// The host it targets (a container's steps run inside its network namespace, on its parent).
    pub host: String,
    pub action: StepAction,
    /// Where the step is written.
    #[serde(serialize_with = "location_string")]
    pub location: Location,
}

fn location_string<S: serde::Serializer>(l: &Location, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&l.to_string())
}

/// The steps file of an inventory directory, if there is one.
pub fn find(dir: &Path) -> Option<PathBuf> {
    STEPS_FILES
        .iter()
        .map(|n| dir.join(n))
        .find(|p| p.is_file())
}

/// Reads, checks, targets and renders a steps file for the hosts of `inv`.
pub fn load(src: &mut Sources, path: &Path, inv: &Inventory) -> Result<Vec<UserStep>> {
    let root = src.parse_sequence_file(path)?;
    resolve(src, &root, inv)
}

/// Checks and renders a parsed steps file.
pub fn resolve(src: &Sources, root: &Node, inv: &Inventory) -> Result<Vec<UserStep>> {
    let plays = root
        .as_sequence()
        .ok_or_else(|| src.error(root.span(), "a steps file is a list of plays"))?;
    let env = environment();
    let hostvars: BTreeMap<&str, &Host> = inv.hosts.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut out = Vec::new();
    let mut index = 0;
    // Names of `start` steps per host: they name PID files, so they must be unique on a host.
    let mut started: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for play in plays.iter() {
        let m = mapping(src, play, "a play")?;
        check_keys(src, m, &["hosts", "name", "steps"], "a play")?;
        // A mapping's own span starts after its first key; point at that key instead.
        let at = m
            .iter()
            .next()
            .map(|(k, _)| *k.span())
            .unwrap_or(*play.span());
        let targets = targets(src, m, &at, inv)?;
        let steps = m.get_node("steps").ok_or_else(|| {
            src.error(&at, "a play without `steps:`")
                .hint("add `steps:` with a list of `run:` or `start:` steps")
        })?;
        let steps = steps
            .as_sequence()
            .ok_or_else(|| src.error(steps.span(), "`steps` must be a list"))?;
        for step in steps.iter() {
            let raw = raw_step(src, step)?;
            for h in &targets {
                let host = &inv.hosts[h];
                let ctx = minijinja::context! {
                    host => host,
                    params => &host.params,
                    session => &inv.session,
                    hostvars => &hostvars,
                };
                let action = raw.render(src, &env, &ctx, h)?;
                if let StepAction::Start { name, .. } = &action
                    && !started.entry(h.clone()).or_default().insert(name.clone())
                {
                    return Err(src
                        .error(
                            &raw.span,
                            format!("host `{h}` already has a `start` step named `{name}`"),
                        )
                        .hint("give each background process of a host its own name"));
                }
                out.push(UserStep {
                    index,
                    host: h.clone(),
                    action,
                    location: src.locate(&raw.span).unwrap_or_else(|| Location {
                        file: PathBuf::from("<steps>"),
                        line: 0,
                        column: 0,
                    }),
                });
            }
            index += 1;
        }
    }
    Ok(out)
}

fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    // A typo in a variable must fail at load time, never run as an empty string on a host.
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
    env
}

fn mapping<'a>(src: &Sources, n: &'a Node, what: &str) -> Result<&'a MarkedMappingNode> {
    n.as_mapping().ok_or_else(|| {
        src.error(
            n.span(),
            format!("{what} must be a mapping (`key: value` lines)"),
        )
    })
}

fn check_keys(src: &Sources, m: &MarkedMappingNode, allowed: &[&str], what: &str) -> Result<()> {
    for (k, _) in m.iter() {
        if !allowed.contains(&k.as_str()) {
            let hint = match k.as_str() {
                "tasks" => "latplan calls them `steps:`".to_string(),
                "shell" | "command" => "write `run: {name: …, command: …}` for a one-shot command, `start: {name: …, command: …}` for a background process".to_string(),
                _ => format!("known keys: {}", allowed.join(", ")),
            };
            return Err(src
                .error(k.span(), format!("unknown key `{}` in {what}", k.as_str()))
                .hint(hint));
        }
    }
    Ok(())
}

/// The hosts a play targets, in inventory order: host names, group names or `all`.
fn targets(
    src: &Sources,
    m: &MarkedMappingNode,
    span: &Span,
    inv: &Inventory,
) -> Result<Vec<String>> {
    let node = m.get_node("hosts").ok_or_else(|| {
        src.error(span, "a play without `hosts:`")
            .hint("name the hosts or groups it runs on: `hosts: web` or `hosts: [ct1, vm2]`")
    })?;
    let names: Vec<(&str, &Span)> = match node {
        Node::Scalar(s) => vec![(s.as_str(), s.span())],
        Node::Sequence(seq) => seq
            .iter()
            .map(|n| {
                n.as_scalar()
                    .map(|s| (s.as_str(), s.span()))
                    .ok_or_else(|| src.error(n.span(), "`hosts` lists host or group names"))
            })
            .collect::<Result<_>>()?,
        Node::Mapping(_) => {
            return Err(src.error(node.span(), "`hosts` is a name or a list of names"));
        }
    };
    if names.is_empty() {
        return Err(src.error(node.span(), "`hosts` names no host"));
    }
    let mut wanted = BTreeSet::new();
    for (name, sp) in names {
        if name == "all" {
            wanted.extend(inv.hosts.keys().cloned());
        } else if inv.hosts.contains_key(name) {
            wanted.insert(name.to_string());
        } else {
            let members: Vec<&String> = inv
                .hosts
                .values()
                .filter(|h| h.groups.iter().any(|g| g == name))
                .map(|h| &h.name)
                .collect();
            if members.is_empty() {
                return Err(src
                    .error(sp, format!("no host or group `{name}` in the inventory"))
                    .hint("name a host or group of hosts.yaml, or `all`"));
            }
            wanted.extend(members.into_iter().cloned());
        }
    }
    for h in &wanted {
        let host = &inv.hosts[h];
        if host.kind == Kind::Container && host.netns.is_none() {
            return Err(src
                .error(node.span(), format!("container `{h}` has no `netns`: its steps could not run inside it"))
                .hint("set the container's `netns:` (as named on its parent) or leave it out of the play"));
        }
    }
    Ok(inv
        .order
        .iter()
        .filter(|h| wanted.contains(*h))
        .cloned()
        .collect())
}

/// A step as written, before rendering: its kind, fields (with their spans) and location.
struct RawStep<'a> {
    kind: &'static str,
    span: Span,
    name: &'a marked_yaml::types::MarkedScalarNode,
    command: &'a marked_yaml::types::MarkedScalarNode,
    creates: Option<&'a marked_yaml::types::MarkedScalarNode>,
    become_root: bool,
}

fn raw_step<'a>(src: &Sources, step: &'a Node) -> Result<RawStep<'a>> {
    let m = mapping(src, step, "a step")?;
    if m.len() != 1 {
        return Err(src
            .error(step.span(), "a step has exactly one key: `run` or `start`")
            .hint("write each step as its own list item: `- run: {…}`"));
    }
    let (k, body) = m.iter().next().expect("one key");
    let (kind, allowed): (&'static str, &[&str]) = match k.as_str() {
        "run" => ("run", &["name", "command", "creates", "become"]),
        "start" => ("start", &["name", "command", "become"]),
        other => {
            let hint = match other {
                "shell" | "command" => "latplan's one-shot step is `run: {name: …, command: …}`",
                "async" | "background" | "service" => {
                    "a background process is `start: {name: …, command: …}`"
                }
                _ => {
                    "a user step is `run` (one-shot) or `start` (a background process for the session)"
                }
            };
            return Err(src
                .error(k.span(), format!("unknown step `{other}`"))
                .hint(hint));
        }
    };
    let body = mapping(src, body, &format!("`{kind}`"))?;
    check_keys(src, body, allowed, &format!("`{kind}`"))?;
    let scalar = |key: &str| -> Result<Option<&'a marked_yaml::types::MarkedScalarNode>> {
        match body.get_node(key) {
            None => Ok(None),
            Some(n) => n
                .as_scalar()
                .map(Some)
                .ok_or_else(|| src.error(n.span(), format!("`{key}` must be a string"))),
        }
    };
    let required = |key: &str| -> Result<&'a marked_yaml::types::MarkedScalarNode> {
        scalar(key)?.ok_or_else(|| src.error(k.span(), format!("`{kind}` needs `{key}:`")))
    };
    let name = required("name")?;
    let command = required("command")?;
    if !valid_name(name.as_str()) {
        return Err(src
            .error(name.span(), format!("invalid step name `{}`", name.as_str()))
            .hint("letters, digits, `-`, `_`, `.`, starting with a letter or digit, at most 64 characters (it names the step's PID and log files)"));
    }
    if command.as_str().trim().is_empty() {
        return Err(src.error(command.span(), "`command` is empty"));
    }
    let become_root = match scalar("become")? {
        None => false,
        Some(b) => match b.as_str() {
            "true" | "yes" => true,
            "false" | "no" => false,
            _ => return Err(src.error(b.span(), "`become`: expected true or false")),
        },
    };
    Ok(RawStep {
        kind,
        // The step's key (`run:`, `start:`): where an editor should jump.
        span: *k.span(),
        name,
        command,
        creates: scalar("creates")?,
        become_root,
    })
}

impl RawStep<'_> {
    fn render(
        &self,
        src: &Sources,
        env: &Environment<'static>,
        ctx: &minijinja::Value,
        host: &str,
    ) -> Result<StepAction> {
        let render = |n: &marked_yaml::types::MarkedScalarNode| -> Result<String> {
            env.render_str(n.as_str(), ctx).map_err(|e| {
                let mut msg = format!("for host `{host}`: {}", e.kind());
                if let Some(d) = e.detail() {
                    msg.push_str(&format!(": {d}"));
                }
                src.error(n.span(), msg)
                    .hint("variables: host, params, session, hostvars (every host by name)")
            })
        };
        let name = self.name.as_str().to_string();
        let command = render(self.command)?;
        Ok(match self.kind {
            "run" => {
                let creates = match self.creates {
                    None => None,
                    Some(c) => {
                        let p = PathBuf::from(render(c)?);
                        if !p.is_absolute() {
                            return Err(src.error(
                                c.span(),
                                format!("`creates` {} is not absolute", p.display()),
                            ));
                        }
                        Some(p)
                    }
                };
                StepAction::Run {
                    name,
                    command,
                    creates,
                    become_root: self.become_root,
                }
            }
            _ => StepAction::Start {
                name,
                command,
                become_root: self.become_root,
            },
        })
    }
}

#[cfg(test)]
mod tests;

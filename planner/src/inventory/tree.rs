//! The group/host tree of an inventory file, Ansible style:
//!
//! ```yaml
//! all:
//!   vars: {...}            # defaults for every host
//!   hosts:
//!     NAME: {...}          # a host, defined once; `NAME:` alone elsewhere just adds membership
//!   children:
//!     GROUP:
//!       vars: {...}
//!       hosts: {...}
//!       children: {...}
//! ```
//!
//! A host may also nest its guests (`guests: {vm1: {...}}`): they get it as their parent.
//! This module only collects the tree; merging and validation happen in `resolve`.
use std::collections::{BTreeMap, BTreeSet};

use marked_yaml::types::{MarkedMappingNode, MarkedScalarNode};
use marked_yaml::{Node, Span};

use super::error::{InventoryError, Result};
use super::source::Sources;

pub const ALL: &str = "all";

#[derive(Debug)]
pub struct Group {
    /// Where the group was (first) named.
    pub span: Span,
    /// Its variables, lowest priority first (inline `vars:`, then group_vars/NAME.yaml).
    pub vars: Vec<Node>,
    pub parents: BTreeSet<String>,
    /// Whether a body (`vars`, `hosts` or `children`) was given, to catch a group defined twice.
    body_at: Option<Span>,
}

#[derive(Debug)]
pub struct HostDef {
    pub name: String,
    pub span: Span,
    /// The host's own settings, lowest priority first (inline, then host_vars/NAME.yaml).
    pub own: Vec<Node>,
    /// Groups the host is directly listed in.
    pub groups: BTreeSet<String>,
    /// Set when the host is nested under another host's `guests:`.
    pub implicit_parent: Option<(String, Span)>,
    body_at: Option<Span>,
}

#[derive(Debug, Default)]
pub struct Tree {
    pub groups: BTreeMap<String, Group>,
    pub hosts: BTreeMap<String, HostDef>,
    /// Host names in the order they first appear, so output follows the file.
    pub order: Vec<String>,
}

impl Tree {
    /// Collects groups and hosts from the root mapping of hosts.yaml.
    pub fn collect(src: &Sources, root: &Node) -> Result<Tree> {
        let mut t = Tree::default();
        let root = expect_mapping(src, root, "the inventory file")?;
        for (k, v) in root.iter() {
            let parent = if k.as_str() == ALL { None } else { Some(ALL) };
            t.walk_group(src, k, v, parent)?;
        }
        if !t.groups.contains_key(ALL) {
            t.groups.insert(ALL.into(), Group::new(*root.span()));
        }
        t.check_names(src)?;
        Ok(t)
    }

    fn walk_group(
        &mut self,
        src: &Sources,
        key: &MarkedScalarNode,
        body: &Node,
        parent: Option<&str>,
    ) -> Result<()> {
        let name = key.as_str();
        check_name(src, key, "group")?;
        let g = self
            .groups
            .entry(name.to_string())
            .or_insert_with(|| Group::new(*key.span()));
        if let Some(p) = parent {
            g.parents.insert(p.to_string());
        }
        if is_null(body) {
            return Ok(());
        }
        let map = expect_mapping(src, body, &format!("group `{name}`"))?;
        if let Some(first) = g.body_at {
            return Err(src
                .error(key.span(), format!("group `{name}` is defined twice{}", at(src, &first)))
                .hint("give a group's vars, hosts and children in one place; elsewhere list it with no value"));
        }
        g.body_at = Some(*key.span());
        for (k, v) in map.iter() {
            match k.as_str() {
                "vars" => {
                    expect_mapping(src, v, &format!("`vars` of group `{name}`"))?;
                    self.groups
                        .get_mut(name)
                        .expect("inserted above")
                        .vars
                        .push(v.clone());
                }
                "hosts" => {
                    if is_null(v) {
                        continue;
                    }
                    for (hk, hv) in
                        expect_mapping(src, v, &format!("`hosts` of group `{name}`"))?.iter()
                    {
                        self.walk_host(src, hk, hv, name, None)?;
                    }
                }
                "children" => {
                    if is_null(v) {
                        continue;
                    }
                    for (ck, cv) in
                        expect_mapping(src, v, &format!("`children` of group `{name}`"))?.iter()
                    {
                        if ck.as_str() == ALL {
                            return Err(src
                                .error(ck.span(), "`all` cannot be a child group")
                                .hint("`all` is the root of every inventory"));
                        }
                        self.walk_group(src, ck, cv, Some(name))?;
                    }
                }
                other => {
                    return Err(src
                        .error(k.span(), format!("unknown key `{other}` in group `{name}`"))
                        .hint("a group holds `vars:`, `hosts:` and `children:`; host settings go under `vars:`"));
                }
            }
        }
        Ok(())
    }

    fn walk_host(
        &mut self,
        src: &Sources,
        key: &MarkedScalarNode,
        body: &Node,
        group: &str,
        implicit_parent: Option<(String, Span)>,
    ) -> Result<()> {
        let name = key.as_str().to_string();
        check_name(src, key, "host")?;
        if !self.hosts.contains_key(&name) {
            self.order.push(name.clone());
        }
        let h = self.hosts.entry(name.clone()).or_insert_with(|| HostDef {
            name: name.clone(),
            span: *key.span(),
            own: Vec::new(),
            groups: BTreeSet::new(),
            implicit_parent: None,
            body_at: None,
        });
        h.groups.insert(group.to_string());
        if is_null(body) {
            if implicit_parent.is_some() {
                h.implicit_parent = implicit_parent;
            }
            return Ok(());
        }
        let map = expect_mapping(src, body, &format!("host `{name}`"))?;
        if let Some(first) = h.body_at {
            return Err(src
                .error(key.span(), format!("host `{name}` is defined twice{}", at(src, &first)))
                .hint(format!(
                    "define a host once; list it in other groups with no value (`{name}:`), or move its settings to host_vars/{name}.yaml"
                )));
        }
        h.body_at = Some(*key.span());
        if implicit_parent.is_some() {
            h.implicit_parent = implicit_parent;
        }
        let mut own = map.clone();
        let guests = own.remove("guests");
        h.own.push(Node::Mapping(own));
        if let Some(guests) = guests {
            if is_null(&guests) {
                return Ok(());
            }
            let gmap = expect_mapping(src, &guests, &format!("`guests` of host `{name}`"))?.clone();
            for (gk, gv) in gmap.iter() {
                self.walk_host(src, gk, gv, group, Some((name.clone(), *gk.span())))?;
            }
        }
        Ok(())
    }

    /// Hosts and groups share one namespace (a name must say which one it is).
    fn check_names(&self, src: &Sources) -> Result<()> {
        for h in self.hosts.values() {
            if let Some(g) = self.groups.get(&h.name) {
                return Err(src
                    .error(
                        &h.span,
                        format!(
                            "`{}` is both a host and a group{}",
                            h.name,
                            at(src, &g.span)
                        ),
                    )
                    .hint("rename one of them"));
            }
        }
        Ok(())
    }

    /// Depth of each group below `all` (the longest path), rejecting cycles of `children`.
    pub fn group_depths(&self, src: &Sources) -> Result<BTreeMap<String, usize>> {
        fn depth(
            t: &Tree,
            src: &Sources,
            name: &str,
            memo: &mut BTreeMap<String, usize>,
            stack: &mut Vec<String>,
        ) -> Result<usize> {
            if let Some(d) = memo.get(name) {
                return Ok(*d);
            }
            if stack.iter().any(|s| s == name) {
                stack.push(name.to_string());
                let g = &t.groups[name];
                return Err(src
                    .error(
                        &g.span,
                        format!("groups form a cycle: {}", stack.join(" → ")),
                    )
                    .hint("a group cannot be (indirectly) its own child"));
            }
            stack.push(name.to_string());
            let g = &t.groups[name];
            let mut d = 0;
            for p in &g.parents {
                d = d.max(depth(t, src, p, memo, stack)? + 1);
            }
            stack.pop();
            memo.insert(name.to_string(), d);
            Ok(d)
        }
        let mut memo = BTreeMap::new();
        for name in self.groups.keys() {
            depth(self, src, name, &mut memo, &mut Vec::new())?;
        }
        Ok(memo)
    }

    /// All groups a host belongs to, directly or through `children`, `all` excluded.
    pub fn host_groups(&self, host: &HostDef) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        let mut todo: Vec<String> = host.groups.iter().cloned().collect();
        while let Some(g) = todo.pop() {
            if g == ALL || !out.insert(g.clone()) {
                continue;
            }
            todo.extend(self.groups[&g].parents.iter().cloned());
        }
        out
    }
}

impl Group {
    fn new(span: Span) -> Self {
        Group {
            span,
            vars: Vec::new(),
            parents: BTreeSet::new(),
            body_at: None,
        }
    }
}

fn at(src: &Sources, span: &Span) -> String {
    src.locate(span)
        .map(|l| format!(" (first at {l})"))
        .unwrap_or_default()
}

pub fn is_null(n: &Node) -> bool {
    matches!(n, Node::Scalar(s) if s.may_coerce() && matches!(s.as_str(), "" | "~" | "null" | "Null" | "NULL"))
}

pub fn expect_mapping<'a>(src: &Sources, n: &'a Node, what: &str) -> Result<&'a MarkedMappingNode> {
    n.as_mapping().ok_or_else(|| {
        src.error(
            n.span(),
            format!("{what} must be a mapping (`key: value` lines)"),
        )
    })
}

/// Host and group names end up in paths, unit names and table columns: keep them plain.
pub fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn check_name(src: &Sources, key: &MarkedScalarNode, what: &str) -> Result<()> {
    if valid_name(key.as_str()) {
        Ok(())
    } else {
        Err(InventoryError::new(src.locate(key.span()), format!("invalid {what} name `{}`", key.as_str()))
            .hint("names start with a letter or digit and hold only letters, digits, `-`, `_` and `.` (at most 64)"))
    }
}

/// Secrets never live in inventory files: any password-like key anywhere is refused, with the way to
/// do it instead.
pub fn reject_secrets(src: &Sources, n: &Node) -> Result<()> {
    match n {
        Node::Mapping(m) => {
            for (k, v) in m.iter() {
                let key = k.as_str().to_ascii_lowercase();
                if key.contains("password")
                    || key.contains("passwd")
                    || key == "pass"
                    || key.ends_with("_pass")
                {
                    return Err(src
                        .error(k.span(), format!("`{}`: inventory files must not hold passwords", k.as_str()))
                        .hint(
                            "log in with an SSH key (ssh.identity_file, or keys loaded in ssh-agent, or a ~/.ssh/config alias); \
                             for a non-root user set `become: true` and allow passwordless sudo (sudo -n); \
                             store and Redis passwords come from LATPLAN_STORE_PASSWORD / LATPLAN_BUS_PASSWORD \
                             or a file readable only by you (session.store_secret_file / session.bus_secret_file, mode 0600)",
                        ));
                }
                reject_secrets(src, v)?;
            }
        }
        Node::Sequence(s) => {
            for v in s.iter() {
                reject_secrets(src, v)?;
            }
        }
        Node::Scalar(_) => {}
    }
    Ok(())
}

//! From the collected tree to validated hosts: inheritance, typed settings, the hierarchy.
//!
//! Inheritance (lowest priority first; later layers win, mappings merge key by key):
//! 1. `all`'s vars (hosts.yaml, then group_vars/all.yaml)
//! 2. every other group the host is in, shallowest first (a child group beats its parent),
//!    ties broken by group name; for each: inline `vars:`, then group_vars/NAME.yaml
//! 3. the host's own entry, then host_vars/NAME.yaml
use std::collections::{BTreeMap, BTreeSet};

use marked_yaml::{Node, Span, Spanned};
use serde::Deserialize;
use serde::de::IgnoredAny;

use super::error::Result;
use super::merge::merge_all;
use super::model::*;
use super::source::Sources;
use super::tree::{ALL, HostDef, Tree};
use super::values::*;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHost {
    kind: Option<Spanned<String>>,
    parent: Option<Spanned<String>>,
    connection: Option<Spanned<String>>,
    address: Option<Spanned<String>>,
    install_dir: Option<Spanned<String>>,
    interfaces: Option<Vec<Spanned<String>>>,
    host_interface: Option<Spanned<String>>,
    addresses: Option<Vec<Spanned<String>>>,
    netns: Option<Spanned<String>>,
    clock_domain: Option<Spanned<String>>,
    ssh: Option<RawSsh>,
    #[serde(rename = "become")]
    become_root: Option<bool>,
    // Opaque: only accepted here; read from the merged node as JSON.
    #[serde(rename = "lab")]
    _lab: Option<IgnoredAny>,
    #[serde(rename = "params")]
    _params: Option<IgnoredAny>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSsh {
    user: Option<Spanned<String>>,
    port: Option<Spanned<u16>>,
    identity_file: Option<Spanned<String>>,
    known_hosts_file: Option<Spanned<String>>,
    config_alias: Option<Spanned<String>>,
    config_file: Option<Spanned<String>>,
    accept_new_host_keys: Option<bool>,
    connect_timeout: Option<Spanned<u64>>,
    command_timeout: Option<Spanned<u64>>,
    control_persist: Option<Spanned<u64>>,
}

/// Keys a container may not set itself: containers are never reached.
const NOT_FOR_CONTAINERS: &[&str] = &["address", "ssh", "become", "install_dir", "connection"];

/// Hints for keys people bring from Ansible or from habit.
pub fn host_key_hint(key: &str) -> Option<String> {
    let h = match key {
        "ansible_host" | "host" | "hostname" | "ip" => "the SSH target is `address`",
        "ansible_user" | "user" | "username" => "the login user is `ssh: {user: NAME}`",
        "ansible_port" | "port" => "the SSH port is `ssh: {port: N}`",
        "ansible_ssh_private_key_file" | "identity_file" | "key" => {
            "the key is `ssh: {identity_file: PATH}`"
        }
        "ansible_become" | "sudo" => "use `become: true`",
        "session" => {
            "session settings apply to the whole inventory: put them in all's vars (`all: {vars: {session: ...}}`) or group_vars/all.yaml"
        }
        "vars" => {
            "a host's settings are written directly under the host; your own variables go under `params:`"
        }
        "eth" | "interface" => "the interfaces to observe are `interfaces: [NAME, ...]`",
        _ => {
            return Some(format!(
                "known host keys: {}; your own variables go under `params:`",
                HOST_KEYS.join(", ")
            ));
        }
    };
    Some(h.to_string())
}

const HOST_KEYS: &[&str] = &[
    "kind",
    "parent",
    "connection",
    "address",
    "install_dir",
    "interfaces",
    "host_interface",
    "addresses",
    "netns",
    "clock_domain",
    "ssh",
    "become",
    "lab",
    "params",
];

const SSH_KEYS: &[&str] = &[
    "user",
    "port",
    "identity_file",
    "known_hosts_file",
    "config_alias",
    "config_file",
    "accept_new_host_keys",
    "connect_timeout",
    "command_timeout",
    "control_persist",
];

fn ssh_key_hint(_key: &str) -> Option<String> {
    Some(format!(
        "known ssh keys: {}; other OpenSSH options belong in ~/.ssh/config under a Host alias, named here as config_alias",
        SSH_KEYS.join(", ")
    ))
}

/// A host before the cross-host checks (parents, clock domains).
struct Partial {
    host: Host,
    span: Span,
    parent_span: Option<Span>,
    explicit_domain: Option<Spanned<String>>,
}

pub fn resolve_hosts(
    src: &Sources,
    tree: &Tree,
    all_vars: &[Node],
) -> Result<BTreeMap<String, Host>> {
    let depths = tree.group_depths(src)?;
    let mut partial = BTreeMap::new();
    for name in &tree.order {
        let def = &tree.hosts[name];
        let groups = tree.host_groups(def);
        let mut ordered: Vec<&String> = groups.iter().collect();
        ordered.sort_by_key(|g| (depths[*g], (*g).clone()));
        let mut layers: Vec<Node> = all_vars.to_vec();
        for g in &ordered {
            layers.extend(tree.groups[*g].vars.iter().cloned());
        }
        layers.extend(def.own.iter().cloned());
        let merged = merge_all(def.span, layers);
        let p = resolve_one(src, def, &merged, ordered.into_iter().cloned().collect())?;
        partial.insert(name.clone(), p);
    }
    link_parents(src, &mut partial)?;
    Ok(partial.into_iter().map(|(k, p)| (k, p.host)).collect())
}

fn resolve_one(
    src: &Sources,
    def: &HostDef,
    merged: &Node,
    groups: Vec<String>,
) -> Result<Partial> {
    let name = &def.name;
    let what = format!("host `{name}`");
    check_keys(src, merged, HOST_KEYS, &what, host_key_hint)?;
    if let Some(ssh) = merged.as_mapping().and_then(|m| m.get_node("ssh")) {
        check_keys(
            src,
            ssh,
            SSH_KEYS,
            &format!("`ssh` of host `{name}`"),
            ssh_key_hint,
        )?;
    }
    let raw: RawHost = from_node(src, merged, &what, host_key_hint)?;
    let err = |span: &Span, msg: String| src.error(span, msg);

    let explicit_parent = raw
        .parent
        .as_ref()
        .map(|p| (p.as_str().to_string(), *p.span()));
    let parent = match (&explicit_parent, &def.implicit_parent) {
        (Some((p, ps)), Some((ip, _))) if p != ip => {
            return Err(err(
                ps,
                format!("{what} is nested under `{ip}` but names `{p}` as its parent"),
            )
            .hint("remove `parent:` (nesting already sets it) or move the host out of `guests:`"));
        }
        (Some(p), _) => Some(p.clone()),
        (None, Some(p)) => Some(p.clone()),
        (None, None) => None,
    };

    let kind = match &raw.kind {
        Some(k) => match k.as_str() {
            "metal" => Kind::Metal,
            "vm" => Kind::Vm,
            "container" => Kind::Container,
            other => {
                return Err(err(k.span(), format!("{what}: unknown kind `{other}`"))
                    .hint("kind is one of: metal (own hardware), vm (own kernel on a parent), container (shares its parent's kernel)"));
            }
        },
        None if def.implicit_parent.is_some() => Kind::Vm,
        None if parent.is_some() => {
            return Err(
                err(&def.span, format!("{what} names a parent but no kind")).hint(
                    "set `kind: vm` (own kernel) or `kind: container` (shares its parent's kernel)",
                ),
            );
        }
        None => Kind::Metal,
    };

    if kind == Kind::Container {
        for own in &def.own {
            if let Some(m) = own.as_mapping() {
                for (k, _) in m.iter() {
                    if NOT_FOR_CONTAINERS.contains(&k.as_str()) {
                        return Err(err(k.span(), format!("container `{name}` sets `{}`, but containers are never reached over SSH", k.as_str()))
                            .hint("its parent's observer covers it: identify it with netns, host_interface and addresses, and remove this key"));
                    }
                }
            }
        }
    }

    let connection = match &raw.connection {
        None => Connection::Ssh,
        Some(c) => match c.as_str() {
            "ssh" => Connection::Ssh,
            "local" => Connection::Local,
            other => {
                return Err(
                    err(c.span(), format!("{what}: unknown connection `{other}`"))
                        .hint("connection is `ssh` (default) or `local` (the manager itself)"),
                );
            }
        },
    };

    let mut interfaces = Vec::new();
    let mut seen = BTreeSet::new();
    for i in raw.interfaces.iter().flatten() {
        let n = check_ifname(src, i)?;
        if !seen.insert(n.clone()) {
            return Err(
                err(i.span(), format!("{what}: interface `{n}` is listed twice"))
                    .hint("list each interface once"),
            );
        }
        interfaces.push(n);
    }
    let addresses = raw
        .addresses
        .iter()
        .flatten()
        .map(|a| check_ip(src, a))
        .collect::<Result<Vec<_>>>()?;
    let host_interface = match &raw.host_interface {
        Some(h) if kind != Kind::Container => {
            return Err(err(
                h.span(),
                format!("{what}: host_interface is only for containers"),
            )
            .hint("for a metal or vm, list the interfaces to observe under `interfaces:`"));
        }
        Some(h) => Some(check_ifname(src, h)?),
        None => None,
    };
    let netns = raw
        .netns
        .as_ref()
        .map(|n| check_word(src, n, "netns"))
        .transpose()?;
    if let Some(d) = &raw.clock_domain {
        check_word(src, d, "clock_domain")?;
    }

    let (address, ssh, install_dir, become_root, connection) = if kind == Kind::Container {
        if netns.is_none() && host_interface.is_none() {
            return Err(err(&def.span, format!("container `{name}` cannot be identified"))
                .hint("give its network namespace (`netns:`) and/or its parent's end of its link (`host_interface:`), plus `addresses:`"));
        }
        (None, None, None, false, Connection::Ssh)
    } else {
        let ssh = match &raw.ssh {
            Some(s) => ssh_settings(src, s)?,
            None => default_ssh(),
        };
        let address = raw
            .address
            .as_ref()
            .map(|a| check_address(src, a))
            .transpose()?;
        if connection == Connection::Ssh && address.is_none() && ssh.config_alias.is_none() {
            return Err(err(&def.span, format!("{what} has no address"))
                .hint("set `address: IP-or-name`, or `ssh: {config_alias: ALIAS}` naming a Host in ~/.ssh/config, or `connection: local` for the manager itself"));
        }
        let install_dir = match &raw.install_dir {
            Some(d) => check_install_dir(src, d)?,
            None => DEFAULT_INSTALL_DIR.into(),
        };
        let ssh = (connection == Connection::Ssh).then_some(ssh);
        (
            address,
            ssh,
            Some(install_dir),
            raw.become_root.unwrap_or(false),
            connection,
        )
    };

    let merged_map = merged.as_mapping();
    let lab = merged_map
        .and_then(|m| m.get_node("lab"))
        .map(to_json)
        .unwrap_or_else(|| serde_json::json!({}));
    let params = merged_map
        .and_then(|m| m.get_node("params"))
        .map(to_json)
        .unwrap_or_else(|| serde_json::json!({}));

    Ok(Partial {
        host: Host {
            name: name.clone(),
            kind,
            parent: parent.as_ref().map(|p| p.0.clone()),
            address,
            connection,
            install_dir,
            interfaces,
            host_interface,
            addresses,
            netns,
            clock_domain: String::new(),
            ssh,
            become_root,
            lab,
            params,
            groups: groups.into_iter().filter(|g| g != ALL).collect(),
        },
        span: def.span,
        parent_span: parent.map(|p| p.1),
        explicit_domain: raw.clock_domain,
    })
}

fn default_ssh() -> SshSettings {
    SshSettings {
        user: None,
        port: None,
        identity_file: None,
        known_hosts_file: None,
        config_alias: None,
        config_file: None,
        accept_new_host_keys: false,
        connect_timeout: DEFAULT_CONNECT_TIMEOUT,
        command_timeout: DEFAULT_COMMAND_TIMEOUT,
        control_persist: 0,
    }
}

fn ssh_settings(src: &Sources, s: &RawSsh) -> Result<SshSettings> {
    if let Some(p) = &s.port
        && **p == 0
    {
        return Err(src
            .error(p.span(), "ssh port 0 is not a port")
            .hint("use 1–65535 (22 is the default)"));
    }
    for t in [&s.connect_timeout, &s.command_timeout]
        .into_iter()
        .flatten()
    {
        if **t == 0 {
            return Err(src
                .error(t.span(), "a timeout of 0 seconds would fail every host")
                .hint("give seconds, e.g. 10"));
        }
    }
    Ok(SshSettings {
        user: s
            .user
            .as_ref()
            .map(|u| check_word(src, u, "ssh user"))
            .transpose()?,
        port: s.port.as_ref().map(|p| **p),
        identity_file: s
            .identity_file
            .as_ref()
            .map(|p| check_path(src, p, "identity_file"))
            .transpose()?,
        known_hosts_file: s
            .known_hosts_file
            .as_ref()
            .map(|p| check_path(src, p, "known_hosts_file"))
            .transpose()?,
        config_alias: s
            .config_alias
            .as_ref()
            .map(|a| check_word(src, a, "config_alias"))
            .transpose()?,
        config_file: s
            .config_file
            .as_ref()
            .map(|p| check_path(src, p, "config_file"))
            .transpose()?,
        accept_new_host_keys: s.accept_new_host_keys.unwrap_or(false),
        connect_timeout: s
            .connect_timeout
            .as_ref()
            .map(|t| **t)
            .unwrap_or(DEFAULT_CONNECT_TIMEOUT),
        command_timeout: s
            .command_timeout
            .as_ref()
            .map(|t| **t)
            .unwrap_or(DEFAULT_COMMAND_TIMEOUT),
        control_persist: s.control_persist.as_ref().map(|t| **t).unwrap_or(0),
    })
}

/// Parents exist, fit the kinds, form no cycle; then clock domains are settled.
fn link_parents(src: &Sources, hosts: &mut BTreeMap<String, Partial>) -> Result<()> {
    let names: Vec<String> = hosts.keys().cloned().collect();
    for name in &names {
        let p = &hosts[name];
        let what = format!("host `{name}`");
        match (&p.host.parent, p.host.kind) {
            (Some(_), Kind::Metal) => {
                return Err(src
                    .error(p.parent_span.as_ref().unwrap_or(&p.span), format!("{what} is a metal but names a parent"))
                    .hint("a metal runs on its own hardware: remove `parent:`, or set `kind: vm` / `kind: container`"));
            }
            (None, Kind::Vm | Kind::Container) => {
                return Err(src
                    .error(&p.span, format!("{what} is a {} but names no parent", p.host.kind.as_str()))
                    .hint("set `parent: NAME` to the metal (or vm) it runs on, or nest it under that host's `guests:`"));
            }
            (Some(parent), kind) => {
                let span = p.parent_span.as_ref().unwrap_or(&p.span);
                let Some(pp) = hosts.get(parent) else {
                    let e = src.error(
                        span,
                        format!("{what}: parent `{parent}` is not a host in this inventory"),
                    );
                    let hint = match closest(parent, names.iter().map(String::as_str)) {
                        Some(c) => format!("did you mean `{c}`?"),
                        None => "define the parent host, or fix the name".to_string(),
                    };
                    return Err(e.hint(hint));
                };
                if pp.host.kind == Kind::Container {
                    return Err(src
                        .error(span, format!("{what}: parent `{parent}` is a container"))
                        .hint(format!("a {} runs on a metal or a vm; containers share a kernel and host nothing", kind.as_str())));
                }
            }
            (None, Kind::Metal) => {}
        }
    }
    // Cycles: walk up from every host; a chain longer than the host count loops.
    for name in &names {
        let mut chain = vec![name.clone()];
        let mut cur = name.clone();
        while let Some(parent) = hosts[&cur].host.parent.clone() {
            if chain.contains(&parent) {
                chain.push(parent);
                let p = &hosts[name];
                return Err(src
                    .error(
                        p.parent_span.as_ref().unwrap_or(&p.span),
                        format!("parents form a cycle: {}", chain.join(" → ")),
                    )
                    .hint("every chain of parents must end at a metal"));
            }
            chain.push(parent.clone());
            cur = parent;
        }
    }
    // Clock domains: a kernel host's own name unless given; a container shares its parent's kernel.
    for name in &names {
        let mut cur = name.clone();
        while hosts[&cur].host.kind == Kind::Container {
            cur = hosts[&cur].host.parent.clone().expect("checked above");
        }
        let domain = hosts[&cur]
            .explicit_domain
            .as_ref()
            .map(|d| d.as_str().to_string())
            .unwrap_or_else(|| cur.clone());
        hosts.get_mut(name).expect("known").host.clock_domain = domain;
    }
    Ok(())
}

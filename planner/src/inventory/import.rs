//! `latplan import`: the original tool's configuration directory → our inventory.
//!
//! Read: connect_info.yaml (servers), sampling_info.yaml, ping_info.yaml, database_info.yaml,
//! redis_info.yaml, management_server_info.yaml, function_info.yaml. Only connect_info.yaml is
//! required. Passwords are never copied: each one dropped is a warning saying what to do instead.
//! The output is checked by loading it before anything is written.
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde_json::{Map, Value, json};

use super::source::Sources;
use super::values::to_json;

/// The converted inventory (hosts.yaml text) and what the user must know or do.
#[derive(Debug)]
pub struct Imported {
    pub hosts_yaml: String,
    pub warnings: Vec<String>,
}

fn read(dir: &Path, name: &str) -> anyhow::Result<Option<Value>> {
    let p = dir.join(name);
    if !p.exists() {
        return Ok(None);
    }
    let mut src = Sources::default();
    let node = src.parse_file(&p).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(Some(to_json(&node)))
}

fn s(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn list(v: Option<&Value>) -> Vec<String> {
    match v {
        Some(Value::Array(a)) => a.iter().filter_map(s).collect(),
        Some(other) => s(other).into_iter().collect(),
        None => vec![],
    }
}

/// A name our inventory accepts, derived from the original key.
fn sanitize(key: &str) -> String {
    let mut n: String = key
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect();
    if !n.chars().next().is_some_and(|c| c.is_ascii_alphanumeric()) {
        n.insert(0, 'h');
    }
    n.truncate(64);
    n
}

/// Converts the directory. Does not write anything.
pub fn convert(dir: &Path) -> anyhow::Result<Imported> {
    let mut warnings = Vec::new();
    let connect = read(dir, "connect_info.yaml")?.with_context(|| {
        format!(
            "{} has no connect_info.yaml: is it the original tool's conf/ directory?",
            dir.display()
        )
    })?;
    // `servers:` is a mapping of key → entry (or, in some copies, a list of entries).
    let entries: Vec<(String, Map<String, Value>)> = match connect.get("servers") {
        Some(Value::Object(m)) => m
            .iter()
            .filter_map(|(k, v)| v.as_object().map(|o| (k.clone(), o.clone())))
            .collect(),
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|v| v.as_object())
            .enumerate()
            .map(|(i, o)| {
                let key = ["novm", "metadata_key", "hostname", "address"]
                    .iter()
                    .find_map(|k| o.get(*k).and_then(s))
                    .unwrap_or_else(|| format!("server{i}"));
                (key, o.clone())
            })
            .collect(),
        _ => bail!("connect_info.yaml: no `servers:` entries"),
    };
    // Any identifier an entry may be referred to by (isvm/iscontainer name "host keys").
    let mut alias: BTreeMap<String, String> = BTreeMap::new();
    for (key, e) in &entries {
        let name = sanitize(key);
        for k in ["novm", "metadata_key", "hostname"] {
            if let Some(v) = e.get(k).and_then(s) {
                alias.entry(v).or_insert_with(|| name.clone());
            }
        }
        alias.insert(key.clone(), name);
    }
    let ping = read(dir, "ping_info.yaml")?;
    let ping_eth: BTreeMap<String, String> = ping
        .as_ref()
        .and_then(|p| p.get("servers"))
        .and_then(|v| v.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|e| Some((e.get("address").and_then(s)?, e.get("eth").and_then(s)?)))
                .collect()
        })
        .unwrap_or_default();

    let mut hosts = Map::new();
    for (key, e) in &entries {
        let name = alias[key].clone();
        if name != *key {
            warnings.push(format!("connect_info.yaml: `{key}` is named `{name}` (host names are letters, digits, `-`, `_`, `.`)"));
        }
        let mut h = Map::new();
        let address = e.get("address").and_then(s);
        let mut eth = list(e.get("eth"));
        let parent_of = |field: &str| {
            e.get(field)
                .and_then(s)
                .map(|p| alias.get(&p).cloned().ok_or(p))
        };
        if let Some(p) = parent_of("iscontainer") {
            let p = p.map_err(|p| {
                anyhow::anyhow!(
                    "connect_info.yaml: `{key}` is a container of `{p}`, which is not a server"
                )
            })?;
            h.insert("kind".into(), json!("container"));
            h.insert("parent".into(), json!(p));
            // The original tool found containers by address; we also need the namespace.
            let netns = e
                .get("hostname")
                .and_then(s)
                .map(|n| sanitize(&n))
                .unwrap_or_else(|| name.clone());
            h.insert("netns".into(), json!(netns));
            warnings.push(format!(
                "{name}: container netns set to `{netns}` (a guess): set it to the container's network namespace as `ip netns list` shows it on {p}, and add `host_interface:` (its veth on {p})"
            ));
            if !eth.is_empty() {
                h.insert("interfaces".into(), json!(eth));
            }
            h.insert("addresses".into(), json!(list(e.get("container_address"))));
            if e.contains_key("password") || e.contains_key("username") {
                warnings.push(format!("{name}: login settings of a container are dropped: containers are reached through their parent"));
            }
        } else {
            if let Some(p) = parent_of("isvm") {
                let p = p.map_err(|p| {
                    anyhow::anyhow!(
                        "connect_info.yaml: `{key}` is a VM of `{p}`, which is not a server"
                    )
                })?;
                h.insert("kind".into(), json!("vm"));
                h.insert("parent".into(), json!(p));
            } else {
                h.insert("kind".into(), json!("metal"));
            }
            let addr = address
                .clone()
                .with_context(|| format!("connect_info.yaml: `{key}` has no address"))?;
            h.insert("address".into(), json!(addr));
            // The interface time sync probes arrive on goes first (latplan's playbooks use the first).
            if let Some(pe) = ping_eth.get(&addr) {
                eth.retain(|i| i != pe);
                eth.insert(0, pe.clone());
            }
            h.insert("interfaces".into(), json!(eth));
            let mut ssh = Map::new();
            if let Some(u) = e.get("username").and_then(s) {
                if u != "root" {
                    h.insert("become".into(), json!(true));
                    warnings.push(format!("{name}: logs in as `{u}`: `become: true` is set; allow passwordless sudo for {u} (sudo -n)"));
                }
                ssh.insert("user".into(), json!(u));
            }
            if let Some(p) = e.get("port").and_then(|p| p.as_u64()).filter(|p| *p != 22) {
                ssh.insert("port".into(), json!(p));
            }
            if !ssh.is_empty() {
                h.insert("ssh".into(), Value::Object(ssh));
            }
            if e.contains_key("password") {
                let u = e
                    .get("username")
                    .and_then(s)
                    .map(|u| format!("{u}@"))
                    .unwrap_or_default();
                warnings.push(format!(
                    "{name}: password dropped; install an SSH key instead (`ssh-copy-id {u}{addr}`, or load one in ssh-agent, or set ssh.identity_file)"
                ));
            }
        }
        let other = list(e.get("other_address"));
        if !other.is_empty() && !h.contains_key("addresses") {
            h.insert("addresses".into(), json!(other));
        }
        hosts.insert(name, Value::Object(h));
    }

    let mut session = Map::new();
    if let Some(sm) = read(dir, "sampling_info.yaml")? {
        let mut sampling = Map::new();
        if let Some(size) = sm.get("size").and_then(|v| v.as_u64()).filter(|v| *v > 0) {
            let p2 = size.next_power_of_two();
            if p2 != size {
                warnings.push(format!("sampling size {size} rounded up to {p2}: sampling must be a power of two so every layer samples the same bytes"));
            }
            sampling.insert("size".into(), json!(p2));
        }
        let ports: Vec<u64> = sm
            .get("ports")
            .and_then(|v| v.as_array())
            .map(|a| a.iter().filter_map(|p| p.as_u64()).collect())
            .unwrap_or_default();
        if !ports.is_empty() {
            sampling.insert("ports".into(), json!(ports));
        }
        if let Some(i) = sm.get("interval").and_then(|v| v.as_u64()) {
            // The original's interval is a per-flow pause in milliseconds.
            sampling.insert(
                "interval".into(),
                json!(if i == 0 {
                    "0".to_string()
                } else {
                    format!("{i}ms")
                }),
            );
            if i > 0 {
                warnings.push(format!("sampling interval {i} read as {i} ms between samples of a flow; check `session.sampling.interval`"));
            }
        }
        session.insert("sampling".into(), Value::Object(sampling));
    }
    let mgmt = read(dir, "management_server_info.yaml")?;
    let mgmt_eth = mgmt
        .as_ref()
        .and_then(|m| m.get("eth").and_then(s))
        .or_else(|| {
            ping.as_ref()
                .and_then(|p| p.get("management_server"))
                .and_then(|m| m.get("eth"))
                .and_then(s)
        });
    if let Some(eth) = mgmt_eth {
        session.insert("timesync".into(), json!({ "manager_interface": eth }));
    }
    if mgmt.as_ref().is_some_and(|m| m.get("password").is_some()) {
        warnings.push("management_server_info.yaml: password dropped; latplan runs on the manager itself and needs no login to it".into());
    }
    if let Some(db) = read(dir, "database_info.yaml")? {
        let user = db.get("user").and_then(s).unwrap_or_else(|| "root".into());
        let host = db
            .get("host")
            .and_then(s)
            .unwrap_or_else(|| "127.0.0.1".into());
        let name = db.get("db").and_then(s).unwrap_or_else(|| "latplan".into());
        session.insert(
            "store".into(),
            json!(format!("mysql://{user}@{host}:3306/{name}")),
        );
        if db.get("passwd").is_some() || db.get("password").is_some() {
            warnings.push(format!(
                "database_info.yaml: password dropped; export {} or write it to a file only you can read (chmod 600) and set session.store_secret_file",
                super::STORE_PASSWORD_ENV
            ));
        }
    }
    if let Some(r) = read(dir, "redis_info.yaml")? {
        let host = r
            .get("host")
            .or_else(|| r.get("address"))
            .and_then(s)
            .unwrap_or_else(|| "127.0.0.1".into());
        let port = r.get("port").and_then(|p| p.as_u64()).unwrap_or(6379);
        session.insert("bus".into(), json!(format!("redis://{host}:{port}")));
        warnings.push(
            "redis_info.yaml: bus set to Redis as before; `bus: ssh` needs no Redis at all".into(),
        );
        if r.get("password").is_some() || r.get("passwd").is_some() {
            warnings.push(format!("redis_info.yaml: password dropped; export {} or use session.bus_secret_file (mode 0600)", super::BUS_PASSWORD_ENV));
        }
    }
    if read(dir, "function_info.yaml")?.is_some() {
        warnings.push("function_info.yaml: kernel function lists are not needed: latplan picks a hook per layer (tracepoints); `latplan check` shows which work".into());
    }

    let mut out = String::new();
    writeln!(
        out,
        "# Converted by `latplan import` from {}.",
        dir.display()
    )
    .ok();
    writeln!(
        out,
        "# No passwords were copied; see the warnings printed at import and docs/inventory.md."
    )
    .ok();
    let mut all = Map::new();
    if !session.is_empty() {
        all.insert("vars".into(), json!({ "session": Value::Object(session) }));
    }
    all.insert("hosts".into(), Value::Object(hosts));
    emit(&mut out, &json!({ "all": Value::Object(all) }), 0);
    Ok(Imported {
        hosts_yaml: out,
        warnings,
    })
}

/// Writes the converted inventory to `out_dir/hosts.yaml` after checking that it loads.
pub fn write(imported: &Imported, out_dir: &Path, force: bool) -> anyhow::Result<PathBuf> {
    super::load_str("imported hosts.yaml", &imported.hosts_yaml).map_err(|e| {
        anyhow::anyhow!("the converted inventory does not load ({e}); nothing was written")
    })?;
    let file = out_dir.join("hosts.yaml");
    if file.exists() && !force {
        bail!("{} exists; pass --force to replace it", file.display());
    }
    std::fs::create_dir_all(out_dir)
        .with_context(|| format!("failed to create {}", out_dir.display()))?;
    std::fs::write(&file, &imported.hosts_yaml)
        .with_context(|| format!("failed to write {}", file.display()))?;
    Ok(file)
}

/// A small YAML emitter for what `convert` builds: block mappings, flow lists of scalars.
fn emit(out: &mut String, v: &Value, indent: usize) {
    let pad = " ".repeat(indent);
    if let Value::Object(m) = v {
        for (k, v) in m {
            match v {
                Value::Object(inner) if !inner.is_empty() => {
                    let _ = writeln!(out, "{pad}{k}:");
                    emit(out, v, indent + 2);
                }
                other => {
                    let _ = writeln!(out, "{pad}{k}: {}", scalar(other));
                }
            }
        }
    }
}

fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => {
            let plain = !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./@:".contains(c))
                && !matches!(
                    s.as_str(),
                    "true" | "false" | "null" | "yes" | "no" | "on" | "off"
                )
                && !s.ends_with(':')
                && s.parse::<f64>().is_err();
            if plain {
                s.clone()
            } else {
                serde_json::to_string(s).expect("string")
            }
        }
        Value::Array(a) => format!("[{}]", a.iter().map(scalar).collect::<Vec<_>>().join(", ")),
        Value::Object(m) if m.is_empty() => "{}".into(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/import/original")
    }

    #[test]
    fn the_original_format_converts_loads_and_plans() {
        let imp = convert(&fixture()).unwrap();
        assert!(
            !imp.hosts_yaml.contains("rootpw")
                && !imp.hosts_yaml.contains("dbsecret")
                && !imp.hosts_yaml.contains("mgmtpw"),
            "no password is copied:\n{}",
            imp.hosts_yaml
        );
        let pw_warnings = imp
            .warnings
            .iter()
            .filter(|w| w.contains("password dropped"))
            .count();
        assert_eq!(
            pw_warnings, 5,
            "one per password (3 servers, database, manager): {:#?}",
            imp.warnings
        );
        assert!(
            imp.warnings
                .iter()
                .any(|w| w.contains("ssh-copy-id root@192.168.10.11"))
        );

        let dir = tempfile::tempdir().unwrap();
        write(&imp, dir.path(), false).unwrap();
        let inv =
            super::super::load(dir.path()).unwrap_or_else(|e| panic!("{e}\n{}", imp.hosts_yaml));
        let vm1 = &inv.hosts["vm1"];
        assert_eq!(
            (vm1.kind, vm1.parent.as_deref()),
            (super::super::Kind::Vm, Some("server1"))
        );
        assert!(vm1.become_root, "ubuntu is not root");
        assert_eq!(inv.hosts["server1"].interfaces, ["ens3", "vnet0"]);
        assert_eq!(inv.hosts["server2"].ssh.as_ref().unwrap().port, Some(2222));
        let ct1 = &inv.hosts["ct1"];
        assert_eq!(ct1.parent.as_deref(), Some("server2"));
        assert_eq!(
            ct1.addresses,
            ["172.17.0.2".parse::<std::net::IpAddr>().unwrap()]
        );
        assert_eq!(inv.session.sampling.size, 1024);
        assert_eq!(inv.session.sampling.ports, [5201, 5202]);
        assert_eq!(inv.session.sampling.interval_ns, 10_000_000);
        assert_eq!(
            inv.session.store,
            "mysql://latency@192.168.10.1:3306/latency_db"
        );
        assert_eq!(inv.session.bus, "redis://192.168.10.1:6379");
        assert_eq!(
            inv.session.timesync.manager_interface.as_deref(),
            Some("eno1")
        );

        // `latplan plan` accepts it: every kernel host renders.
        let pb = crate::plan::Playbooks::load(None).unwrap();
        let run = crate::plan::RunVars {
            id: "t".into(),
            token: "1".into(),
        };
        for h in inv.kernel_hosts() {
            pb.render("apply", &inv, h, &run)
                .unwrap_or_else(|e| panic!("{e}"));
        }
        assert!(
            write(&imp, dir.path(), false).is_err(),
            "an existing hosts.yaml is not replaced without --force"
        );
    }

    #[test]
    fn a_directory_without_connect_info_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let e = convert(dir.path()).unwrap_err().to_string();
        assert!(e.contains("connect_info.yaml"), "{e}");
    }
}

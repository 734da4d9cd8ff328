//! Loading tests on small inline inventories; error fixtures live in planner/tests/fixtures/.
use std::path::{Path, PathBuf};

use super::*;

fn lab() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../inventory/lab")
}

#[test]
fn lab_inventory_loads() {
    let inv = load(&lab()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(inv.order, ["metal1", "metal2", "vm1", "vm2", "ct1", "ct2"]);
    let ct2 = &inv.hosts["ct2"];
    assert_eq!(ct2.kind, Kind::Container);
    assert_eq!(ct2.parent.as_deref(), Some("vm2"));
    assert_eq!(
        ct2.clock_domain, "vm2",
        "a container shares its parent's clock"
    );
    assert!(
        ct2.ssh.is_none(),
        "containers are never reached, inherited ssh settings are dropped"
    );
    let vm1 = &inv.hosts["vm1"];
    let ssh = vm1.ssh.as_ref().unwrap();
    assert_eq!(ssh.user.as_deref(), Some("root"), "inherited from all");
    assert_eq!(
        vm1.install_dir.as_deref(),
        Some(Path::new("/var/lib/latplan-ci/lab/hosts/vm1"))
    );
    assert_eq!(inv.session.sampling.size, 65536);
    assert_eq!(inv.session.sampling.ports, [5201]);
    assert!(
        inv.session.sampling.layers.is_empty(),
        "every layer by default"
    );
    assert_eq!(inv.session.timesync.rate_hz, 50);
    assert_eq!(
        inv.session.timesync.port, 31999,
        "default from conf/timesync.yaml"
    );
    assert_eq!(inv.hosts["metal1"].lab["mgmt"]["addr"], "10.77.0.11/24");
}

#[test]
fn lab_json_has_the_contract_fields() {
    let inv = load(&lab()).unwrap();
    let j = inv.to_json();
    let h = &j["hosts"]["metal1"];
    for k in [
        "name",
        "kind",
        "parent",
        "address",
        "install_dir",
        "interfaces",
        "host_interface",
        "addresses",
        "netns",
        "clock_domain",
        "ssh",
        "lab",
        "groups",
    ] {
        assert!(h.get(k).is_some(), "missing {k} in {h}");
    }
    for k in [
        "user",
        "port",
        "identity_file",
        "known_hosts_file",
        "config_alias",
    ] {
        assert!(h["ssh"].get(k).is_some(), "missing ssh.{k}");
    }
    assert!(j["session"]["sampling"].is_object());
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/inventory")
}

/// Every fixture under errors/ says in its first lines what it must fail with:
/// `# expect: TEXT` (a substring of the error, paths relative to errors/) and `# hint: TEXT`.
#[test]
fn error_fixtures_fail_with_location_and_hint() {
    let dir = fixtures().join("errors");
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    assert!(entries.len() >= 30, "fixtures missing: {}", entries.len());
    let mut failures = Vec::new();
    for path in entries {
        let header = if path.is_dir() {
            std::fs::read_to_string(path.join("expect.txt")).unwrap()
        } else {
            std::fs::read_to_string(&path).unwrap()
        };
        let field = |k: &str| {
            header
                .lines()
                .find_map(|l| l.strip_prefix(&format!("# {k}: ")).map(str::to_string))
        };
        let expect =
            field("expect").unwrap_or_else(|| panic!("{} has no `# expect:` line", path.display()));
        let err = match load(&path) {
            Ok(_) => {
                failures.push(format!(
                    "{} loaded, but should fail with: {expect}",
                    path.display()
                ));
                continue;
            }
            Err(e) => e,
        };
        let shown = err
            .to_string()
            .replace(&format!("{}/", dir.display()), "")
            .replace(&format!("{}/", path.display()), "");
        if !shown.contains(&expect) {
            failures.push(format!(
                "{}:\n  got:    {shown}\n  wanted: {expect}",
                path.display()
            ));
        }
        if let Some(hint) = field("hint") {
            let got = err.hint.clone().unwrap_or_default();
            if !got.contains(&hint) {
                failures.push(format!("{}: hint {got:?} lacks {hint:?}", path.display()));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn inheritance_follows_the_documented_order() {
    let inv = load(&fixtures().join("inherit")).unwrap_or_else(|e| panic!("{e}"));
    let m1 = &inv.hosts["m1"];
    let ssh = m1.ssh.as_ref().unwrap();
    assert_eq!(ssh.user.as_deref(), Some("dc-user"), "group beats all");
    assert_eq!(ssh.port, Some(2222), "child group beats parent group");
    assert_eq!(
        ssh.connect_timeout, 7,
        "same depth: later name wins (zz over rack1)"
    );
    assert_eq!(ssh.control_persist, 60, "set by the dc group");
    let m2 = inv.hosts["m2"].ssh.as_ref().unwrap();
    assert_eq!(
        m2.control_persist, 0,
        "masters end with the command by default"
    );
    assert_eq!(m1.params["tier"], "rack1");
    assert_eq!(m1.params["team"], "net", "mappings merge deeply");
    assert_eq!(m1.groups, ["dc", "rack1", "zz"]);
    assert_eq!(m1.install_dir.as_deref(), Some(Path::new("/opt/all")));

    let v1 = &inv.hosts["v1"];
    assert_eq!(
        (v1.kind, v1.parent.as_deref()),
        (Kind::Vm, Some("m1")),
        "guests nest under their metal"
    );
    assert_eq!(v1.clock_domain, "v1", "a vm has its own kernel clock");

    let m2 = &inv.hosts["m2"];
    assert_eq!(m2.params["tier"], "host", "host beats groups");
    let ssh = m2.ssh.as_ref().unwrap();
    assert_eq!(
        ssh.config_alias.as_deref(),
        Some("m2-bastion"),
        "host_vars beat the host's entry"
    );
    assert!(m2.become_root);
    assert_eq!(ssh.user.as_deref(), Some("all-user"));

    assert_eq!(inv.session.sampling.size, 4096);
    assert_eq!(inv.session.sampling.interval_ns, 250_000);
    assert_eq!(
        inv.session.sampling.layers,
        ["dev_send", "dev_xmit", "dev_recv"]
    );
    assert_eq!(inv.session.bus, "redis://127.0.0.1:6379");
    assert_eq!(inv.session.store, "sqlite://latplan.db", "embedded default");
}

#[test]
fn the_example_inventory_loads() {
    let inv = load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../inventory/example"))
        .unwrap_or_else(|e| panic!("{e}"));
    let vm = &inv.hosts["vm-a"];
    assert_eq!(vm.parent.as_deref(), Some("node-a"));
    assert_eq!(vm.ssh.as_ref().unwrap().user.as_deref(), Some("ubuntu"));
    assert_eq!(vm.params["iperf_port"], 5201);
    let b = &inv.hosts["node-b"];
    assert_eq!(b.ssh.as_ref().unwrap().port, Some(2222));
    assert_eq!(b.install_dir.as_deref(), Some(Path::new("/srv/latplan")));
    assert!(b.address.is_none(), "reached through its ssh config alias");
    assert_eq!(inv.hosts["web1"].clock_domain, "node-a");
}

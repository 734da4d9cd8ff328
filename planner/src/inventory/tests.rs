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

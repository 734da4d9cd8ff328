//! `session.sampling.layers` and `xdp_mode`: the observers record only the layers the inventory
//! names, and the report is built from those (docs/inventory.md; fewer layers cost a flow less,
//! docs/design/overhead.md); they attach dev_recv the way it says.
use std::process::Command;

use labtools::testlab::lab_inventory_with_sampling;

use super::{Fresh, Traffic, assert_clean, latplan, text};

#[test]
fn observers_record_only_the_layers_the_inventory_names() {
    let f = Fresh::take();
    // The interface layers only.
    let dir = lab_inventory_with_sampling("layers: [dev_send, dev_xmit, dev_recv]");
    let inv = dir.path().to_str().unwrap();

    let _traffic = Traffic::start(20, "20M");
    let run = latplan(&[
        "apply",
        inv,
        "--duration",
        "4s",
        "--store",
        &f.store,
        "--session",
        "layers-1",
    ]);
    let out = text(&run);
    assert!(run.status.success(), "apply failed: {out}");
    for segment in [
        "metal1:dev_send(wan0)→dev_xmit(wan0)",
        "net metal1:wan0→metal2:wan0",
        "vhop metal2:tap-vm2→vm2:eth0",
    ] {
        assert!(out.contains(segment), "the report lacks {segment:?}: {out}");
    }
    // No other layer was attached, so none is in the report, and without the sockets' layers
    // there is no end-to-end segment.
    for layer in [
        "sock_send",
        "tcp_send",
        "ip_send",
        "ip_recv",
        "tcp_recv",
        "sock_queue",
        "sock_recv",
        "e2e ct1",
    ] {
        assert!(!out.contains(layer), "{layer} was recorded: {out}");
    }
    let t = latplan(&["teardown", inv]);
    assert!(t.status.success(), "{}", text(&t));
    assert_clean("after teardown");
}

#[test]
fn observers_attach_dev_recv_in_the_inventorys_xdp_mode() {
    let f = Fresh::take();
    // Every lab interface is virtual, where `auto` would use TC ingress: generic XDP is the
    // mode chosen here. The clock reflectors (generic XDP too) hold the interfaces towards the
    // manager, each metal's mgmt0 and each vm's eth0; there the observers must observe at TC
    // ingress beside them, everywhere else in generic XDP.
    let dir = lab_inventory_with_sampling("xdp_mode: generic");
    let inv = dir.path().to_str().unwrap();
    let _traffic = Traffic::start(10, "5M");
    let run = latplan(&[
        "apply",
        inv,
        "--duration",
        "3s",
        "--store",
        &f.store,
        "--session",
        "xdp-generic-1",
    ]);
    let out = text(&run);
    assert!(run.status.success(), "apply failed: {out}");
    assert!(out.contains("net metal1:wan0→metal2:wan0"), "{out}");
    // What each observer's Hello frame said it attached, as stored.
    let db = f.store.trim_start_matches("sqlite://");
    let rows = Command::new("sqlite3")
        .args([
            db,
            "SELECT h.name, i.name, i.ingress_mode FROM interfaces i \
             JOIN runs r ON r.id = i.run_id JOIN hosts h ON h.id = r.host_id ORDER BY 1, 2",
        ])
        .output()
        .expect("sqlite3 (installed by ci/setup)");
    assert!(rows.status.success(), "{rows:?}");
    let rows = String::from_utf8_lossy(&rows.stdout);
    let mut seen = 0;
    for row in rows.lines() {
        let [host, iface, mode] = row.split('|').collect::<Vec<_>>()[..] else {
            panic!("row {row:?}")
        };
        let reflected = (host.starts_with("metal") && iface == "mgmt0")
            || (host.starts_with("vm") && iface == "eth0");
        let want = if reflected { "tc" } else { "xdp-generic" };
        assert_eq!(mode, want, "{host} {iface}: {rows}");
        seen += 1;
    }
    // metal1: mgmt0 wan0 tap-vm1 veth-ct1; metal2: mgmt0 wan0 tap-vm2; vm1: eth0; vm2: eth0 veth-ct2.
    assert_eq!(seen, 10, "{rows}");
    let t = latplan(&["teardown", inv]);
    assert!(t.status.success(), "{}", text(&t));
    assert_clean("after teardown");
}

//! `session.sampling.layers`: the observers record only the layers the inventory names, and the
//! report is built from those (docs/inventory.md; fewer layers cost a flow less,
//! docs/design/overhead.md).
use std::fs;
use std::path::Path;

use super::{Fresh, Traffic, assert_clean, latplan, text};

#[test]
fn observers_record_only_the_layers_the_inventory_names() {
    let f = Fresh::take();
    // The lab inventory with one more group_vars file: the interface layers only.
    let dir = tempfile::tempdir().unwrap();
    fs::copy(
        Path::new(&f.inv).join("hosts.yaml"),
        dir.path().join("hosts.yaml"),
    )
    .unwrap();
    fs::create_dir(dir.path().join("group_vars")).unwrap();
    fs::write(
        dir.path().join("group_vars/all.yaml"),
        "session:\n  sampling:\n    layers: [dev_send, dev_xmit, dev_recv]\n",
    )
    .unwrap();
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

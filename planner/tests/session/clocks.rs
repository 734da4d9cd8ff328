//! A clock domain that cannot sync: its hosts are failed, the observer already loading there is
//! stopped, and the session goes on with the others (the clock gate runs beside the observers'
//! start, docs/session.md step 4).
use labtools::relay::Dir;
use labtools::testlab::{RelayRestore, relay_set};

use super::{Fresh, Traffic, assert_clean, latplan, text};

#[test]
fn a_domain_that_cannot_sync_is_failed_and_the_others_measure() {
    let f = Fresh::take();
    let (inv, store) = (f.inv.as_str(), f.store.as_str());
    // 2 ms one way on vm1's link: a two-way sync reads half of it as a clock offset and its
    // bound (~±1 ms) stays far above the 100 µs a session requires, so vm1 (its own domain in
    // the lab inventory) never syncs.
    let _restore = RelayRestore::new("vm1");
    relay_set("vm1", Dir::B2a, Some(2_000_000), None);
    let _traffic = Traffic::start(30, "5M");
    let run = latplan(&[
        "apply",
        inv,
        "--duration",
        "4s",
        "--sync-timeout",
        "4s",
        "--store",
        store,
        "--session",
        "unsynced",
    ]);
    let out = text(&run);
    assert!(!run.status.success(), "a failed host fails apply: {out}");
    assert!(
        out.contains("clock domain vm1 not synced"),
        "the reason is given: {out}"
    );
    // Its observer started with the others (the gate runs beside their load) and attached
    // before the gate gave up, then was stopped: the session runs with three.
    assert!(
        out.contains("vm1: observer attached"),
        "vm1's observer started beside the gate: {out}"
    );
    assert!(
        out.contains("3 observer(s) running"),
        "vm1's observer is not part of the session: {out}"
    );
    assert!(
        out.contains("changed=3 failed=1 unreachable=0"),
        "vm1 failed, the others ran: {out}"
    );
    assert!(
        out.contains("e2e ct1→vm2"),
        "the others' flow is measured: {out}"
    );
    let t = latplan(&["teardown", inv]);
    assert!(t.status.success(), "{}", text(&t));
    assert_clean("after teardown");
}

//! The relays add the delay and loss they are told to, and only that.
use crate::ping;
use labtools::relay::Dir;
use labtools::testlab::{RelayRestore, relay_set, relay_status, take_lab};

/// The delay every baseline is measured at. A relay counts a frame's delay from the kernel's
/// receive stamp, so a queued frame has the relay's own wake-up latency inside its delay, while
/// a frame at delay 0 is sent on by the receive thread and pays that latency on top. Measured
/// against a baseline of 0, a delay looks shorter by the receive thread's wake-up (0.1 ms of a
/// 1 ms delay on a loaded machine); against a small delay both frames take the same path and
/// the difference is the delay alone.
const BASE_DELAY_NS: u64 = 500_000;

#[test]
fn wan_delay_of_2ms_each_way_adds_4ms_to_the_rtt() {
    let _lock = take_lab();
    let _restore = RelayRestore::new("wan");
    relay_set("wan", Dir::Both, Some(BASE_DELAY_NS), Some(0.0));
    let base = ping("lp-metal1", "10.78.0.2", 100, "0.01").floor_ms();
    relay_set("wan", Dir::Both, Some(BASE_DELAY_NS + 2_000_000), None);
    let delayed = ping("lp-metal1", "10.78.0.2", 100, "0.01").floor_ms();
    let added = delayed - base;
    assert!(
        (3.6..=4.4).contains(&added),
        "2 ms each way added {added:.3} ms to the RTT (base {base:.3} ms, delayed {delayed:.3} ms)"
    );
}

#[test]
fn one_way_delay_applies_to_its_direction_only() {
    let _lock = take_lab();
    let _restore = RelayRestore::new("wan");
    relay_set("wan", Dir::Both, Some(BASE_DELAY_NS), Some(0.0));
    let base = ping("lp-metal1", "10.78.0.2", 50, "0.01").floor_ms();
    relay_set("wan", Dir::A2b, Some(BASE_DELAY_NS + 3_000_000), None);
    let st = relay_status("wan");
    assert_eq!(
        (st.a2b.delay_ns, st.b2a.delay_ns),
        (BASE_DELAY_NS + 3_000_000, BASE_DELAY_NS)
    );
    let added = ping("lp-metal1", "10.78.0.2", 50, "0.01").floor_ms() - base;
    assert!(
        (2.7..=3.3).contains(&added),
        "3 ms on a2b only added {added:.3} ms to the RTT"
    );
}

#[test]
fn wan_loss_of_10_percent_is_observed() {
    let _lock = take_lab();
    let _restore = RelayRestore::new("wan");
    relay_set("wan", Dir::Both, Some(0), Some(0.0));
    let n = 400;

    // One direction at 10%: a ping is lost when its request is. Binomial(400, 0.1) has sd 1.5%,
    // so 5..16% is more than 3 sd either side.
    relay_set("wan", Dir::A2b, None, Some(0.10));
    let before = relay_status("wan");
    let p = ping("lp-metal1", "10.78.0.2", n, "0.005");
    let after = relay_status("wan");
    let dropped = after.a2b.dropped_loss - before.a2b.dropped_loss;
    assert!(
        (0.05..=0.16).contains(&p.loss()),
        "10% on a2b: observed ping loss {:.1}%",
        p.loss() * 100.0
    );
    // Every lost ping is a frame the relay dropped on purpose (ARP may add a few drops).
    let lost = (p.sent - p.received) as u64;
    assert!(
        dropped >= lost && dropped <= lost + 3,
        "relay dropped {dropped} frames, {lost} pings were lost"
    );

    // Both directions: a ping survives with 0.9 * 0.9, so ~19% are lost (sd 2%): 12..27%.
    relay_set("wan", Dir::Both, None, Some(0.10));
    let p = ping("lp-metal1", "10.78.0.2", n, "0.005");
    assert!(
        (0.12..=0.27).contains(&p.loss()),
        "10% both ways: observed ping loss {:.1}%",
        p.loss() * 100.0
    );
}

#[test]
fn a_relay_on_a_vm_link_delays_that_hop() {
    let _lock = take_lab();
    // inventory/lab puts a relay on vm1's link (lab: {relay: true}).
    let _restore = RelayRestore::new("vm1");
    relay_set("vm1", Dir::Both, Some(0), Some(0.0));
    relay_set("vm1", Dir::A2b, Some(BASE_DELAY_NS), None);
    let base = ping("lp-metal1", "10.77.1.2", 50, "0.01").floor_ms();
    relay_set("vm1", Dir::A2b, Some(BASE_DELAY_NS + 1_000_000), None);
    let delayed = ping("lp-metal1", "10.77.1.2", 50, "0.01").floor_ms();
    let added = delayed - base;
    assert!(
        (0.9..=1.1).contains(&added),
        "1 ms more towards vm1 added {added:.3} ms to metal1's RTT \
         (base {base:.3} ms, delayed {delayed:.3} ms)"
    );
}

//! Issue 2's acceptance test: the XDP and TC programs, loaded by the static observer inside a
//! lab host, count a ping's packets exactly.
use crate::support::*;

#[test]
fn xdp_and_tc_count_a_pings_packets_exactly() {
    let _lock = labtools::testlab::take_lab();
    let obs = Observer::start(
        METAL1,
        &[
            "--interfaces",
            "wan0",
            "--layers",
            "dev_send,dev_recv",
            // dev_recv would default to TCX ingress on a veth; this test is about XDP.
            "--xdp-mode",
            "native",
            "--stats-interval",
            "1",
        ],
    );
    let o = labtools::testlab::ns_exec(
        METAL1,
        &["ping", "-c", "5", "-i", "0.2", "-W", "2", METAL2_WAN],
    );
    assert!(
        o.status.success(),
        "ping failed: {}",
        String::from_utf8_lossy(&o.stdout)
    );
    let rec = obs.stop();
    assert!(rec.bye, "clean stop ends with a Bye frame");
    let c = &rec.interface_counters()["wan0"];
    assert_eq!(c["tx_icmp"], 5, "echo requests seen by TC egress: {c}");
    assert_eq!(c["rx_icmp"], 5, "echo replies seen by XDP: {c}");
}

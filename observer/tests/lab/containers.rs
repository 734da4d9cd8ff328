//! Network-namespace scoping: an observer records its declared containers' sockets, and an
//! observer that did not declare them does not (so observers sharing a kernel never double-count).
use crate::support::*;
use latplan_common::Layer;

const PORT: u16 = 5302;
const CT1: &str = "lp-ct1";

/// The number a command prints inside a namespace.
fn number_in(netns: &str, argv: &[&str]) -> u32 {
    let o = labtools::testlab::ns_exec(netns, argv);
    assert!(o.status.success(), "{argv:?} in {netns}");
    String::from_utf8_lossy(&o.stdout).trim().parse().unwrap()
}

/// The inode number of a namespace's network namespace (what records carry as `netns`).
fn netns_inode(netns: &str) -> u32 {
    number_in(netns, &["stat", "-L", "-c", "%i", "/proc/self/ns/net"])
}

#[test]
fn a_container_flow_is_recorded_by_the_observer_that_declares_it_only() {
    let _lock = labtools::testlab::take_lab();
    let common = ["--ports", "5302", "--size", "65536"];
    // Both on metal1, the container's parent: one declares ct1, the other does not.
    let mut with = vec!["--interfaces", "veth-ct1", "--containers", CT1];
    with.extend(common);
    let mut without = vec!["--interfaces", "wan0"];
    without.extend(common);
    let declaring = Observer::start(METAL1, &with);
    let other = Observer::start(METAL1, &without);
    let addr = format!("{METAL2_WAN}:{PORT}");
    let server = tcp_recv(METAL2, &addr, &[]);
    tcp_send(CT1, &addr, &["--bytes", "20M"]);
    wait_ok(server, "tcp-recv");
    std::thread::sleep(std::time::Duration::from_millis(300));
    let declaring = declaring.stop();
    let other = other.stop();

    // 20 MB at one point per 64 KiB: about 300 points per layer.
    let ct1 = netns_inode(CT1);
    for l in [Layer::SockSend, Layer::TcpSend, Layer::IpSend] {
        let recs: Vec<_> = declaring
            .samples
            .iter()
            .filter(|s| s.layer == l && s.dport == PORT)
            .collect();
        assert!(
            recs.len() >= 290,
            "the declaring observer recorded {} {} samples of ct1's flow",
            recs.len(),
            l.name()
        );
        assert!(
            recs.iter().all(|s| s.netns == ct1),
            "{} samples carry ct1's netns",
            l.name()
        );
        assert_eq!(
            other.count(l, PORT),
            0,
            "an observer that did not declare ct1 recorded its {}",
            l.name()
        );
    }
    // The interface layers belong to the interfaces each was given: ct1's packets enter metal1
    // at veth-ct1 and leave at wan0.
    assert!(declaring.count(Layer::DevRecv, PORT) >= 290);
    assert!(other.count(Layer::DevSend, PORT) >= 290);
    assert_eq!(declaring.count(Layer::DevSend, PORT), 0);
}

/// The ifindex of `dev` in namespace `netns`.
fn ifindex(netns: &str, dev: &str) -> u32 {
    number_in(netns, &["cat", &format!("/sys/class/net/{dev}/ifindex")])
}

#[test]
fn a_container_device_with_a_watched_interfaces_number_is_not_watched() {
    let _lock = labtools::testlab::take_lab();
    // An ifindex is unique only within its namespace: ct1's eth0 has the number of metal1's
    // mgmt0, which this observer watches. dev_xmit fires for every device on the kernel, so
    // matching the number alone recorded ct1's own device as if it were mgmt0.
    assert_eq!(
        ifindex(CT1, "eth0"),
        ifindex(METAL1, "mgmt0"),
        "the lab no longer gives ct1's eth0 the number of metal1's mgmt0; pick a pair that shares one"
    );
    let port = "5303";
    let obs = Observer::start(
        METAL1,
        &[
            "--interfaces",
            "mgmt0",
            "--containers",
            CT1,
            "--ports",
            port,
        ],
    );
    let addr = format!("{METAL2_WAN}:{port}");
    let server = tcp_recv(METAL2, &addr, &[]);
    tcp_send(CT1, &addr, &["--bytes", "20M"]);
    wait_ok(server, "tcp-recv");
    std::thread::sleep(std::time::Duration::from_millis(300));
    let rec = obs.stop();

    let ct1 = netns_inode(CT1);
    let sent = rec
        .samples
        .iter()
        .filter(|s| s.layer == Layer::IpSend && s.netns == ct1)
        .count();
    assert!(
        sent >= 290,
        "ct1's flow was recorded ({sent} ip_send samples)"
    );
    let on_ct1_device = rec
        .samples
        .iter()
        .filter(|s| s.layer.is_interface_layer() && s.netns == ct1)
        .count();
    assert_eq!(
        on_ct1_device, 0,
        "interface layers recorded on ct1's own device, which no one asked to watch"
    );
}

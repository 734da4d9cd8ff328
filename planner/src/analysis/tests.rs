//! Ground-truth tests: synthetic sessions with known delays, clocks, retransmissions and
//! losses must come out as exactly those numbers.
use super::synth::Synth;
use super::*;

const US: i64 = 1000;

fn seg<'a>(f: &'a FlowReport, name: &str) -> &'a SegmentReport {
    f.segments
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| {
            panic!(
                "no segment {name:?}; have {:?}",
                f.segments.iter().map(|s| &s.name).collect::<Vec<_>>()
            )
        })
}

/// Every percentile, min and max equal `v`, to the nanosecond that integer host clocks round to.
fn exact(s: &SegmentReport, v: i64) {
    let l = &s.latency;
    for (what, x) in [
        ("min", l.min_ns),
        ("p50", l.p50_ns),
        ("p90", l.p90_ns),
        ("p99", l.p99_ns),
        ("max", l.max_ns),
    ] {
        let x = x.unwrap_or_else(|| panic!("{}: no {what}", s.name));
        assert!(
            (x - v).abs() <= 1,
            "{}: {what} is {x}, expected {v}",
            s.name
        );
    }
}

#[test]
fn every_segment_of_two_metals_reads_its_injected_delay() {
    let mut s = Synth::two_metals(3000);
    // The receiver's clock is 5 ms ahead and drifts 20 ppm; its fit knows.
    s.clocks[1].offset_ns = 5_000_000.0;
    s.clocks[1].drift_ppm = 20.0;
    let a = analyse(s.session());
    assert_eq!(a.flows.len(), 1);
    let f = &a.flows[0];
    assert_eq!(
        (f.src_host.as_str(), f.dst_host.as_str()),
        ("metal1", "metal2")
    );
    assert_eq!(f.flow, "10.10.0.0:40000→10.20.0.0:5201");
    let names: Vec<_> = f.segments.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "metal1:sock_send→tcp_send",
            "metal1:tcp_send→ip_send",
            "metal1:ip_send→dev_send(wan0)",
            "metal1:dev_send(wan0)→dev_xmit(wan0)",
            "net metal1:wan0→metal2:wan0",
            "metal2:dev_recv(wan0)→ip_recv",
            "metal2:ip_recv→tcp_recv",
            "metal2:tcp_recv→sock_queue",
            "metal2:sock_queue→sock_recv",
            "e2e metal1→metal2",
        ]
    );
    for (name, v) in [
        ("metal1:sock_send→tcp_send", 10),
        ("metal1:tcp_send→ip_send", 20),
        ("metal1:ip_send→dev_send(wan0)", 5),
        ("metal1:dev_send(wan0)→dev_xmit(wan0)", 2),
        ("net metal1:wan0→metal2:wan0", 3000),
        ("metal2:dev_recv(wan0)→ip_recv", 3),
        ("metal2:ip_recv→tcp_recv", 4),
        ("metal2:tcp_recv→sock_queue", 6),
        ("metal2:sock_queue→sock_recv", 30),
        ("e2e metal1→metal2", 3080),
    ] {
        let s = seg(f, name);
        exact(s, v * US);
        assert_eq!(s.latency.count, 1000, "{name}");
        assert_eq!((s.below_bound, s.lost, s.incomplete), (0, 0, 0), "{name}");
    }
    assert_eq!(f.dominant.as_deref(), Some("net metal1:wan0→metal2:wan0"));
    assert_eq!((f.sampled_bytes, f.retransmitted, f.lost), (1000, 0, 0));
    // 64 KiB sampled every millisecond.
    let bps = f.throughput_bps.unwrap();
    assert!((bps - 65_536_000.0).abs() < 1.0, "{bps}");
    assert!(a.warnings.is_empty(), "{:?}", a.warnings);
    assert_eq!(a.pairs.len(), 1);
    assert_eq!(a.pairs[0].dominant, f.dominant);
    assert_eq!(a.pairs[0].segments.len(), 10);
    assert_eq!(a.totals.samples, 10_000);
}

#[test]
fn retransmissions_are_kept_apart_and_counted() {
    let mut s = Synth::two_metals(3000);
    s.retransmit_every = Some(10);
    let a = analyse(s.session());
    let f = &a.flows[0];
    assert_eq!((f.sampled_bytes, f.retransmitted, f.lost), (1000, 100, 0));
    let net = seg(f, "net metal1:wan0→metal2:wan0");
    exact(net, 3000 * US);
    assert_eq!((net.latency.count, net.retransmitted.count), (900, 100));
    assert_eq!(net.retransmitted.p50_ns, Some(3000 * US));
    assert_eq!(net.lost, 0);
    // Both transmissions pass the sender's layers; the first is the first-transmission value.
    let tcp = seg(f, "metal1:tcp_send→ip_send");
    assert_eq!((tcp.latency.count, tcp.retransmitted.count), (1000, 100));
    exact(tcp, 20 * US);
    // A byte that needed a retransmission has its end-to-end time (with the RTO) kept apart.
    let e2e = seg(f, "e2e metal1→metal2");
    exact(e2e, 3080 * US);
    assert_eq!((e2e.latency.count, e2e.retransmitted.count), (900, 100));
    assert_eq!(
        e2e.retransmitted.p50_ns,
        Some(3080 * US + 200_000_000 - 10 * US + 10 * US)
    );
}

#[test]
fn bytes_that_leave_and_never_arrive_are_lost() {
    let mut s = Synth::two_metals(3000);
    s.lose_every = Some(20);
    let a = analyse(s.session());
    let f = &a.flows[0];
    assert_eq!(f.lost, 50);
    let net = seg(f, "net metal1:wan0→metal2:wan0");
    assert_eq!((net.lost, net.latency.count), (50, 950));
    exact(net, 3000 * US);
    // Segments past the loss see neither end of those bytes: nothing to count there.
    assert_eq!(seg(f, "metal2:ip_recv→tcp_recv").incomplete, 0);
    assert_eq!(a.pairs[0].lost, 50);
}

#[test]
fn values_below_the_sync_bound_are_flagged_not_hidden() {
    let mut s = Synth::two_metals(5);
    // The receiver's fit is 20 µs off while claiming ±5 µs: the network segment reads −15 µs.
    s.clocks[1].fit_bias_ns = -20_000.0;
    s.clocks[0].error_bound_ns = 5_000.0;
    s.clocks[1].error_bound_ns = 5_000.0;
    let a = analyse(s.session());
    let f = &a.flows[0];
    let net = seg(f, "net metal1:wan0→metal2:wan0");
    exact(net, -15 * US);
    assert_eq!(net.below_bound, 1000);
    assert_eq!(net.sync_bound_ns, 10_000.0);
    // Same-domain segments carry no sync error.
    assert_eq!(seg(f, "metal2:ip_recv→tcp_recv").sync_bound_ns, 0.0);
    assert_eq!(a.totals.below_bound, 1000);
    assert!(
        a.warnings
            .iter()
            .any(|w| w.contains("below minus their sync error bound"))
    );
}

#[test]
fn a_later_fit_applies_from_its_validity_on() {
    let s = Synth::two_metals(100);
    let mut data = s.session();
    // From the middle of the session on, metal2's fit claims 7 µs more offset.
    let mid_host_ns = 1_000_000_000 + 500 * 1_000_000;
    let mut later = data.fits[1].clone();
    later.valid_from_host_ns = mid_host_ns;
    later.offset_ns += 7_000.0;
    data.fits.push(later);
    let a = analyse(data);
    let net = seg(&a.flows[0], "net metal1:wan0→metal2:wan0");
    assert_eq!(
        (net.latency.min_ns, net.latency.max_ns),
        (Some(100 * US), Some(107 * US))
    );
    assert_eq!(net.latency.count, 1000);
}

#[test]
fn virtual_hops_of_vms_and_containers_are_named_and_measured() {
    let mut s = Synth::containers_across_metals();
    s.loss_hop = 5;
    let a = analyse(s.session());
    assert_eq!(a.flows.len(), 1);
    let f = &a.flows[0];
    assert_eq!((f.src_host.as_str(), f.dst_host.as_str()), ("ct1", "ct2"));
    for (name, v) in [
        ("ct1:sock_send→tcp_send", 10),
        ("ct1:tcp_send→dev_send(eth0)", 5),
        ("vhop ct1:eth0→metal1:veth-ct1", 7),
        ("metal1:dev_recv(veth-ct1)→dev_send(wan0)", 4),
        ("net metal1:wan0→metal2:wan0", 1000),
        ("metal2:dev_recv(wan0)→dev_send(tap-vm2)", 3),
        ("vhop metal2:tap-vm2→vm2:eth0", 40),
        ("vm2:dev_recv(eth0)→dev_send(veth-ct2)", 6),
        ("vhop vm2:veth-ct2→ct2:eth0", 8),
        ("ct2:dev_recv(eth0)→sock_recv", 50),
        ("e2e ct1→ct2", 1133),
    ] {
        exact(seg(f, name), v * US);
    }
    assert_eq!(f.segments.len(), 11);
    assert_eq!(
        seg(f, "vhop metal2:tap-vm2→vm2:eth0").kind,
        SegmentKind::Vhop
    );
    assert_eq!(f.dominant.as_deref(), Some("net metal1:wan0→metal2:wan0"));
    let ct2 = a.hosts.iter().find(|h| h.name == "ct2").unwrap();
    assert_eq!(ct2.clock_domain, "vm2");
}

#[test]
fn sample_order_does_not_matter_and_flows_are_separated() {
    let mut s = Synth::two_metals(250);
    s.flows = 3;
    s.bytes_per_flow = 200;
    s.jitter_ns = 5_000;
    let forward = analyse(s.session());
    let mut data = s.session();
    let mut reversed: Vec<_> = data.samples.by_ref().collect();
    reversed.reverse();
    let backward = analyse(SessionData {
        session: data.session,
        hosts: data.hosts,
        observers: data.observers,
        fits: data.fits,
        samples: reversed,
    });
    assert_eq!(forward.flows.len(), 3);
    assert_eq!(
        serde_json::to_string(&forward).unwrap(),
        serde_json::to_string(&backward).unwrap()
    );
    assert_eq!(forward.pairs.len(), 1);
    assert_eq!(forward.pairs[0].flows, 3);
    assert_eq!(forward.pairs[0].segments[0].latency.count, 600);
    let net = seg(&forward.flows[0], "net metal1:wan0→metal2:wan0");
    assert!(net.latency.min_ns.unwrap() >= 250 * US && net.latency.max_ns.unwrap() < 255 * US);
}

#[test]
fn a_domain_without_fits_is_reported() {
    let s = Synth::two_metals(10);
    let mut data = s.session();
    data.fits.retain(|f| f.domain != "metal2");
    let a = analyse(data);
    assert!(
        a.warnings
            .iter()
            .any(|w| w.contains("clock domain metal2 has no clock fit")),
        "{:?}",
        a.warnings
    );
    let d = a.clocks.iter().find(|c| c.domain == "metal2").unwrap();
    assert_eq!(d.max_error_bound_ns, None);
}

#[test]
fn per_byte_values_match_the_distributions() {
    let mut s = Synth::two_metals(700);
    s.jitter_ns = 3_000;
    let v = segment_values(s.session(), |k, _| k == SegmentKind::Net);
    assert_eq!(v.segments.len(), 1);
    let net: Vec<_> = v.of("net metal1:wan0→metal2:wan0").collect();
    assert_eq!(net.len(), 1000);
    assert!(net.iter().all(|(_, _, x)| (700 * US..703 * US).contains(x)));
    assert_eq!(net[0].1, 1_000_000);
}

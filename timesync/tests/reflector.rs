//! The kernel programs driven with crafted frames through `BPF_PROG_TEST_RUN` (needs root, no
//! network): the reflector answers the session's probes with valid checksums and stamps, and
//! passes everything else untouched; the manager's hooks stamp only this session's traffic.
use aya::Ebpf;
use aya::maps::{HashMap as BpfHashMap, MapData};
use aya::programs::{TestRun, TestRunOptions};
use timesync::ebpf::{self, Globals};
use timesync::wire;

const TOKEN: u64 = 0x1234_5678_9abc_def0;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;
const XDP_DROP: u32 = 1;

fn require_root() {
    // SAFETY: getuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "BPF_PROG_TEST_RUN tests need root (run them as root, e.g. through ci/test)"
    );
}

fn csum(data: &[u8], init: u32) -> u16 {
    let mut sum = init;
    for c in data.chunks(2) {
        sum += (c[0] as u32) << 8 | *c.get(1).unwrap_or(&0) as u32;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// Sum of the UDP pseudo header.
fn pseudo(frame: &[u8]) -> u32 {
    let ip = &frame[14..34];
    let udp_len = u16::from_be_bytes([frame[38], frame[39]]) as u32;
    csum(&ip[12..20], 0) as u32 + 17 + udp_len
}

fn ip_valid(frame: &[u8]) -> bool {
    csum(&frame[14..34], 0) == 0xffff
}

fn udp_valid(frame: &[u8]) -> bool {
    let udp_len = u16::from_be_bytes([frame[38], frame[39]]) as usize;
    let c = u16::from_be_bytes([frame[40], frame[41]]);
    c != 0 && csum(&frame[34..34 + udp_len], pseudo(frame)) == 0xffff
}

/// An Ethernet/IPv4/UDP frame with correct checksums.
fn frame(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 0xbb]); // dst MAC
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 0xaa]); // src MAC
    f.extend_from_slice(&[0x08, 0x00]);
    let total = (20 + 8 + payload.len()) as u16;
    f.extend_from_slice(&[
        0x45,
        0,
        (total >> 8) as u8,
        total as u8,
        0x12,
        0x34,
        0x40,
        0,
        61,
        17,
        0,
        0,
    ]);
    f.extend_from_slice(&src);
    f.extend_from_slice(&dst);
    let ulen = (8 + payload.len()) as u16;
    f.extend_from_slice(&sport.to_be_bytes());
    f.extend_from_slice(&dport.to_be_bytes());
    f.extend_from_slice(&ulen.to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(payload);
    let ipc = !csum(&f[14..34], 0);
    f[24..26].copy_from_slice(&ipc.to_be_bytes());
    let uc = !csum(&f[34..], pseudo(&f));
    f[40..42].copy_from_slice(&uc.to_be_bytes());
    f
}

fn probe_frame(token: u64, id: u64) -> Vec<u8> {
    frame(
        [10, 77, 0, 1],
        [10, 77, 0, 11],
        40000,
        wire::DEFAULT_PORT,
        &wire::encode_probe(token, id),
    )
}

fn loaded(globals: &Globals, progs: &[&str]) -> Ebpf {
    require_root();
    let mut bpf = ebpf::load(globals).expect("load object");
    for p in progs {
        match bpf.program_mut(p).expect("program exists") {
            aya::programs::Program::Xdp(x) => x.load().expect("load xdp"),
            aya::programs::Program::SchedClassifier(c) => c.load().expect("load tc"),
            _ => unreachable!("only XDP and TC programs"),
        }
    }
    ebpf::set_local_addresses(&mut bpf, &["10.77.0.11".parse().unwrap()])
        .expect("set the reflector's address");
    bpf
}

fn run_xdp(bpf: &mut Ebpf, prog: &str, input: &[u8]) -> (u32, Vec<u8>) {
    let mut out = vec![0u8; input.len() + 256];
    let p = ebpf::xdp(bpf, prog).unwrap();
    let r = p
        .test_run(TestRunOptions {
            data_in: Some(input),
            data_out: Some(&mut out),
            ..Default::default()
        })
        .expect("test run");
    out.truncate(r.data_size_out as usize);
    (r.return_value, out)
}

fn globals() -> Globals {
    Globals {
        token: TOKEN,
        port: wire::DEFAULT_PORT,
        ..Globals::default()
    }
}

fn monotonic() -> u64 {
    ebpf::monotonic_ns()
}

#[test]
fn a_probe_is_reflected_with_valid_checksums_and_stamps() {
    let mut bpf = loaded(&globals(), &[ebpf::PROG_REFLECT]);
    let input = probe_frame(TOKEN, 77);
    assert!(
        ip_valid(&input) && udp_valid(&input),
        "the crafted probe is valid"
    );
    let before = monotonic();
    let (ret, out) = run_xdp(&mut bpf, ebpf::PROG_REFLECT, &input);
    let after = monotonic();
    assert_eq!(ret, XDP_TX);
    assert_eq!(out.len(), input.len());
    assert_eq!(&out[0..6], &input[6..12], "MACs swapped");
    assert_eq!(&out[6..12], &input[0..6]);
    assert_eq!(&out[26..30], &input[30..34], "IPs swapped");
    assert_eq!(&out[30..34], &input[26..30]);
    assert_eq!(&out[34..36], &input[36..38], "ports swapped");
    assert_eq!(&out[36..38], &input[34..36]);
    assert_eq!(out[22], 64, "fresh TTL");
    assert!(ip_valid(&out), "IP checksum valid after reflection");
    assert!(udp_valid(&out), "UDP checksum valid after reflection");
    let reply = wire::decode_reply(&out[42..]).expect("a reply");
    assert_eq!((reply.token, reply.id), (TOKEN, 77));
    assert!(
        before <= reply.t2 && reply.t2 <= reply.t3 && reply.t3 <= after,
        "stamps from clock_ns(): {reply:?}"
    );
}

#[test]
fn a_probe_with_a_partial_checksum_is_answered_with_a_full_one() {
    // Checksum offload leaves only the pseudo-header sum in the field; the reply must still be valid.
    let mut bpf = loaded(&globals(), &[ebpf::PROG_REFLECT]);
    let mut input = probe_frame(TOKEN, 5);
    let partial = csum(&[], pseudo(&input));
    input[40..42].copy_from_slice(&partial.to_be_bytes());
    let (ret, out) = run_xdp(&mut bpf, ebpf::PROG_REFLECT, &input);
    assert_eq!(ret, XDP_TX);
    assert!(ip_valid(&out) && udp_valid(&out));
}

#[test]
fn foreign_packets_pass_untouched() {
    let mut bpf = loaded(&globals(), &[ebpf::PROG_REFLECT]);
    let probe = wire::encode_probe(TOKEN, 1);
    let mut other_token = probe_frame(TOKEN ^ 1, 1);
    let wrong_port = frame([10, 77, 0, 1], [10, 77, 0, 11], 40000, 53, &probe);
    let mut reply = probe.to_vec();
    reply[5] = wire::KIND_REPLY;
    let a_reply = frame(
        [10, 77, 0, 11],
        [10, 77, 0, 1],
        wire::DEFAULT_PORT,
        wire::DEFAULT_PORT,
        &reply,
    );
    let mut bad_magic = probe_frame(TOKEN, 1);
    bad_magic[42] ^= 0xff;
    let short = frame(
        [10, 77, 0, 1],
        [10, 77, 0, 11],
        40000,
        wire::DEFAULT_PORT,
        &probe[..40],
    );
    let mut tcp = probe_frame(TOKEN, 1);
    tcp[23] = 6;
    let mut arp = probe_frame(TOKEN, 1);
    arp[12..14].copy_from_slice(&[0x08, 0x06]);
    let mut fragment = probe_frame(TOKEN, 1);
    fragment[20] = 0x20; // more fragments
    let tiny = vec![0u8; 20];
    let elsewhere = frame(
        [10, 77, 0, 1],
        [10, 77, 1, 2],
        40000,
        wire::DEFAULT_PORT,
        &probe,
    );
    other_token[0] = 0x02;
    for (what, f) in [
        ("another session's token", &other_token),
        ("another port", &wrong_port),
        ("a reply", &a_reply),
        ("bad magic", &bad_magic),
        ("short payload", &short),
        ("TCP", &tcp),
        ("ARP ethertype", &arp),
        ("IP fragment", &fragment),
        ("runt frame", &tiny),
        (
            "a probe to another host (routed through this one)",
            &elsewhere,
        ),
    ] {
        let (ret, out) = run_xdp(&mut bpf, ebpf::PROG_REFLECT, f);
        assert_eq!(ret, XDP_PASS, "{what} must pass");
        assert_eq!(&out, f, "{what} must be untouched");
    }
}

#[test]
fn the_test_switch_shifts_the_stamps() {
    let now = monotonic();
    let g = Globals {
        test_offset_ns: 1_234_567_000,
        test_drift_ppb: 20_000,
        test_ref_ns: now - 10_000_000_000,
        ..globals()
    };
    let mut bpf = loaded(&g, &[ebpf::PROG_REFLECT]);
    let before = monotonic();
    let (ret, out) = run_xdp(&mut bpf, ebpf::PROG_REFLECT, &probe_frame(TOKEN, 9));
    let after = monotonic();
    assert_eq!(ret, XDP_TX);
    let reply = wire::decode_reply(&out[42..]).unwrap();
    // About 10 s after the reference at 20 ppm: about +200 µs on top of the offset.
    let shifted = |t: u64| t + 1_234_567_000 + (t - g.test_ref_ns) * 20_000 / 1_000_000_000;
    let (lo, hi) = (shifted(before), shifted(after) + 1);
    assert!(
        lo <= reply.t2 && reply.t3 <= hi,
        "t2 {} t3 {} not in [{lo}, {hi}]",
        reply.t2,
        reply.t3
    );
    assert!(
        reply.t2 - before > 1_234_767_000,
        "the drift added about 200 µs"
    );
    assert!(udp_valid(&out));
}

#[test]
fn the_test_drop_switch_drops_probes() {
    let g = Globals {
        test_drop: u32::MAX,
        ..globals()
    };
    let mut bpf = loaded(&g, &[ebpf::PROG_REFLECT]);
    let (ret, _) = run_xdp(&mut bpf, ebpf::PROG_REFLECT, &probe_frame(TOKEN, 9));
    assert_eq!(ret, XDP_DROP);
}

fn stamp_map<'a>(bpf: &'a mut Ebpf, name: &str) -> BpfHashMap<&'a mut MapData, u64, u64> {
    BpfHashMap::try_from(bpf.map_mut(name).expect("map exists")).expect("a hash map")
}

#[test]
fn the_manager_hooks_stamp_only_this_sessions_probes_and_replies() {
    let mut bpf = loaded(
        &globals(),
        &[
            ebpf::PROG_EGRESS,
            ebpf::PROG_INGRESS_XDP,
            ebpf::PROG_INGRESS_TC,
        ],
    );
    let probe = probe_frame(TOKEN, 1001);
    let foreign = probe_frame(TOKEN ^ 0xff, 1002);
    let before = monotonic();
    for f in [&probe, &foreign] {
        let mut out = vec![0u8; f.len() + 64];
        let r = ebpf::tc(&mut bpf, ebpf::PROG_EGRESS)
            .unwrap()
            .test_run(TestRunOptions {
                data_in: Some(f),
                data_out: Some(&mut out),
                ..Default::default()
            })
            .expect("tc test run");
        assert_eq!(
            r.return_value as i32, -1,
            "egress hands the packet on (TC_ACT_UNSPEC)"
        );
    }
    // The reflector's answer, as it arrives back.
    let mut refl = loaded(&globals(), &[ebpf::PROG_REFLECT]);
    let (_, reply) = run_xdp(&mut refl, ebpf::PROG_REFLECT, &probe);
    let (ret, _) = run_xdp(&mut bpf, ebpf::PROG_INGRESS_XDP, &reply);
    assert_eq!(ret, XDP_PASS);
    let (_, reply2) = run_xdp(&mut refl, ebpf::PROG_REFLECT, &probe_frame(TOKEN, 1003));
    let mut out = vec![0u8; reply2.len() + 64];
    ebpf::tc(&mut bpf, ebpf::PROG_INGRESS_TC)
        .unwrap()
        .test_run(TestRunOptions {
            data_in: Some(&reply2),
            data_out: Some(&mut out),
            ..Default::default()
        })
        .expect("tc ingress test run");
    // A probe arriving is no reply: not stamped as one.
    let _ = run_xdp(&mut bpf, ebpf::PROG_INGRESS_XDP, &probe_frame(TOKEN, 1004));
    let after = monotonic();

    let tx = stamp_map(&mut bpf, ebpf::MAP_TX);
    let t1 = tx.get(&1001, 0).expect("probe 1001 stamped at egress");
    assert!(before <= t1 && t1 <= after);
    assert!(
        tx.get(&1002, 0).is_err(),
        "another session's probe is not stamped"
    );
    let rx = stamp_map(&mut bpf, ebpf::MAP_RX);
    let t4 = rx.get(&1001, 0).expect("reply 1001 stamped at XDP ingress");
    assert!(t1 <= t4 && t4 <= after);
    assert!(rx.get(&1003, 0).is_ok(), "reply 1003 stamped at TC ingress");
    assert!(
        rx.get(&1004, 0).is_err(),
        "a probe is not stamped as a reply"
    );
}

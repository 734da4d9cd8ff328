use super::super::probe::{Check, IfaceProbe};
use super::super::{AttachedProg, Interface};
use super::*;
use crate::inventory::{Inventory, load_str};

fn inv() -> Inventory {
    load_str(
        "t.yaml",
        "all:\n  hosts:\n    m1: {address: 10.0.0.1, interfaces: [eth0, tap0]}\n    c1: {kind: container, parent: m1, netns: ns1, host_interface: tap0, interfaces: [eth0]}\n",
    )
    .unwrap()
}

fn facts() -> Facts {
    let iface = |exists| Interface {
        exists,
        ifindex: Some(2),
        operstate: Some("up".into()),
        programs: vec![],
    };
    Facts {
        arch: "x86_64".into(),
        kernel: "6.18.0".into(),
        btf: true,
        boot_id: "0123456789abcdef".into(),
        uid: 0,
        user: "root".into(),
        sudo: Sudo::Root,
        lockdown: None,
        install_dir_exists: true,
        disk_free_bytes: Some(10 << 30),
        files: Default::default(),
        interfaces: [
            ("eth0".to_string(), iface(true)),
            ("tap0".to_string(), iface(true)),
        ]
        .into(),
        running: Default::default(),
        has_ip: true,
        has_bpftool: false,
    }
}

fn probe() -> ProbeReport {
    let ok = |hook: &str| Check {
        ok: true,
        hook: hook.into(),
        error: None,
    };
    let ok_if = IfaceProbe {
        exists: true,
        ifindex: 2,
        xdp_native: ok("xdp native"),
        xdp_generic: ok("xdp generic"),
        tc_egress: ok("tcx egress"),
        dev_recv: None,
        foreign: vec![],
    };
    ProbeReport {
        schema: 1,
        kernel: "6.18.0".into(),
        btf: true,
        layers: [(
            "sock_send".to_string(),
            ok("tracepoint:sock:sock_send_length"),
        )]
        .into(),
        interfaces: [
            ("eth0".to_string(), ok_if.clone()),
            ("tap0".to_string(), ok_if),
        ]
        .into(),
        ok: true,
        ..Default::default()
    }
}

fn ifaces() -> Vec<String> {
    vec!["eth0".into(), "tap0".into()]
}

#[test]
fn a_healthy_host_passes_every_check() {
    let inv = inv();
    let ev = Evidence {
        reach: Some(Ok(())),
        facts: Some(Ok(facts())),
        probe: Some(Ok(probe())),
    };
    let r = judge_kernel_host(&inv.hosts["m1"], &ifaces(), &inv.session.sampling, &ev);
    assert!(r.ok, "{r:#?}");
    assert!(
        CHECKS.iter().all(|k| r.checks[*k].status == Status::Pass),
        "{r:#?}"
    );
    assert_eq!(r.checks["xdp"].detail, "native");
}

#[test]
fn unreachable_says_why_and_skips_the_rest() {
    let inv = inv();
    let ev = Evidence {
        reach: Some(Err(
            "ssh: connect to host 10.0.0.1 port 22: Connection refused".into(),
        )),
        ..Default::default()
    };
    let r = judge_kernel_host(&inv.hosts["m1"], &ifaces(), &inv.session.sampling, &ev);
    assert!(!r.ok);
    let v = &r.checks["reachable"];
    assert_eq!(v.status, Status::Fail);
    assert!(v.reason.as_ref().unwrap().contains("Connection refused"));
    assert!(v.fix.as_ref().unwrap().contains("sshd"));
    assert_eq!(r.checks["arch"].status, Status::Skip);
}

#[test]
fn a_missing_interface_is_named() {
    let inv = inv();
    let mut f = facts();
    f.interfaces.get_mut("tap0").unwrap().exists = false;
    let mut p = probe();
    p.interfaces.get_mut("tap0").unwrap().exists = false;
    let ev = Evidence {
        reach: Some(Ok(())),
        facts: Some(Ok(f)),
        probe: Some(Ok(p)),
    };
    let r = judge_kernel_host(&inv.hosts["m1"], &ifaces(), &inv.session.sampling, &ev);
    assert_eq!(r.checks["interfaces"].status, Status::Fail);
    assert!(
        r.checks["interfaces"]
            .reason
            .as_ref()
            .unwrap()
            .contains("tap0")
    );
}

#[test]
fn a_foreign_xdp_program_fails_with_how_to_detach() {
    let inv = inv();
    let mut f = facts();
    f.interfaces
        .get_mut("eth0")
        .unwrap()
        .programs
        .push(AttachedProg {
            id: 114,
            name: "foreign_xdp".into(),
            attach: "xdpgeneric".into(),
        });
    f.interfaces
        .get_mut("tap0")
        .unwrap()
        .programs
        .push(AttachedProg {
            id: 9,
            name: "lp_xdp_recv".into(),
            attach: "xdpgeneric".into(),
        });
    let ev = Evidence {
        reach: Some(Ok(())),
        facts: Some(Ok(f)),
        probe: Some(Ok(probe())),
    };
    let r = judge_kernel_host(&inv.hosts["m1"], &ifaces(), &inv.session.sampling, &ev);
    let v = &r.checks["foreign"];
    assert_eq!(v.status, Status::Fail, "{v:?}");
    assert!(v.reason.as_ref().unwrap().contains("foreign_xdp"));
    assert!(
        !v.reason.as_ref().unwrap().contains("lp_xdp_recv"),
        "ours are not foreign"
    );
    assert!(
        v.fix
            .as_ref()
            .unwrap()
            .contains("ip link set dev eth0 xdpgeneric off")
    );
}

/// A probe where dev_recv's XDP, dev_send's TC and sock_send's hook all fail, and someone
/// else's XDP program holds eth0.
fn broken_evidence() -> Evidence {
    let mut p = probe();
    let failed = |hook: &str| Check {
        ok: false,
        hook: hook.into(),
        error: Some("Operation not supported".into()),
    };
    for ip in p.interfaces.values_mut() {
        ip.xdp_native = failed("xdp native");
        ip.xdp_generic = failed("xdp generic");
        ip.tc_egress = failed("tcx egress");
    }
    p.layers.insert(
        "sock_send".into(),
        failed("tracepoint:sock:sock_send_length"),
    );
    p.layers.insert(
        "tcp_send".into(),
        Check {
            ok: true,
            hook: "tp_btf:tcp_probe".into(),
            error: None,
        },
    );
    let mut f = facts();
    f.interfaces
        .get_mut("eth0")
        .unwrap()
        .programs
        .push(AttachedProg {
            id: 7,
            name: "foreign_xdp".into(),
            attach: "xdpgeneric".into(),
        });
    Evidence {
        reach: Some(Ok(())),
        facts: Some(Ok(f)),
        probe: Some(Ok(p)),
    }
}

#[test]
fn only_the_layers_the_session_records_are_judged() {
    let ev = broken_evidence();
    let judge = |layers: &[&str]| {
        let mut inv = inv();
        inv.session.sampling.layers = layers.iter().map(|l| l.to_string()).collect();
        judge_kernel_host(&inv.hosts["m1"], &ifaces(), &inv.session.sampling, &ev)
    };
    // Every layer: each broken hook fails its check.
    let r = judge(&[]);
    for k in ["foreign", "xdp", "tc", "hooks"] {
        assert_eq!(r.checks[k].status, Status::Fail, "{k}: {:?}", r.checks[k]);
    }
    assert_eq!(r.checks["hooks"].detail, "1/2");

    // Only tcp_send: nothing attaches to XDP or TC, sock_send is not asked for.
    let r = judge(&["tcp_send"]);
    assert!(r.ok, "{r:#?}");
    assert_eq!(r.checks["hooks"].status, Status::Pass);
    assert_eq!(r.checks["hooks"].detail, "1/1");
    assert_eq!(r.checks["foreign"].status, Status::Pass);
    assert_eq!(r.checks["foreign"].detail, "1 (coexisting)");
    assert_eq!(r.checks["xdp"].status, Status::Skip);
    assert_eq!(r.checks["xdp"].detail, "unused");
    assert!(
        r.checks["xdp"]
            .reason
            .as_ref()
            .unwrap()
            .contains("dev_recv")
    );
    assert_eq!(r.checks["tc"].status, Status::Skip);
    assert!(r.checks["tc"].reason.as_ref().unwrap().contains("dev_send"));

    // Only dev_recv: its XDP and the foreign program matter, no layer hook is asked for.
    let r = judge(&["dev_recv"]);
    assert_eq!(r.checks["xdp"].status, Status::Fail);
    assert_eq!(r.checks["foreign"].status, Status::Fail);
    assert_eq!(r.checks["tc"].status, Status::Skip);
    assert_eq!(r.checks["hooks"].status, Status::Skip);
    assert_eq!(r.checks["hooks"].detail, "unused");
}

#[test]
fn someone_elses_xdp_program_coexists_where_dev_recv_attaches_beside_it() {
    let inv = inv();
    let mut ev = broken_evidence();
    let Some(Ok(p)) = &mut ev.probe else {
        unreachable!()
    };
    let attached = |hook: &str| Check {
        ok: true,
        hook: hook.into(),
        error: None,
    };
    // eth0 is held by the foreign program: the observer's auto mode moved to TC ingress.
    p.interfaces.get_mut("eth0").unwrap().dev_recv = Some(attached("tc"));
    p.interfaces.get_mut("tap0").unwrap().dev_recv = Some(attached("xdp-native"));
    let r = judge_kernel_host(&inv.hosts["m1"], &ifaces(), &inv.session.sampling, &ev);
    assert_eq!(r.checks["foreign"].status, Status::Pass, "{r:#?}");
    assert_eq!(r.checks["foreign"].detail, "1 (coexisting)");
    assert_eq!(r.checks["xdp"].status, Status::Pass);
    assert_eq!(r.checks["xdp"].detail, "tc 1, native 1");

    // Where dev_recv cannot attach at all, the foreign program is named as the reason.
    let Some(Ok(p)) = &mut ev.probe else {
        unreachable!()
    };
    p.interfaces.get_mut("eth0").unwrap().dev_recv = Some(Check {
        ok: false,
        hook: "auto".into(),
        error: Some("Device or resource busy".into()),
    });
    let r = judge_kernel_host(&inv.hosts["m1"], &ifaces(), &inv.session.sampling, &ev);
    assert_eq!(r.checks["foreign"].status, Status::Fail);
    assert_eq!(r.checks["xdp"].status, Status::Fail);
    assert!(
        r.checks["xdp"]
            .reason
            .as_ref()
            .unwrap()
            .contains("held by someone else's program `foreign_xdp`"),
        "{:?}",
        r.checks["xdp"]
    );
}

#[test]
fn sudo_needs_become_for_non_root() {
    let inv = inv();
    let mut f = facts();
    f.sudo = Sudo::Passwordless;
    f.user = "ops".into();
    let ev = Evidence {
        reach: Some(Ok(())),
        facts: Some(Ok(f)),
        probe: Some(Ok(probe())),
    };
    let r = judge_kernel_host(&inv.hosts["m1"], &ifaces(), &inv.session.sampling, &ev);
    assert_eq!(r.checks["sudo"].status, Status::Fail);
    assert!(
        r.checks["sudo"]
            .fix
            .as_ref()
            .unwrap()
            .contains("become: true")
    );
}

#[test]
fn containers_follow_their_parent() {
    let inv = inv();
    let ev = Evidence {
        reach: Some(Err("refused".into())),
        ..Default::default()
    };
    let parent = judge_kernel_host(&inv.hosts["m1"], &ifaces(), &inv.session.sampling, &ev);
    let r = judge_container(
        &inv.hosts["c1"],
        &parent,
        None,
        &ContainerEvidence::default(),
    );
    assert!(!r.ok);
    assert!(
        r.checks["reachable"]
            .reason
            .as_ref()
            .unwrap()
            .contains("m1")
    );

    let ev = Evidence {
        reach: Some(Ok(())),
        facts: Some(Ok(facts())),
        probe: Some(Ok(probe())),
    };
    let parent = judge_kernel_host(&inv.hosts["m1"], &ifaces(), &inv.session.sampling, &ev);
    let found = [("eth0".to_string(), false)].into();
    let r = judge_container(
        &inv.hosts["c1"],
        &parent,
        Some(&facts()),
        &ContainerEvidence {
            interfaces: Some(Ok(found)),
        },
    );
    assert_eq!(r.checks["interfaces"].status, Status::Fail);
    assert!(
        r.checks["interfaces"]
            .reason
            .as_ref()
            .unwrap()
            .contains("inside ns1")
    );
}

#[test]
fn one_clock_domain_on_two_kernels_fails() {
    let inv = load_str(
        "t.yaml",
        "all:\n  vars: {clock_domain: shared}\n  hosts:\n    a: {address: 10.0.0.1}\n    b: {address: 10.0.0.2}\n",
    )
    .unwrap();
    let ev = Evidence {
        reach: Some(Ok(())),
        facts: Some(Ok(facts())),
        probe: Some(Ok(probe())),
    };
    let mut reports = vec![
        judge_kernel_host(&inv.hosts["a"], &[], &inv.session.sampling, &ev),
        judge_kernel_host(&inv.hosts["b"], &[], &inv.session.sampling, &ev),
    ];
    let boots = [
        ("a".to_string(), "x".to_string()),
        ("b".to_string(), "y".to_string()),
    ]
    .into();
    judge_clock_domains(&mut reports, &inv.hosts, &boots);
    assert!(
        reports
            .iter()
            .all(|r| r.checks["clock"].status == Status::Fail)
    );
}

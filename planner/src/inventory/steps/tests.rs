//! Parsing, validation, targeting and rendering of steps.yaml, on a small inline inventory.
use std::path::Path;

use super::*;

const HOSTS: &str = "\
all:
  hosts:
    m1: {address: 10.0.0.1, interfaces: [eth0], params: {port: 5201}}
    m2: {address: 10.0.0.2, interfaces: [eth0]}
    c1: {kind: container, parent: m1, netns: c1ns, addresses: [10.0.1.6], interfaces: [eth0]}
    c2: {kind: container, parent: m2, host_interface: veth-c2, addresses: [10.0.2.6], interfaces: [eth0]}
  children:
    senders:
      hosts:
        m1:
        c1:
";

fn load_with(steps: &str) -> std::result::Result<Inventory, super::super::InventoryError> {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("hosts.yaml"), HOSTS).unwrap();
    std::fs::write(dir.path().join("steps.yaml"), steps).unwrap();
    let r = super::super::load(dir.path());
    // Error locations name the file; keep the directory alive until here.
    drop(dir);
    r
}

fn err(steps: &str) -> String {
    match load_with(steps) {
        Ok(_) => panic!("accepted: {steps}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn steps_are_targeted_and_rendered_per_host() {
    let inv = load_with(
        "- hosts: senders\n\
         \x20 steps:\n\
         \x20   - run: {name: prep, command: 'touch /tmp/{{ host.name }}', creates: '/tmp/{{ host.name }}'}\n\
         - hosts: [m2]\n\
         \x20 steps:\n\
         \x20   - start:\n\
         \x20       name: sink\n\
         \x20       command: \"iperf3 -s -p {{ hostvars.m1.params.port }} -B {{ host.address }}\"\n\
         \x20       become: true\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let got: Vec<(usize, &str, &StepAction)> = inv
        .steps
        .iter()
        .map(|s| (s.index, s.host.as_str(), &s.action))
        .collect();
    assert_eq!(got.len(), 3, "{got:?}");
    assert_eq!(
        (got[0].0, got[0].1),
        (0, "m1"),
        "inventory order within a step"
    );
    assert_eq!((got[1].0, got[1].1), (0, "c1"));
    assert_eq!(
        got[1].2,
        &StepAction::Run {
            name: "prep".into(),
            command: "touch /tmp/c1".into(),
            creates: Some("/tmp/c1".into()),
            become_root: false
        }
    );
    assert_eq!(
        got[2].2,
        &StepAction::Start {
            name: "sink".into(),
            command: "iperf3 -s -p 5201 -B 10.0.0.2".into(),
            become_root: true
        }
    );
    assert_eq!(got[2].0, 1);
    assert!(inv.steps[2].location.file.ends_with("steps.yaml"));
    assert_eq!(
        (inv.steps[2].location.line, inv.steps[2].location.column),
        (6, 7)
    );
}

#[test]
fn all_targets_every_host_and_no_steps_file_means_no_steps() {
    let inv = load_with("- hosts: all\n  steps:\n    - run: {name: x, command: 'true'}\n");
    // c2 has no netns: `all` includes it, which is refused (its steps could not run inside it).
    assert!(
        inv.unwrap_err()
            .to_string()
            .contains("container `c2` has no `netns`")
    );
    let lab = Path::new(env!("CARGO_MANIFEST_DIR")).join("../inventory/lab");
    assert!(super::super::load(&lab).unwrap().steps.is_empty());
}

#[test]
fn bad_steps_are_refused_with_file_line_column_and_hint() {
    let cases: &[(&str, &str)] = &[
        (
            "hosts: m1\n",
            "steps.yaml:1:6: the top level of a steps file must be a list of plays",
        ),
        (
            "- hosts: nope\n  steps: []\n",
            "steps.yaml:1:10: no host or group `nope`",
        ),
        ("- steps: []\n", "steps.yaml:1:3: a play without `hosts:`"),
        ("- hosts: m1\n", "a play without `steps:`"),
        (
            "- hosts: m1\n  tasks: []\n",
            "steps.yaml:2:3: unknown key `tasks` in a play\n  hint: latplan calls them `steps:`",
        ),
        (
            "- hosts: m1\n  steps:\n    - shell: ls\n",
            "steps.yaml:3:7: unknown step `shell`",
        ),
        (
            "- hosts: m1\n  steps:\n    - run: {name: a}\n",
            "steps.yaml:3:7: `run` needs `command:`",
        ),
        (
            "- hosts: m1\n  steps:\n    - start: {name: a, command: x, creates: /x}\n",
            "steps.yaml:3:36: unknown key `creates` in `start`",
        ),
        (
            "- hosts: m1\n  steps:\n    - run: {name: 'a b', command: x}\n",
            "invalid step name `a b`",
        ),
        (
            "- hosts: m1\n  steps:\n    - run: {name: a, command: '{{ host.nmae }}'}\n",
            "for host `m1`: undefined value",
        ),
        (
            "- hosts: m1\n  steps:\n    - run: {name: a, command: x, creates: tmp/x}\n",
            "`creates` tmp/x is not absolute",
        ),
        (
            "- hosts: m1\n  steps:\n    - run: {name: a, command: x, become: maybe}\n",
            "`become`: expected true or false",
        ),
        (
            "- hosts: m1\n  steps:\n    - run: {name: a, command: x}\n      start: {name: b, command: y}\n",
            "a step has exactly one key",
        ),
        (
            "- hosts: m1\n  steps:\n    - start: {name: a, command: x}\n- hosts: senders\n  steps:\n    - start: {name: a, command: y}\n",
            "steps.yaml:6:7: host `m1` already has a `start` step named `a`",
        ),
        (
            "- hosts: c2\n  steps: []\n",
            "container `c2` has no `netns`",
        ),
    ];
    for (steps, want) in cases {
        let e = err(steps);
        assert!(
            e.contains(want),
            "for {steps:?}\n  want: {want}\n  got:  {e}"
        );
    }
}

#[test]
fn the_demo_inventory_starts_its_traffic_through_steps() {
    let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../inventory/demo");
    let inv = super::super::load(&demo).unwrap_or_else(|e| panic!("{e}"));
    let got: Vec<(&str, &str, &str)> = inv
        .steps
        .iter()
        .map(|s| (s.host.as_str(), s.action.kind(), s.action.command()))
        .collect();
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!((got[0].0, got[0].1), ("vm2", "start"));
    assert!(
        got[0].2.ends_with("tcp-recv --listen 10.77.2.2:5201"),
        "{}",
        got[0].2
    );
    assert_eq!((got[1].0, got[1].1), ("ct1", "start"));
    assert!(
        got[1]
            .2
            .contains("tcp-send --connect 10.77.2.2:5201 --duration 3600s --rate 20M"),
        "{}",
        got[1].2
    );
}

//! Snapshot tests of the rendered lab plans, and the errors of bad playbooks.
use std::path::Path;

use super::*;
use crate::inventory::load;

fn lab() -> Inventory {
    load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../inventory/lab")).unwrap()
}

fn run() -> RunVars {
    RunVars {
        id: "20261126-000000-test".into(),
        token: "c0ffee".into(),
    }
}

fn render_all(playbook: &str) -> String {
    let inv = lab();
    let pb = Playbooks::load(None).unwrap();
    let mut out = String::new();
    for h in inv.kernel_hosts() {
        let plan = pb
            .render(playbook, &inv, h, &run())
            .unwrap_or_else(|e| panic!("{e}"));
        out.push_str(&format!(
            "## {}\n{}\n",
            h.name,
            serde_json::to_string_pretty(&plan).unwrap()
        ));
    }
    out
}

#[test]
fn lab_apply_plans() {
    insta::assert_snapshot!(render_all("apply"));
}

#[test]
fn lab_teardown_plans() {
    insta::assert_snapshot!(render_all("teardown"));
}

#[test]
fn rendered_observer_config_is_json() {
    let inv = lab();
    let pb = Playbooks::load(None).unwrap();
    let plan = pb.render("apply", &inv, &inv.hosts["vm2"], &run()).unwrap();
    let (_, content) = plan.files.iter().next().unwrap();
    let v: serde_json::Value = serde_json::from_str(content).unwrap();
    assert_eq!(v["interfaces"], serde_json::json!(["eth0", "veth-ct2"]));
    assert_eq!(
        v["containers"],
        serde_json::json!(["lp-ct2"]),
        "vm2 covers ct2"
    );
    assert_eq!(v["sampling"]["size"], 65536);
}

fn playbook_dir(apply: &str) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(d.path().join("files")).unwrap();
    std::fs::write(d.path().join("apply.yaml.j2"), apply).unwrap();
    std::fs::write(d.path().join("teardown.yaml.j2"), "- facts: {}\n").unwrap();
    std::fs::write(d.path().join("files/observer.json.j2"), "{}").unwrap();
    d
}

#[test]
fn an_undefined_variable_names_the_playbook_and_line() {
    let d = playbook_dir(
        "- facts: {}\n- upload: {artifact: observer, dest: \"{{ host.instal_dir }}/x\", mode: \"0755\"}\n",
    );
    let inv = lab();
    let e = Playbooks::load(Some(d.path()))
        .unwrap()
        .render("apply", &inv, &inv.hosts["metal1"], &run())
        .unwrap_err();
    let s = e.to_string();
    assert!(
        s.contains("apply.yaml.j2") && s.contains("line 2") && s.contains("metal1"),
        "{s}"
    );
}

#[test]
fn an_unknown_step_kind_is_refused_with_its_line() {
    let d = playbook_dir("- facts: {}\n- reboot: {now: true}\n");
    let inv = lab();
    let e = Playbooks::load(Some(d.path()))
        .unwrap()
        .render("apply", &inv, &inv.hosts["metal1"], &run())
        .unwrap_err();
    let s = e.to_string();
    assert!(s.contains("line 2") && s.contains("reboot"), "{s}");
}

#[test]
fn a_bad_mode_is_refused() {
    let d = playbook_dir("- upload: {artifact: observer, dest: /x/y, mode: \"rwx\"}\n");
    let inv = lab();
    let e = Playbooks::load(Some(d.path()))
        .unwrap()
        .render("apply", &inv, &inv.hosts["metal1"], &run())
        .unwrap_err();
    assert!(e.to_string().contains("invalid mode"), "{e}");
}

#[test]
fn a_template_syntax_error_is_reported_at_load() {
    let d = playbook_dir("- facts: {}\n{% if %}\n");
    let e = Playbooks::load(Some(d.path())).err().expect("syntax error");
    assert!(e.to_string().contains("apply.yaml.j2"), "{e}");
}

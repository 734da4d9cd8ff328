//! Facts parsing from recorded script output (data fixtures, as pyinfra tests its facts).
use super::*;

const SAMPLE: &str = "arch\tx86_64
kernel\t6.18.0-1-amd64
btf\t1
boot_id\te7f8c098-b02e-45ff-95ce-f497b779f2e1
uid\t0
user\troot
sudo\troot
lockdown\tnone [integrity] confidentiality
install_dir\t1
disk_free_kb\t1048576
file\t9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08\t/var/lib/latplan/bin/observer
pid\tobserver\t4242
tool\tip
tool\tbpftool
iface\teth0\t1\t2\tup
ipjson\teth0\t[{\"ifindex\":2,\"ifname\":\"eth0\",\"xdp\":{\"mode\":2,\"prog\":{\"id\":114,\"name\":\"foreign_xdp\",\"tag\":\"614b\"},\"attached\":[{\"mode\":2,\"prog\":{\"id\":114,\"name\":\"foreign_xdp\"}}]}}]
bpfnet\teth0\t[{\"xdp\":[{\"devname\":\"eth0\",\"ifindex\":2,\"mode\":\"generic\",\"id\":114}],\"tc\":[],\"tcx\":[{\"devname\":\"eth0\",\"ifindex\":2,\"kind\":\"ingress\",\"name\":\"lp_tc_in\",\"prog_id\":7}],\"flow_dissector\":[]}]
iface\tgone0\t0
";

#[test]
fn parses_a_recorded_run() {
    let f = parse(SAMPLE).unwrap();
    assert_eq!(f.arch, "x86_64");
    assert!(f.btf);
    assert_eq!(f.sudo, Sudo::Root);
    assert_eq!(f.disk_free_bytes, Some(1 << 30));
    assert_eq!(
        f.files[Path::new("/var/lib/latplan/bin/observer")].len(),
        64
    );
    assert_eq!(f.running["observer"], 4242);
    let eth0 = &f.interfaces["eth0"];
    assert!(eth0.exists);
    assert_eq!(eth0.ifindex, Some(2));
    assert_eq!(
        eth0.programs.len(),
        2,
        "XDP reported by both tools counts once: {:?}",
        eth0.programs
    );
    let xdp = &eth0.programs[0];
    assert_eq!(
        (xdp.id, xdp.name.as_str(), xdp.attach.as_str()),
        (114, "foreign_xdp", "xdpgeneric")
    );
    assert!(!xdp.is_ours());
    assert!(eth0.programs[1].is_ours());
    assert_eq!(eth0.programs[1].attach, "tcx_ingress");
    assert!(!f.interfaces["gone0"].exists);
}

#[test]
fn missing_facts_are_an_error() {
    let e = parse("arch\tx86_64\n").unwrap_err();
    assert!(e.contains("missing"), "{e}");
}

#[tokio::test]
async fn the_script_runs_here() {
    // The manager is a host like any other: run the real script through the local transport.
    let t = crate::transport::LocalTransport::new("local", std::time::Duration::from_secs(20));
    let dir = std::env::temp_dir().join(format!("latplan-facts-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("bin")).unwrap();
    std::fs::write(dir.join("bin/x"), b"test").unwrap();
    let out = t
        .exec(Cmd::new(script(&dir, &["lo".into(), "nosuch0".into()])))
        .await
        .unwrap();
    assert!(out.success(), "{}", out.stderr_str());
    let f = parse(&out.stdout_str()).unwrap();
    assert!(!f.boot_id.is_empty());
    assert!(f.install_dir_exists);
    assert_eq!(
        f.files[&dir.join("bin/x")],
        "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
        "sha256 of `test`"
    );
    assert!(f.interfaces["lo"].exists);
    assert!(!f.interfaces["nosuch0"].exists);
    assert!(f.disk_free_bytes.unwrap() > 0);
    std::fs::remove_dir_all(&dir).unwrap();
}

//! `observer probe`: which of our hooks load and attach on this host, without recording anything.
//! The JSON it prints is read by `latplan check`; its schema is documented in docs/observer.md
//! and only grows (new keys), never changes meaning.
use crate::btf::Btf;
use crate::loader::{self, KernelSettings};
use anyhow::Result;
use aya::programs::SchedClassifier;
use aya::programs::tc::TcAttachType;
use latplan_common::Layer;
use latplan_common::kernel::{ObserverGlobals, SamplingConfig};
use serde::Serialize;
use std::collections::BTreeMap;

pub const PROBE_SCHEMA_VERSION: u32 = 1;

#[derive(Debug, Serialize)]
pub struct Probe {
    pub schema: u32,
    pub kernel: String,
    pub btf: bool,
    /// Error resolving the kernel struct offsets from BTF, if any.
    pub btf_error: Option<String>,
    pub cgroup2: Option<String>,
    /// Per layer (non-interface layers): whether its programs loaded and attached here.
    pub layers: BTreeMap<String, Check>,
    pub interfaces: BTreeMap<String, IfaceProbe>,
    /// True when every layer and every interface check passed.
    pub ok: bool,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct Check {
    pub ok: bool,
    pub hook: String,
    pub error: Option<String>,
}

#[derive(Debug, Serialize, Default)]
pub struct IfaceProbe {
    pub exists: bool,
    pub ifindex: u32,
    pub xdp_native: Check,
    pub xdp_generic: Check,
    pub tc_egress: Check,
    /// TCX ingress: the alternative dev_recv hook (`xdp_mode: "tc"`).
    pub tc_ingress: Check,
    /// What dev_recv attaches to with `xdp_mode: "auto"`, the mode sessions use: its `hook` is
    /// the mode it got (`xdp-native`, `xdp-generic` or `tc`), as `run` would choose it here.
    pub dev_recv: Check,
    /// Programs of others already attached to the interface (XDP, TCX ingress/egress).
    pub foreign: Vec<Foreign>,
}

#[derive(Debug, Serialize)]
pub struct Foreign {
    pub hook: String,
    pub prog_id: u32,
    pub name: String,
}

fn settings() -> KernelSettings {
    KernelSettings {
        sampling: SamplingConfig {
            sample_mask: 0xffff,
            ..Default::default()
        },
        globals: ObserverGlobals {
            sample_shift: 16,
            ..Default::default()
        },
        netns: vec![],
        interfaces: vec![],
    }
}

/// What dev_recv attaches to on an interface with `xdp_mode`, decided from the attach tests
/// already made, as `loader::attach_ingress` decides it. `auto`: TCX ingress on a virtual device,
/// else native XDP, else generic; `native`, `generic`: that hook; `tc`: TCX ingress; and TCX
/// ingress wherever another program holds the interface's XDP. Decided, not attached again: on some NIC drivers every
/// native XDP attach and detach restarts the device's queues (docs/observer.md), and the
/// probe's own test is one too many already.
fn ingress_in(xdp_mode: &str, virtual_dev: bool, ip: &IfaceProbe) -> Check {
    let tc = || Check {
        hook: "tc".into(),
        ..ip.tc_ingress.clone()
    };
    let xdp = |mode: &str, test: &Check| Check {
        hook: format!("xdp-{mode}"),
        ..test.clone()
    };
    let held = |test: &Check| test.error.as_deref().is_some_and(loader::mentions_busy);
    match xdp_mode {
        "tc" => tc(),
        "native" | "generic" => {
            let test = if xdp_mode == "native" {
                &ip.xdp_native
            } else {
                &ip.xdp_generic
            };
            if held(test) {
                tc()
            } else {
                xdp(xdp_mode, test)
            }
        }
        _ if virtual_dev => tc(),
        _ if ip.xdp_native.ok => xdp("native", &ip.xdp_native),
        _ if ip.xdp_generic.ok => xdp("generic", &ip.xdp_generic),
        _ if held(&ip.xdp_generic) => tc(),
        _ => Check {
            hook: "auto".into(),
            ..ip.xdp_generic.clone()
        },
    }
}

fn check(hook: &str, r: Result<()>) -> Check {
    Check {
        ok: r.is_ok(),
        hook: hook.into(),
        error: r.err().map(|e| format!("{e:#}")),
    }
}

pub fn probe(interfaces: &[String], xdp_mode: &str) -> Probe {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().into())
        .unwrap_or_default();
    let btf = Btf::from_sys_fs();
    let mut p = Probe {
        schema: PROBE_SCHEMA_VERSION,
        kernel,
        btf: btf.is_ok(),
        btf_error: None,
        cgroup2: loader::cgroup2_root().ok(),
        layers: BTreeMap::new(),
        interfaces: BTreeMap::new(),
        ok: false,
    };
    let btf = match btf {
        Ok(b) => b,
        Err(e) => {
            p.btf_error = Some(format!("{e:#}"));
            return p;
        }
    };
    if let Err(e) = btf.kernel_offsets() {
        p.btf_error = Some(format!("{e:#}"));
    }
    // Each check gets its own freshly loaded object, dropped (detached) right after.
    for layer in Layer::ALL {
        if layer.is_interface_layer() && layer != Layer::DevXmit {
            continue;
        }
        let hook = loader::hook_of(layer).1;
        let r = loader::load(&btf, &settings())
            .and_then(|mut e| loader::attach_layer(&mut e, &btf, layer, &mut Vec::new()));
        p.layers.insert(layer.name().into(), check(hook, r));
    }
    for name in interfaces {
        let mut ip = IfaceProbe::default();
        match loader::ifindex(name) {
            Ok(i) => {
                ip.exists = true;
                ip.ifindex = i;
            }
            Err(e) => {
                let missing = |hook: &str| Check {
                    ok: false,
                    hook: hook.into(),
                    error: Some(format!("{e:#}")),
                };
                ip.xdp_native = missing("xdp native");
                ip.xdp_generic = missing("xdp generic");
                ip.tc_egress = missing("tcx egress");
                ip.tc_ingress = missing("tcx ingress");
                ip.dev_recv = missing("auto");
                p.interfaces.insert(name.clone(), ip);
                continue;
            }
        }
        ip.foreign = foreign(name);
        let attach = |mode: &'static str| -> Result<()> {
            let mut e = loader::load(&btf, &settings())?;
            loader::attach_xdp(&mut e, name, mode).map(|_| ())
        };
        ip.xdp_native = if ["generic", "tc"].contains(&xdp_mode) {
            Check {
                ok: false,
                hook: "xdp native".into(),
                error: Some(format!("not tried (xdp_mode {xdp_mode})")),
            }
        } else {
            check("xdp native", attach("native"))
        };
        ip.xdp_generic = check("xdp generic", attach("generic"));
        ip.tc_egress = check(
            "tcx egress",
            loader::load(&btf, &settings())
                .and_then(|mut e| loader::attach_tc_egress(&mut e, name)),
        );
        ip.tc_ingress = check(
            "tcx ingress",
            loader::load(&btf, &settings())
                .and_then(|mut e| loader::attach_ingress(&mut e, name, "tc").map(|_| ())),
        );
        ip.dev_recv = ingress_in(xdp_mode, loader::is_virtual(name), &ip);
        p.interfaces.insert(name.clone(), ip);
    }
    p.ok = p.btf_error.is_none()
        && p.layers.values().all(|c| c.ok)
        && p.interfaces
            .values()
            .all(|i| i.exists && i.dev_recv.ok && i.tc_egress.ok);
    p
}

/// Programs not ours (name not starting with `lp_`) attached to the interface.
fn foreign(iface: &str) -> Vec<Foreign> {
    let mut out = Vec::new();
    for (hook, t) in [
        ("tcx ingress", TcAttachType::Ingress),
        ("tcx egress", TcAttachType::Egress),
    ] {
        if let Ok((_, progs)) = SchedClassifier::query_tcx(iface, t) {
            for p in progs {
                let name = p.name_as_str().unwrap_or("").to_string();
                if !name.starts_with("lp_") {
                    out.push(Foreign {
                        hook: hook.into(),
                        prog_id: p.id(),
                        name,
                    });
                }
            }
        }
    }
    for (id, name) in crate::cleanup::xdp_programs(iface) {
        if !name.starts_with("lp_") {
            out.push(Foreign {
                hook: "xdp".into(),
                prog_id: id,
                name,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(ok: bool, error: &str) -> Check {
        Check {
            ok,
            hook: String::new(),
            error: (!ok).then(|| error.to_string()),
        }
    }

    fn iface(native: Check, generic: Check, tc_ingress: Check) -> IfaceProbe {
        IfaceProbe {
            exists: true,
            xdp_native: native,
            xdp_generic: generic,
            tc_ingress,
            ..Default::default()
        }
    }

    #[test]
    fn auto_chooses_as_the_loader_does() {
        let ok = || result(true, "");
        let unsupported = || result(false, "Operation not supported (os error 95)");
        let busy = || {
            result(
                false,
                "failed to attach generic XDP: File exists (os error 17)",
            )
        };
        let hook = |v: bool, ip: &IfaceProbe| {
            let c = ingress_in("auto", v, ip);
            (c.ok, c.hook)
        };
        // A virtual device: TCX ingress, whatever XDP would do.
        assert_eq!(hook(true, &iface(ok(), ok(), ok())), (true, "tc".into()));
        // A NIC: native first, then generic.
        assert_eq!(
            hook(false, &iface(ok(), ok(), ok())),
            (true, "xdp-native".into())
        );
        assert_eq!(
            hook(false, &iface(unsupported(), ok(), ok())),
            (true, "xdp-generic".into())
        );
        // Someone else's program holds XDP: TCX ingress beside it.
        assert_eq!(
            hook(false, &iface(busy(), busy(), ok())),
            (true, "tc".into())
        );
        // Held, and TCX refused too; or XDP refused for another reason: no hook, with the reason.
        let c = ingress_in("auto", false, &iface(busy(), busy(), unsupported()));
        assert!(!c.ok && c.error.unwrap().contains("not supported"));
        let c = ingress_in("auto", false, &iface(unsupported(), unsupported(), ok()));
        assert!(!c.ok && c.error.unwrap().contains("not supported"));
    }

    #[test]
    fn a_forced_mode_reports_its_own_hook_or_its_failure() {
        let ok = || result(true, "");
        let refused = || result(false, "Operation not supported (os error 95)");
        let ip = iface(refused(), ok(), ok());
        for (mode, want) in [("tc", "tc"), ("generic", "xdp-generic")] {
            let c = ingress_in(mode, false, &ip);
            assert!(c.ok && c.hook == want, "{mode}: {c:?}");
        }
        // Forced native where native is refused: no fallback, the reason is kept.
        let c = ingress_in("native", false, &ip);
        assert!(!c.ok && c.hook == "xdp-native" && c.error.unwrap().contains("not supported"));
        // On a virtual device too a forced mode is that mode.
        assert_eq!(ingress_in("generic", true, &ip).hook, "xdp-generic");
        // Held by another program: TCX ingress beside it, in a forced mode as in auto.
        let busy = || {
            result(
                false,
                "failed to attach generic XDP: Resource busy (os error 16)",
            )
        };
        let c = ingress_in("generic", false, &iface(busy(), busy(), ok()));
        assert!(c.ok && c.hook == "tc", "{c:?}");
    }
}

//! `observer probe`: the observer itself tries what it will need (load programs, attach XDP and
//! TC on each interface, open each layer's hook) and reports, as JSON, what works. Attach tests
//! are real, not guessed from `uname`. The schema (version 1) is in docs/cli.md; unknown fields
//! are ignored so the observer can add detail without breaking `check`.
use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::transport::shell::quote;
use crate::transport::{Cmd, Transport, TransportError};

/// One thing tried: a hook or an attach mode.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Check {
    pub ok: bool,
    /// What was tried, e.g. `tracepoint:sock:sock_send_length`, `xdp native`, `tcx egress`.
    pub hook: String,
    pub error: Option<String>,
}

/// A program someone else attached to an interface; never replaced or detached by us.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Foreign {
    /// `xdp`, `tcx ingress`, `tcx egress`.
    pub hook: String,
    pub prog_id: u64,
    pub name: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct IfaceProbe {
    pub exists: bool,
    pub ifindex: u32,
    pub xdp_native: Check,
    pub xdp_generic: Check,
    pub tc_egress: Check,
    /// Where dev_recv attaches in the sessions' `auto` mode (`hook`: `xdp-native`, `xdp-generic`
    /// or `tc`); `None` from an observer that predates it.
    pub dev_recv: Option<Check>,
    pub foreign: Vec<Foreign>,
}

/// The observer's report (schema 1, docs/observer.md on the observer side, summarised in docs/cli.md).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ProbeReport {
    pub schema: u32,
    pub kernel: String,
    pub btf: bool,
    /// Kernel struct offsets could not be resolved from BTF.
    pub btf_error: Option<String>,
    pub cgroup2: Option<String>,
    /// Per non-interface layer (`sock_send`, `tcp_send`, … as latplan-common's `Layer` names them).
    pub layers: BTreeMap<String, Check>,
    pub interfaces: BTreeMap<String, IfaceProbe>,
    /// Every layer and interface check passed.
    pub ok: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error("observer probe failed ({status}): {stderr}")]
    Failed { status: String, stderr: String },
    #[error("observer probe printed something other than its JSON report: {0}")]
    Parse(String),
}

/// Runs `INSTALL_DIR/bin/observer probe --xdp-mode M --interfaces a,b` (as root) and parses its
/// report; `xdp_mode` is the session's (`sampling.xdp_mode`).
pub async fn run(
    t: &dyn Transport,
    observer: &Path,
    interfaces: &[String],
    xdp_mode: &str,
    become_root: bool,
) -> Result<ProbeReport, ProbeError> {
    let mut script = format!(
        "exec {} probe --xdp-mode {}",
        quote(&observer.to_string_lossy()),
        quote(xdp_mode)
    );
    if !interfaces.is_empty() {
        script.push_str(&format!(" --interfaces {}", quote(&interfaces.join(","))));
    }
    let out = t.exec(Cmd::new(script).become_root(become_root)).await?;
    if !out.success() {
        return Err(ProbeError::Failed {
            status: out
                .status
                .map(|s| format!("exit {s}"))
                .unwrap_or_else(|| "killed".into()),
            stderr: out.stderr_str(),
        });
    }
    parse(&out.stdout_str())
}

pub fn parse(text: &str) -> Result<ProbeReport, ProbeError> {
    serde_json::from_str(text.trim()).map_err(|e| ProbeError::Parse(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_example() {
        // Keep in step with the example in docs/cli.md.
        let json = r#"{
          "schema": 1, "kernel": "6.18.0", "btf": true, "btf_error": null, "cgroup2": "/sys/fs/cgroup",
          "layers": {
            "sock_send": {"ok": true, "hook": "tracepoint:sock:sock_send_length", "error": null},
            "tcp_recv": {"ok": false, "hook": "tp_btf:tcp_probe", "error": "permission denied"}
          },
          "interfaces": {
            "eth0": {"exists": true, "ifindex": 2,
                     "xdp_native": {"ok": true, "hook": "xdp native", "error": null},
                     "xdp_generic": {"ok": true, "hook": "xdp generic", "error": null},
                     "tc_egress": {"ok": true, "hook": "tcx egress", "error": null},
                     "foreign": []},
            "wan0": {"exists": true, "ifindex": 3,
                     "xdp_native": {"ok": false, "hook": "xdp native", "error": "device busy"},
                     "xdp_generic": {"ok": false, "hook": "xdp generic", "error": "device busy"},
                     "tc_egress": {"ok": true, "hook": "tcx egress", "error": null},
                     "foreign": [{"hook": "xdp", "prog_id": 114, "name": "foreign_xdp"}]}
          },
          "ok": false,
          "a_field_from_a_newer_observer": 1
        }"#;
        let r = parse(json).unwrap();
        assert!(r.btf);
        assert!(r.interfaces["eth0"].xdp_native.ok);
        assert_eq!(r.interfaces["wan0"].foreign[0].name, "foreign_xdp");
        assert!(!r.layers["tcp_recv"].ok);
    }

    #[test]
    fn garbage_is_a_parse_error() {
        assert!(matches!(
            parse("usage: observer [run|probe]"),
            Err(ProbeError::Parse(_))
        ));
    }
}

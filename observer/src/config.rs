//! The run configuration: a JSON file the planner renders (docs/observer.md), overridable by
//! flags. Validation happens here, before anything is loaded into the kernel.
use anyhow::{Context, Result, bail};
use latplan_common::Layer;
use latplan_common::kernel::MAX_PORTS;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The ways dev_recv can attach (`xdp_mode`), as `loader::attach_ingress` takes them.
pub const XDP_MODES: [&str; 4] = ["auto", "native", "generic", "tc"];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Host name stamped in the Hello frame.
    pub host: String,
    /// Session id stamped in the Hello frame.
    pub session: String,
    /// Interfaces (in the observer's own netns) to attach the interface programs to.
    pub interfaces: Vec<String>,
    /// Network namespaces of declared containers whose sockets and packets are recorded too:
    /// a name under /run/netns, a path, `pid:N`, or `inode:N`.
    pub containers: Vec<String>,
    pub sampling: Sampling,
    /// Layers to attach; empty = all.
    pub layers: Vec<String>,
    /// How dev_recv attaches: "auto" (TCX ingress on virtual devices such as veths, native
    /// XDP on others, generic XDP as the fallback), "native", "generic" (XDP) or "tc" (TCX).
    pub xdp_mode: String,
    /// Seconds without a heartbeat line on stdin before detaching; 0 = no lease.
    pub lease_seconds: u64,
    pub stats_interval_seconds: u64,
    /// Longest wait between ring buffer drains; the kernel side wakes the reader sooner only once
    /// a quarter of the ring is unread (every drain is a wake-up on a CPU a flow may be using).
    pub poll_interval_ms: u64,
    /// Frames buffered towards the sink before records are dropped (backpressure bound).
    pub buffer_frames: usize,
    /// Maximum records per samples frame.
    pub batch_max: usize,
    /// Benchmark mode: one record per UDP packet at the interface layers.
    pub sample_udp: bool,
    /// Where frames go: "stdout" (the SSH channel) or "redis" (the host's stream; the account,
    /// keys and lease key come as one JSON line on stdin, see docs/storage.md).
    pub sink: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Sampling {
    /// Sample one byte per `size` bytes of sequence space (rounded down to a power of two).
    pub size: u64,
    /// Record flows whose source or destination port is listed; empty = all.
    pub ports: Vec<u16>,
    /// Per-flow, per-layer: at most one sample point per this many microseconds (nested levels,
    /// see docs/observer.md); 0 = no limit.
    pub min_interval_us: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            host: hostname(),
            session: String::new(),
            interfaces: Vec::new(),
            containers: Vec::new(),
            sampling: Sampling::default(),
            layers: Vec::new(),
            xdp_mode: "auto".into(),
            lease_seconds: 0,
            stats_interval_seconds: 5,
            poll_interval_ms: 200,
            buffer_frames: 1024,
            batch_max: 4096,
            sample_udp: false,
            sink: "stdout".into(),
        }
    }
}

impl Default for Sampling {
    fn default() -> Self {
        Sampling {
            size: 65536,
            ports: Vec::new(),
            min_interval_us: 0,
        }
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

impl Config {
    pub fn from_file(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("failed to read config {}", path.display()))?;
        let cfg: Config = serde_json::from_str(&text).with_context(|| {
            format!(
                "failed to parse config {} (JSON, see docs/observer.md)",
                path.display()
            )
        })?;
        cfg.validate()
            .with_context(|| format!("invalid config {}", path.display()))?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<()> {
        if self.sampling.ports.len() > MAX_PORTS {
            bail!(
                "{} ports given, at most {MAX_PORTS} supported",
                self.sampling.ports.len()
            );
        }
        if self.sampling.size == 0 {
            bail!("sampling.size must be at least 1");
        }
        if !XDP_MODES.contains(&self.xdp_mode.as_str()) {
            bail!(
                "xdp_mode {:?} is not one of {}",
                self.xdp_mode,
                XDP_MODES.join(", ")
            );
        }
        if !["stdout", "redis"].contains(&self.sink.as_str()) {
            bail!("sink {:?} is not one of stdout, redis", self.sink);
        }
        self.layer_set()?;
        if self.batch_max == 0 || self.buffer_frames == 0 {
            bail!("batch_max and buffer_frames must be positive");
        }
        if self.stats_interval_seconds == 0 {
            bail!("stats_interval_seconds must be positive");
        }
        Ok(())
    }

    /// The layers to attach (all when none are named).
    pub fn layer_set(&self) -> Result<Vec<Layer>> {
        if self.layers.is_empty() || self.layers.iter().any(|l| l == "all") {
            return Ok(Layer::ALL.to_vec());
        }
        self.layers
            .iter()
            .map(|n| {
                Layer::from_name(n).with_context(|| {
                    let known: Vec<_> = Layer::names().collect();
                    format!("unknown layer {n:?} (known: {})", known.join(", "))
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_config_parses() {
        let c: Config = serde_json::from_str(
            r#"{"host":"metal1","session":"s1","interfaces":["wan0","tap-vm1"],"containers":["lp-ct1","pid:1"],
                "sampling":{"size":72400,"ports":[5201,22],"min_interval_us":100},"layers":["dev_send","dev_recv"],
                "xdp_mode":"generic","lease_seconds":30,"stats_interval_seconds":2}"#,
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.layer_set().unwrap(), vec![Layer::DevSend, Layer::DevRecv]);
        assert_eq!(c.sampling.ports, vec![5201, 22]);
        assert_eq!(c.poll_interval_ms, 200, "unset fields take defaults");
    }

    #[test]
    fn bad_configs_are_rejected_with_reasons() {
        let e = serde_json::from_str::<Config>(r#"{"hots":"x"}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("hots"), "{e}");
        let mut c = Config {
            layers: vec!["tcp_sned".into()],
            ..Config::default()
        };
        assert!(c.validate().unwrap_err().to_string().contains("tcp_sned"));
        c.layers.clear();
        c.sampling.ports = (0..17).collect();
        assert!(c.validate().unwrap_err().to_string().contains("17 ports"));
        c.sampling.ports.clear();
        c.xdp_mode = "fast".into();
        assert!(c.validate().is_err());
        // Every documented mode is accepted ("tc" once was not).
        for mode in ["auto", "native", "generic", "tc"] {
            c.xdp_mode = mode.into();
            c.validate().unwrap();
        }
    }

    #[test]
    fn empty_layers_mean_all() {
        assert_eq!(
            Config::default().layer_set().unwrap().len(),
            Layer::ALL.len()
        );
    }
}

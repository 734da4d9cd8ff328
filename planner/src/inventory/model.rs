//! The validated inventory: what every other module works from. Built only by `load`, so holding
//! an [`Inventory`] means every check in docs/inventory.md passed.
//!
//! Serialises to the JSON of `latplan inventory list` (read by ci/lab with jq): keep field names
//! stable.
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;

use serde::Serialize;

/// What a host is, which decides how it is reached and observed (DESIGN.md §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Runs its own kernel on hardware; has no parent.
    Metal,
    /// Runs its own kernel on a metal (or a vm); names that parent.
    Vm,
    /// Shares its parent's kernel; never reached over SSH: its parent's observer covers it.
    Container,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Metal => "metal",
            Kind::Vm => "vm",
            Kind::Container => "container",
        }
    }
}

/// How the manager reaches a host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Connection {
    Ssh,
    /// The manager itself: commands run as local processes.
    Local,
}

/// SSH settings of one host. Anything left `None` falls to `~/.ssh/config` and OpenSSH's defaults.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SshSettings {
    pub user: Option<String>,
    pub port: Option<u16>,
    pub identity_file: Option<PathBuf>,
    pub known_hosts_file: Option<PathBuf>,
    /// A `Host` entry of the SSH config to connect through (ProxyJump, options, … all apply).
    pub config_alias: Option<String>,
    /// An SSH config file to use instead of `~/.ssh/config`.
    pub config_file: Option<PathBuf>,
    /// Unknown host keys are refused unless this is set (then they are added, as `accept-new`).
    /// Changed keys are always refused.
    pub accept_new_host_keys: bool,
    /// Seconds to wait for the connection (TCP + key exchange + auth).
    pub connect_timeout: u64,
    /// Seconds one remote command may take before the host is marked failed.
    pub command_timeout: u64,
    /// Seconds the SSH master connection outlives the latplan command that opened it, idle, so
    /// the next command reuses it (OpenSSH's ControlPersist); 0 (the default): it ends with the
    /// command.
    pub control_persist: u64,
}

pub const DEFAULT_INSTALL_DIR: &str = "/var/lib/latplan";
pub const DEFAULT_CONNECT_TIMEOUT: u64 = 10;
pub const DEFAULT_COMMAND_TIMEOUT: u64 = 120;

/// One host after inheritance and validation.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Host {
    pub name: String,
    pub kind: Kind,
    pub parent: Option<String>,
    /// What SSH connects to (IP or DNS name); `None` when a config alias or the local connection is used,
    /// and for containers.
    pub address: Option<String>,
    pub connection: Connection,
    /// Where our binaries and files go (private to us; teardown removes it). `None` for containers.
    pub install_dir: Option<PathBuf>,
    /// Interfaces to observe, as named inside this host.
    pub interfaces: Vec<String>,
    /// Containers: the parent's end of the container's link (observed by the parent).
    pub host_interface: Option<String>,
    /// Addresses that identify the host's traffic (containers: their own addresses).
    pub addresses: Vec<IpAddr>,
    /// Network namespace (as named on its parent) the host's traffic lives in; containers.
    pub netns: Option<String>,
    /// One kernel clock; time sync runs once per domain. Containers share their parent's.
    pub clock_domain: String,
    /// `None` for containers (never reached) and local hosts.
    pub ssh: Option<SshSettings>,
    /// Run privileged steps through `sudo -n` (a non-root user with passwordless sudo).
    #[serde(rename = "become")]
    pub become_root: bool,
    /// Opaque settings for the lab scripts, passed through as given.
    pub lab: serde_json::Value,
    /// The user's own variables, visible to playbooks as `params`.
    pub params: serde_json::Value,
    /// Groups the host belongs to, directly or through children (`all` left out).
    pub groups: Vec<String>,
}

impl Host {
    /// Hosts that run their own kernel are the ones SSH, facts, observers and timesync deal with.
    pub fn has_own_kernel(&self) -> bool {
        self.kind != Kind::Container
    }
}

/// Sampling settings (DESIGN.md §7), turned into the kernel's `SamplingConfig` by the observer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Sampling {
    /// Every `size`-th byte of sequence space is sampled (a power of two).
    pub size: u32,
    /// Only flows with one of these ports (empty = every port).
    pub ports: Vec<u16>,
    /// Minimum time between samples of one flow at one layer (0 = no limit).
    pub interval_ns: u64,
    /// The layers observers record, by name (empty = all): fewer layers, fewer program runs
    /// per packet (docs/design/overhead.md).
    pub layers: Vec<String>,
    /// How dev_recv attaches: `auto` (TC ingress on virtual devices, native XDP on NICs), or
    /// `native`, `generic`, `tc` everywhere. Reflectors follow it (`tc` → generic XDP).
    pub xdp_mode: String,
}

impl Sampling {
    /// The reflector's `timesync reflect --mode` for this session: its program is XDP in any
    /// case, so `tc` (no native XDP wanted) becomes generic.
    pub fn reflector_mode(&self) -> &str {
        match self.xdp_mode.as_str() {
            "tc" => "generic",
            m => m,
        }
    }

    /// Whether observers record `layer` (a latplan-common `Layer` name).
    pub fn records(&self, layer: &str) -> bool {
        self.layers.is_empty() || self.layers.iter().any(|l| l == layer)
    }
}

/// Time sync settings (DESIGN.md §8).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Timesync {
    /// Probes per second to each clock domain.
    pub rate_hz: u32,
    /// UDP port the reflectors answer on.
    pub port: u16,
    /// A session starts only when every domain's fit error is below this bound.
    pub sync_bound_us: u64,
    /// Manager interface that stamps probes; `None` = the one routing to the hosts.
    pub manager_interface: Option<String>,
}

/// Settings of a measurement session; defaults come from conf/ (embedded), overridden by
/// `all.vars.session` (or group_vars/all.yaml's `session:`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Session {
    pub sampling: Sampling,
    pub timesync: Timesync,
    /// Store URL without a password: `sqlite://PATH`, `mysql://USER@HOST/DB`, …
    pub store: String,
    /// A 0600 file holding the store password (else LATPLAN_STORE_PASSWORD).
    pub store_secret_file: Option<PathBuf>,
    /// `ssh` (records come back over the SSH channel) or a `redis://HOST:PORT` URL.
    pub bus: String,
    /// A 0600 file holding the Redis password (else LATPLAN_BUS_PASSWORD).
    pub bus_secret_file: Option<PathBuf>,
}

/// A loaded, validated inventory.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Inventory {
    pub hosts: BTreeMap<String, Host>,
    pub session: Session,
    /// Host names in the order the inventory gives them.
    #[serde(skip)]
    pub order: Vec<String>,
    /// The path it was loaded from.
    #[serde(skip)]
    pub source: PathBuf,
    /// The user's own steps (steps.yaml), rendered per host, in the order they run.
    #[serde(skip)]
    pub steps: Vec<super::steps::UserStep>,
}

impl Inventory {
    /// Hosts in inventory order.
    pub fn hosts(&self) -> impl Iterator<Item = &Host> {
        self.order.iter().map(|n| &self.hosts[n])
    }

    /// Hosts with their own kernel (metal and vm), in inventory order.
    pub fn kernel_hosts(&self) -> impl Iterator<Item = &Host> {
        self.hosts().filter(|h| h.has_own_kernel())
    }

    /// Containers whose kernel is `name`'s.
    pub fn containers_of<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Host> + 'a {
        self.hosts()
            .filter(move |h| h.kind == Kind::Container && h.parent.as_deref() == Some(name))
    }

    /// JSON printed by `latplan inventory list`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("inventory serialises")
    }
}

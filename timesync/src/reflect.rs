//! `timesync reflect`: answer the session's probes on one interface, in XDP.
use std::time::Duration;

use anyhow::Context;

use crate::ebpf::{self, Globals, XdpAttach};
use crate::output::{self, Line, Ready};
use crate::{route, signal};

#[derive(Debug, Clone)]
pub struct ReflectOptions {
    pub interface: String,
    pub token: u64,
    pub port: u16,
    pub mode: XdpAttach,
    pub test_offset_ns: i64,
    pub test_drift_ppm: f64,
    pub test_drop_ratio: f64,
    /// Stop after this long (None: until SIGINT/SIGTERM).
    pub duration: Option<Duration>,
}

/// Attaches the reflector and keeps it attached until told to stop.
pub fn run(opts: &ReflectOptions) -> anyhow::Result<()> {
    let globals = Globals {
        token: opts.token,
        port: opts.port,
        test_offset_ns: opts.test_offset_ns,
        test_drift_ppb: (opts.test_drift_ppm * 1000.0).round() as i64,
        test_ref_ns: ebpf::monotonic_ns(),
        test_drop: (opts.test_drop_ratio.clamp(0.0, 1.0) * u32::MAX as f64) as u32,
    };
    ebpf::check_globals(&globals)?;
    // Only probes addressed to this interface are answered: a host that routes for others (a
    // metal in front of its VMs) must let their probes through to their own reflectors.
    let addrs = route::interface_addresses(&opts.interface)?;
    anyhow::ensure!(
        !addrs.is_empty(),
        "interface {} has no IPv4 address (or does not exist); the reflector answers probes to its addresses",
        opts.interface
    );
    signal::install();
    let mut bpf = ebpf::load(&globals)?;
    ebpf::set_local_addresses(&mut bpf, &addrs)?;
    let prog = ebpf::xdp(&mut bpf, ebpf::PROG_REFLECT)?;
    prog.load()
        .context("failed to load the reflector program")?;
    let mode = ebpf::attach_xdp(prog, &opts.interface, opts.mode)?;
    output::emit(&Line::Ready(Ready {
        interface: opts.interface.clone(),
        addresses: addrs.iter().map(|a| a.to_string()).collect(),
        mode,
        port: opts.port,
        test_offset_ns: opts.test_offset_ns,
        test_drift_ppm: globals.test_drift_ppb as f64 / 1000.0,
        test_ref_ns: globals.test_ref_ns,
        test_drop_ratio: globals.test_drop as f64 / u32::MAX as f64,
    }))?;
    let deadline = opts.duration.map(|d| std::time::Instant::now() + d);
    while !signal::stop_requested() && deadline.is_none_or(|d| std::time::Instant::now() < d) {
        std::thread::sleep(Duration::from_millis(100));
    }
    // Dropping `bpf` detaches the program (fd-owned link).
    drop(bpf);
    Ok(())
}

//! `observer`: latplan's per-host sampler (docs/observer.md).
//!
//! `run` attaches the kernel programs and streams records to stdout; `probe` reports which hooks
//! work here; `cleanup` removes leftovers; `dump` decodes a recorded stream.
use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use std::path::PathBuf;

use observer::{cleanup, config, dump, probe, run, sink};

#[derive(Parser)]
#[command(name = "observer", version, about = "latplan's per-host eBPF sampler")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Attach and stream records (wire frames) to stdout until signalled or the lease ends.
    Run(Box<RunArgs>),
    /// Report which hooks load and attach here, as JSON (used by `latplan check`).
    Probe {
        /// Interfaces to try the interface programs on.
        #[arg(long, value_delimiter = ',')]
        interfaces: Vec<String>,
        /// Print JSON (the default output is JSON as well; the flag is accepted for clarity).
        #[arg(long)]
        json: bool,
    },
    /// Remove anything of ours left on this host (pins, netlink XDP). Idempotent.
    Cleanup {
        #[arg(long)]
        json: bool,
    },
    /// Decode a recorded stream (FILE or - for stdin) to text, or JSON lines with --json.
    Dump {
        #[arg(default_value = "-")]
        file: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    /// JSON configuration rendered by the planner; flags below override its fields.
    #[arg(long)]
    config: Option<PathBuf>,
    #[arg(long)]
    host: Option<String>,
    #[arg(long)]
    session: Option<String>,
    #[arg(long, value_delimiter = ',')]
    interfaces: Option<Vec<String>>,
    /// Container network namespaces: NAME (/run/netns), path, pid:N or inode:N.
    #[arg(long, value_delimiter = ',')]
    containers: Option<Vec<String>>,
    #[arg(long, value_delimiter = ',')]
    layers: Option<Vec<String>>,
    /// Sampling size in bytes (rounded down to a power of two).
    #[arg(long)]
    size: Option<u64>,
    #[arg(long, value_delimiter = ',')]
    ports: Option<Vec<u16>>,
    #[arg(long)]
    min_interval_us: Option<u64>,
    #[arg(long)]
    xdp_mode: Option<String>,
    /// Seconds without a heartbeat on stdin before detaching (0 = no lease).
    #[arg(long)]
    lease: Option<u64>,
    #[arg(long)]
    stats_interval: Option<u64>,
    /// Benchmark mode: one record per UDP packet at the interface layers.
    #[arg(long)]
    sample_udp: bool,
}

impl RunArgs {
    fn into_config(self) -> Result<config::Config> {
        let mut c = match &self.config {
            Some(p) => config::Config::from_file(p)?,
            None => config::Config::default(),
        };
        macro_rules! set {
            ($($f:ident).+ = $v:expr) => { if let Some(v) = $v { c.$($f).+ = v; } };
        }
        set!(host = self.host);
        set!(session = self.session);
        set!(interfaces = self.interfaces);
        set!(containers = self.containers);
        set!(layers = self.layers);
        set!(sampling.size = self.size);
        set!(sampling.ports = self.ports);
        set!(sampling.min_interval_us = self.min_interval_us);
        set!(xdp_mode = self.xdp_mode);
        set!(lease_seconds = self.lease);
        set!(stats_interval_seconds = self.stats_interval);
        c.sample_udp |= self.sample_udp;
        c.validate().context("invalid observer settings")?;
        Ok(c)
    }
}

fn main() {
    if let Err(e) = real_main() {
        eprintln!("observer: error: {e:#}");
        std::process::exit(1);
    }
}

fn real_main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Run(a) => run::run(a.into_config()?, Box::new(sink::StdoutSink::new())),
        Cmd::Probe {
            interfaces,
            json: _,
        } => {
            let p = probe::probe(&interfaces);
            println!("{}", serde_json::to_string_pretty(&p)?);
            Ok(())
        }
        Cmd::Cleanup { json } => {
            let r = cleanup::cleanup();
            cleanup::print(&r, json)?;
            if r.errors.is_empty() {
                Ok(())
            } else {
                anyhow::bail!("cleanup left {} error(s)", r.errors.len())
            }
        }
        Cmd::Dump { file, json } => {
            let input: Box<dyn std::io::Read> = if file == "-" {
                Box::new(std::io::stdin())
            } else {
                Box::new(
                    std::fs::File::open(&file).with_context(|| format!("failed to open {file}"))?,
                )
            };
            dump::dump(input, json, &mut std::io::stdout().lock())
        }
    }
}

//! `observer`: latplan's per-host sampler (docs/observer.md).
//!
//! `run` attaches the kernel programs and streams records to stdout; `probe` reports which hooks
//! work here; `cleanup` removes leftovers; `dump` decodes a recorded stream.
use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use std::path::PathBuf;

use observer::run::RunOptions;
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
        /// The `xdp_mode` the session will run with: `dev_recv` reports where it attaches, and
        /// with `generic` or `tc` native XDP is not tried at all (some NIC drivers restart their
        /// queues for each native attach).
        #[arg(long, default_value = "auto", value_parser = clap::builder::PossibleValuesParser::new(observer::config::XDP_MODES))]
        xdp_mode: String,
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
    /// Where frames go: stdout, or redis (settings and credentials as one JSON line on stdin).
    #[arg(long)]
    sink: Option<String>,
    /// Leave the SSH channel once attached (redis sink with a lease key only): print the PID and
    /// exit 0, or exit 1 with the log's tail if start-up fails.
    #[arg(long, requires_all = ["log", "pid_file"])]
    daemon: bool,
    /// The daemon's stderr (created 0600).
    #[arg(long)]
    log: Option<PathBuf>,
    /// Where the daemon writes its PID.
    #[arg(long)]
    pid_file: Option<PathBuf>,
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
        set!(sink = self.sink);
        c.sample_udp |= self.sample_udp;
        c.validate().context("invalid observer settings")?;
        Ok(c)
    }
}

/// Redis sink: the settings line comes first on stdin (never argv, environment or a file), then
/// (with `--daemon`) the observer leaves the channel; the lease is the key latplan renews.
#[cfg(feature = "redis-sink")]
fn run_redis(cfg: config::Config, daemon: Option<(PathBuf, PathBuf)>) -> Result<()> {
    use observer::run::{LeaseCheck, LeaseSource};
    use sink::redis::{RedisLease, RedisSinkConfig, RedisStreamSink};
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .context("failed to read the Redis settings line from stdin")?;
    if line.trim().is_empty() {
        anyhow::bail!("stdin ended before the Redis settings line (latplan writes it first)");
    }
    let rc = RedisSinkConfig::from_stdin_line(&line)?;
    drop(line);
    let lease = RedisLease::new(&rc)?;
    if daemon.is_some() && lease.is_none() {
        anyhow::bail!("--daemon needs a lease key in the Redis settings");
    }
    let ready = match daemon {
        Some((log, pid)) => Some(observer::daemon::daemonize(&log, &pid)?),
        None => None,
    };
    let sink = RedisStreamSink::connect(rc)?;
    let lease = match lease {
        Some(mut l) => LeaseSource::Poll(Box::new(move || match l.read() {
            Ok(Some(v)) if v == "stop" => LeaseCheck::Stop,
            Ok(Some(_)) => LeaseCheck::Held,
            _ => LeaseCheck::Unknown,
        })),
        None => LeaseSource::Stdin,
    };
    let on_attached = ready.map(|r| Box::new(move || r.ok()) as Box<dyn FnOnce() + Send>);
    run::run(cfg, Box::new(sink), RunOptions { lease, on_attached })
}

#[cfg(not(feature = "redis-sink"))]
fn run_redis(_: config::Config, _: Option<(PathBuf, PathBuf)>) -> Result<()> {
    anyhow::bail!("this observer was built without the Redis sink (feature redis-sink)")
}

fn main() {
    if let Err(e) = real_main() {
        eprintln!("observer: error: {e:#}");
        std::process::exit(1);
    }
}

fn real_main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Run(a) => {
            let daemon = a.daemon.then(|| (a.log.clone(), a.pid_file.clone()));
            let cfg = a.into_config()?;
            match (cfg.sink.as_str(), daemon) {
                ("redis", d) => run_redis(
                    cfg,
                    d.map(|(l, p)| (l.expect("required"), p.expect("required"))),
                ),
                (_, Some(_)) => anyhow::bail!("--daemon needs the redis sink (--sink redis)"),
                _ => run::run(
                    cfg,
                    Box::new(sink::StdoutSink::new()),
                    RunOptions::default(),
                ),
            }
        }
        Cmd::Probe {
            interfaces,
            xdp_mode,
            json: _,
        } => {
            let p = probe::probe(&interfaces, &xdp_mode);
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

//! `timesync`: XDP probe reflector (`reflect`), manager-side prober and fitter (`probe`), and
//! the accuracy summary of a run (`summarize`). See docs/timesync.md.
use std::io::Read;
use std::net::Ipv4Addr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use timesync::ebpf::XdpAttach;
use timesync::fit::FitConfig;
use timesync::probe::{IngressHook, ProbeOptions, Warmup};
use timesync::reflect::ReflectOptions;
use timesync::summary::{Truth, summarize};
use timesync::wire;

#[derive(Parser)]
#[command(
    name = "timesync",
    version,
    about = "Aligns eBPF clocks across hosts with XDP-timestamped probes"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Answer the session's probes on an interface (one per clock domain).
    Reflect {
        /// Interface the probes arrive on.
        #[arg(long)]
        interface: String,
        /// Session token (1-16 hex digits); probes without it pass untouched.
        #[arg(long)]
        token: String,
        #[arg(long, default_value_t = wire::DEFAULT_PORT)]
        port: u16,
        /// XDP mode: auto = native with generic fallback (generic on veth).
        #[arg(long, value_enum, default_value = "auto")]
        mode: XdpAttach,
        /// Stop after this many seconds (default: until SIGINT/SIGTERM).
        #[arg(long)]
        duration: Option<f64>,
        /// TEST ONLY: add this offset to the reflector's stamps, ns.
        #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
        test_offset_ns: i64,
        /// TEST ONLY: make the reflector's stamps run fast by this much, ppm.
        #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
        test_drift_ppm: f64,
        /// TEST ONLY: drop this fraction of probes instead of answering (emulated loss).
        #[arg(long, default_value_t = 0.0)]
        test_drop_ratio: f64,
    },
    /// Probe every domain's reflector and print a fit per domain as JSON lines.
    Probe {
        /// A domain and its reflector's address, DOMAIN=ADDR (repeatable).
        #[arg(long = "target", required = true)]
        targets: Vec<String>,
        /// Probes per second to each domain.
        #[arg(long, default_value_t = 50.0)]
        rate: f64,
        /// Session token (1-16 hex digits), the reflectors' token.
        #[arg(long)]
        token: String,
        #[arg(long, default_value_t = wire::DEFAULT_PORT)]
        port: u16,
        /// Stop after this many seconds (default: until SIGINT/SIGTERM).
        #[arg(long)]
        duration: Option<f64>,
        /// Stamp on this interface instead of the routes' (repeatable).
        #[arg(long = "interface")]
        interfaces: Vec<String>,
        /// When a route leaves by a bridge, stamp on the bridge itself (generic XDP) rather than on
        /// its ports (the default).
        #[arg(long)]
        on_bridge: bool,
        /// Where replies are stamped.
        #[arg(long, value_enum, default_value = "auto")]
        ingress: IngressHook,
        /// Seconds of exchanges each fit uses.
        #[arg(long, default_value_t = 30.0)]
        window: f64,
        /// Seconds between fits.
        #[arg(long, default_value_t = 0.5)]
        fit_interval: f64,
        /// Seconds between fits during a domain's warm-up (from its first reply, --warmup long),
        /// so a session waiting for its clocks starts as soon as they are good enough.
        #[arg(long, default_value_t = 0.1)]
        warmup_fit_interval: f64,
        /// Seconds of warm-up after a domain's first reply (0: none).
        #[arg(long, default_value_t = 2.0)]
        warmup: f64,
        /// Seconds after which an unanswered probe counts as lost.
        #[arg(long, default_value_t = 1.0)]
        loss_timeout: f64,
        /// Seconds without any reply after which a domain is reported unreachable.
        #[arg(long, default_value_t = 3.0)]
        unreachable_after: f64,
    },
    /// Accuracy of a `probe` run (its JSON lines on stdin) against a known truth.
    Summarize {
        /// The reflector's --test-offset-ns (0: shared clock).
        #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
        test_offset_ns: i64,
        #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
        test_drift_ppm: f64,
        /// The reflector's test_ref_ns (from its ready line).
        #[arg(long, default_value_t = 0)]
        test_ref_ns: u64,
        /// Error counted as converged, ns.
        #[arg(long, default_value_t = 5000.0)]
        goal_ns: f64,
    },
}

fn secs(s: f64, what: &str) -> anyhow::Result<Duration> {
    if !(s.is_finite() && s > 0.0) {
        bail!("{what} must be a positive number of seconds, not {s}");
    }
    Ok(Duration::from_secs_f64(s))
}

fn parse_target(s: &str) -> anyhow::Result<(String, Ipv4Addr)> {
    let (name, addr) = s
        .split_once('=')
        .with_context(|| format!("target {s:?} is not DOMAIN=ADDR"))?;
    if name.is_empty() {
        bail!("target {s:?} has an empty domain name");
    }
    let addr = addr
        .parse()
        .with_context(|| format!("target {s:?}: {addr:?} is not an IPv4 address"))?;
    Ok((name.to_string(), addr))
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.cmd {
        Cmd::Reflect {
            interface,
            token,
            port,
            mode,
            duration,
            test_offset_ns,
            test_drift_ppm,
            test_drop_ratio,
        } => {
            if !(0.0..=1.0).contains(&test_drop_ratio) {
                bail!("--test-drop-ratio must be within [0, 1]");
            }
            timesync::reflect::run(&ReflectOptions {
                interface,
                token: wire::parse_token(&token)?,
                port,
                mode,
                test_offset_ns,
                test_drift_ppm,
                test_drop_ratio,
                duration: duration.map(|d| secs(d, "--duration")).transpose()?,
            })
        }
        Cmd::Probe {
            targets,
            rate,
            token,
            port,
            duration,
            interfaces,
            on_bridge,
            ingress,
            window,
            fit_interval,
            warmup_fit_interval,
            warmup,
            loss_timeout,
            unreachable_after,
        } => {
            let targets = targets
                .iter()
                .map(|t| parse_target(t))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let mut names: Vec<&str> = targets.iter().map(|(n, _)| n.as_str()).collect();
            names.sort_unstable();
            if names.windows(2).any(|w| w[0] == w[1]) {
                bail!("a domain is given twice in --target");
            }
            let fit_interval = secs(fit_interval, "--fit-interval")?;
            let fit = FitConfig {
                window_ns: secs(window, "--window")?.as_nanos() as u64,
                // The fit is used until the next one (and a little longer if that one is late).
                horizon_ns: 2 * fit_interval.as_nanos() as u64,
                ..FitConfig::default()
            };
            timesync::probe::run(&ProbeOptions {
                targets,
                token: wire::parse_token(&token)?,
                port,
                rate_hz: rate,
                duration: duration.map(|d| secs(d, "--duration")).transpose()?,
                interfaces,
                on_bridge,
                ingress,
                fit,
                fit_interval,
                warmup: Warmup {
                    interval: secs(warmup_fit_interval, "--warmup-fit-interval")?,
                    length: if warmup.is_finite() && warmup >= 0.0 {
                        Duration::from_secs_f64(warmup)
                    } else {
                        bail!("--warmup must be 0 or a positive number of seconds, not {warmup}")
                    },
                },
                loss_timeout: secs(loss_timeout, "--loss-timeout")?,
                unreachable_after: secs(unreachable_after, "--unreachable-after")?,
            })
        }
        Cmd::Summarize {
            test_offset_ns,
            test_drift_ppm,
            test_ref_ns,
            goal_ns,
        } => {
            let mut input = String::new();
            std::io::stdin()
                .read_to_string(&mut input)
                .context("failed to read stdin")?;
            let truth = Truth {
                offset_ns: test_offset_ns,
                drift_ppb: (test_drift_ppm * 1000.0).round() as i64,
                ref_ns: test_ref_ns,
            };
            let s = summarize(&input, truth, goal_ns)?;
            println!("{}", serde_json::to_string_pretty(&s)?);
            Ok(())
        }
    }
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("timesync: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

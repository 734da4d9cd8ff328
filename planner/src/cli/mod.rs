//! Command-line entry: parses arguments and dispatches to one file per subcommand.
//!
//! Adding a subcommand: write `cli/NAME.rs` with a clap `Args` struct implementing [`Command`],
//! add `mod NAME;` and one line to the `subcommands!` list below. Subcommands return
//! `anyhow::Result<Outcome>`; `main` is the only place errors and outcomes become exit codes.
mod apply;
mod check;
mod import;
mod interrupt;
mod inventory;
mod plan;
pub mod report;
mod status;
mod stop;
mod teardown;

use std::ffi::OsString;

use clap::Parser;

use crate::transport::ControlDir;
use interrupt::Interrupts;

/// How a command ended, when it ran to completion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Everything asked for succeeded.
    Success,
    /// The command ran but some host (or check) failed: exit code 1.
    Failed,
    /// The command line was wrong (clap already said why): exit code 2.
    Usage,
}

/// Options shared by every subcommand.
#[derive(Debug, Clone, clap::Args)]
pub struct Global {
    /// More detail on stderr (repeat for more).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

/// How to reach hosts; shared by every subcommand that connects.
#[derive(Debug, Clone, clap::Args)]
pub struct ConnectArgs {
    /// At most this many hosts are connected and worked on at once.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..))]
    pub forks: u16,
    /// Add unknown host keys to known_hosts (first contact). Changed keys are still refused.
    #[arg(long)]
    pub accept_new_host_keys: bool,
    /// Directory with the static observer and timesync binaries
    /// [default: $LATPLAN_ARTIFACTS, else the directory of this latplan binary].
    #[arg(long, value_name = "DIR")]
    pub artifacts: Option<std::path::PathBuf>,
}

impl ConnectArgs {
    /// Connection options with a fresh private directory for the ControlMaster sockets. The
    /// returned guard ends every master started in it and removes it when closed or dropped.
    pub fn options(&self) -> anyhow::Result<(crate::transport::ConnectOptions, ControlDir)> {
        let dir = ControlDir::create()?;
        let opts = crate::transport::ConnectOptions {
            forks: usize::from(self.forks),
            accept_new_host_keys: self.accept_new_host_keys,
            control_dir: dir.path().to_path_buf(),
        };
        Ok((opts, dir))
    }
}

/// Runs work that talks to hosts on a fresh runtime. Ctrl-C, SIGTERM or SIGHUP that no session
/// takes as its end (cli::interrupt) stops it at once: the work is dropped with its connections,
/// then the runtime with every task still running. The caller's [`ControlDir`] ends whatever
/// master is left when it is closed or dropped.
fn block_on_hosts<T, Fut>(work: impl FnOnce(Interrupts) -> Fut) -> anyhow::Result<T>
where
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let rt = runtime()?;
    let r = rt.block_on(async {
        let interrupts = Interrupts::listen()?;
        tokio::select! {
            r = work(interrupts.clone()) => r,
            sig = interrupts.aborted() => Err(anyhow::anyhow!("interrupted by {sig}")),
        }
    });
    // A blocking task stuck on a lost host must not hold the way out.
    rt.shutdown_timeout(std::time::Duration::from_secs(5));
    r
}

/// One subcommand: its arguments, and how it runs.
pub trait Command {
    fn run(self, global: &Global) -> anyhow::Result<Outcome>;
}

macro_rules! subcommands {
    ($( $(#[$meta:meta])* $variant:ident($args:ty) ),* $(,)?) => {
        #[derive(Debug, clap::Subcommand)]
        enum Sub {
            $( $(#[$meta])* $variant($args), )*
        }

        impl Sub {
            fn run(self, global: &Global) -> anyhow::Result<Outcome> {
                match self {
                    $( Sub::$variant(args) => Command::run(args, global), )*
                }
            }
        }
    };
}

subcommands! {
    /// Preflight every host: reachability, kernel, BTF, sudo, disk, interfaces, and real attach tests.
    Check(check::Args),
    /// Convert the original tool's configuration directory into an inventory.
    Import(import::Args),
    /// Inspect an inventory: print it resolved (inheritance applied, validated).
    Inventory(inventory::Args),
    /// Show each host's plan and what it would change (ok/changed); changes nothing.
    Plan(plan::Args),
    /// Run a measurement session: converge the hosts, sync clocks, observe, collect, report.
    Apply(apply::Args),
    /// Stop and remove everything latplan put on the hosts.
    Teardown(teardown::Args),
    /// Analyse a stored session: the latency breakdown as a table, JSON, CSV or HTML.
    Report(report::Args),
    /// Show detached sessions: state, and per host records/s, drops, missing, sync error.
    Status(status::Args),
    /// End a detached session: final collection, analysis, the report.
    Stop(stop::Args),
}

/// latplan: where network-flow latency is spent, across metal, VMs and containers.
#[derive(Debug, Parser)]
#[command(name = "latplan", version, about, propagate_version = true)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Sub,
}

/// Parses `args` (program name first) and runs the subcommand.
pub fn run(args: impl IntoIterator<Item = OsString>) -> anyhow::Result<Outcome> {
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            // --help and --version are "errors" to clap; they print to stdout and succeed.
            let usage = e.use_stderr();
            e.print()?;
            return Ok(if usage {
                Outcome::Usage
            } else {
                Outcome::Success
            });
        }
    };
    cli.command.run(&cli.global)
}

/// Writes a command's output to stdout. A closed pipe (`latplan … | head`) is not an error.
pub fn print_out(text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out
        .write_all(text.as_bytes())
        .and_then(|()| out.write_all(b"\n"))
        .and_then(|()| out.flush())
    {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

/// A progress bar on stderr for work over `len` hosts (hidden when stderr is not a terminal).
pub fn host_progress(len: usize, verb: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(len as u64);
    let template = format!("{{spinner}} {verb} [{{bar:20}}] {{pos}}/{{len}} {{wide_msg}}");
    bar.set_style(
        indicatif::ProgressStyle::with_template(&template)
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.enable_steady_tick(std::time::Duration::from_millis(120));
    bar
}

/// A tokio runtime for subcommands that talk to hosts. Built per command (not in `main`) so
/// offline commands such as `inventory list` start no threads.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    use anyhow::Context;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("failed to start the async runtime")
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}

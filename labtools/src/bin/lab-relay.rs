//! lab-relay: the lab's user-space L2 relay with per-direction delay and loss (docs/lab.md).
use anyhow::Result;
use clap::{Parser, Subcommand};
use labtools::relay::{Dir, Request, ctl, packet, run};
use labtools::units::{parse_duration_ns, parse_fraction};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    about = "L2 relay between two interfaces with a one-way delay and loss rate per direction"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Relays frames between interfaces A and B of the current network namespace until killed.
    Run {
        #[arg(long)]
        a: String,
        #[arg(long)]
        b: String,
        /// Control socket (unix stream) for get/set.
        #[arg(long)]
        socket: PathBuf,
        /// Written once the relay forwards frames and answers on the control socket.
        #[arg(long)]
        pidfile: Option<PathBuf>,
        /// Initial one-way delay of both directions, e.g. 2ms.
        #[arg(long, default_value = "0", value_parser = parse_duration_ns)]
        delay: u64,
        /// Initial loss rate of both directions, e.g. 10%.
        #[arg(long, default_value = "0", value_parser = parse_fraction)]
        loss: f64,
        /// Release queue length per direction, in frames (frames beyond it are dropped and counted).
        #[arg(long, default_value_t = 65536)]
        queue_frames: usize,
        /// Spin this long before each due time instead of sleeping, for precision.
        #[arg(long, default_value = "50us", value_parser = parse_duration_ns)]
        spin: u64,
        /// SCHED_FIFO priority of the frame threads (0: normal scheduler).
        #[arg(long, default_value_t = 50)]
        rt_priority: i32,
    },
    /// Prints a running relay's settings and counters as JSON.
    Get {
        #[arg(long)]
        socket: PathBuf,
    },
    /// Changes a running relay's delay and/or loss; prints the new status as JSON.
    Set {
        #[arg(long)]
        socket: PathBuf,
        #[arg(long, value_enum, default_value = "both")]
        dir: Dir,
        #[arg(long, value_parser = parse_duration_ns)]
        delay: Option<u64>,
        #[arg(long, value_parser = parse_fraction)]
        loss: Option<f64>,
    },
    /// Turns checksum/segmentation offloads off on interfaces of the current namespace, so frames
    /// that reach a relay are whole wire frames.
    NoOffload { interfaces: Vec<String> },
}

fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Run {
            a,
            b,
            socket,
            pidfile,
            delay,
            loss,
            queue_frames,
            spin,
            rt_priority,
        } => run::run(run::Options {
            a,
            b,
            socket,
            pidfile,
            delay_ns: delay,
            loss,
            queue_frames,
            spin_ns: spin,
            rt_priority,
        }),
        Cmd::Get { socket } => {
            println!(
                "{}",
                serde_json::to_string_pretty(&ctl::request(&socket, &Request::Get)?)?
            );
            Ok(())
        }
        Cmd::Set {
            socket,
            dir,
            delay,
            loss,
        } => {
            let st = ctl::request(
                &socket,
                &Request::Set {
                    dir,
                    delay_ns: delay,
                    loss,
                },
            )?;
            println!("{}", serde_json::to_string_pretty(&st)?);
            Ok(())
        }
        Cmd::NoOffload { interfaces } => {
            for i in &interfaces {
                packet::disable_offloads(i)?;
            }
            Ok(())
        }
    }
}

//! lab-traffic: TCP bulk sender/receiver and UDP flood for lab tests and demos, and a clock echo
//! for checking time sync independently (docs/lab.md).
use anyhow::Result;
use clap::{Parser, Subcommand};
use labtools::units::{parse_duration_ns, parse_size};
use labtools::{clockecho, traffic};
use std::net::SocketAddr;
use std::time::Duration;

fn duration(s: &str) -> Result<Duration> {
    Ok(Duration::from_nanos(parse_duration_ns(s)?))
}

#[derive(Parser)]
#[command(about = "TCP bulk transfer with controlled write size, pacing and read rate; UDP flood")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Connects and writes --bytes (or for --duration), then waits for the receiver to close.
    TcpSend {
        #[arg(long)]
        connect: SocketAddr,
        #[arg(long, default_value = "64K", value_parser = parse_size)]
        write_size: u64,
        #[arg(long, value_parser = parse_size)]
        bytes: Option<u64>,
        #[arg(long, value_parser = duration)]
        duration: Option<Duration>,
        /// Pacing in bytes per second (e.g. 10M).
        #[arg(long, value_parser = parse_size)]
        rate: Option<u64>,
        #[arg(long, value_parser = parse_size)]
        sndbuf: Option<u64>,
        #[arg(long)]
        nodelay: bool,
        #[arg(long, default_value = "10s", value_parser = duration)]
        connect_timeout: Duration,
        /// Write the bytes handed to send calls and not yet sent by TCP (time-averaged) and the
        /// bytes sent, one JSON line per 100 ms, to this file (see --queue-log of tcp-recv).
        #[arg(long)]
        queue_log: Option<std::path::PathBuf>,
        /// Write the kernel's transmit stamps of every write's last byte (SO_TIMESTAMPING:
        /// entering the device layer, handed to the driver), one JSON line per stamp, to this file.
        #[arg(long)]
        tx_stamps: Option<std::path::PathBuf>,
        /// Size the first write so that every write's last byte has a TCP sequence number that
        /// is a multiple of N (a power of two dividing --write-size): with N the observer's
        /// sample size, --tx-stamps stamps sampled bytes. Reads the stream's first sequence
        /// number in TCP repair mode (CAP_NET_ADMIN).
        #[arg(long, value_parser = parse_size)]
        align_writes: Option<u64>,
    },
    /// Accepts one connection and reads it to the end.
    TcpRecv {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long, default_value = "64K", value_parser = parse_size)]
        read_size: u64,
        /// Read at most this many bytes per second (e.g. 1M): the rest waits in the receive queue.
        #[arg(long, value_parser = parse_size)]
        read_rate: Option<u64>,
        #[arg(long, value_parser = parse_size)]
        rcvbuf: Option<u64>,
        /// Write the receive queue's length (time-averaged) and the bytes read, one JSON line per
        /// 100 ms, to this file: by Little's law they give the bytes' mean wait in the queue.
        #[arg(long)]
        queue_log: Option<std::path::PathBuf>,
        /// Take exactly --read-size bytes per read, in one call (MSG_WAITALL).
        #[arg(long)]
        read_exact: bool,
    },
    /// Sends small UDP datagrams as fast as it can (or at --pps) and reports packets per second.
    UdpFlood {
        #[arg(long)]
        connect: SocketAddr,
        #[arg(long, default_value_t = 64)]
        size: usize,
        #[arg(long, default_value = "2s", value_parser = duration)]
        duration: Duration,
        #[arg(long)]
        pps: Option<u64>,
    },
    /// Counts arriving UDP datagrams for --duration.
    UdpSink {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long, default_value = "2s", value_parser = duration)]
        duration: Duration,
    },
    /// Answers each UDP datagram with this host's CLOCK_MONOTONIC, for --duration.
    ClockEcho {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long, default_value = "60s", value_parser = duration)]
        duration: Duration,
    },
}

fn main() -> Result<()> {
    let report = match Cli::parse().cmd {
        Cmd::TcpSend {
            connect,
            write_size,
            bytes,
            duration,
            rate,
            sndbuf,
            nodelay,
            connect_timeout,
            queue_log,
            tx_stamps,
            align_writes,
        } => traffic::tcp_send(&traffic::SendOpts {
            connect,
            write_size: write_size as usize,
            bytes,
            duration,
            rate,
            sndbuf,
            nodelay,
            connect_timeout,
            queue_log,
            tx_stamps,
            align_writes,
        })?,
        Cmd::TcpRecv {
            listen,
            read_size,
            read_rate,
            rcvbuf,
            queue_log,
            read_exact,
        } => traffic::tcp_recv(&traffic::RecvOpts {
            listen,
            read_size: read_size as usize,
            read_rate,
            rcvbuf,
            queue_log,
            read_exact,
        })?,
        Cmd::UdpFlood {
            connect,
            size,
            duration,
            pps,
        } => traffic::udp_flood(connect, size, duration, pps)?,
        Cmd::UdpSink { listen, duration } => traffic::udp_sink(listen, duration)?,
        Cmd::ClockEcho { listen, duration } => {
            let answered = clockecho::serve(listen, duration)?;
            println!(
                "{}",
                serde_json::json!({"mode": "clock-echo", "answered": answered})
            );
            return Ok(());
        }
    };
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

//! The JSON lines `timesync` prints on stdout, one object per line, told apart by `"type"`
//! (documented in docs/timesync.md). A `fit` line deserializes directly as a
//! [`latplan_common::clock::ClockFit`] too: its fields sit at the top level.
use std::io::Write;

use latplan_common::clock::ClockFit;
use serde::{Deserialize, Serialize};

use crate::ebpf::XdpAttach;
use crate::fit::FitDetail;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Line {
    /// The reflector is attached and answering.
    Ready(Ready),
    /// The prober is attached and about to send.
    Start(Start),
    /// A new fit for one domain.
    Fit(FitLine),
    /// A domain has not answered for `unreachable_after_s`; the others keep syncing.
    Error(ErrorLine),
    /// The prober stops (duration over, or SIGINT/SIGTERM); final counters.
    End(End),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ready {
    pub interface: String,
    /// The addresses whose probes it answers (the interface's own).
    pub addresses: Vec<String>,
    pub mode: XdpAttach,
    pub port: u16,
    /// Test-only offset and drift added to the stamps (zero in real use), and where the drift is zero.
    pub test_offset_ns: i64,
    pub test_drift_ppm: f64,
    pub test_ref_ns: u64,
    pub test_drop_ratio: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attachment {
    pub interface: String,
    /// Where departures are stamped: always "tc" (egress).
    pub egress: String,
    /// Where arrivals are stamped: "xdp-native", "xdp-generic" or "tc".
    pub ingress: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Target {
    pub domain: String,
    pub address: String,
    pub interface: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Start {
    pub clock: String,
    /// The manager's clock when probing started, ns.
    pub start_ns: u64,
    pub port: u16,
    pub rate_hz: f64,
    pub fit_interval_s: f64,
    pub unreachable_after_s: f64,
    pub targets: Vec<Target>,
    pub attachments: Vec<Attachment>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// No fit yet (not enough exchanges).
    Starting,
    /// Fits are being made.
    Ok,
    /// No reply for `unreachable_after_s`.
    Unreachable,
}

/// Counters of one domain since the prober started.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DomainStatus {
    pub domain: String,
    pub address: String,
    pub state: State,
    pub sent: u64,
    /// Replies matched to a probe and used.
    pub replies: u64,
    /// Probes without a reply within the loss timeout, sent after the domain first answered.
    pub lost: u64,
    /// Probes without a reply sent before the domain's first answered probe: the reflector may
    /// not have been running yet (a manager starts its prober before the reflectors), so they
    /// are not counted as lost, nor in `recent_loss`.
    #[serde(default)]
    pub unanswered_before_first_reply: u64,
    /// Second and later replies to one probe.
    pub duplicates: u64,
    /// Replies after their probe was counted lost.
    pub late: u64,
    /// Replies the kernel hooks did not stamp at both ends (not used).
    pub unstamped: u64,
    /// Replies whose stamps were inconsistent (not used).
    pub invalid: u64,
    /// Probes the socket refused to send.
    pub send_errors: u64,
    /// lost / (replies + lost) over the fit window.
    pub recent_loss: f64,
    /// Seconds since the last reply (null before the first).
    pub last_reply_age_s: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FitLine {
    #[serde(flatten)]
    pub fit: ClockFit,
    /// The manager's clock when the fit was made, ns.
    pub emitted_ns: u64,
    pub detail: FitDetail,
    pub status: DomainStatus,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorLine {
    pub domain: String,
    /// The manager's clock when the error was found, ns.
    pub emitted_ns: u64,
    pub address: String,
    pub error: String,
    pub status: DomainStatus,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct End {
    pub domains: Vec<DomainStatus>,
    /// Datagrams on the probe socket that were no reply of this session (wrong token, unknown
    /// probe id, unexpected sender).
    pub foreign: u64,
}

/// Parses one line of `timesync` output.
pub fn parse_line(line: &str) -> anyhow::Result<Line> {
    Ok(serde_json::from_str(line)?)
}

/// Writes one line to stdout and flushes it, so a reader sees each fit as it is made.
/// A closed stdout (the reader went away) is an error the caller stops on.
pub fn emit(line: &Line) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer(&mut out, line)?;
    out.write_all(b"\n")?;
    out.flush()
}

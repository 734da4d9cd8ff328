//! The relay's control socket: one JSON request per line, one JSON status per line back.
//! `ci/lab delay|loss|stats` and the lab tests talk to it through [`request`].
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Dir {
    A2b,
    B2a,
    Both,
}

impl Dir {
    pub fn covers_a2b(self) -> bool {
        matches!(self, Dir::A2b | Dir::Both)
    }
    pub fn covers_b2a(self) -> bool {
        matches!(self, Dir::B2a | Dir::Both)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Request {
    /// Settings and counters.
    Get,
    /// Changes the settings of one or both directions; fields left out stay as they are.
    Set {
        dir: Dir,
        delay_ns: Option<u64>,
        loss: Option<f64>,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DirStatus {
    pub delay_ns: u64,
    /// Fraction of frames dropped on purpose, 0..1.
    pub loss: f64,
    pub rx: u64,
    pub forwarded: u64,
    pub dropped_loss: u64,
    pub dropped_queue: u64,
    pub dropped_oversize: u64,
    pub send_errors: u64,
    pub queued: u64,
    /// Queued frames sent within 10 µs, 50 µs, 200 µs of their due time, and later than that.
    pub late_buckets: [u64; 4],
    pub max_late_ns: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// Interface names of side a and side b.
    pub a: String,
    pub b: String,
    pub a2b: DirStatus,
    pub b2a: DirStatus,
}

/// Sends one request to the relay listening on `socket` and returns its status after the request.
pub fn request(socket: &Path, req: &Request) -> Result<Status> {
    let mut s = UnixStream::connect(socket)
        .with_context(|| format!("connect to relay control socket {}", socket.display()))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut line = serde_json::to_string(req)?;
    line.push('\n');
    s.write_all(line.as_bytes())?;
    let mut reply = String::new();
    BufReader::new(s)
        .read_line(&mut reply)
        .context("read relay reply")?;
    if let Ok(err) = serde_json::from_str::<ErrorReply>(&reply) {
        anyhow::bail!("relay refused the request: {}", err.error);
    }
    serde_json::from_str(&reply).with_context(|| format!("parse relay reply {reply:?}"))
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ErrorReply {
    pub error: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_wire_format() {
        let r = Request::Set {
            dir: Dir::A2b,
            delay_ns: Some(3_000_000),
            loss: None,
        };
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"op":"set","dir":"a2b","delay_ns":3000000,"loss":null}"#
        );
        let g: Request = serde_json::from_str(r#"{"op":"get"}"#).unwrap();
        assert!(matches!(g, Request::Get));
    }
}

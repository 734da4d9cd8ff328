//! Lab integration tests of labtools: the relays' delay and loss, traffic across the wan, and
//! `ci/lab up`/`down` leaving the machine as it found it. They need the lab (`ci/lab up` as root)
//! and fail, not skip, without it.
mod relay;
mod traffic;
mod updown;

use labtools::testlab::ns_exec;

/// What a ping run saw.
pub struct Pings {
    pub sent: u32,
    pub received: u32,
    /// RTT of each reply, ms.
    pub rtts_ms: Vec<f64>,
}

impl Pings {
    /// The 10th percentile: the injected delay moves the floor of the RTTs, while a busy machine only
    /// adds to it, so the low percentile shows the delay without the load's noise.
    pub fn floor_ms(&self) -> f64 {
        let mut v = self.rtts_ms.clone();
        assert!(!v.is_empty(), "no ping replies at all");
        v.sort_by(f64::total_cmp);
        v[v.len() / 10]
    }
    pub fn loss(&self) -> f64 {
        1.0 - self.received as f64 / self.sent as f64
    }
}

/// Pings `target` from namespace `netns` `count` times, `interval` seconds apart.
pub fn ping(netns: &str, target: &str, count: u32, interval: &str) -> Pings {
    let count_s = count.to_string();
    let o = ns_exec(
        netns,
        &[
            "ping", "-n", "-c", &count_s, "-i", interval, "-W", "1", target,
        ],
    );
    let out = String::from_utf8_lossy(&o.stdout);
    let rtts_ms: Vec<f64> = out
        .lines()
        .filter_map(|l| l.split("time=").nth(1))
        .filter_map(|t| t.trim_end_matches(" ms").trim().parse().ok())
        .collect();
    let summary = out
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .unwrap_or_else(|| {
            panic!(
                "ping {target} from {netns} printed no summary: {out}{}",
                String::from_utf8_lossy(&o.stderr)
            )
        });
    let nums: Vec<u32> = summary
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .collect();
    Pings {
        sent: nums[0],
        received: nums[1],
        rtts_ms,
    }
}

//! `timesync summarize`: accuracy figures of a probe run against a known truth (the lab shares
//! one kernel, so the true offset is zero, or the reflector's test offset/drift).
use hdrhistogram::Histogram;
use serde::Serialize;

use crate::output::{Line, parse_line};

/// The reflector's test-only clock change (all zero: the shared-clock truth).
#[derive(Debug, Clone, Copy, Default)]
pub struct Truth {
    pub offset_ns: i64,
    pub drift_ppb: i64,
    pub ref_ns: u64,
}

impl Truth {
    /// Manager minus reflector stamp at reflector stamp `h` (the reflector's stamps are
    /// `t + offset + (t − ref)·k` of the shared clock `t`).
    pub fn offset_at(&self, h: f64) -> f64 {
        let k = self.drift_ppb as f64 * 1e-9;
        (-(self.offset_ns as f64) + k * self.ref_ns as f64 - k * h) / (1.0 + k)
    }

    pub fn drift_ppm(&self) -> f64 {
        let k = self.drift_ppb as f64 * 1e-9;
        -k / (1.0 + k) * 1e6
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct DomainSummary {
    pub domain: String,
    pub fits: u64,
    /// |offset error| at each fit's reference moment, ns.
    pub abs_err_p50_ns: f64,
    pub abs_err_p99_ns: f64,
    pub abs_err_max_ns: f64,
    /// Fits whose error exceeded their own bound.
    pub outside_bound: u64,
    pub bound_p50_ns: f64,
    /// Seconds from the start to the first fit within `goal_ns` after which every fit stays within it.
    pub converged_s: Option<f64>,
    /// Largest |drift error| among fits made 30 s or more after the start, ppm.
    pub drift_err_after_30s_ppm: Option<f64>,
    pub min_delay_ns: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub domains: Vec<DomainSummary>,
    pub probe_bytes_per_s_per_domain: f64,
}

/// (seconds since start, offset error ns, drift error ppm, bound ns, min delay ns) of one fit.
type FitPoint = (f64, f64, f64, f64, u64);

/// Summarises a run's output lines.
pub fn summarize(lines: &str, truth: Truth, goal_ns: f64) -> anyhow::Result<Summary> {
    let mut start_ns = None;
    let mut rate = 0.0;
    let mut per: Vec<(String, Vec<FitPoint>)> = Vec::new();
    for (i, l) in lines
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        match parse_line(l).map_err(|e| anyhow::anyhow!("line {}: {e}", i + 1))? {
            Line::Start(s) => {
                start_ns = Some(s.start_ns);
                rate = s.rate_hz;
            }
            Line::Fit(f) => {
                let t = (f
                    .emitted_ns
                    .saturating_sub(start_ns.unwrap_or(f.emitted_ns)))
                    as f64
                    / 1e9;
                let err = f.fit.offset_ns - truth.offset_at(f.fit.ref_host_ns as f64);
                let derr = f.fit.drift_ppm - truth.drift_ppm();
                let entry = match per.iter_mut().find(|(d, _)| *d == f.fit.domain) {
                    Some(e) => e,
                    None => {
                        per.push((f.fit.domain.clone(), Vec::new()));
                        per.last_mut().expect("just pushed")
                    }
                };
                entry
                    .1
                    .push((t, err, derr, f.fit.error_bound_ns, f.fit.min_delay_ns));
            }
            _ => {}
        }
    }
    let mut domains = Vec::new();
    for (domain, fits) in per {
        let mut h = Histogram::<u64>::new(3)?;
        let mut hb = Histogram::<u64>::new(3)?;
        for f in &fits {
            h.record(f.1.abs().round() as u64)?;
            hb.record(f.3.round() as u64)?;
        }
        let last_bad = fits.iter().rposition(|f| f.1.abs() > goal_ns);
        let converged_s = match last_bad {
            None => fits.first().map(|f| f.0),
            Some(i) => fits.get(i + 1).map(|f| f.0),
        };
        let late: Vec<f64> = fits
            .iter()
            .filter(|f| f.0 >= 30.0)
            .map(|f| f.2.abs())
            .collect();
        domains.push(DomainSummary {
            domain,
            fits: fits.len() as u64,
            abs_err_p50_ns: h.value_at_quantile(0.5) as f64,
            abs_err_p99_ns: h.value_at_quantile(0.99) as f64,
            abs_err_max_ns: h.max() as f64,
            outside_bound: fits.iter().filter(|f| f.1.abs() > f.3).count() as u64,
            bound_p50_ns: hb.value_at_quantile(0.5) as f64,
            converged_s,
            drift_err_after_30s_ppm: late.iter().copied().reduce(f64::max),
            min_delay_ns: fits.iter().map(|f| f.4).min().unwrap_or(0),
        });
    }
    // Each probe and its reply: payload + UDP 8 + IPv4 20 + Ethernet 14 (+ 24 preamble/FCS/gap on a wire).
    let frame = (crate::wire::PAYLOAD_LEN + 8 + 20 + 14) as f64;
    Ok(Summary {
        domains,
        probe_bytes_per_s_per_domain: 2.0 * frame * rate,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_truth_of_a_test_clock() {
        let t = Truth {
            offset_ns: 1_234_567_000,
            drift_ppb: 20_000,
            ref_ns: 1_000_000_000_000,
        };
        // At the reference, the reflector is ahead by the offset: manager − host = −offset.
        let h = 1_000_000_000_000.0 + 1_234_567_000.0;
        assert!((t.offset_at(h) + 1_234_567_000.0).abs() < 30.0);
        assert!((t.drift_ppm() + 19.9996).abs() < 1e-3);
        assert_eq!(Truth::default().offset_at(5e12), 0.0);
    }
}

//! Clock fits: how a clock domain's eBPF clock maps onto the manager's timeline.
use serde::{Deserialize, Serialize};

/// CLOCK_MONOTONIC now, in nanoseconds: the clock `bpf_ktime_get_ns()` reads, so the clock every
/// latplan kernel program stamps with and the manager's timeline.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// A linear map from one clock domain's `bpf_ktime_get_ns()` to the manager's, valid from
/// `valid_from_host_ns` (host clock) until the next fit of the same domain.
///
/// `manager_ns = host_ns + offset_ns + drift_ppm * 1e-6 * (host_ns - ref_host_ns)`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClockFit {
    pub domain: String,
    pub valid_from_host_ns: u64,
    pub ref_host_ns: u64,
    /// Manager minus host clock at `ref_host_ns`, nanoseconds.
    pub offset_ns: f64,
    /// Rate of change of (manager − host), parts per million.
    pub drift_ppm: f64,
    /// Bound on the error of a converted timestamp within this fit's validity, nanoseconds.
    pub error_bound_ns: f64,
    /// Probes the fit used.
    pub samples: u32,
    /// Smallest round-trip delay among those probes, nanoseconds.
    pub min_delay_ns: u64,
}

impl ClockFit {
    /// The fit of a domain that shares the manager's clock: identity, zero error.
    pub fn identity(domain: &str) -> ClockFit {
        ClockFit {
            domain: domain.to_string(),
            valid_from_host_ns: 0,
            ref_host_ns: 0,
            offset_ns: 0.0,
            drift_ppm: 0.0,
            error_bound_ns: 0.0,
            samples: 0,
            min_delay_ns: 0,
        }
    }

    /// Converts a host timestamp to the manager's timeline (nanoseconds, fractional).
    pub fn to_manager_ns(&self, host_ns: u64) -> f64 {
        let dt = host_ns as f64 - self.ref_host_ns as f64;
        host_ns as f64 + self.offset_ns + self.drift_ppm * 1e-6 * dt
    }
}

/// All fits of one domain over a session, ordered by validity.
#[derive(Debug, Clone, Default)]
pub struct DomainClock {
    fits: Vec<ClockFit>,
}

impl DomainClock {
    pub fn new(mut fits: Vec<ClockFit>) -> DomainClock {
        fits.sort_by_key(|f| f.valid_from_host_ns);
        DomainClock { fits }
    }

    /// The fit valid at `host_ns`: the last one starting at or before it, else the first.
    pub fn fit_at(&self, host_ns: u64) -> Option<&ClockFit> {
        let idx = self
            .fits
            .partition_point(|f| f.valid_from_host_ns <= host_ns);
        self.fits.get(idx.saturating_sub(1))
    }

    pub fn to_manager_ns(&self, host_ns: u64) -> Option<(f64, f64)> {
        self.fit_at(host_ns)
            .map(|f| (f.to_manager_ns(host_ns), f.error_bound_ns))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fit(from: u64, offset: f64, drift: f64) -> ClockFit {
        ClockFit {
            valid_from_host_ns: from,
            ref_host_ns: from,
            offset_ns: offset,
            drift_ppm: drift,
            ..ClockFit::identity("d")
        }
    }

    #[test]
    fn conversion_applies_offset_and_drift() {
        let f = fit(1_000_000_000, 500.0, 20.0);
        // One second after the reference, 20 ppm adds 20 µs.
        assert!(
            (f.to_manager_ns(2_000_000_000) - (2_000_000_000.0 + 500.0 + 20_000.0)).abs() < 1e-3
        );
    }

    #[test]
    fn the_fit_valid_at_a_moment_is_chosen() {
        let c = DomainClock::new(vec![
            fit(100, 2.0, 0.0),
            fit(0, 1.0, 0.0),
            fit(200, 3.0, 0.0),
        ]);
        assert_eq!(c.fit_at(50).unwrap().offset_ns, 1.0);
        assert_eq!(c.fit_at(100).unwrap().offset_ns, 2.0);
        assert_eq!(c.fit_at(10_000).unwrap().offset_ns, 3.0);
        assert!(DomainClock::new(vec![]).fit_at(5).is_none());
    }
}

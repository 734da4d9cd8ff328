//! Unwrapping 32-bit TCP sequence numbers to 64-bit byte offsets, per flow.
//!
//! Records of one flow arrive from several layers, not in sequence order (a slow reader's
//! sock_recv lags dev_recv by up to a receive buffer), so each sequence number is placed at the
//! 64-bit value nearest to the highest one seen for the flow (within ±2^31). The first sighting
//! of a flow defines epoch 1 (offset = 2^32 + seq) so that bytes just below it stay positive.
use std::collections::HashMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub sport: u16,
    pub dport: u16,
}

/// Per-flow unwrap state, bounded: the least recently used flows are forgotten past `capacity`.
pub struct Unwrapper {
    flows: HashMap<FlowKey, (u64, u64)>,
    capacity: usize,
    tick: u64,
}

impl Unwrapper {
    pub fn new(capacity: usize) -> Self {
        Unwrapper {
            flows: HashMap::new(),
            capacity,
            tick: 0,
        }
    }

    pub fn unwrap(&mut self, key: FlowKey, seq: u32) -> u64 {
        self.tick += 1;
        let tick = self.tick;
        if !self.flows.contains_key(&key) && self.flows.len() >= self.capacity {
            self.evict();
        }
        let (high, used) = self
            .flows
            .entry(key)
            .or_insert(((1u64 << 32) | seq as u64, tick));
        *used = tick;
        let delta = seq.wrapping_sub(*high as u32) as i32 as i64;
        let off = (*high as i64 + delta) as u64;
        if off > *high {
            *high = off;
        }
        off
    }

    fn evict(&mut self) {
        // Drop the older half: amortised O(1) per insert, and a forgotten flow only loses its epoch
        // if it was idle while 2^31 bytes of it passed, which cannot happen unobserved.
        let mut ticks: Vec<u64> = self.flows.values().map(|v| v.1).collect();
        ticks.sort_unstable();
        let cut = ticks[ticks.len() / 2];
        self.flows.retain(|_, v| v.1 > cut);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(p: u16) -> FlowKey {
        FlowKey {
            saddr: [1; 16],
            daddr: [2; 16],
            sport: p,
            dport: 5201,
        }
    }

    #[test]
    fn first_sighting_is_epoch_one() {
        let mut u = Unwrapper::new(16);
        assert_eq!(u.unwrap(key(1), 5), (1 << 32) + 5);
    }

    #[test]
    fn forward_wrap_increments_the_epoch() {
        let mut u = Unwrapper::new(16);
        let a = u.unwrap(key(1), u32::MAX - 10);
        let b = u.unwrap(key(1), 20);
        assert_eq!(b - a, 31);
        assert_eq!(b, (2 << 32) + 20);
    }

    #[test]
    fn late_records_from_before_the_wrap_stay_in_the_old_epoch() {
        let mut u = Unwrapper::new(16);
        u.unwrap(key(1), u32::MAX - 10);
        let after = u.unwrap(key(1), 1000);
        let late = u.unwrap(key(1), u32::MAX - 5);
        assert_eq!(after - late, 1006);
        // And the high-water mark did not move back.
        assert_eq!(u.unwrap(key(1), 1001), after + 1);
    }

    #[test]
    fn flows_are_independent_and_bounded() {
        let mut u = Unwrapper::new(4);
        for p in 0..100 {
            u.unwrap(key(p), p as u32);
        }
        assert!(u.flows.len() <= 4);
        assert_eq!(u.unwrap(key(7), 0), 1 << 32);
    }
}

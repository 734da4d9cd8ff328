//! A synthetic observer: produces the frames a real observer run would (hello, sample batches with
//! consecutive record sequence numbers, cumulative stats, bye), for tests and benchmarks of the
//! collection path without kernels or eBPF.
use latplan_common::Layer;
use latplan_common::wire::{Bye, Frame, Hello, Interface, LayerStats, Sample, Stats};

#[derive(Debug, Clone)]
pub struct SyntheticObserver {
    pub host: String,
    pub session: String,
    pub boot_id: String,
    pub started_ns: u64,
    /// Sequence number of the next record.
    pub next_seq: u64,
    /// Distinct flows the records cycle through.
    pub flows: u16,
    /// Reported as `records_dropped` in stats (what the observer's sink could not ship).
    pub records_dropped: u64,
    ringbuf_full: u64,
}

impl SyntheticObserver {
    pub fn new(session: &str, host: &str, started_ns: u64) -> SyntheticObserver {
        SyntheticObserver {
            host: host.into(),
            session: session.into(),
            boot_id: format!("boot-{host}"),
            started_ns,
            next_seq: 0,
            flows: 4,
            records_dropped: 0,
            ringbuf_full: 0,
        }
    }

    pub fn hello(&self) -> Frame {
        Frame::Hello(Hello {
            host: self.host.clone(),
            session: self.session.clone(),
            observer_version: "synthetic".into(),
            boot_id: self.boot_id.clone(),
            sample_size: 4096,
            interfaces: vec![Interface {
                ifindex: 2,
                name: "eth0".into(),
                netns: 1,
                ingress_mode: "tc".into(),
            }],
            netns: vec![1],
            started_ns: self.started_ns,
        })
    }

    /// The record with sequence number `seq` (deterministic, so a test can check what was stored).
    pub fn sample(&self, seq: u64) -> Sample {
        let flow = (seq % self.flows.max(1) as u64) as u16;
        Sample {
            ts_ns: self.started_ns + seq * 1000,
            offset: (1 << 32) + (seq / self.flows.max(1) as u64) * 4096,
            saddr: [10, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 77, 0, 2],
            daddr: [10, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 77, 0, 3],
            sport: 40000 + flow,
            dport: 5201,
            len: 1448,
            ifindex: 2,
            netns: 1,
            cpu: (seq % 2) as u16,
            layer: Layer::ALL[(seq % Layer::ALL.len() as u64) as usize],
            flags: 0,
        }
    }

    /// The next `n` records as one frame.
    pub fn samples(&mut self, n: usize) -> Frame {
        let first_seq = self.next_seq;
        let samples = (0..n as u64).map(|i| self.sample(first_seq + i)).collect();
        self.next_seq += n as u64;
        Frame::Samples { first_seq, samples }
    }

    /// Cumulative stats; `ringbuf_full` more kernel drops are reported at `dev_recv` each call.
    pub fn stats(&mut self, ts_ns: u64, ringbuf_full: u64) -> Frame {
        self.ringbuf_full += ringbuf_full;
        Frame::Stats(Stats {
            ts_ns,
            layers: vec![LayerStats {
                layer: Layer::DevRecv,
                seen: self.next_seq * 2,
                sampled: self.next_seq,
                ringbuf_full: self.ringbuf_full,
                rate_limited: 0,
            }],
            records_sent: self.next_seq,
            records_dropped: self.records_dropped,
            cpu_percent: 1.0,
        })
    }

    pub fn bye(&self) -> Frame {
        Frame::Bye(Bye {
            records_total: self.next_seq,
            reason: "done".into(),
        })
    }

    /// A whole run as bytes: hello, `batches` frames of `per_batch` records with stats every
    /// tenth batch, and a bye.
    pub fn stream(&mut self, batches: usize, per_batch: usize) -> Vec<u8> {
        let mut out = Vec::new();
        self.hello().encode_into(&mut out);
        for b in 0..batches {
            self.samples(per_batch).encode_into(&mut out);
            if b % 10 == 9 {
                self.stats(b as u64, 0).encode_into(&mut out);
            }
        }
        self.bye().encode_into(&mut out);
        out
    }
}

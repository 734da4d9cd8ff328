//! What happens to one frame in one direction: dropped for loss, dropped because the release queue is
//! full, sent at once, or queued until its due time. Kept free of sockets so it is unit-tested.
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::mpsc::{SyncSender, TrySendError};

/// Loss rates are kept in parts per million so they fit an atomic.
pub const PPM: u32 = 1_000_000;

/// The settings of one direction, changed at runtime by the control socket.
#[derive(Debug, Default)]
pub struct DirConfig {
    pub delay_ns: AtomicU64,
    pub loss_ppm: AtomicU32,
}

impl DirConfig {
    pub fn loss(&self) -> f64 {
        self.loss_ppm.load(Relaxed) as f64 / PPM as f64
    }
    pub fn set_loss(&self, fraction: f64) {
        self.loss_ppm.store(
            (fraction.clamp(0.0, 1.0) * PPM as f64).round() as u32,
            Relaxed,
        );
    }
}

/// Counters of one direction.
#[derive(Debug, Default)]
pub struct DirStats {
    pub rx: AtomicU64,
    pub forwarded: AtomicU64,
    pub dropped_loss: AtomicU64,
    pub dropped_queue: AtomicU64,
    /// Frames too large to relay (GSO super-frames: ci/lab turns offloads off so none should come).
    pub dropped_oversize: AtomicU64,
    pub send_errors: AtomicU64,
    /// Frames waiting in the release queue now.
    pub queued: AtomicUsize,
    /// How late queued frames left after their due time: counts under 10 µs, 50 µs, 200 µs, and above.
    pub late_buckets: [AtomicU64; 4],
    pub max_late_ns: AtomicU64,
}

/// Upper bounds (ns) of the lateness buckets but the last.
pub const LATE_BOUNDS_NS: [u64; 3] = [10_000, 50_000, 200_000];

impl DirStats {
    /// Records that a queued frame left `late_ns` after its due time.
    pub fn record_late(&self, late_ns: u64) {
        let i = LATE_BOUNDS_NS
            .iter()
            .position(|b| late_ns < *b)
            .unwrap_or(LATE_BOUNDS_NS.len());
        self.late_buckets[i].fetch_add(1, Relaxed);
        self.max_late_ns.fetch_max(late_ns, Relaxed);
    }
}

/// A frame waiting for its due time (CLOCK_MONOTONIC ns).
#[derive(Debug)]
pub struct Pending {
    pub due_ns: u64,
    pub frame: Vec<u8>,
}

/// The outcome of [`Direction::offer`].
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    /// Due already and nothing queued ahead of it: the caller sends it now (no thread hop at 0 ms).
    SendNow(Vec<u8>),
    Queued,
    DroppedLoss,
    DroppedQueueFull,
}

/// The per-direction decision logic, owned by the thread that receives on the ingress interface.
pub struct Direction {
    pub cfg: Arc<DirConfig>,
    pub stats: Arc<DirStats>,
    queue: SyncSender<Pending>,
    rng: fastrand::Rng,
    /// Due times never go backwards, so lowering the delay at runtime never reorders frames.
    last_due: u64,
}

impl Direction {
    pub fn new(
        cfg: Arc<DirConfig>,
        stats: Arc<DirStats>,
        queue: SyncSender<Pending>,
        seed: u64,
    ) -> Self {
        Direction {
            cfg,
            stats,
            queue,
            rng: fastrand::Rng::with_seed(seed),
            last_due: 0,
        }
    }

    /// Decides the fate of `frame`, which the kernel received at `arrived_ns`; `now_ns` is the
    /// present (both CLOCK_MONOTONIC). Counts what it decides, except `SendNow` which the caller
    /// counts once it has sent.
    pub fn offer(&mut self, frame: Vec<u8>, arrived_ns: u64, now_ns: u64) -> Action {
        self.stats.rx.fetch_add(1, Relaxed);
        let loss = self.cfg.loss_ppm.load(Relaxed);
        if loss > 0 && self.rng.u32(0..PPM) < loss {
            self.stats.dropped_loss.fetch_add(1, Relaxed);
            return Action::DroppedLoss;
        }
        let due = (arrived_ns + self.cfg.delay_ns.load(Relaxed)).max(self.last_due);
        self.last_due = due;
        // Sending directly is only right when no earlier frame still waits in the queue.
        if due <= now_ns && self.stats.queued.load(Relaxed) == 0 {
            return Action::SendNow(frame);
        }
        self.stats.queued.fetch_add(1, Relaxed);
        match self.queue.try_send(Pending { due_ns: due, frame }) {
            Ok(()) => Action::Queued,
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.stats.queued.fetch_sub(1, Relaxed);
                self.stats.dropped_queue.fetch_add(1, Relaxed);
                Action::DroppedQueueFull
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::{Receiver, sync_channel};

    fn direction(delay_ns: u64, loss: f64, cap: usize) -> (Direction, Receiver<Pending>) {
        let cfg = Arc::new(DirConfig::default());
        cfg.delay_ns.store(delay_ns, Relaxed);
        cfg.set_loss(loss);
        let (tx, rx) = sync_channel(cap);
        (Direction::new(cfg, Arc::default(), tx, 7), rx)
    }

    #[test]
    fn lateness_falls_in_its_bucket() {
        let st = DirStats::default();
        for late in [0, 9_999, 10_000, 49_999, 150_000, 200_000, 5_000_000] {
            st.record_late(late);
        }
        let b: Vec<u64> = st.late_buckets.iter().map(|a| a.load(Relaxed)).collect();
        assert_eq!(b, vec![2, 2, 1, 2]);
        assert_eq!(st.max_late_ns.load(Relaxed), 5_000_000);
    }

    #[test]
    fn zero_delay_sends_at_once() {
        let (mut d, rx) = direction(0, 0.0, 8);
        assert_eq!(d.offer(vec![1], 100, 150), Action::SendNow(vec![1]));
        assert!(rx.try_recv().is_err());
        assert_eq!(d.stats.rx.load(Relaxed), 1);
    }

    #[test]
    fn delayed_frames_are_due_at_arrival_plus_delay() {
        let (mut d, rx) = direction(3_000_000, 0.0, 8);
        assert_eq!(d.offer(vec![1], 1_000, 1_500), Action::Queued);
        assert_eq!(d.offer(vec![2], 2_000, 2_500), Action::Queued);
        let p1 = rx.try_recv().unwrap();
        let p2 = rx.try_recv().unwrap();
        assert_eq!((p1.due_ns, p1.frame), (3_001_000, vec![1]));
        assert_eq!((p2.due_ns, p2.frame), (3_002_000, vec![2]));
        assert_eq!(d.stats.queued.load(Relaxed), 2);
    }

    #[test]
    fn a_due_frame_waits_behind_queued_ones() {
        let (mut d, rx) = direction(1_000_000, 0.0, 8);
        assert_eq!(d.offer(vec![1], 0, 10), Action::Queued);
        d.cfg.delay_ns.store(0, Relaxed);
        // Due now, but frame 1 is still queued: sending it directly would overtake frame 1.
        assert_eq!(d.offer(vec![2], 20, 30), Action::Queued);
        let p1 = rx.try_recv().unwrap();
        let p2 = rx.try_recv().unwrap();
        assert_eq!(p1.frame, vec![1]);
        assert!(
            p2.due_ns >= p1.due_ns,
            "lowering the delay must not reorder frames"
        );
    }

    #[test]
    fn full_queue_drops_and_counts() {
        let (mut d, _rx) = direction(1_000_000, 0.0, 2);
        assert_eq!(d.offer(vec![1], 0, 0), Action::Queued);
        assert_eq!(d.offer(vec![2], 0, 0), Action::Queued);
        assert_eq!(d.offer(vec![3], 0, 0), Action::DroppedQueueFull);
        assert_eq!(d.stats.dropped_queue.load(Relaxed), 1);
        assert_eq!(d.stats.queued.load(Relaxed), 2);
    }

    #[test]
    fn loss_rate_is_honoured() {
        let (mut d, rx) = direction(0, 0.10, 1);
        let n = 100_000;
        let mut lost = 0;
        for i in 0..n {
            match d.offer(vec![], i, i) {
                Action::DroppedLoss => lost += 1,
                Action::SendNow(_) => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        drop(rx);
        // Binomial(100000, 0.1): sd ~95, so ±600 is more than 6 sd.
        assert!(
            (9_400..=10_600).contains(&lost),
            "lost {lost} of {n} at 10%"
        );
        assert_eq!(d.stats.dropped_loss.load(Relaxed), lost);
    }

    #[test]
    fn no_loss_and_full_loss_are_exact() {
        let (mut d, _rx) = direction(0, 0.0, 1);
        assert!((0..10_000).all(|i| matches!(d.offer(vec![], i, i), Action::SendNow(_))));
        d.cfg.set_loss(1.0);
        assert!((0..10_000).all(|i| d.offer(vec![], i, i) == Action::DroppedLoss));
    }
}

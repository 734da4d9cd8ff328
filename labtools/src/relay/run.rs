//! The running relay: per direction a receive thread (decides, sends what is due at once) and a
//! release thread (sends queued frames at their due time), plus the control socket server.
use super::clock::{make_realtime, mono_ns, real_ns, sleep_until, tighten_timer_slack};
use super::ctl::{DirStatus, ErrorReply, Request, Status};
use super::packet::{MAX_FRAME, PacketSocket};
use super::shaper::{Action, DirConfig, DirStats, Direction, Pending};
use anyhow::{Context, Result};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::{Receiver, sync_channel};
use std::thread;

pub struct Options {
    pub a: String,
    pub b: String,
    pub socket: PathBuf,
    pub pidfile: Option<PathBuf>,
    pub delay_ns: u64,
    pub loss: f64,
    /// Release queue length per direction, in frames.
    pub queue_frames: usize,
    /// How long before a due time the release thread stops sleeping and spins.
    pub spin_ns: u64,
    /// SCHED_FIFO priority for the frame threads; 0 leaves them under the normal scheduler.
    pub rt_priority: i32,
}

struct Side {
    cfg: Arc<DirConfig>,
    stats: Arc<DirStats>,
}

impl Side {
    fn status(&self) -> DirStatus {
        let s = &self.stats;
        DirStatus {
            delay_ns: self.cfg.delay_ns.load(Relaxed),
            loss: self.cfg.loss(),
            rx: s.rx.load(Relaxed),
            forwarded: s.forwarded.load(Relaxed),
            dropped_loss: s.dropped_loss.load(Relaxed),
            dropped_queue: s.dropped_queue.load(Relaxed),
            dropped_oversize: s.dropped_oversize.load(Relaxed),
            send_errors: s.send_errors.load(Relaxed),
            queued: s.queued.load(Relaxed) as u64,
            late_buckets: std::array::from_fn(|i| s.late_buckets[i].load(Relaxed)),
            max_late_ns: s.max_late_ns.load(Relaxed),
        }
    }
}

fn frame_thread_setup(rt_priority: i32, name: &str) {
    tighten_timer_slack();
    if rt_priority > 0
        && let Err(e) = make_realtime(rt_priority)
    {
        eprintln!(
            "lab-relay: {name}: SCHED_FIFO refused ({e}); running under the normal scheduler"
        );
    }
}

/// Receives on `ingress`, sends due frames straight out of `egress`, queues the rest.
fn receive_loop(
    ingress: Arc<PacketSocket>,
    egress: Arc<PacketSocket>,
    mut dir: Direction,
) -> Result<()> {
    let mut buf = vec![0u8; MAX_FRAME];
    loop {
        let r = ingress
            .recv(&mut buf)
            .with_context(|| format!("receive on {}", ingress.ifname))?;
        let now_mono = mono_ns();
        if r.truncated {
            dir.stats.rx.fetch_add(1, Relaxed);
            dir.stats.dropped_oversize.fetch_add(1, Relaxed);
            continue;
        }
        // Delay counts from the kernel's receive time, so the relay's own wake-up latency is
        // part of the delay instead of added to it.
        let age = r
            .stamp_real_ns
            .map(|t| real_ns().saturating_sub(t))
            .unwrap_or(0);
        let arrived = now_mono.saturating_sub(age);
        if let Action::SendNow(frame) = dir.offer(buf[..r.len].to_vec(), arrived, now_mono) {
            match egress.send(&frame) {
                Ok(()) => dir.stats.forwarded.fetch_add(1, Relaxed),
                Err(_) => dir.stats.send_errors.fetch_add(1, Relaxed),
            };
        }
    }
}

/// Sends queued frames out of `egress`, each at its due time.
fn release_loop(
    queue: Receiver<Pending>,
    egress: Arc<PacketSocket>,
    stats: Arc<DirStats>,
    spin_ns: u64,
) {
    while let Ok(p) = queue.recv() {
        sleep_until(p.due_ns, spin_ns);
        stats.record_late(mono_ns().saturating_sub(p.due_ns));
        match egress.send(&p.frame) {
            Ok(()) => stats.forwarded.fetch_add(1, Relaxed),
            Err(_) => stats.send_errors.fetch_add(1, Relaxed),
        };
        stats.queued.fetch_sub(1, Relaxed);
    }
}

fn serve_control(listener: UnixListener, opts_a: String, opts_b: String, a2b: Side, b2a: Side) {
    let handle = |stream: UnixStream| -> Result<()> {
        let mut line = String::new();
        BufReader::new(&stream).read_line(&mut line)?;
        let reply = match serde_json::from_str::<Request>(&line) {
            Ok(req) => {
                if let Request::Set {
                    dir,
                    delay_ns,
                    loss,
                } = req
                {
                    for (side, on) in [(&a2b, dir.covers_a2b()), (&b2a, dir.covers_b2a())] {
                        if !on {
                            continue;
                        }
                        if let Some(d) = delay_ns {
                            side.cfg.delay_ns.store(d, Relaxed);
                        }
                        if let Some(l) = loss {
                            side.cfg.set_loss(l);
                        }
                    }
                }
                let st = Status {
                    a: opts_a.clone(),
                    b: opts_b.clone(),
                    a2b: a2b.status(),
                    b2a: b2a.status(),
                };
                serde_json::to_string(&st)?
            }
            Err(e) => serde_json::to_string(&ErrorReply {
                error: format!("bad request: {e}"),
            })?,
        };
        (&stream).write_all(format!("{reply}\n").as_bytes())?;
        Ok(())
    };
    for stream in listener.incoming().flatten() {
        if let Err(e) = handle(stream) {
            eprintln!("lab-relay: control request failed: {e:#}");
        }
    }
}

/// Runs the relay until killed.
pub fn run(opts: Options) -> Result<()> {
    let sock_a = Arc::new(PacketSocket::open(&opts.a)?);
    let sock_b = Arc::new(PacketSocket::open(&opts.b)?);
    let _ = std::fs::remove_file(&opts.socket);
    let listener = UnixListener::bind(&opts.socket)
        .with_context(|| format!("bind control socket {}", opts.socket.display()))?;

    let mk = || {
        let cfg = Arc::new(DirConfig::default());
        cfg.delay_ns.store(opts.delay_ns, Relaxed);
        cfg.set_loss(opts.loss);
        (cfg, Arc::new(DirStats::default()))
    };
    let mut threads = Vec::new();
    let mut sides = Vec::new();
    for (name, ingress, egress) in [("a2b", &sock_a, &sock_b), ("b2a", &sock_b, &sock_a)] {
        let (cfg, stats) = mk();
        let (qtx, qrx) = sync_channel(opts.queue_frames);
        let dir = Direction::new(cfg.clone(), stats.clone(), qtx, fastrand::u64(..));
        let (ing, eg, rt) = (ingress.clone(), egress.clone(), opts.rt_priority);
        threads.push(
            thread::Builder::new()
                .name(format!("rx-{name}"))
                .spawn(move || {
                    frame_thread_setup(rt, name);
                    receive_loop(ing, eg, dir)
                })?,
        );
        let (eg, st, spin) = (egress.clone(), stats.clone(), opts.spin_ns);
        threads.push(
            thread::Builder::new()
                .name(format!("tx-{name}"))
                .spawn(move || {
                    frame_thread_setup(rt, name);
                    release_loop(qrx, eg, st, spin);
                    Ok(())
                })?,
        );
        sides.push(Side { cfg, stats });
    }
    let b2a = sides.pop().expect("two sides");
    let a2b = sides.pop().expect("two sides");
    let (na, nb) = (opts.a.clone(), opts.b.clone());
    thread::Builder::new()
        .name("control".into())
        .spawn(move || serve_control(listener, na, nb, a2b, b2a))?;

    // The PID file appears only once the relay forwards and answers, so waiting for it is enough.
    if let Some(p) = &opts.pidfile {
        std::fs::write(p, format!("{}\n", std::process::id()))
            .with_context(|| format!("write {}", p.display()))?;
    }
    eprintln!(
        "lab-relay: relaying {} <-> {} (control {})",
        opts.a,
        opts.b,
        opts.socket.display()
    );
    for t in threads {
        t.join()
            .map_err(|_| anyhow::anyhow!("relay thread panicked"))??;
    }
    Ok(())
}

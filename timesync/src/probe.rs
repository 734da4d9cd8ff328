//! `timesync probe`: the manager side. Sends probes to every domain's reflector, pairs each reply
//! with the kernel's departure and arrival stamps, and fits each domain's clock continuously.
use std::collections::VecDeque;
use std::io::ErrorKind;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::time::Duration;

use anyhow::Context;
use aya::Ebpf;
use aya::maps::{HashMap as BpfHashMap, MapData};
use aya::programs::TcAttachType;

use crate::ebpf::{self, Globals, XdpAttach};
use crate::fit::{Estimator, FitConfig, Sample};
use crate::matcher::{Matcher, Verdict};
use crate::output::{
    self, Attachment, DomainStatus, End, ErrorLine, FitLine, Line, Start, State, Target,
};
use crate::{route, signal, wire};

/// Where the manager stamps replies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum IngressHook {
    /// XDP native, else XDP generic, else TC ingress.
    Auto,
    XdpNative,
    XdpGeneric,
    Tc,
}

#[derive(Debug, Clone)]
pub struct ProbeOptions {
    /// (domain, reflector address).
    pub targets: Vec<(String, Ipv4Addr)>,
    pub token: u64,
    pub port: u16,
    /// Probes per second to each domain.
    pub rate_hz: f64,
    pub duration: Option<Duration>,
    /// Interfaces to stamp on instead of the ones the routes point at.
    pub interfaces: Vec<String>,
    /// When a route points at a bridge, stamp on the bridge device itself instead of its ports.
    pub on_bridge: bool,
    pub ingress: IngressHook,
    pub fit: FitConfig,
    pub fit_interval: Duration,
    /// Fits come every `interval` instead of every `fit_interval` for `length` after a domain's
    /// first reply, so the first fit within a bound is found as soon as the exchanges allow it.
    pub warmup: Warmup,
    pub loss_timeout: Duration,
    pub unreachable_after: Duration,
}

/// The faster fits of a domain's first moments (ProbeOptions::warmup).
#[derive(Debug, Clone, Copy)]
pub struct Warmup {
    pub interval: Duration,
    pub length: Duration,
}

impl Warmup {
    /// Time to a domain's next fit: the warm-up's interval during `length` after its first
    /// reply, the regular one before any reply and after the warm-up. Only how often the
    /// estimator is asked changes: the probes, and so the exchanges each fit sees, are the same.
    pub fn next_fit_in_ns(&self, first_reply_ns: Option<u64>, now: u64, regular: Duration) -> u64 {
        let warming = first_reply_ns.is_some_and(|t| now < t + self.length.as_nanos() as u64);
        if warming {
            self.interval.as_nanos() as u64
        } else {
            regular.as_nanos() as u64
        }
    }
}

struct Domain {
    name: String,
    addr: Ipv4Addr,
    est: Estimator,
    status: DomainStatus,
    next_send_ns: u64,
    /// When this domain is fitted (and checked for silence) next.
    next_fit_ns: u64,
    first_reply_ns: Option<u64>,
    /// Id of the first probe this domain answered (ids grow with every probe sent): unanswered
    /// probes sent before it are not losses, they may predate the reflector.
    first_answered_id: Option<u64>,
    last_reply_ns: Option<u64>,
    /// (when, replied?) over the fit window, for the recent loss ratio.
    outcomes: VecDeque<(u64, bool)>,
}

impl Domain {
    fn record(&mut self, now: u64, replied: bool, window_ns: u64) {
        self.outcomes.push_back((now, replied));
        while self
            .outcomes
            .front()
            .is_some_and(|(t, _)| *t + window_ns < now)
        {
            self.outcomes.pop_front();
        }
        let lost = self.outcomes.iter().filter(|(_, r)| !r).count();
        self.status.recent_loss = lost as f64 / self.outcomes.len().max(1) as f64;
    }

    fn status_at(&self, now: u64) -> DomainStatus {
        let mut s = self.status.clone();
        s.last_reply_age_s = self
            .last_reply_ns
            .map(|t| now.saturating_sub(t) as f64 / 1e9);
        s
    }
}

/// The kernel side: programs attached on the manager's interfaces and their stamp maps.
struct Hooks {
    _bpf: Ebpf,
    tx: BpfHashMap<MapData, u64, u64>,
    rx: BpfHashMap<MapData, u64, u64>,
    attachments: Vec<Attachment>,
}

fn attach_hooks(
    globals: &Globals,
    interfaces: &[String],
    ingress: IngressHook,
) -> anyhow::Result<Hooks> {
    let mut bpf = ebpf::load(globals)?;
    ebpf::tc(&mut bpf, ebpf::PROG_EGRESS)?
        .load()
        .context("failed to load the egress stamp program")?;
    let want_xdp = ingress != IngressHook::Tc;
    if want_xdp {
        ebpf::xdp(&mut bpf, ebpf::PROG_INGRESS_XDP)?
            .load()
            .context("failed to load the XDP ingress stamp program")?;
    }
    let mut tc_ingress_loaded = false;
    let mut attachments = Vec::new();
    for iface in interfaces {
        ebpf::attach_tc(
            ebpf::tc(&mut bpf, ebpf::PROG_EGRESS)?,
            iface,
            TcAttachType::Egress,
        )?;
        let xdp_mode = match ingress {
            IngressHook::Tc => None,
            IngressHook::XdpNative => Some(XdpAttach::Native),
            IngressHook::XdpGeneric => Some(XdpAttach::Generic),
            // The prober's XDP program only passes packets on, so native mode is safe on veth.
            IngressHook::Auto => Some(XdpAttach::Native),
        };
        let mut how = None;
        if let Some(mode) = xdp_mode {
            let prog = ebpf::xdp(&mut bpf, ebpf::PROG_INGRESS_XDP)?;
            match ebpf::attach_xdp(prog, iface, mode) {
                Ok(m) => {
                    how = Some(if m == XdpAttach::Native {
                        "xdp-native"
                    } else {
                        "xdp-generic"
                    })
                }
                Err(e) if ingress == IngressHook::Auto => {
                    let prog = ebpf::xdp(&mut bpf, ebpf::PROG_INGRESS_XDP)?;
                    match ebpf::attach_xdp(prog, iface, XdpAttach::Generic) {
                        Ok(_) => how = Some("xdp-generic"),
                        Err(e2) => eprintln!(
                            "timesync: XDP on {iface} unavailable ({e:#}; {e2:#}), stamping at TC ingress"
                        ),
                    }
                }
                Err(e) => return Err(e),
            }
        }
        if how.is_none() {
            if !tc_ingress_loaded {
                ebpf::tc(&mut bpf, ebpf::PROG_INGRESS_TC)?
                    .load()
                    .context("failed to load the TC ingress stamp program")?;
                tc_ingress_loaded = true;
            }
            ebpf::attach_tc(
                ebpf::tc(&mut bpf, ebpf::PROG_INGRESS_TC)?,
                iface,
                TcAttachType::Ingress,
            )?;
            how = Some("tc");
        }
        attachments.push(Attachment {
            interface: iface.clone(),
            egress: "tc".into(),
            ingress: how.unwrap_or("tc").into(),
        });
    }
    let tx = BpfHashMap::try_from(bpf.take_map(ebpf::MAP_TX).context("map LP_TS_TX missing")?)?;
    let rx = BpfHashMap::try_from(bpf.take_map(ebpf::MAP_RX).context("map LP_TS_RX missing")?)?;
    Ok(Hooks {
        _bpf: bpf,
        tx,
        rx,
        attachments,
    })
}

/// Runs the prober until the duration ends or a signal arrives; prints JSON lines on stdout.
pub fn run(opts: &ProbeOptions) -> anyhow::Result<()> {
    anyhow::ensure!(
        !opts.targets.is_empty(),
        "no targets given (use --target DOMAIN=ADDR)"
    );
    anyhow::ensure!(
        opts.rate_hz > 0.0 && opts.rate_hz <= 10_000.0,
        "rate {} Hz out of range (0, 10000]",
        opts.rate_hz
    );
    let globals = Globals {
        token: opts.token,
        port: opts.port,
        ..Globals::default()
    };
    ebpf::check_globals(&globals)?;

    // Stamp on the interfaces the routes toward the targets leave by, unless told otherwise.
    let mut targets = Vec::new();
    let mut interfaces: Vec<String> = opts.interfaces.clone();
    for (name, addr) in &opts.targets {
        let iface = route::interface_toward(*addr).with_context(|| format!("domain {name}"))?;
        let ports = if opts.on_bridge {
            Vec::new()
        } else {
            route::bridge_ports(&iface)
        };
        let stamp_on = if ports.is_empty() {
            vec![iface.clone()]
        } else {
            ports
        };
        for i in stamp_on {
            if opts.interfaces.is_empty() && !interfaces.contains(&i) {
                interfaces.push(i);
            }
        }
        targets.push(Target {
            domain: name.clone(),
            address: addr.to_string(),
            interface: iface,
        });
    }
    if !opts.interfaces.is_empty() {
        for t in &mut targets {
            t.interface = opts.interfaces.join(",");
        }
    }

    signal::install();
    let mut hooks = attach_hooks(&globals, &interfaces, opts.ingress)?;
    let sock = UdpSocket::bind("0.0.0.0:0").context("failed to open the probe socket")?;

    let interval_ns = (1e9 / opts.rate_hz) as u64;
    let start = ebpf::monotonic_ns();
    let window_ns = opts.fit.window_ns;
    let mut domains: Vec<Domain> = opts
        .targets
        .iter()
        .enumerate()
        .map(|(i, (name, addr))| Domain {
            name: name.clone(),
            addr: *addr,
            est: Estimator::new(opts.fit.clone()),
            status: DomainStatus {
                domain: name.clone(),
                address: addr.to_string(),
                state: State::Starting,
                sent: 0,
                replies: 0,
                lost: 0,
                unanswered_before_first_reply: 0,
                duplicates: 0,
                late: 0,
                unstamped: 0,
                invalid: 0,
                send_errors: 0,
                recent_loss: 0.0,
                last_reply_age_s: None,
            },
            // Spread the domains' probes over the interval rather than sending them in bursts.
            next_send_ns: start + interval_ns * i as u64 / opts.targets.len() as u64,
            next_fit_ns: start + opts.fit_interval.as_nanos() as u64,
            first_reply_ns: None,
            first_answered_id: None,
            last_reply_ns: None,
            outcomes: VecDeque::new(),
        })
        .collect();

    let start_line = Line::Start(Start {
        clock: "CLOCK_MONOTONIC (bpf_ktime_get_ns)".into(),
        start_ns: start,
        port: opts.port,
        rate_hz: opts.rate_hz,
        fit_interval_s: opts.fit_interval.as_secs_f64(),
        unreachable_after_s: opts.unreachable_after.as_secs_f64(),
        targets,
        attachments: hooks.attachments.clone(),
    });
    if output::emit(&start_line).is_err() {
        return Ok(());
    }

    // Probe ids start from the clock so that replies to an earlier run are not taken for ours.
    let mut next_id: u64 = start << 8;
    let loss_timeout = opts.loss_timeout.as_nanos() as u64;
    let mut matcher = Matcher::new(loss_timeout);
    let mut foreign = 0u64;
    let end = opts.duration.map(|d| start + d.as_nanos() as u64);
    let unreachable_after = opts.unreachable_after.as_nanos() as u64;
    let mut buf = [0u8; 512];

    'run: loop {
        let now = ebpf::monotonic_ns();
        if signal::stop_requested() || end.is_some_and(|e| now >= e) {
            break;
        }

        // Send what is due.
        for (di, d) in domains.iter_mut().enumerate() {
            if d.next_send_ns > now {
                continue;
            }
            let id = next_id;
            next_id = next_id.wrapping_add(1);
            let payload = wire::encode_probe(opts.token, id);
            match sock.send_to(&payload, SocketAddrV4::new(d.addr, opts.port)) {
                Ok(_) => {
                    d.status.sent += 1;
                    matcher.sent(id, di, now);
                }
                Err(_) => d.status.send_errors += 1,
            }
            // After a stall, do not catch up with a burst.
            d.next_send_ns = (d.next_send_ns + interval_ns).max(now);
        }

        // Probes without a reply in time are lost; their departure stamps are dropped.
        for (id, di) in matcher.expire(now) {
            let d = &mut domains[di];
            if d.first_answered_id.is_some_and(|first| id > first) {
                d.status.lost += 1;
                d.record(now, false, window_ns);
            } else {
                d.status.unanswered_before_first_reply += 1;
            }
            let _ = hooks.tx.remove(&id);
        }

        // Fit and report, each domain when it is due.
        for d in domains.iter_mut().filter(|d| now >= d.next_fit_ns) {
            d.next_fit_ns = now
                + opts
                    .warmup
                    .next_fit_in_ns(d.first_reply_ns, now, opts.fit_interval);
            let silent_for = now.saturating_sub(d.last_reply_ns.unwrap_or(start));
            if silent_for >= unreachable_after {
                if d.status.state != State::Unreachable {
                    d.status.state = State::Unreachable;
                    let error = match d.last_reply_ns {
                        None => format!(
                            "no reply from domain {} ({}:{}) within {:.1} s: {} probes sent, none answered; \
                                 is `timesync reflect` running there with this token?",
                            d.name,
                            d.addr,
                            opts.port,
                            silent_for as f64 / 1e9,
                            d.status.sent
                        ),
                        Some(_) => format!(
                            "domain {} ({}:{}) stopped answering: no reply for {:.1} s",
                            d.name,
                            d.addr,
                            opts.port,
                            silent_for as f64 / 1e9
                        ),
                    };
                    let line = Line::Error(ErrorLine {
                        domain: d.name.clone(),
                        emitted_ns: now,
                        address: d.addr.to_string(),
                        error,
                        status: d.status_at(now),
                    });
                    if output::emit(&line).is_err() {
                        break 'run;
                    }
                }
                continue;
            }
            match d.est.fit(&d.name) {
                Some(fit) => {
                    d.status.state = State::Ok;
                    let line = Line::Fit(FitLine {
                        fit: fit.clock,
                        emitted_ns: now,
                        detail: fit.detail,
                        status: d.status_at(now),
                    });
                    if output::emit(&line).is_err() {
                        break 'run;
                    }
                }
                None => d.status.state = State::Starting,
            }
        }

        // Wait for replies until the next thing is due.
        let due = domains
            .iter()
            .map(|d| d.next_send_ns.min(d.next_fit_ns))
            .min()
            .unwrap_or(now);
        let wait = due
            .saturating_sub(ebpf::monotonic_ns())
            .clamp(50_000, 100_000_000);
        sock.set_read_timeout(Some(Duration::from_nanos(wait)))?;
        let (n, from) = match sock.recv_from(&mut buf) {
            Ok(r) => r,
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) =>
            {
                continue;
            }
            // ICMP errors reported on the socket (e.g. port unreachable): the loss timeout covers them.
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::ConnectionRefused | ErrorKind::HostUnreachable
                ) =>
            {
                continue;
            }
            Err(e) => return Err(e).context("failed to receive on the probe socket"),
        };
        let now = ebpf::monotonic_ns();
        let Some(reply) = wire::decode_reply(&buf[..n]).filter(|r| r.token == opts.token) else {
            foreign += 1;
            continue;
        };
        let id = reply.id;
        let expected =
            |di: usize| from == SocketAddr::V4(SocketAddrV4::new(domains[di].addr, opts.port));
        let di = match matcher.reply(id, now, expected) {
            Verdict::Fresh(di) => di,
            other => {
                match other {
                    Verdict::Duplicate(di) => domains[di].status.duplicates += 1,
                    Verdict::Late(di) => domains[di].status.late += 1,
                    _ => foreign += 1,
                }
                // A repeated reply re-stamps the id; the stamp of a fresh one is taken below.
                if !matches!(other, Verdict::Foreign) {
                    let _ = hooks.rx.remove(&id);
                }
                continue;
            }
        };
        let d = &mut domains[di];
        // Replies may come out of order: the first answered probe is the earliest one answered.
        d.first_answered_id = Some(d.first_answered_id.map_or(id, |first| first.min(id)));
        if d.first_reply_ns.is_none() {
            d.first_reply_ns = Some(now);
            d.next_fit_ns = d
                .next_fit_ns
                .min(now + opts.warmup.interval.as_nanos() as u64);
        }
        let t1 = hooks.tx.get(&id, 0).ok();
        let t4 = hooks.rx.get(&id, 0).ok();
        let _ = hooks.tx.remove(&id);
        let _ = hooks.rx.remove(&id);
        d.last_reply_ns = Some(now);
        d.record(now, true, window_ns);
        match (t1, t4) {
            (Some(t1), Some(t4)) => {
                if d.est.push(Sample {
                    t1,
                    t2: reply.t2,
                    t3: reply.t3,
                    t4,
                }) {
                    d.status.replies += 1;
                } else {
                    d.status.invalid += 1;
                }
            }
            _ => d.status.unstamped += 1,
        }
        if d.status.state == State::Unreachable {
            // Back: the next fit line says so (state ok) once the window allows a fit.
            d.status.state = State::Starting;
        }
    }

    let now = ebpf::monotonic_ns();
    let _ = output::emit(&Line::End(End {
        domains: domains.iter().map(|d| d.status_at(now)).collect(),
        foreign,
    }));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fits_come_faster_only_during_the_warm_up_after_the_first_reply() {
        let w = Warmup {
            interval: Duration::from_millis(100),
            length: Duration::from_secs(2),
        };
        let regular = Duration::from_millis(500);
        let s = 1_000_000_000;
        assert_eq!(
            w.next_fit_in_ns(None, 5 * s, regular),
            500_000_000,
            "no reply yet"
        );
        assert_eq!(w.next_fit_in_ns(Some(5 * s), 5 * s, regular), 100_000_000);
        assert_eq!(
            w.next_fit_in_ns(Some(5 * s), 7 * s - 1, regular),
            100_000_000
        );
        assert_eq!(
            w.next_fit_in_ns(Some(5 * s), 7 * s, regular),
            500_000_000,
            "warm-up over"
        );
        let none = Warmup {
            length: Duration::ZERO,
            ..w
        };
        assert_eq!(
            none.next_fit_in_ns(Some(5 * s), 5 * s, regular),
            500_000_000
        );
    }
}

//! timesync on the lab (`ci/lab up`, root): every lab host shares this machine's kernel, so the
//! true offset between the domains declared separate is zero, and the reflector's test switch adds
//! a known one. Reflectors run in the hosts' namespaces; the prober runs in the root namespace
//! (the manager), exactly as `latplan` runs them.
//!
//! Reflectors on the metals use native XDP: the prober's native XDP program on the bridge port
//! that is their veth peer gives that peer the NAPI context a native XDP_TX needs (docs/timesync.md).
mod support;

use support::*;
use timesync::output::{FitLine, Line, State};
use timesync::summary::Truth;

#[test]
fn shared_clock_domains_sync_to_zero_offset_and_drift() {
    let _lab = lab();
    let token = token();
    let _m1 = Reflector::start("lp-metal1", "mgmt0", &token, &["--mode", "native"]);
    let _m2 = Reflector::start("lp-metal2", "mgmt0", &token, &["--mode", "native"]);
    // vm1 sits behind metal1, a router: probes and replies are forwarded (TTL and IP checksum
    // change on the way), so this shows the replies stay valid across routers.
    let _v1 = Reflector::start("lp-vm1", "eth0", &token, &[]);
    let run = probe(
        &token,
        &["metal1=10.77.0.11", "metal2=10.77.0.12", "vm1=10.77.1.2"],
        12.0,
        &[],
    );
    for domain in ["metal1", "metal2", "vm1"] {
        let fits = run.fits(domain);
        assert!(
            fits.len() >= 15,
            "{domain}: only {} fits in 12 s",
            fits.len()
        );
        // The reflectors answer from the start: the warm-up fits every 0.1 s from the first
        // reply, so the first fit comes once half a second of exchanges allows one (~0.4 s),
        // not on the regular half-second tick after it.
        let first_s = run.age_s(fits[0]);
        assert!(first_s < 0.8, "{domain}: first fit after {first_s:.2} s");
        let warm = fits.iter().filter(|f| run.age_s(f) < 2.0).count();
        assert!(
            warm >= 10,
            "{domain}: {warm} fits in the first 2 s: no warm-up"
        );
        for f in &fits {
            // Every fit, the warm-up's too (a session may start on one), holds its bound.
            let err = f.fit.offset_ns;
            assert!(
                err.abs() <= f.fit.error_bound_ns,
                "{domain}: offset {err:.0} ns outside its bound {f:?}"
            );
            if run.age_s(f) < 2.0 {
                continue;
            }
            // vm1's path crosses the lab's user-space relay, whose two directions are scheduled
            // separately: up to tens of µs of asymmetry there, inside the bound but not a few µs.
            if domain != "vm1" {
                assert!(
                    err.abs() < 10_000.0,
                    "{domain}: offset {err:.0} ns is not within a few µs of zero"
                );
            }
        }
        let last = fits.last().unwrap();
        // Through the relay the delays wander by tens of µs, which a 12 s window reads as a ppm or two.
        let drift_limit = if domain == "vm1" { 5.0 } else { 0.5 };
        assert!(
            last.fit.drift_ppm.abs() < drift_limit,
            "{domain}: drift {} ppm is not near zero",
            last.fit.drift_ppm
        );
        assert_eq!(last.status.lost, 0, "{domain}: probes lost on a clean lab");
        eprintln!(
            "{domain}: offset {:.0} ns drift {:.3} ppm bound {:.0} ns",
            last.fit.offset_ns, last.fit.drift_ppm, last.fit.error_bound_ns
        );
    }
}

#[test]
fn a_known_offset_and_drift_are_recovered_within_the_bound() {
    let _lab = lab();
    let token = token();
    let r = Reflector::start(
        "lp-metal1",
        "mgmt0",
        &token,
        &[
            "--mode",
            "native",
            "--test-offset-ns",
            "1234567000",
            "--test-drift-ppm",
            "20",
        ],
    );
    let truth = Truth {
        offset_ns: 1_234_567_000,
        drift_ppb: 20_000,
        ref_ns: r.ready.test_ref_ns,
    };
    let run = probe(&token, &["metal1=10.77.0.11"], 12.0, &[]);
    let fits = run.fits("metal1");
    assert!(fits.len() >= 15, "only {} fits", fits.len());
    for f in fits.iter().filter(|f| run.age_s(f) >= 2.0) {
        let err = f.fit.offset_ns - truth.offset_at(f.fit.ref_host_ns as f64);
        assert!(
            err.abs() <= f.fit.error_bound_ns,
            "offset error {err:.0} ns outside the bound {f:?}"
        );
    }
    let last = fits.last().unwrap();
    let drift_err = last.fit.drift_ppm - truth.drift_ppm();
    // Over 12 s, a path delay that creeps by a µs (other work on the machine) moves the drift by a
    // tenth of a ppm: more than the white-noise standard error says, hence the floor.
    assert!(
        drift_err.abs() <= (4.0 * last.detail.drift_se_ppm).max(0.5),
        "drift {} ppm vs truth {} ppm (se {})",
        last.fit.drift_ppm,
        truth.drift_ppm(),
        last.detail.drift_se_ppm
    );
    eprintln!(
        "offset {:.0} ns (truth {:.0}), drift {:.4} ppm (truth {:.4}), bound {:.0} ns",
        last.fit.offset_ns,
        truth.offset_at(last.fit.ref_host_ns as f64),
        last.fit.drift_ppm,
        truth.drift_ppm(),
        last.fit.error_bound_ns
    );
}

/// vm1 is reached through a relay namespace (`ci/lab relays` lists it): `ci/lab loss vm1 20%`
/// drops probes and replies on the probe path itself. (The reflector's `--test-drop-ratio` switch
/// emulates loss where no relay sits on the path; the BPF_PROG_TEST_RUN tests cover it.)
#[test]
fn twenty_percent_probe_loss_still_converges_with_an_honest_bound() {
    let _lab = lab();
    let token = token();
    let _r = Reflector::start("lp-vm1", "eth0", &token, &[]);
    let clean = probe(&token, &["vm1=10.77.1.2"], 12.0, &[]);
    let lossy = {
        let _loss = RelayLoss::set("vm1", "20%");
        probe(&token, &["vm1=10.77.1.2"], 12.0, &[])
    };
    let (c, l) = (clean.fits("vm1"), lossy.fits("vm1"));
    assert!(l.len() >= 15, "only {} fits under loss", l.len());
    let settled: Vec<&FitLine> = l
        .iter()
        .filter(|f| lossy.age_s(f) >= 2.0)
        .copied()
        .collect();
    for f in &settled {
        assert!(
            f.fit.offset_ns.abs() <= f.fit.error_bound_ns,
            "offset {:.0} outside the bound under loss",
            f.fit.offset_ns
        );
    }
    // Converged: useful bounds (the relayed path itself has tens of µs of asymmetry,
    // BENCHMARKS.md: |error| p99 26 µs, bound p50 76 µs without loss). Every fit must be
    // honest, but not every fit narrow: a fit whose window holds a burst of exchanges the relay
    // delayed (its thread preempted on a loaded machine) widens its bound, which is the bound
    // doing its job. One such fit read 219 µs in a full suite run; the rest stay far below.
    let mut bounds = hdrhistogram::Histogram::<u64>::new(3).unwrap();
    for f in &settled {
        bounds.record(f.fit.error_bound_ns as u64).unwrap();
    }
    let (p90, max) = (bounds.value_at_quantile(0.9), bounds.max());
    assert!(
        !settled.is_empty() && p90 < 200_000 && max < 1_000_000,
        "bounds under loss over {} fits: p90 {p90} ns, max {max} ns: not converged",
        settled.len()
    );
    let last = l.last().unwrap();
    // 20% each way: about 36% of the exchanges fail.
    assert!(
        (0.2..0.55).contains(&last.status.recent_loss),
        "reported loss {}",
        last.status.recent_loss
    );
    let c_last = c.last().unwrap();
    assert_eq!(c_last.status.lost, 0, "probes lost without loss set");
    assert!(
        last.fit.samples < c_last.fit.samples,
        "fewer exchanges under loss"
    );
    // The bound's statistical part is what fewer exchanges widen, by about 1/sqrt(0.64) here; on
    // the relayed path the run-to-run spread of the delays (other work on the machine) is larger
    // than that, so the widening itself is shown by the fit's unit test on synthetic exchanges
    // (`loss_and_few_samples_widen_the_bound_but_stay_honest`); here: converged, honest, reported.
    let half = |fits: &[&FitLine], v: fn(&FitLine) -> f64| {
        median(fits[fits.len() / 2..].iter().map(|f| v(f)).collect())
    };
    let (stat_c, stat_l) = (
        half(&c, |f| f.detail.statistical_ns),
        half(&l, |f| f.detail.statistical_ns),
    );
    let (bound_c, bound_l) = (
        half(&c, |f| f.fit.error_bound_ns),
        half(&l, |f| f.fit.error_bound_ns),
    );
    eprintln!(
        "clean: bound {bound_c:.0} ns (statistical {stat_c:.0}, {} exchanges); 20% loss: bound {bound_l:.0} ns \
         (statistical {stat_l:.0}, {} exchanges, loss {:.2})",
        c_last.fit.samples, last.fit.samples, last.status.recent_loss
    );
}

#[test]
fn a_domain_without_reflector_is_reported_and_the_others_keep_syncing() {
    let _lab = lab();
    let token = token();
    let _m1 = Reflector::start("lp-metal1", "mgmt0", &token, &["--mode", "native"]);
    let m2 = Reflector::start("lp-metal2", "mgmt0", &token, &["--mode", "native"]);
    // metal2 answers for 3 s, then its reflector goes away; vm2 never had one.
    let killer = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_secs(3));
        drop(m2);
        support::monotonic_ns()
    });
    let run = probe(
        &token,
        &["metal1=10.77.0.11", "metal2=10.77.0.12", "vm2=10.77.2.2"],
        10.0,
        &["--unreachable-after", "2"],
    );
    let killed_at = killer.join().unwrap();
    let err_of = |d: &str| {
        run.lines
            .iter()
            .find_map(|l| match l {
                Line::Error(e) if e.domain == d => Some(e.clone()),
                _ => None,
            })
            .unwrap_or_else(|| panic!("no error line for {d}: {:?}", run.lines))
    };
    let vm2 = err_of("vm2");
    assert!(
        vm2.error.contains("no reply") && vm2.error.contains("10.77.2.2"),
        "{}",
        vm2.error
    );
    assert_eq!(vm2.status.state, State::Unreachable);
    let metal2 = err_of("metal2");
    assert!(
        metal2.error.contains("stopped answering"),
        "{}",
        metal2.error
    );
    // Reported within unreachable-after (2 s) plus one fit interval of the kill.
    let reported_after = run.error_at_s("metal2") - (killed_at - run.start_ns) as f64 / 1e9;
    assert!(
        reported_after <= 3.0,
        "metal2 reported {reported_after:.1} s after its reflector stopped"
    );
    assert!(
        run.error_at_s("vm2") <= 3.0,
        "vm2 reported after {:.1} s",
        run.error_at_s("vm2")
    );
    // metal1 kept syncing all along.
    let m1 = run.fits("metal1");
    assert!(
        m1.iter().any(|f| run.age_s(f) >= 9.0),
        "metal1 stopped getting fits"
    );
    assert!(m1.last().unwrap().fit.offset_ns.abs() < 10_000.0);
    let Some(Line::End(end)) = run.lines.last() else {
        panic!("no end line")
    };
    let st = |d: &str| end.domains.iter().find(|s| s.domain == d).unwrap().clone();
    assert_eq!(st("metal1").state, State::Ok);
    assert_eq!(st("vm2").replies, 0);
    assert!(st("metal2").replies > 0);
}

/// `latplan apply` starts its prober while it still pushes the binaries, before any reflector
/// runs: the probes sent until the reflector answers are no loss, and the first fit comes as
/// soon after the reflector's start as when it answered from the start.
#[test]
fn a_prober_started_before_the_reflector_counts_no_loss_and_fits_soon_after_it_answers() {
    let _lab = lab();
    let token = token();
    let prober = Prober::start(&token, &["metal2=10.77.0.12"], 5.0, &[]);
    // Long enough for probes to pass the 1 s loss timeout unanswered.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let reflector = Reflector::start("lp-metal2", "mgmt0", &token, &["--mode", "native"]);
    let answering_ns = support::monotonic_ns();
    let run = prober.finish();
    drop(reflector);
    let fits = run.fits("metal2");
    let first = fits.first().expect("no fit once the reflector answered");
    let after_s = first.emitted_ns.saturating_sub(answering_ns) as f64 / 1e9;
    // The same limit as for a reflector answering from the start (the first test).
    assert!(
        after_s < 0.8,
        "first fit {after_s:.2} s after the reflector answered"
    );
    for f in &fits {
        // One kernel: the true offset is zero.
        assert!(
            f.fit.offset_ns.abs() <= f.fit.error_bound_ns,
            "offset {:.0} ns outside its bound {f:?}",
            f.fit.offset_ns
        );
    }
    let Some(Line::End(end)) = run.lines.last() else {
        panic!("no end line")
    };
    let st = end.domains.iter().find(|s| s.domain == "metal2").unwrap();
    assert_eq!(
        st.lost, 0,
        "probes sent before the reflector ran counted lost: {st:?}"
    );
    // 50 probes a second for 1.5 s, less those still within their loss timeout at the answer.
    assert!(
        st.unanswered_before_first_reply >= 20,
        "unanswered probes before the first reply not counted: {st:?}"
    );
    assert_eq!(fits.last().unwrap().status.recent_loss, 0.0);
}

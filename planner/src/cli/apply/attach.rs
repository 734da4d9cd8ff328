//! The session's clock starts only once every observer is attached: an observer spends seconds
//! loading its programs (the verifier), and a session that started at launch would spend that
//! part of `--duration` blind, then wait for the load at its end. This waits, at most
//! `--attach-timeout`, printing each host as it attaches and every few seconds those still
//! loading; a host that fails or runs out of time is failed with its reason and stopped.
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::executor::observe::{Attach, ObserverEnd, Started, wait_attached};
use crate::executor::{Outcome as HostOutcome, Recap};
use crate::session::Domain;

/// One observer as the SSH bus runs it: its stop switch and its collecting task.
pub struct Observer {
    pub host: String,
    pub stop: watch::Sender<bool>,
    pub task: JoinHandle<ObserverEnd>,
}

/// Observers that attached, and those given up on (told to stop; their tasks only need to be
/// let go of, within a bound, at the end).
pub struct Attached {
    pub running: Vec<Observer>,
    pub given_up: Vec<Observer>,
}

/// Waits for every started observer's attached notice, at most `limit`.
pub async fn wait_for_attach(
    started: Vec<(String, watch::Sender<bool>, Started)>,
    limit: Duration,
    recap: &mut Recap,
) -> Attached {
    eprintln!(
        "waiting for {} observer(s) to attach (at most {})…",
        started.len(),
        humantime::format_duration(limit)
    );
    let mut pending = Vec::new();
    let mut rest = Vec::new();
    for (host, stop, s) in started {
        pending.push((host.clone(), s.attached));
        rest.push((host, stop, s.task, s.stderr));
    }
    let outcome = wait_attached(
        pending,
        limit,
        Duration::from_secs(5),
        |h, took| eprintln!("{h}: observer attached ({:.1} s)", took.as_secs_f64()),
        |took, loading| eprintln!("{}", waiting_line(took, loading)),
    )
    .await;
    let mut out = Attached {
        running: Vec::new(),
        given_up: Vec::new(),
    };
    for (host, stop, task, stderr) in rest {
        let how = outcome
            .iter()
            .find(|(h, _)| *h == host)
            .map(|(_, a)| a.clone())
            .unwrap_or(Attach::TimedOut);
        let o = Observer { host, stop, task };
        match how {
            Attach::Attached(_) => out.running.push(o),
            Attach::Ended => {
                // Its stream has ended or is about to: the task says why.
                let why = match tokio::time::timeout(Duration::from_secs(15), o.task).await {
                    Ok(Ok(end)) => end.describe_failure(),
                    _ => "its stream did not end".into(),
                };
                fail(
                    recap,
                    &o.host,
                    &format!("the observer ended before it attached: {why}"),
                );
            }
            Attach::TimedOut => {
                let stderr = stderr.lock().expect("stderr text").clone();
                let last = crate::executor::clocks::last_lines(&stderr, 3);
                let last = if last.trim().is_empty() {
                    "nothing on its stderr".to_string()
                } else {
                    format!("its stderr: {last}")
                };
                fail(
                    recap,
                    &o.host,
                    &format!(
                        "the observer did not report attached within {} (still loading its eBPF programs? raise --attach-timeout); {last}",
                        humantime::format_duration(limit)
                    ),
                );
                let _ = o.stop.send(true);
                out.given_up.push(o);
            }
        }
    }
    out
}

/// Stops the observers of hosts in a clock domain the gate failed (`failed`: the domain and
/// why: its reflector did not start, or it did not sync) and fails those hosts through `fail`;
/// the session goes on with the others.
pub fn give_up_on_failed_domains(
    attached: Attached,
    failed: &[(Domain, String)],
    mut fail: impl FnMut(&Domain, &str),
) -> Attached {
    for (dom, why) in failed {
        fail(dom, why);
    }
    let mut out = Attached {
        running: Vec::new(),
        given_up: attached.given_up,
    };
    for o in attached.running {
        if failed.iter().any(|(d, _)| d.hosts.contains(&o.host)) {
            let _ = o.stop.send(true);
            out.given_up.push(o);
        } else {
            out.running.push(o);
        }
    }
    out
}

fn fail(recap: &mut Recap, host: &str, why: &str) {
    eprintln!("{host}: {why}");
    recap.set(host, HostOutcome::Failed(why.to_string()));
}

/// "waiting for 3 observer(s) to attach (10 s): b1, b2, b3" — the first few names.
fn waiting_line(took: Duration, loading: &[String]) -> String {
    const SHOWN: usize = 8;
    let mut names = loading
        .iter()
        .take(SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if loading.len() > SHOWN {
        names.push_str(&format!(", … ({} more)", loading.len() - SHOWN));
    }
    format!(
        "waiting for {} observer(s) to attach ({} s): {names}",
        loading.len(),
        took.as_secs()
    )
}

/// Lets go of observers given up on: each was told to stop; a task still running after `limit`
/// is dropped (its channel closes, which ends the observer on the host too).
pub async fn release(given_up: Vec<Observer>, limit: Duration) {
    let waits = given_up.into_iter().map(|o| async move {
        let mut task = o.task;
        if tokio::time::timeout(limit, &mut task).await.is_err() {
            task.abort();
        }
    });
    futures::future::join_all(waits).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn observer(host: &str) -> (Observer, watch::Receiver<bool>) {
        let (stop, rx) = watch::channel(false);
        let name = host.to_string();
        let task = tokio::spawn(async move {
            ObserverEnd {
                host: name,
                summary: None,
                error: None,
                exit: Some(0),
                stderr: String::new(),
                ended_early: false,
            }
        });
        let o = Observer {
            host: host.into(),
            stop,
            task,
        };
        (o, rx)
    }

    #[tokio::test]
    async fn observers_in_an_unsynced_domain_are_stopped_and_their_hosts_failed() {
        let (a, a_rx) = observer("a");
        let (b, b_rx) = observer("b");
        let (c, c_rx) = observer("c");
        let dom = Domain {
            name: "d2".into(),
            reflector: "b".into(),
            address: "10.0.0.2".into(),
            hosts: vec!["b".into(), "c".into()],
        };
        let attached = Attached {
            running: vec![a, b],
            given_up: vec![c],
        };
        let mut failed = Vec::new();
        let out = give_up_on_failed_domains(
            attached,
            &[(dom, "clock domain d2 not synced: no fit yet".into())],
            |d, why| failed.push((d.name.clone(), why.to_string())),
        );
        let names = |v: &[Observer]| v.iter().map(|o| o.host.clone()).collect::<Vec<_>>();
        assert_eq!(names(&out.running), ["a"]);
        assert_eq!(names(&out.given_up), ["c", "b"]);
        assert_eq!(
            failed,
            [(
                "d2".to_string(),
                "clock domain d2 not synced: no fit yet".to_string()
            )]
        );
        assert!(!*a_rx.borrow() && *b_rx.borrow());
        // One given up before (attach timed out) was already told to stop by its own path.
        assert!(!*c_rx.borrow());
    }

    #[test]
    fn the_waiting_line_names_the_first_hosts_still_loading() {
        let hosts: Vec<String> = (1..=10).map(|i| format!("b{i}")).collect();
        assert_eq!(
            waiting_line(Duration::from_secs(12), &hosts[..2]),
            "waiting for 2 observer(s) to attach (12 s): b1, b2"
        );
        assert_eq!(
            waiting_line(Duration::from_secs(5), &hosts),
            "waiting for 10 observer(s) to attach (5 s): b1, b2, b3, b4, b5, b6, b7, b8, … (2 more)"
        );
    }
}

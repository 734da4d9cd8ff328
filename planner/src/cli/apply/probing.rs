//! The manager's prober, started as soon as the hosts are connected rather than once the
//! session begins: attaching its stamping hooks is slow (two TCX links per interface, or per
//! bridge port, each waiting for an RCU grace period under RTNL; 0.25 s on the 8-host benchmark
//! lab alone, 0.9 s beside the observers' and reflectors' own attaches), so it runs beside facts
//! and pushes instead of in front of the clock gate. Probes sent before a domain's reflector runs
//! go unanswered; the prober does not count those as lost (docs/timesync.md).
use crate::executor::clocks::Prober;
use crate::inventory::Inventory;
use crate::session::{self, Domain};
use crate::tasks::artifacts::{Artifact, TIMESYNC};

/// A running prober, the session token its probes carry, and the (domain, address) pairs it
/// probes.
pub struct Probing {
    pub prober: Prober,
    pub token: String,
    targets: Vec<(String, String)>,
}

fn targets_of(domains: &[Domain]) -> Vec<(String, String)> {
    domains
        .iter()
        .map(|d| (d.name.clone(), d.address.clone()))
        .collect()
}

fn start(
    inv: &Inventory,
    artifacts: &[Artifact],
    targets: Vec<(String, String)>,
    token: String,
) -> anyhow::Result<Probing> {
    let timesync = &artifacts
        .iter()
        .find(|a| a.name == TIMESYNC)
        .expect("loaded")
        .path;
    let t = &inv.session.timesync;
    let prober = Prober::start(timesync, &targets, &token, t.rate_hz, t.port)?;
    Ok(Probing {
        prober,
        token,
        targets,
    })
}

/// Whether probing `current` serves a session that needs `wanted`: every wanted domain probed at
/// its address. (Extra targets, the domains of hosts that failed since, only go unanswered.)
fn covers(current: &[(String, String)], wanted: &[(String, String)]) -> bool {
    wanted.iter().all(|t| current.contains(t))
}

impl Probing {
    /// Starts probing the clock domains of `hosts` (the connected ones), with a fresh token.
    pub fn start(
        inv: &Inventory,
        artifacts: &[Artifact],
        hosts: &[String],
    ) -> anyhow::Result<Probing> {
        let targets = targets_of(&session::domains(inv, hosts));
        start(inv, artifacts, targets, session::new_token())
    }

    /// The prober for the session's `domains` (those of the hosts still healthy after facts and
    /// pushes). A domain is named by its first healthy host, so when a host failed, its
    /// domain's address may now be another host's: then the prober is started again towards
    /// the right addresses, with the same token.
    pub async fn towards(
        self,
        inv: &Inventory,
        artifacts: &[Artifact],
        domains: &[Domain],
    ) -> anyhow::Result<Probing> {
        let wanted = targets_of(domains);
        if covers(&self.targets, &wanted) {
            return Ok(self);
        }
        let Probing { prober, token, .. } = self;
        let _ = prober.stop().await;
        start(inv, artifacts, wanted, token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn domain(name: &str, address: &str) -> Domain {
        Domain {
            name: name.into(),
            reflector: name.into(),
            address: address.into(),
            hosts: vec![name.into()],
        }
    }

    #[test]
    fn the_early_prober_serves_the_session_unless_a_domain_moved_to_another_address() {
        let connected = targets_of(&[domain("a", "10.0.0.1"), domain("b", "10.0.0.2")]);
        // Every host healthy, or one whole domain failed: the early prober serves.
        assert!(covers(&connected, &connected));
        assert!(covers(&connected, &targets_of(&[domain("b", "10.0.0.2")])));
        // Domain a is now named by another of its hosts (its first one failed): start again.
        assert!(!covers(
            &connected,
            &targets_of(&[domain("a", "10.0.0.9"), domain("b", "10.0.0.2")])
        ));
    }
}

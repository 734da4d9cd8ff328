//! `latplan teardown INVENTORY`: stops every process of ours, detaches every program of ours and
//! removes every file we put on every host, and says what it removed. Safe to run twice, and after
//! crashes (observers killed with -9, the manager killed mid-session).
use std::path::PathBuf;
use std::sync::Arc;

use futures::future::join_all;
use tokio::sync::Semaphore;

use super::inventory::load;
use super::{Command, ConnectArgs, Global, Outcome, print_out};
use crate::executor::teardown::teardown_host;
use crate::executor::{Outcome as HostOutcome, Recap};
use crate::inventory::Kind;
use crate::session;
use crate::transport::Pool;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Inventory directory (hosts.yaml, group_vars/, host_vars/) or file.
    inventory: PathBuf,
    #[command(flatten)]
    connect: ConnectArgs,
}

impl Command for Args {
    fn run(self, _global: &Global) -> anyhow::Result<Outcome> {
        let inv = load(&self.inventory)?;
        let (opts, control_dir) = self.connect.options()?;
        let mut recap = Recap::new(inv.order.iter().cloned());
        let (inv_ref, opts_ref, recap_now) = (&inv, &opts, &mut recap);
        super::block_on_hosts(|_| async move {
            let (inv, opts, recap) = (inv_ref, opts_ref, recap_now);
            let kernels = session::kernel_host_names(inv);
            let pool = Pool::connect(inv, &kernels, opts, &|_h: &str| {}).await;
            for (h, e) in &pool.failed {
                recap.set(h, HostOutcome::Unreachable(e.to_string()));
            }
            let sem = Arc::new(Semaphore::new(opts.forks.max(1)));
            let jobs = pool.connected.iter().map(|(name, t)| {
                let sem = sem.clone();
                let host = &inv.hosts[name];
                async move {
                    let _p = sem.acquire().await.expect("never closed");
                    (name.clone(), teardown_host(t.as_ref(), host).await)
                }
            });
            for (name, r) in join_all(jobs).await {
                match r {
                    Ok(removed) if removed.is_empty() => {
                        eprintln!("{name}: nothing of ours left");
                        recap.set(&name, HostOutcome::Ok);
                    }
                    Ok(removed) => {
                        eprintln!("{name}: removed {}", removed.join(", "));
                        recap.set(&name, HostOutcome::Changed(removed));
                    }
                    Err(e) => recap.set(&name, HostOutcome::Failed(format!("{e:#}"))),
                }
            }
            pool.close().await;
            Ok(())
        })?;
        control_dir.close();
        for c in inv.hosts().filter(|h| h.kind == Kind::Container) {
            let parent = c.parent.clone().unwrap_or_default();
            recap.set(
                &c.name,
                HostOutcome::Skipped(format!("cleaned with {parent}")),
            );
        }
        print_out(&recap.render())?;
        Ok(if recap.failed_hosts().is_empty() {
            Outcome::Success
        } else {
            Outcome::Failed
        })
    }
}

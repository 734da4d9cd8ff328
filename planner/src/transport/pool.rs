//! One connection per host, opened with bounded fan-out and reused for every step.
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;

use super::{ContainerTransport, LocalTransport, SshTransport, Transport, TransportError};
use crate::inventory::{Connection, Host, Inventory, Kind};

#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// At most this many connections are being set up at once (`--forks`).
    pub forks: usize,
    /// Add unknown host keys to known_hosts (`--accept-new-host-keys`); changed keys still fail.
    pub accept_new_host_keys: bool,
    /// Where the ControlMaster sockets go (a private directory).
    pub control_dir: PathBuf,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            forks: 16,
            accept_new_host_keys: false,
            control_dir: std::env::temp_dir(),
        }
    }
}

/// Open connections, and the hosts that could not be reached (with why).
#[derive(Default)]
pub struct Pool {
    pub connected: BTreeMap<String, Arc<dyn Transport>>,
    pub failed: BTreeMap<String, TransportError>,
}

/// Connects to one kernel host (metal or vm).
pub async fn connect_host(
    host: &Host,
    opts: &ConnectOptions,
) -> Result<Arc<dyn Transport>, TransportError> {
    match host.connection {
        Connection::Local => {
            let t = Duration::from_secs(crate::inventory::DEFAULT_COMMAND_TIMEOUT);
            Ok(Arc::new(LocalTransport::new(host.name.clone(), t)))
        }
        Connection::Ssh => Ok(Arc::new(
            SshTransport::connect(host, opts.accept_new_host_keys, &opts.control_dir).await?,
        )),
    }
}

impl Pool {
    /// Connects to `hosts` (names from `inv`), at most `opts.forks` at a time. Containers get a
    /// transport through their parent (connecting the parent if it is not in the list).
    /// `on_done` is called once per host as it finishes, for progress display.
    pub async fn connect(
        inv: &Inventory,
        hosts: &[String],
        opts: &ConnectOptions,
        on_done: &(dyn Fn(&str) + Sync),
    ) -> Pool {
        let mut kernels: Vec<&Host> = Vec::new();
        for name in hosts {
            let mut h = &inv.hosts[name];
            while h.kind == Kind::Container {
                h = &inv.hosts[h
                    .parent
                    .as_ref()
                    .expect("validated: containers have parents")];
            }
            if !kernels.iter().any(|k| k.name == h.name) {
                kernels.push(h);
            }
        }
        let sem = Arc::new(Semaphore::new(opts.forks.max(1)));
        let tasks = kernels.into_iter().map(|h| {
            let sem = sem.clone();
            async move {
                let _permit = sem.acquire().await.expect("semaphore is never closed");
                let r = connect_host(h, opts).await;
                if hosts.contains(&h.name) {
                    on_done(&h.name);
                }
                (h.name.clone(), r)
            }
        });
        let mut pool = Pool::default();
        for (name, r) in futures::future::join_all(tasks).await {
            match r {
                Ok(t) => {
                    pool.connected.insert(name, t);
                }
                Err(e) => {
                    pool.failed.insert(name, e);
                }
            }
        }
        for name in hosts {
            let h = &inv.hosts[name];
            if h.kind != Kind::Container {
                continue;
            }
            let parent = h.parent.as_ref().expect("validated");
            match pool.connected.get(parent) {
                Some(p) => {
                    let t = ContainerTransport::new(name.clone(), h.netns.clone(), p.clone());
                    pool.connected.insert(name.clone(), Arc::new(t));
                }
                None => {
                    let reason = format!("its parent {parent} is unreachable");
                    pool.failed.insert(
                        name.clone(),
                        TransportError::Unreachable {
                            host: name.clone(),
                            reason,
                        },
                    );
                }
            }
            on_done(name);
        }
        // Parents connected only for their containers are kept: closing is the caller's job.
        pool
    }

    /// How many connections reuse a master kept by an earlier command (`ssh.control_persist`).
    pub fn reused(&self) -> usize {
        self.connected.values().filter(|t| t.reused()).count()
    }

    /// Closes every connection (errors are ignored: we are done with the hosts).
    pub async fn close(&self) {
        let closes = self.connected.values().map(|t| t.close());
        futures::future::join_all(closes).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::load_str;

    #[tokio::test]
    async fn local_hosts_and_their_containers_connect_and_run() {
        let inv = load_str(
            "t.yaml",
            "all:\n  hosts:\n    here: {connection: local}\n    ct: {kind: container, parent: here, host_interface: lo}\n    far: {address: 127.0.0.1, ssh: {port: 1, connect_timeout: 2}}\n",
        )
        .unwrap();
        let names: Vec<String> = inv.order.clone();
        let done = std::sync::Mutex::new(Vec::new());
        let opts = ConnectOptions {
            control_dir: tempfile::tempdir().unwrap().keep(),
            ..Default::default()
        };
        let pool = Pool::connect(&inv, &names, &opts, &|h| {
            done.lock().unwrap().push(h.to_string())
        })
        .await;
        assert_eq!(pool.connected.keys().collect::<Vec<_>>(), ["ct", "here"]);
        let far = &pool.failed["far"];
        assert!(far.is_unreachable(), "{far}");
        assert!(far.to_string().contains("far"), "{far}");
        let out = pool.connected["ct"]
            .exec(crate::transport::Cmd::new("echo from-ct"))
            .await
            .unwrap();
        assert_eq!(out.stdout_str(), "from-ct\n");
        assert_eq!(
            done.lock().unwrap().len(),
            3,
            "progress is reported for every host"
        );
        pool.close().await;
        let _ = std::fs::remove_dir_all(&opts.control_dir);
    }
}

//! A container is reached through its parent: the same connection, commands entered into the
//! container's network namespace. Files are the parent's (containers here share its filesystem
//! view for our purposes: the parent's observer is what runs).
use std::sync::Arc;

use async_trait::async_trait;

use super::shell::quote;
use super::{Cmd, Output, Spawned, Transport, TransportError};

pub struct ContainerTransport {
    host: String,
    netns: Option<String>,
    parent: Arc<dyn Transport>,
}

impl ContainerTransport {
    pub fn new(host: impl Into<String>, netns: Option<String>, parent: Arc<dyn Transport>) -> Self {
        ContainerTransport {
            host: host.into(),
            netns,
            parent,
        }
    }
}

impl ContainerTransport {
    /// The command as the parent runs it: inside the container's network namespace.
    fn enter(&self, cmd: Cmd) -> Cmd {
        match &self.netns {
            None => cmd,
            Some(ns) => Cmd {
                // Entering a namespace needs root on the parent.
                script: format!(
                    "exec ip netns exec {} sh -c {}",
                    quote(ns),
                    quote(&cmd.script)
                ),
                become_root: true,
                ..cmd
            },
        }
    }
}

#[async_trait]
impl Transport for ContainerTransport {
    fn host(&self) -> &str {
        &self.host
    }

    async fn exec(&self, cmd: Cmd) -> Result<Output, TransportError> {
        self.parent.exec(self.enter(cmd)).await
    }

    async fn spawn(&self, cmd: Cmd) -> Result<Spawned, TransportError> {
        self.parent.spawn(self.enter(cmd)).await
    }

    async fn close(&self) -> Result<(), TransportError> {
        // The parent's connection belongs to the parent.
        Ok(())
    }
}

//! A container is reached through its parent: the same connection, commands entered into the
//! container's network namespace. Files are the parent's (containers here share its filesystem
//! view for our purposes: the parent's observer is what runs).
use std::sync::Arc;

use async_trait::async_trait;

use super::shell::quote;
use super::{Cmd, Output, Transport, TransportError};

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

#[async_trait]
impl Transport for ContainerTransport {
    fn host(&self) -> &str {
        &self.host
    }

    async fn exec(&self, cmd: Cmd) -> Result<Output, TransportError> {
        match &self.netns {
            None => self.parent.exec(cmd).await,
            Some(ns) => {
                // Entering a namespace needs root on the parent.
                let script = format!(
                    "exec ip netns exec {} sh -c {}",
                    quote(ns),
                    quote(&cmd.script)
                );
                self.parent
                    .exec(Cmd {
                        script,
                        become_root: true,
                        ..cmd
                    })
                    .await
            }
        }
    }

    async fn close(&self) -> Result<(), TransportError> {
        // The parent's connection belongs to the parent.
        Ok(())
    }
}

//! The manager itself, as a host: commands are local `sh` processes.
use std::process::Stdio;
use std::time::Duration;

use async_trait::async_trait;
use tokio::io::AsyncWriteExt;

use super::shell::with_become;
use super::{Cmd, Output, Spawned, Transport, TransportError, describe};

pub struct LocalTransport {
    host: String,
    command_timeout: Duration,
}

impl LocalTransport {
    pub fn new(host: impl Into<String>, command_timeout: Duration) -> Self {
        LocalTransport {
            host: host.into(),
            command_timeout,
        }
    }
}

#[async_trait]
impl Transport for LocalTransport {
    fn host(&self) -> &str {
        &self.host
    }

    async fn exec(&self, cmd: Cmd) -> Result<Output, TransportError> {
        let what = describe(&cmd.script);
        let err = |reason: String| TransportError::Exec {
            host: self.host.clone(),
            what: what.clone(),
            reason,
        };
        let mut c = tokio::process::Command::new("sh");
        c.arg("-c").arg(with_become(&cmd.script, cmd.become_root));
        c.stdin(if cmd.stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
        c.stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let limit = cmd.timeout.unwrap_or(self.command_timeout);
        let run = async {
            let mut child = c.spawn().map_err(|e| err(e.to_string()))?;
            let stdin = child.stdin.take();
            let feed = async {
                if let (Some(mut si), Some(data)) = (stdin, cmd.stdin.as_deref()) {
                    let _ = si.write_all(data).await;
                    let _ = si.shutdown().await;
                }
            };
            let (_, out) = tokio::join!(feed, child.wait_with_output());
            let out = out.map_err(|e| err(e.to_string()))?;
            Ok(Output {
                status: out.status.code(),
                stdout: out.stdout,
                stderr: out.stderr,
            })
        };
        match tokio::time::timeout(limit, run).await {
            Ok(r) => r,
            Err(_) => Err(TransportError::Timeout {
                host: self.host.clone(),
                what,
                secs: limit.as_secs(),
            }),
        }
    }

    async fn spawn(&self, cmd: Cmd) -> Result<Spawned, TransportError> {
        let what = describe(&cmd.script);
        let host = self.host.clone();
        let err = move |reason: String| TransportError::Exec {
            host: host.clone(),
            what: what.clone(),
            reason,
        };
        let mut c = tokio::process::Command::new("sh");
        c.arg("-c").arg(with_become(&cmd.script, cmd.become_root));
        c.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = c.spawn().map_err(|e| err(e.to_string()))?;
        let (Some(stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            return Err(err("the command's pipes were not opened".into()));
        };
        let exit = Box::pin(async move {
            child
                .wait()
                .await
                .map(|s| s.code())
                .map_err(|e| err(e.to_string()))
        });
        Ok(Spawned {
            stdin: Box::pin(stdin),
            stdout: Box::pin(stdout),
            stderr: Box::pin(stderr),
            exit,
        })
    }

    async fn close(&self) -> Result<(), TransportError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::shell::sha256_hex;

    fn tmpdir(tag: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("latplan-local-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[tokio::test]
    async fn exec_put_get_round_trip() {
        let t = LocalTransport::new("here", Duration::from_secs(10));
        let out = t
            .exec(Cmd::new("echo hi; echo oops >&2; exit 3"))
            .await
            .unwrap();
        assert_eq!(out.status, Some(3));
        assert_eq!(out.stdout_str(), "hi\n");
        assert_eq!(out.stderr_str(), "oops");

        let dir = tmpdir("put");
        let dest = dir.join("sub/file.bin");
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        t.put(&data, &dest, 0o750, false).await.unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&dest).unwrap().permissions().mode() & 0o777,
            0o750
        );
        assert_eq!(t.get(&dest, false).await.unwrap(), data);
        let leftovers: Vec<_> = std::fs::read_dir(dest.parent().unwrap()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temporary file is left behind");
        assert_eq!(
            sha256_hex(&std::fs::read(&dest).unwrap()),
            sha256_hex(&data)
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn spawned_processes_stream_both_ways_and_stop_when_stdin_closes() {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
        let t = LocalTransport::new("here", Duration::from_secs(10));
        let p = t
            .spawn(Cmd::new("while read l; do echo \"got $l\"; done; exit 4"))
            .await
            .unwrap();
        let (mut stdin, mut lines) = (p.stdin, BufReader::new(p.stdout).lines());
        for word in ["first", "second"] {
            stdin
                .write_all(format!("{word}\n").as_bytes())
                .await
                .unwrap();
            stdin.flush().await.unwrap();
            assert_eq!(
                lines.next_line().await.unwrap(),
                Some(format!("got {word}"))
            );
        }
        drop(stdin);
        assert_eq!(p.exit.await.unwrap(), Some(4));
    }

    #[tokio::test]
    async fn timeouts_are_reported() {
        let t = LocalTransport::new("here", Duration::from_millis(200));
        let e = t.exec(Cmd::new("sleep 5")).await.unwrap_err();
        assert!(matches!(e, TransportError::Timeout { .. }), "{e}");
    }

    #[tokio::test]
    async fn get_of_a_missing_file_fails_with_the_reason() {
        let t = LocalTransport::new("here", Duration::from_secs(5));
        let e = t
            .get(std::path::Path::new("/nonexistent/x"), false)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("No such file"), "{e}");
    }
}

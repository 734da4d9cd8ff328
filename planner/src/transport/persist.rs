//! SSH masters kept between latplan commands (`ssh.control_persist`), as Ansible keeps its
//! own (ControlPersist): `check`, `plan`, `apply` and `teardown` then reuse the key exchange of
//! the command before them instead of making their own.
//!
//! Such a master is not the command's: it is started with `ControlPersist=Ns`, so ssh itself ends
//! it once it has been idle that long (and ServerAliveInterval ends it when its host is gone).
//! Its socket lives in `<state dir>/ssh/<key>/`, where the key names what the connection is
//! (destination, user, port, key file, known_hosts, config): a later command with the same
//! settings finds it there. Whoever can open such a socket can run commands on the host as the
//! login user, so every directory on the way is created 0700 and one that is not ours and private
//! is refused, never used.
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use openssh::Session;
use sha2::{Digest, Sha256};

use crate::inventory::SshSettings;

/// ssh binds its master socket at `<ctl>.<16 random characters>` before renaming it, and a
/// socket's path holds at most 107 bytes; the openssh crate puts `ctl` at
/// `<dir>/.ssh-connectionXXXXXX/master` (29 bytes below `dir`).
const MAX_DIR_LEN: usize = 107 - 17 - 29;

/// A master directory with no live socket is removed only once it is older than this, so a
/// master another latplan is still starting there (no socket yet) is left alone.
const STALE_AFTER: Duration = Duration::from_secs(120);

/// The directory where the masters for this connection are kept, created private if missing.
pub fn master_dir(state_root: &Path, dest: &str, ssh: &SshSettings) -> Result<PathBuf, String> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(state_root)
        .map_err(|e| format!("cannot create {}: {e}", state_root.display()))?;
    let root = state_root.join("ssh");
    let dir = root.join(connection_key(dest, ssh));
    for d in [&root, &dir] {
        private_dir(d)?;
    }
    let len = dir.as_os_str().len();
    if len > MAX_DIR_LEN {
        return Err(format!(
            "ssh.control_persist keeps its sockets in {} ({len} bytes), too long for a socket \
             path (at most {MAX_DIR_LEN}); set LATPLAN_STATE_DIR to a shorter directory",
            dir.display()
        ));
    }
    Ok(dir)
}

/// A name for everything that decides where and as whom a connection goes.
fn connection_key(dest: &str, ssh: &SshSettings) -> String {
    let mut h = Sha256::new();
    let path = |p: &Option<PathBuf>| p.as_ref().map(|p| p.display().to_string());
    for part in [
        Some(dest.to_string()),
        ssh.user.clone(),
        ssh.port.map(|p| p.to_string()),
        path(&ssh.identity_file),
        path(&ssh.known_hosts_file),
        path(&ssh.config_file),
    ] {
        // A tag per field, so that (user "a", no port) and (no user, port "a") differ.
        match part {
            Some(s) => {
                h.update(b"1");
                h.update(s.len().to_le_bytes());
                h.update(s.as_bytes());
            }
            None => h.update(b"0"),
        }
    }
    hex::encode(&h.finalize()[..8])
}

/// Creates `dir` 0700 if missing; refuses one that is a symlink, not ours, or open to others.
fn private_dir(dir: &Path) -> Result<(), String> {
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => return Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(format!("cannot create {}: {e}", dir.display())),
    }
    let m = std::fs::symlink_metadata(dir)
        .map_err(|e| format!("cannot inspect {}: {e}", dir.display()))?;
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    if !m.is_dir() || m.uid() != euid || m.permissions().mode() & 0o077 != 0 {
        return Err(format!(
            "{} must be a directory of uid {euid}, closed to others (0700), to hold SSH control \
             sockets; it is not, so it is not used",
            dir.display()
        ));
    }
    Ok(())
}

/// A live master kept in `dir`, if there is one. Directories of masters that are gone (their
/// socket removed by ssh at exit, or no longer answering) are removed on the way.
///
/// A master is taken only once a command through it (`true`) came back within
/// `answer_within`: one round trip. The mux protocol's alive check would not do, as a master
/// answers it by itself even when its host is gone (ServerAlive takes up to 45 s to notice),
/// and the first step would then hang until its command timeout; a socket nobody listens on
/// fails the command at once.
pub async fn reuse(dir: &Path, answer_within: Duration) -> Option<Session> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    // The newest first: the one most likely to be alive.
    entries.sort_by_key(|p| std::cmp::Reverse(modified(p)));
    for sub in entries {
        let ctl = sub.join("master");
        if ctl.exists() {
            let log = sub.join("log");
            let session = Session::resume_mux(ctl.into(), Some(log.into()));
            if host_answers(&session, answer_within).await {
                return Some(session);
            }
            // A socket nobody answers on, or a master whose host does not: gone or hung, either
            // way not one to use again (ServerAlive or ControlPersist ends it).
            let _ = std::fs::remove_dir_all(&sub);
        } else if modified(&sub).elapsed().unwrap_or_default() > STALE_AFTER {
            let _ = std::fs::remove_dir_all(&sub);
        }
    }
    None
}

async fn host_answers(session: &Session, within: Duration) -> bool {
    let mut true_cmd = session.raw_command("true");
    true_cmd
        .stdin(openssh::Stdio::null())
        .stdout(openssh::Stdio::null())
        .stderr(openssh::Stdio::null());
    matches!(
        tokio::time::timeout(within, true_cmd.status()).await,
        Ok(Ok(status)) if status.success()
    )
}

fn modified(p: &Path) -> SystemTime {
    std::fs::metadata(p)
        .and_then(|m| m.modified())
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> SshSettings {
        SshSettings {
            user: Some("root".into()),
            port: None,
            identity_file: Some("/k".into()),
            known_hosts_file: None,
            config_alias: None,
            config_file: None,
            accept_new_host_keys: false,
            connect_timeout: 10,
            command_timeout: 120,
            control_persist: 60,
        }
    }

    #[test]
    fn the_key_changes_with_anything_that_changes_the_connection() {
        let base = connection_key("10.0.0.1", &settings());
        assert_eq!(base.len(), 16);
        assert_eq!(base, connection_key("10.0.0.1", &settings()));
        let mut other_user = settings();
        other_user.user = Some("admin".into());
        let mut other_port = settings();
        other_port.port = Some(2222);
        let mut other_key = settings();
        other_key.identity_file = Some("/k2".into());
        let mut timeouts = settings();
        timeouts.command_timeout = 5;
        for (what, key) in [
            ("destination", connection_key("10.0.0.2", &settings())),
            ("user", connection_key("10.0.0.1", &other_user)),
            ("port", connection_key("10.0.0.1", &other_port)),
            ("identity file", connection_key("10.0.0.1", &other_key)),
        ] {
            assert_ne!(key, base, "a different {what} is a different connection");
        }
        assert_eq!(
            connection_key("10.0.0.1", &timeouts),
            base,
            "timeouts do not change where a connection goes"
        );
    }

    #[test]
    fn master_dirs_are_private_and_a_shared_one_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let state = tmp.path().join("state");
        let dir = master_dir(&state, "10.0.0.1", &settings()).unwrap();
        for d in [&state.join("ssh"), &dir] {
            let mode = std::fs::metadata(d).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o700, "{}", d.display());
        }
        std::fs::set_permissions(state.join("ssh"), std::fs::Permissions::from_mode(0o755))
            .unwrap();
        let e = master_dir(&state, "10.0.0.1", &settings()).unwrap_err();
        assert!(e.contains("closed to others"), "{e}");
    }

    #[test]
    fn a_state_dir_too_long_for_a_socket_path_is_an_error_that_says_so() {
        let tmp = tempfile::tempdir().unwrap();
        let state = tmp.path().join("s".repeat(60));
        let e = master_dir(&state, "10.0.0.1", &settings()).unwrap_err();
        assert!(e.contains("LATPLAN_STATE_DIR"), "{e}");
    }

    #[tokio::test]
    async fn leftovers_of_masters_that_are_gone_are_removed_and_nothing_is_reused() {
        let tmp = tempfile::tempdir().unwrap();
        // A socket path with nothing listening: a master that died without removing it.
        let dead = tmp.path().join(".ssh-connectionAAAAAA");
        std::fs::create_dir(&dead).unwrap();
        drop(std::os::unix::net::UnixListener::bind(dead.join("master")).unwrap());
        // A directory a master is still being started in (no socket yet, just made).
        let starting = tmp.path().join(".ssh-connectionBBBBBB");
        std::fs::create_dir(&starting).unwrap();
        assert!(reuse(tmp.path(), Duration::from_secs(1)).await.is_none());
        assert!(!dead.exists(), "the dead master's directory is removed");
        assert!(starting.exists(), "a master being started is left alone");
    }
}

//! Local state of detached sessions (`apply --detach`, `status`, `stop`): one private directory
//! per session under [`root`], holding the background collector's PID, its live status (JSON,
//! rewritten every few seconds), its log and, once it ended, its report and recap.
use std::collections::BTreeMap;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

/// Overrides where detached sessions keep their state.
pub const STATE_DIR_ENV: &str = "LATPLAN_STATE_DIR";

/// `$LATPLAN_STATE_DIR`, else `$XDG_STATE_HOME/latplan`, else `~/.local/state/latplan`.
pub fn root() -> PathBuf {
    if let Some(d) = std::env::var_os(STATE_DIR_ENV) {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_STATE_HOME") {
        return PathBuf::from(d).join("latplan");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    PathBuf::from(home).join(".local/state/latplan")
}

/// The live status of a detached session, as its collector last wrote it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Status {
    pub session: String,
    /// `starting`, `running`, `stopping`, `completed`, `interrupted` or `failed`.
    pub state: String,
    pub updated_unix_ms: u64,
    pub records: u64,
    pub records_per_sec: f64,
    pub drops: u64,
    pub missing: u64,
    /// Worst clock-sync error bound over the domains, µs.
    pub sync_error_us: f64,
    pub hosts: BTreeMap<String, HostStatus>,
    /// Why it failed, when it did.
    #[serde(default)]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct HostStatus {
    /// `running`, `lost` (heartbeat expired) or `failed`.
    pub state: String,
    pub records: u64,
    pub records_per_sec: f64,
    pub drops: u64,
    pub missing: u64,
}

/// What `latplan stop` needs to finish a session whose background collector died: written by
/// the collector once its observers run. It holds no secret: the store's and the bus' passwords
/// come from the environment (or the inventory's secret files) of whoever runs `stop`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Resume {
    /// The inventory, as an absolute path.
    pub inventory: PathBuf,
    /// Store and bus URLs (without credentials).
    pub store: String,
    pub bus: String,
    /// The hosts whose observers were started.
    pub hosts: Vec<String>,
    /// The per-host outcome once the observers ran.
    pub recap: crate::executor::Recap,
    /// `--html FILE`, if given.
    #[serde(default)]
    pub html: Option<PathBuf>,
}

/// One detached session's directory.
#[derive(Debug, Clone)]
pub struct SessionDir {
    name: String,
    dir: PathBuf,
}

fn private_dir(p: &Path) -> anyhow::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(p)
        .with_context(|| format!("failed to create {}", p.display()))
}

impl SessionDir {
    /// Creates the directory of a new session (refused while one of that name runs).
    pub fn create(name: &str) -> anyhow::Result<SessionDir> {
        crate::collector::redis::check_name("session", name)?;
        let d = SessionDir {
            name: name.to_string(),
            dir: root().join("sessions").join(name),
        };
        if d.alive() {
            bail!("session {name} is already running (pid {:?})", d.pid());
        }
        let _ = std::fs::remove_dir_all(&d.dir);
        private_dir(&d.dir)?;
        Ok(d)
    }

    pub fn open(name: &str) -> anyhow::Result<SessionDir> {
        let dir = root().join("sessions").join(name);
        if !dir.is_dir() {
            bail!(
                "no detached session {name} under {} (see `latplan status`)",
                root().display()
            );
        }
        Ok(SessionDir {
            name: name.to_string(),
            dir,
        })
    }

    /// Every detached session known here, by name.
    pub fn list() -> anyhow::Result<Vec<SessionDir>> {
        let base = root().join("sessions");
        let Ok(rd) = std::fs::read_dir(&base) else {
            return Ok(Vec::new());
        };
        let mut out: Vec<SessionDir> = rd
            .filter_map(Result::ok)
            .filter(|e| e.path().is_dir())
            .map(|e| SessionDir {
                name: e.file_name().to_string_lossy().into_owned(),
                dir: e.path(),
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn path(&self) -> &Path {
        &self.dir
    }
    pub fn log(&self) -> PathBuf {
        self.dir.join("latplan.log")
    }
    pub fn report(&self) -> PathBuf {
        self.dir.join("report.txt")
    }
    fn pid_file(&self) -> PathBuf {
        self.dir.join("collector.pid")
    }
    fn status_file(&self) -> PathBuf {
        self.dir.join("status.json")
    }
    fn resume_file(&self) -> PathBuf {
        self.dir.join("resume.json")
    }

    pub fn write_resume(&self, r: &Resume) -> anyhow::Result<()> {
        let json = serde_json::to_vec_pretty(r).expect("resume record serializes");
        self.write_atomic(&self.resume_file(), &json)
    }

    pub fn read_resume(&self) -> anyhow::Result<Resume> {
        let p = self.resume_file();
        let text = std::fs::read_to_string(&p)
            .with_context(|| format!("failed to read {}", p.display()))?;
        serde_json::from_str(&text).with_context(|| format!("failed to parse {}", p.display()))
    }

    /// A file of this session, created 0600 (the log and report name hosts and addresses).
    pub fn create_file(&self, p: &Path) -> anyhow::Result<std::fs::File> {
        std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .mode(0o600)
            .open(p)
            .with_context(|| format!("failed to create {}", p.display()))
    }

    pub fn set_pid(&self, pid: u32) -> anyhow::Result<()> {
        self.write_atomic(&self.pid_file(), format!("{pid}\n").as_bytes())
    }

    pub fn pid(&self) -> Option<i32> {
        std::fs::read_to_string(self.pid_file())
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Whether the background collector still runs (its PID is alive and is a latplan).
    pub fn alive(&self) -> bool {
        self.pid().is_some_and(|p| {
            std::fs::read(format!("/proc/{p}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains("latplan"))
        })
    }

    pub fn write_status(&self, st: &Status) -> anyhow::Result<()> {
        let mut st = st.clone();
        st.updated_unix_ms = now_ms();
        let json = serde_json::to_vec_pretty(&st).expect("status serializes");
        self.write_atomic(&self.status_file(), &json)
    }

    pub fn read_status(&self) -> Option<Status> {
        let text = std::fs::read_to_string(self.status_file()).ok()?;
        serde_json::from_str(&text).ok()
    }

    fn write_atomic(&self, p: &Path, data: &[u8]) -> anyhow::Result<()> {
        use std::io::Write;
        let tmp = p.with_extension("tmp");
        let mut f = self.create_file(&tmp)?;
        f.write_all(data)
            .and_then(|()| f.sync_data())
            .and_then(|()| std::fs::rename(&tmp, p))
            .with_context(|| format!("failed to write {}", p.display()))
    }
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn session_dirs_are_private_and_status_round_trips() {
        let tmp = tempfile::tempdir().unwrap();
        // SAFETY: this is the only test of the crate that touches this variable.
        unsafe { std::env::set_var(STATE_DIR_ENV, tmp.path()) };
        let d = SessionDir::create("s-1").unwrap();
        let mode = std::fs::metadata(d.path()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        assert!(!d.alive());
        let st = Status {
            session: "s-1".into(),
            state: "running".into(),
            records: 5,
            ..Status::default()
        };
        d.write_status(&st).unwrap();
        let back = d.read_status().unwrap();
        assert_eq!((back.state.as_str(), back.records), ("running", 5));
        d.set_pid(std::process::id()).unwrap();
        assert_eq!(d.pid(), Some(std::process::id() as i32));
        assert_eq!(SessionDir::list().unwrap().len(), 1);
        assert!(SessionDir::create("bad name").is_err());
        assert!(SessionDir::open("other").is_err());
    }
}

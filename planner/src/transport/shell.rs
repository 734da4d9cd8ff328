//! Shell quoting and the small scripts shared by every transport.
use std::path::Path;

use sha2::{Digest, Sha256};

/// Quotes a string for POSIX sh (single quotes; `'` becomes `'\''`).
pub fn quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,@+%".contains(c))
    {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', r"'\''"))
}

pub fn quote_path(p: &Path) -> String {
    quote(&p.to_string_lossy())
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// Wraps a script so it runs as root through passwordless sudo when needed. `sudo -n` fails at
/// once instead of prompting: a password prompt would hang a batch run.
pub fn with_become(script: &str, become_root: bool) -> String {
    if become_root {
        format!(
            "if [ \"$(id -u)\" = 0 ]; then sh -c {q}; else sudo -n sh -c {q}; fi",
            q = quote(script)
        )
    } else {
        script.to_string()
    }
}

/// Receives a file on stdin: temp file beside the target, checksum, mode, rename.
/// A reader never sees a half-written file, and a failed transfer leaves the old one in place.
pub fn put_script(dest: &Path, mode: u32, sha256: &str) -> String {
    let dest = quote_path(dest);
    format!(
        r#"set -e
d=$(dirname -- {dest})
mkdir -p -- "$d"
t="$d/.latplan-put.$$"
trap 'rm -f -- "$t"' EXIT
cat > "$t"
got=$(sha256sum < "$t" | cut -d' ' -f1)
if [ "$got" != {sha256} ]; then echo "checksum mismatch after transfer: got $got" >&2; exit 1; fi
chmod {mode:o} "$t"
mv -f -- "$t" {dest}
trap - EXIT"#
    )
}

/// A POSIX sh function, `running PID`: whether the process runs, i.e. exists and is no zombie.
/// `kill -0` alone also succeeds on a zombie, and a daemonised observer's zombie lasts until
/// init reaps it: about 2 s on the lab machine, never where PID 1 does not reap (some containers).
pub const RUNNING_FN: &str =
    "running() { kill -0 \"$1\" 2>/dev/null && ! grep -qs '^[0-9]* (.*) Z' \"/proc/$1/stat\"; }\n";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(quote("eth0"), "eth0");
        assert_eq!(quote("a b"), "'a b'");
        assert_eq!(quote("it's"), r"'it'\''s'");
        assert_eq!(quote(""), "''");
    }

    #[test]
    fn quoted_strings_survive_sh() {
        for s in [
            "plain",
            "with space",
            "it's",
            "$(rm -rf /)",
            "a\"b",
            "back\\slash",
        ] {
            let out = std::process::Command::new("sh")
                .arg("-c")
                .arg(format!("printf %s {}", quote(s)))
                .output()
                .unwrap();
            assert_eq!(String::from_utf8(out.stdout).unwrap(), s);
        }
    }

    #[test]
    fn running_is_false_for_a_zombie_and_true_for_a_live_process() {
        let running = |pid: u32| {
            std::process::Command::new("sh")
                .arg("-c")
                .arg(format!("{RUNNING_FN}running {pid}"))
                .status()
                .unwrap()
                .success()
        };
        let mut live = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        // Exits at once and stays a zombie until waited for.
        let mut zombie = std::process::Command::new("true").spawn().unwrap();
        let zpid = zombie.id();
        let stat = || std::fs::read_to_string(format!("/proc/{zpid}/stat")).unwrap();
        while !stat().contains(") Z") {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(running(live.id()), "a sleeping process runs");
        assert!(!running(zpid), "a zombie does not run: {}", stat());
        live.kill().unwrap();
        live.wait().unwrap();
        zombie.wait().unwrap();
        assert!(!running(zpid), "a reaped process does not run");
    }
}

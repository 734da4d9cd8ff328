//! Teardown of one host: stop our processes, detach our programs, remove our directory.
use crate::inventory::Host;
use crate::session::Layout;
use crate::transport::{Cmd, Transport, check};

/// What teardown removed on a host (empty: nothing of ours was there).
pub async fn teardown_host(t: &dyn Transport, host: &Host) -> anyhow::Result<Vec<String>> {
    let layout = Layout::of(host);
    // The user's background steps first (their PID files are under install_dir), in the same
    // remote command: one round trip per host.
    let script = format!(
        "({})\n{}",
        super::steps::stop_script(&super::steps::steps_dir(&layout)),
        layout.teardown_command()
    );
    let out = t
        .exec(Cmd::new(script).become_root(host.become_root))
        .await?;
    let out = check(t.host(), "teardown", out)?;
    Ok(parse_removed(&out.stdout_str()))
}

fn parse_removed(stdout: &str) -> Vec<String> {
    stdout
        .lines()
        .filter_map(|l| l.strip_prefix("removed:"))
        .flat_map(|l| l.split_whitespace().map(str::to_string))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removed_items_are_listed() {
        assert_eq!(
            parse_removed("noise\nremoved: process:observer(12) dir:/var/lib/latplan\n"),
            vec!["process:observer(12)", "dir:/var/lib/latplan"]
        );
        assert!(parse_removed("removed:\n").is_empty());
    }
}

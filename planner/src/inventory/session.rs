//! Session settings: embedded defaults (conf/*.yaml, compiled into the binary) under the
//! inventory's `all` → `vars` → `session`, plus how secrets for the store and bus are found.
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use marked_yaml::{Node, Spanned};
use serde::Deserialize;

use super::error::Result;
use super::merge::merge_all;
use super::model::{Sampling, Session, Timesync};
use super::source::Sources;
use super::values::*;

/// The defaults shipped in the binary, so a bare inventory (hosts only) is enough.
pub const DEFAULTS: &[(&str, &str)] = &[
    (
        "conf/sampling.yaml",
        include_str!("../../../conf/sampling.yaml"),
    ),
    (
        "conf/timesync.yaml",
        include_str!("../../../conf/timesync.yaml"),
    ),
    ("conf/store.yaml", include_str!("../../../conf/store.yaml")),
    ("conf/bus.yaml", include_str!("../../../conf/bus.yaml")),
];

pub const STORE_PASSWORD_ENV: &str = "LATPLAN_STORE_PASSWORD";
pub const BUS_PASSWORD_ENV: &str = "LATPLAN_BUS_PASSWORD";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSession {
    sampling: RawSampling,
    timesync: RawTimesync,
    store: Spanned<String>,
    store_secret_file: Option<Spanned<String>>,
    bus: Spanned<String>,
    bus_secret_file: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSampling {
    size: Spanned<u64>,
    ports: Vec<Spanned<u16>>,
    interval: Spanned<String>,
    layers: Vec<Spanned<String>>,
    xdp_mode: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTimesync {
    rate_hz: Spanned<u32>,
    port: Spanned<u16>,
    sync_bound_us: Spanned<u64>,
    manager_interface: Option<Spanned<String>>,
}

/// Merges defaults and the inventory's `session` layers (lowest priority first) and validates.
pub fn resolve_session(src: &mut Sources, layers: Vec<Node>) -> Result<Session> {
    let mut all = Vec::new();
    for (name, text) in DEFAULTS {
        all.push(src.parse_str(PathBuf::from(format!("<embedded {name}>")), text)?);
    }
    all.extend(layers);
    let merged = merge_all(blank(), all);
    let src: &Sources = src;
    let top = [
        "sampling",
        "timesync",
        "store",
        "store_secret_file",
        "bus",
        "bus_secret_file",
    ];
    check_keys(src, &merged, &top, "session settings", |_| None)?;
    if let Some(m) = merged.as_mapping() {
        if let Some(n) = m.get_node("sampling") {
            check_keys(
                src,
                n,
                &["size", "ports", "interval", "layers", "xdp_mode"],
                "session.sampling",
                |_| None,
            )?;
        }
        if let Some(n) = m.get_node("timesync") {
            let keys = ["rate_hz", "port", "sync_bound_us", "manager_interface"];
            check_keys(src, n, &keys, "session.timesync", |_| None)?;
        }
    }
    let raw: RawSession = from_node(src, &merged, "session settings", |_| None)?;

    let size = *raw.sampling.size;
    if size == 0 || !size.is_power_of_two() || size > u64::from(u32::MAX / 2 + 1) {
        return Err(src
            .error(raw.sampling.size.span(), format!("sampling size {size} is not a power of two"))
            .hint("every host must sample the same bytes from sequence numbers alone: use 1024, 4096, 65536, …"));
    }
    if raw.sampling.ports.len() > latplan_common::kernel::MAX_PORTS {
        return Err(src
            .error(
                raw.sampling.ports[latplan_common::kernel::MAX_PORTS].span(),
                "too many sampling ports",
            )
            .hint(format!(
                "at most {} ports; leave the list empty to sample every port",
                latplan_common::kernel::MAX_PORTS
            )));
    }
    let interval_ns = parse_duration_ns(&raw.sampling.interval).ok_or_else(|| {
        src.error(
            raw.sampling.interval.span(),
            format!(
                "invalid sampling interval `{}`",
                raw.sampling.interval.as_str()
            ),
        )
        .hint("use 0 (no limit) or a number with a unit: 500us, 10ms, 1s")
    })?;
    let layers = check_layers(src, &raw.sampling.layers)?;
    let xdp_mode = raw.sampling.xdp_mode.as_str();
    if !XDP_MODES.contains(&xdp_mode) {
        return Err(src
            .error(
                raw.sampling.xdp_mode.span(),
                format!("unknown xdp_mode `{xdp_mode}`"),
            )
            .hint(format!("use one of: {}", XDP_MODES.join(", "))));
    }
    if *raw.timesync.rate_hz == 0 || *raw.timesync.rate_hz > 10_000 {
        return Err(src.error(
            raw.timesync.rate_hz.span(),
            "timesync rate_hz must be 1–10000",
        ));
    }
    if *raw.timesync.port == 0 {
        return Err(src.error(raw.timesync.port.span(), "timesync port 0 is not a port"));
    }
    let manager_interface = raw
        .timesync
        .manager_interface
        .as_ref()
        .map(|i| check_ifname(src, i))
        .transpose()?;

    check_url(
        src,
        &raw.store,
        &["sqlite", "mysql", "mariadb", "postgres", "postgresql"],
        "store",
    )?;
    if raw.bus.as_str() != "ssh" {
        check_url(src, &raw.bus, &["redis", "rediss"], "bus")?;
    }
    Ok(Session {
        sampling: Sampling {
            size: size as u32,
            ports: raw.sampling.ports.iter().map(|p| **p).collect(),
            interval_ns,
            layers,
            xdp_mode: xdp_mode.to_string(),
        },
        timesync: Timesync {
            rate_hz: *raw.timesync.rate_hz,
            port: *raw.timesync.port,
            sync_bound_us: *raw.timesync.sync_bound_us,
            manager_interface,
        },
        store: raw.store.as_str().to_string(),
        store_secret_file: raw
            .store_secret_file
            .as_ref()
            .map(|p| check_path(src, p, "store_secret_file"))
            .transpose()?,
        bus: raw.bus.as_str().to_string(),
        bus_secret_file: raw
            .bus_secret_file
            .as_ref()
            .map(|p| check_path(src, p, "bus_secret_file"))
            .transpose()?,
    })
}

/// How observers attach dev_recv (and reflectors their XDP program): the observer's `xdp_mode`.
const XDP_MODES: [&str; 4] = ["auto", "native", "generic", "tc"];

/// The layers to record, by name (DESIGN.md §6), each once, in the order written; empty = all.
fn check_layers(src: &Sources, names: &[Spanned<String>]) -> Result<Vec<String>> {
    use latplan_common::layer::Layer;
    let mut out: Vec<String> = Vec::new();
    for n in names {
        if Layer::from_name(n.as_str()).is_none() {
            let known: Vec<&str> = Layer::names().collect();
            return Err(src
                .error(n.span(), format!("unknown layer `{}`", n.as_str()))
                .hint(format!("use some of: {}", known.join(", "))));
        }
        if out.iter().any(|o| o == n.as_str()) {
            return Err(src.error(n.span(), format!("layer `{}` is listed twice", n.as_str())));
        }
        out.push(n.as_str().to_string());
    }
    Ok(out)
}

/// A URL with a known scheme and no password in it.
fn check_url(src: &Sources, v: &Spanned<String>, schemes: &[&str], what: &str) -> Result<()> {
    let s = v.as_str();
    let Some((scheme, rest)) = s.split_once("://") else {
        return Err(src
            .error(v.span(), format!("invalid {what} URL `{s}`"))
            .hint(format!(
                "write SCHEME://…, with SCHEME one of {}",
                schemes.join(", ")
            )));
    };
    if !schemes.contains(&scheme) {
        return Err(src
            .error(v.span(), format!("unsupported {what} scheme `{scheme}`"))
            .hint(format!("use one of {}", schemes.join(", "))));
    }
    let authority = rest.split('/').next().unwrap_or("");
    if let Some((userinfo, _)) = authority.rsplit_once('@')
        && userinfo.contains(':')
    {
        return Err(src
            .error(v.span(), format!("the {what} URL holds a password"))
            .hint(format!(
                "remove it from the URL; give it in {} or in a file readable only by you named by `{what}_secret_file`",
                if what == "store" { STORE_PASSWORD_ENV } else { BUS_PASSWORD_ENV }
            )));
    }
    Ok(())
}

impl Session {
    /// The store's password: from the environment, else from the 0600 secret file, else none.
    pub fn store_password(&self) -> anyhow::Result<Option<String>> {
        secret(STORE_PASSWORD_ENV, self.store_secret_file.as_deref())
    }

    /// The Redis bus's password, found the same way.
    pub fn bus_password(&self) -> anyhow::Result<Option<String>> {
        secret(BUS_PASSWORD_ENV, self.bus_secret_file.as_deref())
    }
}

fn secret(env: &str, file: Option<&Path>) -> anyhow::Result<Option<String>> {
    if let Ok(v) = std::env::var(env) {
        return Ok(Some(v));
    }
    let Some(file) = file else { return Ok(None) };
    read_secret_file(file).map(Some)
}

/// Reads a secret file, refusing one that others can read (as ssh does with keys).
pub fn read_secret_file(file: &Path) -> anyhow::Result<String> {
    let meta = std::fs::metadata(file)
        .with_context(|| format!("failed to read secret file {}", file.display()))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        bail!(
            "secret file {} has mode {mode:o}, readable by others; run `chmod 600 {}`",
            file.display(),
            file.display()
        );
    }
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("failed to read secret file {}", file.display()))?;
    Ok(text.trim_end_matches(['\n', '\r']).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_files_must_be_private() {
        let dir = std::env::temp_dir().join(format!("latplan-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("pw");
        std::fs::write(&f, "s3cret\n").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = read_secret_file(&f).unwrap_err().to_string();
        assert!(e.contains("chmod 600"), "{e}");
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read_secret_file(&f).unwrap(), "s3cret");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

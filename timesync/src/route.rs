//! Which local interface the kernel routes a target through.
use std::ffi::CStr;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};

use anyhow::{Context, bail};

/// The interface holding the source address the kernel picks for `target`.
///
/// Connecting a UDP socket asks the routing table without sending anything; the chosen source
/// address is then looked up among the interfaces' addresses. (With policy routing that sends a
/// source address out of another interface this guesses wrong: pass `--interface` then.)
pub fn interface_toward(target: Ipv4Addr) -> anyhow::Result<String> {
    let sock =
        UdpSocket::bind("0.0.0.0:0").context("failed to open a UDP socket for the route lookup")?;
    sock.connect(SocketAddrV4::new(target, 9))
        .with_context(|| format!("no route to {target}"))?;
    let local = match sock.local_addr()? {
        std::net::SocketAddr::V4(a) => *a.ip(),
        other => bail!("unexpected local address {other} toward {target}"),
    };
    interface_with_address(local)?
        .with_context(|| format!("no interface holds {local}, the source address toward {target}"))
}

/// The ports of a bridge (empty when `iface` is no bridge).
///
/// On a bridge the manager stamps on the ports rather than on the bridge device: the bridge only
/// takes generic XDP, and its local delivery adds a step to the reply's path that the probe's path
/// does not have (see docs/timesync.md for the measured difference).
pub fn bridge_ports(iface: &str) -> Vec<String> {
    let dir = std::path::Path::new("/sys/class/net")
        .join(iface)
        .join("brif");
    let mut ports: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    ports.sort();
    ports
}

/// The IPv4 addresses of one interface.
pub fn interface_addresses(iface: &str) -> anyhow::Result<Vec<Ipv4Addr>> {
    Ok(ipv4_addresses()?
        .into_iter()
        .filter(|(n, _)| n == iface)
        .map(|(_, a)| a)
        .collect())
}

fn interface_with_address(addr: Ipv4Addr) -> anyhow::Result<Option<String>> {
    Ok(ipv4_addresses()?
        .into_iter()
        .find(|(_, a)| *a == addr)
        .map(|(n, _)| n))
}

/// (interface, address) for every IPv4 address of this network namespace.
fn ipv4_addresses() -> anyhow::Result<Vec<(String, Ipv4Addr)>> {
    let mut ifap: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills a list we free below; we only read it in between.
    unsafe {
        if libc::getifaddrs(&mut ifap) != 0 {
            return Err(std::io::Error::last_os_error()).context("getifaddrs failed");
        }
        let mut found = Vec::new();
        let mut cur = ifap;
        while !cur.is_null() {
            let ifa = &*cur;
            if !ifa.ifa_addr.is_null() && (*ifa.ifa_addr).sa_family as i32 == libc::AF_INET {
                let sin = &*(ifa.ifa_addr as *const libc::sockaddr_in);
                let name = CStr::from_ptr(ifa.ifa_name).to_string_lossy().into_owned();
                found.push((name, Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr))));
            }
            cur = ifa.ifa_next;
        }
        libc::freeifaddrs(ifap);
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_interface_has_no_bridge_ports() {
        assert!(bridge_ports("lo").is_empty());
        assert!(bridge_ports("no-such-interface").is_empty());
    }

    #[test]
    fn loopback_has_its_address() {
        assert!(
            interface_addresses("lo")
                .unwrap()
                .contains(&Ipv4Addr::LOCALHOST)
        );
    }

    #[test]
    fn loopback_is_reached_through_lo() {
        assert_eq!(interface_toward(Ipv4Addr::LOCALHOST).unwrap(), "lo");
    }
}

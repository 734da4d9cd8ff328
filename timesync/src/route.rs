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

fn interface_with_address(addr: Ipv4Addr) -> anyhow::Result<Option<String>> {
    let mut ifap: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills a list we free below; we only read it in between.
    unsafe {
        if libc::getifaddrs(&mut ifap) != 0 {
            return Err(std::io::Error::last_os_error()).context("getifaddrs failed");
        }
        let mut found = None;
        let mut cur = ifap;
        while !cur.is_null() {
            let ifa = &*cur;
            if !ifa.ifa_addr.is_null() && (*ifa.ifa_addr).sa_family as i32 == libc::AF_INET {
                let sin = &*(ifa.ifa_addr as *const libc::sockaddr_in);
                if Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)) == addr {
                    found = Some(CStr::from_ptr(ifa.ifa_name).to_string_lossy().into_owned());
                    break;
                }
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
    fn loopback_is_reached_through_lo() {
        assert_eq!(interface_toward(Ipv4Addr::LOCALHOST).unwrap(), "lo");
    }
}

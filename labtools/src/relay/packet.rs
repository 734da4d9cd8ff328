//! AF_PACKET sockets bound to one interface, and turning off the offloads that would hand the
//! relay frames larger than the MTU or without checksums.
use anyhow::{Context, Result, bail};
use std::ffi::CString;
use std::io;
use std::mem::{size_of, zeroed};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// Frames larger than this are GSO super-frames, not wire frames.
pub const MAX_FRAME: usize = 65536;

fn cvt(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn setsockopt_int(
    fd: &OwnedFd,
    level: libc::c_int,
    name: libc::c_int,
    v: libc::c_int,
) -> io::Result<()> {
    // SAFETY: the option value is an int that lives across the call.
    cvt(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            &v as *const _ as *const libc::c_void,
            size_of::<libc::c_int>() as u32,
        )
    })
    .map(drop)
}

pub fn ifindex(ifname: &str) -> Result<i32> {
    let c = CString::new(ifname)?;
    // SAFETY: c is a valid NUL-terminated string.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if idx == 0 {
        bail!(
            "no interface {ifname:?} in this network namespace: {}",
            io::Error::last_os_error()
        );
    }
    Ok(idx as i32)
}

/// A raw packet socket that sees every frame arriving on one interface (not the ones it or anyone
/// sends out of it) and sends whole Ethernet frames out of it.
pub struct PacketSocket {
    fd: OwnedFd,
    pub ifname: String,
}

/// One received frame's metadata.
pub struct Received {
    pub len: usize,
    /// The kernel's receive time (CLOCK_REALTIME ns), if it gave one.
    pub stamp_real_ns: Option<u64>,
    /// True when the frame did not fit the buffer (it was larger than [`MAX_FRAME`]).
    pub truncated: bool,
}

impl PacketSocket {
    pub fn open(ifname: &str) -> Result<Self> {
        let ifindex = ifindex(ifname)?;
        let all = (libc::ETH_P_ALL as u16).to_be();
        // Protocol 0 until bound: an ETH_P_ALL socket would see every interface's frames meanwhile.
        // SAFETY: plain syscall; the fd is owned right after.
        let raw =
            cvt(unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) })
                .context("open AF_PACKET socket (needs root)")?;
        // SAFETY: raw is a fresh fd nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: zeroed sockaddr_ll is valid; fields set below.
        let mut sll: libc::sockaddr_ll = unsafe { zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = all;
        sll.sll_ifindex = ifindex;
        // SAFETY: sll is a sockaddr_ll of the size given.
        cvt(unsafe {
            libc::bind(
                fd.as_raw_fd(),
                &sll as *const _ as *const libc::sockaddr,
                size_of::<libc::sockaddr_ll>() as u32,
            )
        })
        .with_context(|| format!("bind packet socket to {ifname}"))?;
        // Without this the socket would also see the frames we send out of the interface.
        setsockopt_int(&fd, libc::SOL_PACKET, libc::PACKET_IGNORE_OUTGOING, 1)
            .context("PACKET_IGNORE_OUTGOING")?;
        setsockopt_int(&fd, libc::SOL_SOCKET, libc::SO_TIMESTAMPNS, 1).context("SO_TIMESTAMPNS")?;
        // Room for a few ms of line rate even when the relay thread is late.
        let _ = setsockopt_int(&fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, 8 << 20);
        let _ = setsockopt_int(&fd, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, 8 << 20);
        // Promiscuous: a real NIC would otherwise filter frames not addressed to it (veth does not).
        // SAFETY: zeroed packet_mreq is valid; fields set below.
        let mut mreq: libc::packet_mreq = unsafe { zeroed() };
        mreq.mr_ifindex = ifindex;
        mreq.mr_type = libc::PACKET_MR_PROMISC as u16;
        // SAFETY: mreq lives across the call.
        cvt(unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_ADD_MEMBERSHIP,
                &mreq as *const _ as *const libc::c_void,
                size_of::<libc::packet_mreq>() as u32,
            )
        })
        .context("PACKET_ADD_MEMBERSHIP promisc")?;
        Ok(PacketSocket {
            fd,
            ifname: ifname.to_string(),
        })
    }

    /// Blocks for the next incoming frame; copies it into `buf`.
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<Received> {
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr() as *mut libc::c_void,
            iov_len: buf.len(),
        };
        let mut cmsg_buf = [0u64; 16];
        // SAFETY: zeroed msghdr is valid; pointers set below outlive the call.
        let mut msg: libc::msghdr = unsafe { zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cmsg_buf.as_mut_ptr() as *mut libc::c_void;
        msg.msg_controllen = size_of::<[u64; 16]>() as _;
        let n = loop {
            // SAFETY: msg points at buffers we own.
            let n = unsafe { libc::recvmsg(self.fd.as_raw_fd(), &mut msg, libc::MSG_TRUNC) };
            if n >= 0 {
                break n as usize;
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        };
        let mut stamp = None;
        // SAFETY: walking the control messages the kernel wrote into msg.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(&msg);
            while !c.is_null() {
                if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_TIMESTAMPNS {
                    let ts = std::ptr::read_unaligned(libc::CMSG_DATA(c) as *const libc::timespec);
                    stamp = Some(ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64);
                }
                c = libc::CMSG_NXTHDR(&msg, c);
            }
        }
        Ok(Received {
            len: n.min(buf.len()),
            stamp_real_ns: stamp,
            truncated: n > buf.len(),
        })
    }

    /// Sends one whole Ethernet frame out of the bound interface.
    pub fn send(&self, frame: &[u8]) -> io::Result<()> {
        // SAFETY: frame is a valid buffer; a bound packet socket needs no address.
        let n = unsafe {
            libc::send(
                self.fd.as_raw_fd(),
                frame.as_ptr() as *const libc::c_void,
                frame.len(),
                0,
            )
        };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }
}

/// `struct ifreq` with the `ifr_data` member, as SIOCETHTOOL wants it.
#[repr(C)]
struct IfReqData {
    name: [libc::c_char; libc::IFNAMSIZ],
    data: *mut libc::c_void,
    _pad: [u8; 16],
}

#[repr(C)]
struct EthtoolValue {
    cmd: u32,
    data: u32,
}

const SIOCETHTOOL: libc::c_ulong = 0x8946;
const ETHTOOL_STXCSUM: u32 = 0x17;
const ETHTOOL_SSG: u32 = 0x19;
const ETHTOOL_STSO: u32 = 0x1f;
const ETHTOOL_SGSO: u32 = 0x24;
const ETHTOOL_SGRO: u32 = 0x2c;

/// Turns off checksum offload, scatter-gather, TSO, GSO and GRO on an interface of the current
/// namespace (what `ethtool -K IF tx off sg off tso off gso off gro off` does). Frames that cross a
/// relay must be wire frames: whole checksums, at most MTU-sized.
pub fn disable_offloads(ifname: &str) -> Result<()> {
    if ifname.len() >= libc::IFNAMSIZ {
        bail!("interface name {ifname:?} is too long");
    }
    // SAFETY: plain syscall; the fd is owned right after.
    let raw =
        cvt(unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: raw is a fresh fd.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };
    // TSO/GSO first: turning checksums off while they are on is refused on some drivers.
    for (cmd, what) in [
        (ETHTOOL_STSO, "tso"),
        (ETHTOOL_SGSO, "gso"),
        (ETHTOOL_SGRO, "gro"),
        (ETHTOOL_STXCSUM, "tx checksum"),
        (ETHTOOL_SSG, "scatter-gather"),
    ] {
        let mut val = EthtoolValue { cmd, data: 0 };
        let mut req = IfReqData {
            name: [0; libc::IFNAMSIZ],
            data: &mut val as *mut _ as *mut libc::c_void,
            _pad: [0; 16],
        };
        for (d, s) in req.name.iter_mut().zip(ifname.bytes()) {
            *d = s as libc::c_char;
        }
        // SAFETY: req and val live across the call; SIOCETHTOOL reads them.
        cvt(unsafe { libc::ioctl(sock.as_raw_fd(), SIOCETHTOOL as _, &mut req) })
            .with_context(|| format!("turn {what} offload off on {ifname}"))?;
    }
    Ok(())
}

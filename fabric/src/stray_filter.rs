//! A socket filter in front of rxd: malformed datagrams never reach it.
//!
//! libfabric's rxd provider (`udp;ofi_rxd`) reads a header from every datagram its UDP socket
//! receives and trusts it: an empty datagram, a short one or one of another protocol makes it
//! read a stale or foreign header and dereference a peer that does not exist (SIGSEGV; 1.17
//! and 2.1 alike). rxd gives no access to its socket, so the endpoint's socket is found among
//! the process's descriptors by its bound address, and a classic BPF filter is attached to it:
//! the kernel then drops any datagram shorter than rxd's base header or whose version and type
//! are not rxd's, before rxd sees it (counted in the socket's drops, `/proc/net/udp`).
//!
//! What it cannot stop: a well-formed rxd header naming a peer the endpoint does not know
//! still crashes rxd. Only a filter on who may send (a firewall) keeps those out.

use std::ffi::c_int;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::io::AsRawFd;

/// rxd's base header (`struct rxd_base_hdr`): version u8, type u8, flags u16, peer u32,
/// sequence u64. Every rxd packet starts with one.
const RXD_BASE_HEADER: u32 = 16;
/// `RXD_PROTOCOL_VERSION`, the same in libfabric 1.17 through 2.x.
const RXD_PROTOCOL_VERSION: u32 = 2;
/// The last packet type rxd defines (`RXD_NO_OP`).
const RXD_LAST_TYPE: u32 = 14;
/// A UDP socket's filter sees the datagram from its UDP header on.
const UDP_HEADER: u32 = 8;

/// Why the filter could not be put in place.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StrayFilterError {
    /// the endpoint's address is not an IPv4 or IPv6 socket address
    #[error("the endpoint's address ({0} bytes) is not an IP socket address")]
    NotIpAddress(usize),
    /// no descriptor of this process is a UDP socket bound to the endpoint's address
    #[error("no UDP socket of this process is bound to {0}")]
    NoSocket(SocketAddr),
    /// the kernel refused the filter
    #[error("attaching the filter to the socket bound to {addr} failed: {reason}")]
    Attach { addr: SocketAddr, reason: String },
    /// the process's descriptors cannot be listed
    #[error("cannot list /proc/self/fd: {0}")]
    ListDescriptors(String),
}

/// Attaches the filter to the UDP socket bound to `name` (a raw `sockaddr_in` or
/// `sockaddr_in6`, as `fi_getname` gives it for `udp;ofi_rxd`). Returns the address.
pub(crate) fn attach_for(name: &[u8]) -> Result<SocketAddr, StrayFilterError> {
    let addr = socket_addr_of(name).ok_or(StrayFilterError::NotIpAddress(name.len()))?;
    let socket = find_udp_socket(addr)?;
    attach(&socket).map_err(|reason| StrayFilterError::Attach { addr, reason })?;
    Ok(addr)
}

/// A duplicate of the descriptor of the UDP socket bound to `addr`. The duplicate refers to
/// the socket for as long as it is held, whatever the original descriptor becomes.
fn find_udp_socket(addr: SocketAddr) -> Result<OwnedFd, StrayFilterError> {
    let dir = std::fs::read_dir("/proc/self/fd")
        .map_err(|e| StrayFilterError::ListDescriptors(e.to_string()))?;
    for entry in dir.flatten() {
        let Some(fd) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<RawFd>().ok())
        else {
            continue;
        };
        let is_socket = std::fs::read_link(entry.path())
            .is_ok_and(|target| target.to_string_lossy().starts_with("socket:"));
        if !is_socket {
            continue;
        }
        // SAFETY: F_DUPFD_CLOEXEC only reads `fd`; if another thread closed it meanwhile the
        // call fails (or duplicates whatever now has that number, checked below).
        let dup = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
        if dup < 0 {
            continue;
        }
        // SAFETY: `dup` is a fresh descriptor that nothing else owns.
        let dup = unsafe { OwnedFd::from_raw_fd(dup) };
        if is_udp(&dup) && bound_address(&dup) == Some(addr) {
            return Ok(dup);
        }
    }
    Err(StrayFilterError::NoSocket(addr))
}

fn is_udp(socket: &OwnedFd) -> bool {
    let mut kind: c_int = 0;
    let mut len = std::mem::size_of::<c_int>() as libc::socklen_t;
    // SAFETY: `kind` is writable for `len` bytes; the descriptor is open (owned here).
    let ret = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_TYPE,
            (&mut kind as *mut c_int).cast(),
            &mut len,
        )
    };
    ret == 0 && kind == libc::SOCK_DGRAM
}

fn bound_address(socket: &OwnedFd) -> Option<SocketAddr> {
    // SAFETY: a zeroed sockaddr_storage is a valid buffer for any socket address.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: `storage` is writable for `len` bytes; the descriptor is open (owned here).
    let ret = unsafe {
        libc::getsockname(
            socket.as_raw_fd(),
            (&mut storage as *mut libc::sockaddr_storage).cast(),
            &mut len,
        )
    };
    if ret != 0 {
        return None;
    }
    // SAFETY: getsockname wrote `len` bytes (at most the storage's size) into `storage`.
    let bytes = unsafe {
        std::slice::from_raw_parts(
            (&storage as *const libc::sockaddr_storage).cast::<u8>(),
            (len as usize).min(std::mem::size_of::<libc::sockaddr_storage>()),
        )
    };
    socket_addr_of(bytes)
}

/// A raw `sockaddr_in` / `sockaddr_in6` (family in host order, port and address in network
/// order), as the kernel and the udp provider lay it out.
pub(crate) fn socket_addr_of(raw: &[u8]) -> Option<SocketAddr> {
    let family = u16::from_ne_bytes([*raw.first()?, *raw.get(1)?]);
    let port = u16::from_be_bytes([*raw.get(2)?, *raw.get(3)?]);
    match c_int::from(family) {
        libc::AF_INET if raw.len() >= std::mem::size_of::<libc::sockaddr_in>() => {
            let ip: [u8; 4] = raw[4..8].try_into().ok()?;
            Some(SocketAddrV4::new(Ipv4Addr::from(ip), port).into())
        }
        libc::AF_INET6 if raw.len() >= std::mem::size_of::<libc::sockaddr_in6>() => {
            let flow = u32::from_be_bytes(raw[4..8].try_into().ok()?);
            let ip: [u8; 16] = raw[8..24].try_into().ok()?;
            let scope = u32::from_ne_bytes(raw[24..28].try_into().ok()?);
            Some(SocketAddrV6::new(Ipv6Addr::from(ip), port, flow, scope).into())
        }
        _ => None,
    }
}

/// The filter: accept a datagram only if it holds an rxd base header of rxd's version and a
/// packet type rxd defines.
fn program() -> [libc::sock_filter; 8] {
    let op = |code: u32, jt: u8, jf: u8, k: u32| libc::sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    };
    const DROP: u32 = 0;
    const ACCEPT: u32 = u32::MAX;
    [
        // 0: A = the datagram's length, UDP header included.
        op(libc::BPF_LD | libc::BPF_W | libc::BPF_LEN, 0, 0, 0),
        // 1: shorter than a base header: drop (7).
        op(
            libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K,
            0,
            5,
            UDP_HEADER + RXD_BASE_HEADER,
        ),
        // 2: A = version.
        op(libc::BPF_LD | libc::BPF_B | libc::BPF_ABS, 0, 0, UDP_HEADER),
        // 3: not rxd's: drop (7).
        op(
            libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K,
            0,
            3,
            RXD_PROTOCOL_VERSION,
        ),
        // 4: A = packet type.
        op(
            libc::BPF_LD | libc::BPF_B | libc::BPF_ABS,
            0,
            0,
            UDP_HEADER + 1,
        ),
        // 5: beyond the last type: drop (7).
        op(
            libc::BPF_JMP | libc::BPF_JGT | libc::BPF_K,
            1,
            0,
            RXD_LAST_TYPE,
        ),
        // 6: accept all of it.
        op(libc::BPF_RET | libc::BPF_K, 0, 0, ACCEPT),
        // 7: drop.
        op(libc::BPF_RET | libc::BPF_K, 0, 0, DROP),
    ]
}

fn attach(socket: &impl AsRawFd) -> Result<(), String> {
    let mut filter = program();
    let fprog = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_mut_ptr(),
    };
    // SAFETY: `fprog` points at `filter`, valid for `len` instructions for the duration of the
    // call (the kernel copies the program); the descriptor is open.
    let ret = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_FILTER,
            (&fprog as *const libc::sock_fprog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if ret == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error().to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;
    use std::time::Duration;

    fn header(version: u8, kind: u8) -> Vec<u8> {
        let mut h = vec![version, kind, 0, 0];
        h.extend_from_slice(&7u32.to_le_bytes());
        h.extend_from_slice(&1u64.to_le_bytes());
        h
    }

    /// Which of `datagrams` a filtered socket receives, in order.
    fn received_through_filter(datagrams: &[Vec<u8>]) -> Vec<Vec<u8>> {
        let receiver = UdpSocket::bind("127.0.0.1:0").unwrap();
        receiver
            .set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        attach(&receiver).unwrap();
        let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
        for d in datagrams {
            sender.send_to(d, receiver.local_addr().unwrap()).unwrap();
        }
        let mut got = Vec::new();
        let mut buf = [0u8; 2048];
        while let Ok(n) = receiver.recv(&mut buf) {
            got.push(buf[..n].to_vec());
        }
        got
    }

    #[test]
    fn the_filter_passes_rxd_headers_and_drops_empty_short_and_foreign_datagrams() {
        let mut long = header(2, 12);
        long.extend_from_slice(&[0xab; 1000]);
        let good = vec![header(2, 0), header(2, 9), header(2, 14), long];
        let bad = [
            vec![],
            vec![2],
            header(2, 0)[..15].to_vec(),
            header(1, 0),
            header(3, 0),
            header(2, 15),
            header(2, 0xff),
            b"GET / HTTP/1.1\r\n\r\n".to_vec(),
        ];
        let all: Vec<Vec<u8>> = bad.iter().chain(good.iter()).cloned().collect();
        assert_eq!(received_through_filter(&all), good);
    }

    #[test]
    fn the_socket_bound_to_an_address_is_found_among_the_descriptors() {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = socket.local_addr().unwrap();
        let found = find_udp_socket(addr).unwrap();
        assert_eq!(bound_address(&found), Some(addr));
        drop((socket, found));
        assert!(matches!(
            find_udp_socket(addr),
            Err(StrayFilterError::NoSocket(a)) if a == addr
        ));
    }

    #[test]
    fn raw_socket_addresses_are_read_as_the_kernel_lays_them_out() {
        // SAFETY: a zeroed sockaddr_in is a valid value; its fields are set below.
        let mut sin: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        sin.sin_family = libc::AF_INET as libc::sa_family_t;
        sin.sin_port = 4242u16.to_be();
        sin.sin_addr.s_addr = u32::from(Ipv4Addr::new(198, 18, 0, 7)).to_be();
        // SAFETY: `sin` is plain data of that size, alive for the borrow.
        let raw = unsafe {
            std::slice::from_raw_parts(
                (&sin as *const libc::sockaddr_in).cast::<u8>(),
                std::mem::size_of::<libc::sockaddr_in>(),
            )
        };
        assert_eq!(
            socket_addr_of(raw),
            Some("198.18.0.7:4242".parse().unwrap())
        );
        assert_eq!(socket_addr_of(&raw[..8]), None);
        assert_eq!(socket_addr_of(b"fi_addr_str"), None);
    }
}

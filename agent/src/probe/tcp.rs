//! TCP connect with a deadline, keeping the OS's own reason when it fails.
//!
//! The socket is made with socket2 and connected without blocking, then handed to tokio to
//! wait for the handshake. Doing the connect ourselves (rather than `TcpStream::connect`)
//! keeps the exact errno of an immediate failure (`ENETUNREACH` from the routing table) and
//! of a late one (`SO_ERROR` after an ICMP or a reset), which is what tells `refused`,
//! `unreachable` and `timeout` apart.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::reason::{FailureReason, ProbeFailure};
use crate::units::format_duration;

/// A connected stream and how long the TCP handshake took.
#[derive(Debug)]
pub struct TcpConnection {
    pub stream: TcpStream,
    /// From sending the SYN to seeing the connection established: one network round trip
    /// plus the peer's accept latency.
    pub connect_rtt: Duration,
}

/// Connects to `addr`, giving up at `deadline`.
///
/// A deadline hit here means no SYN-ACK, no reset and no ICMP came back: packets are
/// being dropped on the way (reason `timeout`). Dropping the returned future at any point
/// closes the socket.
pub async fn connect_tcp(
    addr: SocketAddr,
    deadline: Instant,
) -> Result<TcpConnection, ProbeFailure> {
    let context = || format!("connect to {addr}");
    let socket = new_socket(addr).map_err(|e| ProbeFailure::from_io(&context(), &e))?;

    let started = Instant::now();
    let in_progress = match socket.connect(&SockAddr::from(addr)) {
        Ok(()) => false,
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => true,
        Err(e) => return Err(ProbeFailure::from_io(&context(), &e)),
    };

    let stream = TcpStream::from_std(std::net::TcpStream::from(socket))
        .map_err(|e| ProbeFailure::from_io(&context(), &e))?;
    if in_progress {
        let waited = tokio::time::timeout_at(deadline, stream.writable()).await;
        match waited {
            Err(_elapsed) => {
                return Err(ProbeFailure::new(
                    FailureReason::Timeout,
                    format!(
                        "{}: no answer to the TCP handshake within {}",
                        context(),
                        format_duration(deadline.saturating_duration_since(started))
                    ),
                ))
            }
            Ok(Err(e)) => return Err(ProbeFailure::from_io(&context(), &e)),
            Ok(Ok(())) => {}
        }
        // Writable means the handshake finished one way or the other; SO_ERROR says which.
        match stream.take_error() {
            Ok(None) => {}
            Ok(Some(e)) | Err(e) => return Err(ProbeFailure::from_io(&context(), &e)),
        }
    }
    let connect_rtt = started.elapsed();
    Ok(TcpConnection {
        stream,
        connect_rtt,
    })
}

fn new_socket(addr: SocketAddr) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_nonblocking(true)?;
    // Probes send small requests and wait for the answer; Nagle would only add delay.
    socket.set_tcp_nodelay(true)?;
    Ok(socket)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn closed_loopback_port_is_refused() {
        // A bound socket that never listens: the port is ours, and the kernel resets SYNs.
        let holder = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        holder
            .bind(&SockAddr::from(SocketAddr::from(([127, 0, 0, 1], 0))))
            .unwrap();
        let addr = holder.local_addr().unwrap().as_socket().unwrap();
        let deadline = Instant::now() + Duration::from_secs(2);
        let failure = connect_tcp(addr, deadline).await.unwrap_err();
        assert_eq!(failure.reason, FailureReason::Refused, "{failure}");
        assert!(failure.message.contains(&addr.to_string()), "{failure}");
    }

    #[tokio::test]
    async fn listening_loopback_port_connects() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let deadline = Instant::now() + Duration::from_secs(2);
        let conn = connect_tcp(addr, deadline).await.unwrap();
        assert_eq!(conn.stream.peer_addr().unwrap(), addr);
        assert!(conn.connect_rtt < Duration::from_secs(2));
    }
}

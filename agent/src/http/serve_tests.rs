//! The server's bounds over real loopback sockets, with short timeouts.

use std::time::{Duration, Instant};

use axum::routing::get;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

use super::*;

/// A bound on every wait in these tests: none should come near it.
const PATIENCE: Duration = Duration::from_secs(10);

struct Running {
    address: std::net::SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    done: tokio::task::JoinHandle<()>,
}

impl Running {
    async fn stop(mut self) -> Duration {
        let started = Instant::now();
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(PATIENCE, self.done)
            .await
            .expect("serve returns after shutdown")
            .unwrap();
        started.elapsed()
    }
}

async fn start(limits: ServeLimits) -> Running {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let router = Router::new().route("/healthz", get(|| async { "ok" }));
    let (stop, stopped) = oneshot::channel();
    let done = tokio::spawn(serve(listener, router, limits, async {
        let _ = stopped.await;
    }));
    Running {
        address,
        stop: Some(stop),
        done,
    }
}

fn limits(header_read_ms: u64, idle_ms: u64) -> ServeLimits {
    ServeLimits {
        max_connections: 64,
        header_read_timeout: Duration::from_millis(header_read_ms),
        idle_timeout: Duration::from_millis(idle_ms),
    }
}

const GET_HEALTHZ: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n";

/// Reads one `/healthz` answer (its body is `ok`) off a kept-alive connection.
async fn read_healthz_answer(s: &mut TcpStream) -> String {
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    while !answer.ends_with(b"\r\n\r\nok") {
        let n = tokio::time::timeout(PATIENCE, s.read(&mut buf))
            .await
            .expect("an answer")
            .unwrap();
        assert!(n > 0, "closed before the answer: {answer:?}");
        answer.extend_from_slice(&buf[..n]);
    }
    String::from_utf8(answer).unwrap()
}

/// How long until the server closes `s` (reads EOF or a reset), bounded by [`PATIENCE`].
async fn time_until_closed(s: &mut TcpStream) -> Duration {
    let started = Instant::now();
    let mut buf = [0u8; 64];
    loop {
        match tokio::time::timeout(PATIENCE, s.read(&mut buf)).await {
            Err(_) => panic!("not closed within {PATIENCE:?}"),
            Ok(Ok(0)) | Ok(Err(_)) => return started.elapsed(),
            Ok(Ok(_)) => {}
        }
    }
}

/// True while the server holds `s` open: nothing to read and no EOF for `for_how_long`.
async fn still_open(s: &mut TcpStream, for_how_long: Duration) -> bool {
    let mut buf = [0u8; 64];
    tokio::time::timeout(for_how_long, s.read(&mut buf))
        .await
        .is_err()
}

#[test]
fn the_connection_bound_leaves_descriptors_for_probing() {
    let at = |limit| ServeLimits::for_open_files(limit).max_connections;
    // The container default: a quarter kept back, at least 256.
    assert_eq!(at(1024), 768);
    assert_eq!(at(512), 256);
    assert_eq!(at(300), 44);
    // Absurdly low: a few connections still, not none.
    assert_eq!(at(100), MIN_CONNECTIONS);
    // Plenty: capped, as memory is the bound then.
    assert_eq!(at(1 << 20), MAX_CONNECTIONS);
    assert_eq!(at(u64::MAX), MAX_CONNECTIONS);
    let limits = ServeLimits::for_open_files(1024);
    assert_eq!(limits.header_read_timeout, HEADER_READ_TIMEOUT);
    assert_eq!(limits.idle_timeout, IDLE_TIMEOUT);
}

#[tokio::test]
async fn a_connection_that_sends_nothing_is_closed_at_the_header_read_timeout() {
    let server = start(limits(300, 5_000)).await;
    let mut silent = TcpStream::connect(server.address).await.unwrap();
    let closed_after = time_until_closed(&mut silent).await;
    assert!(
        closed_after >= Duration::from_millis(250) && closed_after < Duration::from_secs(2),
        "{closed_after:?}"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_header_dripped_a_byte_at_a_time_is_closed_at_the_header_read_timeout() {
    let server = start(limits(400, 5_000)).await;
    let mut slow = TcpStream::connect(server.address).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nX-Slow: ")
        .await
        .unwrap();
    let started = Instant::now();
    // Bytes keep coming, but the head never completes.
    let closed_after = loop {
        if slow.write_all(b"a").await.is_err() {
            break started.elapsed();
        }
        if !still_open(&mut slow, Duration::from_millis(50)).await {
            break started.elapsed();
        }
        assert!(started.elapsed() < PATIENCE, "still open");
    };
    assert!(
        closed_after >= Duration::from_millis(300) && closed_after < Duration::from_secs(2),
        "{closed_after:?}"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_kept_alive_connection_waits_the_idle_timeout_not_the_header_read_timeout() {
    let server = start(limits(300, 1_200)).await;
    let mut client = TcpStream::connect(server.address).await.unwrap();
    client.write_all(GET_HEALTHZ).await.unwrap();
    assert!(read_healthz_answer(&mut client)
        .await
        .starts_with("HTTP/1.1 200"));
    // Longer than the header-read timeout between requests: the connection is still served.
    tokio::time::sleep(Duration::from_millis(600)).await;
    client.write_all(GET_HEALTHZ).await.unwrap();
    assert!(read_healthz_answer(&mut client)
        .await
        .starts_with("HTTP/1.1 200"));
    let closed_after = time_until_closed(&mut client).await;
    assert!(
        closed_after >= Duration::from_millis(1_100) && closed_after < Duration::from_secs(3),
        "{closed_after:?}"
    );
    server.stop().await;
}

#[tokio::test]
async fn at_the_bound_the_longest_waiting_connection_makes_room() {
    let server = start(ServeLimits {
        max_connections: 4,
        header_read_timeout: Duration::from_secs(30),
        idle_timeout: Duration::from_secs(30),
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(TcpStream::connect(server.address).await.unwrap());
        // Accepted in this order.
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let started = Instant::now();
    let mut newcomer = TcpStream::connect(server.address).await.unwrap();
    newcomer.write_all(GET_HEALTHZ).await.unwrap();
    assert!(read_healthz_answer(&mut newcomer)
        .await
        .starts_with("HTTP/1.1 200"));
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    // The oldest made room; the other three are still held.
    assert!(time_until_closed(&mut held[0]).await < Duration::from_secs(1));
    for s in &mut held[1..] {
        assert!(still_open(s, Duration::from_millis(100)).await);
    }
    server.stop().await;
}

#[tokio::test]
async fn shutdown_does_not_wait_for_idle_or_slow_clients() {
    let server = start(limits(30_000, 30_000)).await;
    let mut idle = TcpStream::connect(server.address).await.unwrap();
    idle.write_all(GET_HEALTHZ).await.unwrap();
    read_healthz_answer(&mut idle).await;
    let _silent = TcpStream::connect(server.address).await.unwrap();
    let mut slow = TcpStream::connect(server.address).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nX-Slow: a")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let took = server.stop().await;
    assert!(took < Duration::from_secs(1), "{took:?}");
    assert!(time_until_closed(&mut idle).await < Duration::from_secs(1));
    assert!(time_until_closed(&mut slow).await < Duration::from_secs(1));
}

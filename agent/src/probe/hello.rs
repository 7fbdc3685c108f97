//! The IP probe of a peer: GET its agent's `/v1/hello`, which also says who the peer is,
//! where it runs and its fabric addresses.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::time::Instant;

use super::http::http_get;
use super::tcp::connect_tcp;
use super::{FailureReason, ProbeFailure};
use crate::hello::{Hello, MAX_HELLO_BYTES};

/// Why a hello fetch failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HelloFailure {
    pub failure: ProbeFailure,
    /// The peer answered `200` with a JSON object that is not a hello this agent reads:
    /// another agent version, most likely. Its host and agent are up.
    pub foreign: bool,
}

impl From<ProbeFailure> for HelloFailure {
    fn from(failure: ProbeFailure) -> HelloFailure {
        HelloFailure {
            failure,
            foreign: false,
        }
    }
}

/// GET the peer agent's `/v1/hello` at `peer` (`HOST:PORT`) within `timeout`: its hello and
/// the time the exchange took (connect to answer, the name's resolution aside).
pub async fn fetch_hello(peer: &str, timeout: Duration) -> Result<(Hello, Duration), HelloFailure> {
    let deadline = Instant::now() + timeout;
    let addr = resolve(peer, deadline).await?;
    let started = Instant::now();
    let conn = connect_tcp(addr, deadline).await?;
    let response = http_get(conn.stream, peer, "/v1/hello", MAX_HELLO_BYTES, deadline).await?;
    let rtt = started.elapsed();
    if response.status != 200 {
        return Err(ProbeFailure::new(
            FailureReason::HttpStatus,
            format!("{peer} answered /v1/hello with HTTP {}", response.status),
        )
        .into());
    }
    let hello = Hello::parse(&response.body).map_err(|e| HelloFailure {
        failure: ProbeFailure::new(FailureReason::Protocol, format!("{peer}: {e}")),
        foreign: serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(
            &response.body,
        )
        .is_ok(),
    })?;
    Ok((hello, rtt))
}

/// `HOST:PORT` (the peer's agent address; IPv6 in brackets) to its first address, before
/// `deadline`, through the one resolver ([`super::resolve`]).
async fn resolve(peer: &str, deadline: Instant) -> Result<SocketAddr, ProbeFailure> {
    if let Ok(addr) = peer.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let dns = |detail: String| ProbeFailure::new(FailureReason::Dns, detail);
    let (host, port) = peer
        .rsplit_once(':')
        .and_then(|(host, port)| Some((host, port.parse::<u16>().ok()?)))
        .ok_or_else(|| dns(format!("{peer} is not HOST:PORT")))?;
    let addresses = super::resolve(host, port, deadline)
        .await
        .map_err(|e| dns(e.to_string()))?;
    Ok(addresses[0])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_port_nobody_listens_on_is_refused() {
        let refused = fetch_hello("127.0.0.1:9", Duration::from_millis(500))
            .await
            .unwrap_err();
        assert_eq!(
            refused.failure.reason,
            FailureReason::Refused,
            "{refused:?}"
        );
        assert!(!refused.foreign);
    }

    #[tokio::test]
    async fn an_address_without_a_port_is_a_dns_failure_without_a_lookup() {
        let deadline = Instant::now() + Duration::from_millis(100);
        let failure = resolve("peer-without-port", deadline).await.unwrap_err();
        assert_eq!(failure.reason, FailureReason::Dns, "{failure:?}");
        assert!(failure.message.contains("HOST:PORT"), "{failure:?}");
        // IP literals never reach the resolver.
        let addr = resolve("[::1]:9476", deadline).await.unwrap();
        assert_eq!(addr, "[::1]:9476".parse().unwrap());
    }

    /// Another agent version's hello (JSON, not ours) is a protocol failure: the peer's
    /// agent answered, in words this one does not read.
    #[tokio::test]
    async fn a_hello_of_another_shape_is_a_protocol_failure() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let body = r#"{"version":2,"node":{"name":"peer"},"fabrics":[]}"#;
        let server = tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.unwrap();
            let mut request = [0u8; 1024];
            let _ = conn.read(&mut request).await;
            let response = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
                 connection: close\r\n\r\n{body}",
                body.len()
            );
            conn.write_all(response.as_bytes()).await.unwrap();
        });
        let failure = fetch_hello(&addr.to_string(), Duration::from_secs(2))
            .await
            .unwrap_err();
        assert_eq!(
            failure.failure.reason,
            FailureReason::Protocol,
            "{failure:?}"
        );
        assert!(failure.foreign, "{failure:?}");
        server.await.unwrap();
    }
}

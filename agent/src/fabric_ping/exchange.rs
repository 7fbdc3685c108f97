//! The TCP exchange of fabric addresses behind `efaprobe fabric-ping`: the responder answers
//! each connection with one JSON line naming its provider and endpoints, then closes it.
//! This is the "IP path" of the diagnostic: if it works and fabric probes do not, the fabric
//! is what drops.

use std::net::SocketAddr;
use std::time::Duration;

use fabric::EndpointAddress;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Largest hello accepted from a peer.
const MAX_HELLO: usize = 64 * 1024;

/// What a responder says about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExchangeHello {
    /// Protocol version of this exchange.
    pub efaprobe_exchange: u32,
    pub provider: String,
    pub instance_id: u64,
    pub endpoints: Vec<ExchangeEndpoint>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExchangeEndpoint {
    pub domain: String,
    /// Raw fabric address, hex ([`EndpointAddress::to_hex`]).
    pub address: String,
    /// The provider's printable form, for people.
    pub display: String,
}

/// Why the exchange with a peer failed.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    /// TCP connect failed (refused, unreachable, reset)
    #[error("cannot connect to {peer}: {source}")]
    Connect {
        peer: SocketAddr,
        source: std::io::Error,
    },
    /// no answer in time
    #[error("{peer} did not answer within {timeout:?}")]
    Timeout { peer: SocketAddr, timeout: Duration },
    /// connected, but the answer is longer than a hello can be
    #[error(
        "{peer} answered something that is not an efaprobe hello: longer than {MAX_HELLO} bytes"
    )]
    TooLong { peer: SocketAddr },
    /// connected, but the answer is not the JSON of a hello
    #[error("{peer} answered something that is not an efaprobe hello: {source}")]
    NotJson {
        peer: SocketAddr,
        source: serde_json::Error,
    },
    /// a hello of another version of the exchange
    #[error("{peer} speaks exchange version {version} (this build speaks {EXCHANGE_VERSION})")]
    Version { peer: SocketAddr, version: u32 },
    /// a hello without endpoints
    #[error("{peer} answered a hello without fabric endpoints")]
    NoEndpoints { peer: SocketAddr },
    /// a hello whose endpoint address is unreadable
    #[error("{peer} published the unreadable fabric address {address:?}: {source}")]
    BadAddress {
        peer: SocketAddr,
        address: String,
        source: fabric::AddressError,
    },
}

pub const EXCHANGE_VERSION: u32 = 1;

/// Answers every connection on `listener` with `hello` until the task is dropped.
pub async fn serve(listener: TcpListener, hello: ExchangeHello) {
    let mut line = serde_json::to_vec(&hello).expect("hello serialises");
    line.push(b'\n');
    let line: std::sync::Arc<[u8]> = line.into();
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            // Out of file descriptors or similar: wait instead of spinning.
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let line = line.clone();
        tokio::spawn(async move {
            let write = async {
                stream.write_all(&line).await?;
                stream.shutdown().await
            };
            let _ = tokio::time::timeout(Duration::from_secs(5), write).await;
        });
    }
}

/// Connects to `peer` and reads its hello, all within `timeout`.
pub async fn fetch(peer: SocketAddr, timeout: Duration) -> Result<ExchangeHello, ExchangeError> {
    let read = async {
        let mut stream = TcpStream::connect(peer)
            .await
            .map_err(|source| ExchangeError::Connect { peer, source })?;
        let mut buf = Vec::new();
        let mut limited = (&mut stream).take(MAX_HELLO as u64 + 1);
        limited
            .read_to_end(&mut buf)
            .await
            .map_err(|source| ExchangeError::Connect { peer, source })?;
        Ok(buf)
    };
    let buf = tokio::time::timeout(timeout, read)
        .await
        .map_err(|_| ExchangeError::Timeout { peer, timeout })??;
    parse(peer, &buf)
}

fn parse(peer: SocketAddr, buf: &[u8]) -> Result<ExchangeHello, ExchangeError> {
    if buf.len() > MAX_HELLO {
        return Err(ExchangeError::TooLong { peer });
    }
    let line = buf.split(|b| *b == b'\n').next().unwrap_or_default();
    let hello: ExchangeHello =
        serde_json::from_slice(line).map_err(|source| ExchangeError::NotJson { peer, source })?;
    if hello.efaprobe_exchange != EXCHANGE_VERSION {
        let version = hello.efaprobe_exchange;
        return Err(ExchangeError::Version { peer, version });
    }
    if hello.endpoints.is_empty() {
        return Err(ExchangeError::NoEndpoints { peer });
    }
    for ep in &hello.endpoints {
        EndpointAddress::from_hex(&ep.address).map_err(|source| ExchangeError::BadAddress {
            peer,
            address: ep.address.clone(),
            source,
        })?;
    }
    Ok(hello)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello() -> ExchangeHello {
        ExchangeHello {
            efaprobe_exchange: EXCHANGE_VERSION,
            provider: "udp;ofi_rxd".into(),
            instance_id: 1,
            endpoints: vec![ExchangeEndpoint {
                domain: "lo".into(),
                address: "0a0b".into(),
                display: "x".into(),
            }],
        }
    }

    #[test]
    fn parse_rejects_what_is_not_a_hello() {
        let peer: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let parse = |buf: &[u8]| parse(peer, buf);
        let good = serde_json::to_vec(&hello()).unwrap();
        assert_eq!(parse(&good).unwrap(), hello());
        assert!(parse(b"HTTP/1.1 200 OK\r\n\r\n").is_err());
        assert!(parse(&vec![b'{'; MAX_HELLO + 1]).is_err());
        let mut wrong = hello();
        wrong.efaprobe_exchange = 99;
        assert!(parse(&serde_json::to_vec(&wrong).unwrap())
            .unwrap_err()
            .to_string()
            .contains("version"));
        let mut empty = hello();
        empty.endpoints.clear();
        assert!(parse(&serde_json::to_vec(&empty).unwrap()).is_err());
    }

    #[tokio::test]
    async fn serve_and_fetch_over_loopback() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(serve(listener, hello()));
        let got = fetch(addr, Duration::from_secs(2)).await.unwrap();
        assert_eq!(got, hello());
        server.abort();
    }

    #[tokio::test]
    async fn closed_port_is_a_connect_error_and_silence_a_timeout() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        // Accepts (the kernel does) but never writes.
        let err = fetch(addr, Duration::from_millis(200)).await.unwrap_err();
        assert!(matches!(err, ExchangeError::Timeout { .. }), "{err}");
        drop(listener);
        let err = fetch(addr, Duration::from_secs(2)).await.unwrap_err();
        assert!(matches!(err, ExchangeError::Connect { .. }), "{err}");
    }
}

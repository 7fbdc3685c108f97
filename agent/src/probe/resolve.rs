//! Name resolution with a deadline: the one way the agent turns a host name into addresses
//! (targets, instance metadata, DNS discovery, peers).
//!
//! Resolution goes through the system resolver (`getaddrinfo` on a blocking thread), so the
//! pod's `resolv.conf` applies. `getaddrinfo` cannot be cancelled: at the deadline the caller
//! gets [`ResolveError::Timeout`] and the thread finishes in the background, bounded by the
//! resolver's own timeouts.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::time::Instant;

use crate::units::format_duration;

/// Why a name gave no address. Callers map it into their own errors (a probe failure with
/// reason `dns`, a discovery or topology error), each with its own words.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// No answer before the deadline.
    #[error("resolving {name} took longer than {}", format_duration(*waited))]
    Timeout { name: String, waited: Duration },
    /// The resolver answered with an error: NXDOMAIN, SERVFAIL, no resolver reachable.
    #[error("cannot resolve {name}: {source}")]
    Lookup {
        name: String,
        #[source]
        source: io::Error,
    },
    /// The name resolved, but to no address.
    #[error("{name} resolves to no address")]
    Empty { name: String },
}

/// The addresses of `host` (a name, or an IP literal, IPv6 with or without brackets) with
/// `port`, in the resolver's order, each once; never empty. An IP literal is returned as it
/// is, without asking the resolver. Returns by `deadline` at the latest.
pub async fn resolve(
    host: &str,
    port: u16,
    deadline: Instant,
) -> Result<Vec<SocketAddr>, ResolveError> {
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    let started = Instant::now();
    let lookup = tokio::net::lookup_host((bare, port));
    let found = match tokio::time::timeout_at(deadline, lookup).await {
        Err(_elapsed) => {
            return Err(ResolveError::Timeout {
                name: bare.to_owned(),
                waited: deadline.saturating_duration_since(started),
            })
        }
        Ok(Err(source)) => {
            return Err(ResolveError::Lookup {
                name: bare.to_owned(),
                source,
            })
        }
        Ok(Ok(found)) => found,
    };
    let mut addresses: Vec<SocketAddr> = Vec::new();
    for address in found {
        if !addresses.contains(&address) {
            addresses.push(address);
        }
    }
    if addresses.is_empty() {
        return Err(ResolveError::Empty {
            name: bare.to_owned(),
        });
    }
    Ok(addresses)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn soon() -> Instant {
        Instant::now() + Duration::from_secs(2)
    }

    #[tokio::test]
    async fn ip_literals_skip_the_resolver() {
        let past = Instant::now() - Duration::from_secs(1);
        for (host, want) in [
            ("198.18.0.1", "198.18.0.1:9476"),
            ("::1", "[::1]:9476"),
            ("[::1]", "[::1]:9476"),
        ] {
            // A deadline already passed: only a literal can answer.
            let found = resolve(host, 9476, past).await.unwrap();
            assert_eq!(found, [want.parse::<SocketAddr>().unwrap()], "{host}");
        }
    }

    #[tokio::test]
    async fn localhost_resolves_each_address_once() {
        let found = resolve("localhost", 80, soon()).await.unwrap();
        assert!(!found.is_empty());
        assert!(found.iter().all(|a| a.ip().is_loopback() && a.port() == 80));
        let unique: std::collections::HashSet<_> = found.iter().collect();
        assert_eq!(unique.len(), found.len(), "{found:?}");
    }

    #[tokio::test]
    async fn a_passed_deadline_is_a_timeout_for_a_name() {
        // A name goes to a resolver thread, which cannot answer before the passed deadline
        // is seen (the lookup is polled once, pending, then the timer).
        let err = resolve("localhost", 80, Instant::now() - Duration::from_secs(1)).await;
        assert!(matches!(err, Err(ResolveError::Timeout { .. })), "{err:?}");
    }
}

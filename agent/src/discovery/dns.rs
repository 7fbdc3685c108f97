//! DNS discovery: a headless Service's name, resolved again every round; each address it
//! resolves to, with the agent port, is a peer.
//!
//! Resolution goes through the system resolver (`getaddrinfo`), so the pod's `resolv.conf`
//! applies: search domains let `--dns-name efaprobe` find `efaprobe.<ns>.svc.cluster.local`.
//!
//! **On errors the last good set stays.** NXDOMAIN included: a headless Service answers
//! NXDOMAIN when it has no ready endpoints, and cluster DNS can fail while the network is
//! partitioned. Emptying the set then would remove every peer's series, and a real outage
//! would look like the peers were simply gone. A peer that truly left is dropped at the first
//! successful answer that no longer lists it.
//!
//! Scale: every agent resolves the whole Service each round, so the DNS load grows with the
//! square of the node count; large clusters should use `kubernetes` discovery (one watch per
//! agent, events only on change).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{publish, DiscoveryError, PeerCandidate, PeerSet};
use crate::probe::ResolveError;

/// Resolution is not repeated more often than this, whatever the probe interval.
pub const MIN_REFRESH: Duration = Duration::from_secs(1);

/// A resolution is abandoned after this long, or the refresh period if shorter.
pub const MAX_LOOKUP_TIME: Duration = Duration::from_secs(5);

/// Resolves `name` once, with a deadline. The addresses are sorted and without duplicates.
pub async fn resolve(
    name: &str,
    port: u16,
    timeout: Duration,
) -> Result<Vec<SocketAddr>, DiscoveryError> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut addresses = crate::probe::resolve(name, port, deadline)
        .await
        .map_err(|e| match e {
            ResolveError::Timeout { .. } => DiscoveryError::DnsTimeout {
                name: name.to_owned(),
                timeout,
            },
            ResolveError::Lookup { source, .. } => DiscoveryError::DnsLookup {
                name: name.to_owned(),
                source,
            },
            ResolveError::Empty { .. } => DiscoveryError::DnsEmpty {
                name: name.to_owned(),
            },
        })?;
    addresses.sort_unstable();
    Ok(addresses)
}

/// The set for a fresh answer: exactly the resolved addresses. One already in `previous` keeps
/// its `eligible_since`; a new one is eligible from `now`.
pub fn merge(previous: &PeerSet, resolved: &[SocketAddr], now: Instant) -> PeerSet {
    resolved
        .iter()
        .map(|addr| {
            let address = addr.to_string();
            let eligible_since = previous
                .get(&address)
                .map_or(now, |known| known.eligible_since);
            (
                address.clone(),
                PeerCandidate {
                    address,
                    node_name: None,
                    eligible_since,
                },
            )
        })
        .collect()
}

/// Resolves `name` at once and then every `refresh` (at least [`MIN_REFRESH`]), publishing
/// each new answer on `tx`, until `shutdown` is cancelled or every
/// receiver is dropped. Failures keep the last good set and are logged: a warning when the
/// name stops resolving, and a note when it resolves again.
pub async fn watch_dns(
    name: String,
    port: u16,
    refresh: Duration,
    tx: watch::Sender<PeerSet>,
    shutdown: CancellationToken,
) {
    let refresh = refresh.max(MIN_REFRESH);
    let timeout = refresh.min(MAX_LOOKUP_TIME);
    let mut ticker = tokio::time::interval(refresh);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing: Option<&'static str> = None;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.cancelled() => break,
            _ = tx.closed() => break,
        }
        let result = tokio::select! {
            r = resolve(&name, port, timeout) => r,
            _ = shutdown.cancelled() => break,
        };
        match result {
            Ok(addresses) => {
                if failing.take().is_some() {
                    tracing::info!(%name, peers = addresses.len(), "DNS discovery resolves again");
                }
                let new = merge(&tx.borrow(), &addresses, Instant::now());
                publish(&tx, new, "dns");
            }
            Err(error) => {
                let kind = error.kind();
                if failing != Some(kind) {
                    tracing::warn!(
                        %name,
                        %error,
                        kept = tx.borrow().len(),
                        "DNS discovery failed; keeping the last known peers"
                    );
                } else {
                    tracing::debug!(%name, %error, "DNS discovery still failing");
                }
                failing = Some(kind);
            }
        }
    }
    tracing::debug!(%name, "DNS discovery stopped");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(list: &[&str]) -> Vec<SocketAddr> {
        list.iter().map(|a| a.parse().unwrap()).collect()
    }

    #[test]
    fn merge_replaces_the_set_and_keeps_known_peers_ages() {
        let t0 = Instant::now();
        let first = merge(
            &PeerSet::new(),
            &addrs(&["198.18.0.1:9476", "198.18.0.2:9476"]),
            t0,
        );
        assert_eq!(first.len(), 2);
        assert!(first.values().all(|p| p.eligible_since == t0));

        let t1 = t0 + Duration::from_secs(5);
        let second = merge(&first, &addrs(&["198.18.0.2:9476", "[fd00::3]:9476"]), t1);
        assert_eq!(
            second.keys().cloned().collect::<Vec<_>>(),
            ["198.18.0.2:9476", "[fd00::3]:9476"],
            "the vanished address left, IPv6 in brackets"
        );
        assert_eq!(second["198.18.0.2:9476"].eligible_since, t0);
        assert_eq!(second["[fd00::3]:9476"].eligible_since, t1);
    }

    #[tokio::test]
    async fn an_ip_literal_resolves_without_a_resolver() {
        let found = resolve("127.0.0.1", 9476, Duration::from_secs(2))
            .await
            .unwrap();
        assert_eq!(found, addrs(&["127.0.0.1:9476"]));
    }

    #[tokio::test]
    async fn a_resolved_set_is_published_and_shutdown_stops_the_loop() {
        let (tx, mut rx) = watch::channel(PeerSet::new());
        let stop = CancellationToken::new();
        let task = tokio::spawn(watch_dns(
            "127.0.0.1".into(),
            9476,
            Duration::from_secs(1),
            tx,
            stop.clone(),
        ));
        tokio::time::timeout(Duration::from_secs(5), rx.changed())
            .await
            .expect("published within 5 s")
            .unwrap();
        assert_eq!(
            rx.borrow().keys().cloned().collect::<Vec<_>>(),
            ["127.0.0.1:9476"]
        );
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("stops within 5 s")
            .unwrap();
    }
}

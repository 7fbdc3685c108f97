//! The hello an agent serves at `/v1/hello` and fetches from each peer: who it is, and where
//! its fabric endpoints are, so the fabric probe can go on when the IP path later fails.

use std::sync::{Arc, RwLock};

use fabric::EndpointAddress;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::fabric_ping::Published;

/// Largest hello body accepted from a peer.
pub const MAX_HELLO_BYTES: usize = 64 * 1024;
const MAX_ENDPOINTS: usize = 32;
const MAX_ADDRESS_HEX: usize = 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Kubernetes node name (the `peer` label on the other side).
    pub node_name: String,
    pub agent_version: String,
    /// Random per agent start: tells a restarted agent from a long-running one.
    pub instance_id: u64,
    pub fabric: HelloFabric,
    /// Instance topology (zone, subnet, security groups, placement group), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topology: Option<crate::topology::Topology>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HelloFabric {
    /// The provider this agent was asked to use (`none` when the fabric is off).
    pub provider: String,
    /// True when at least one endpoint is open.
    pub available: bool,
    /// Why the fabric is not available, when it is not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub endpoints: Vec<HelloEndpoint>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HelloEndpoint {
    /// The libfabric domain (device).
    pub domain: String,
    /// Raw fabric address, hex ([`EndpointAddress::to_hex`]).
    pub address: String,
    /// The provider's printable form.
    pub display: String,
}

impl HelloEndpoint {
    /// How a local fabric engine is published to peers.
    pub fn of(pinger: &crate::fabric_ping::FabricPinger) -> HelloEndpoint {
        HelloEndpoint {
            domain: pinger.domain().to_owned(),
            address: pinger.address().to_hex(),
            display: pinger.address_display().to_owned(),
        }
    }
}

/// Keeps `hello`'s fabric endpoints equal to what `pingers` publish, for as long as they
/// run: an engine that opened its endpoint anew (its health watch) has a new address, and
/// peers learn it from the hello. Spawn it next to the server that serves the hello.
pub fn follow_fabric_addresses(
    hello: Arc<RwLock<Hello>>,
    pingers: &[crate::fabric_ping::FabricPinger],
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let changes = pingers.iter().map(|p| p.address_changes()).collect();
    follow(hello, changes)
}

/// Endpoint `i` of the hello follows `changes[i]`, until every engine has stopped.
async fn follow(hello: Arc<RwLock<Hello>>, mut changes: Vec<watch::Receiver<Published>>) {
    loop {
        if changes.is_empty() {
            return;
        }
        let waits = changes.iter_mut().map(|c| Box::pin(c.changed()));
        let (changed, index, _) = futures::future::select_all(waits).await;
        if changed.is_err() {
            // That engine is gone; its entry stays as it was.
            changes.remove(index);
            continue;
        }
        let published = changes[index].borrow_and_update().clone();
        let mut hello = hello.write().unwrap_or_else(|p| p.into_inner());
        if let Some(endpoint) = hello.fabric.endpoints.get_mut(index) {
            endpoint.address = published.address.to_hex();
            endpoint.display = published.display;
        }
    }
}

/// Why a peer's hello was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HelloError {
    /// the body is not a hello
    #[error("not an efaprobe hello: {0}")]
    Malformed(String),
    /// a field is outside its bounds
    #[error("hello field {field} is invalid: {detail}")]
    Invalid { field: &'static str, detail: String },
}

impl Hello {
    /// Parses and validates a peer's hello. Everything in it is untrusted.
    pub fn parse(body: &[u8]) -> Result<Hello, HelloError> {
        if body.len() > MAX_HELLO_BYTES {
            return Err(HelloError::Malformed(format!(
                "{} bytes, more than {MAX_HELLO_BYTES}",
                body.len()
            )));
        }
        let hello: Hello =
            serde_json::from_slice(body).map_err(|e| HelloError::Malformed(e.to_string()))?;
        hello.validate()?;
        Ok(hello)
    }

    fn validate(&self) -> Result<(), HelloError> {
        let invalid = |field, detail: String| Err(HelloError::Invalid { field, detail });
        if !is_node_name(&self.node_name) {
            return invalid(
                "node_name",
                format!(
                    "{:?} is not a Kubernetes node name",
                    truncate(&self.node_name)
                ),
            );
        }
        if self.agent_version.len() > 64 {
            return invalid("agent_version", "longer than 64 bytes".into());
        }
        if self.fabric.provider.len() > 64 {
            return invalid("fabric.provider", "longer than 64 bytes".into());
        }
        if self.fabric.endpoints.len() > MAX_ENDPOINTS {
            return invalid(
                "fabric.endpoints",
                format!(
                    "{} endpoints, more than {MAX_ENDPOINTS}",
                    self.fabric.endpoints.len()
                ),
            );
        }
        if let Some(t) = &self.topology {
            if let Err(e) = t.validate() {
                return invalid("topology", e);
            }
        }
        for ep in &self.fabric.endpoints {
            if ep.address.len() > MAX_ADDRESS_HEX || EndpointAddress::from_hex(&ep.address).is_err()
            {
                return invalid(
                    "fabric.endpoints.address",
                    "not a hex fabric address".into(),
                );
            }
            if ep.domain.len() > 128 || ep.display.len() > 256 {
                return invalid("fabric.endpoints", "domain or display too long".into());
            }
        }
        Ok(())
    }

    /// The raw fabric address of endpoint `index`, if the peer has that many.
    pub fn fabric_address(&self, index: usize) -> Option<Vec<u8>> {
        let ep = self.fabric.endpoints.get(index)?;
        EndpointAddress::from_hex(&ep.address).ok().map(Vec::from)
    }
}

/// RFC 1123 subdomain, as Kubernetes requires of node names.
pub fn is_node_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

fn truncate(s: &str) -> String {
    s.chars().take(80).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello() -> Hello {
        Hello {
            node_name: "gpu-node-1.ec2.internal".into(),
            agent_version: "0.1.0".into(),
            instance_id: 42,
            fabric: HelloFabric {
                provider: "efa".into(),
                available: true,
                error: None,
                endpoints: vec![HelloEndpoint {
                    domain: "rdmap0s6-rdm".into(),
                    address: "fe80000000000000".into(),
                    display: "fi_addr_efa://[fe80::]:0:0".into(),
                }],
            },
            topology: None,
        }
    }

    #[tokio::test]
    async fn the_hello_follows_a_reopened_endpoints_new_address() {
        let hello = Arc::new(RwLock::new(hello()));
        let first = |h: &Arc<RwLock<Hello>>| h.read().unwrap().fabric.endpoints[0].clone();
        let published = |byte: u8| Published {
            address: EndpointAddress::new(vec![byte; 4]),
            display: format!("display {byte}"),
        };
        let (tx, rx) = watch::channel(published(1));
        let following = tokio::spawn(follow(hello.clone(), vec![rx]));
        tx.send_replace(published(2));
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        while first(&hello).address != "02020202" && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        assert_eq!(first(&hello).address, "02020202");
        assert_eq!(first(&hello).display, "display 2");
        assert_eq!(first(&hello).domain, "rdmap0s6-rdm");
        // The engine gone: the follower ends.
        drop(tx);
        tokio::time::timeout(std::time::Duration::from_secs(5), following)
            .await
            .expect("follower ended")
            .unwrap();
    }

    #[test]
    fn round_trip() {
        let body = serde_json::to_vec(&hello()).unwrap();
        assert_eq!(Hello::parse(&body).unwrap(), hello());
        assert_eq!(hello().fabric_address(0).unwrap()[0], 0xfe);
        assert_eq!(hello().fabric_address(1), None);
    }

    #[test]
    fn hostile_hellos_are_refused() {
        assert!(Hello::parse(b"<html>").is_err());
        assert!(Hello::parse(&vec![b' '; MAX_HELLO_BYTES + 1]).is_err());
        let mut h = hello();
        h.node_name = "Not_A_Node".into();
        assert!(matches!(
            Hello::parse(&serde_json::to_vec(&h).unwrap()),
            Err(HelloError::Invalid {
                field: "node_name",
                ..
            })
        ));
        let mut h = hello();
        h.fabric.endpoints[0].address = "xyz".into();
        assert!(Hello::parse(&serde_json::to_vec(&h).unwrap()).is_err());
        let mut h = hello();
        h.fabric.endpoints = vec![h.fabric.endpoints[0].clone(); MAX_ENDPOINTS + 1];
        assert!(Hello::parse(&serde_json::to_vec(&h).unwrap()).is_err());
    }

    #[test]
    fn node_names() {
        assert!(is_node_name("ip-10-0-1-12.ec2.internal"));
        assert!(!is_node_name(""));
        assert!(!is_node_name("a..b"));
        assert!(!is_node_name("-a"));
        assert!(!is_node_name(&"a".repeat(254)));
    }
}

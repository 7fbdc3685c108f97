//! The hello an agent serves at `/v1/hello` and fetches from each peer: who it is, and where
//! its fabric endpoints are, so the fabric probe can go on when the IP path later fails.

use std::sync::{Arc, RwLock};

use fabric::EndpointAddress;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::fabric_ping::Published;

use crate::dns_name::{is_dns_name, NameRules};
use crate::untrusted_text::{make_printable, printable};

/// Largest hello body accepted from a peer.
pub const MAX_HELLO_BYTES: usize = 64 * 1024;
/// Most fabric endpoints (rails) a hello lists: a p5.48xlarge has 32 EFA devices.
pub const MAX_ENDPOINTS: usize = 32;
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
    /// What this agent does to its own Node (condition, Events, startup taint), for people
    /// and tools reading `/v1/hello`. Never taken from a peer: it is not parsed.
    #[serde(default, skip_deserializing, skip_serializing_if = "Option::is_none")]
    pub node_actions: Option<NodeActionsReport>,
}

/// The node actions' latest outcome (README: Acting on what it sees).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct NodeActionsReport {
    /// `EFAFabricReady` as last judged (`True`, `False`, `Unknown`); absent while off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub condition_status: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub condition_reason: Option<String>,
    /// Whether the Node carries the status and reason judged (false while a write fails).
    pub condition_written: bool,
    /// The startup gate: `waiting`, `removed`, `absent` (the node did not carry the taint),
    /// `off`.
    pub startup_taint: String,
    /// Why the gate waits (or that it removed the taint unverified).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub startup_taint_detail: Option<String>,
    /// Actions the API server refused with 403 (their RBAC is missing): `condition`,
    /// `events`, `taint`.
    pub forbidden: Vec<String>,
    /// The last failed write, in words.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
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
    /// The rail: this endpoint's position in the list (rail `i` is probed from the peers'
    /// rail `i`). Hellos of agents before rails omit it.
    #[serde(default)]
    pub rail: u16,
    /// The MAC of the network interface the rail's device sits on, where the system says:
    /// it names the rail's ENI (subnet, security groups) in the topology.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// The libfabric domain (device).
    pub domain: String,
    /// Raw fabric address, hex ([`EndpointAddress::to_hex`]).
    pub address: String,
    /// The provider's printable form.
    pub display: String,
}

impl HelloEndpoint {
    /// How a local fabric engine, rail `rail` of this node, is published to peers.
    pub fn of(
        rail: u16,
        pinger: &crate::fabric_ping::FabricPinger,
        mac: Option<String>,
    ) -> HelloEndpoint {
        HelloEndpoint {
            rail,
            mac,
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

impl HelloError {
    /// The same error with its peer-supplied text made printable.
    fn into_printable(self) -> HelloError {
        match self {
            HelloError::Malformed(detail) => HelloError::Malformed(printable(&detail).into_owned()),
            HelloError::Invalid { field, detail } => HelloError::Invalid {
                field,
                detail: printable(&detail).into_owned(),
            },
        }
    }
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
        let mut hello: Hello = serde_json::from_slice(body)
            .map_err(|e| HelloError::Malformed(printable(&e.to_string()).into_owned()))?;
        hello.validate().map_err(HelloError::into_printable)?;
        hello.make_printable();
        Ok(hello)
    }

    /// Replaces control characters in every free-text field: a peer's strings are shown on
    /// the status page and in `/v1/peers`, and logged. (The node name and the topology are
    /// validated to plain characters instead.)
    fn make_printable(&mut self) {
        make_printable(&mut self.agent_version);
        make_printable(&mut self.fabric.provider);
        if let Some(error) = &mut self.fabric.error {
            make_printable(error);
        }
        for ep in &mut self.fabric.endpoints {
            make_printable(&mut ep.domain);
            make_printable(&mut ep.display);
        }
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
        for (position, ep) in self.fabric.endpoints.iter().enumerate() {
            // The rail is the position; 0 is what hellos from before rails carry.
            if usize::from(ep.rail) != position && ep.rail != 0 {
                return invalid(
                    "fabric.endpoints.rail",
                    format!("rail {} listed at position {position}", ep.rail),
                );
            }
            if let Some(mac) = &ep.mac {
                crate::topology::check_mac("fabric.endpoints.mac", mac).map_err(|detail| {
                    HelloError::Invalid {
                        field: "fabric.endpoints.mac",
                        detail,
                    }
                })?;
            }
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
    is_dns_name(s, NameRules::KubernetesName)
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
                    rail: 0,
                    mac: Some("0e:00:00:00:00:01".into()),
                    domain: "rdmap0s6-rdm".into(),
                    address: "fe80000000000000".into(),
                    display: "fi_addr_efa://[fe80::]:0:0".into(),
                }],
            },
            topology: None,
            node_actions: None,
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
        // A rail listed out of place, or a MAC that is none, is refused.
        let mut h = hello();
        let mut second = h.fabric.endpoints[0].clone();
        second.rail = 2;
        h.fabric.endpoints.push(second.clone());
        assert!(matches!(
            Hello::parse(&serde_json::to_vec(&h).unwrap()),
            Err(HelloError::Invalid {
                field: "fabric.endpoints.rail",
                ..
            })
        ));
        second.rail = 1;
        h.fabric.endpoints[1] = second;
        assert!(Hello::parse(&serde_json::to_vec(&h).unwrap()).is_ok());
        h.fabric.endpoints[1].mac = Some("0E:00:00:00:00:02\n".into());
        assert!(matches!(
            Hello::parse(&serde_json::to_vec(&h).unwrap()),
            Err(HelloError::Invalid {
                field: "fabric.endpoints.mac",
                ..
            })
        ));
        let mut h = hello();
        h.fabric.endpoints = vec![h.fabric.endpoints[0].clone(); MAX_ENDPOINTS + 1];
        assert!(Hello::parse(&serde_json::to_vec(&h).unwrap()).is_err());
    }

    /// Every string a person or a log sees, in a hello serialised back.
    fn strings(value: &serde_json::Value, out: &mut Vec<String>) {
        match value {
            serde_json::Value::String(s) => out.push(s.clone()),
            serde_json::Value::Array(a) => a.iter().for_each(|v| strings(v, out)),
            serde_json::Value::Object(o) => o.values().for_each(|v| strings(v, out)),
            _ => {}
        }
    }

    #[test]
    fn control_characters_from_a_peer_are_replaced() {
        let dirty = r"x\u0000y\u001b[2Jz\n\u009b\u202e";
        let body = format!(
            r#"{{"node_name":"gpu-node-1","agent_version":"{dirty}","instance_id":1,
            "fabric":{{"provider":"{dirty}","available":false,"error":"{dirty}",
            "endpoints":[{{"domain":"{dirty}","address":"fe80","display":"{dirty}"}}]}}}}"#
        );
        let hello = Hello::parse(body.as_bytes()).unwrap();
        let mut seen = Vec::new();
        strings(&serde_json::to_value(&hello).unwrap(), &mut seen);
        let clean = "x\u{FFFD}y\u{FFFD}[2Jz\u{FFFD}\u{FFFD}\u{FFFD}";
        assert_eq!(seen.iter().filter(|s| *s == clean).count(), 5, "{seen:?}");
        assert!(
            seen.iter().all(|s| !s.chars().any(char::is_control)),
            "{seen:?}"
        );

        // Where the hello is refused instead, the error quotes the peer printably.
        for body in [
            format!(
                r#"{{"node_name":"a{dirty}","agent_version":"1","instance_id":1,"fabric":{{"provider":"efa","available":false,"endpoints":[]}}}}"#
            ),
            format!(
                r#"{{"node_name":"a","agent_version":"1","instance_id":1,"fabric":{{"provider":"efa","available":false,"endpoints":[]}},
               "topology":{{"instance_id":"i-1","instance_type":"t","availability_zone":"z","placement_group":"{dirty}","primary_mac":"0e:00:00:00:00:01","interfaces":[]}}}}"#
            ),
            format!(r#"{{"node_name":"a","agent_version":"1","instance_id":"{dirty}"}}"#),
            format!(r#"{{"{dirty}":1}}"#),
        ] {
            let error = Hello::parse(body.as_bytes()).unwrap_err().to_string();
            assert!(!error.chars().any(char::is_control), "{error:?}");
        }
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

//! Reading the topology from instance metadata, IMDSv2: a token from `PUT /latest/api/token`,
//! then GETs that carry it.
//!
//! One deadline bounds everything (name resolution, every connect, every exchange), so off
//! AWS the agent's start waits no longer than the timeout it was given. The reads that do
//! not depend on each other run concurrently: the instance items and the list of
//! interfaces together, then a few interfaces at a time. Each request has its own
//! connection (IMDS closes idle ones quickly anyway) and a body of at most 4 KiB.
//!
//! Where it stops says why, and [`TopologyError`] says it in words an operator can act on:
//! no connection means not on EC2 or IMDS blocked; a connection whose token `PUT` is never
//! answered is the IMDSv2 hop-limit pitfall of pods outside the host network; a 401 is a
//! refused token.
//!
//! No request is sent without a token: IMDSv1 reads are counted by EC2
//! (`MetadataNoToken`) and security teams hunt down whoever makes them.

use std::net::SocketAddr;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, StatusCode};
use tokio::time::Instant;

use super::endpoint::{parse_endpoint, ImdsEndpoint, ImdsHost};
use super::{NetworkInterface, Topology, MAX_INTERFACES};
use crate::probe::http::{http_request, HttpResponse};
use crate::probe::tcp::connect_tcp;
use crate::probe::{FailureReason, ProbeFailure, ResolveError};
use crate::units::format_duration;

/// Largest answer accepted for any one item; the largest real one (the list of interfaces)
/// is 64 × 18 bytes.
const MAX_BODY_BYTES: usize = 4 * 1024;
/// Interfaces read at once (four requests each): bounds the connections open to IMDS,
/// which throttles clients that open too many.
const INTERFACES_IN_FLIGHT: usize = 4;
/// Lifetime asked for the token, in seconds: the longest IMDS allows. It is used once.
const TOKEN_TTL_SECONDS: &str = "21600";
const TOKEN_PATH: &str = "/latest/api/token";
const META: &str = "/latest/meta-data/";
const TTL_HEADER: HeaderName = HeaderName::from_static("x-aws-ec2-metadata-token-ttl-seconds");
const TOKEN_HEADER: HeaderName = HeaderName::from_static("x-aws-ec2-metadata-token");

/// Why there is no topology.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopologyError {
    /// The endpoint is not `http://HOST[:PORT]`.
    #[error("instance metadata endpoint {0}")]
    InvalidEndpoint(String),
    /// Nothing answers a connection at the endpoint (or its name does not resolve).
    #[error(
        "no instance metadata at {endpoint} ({detail}): not on EC2, or instance metadata is \
         blocked from here (a NetworkPolicy, a firewall, or IMDS disabled on the instance)"
    )]
    Unreachable { endpoint: String, detail: String },
    /// Connected, but the token `PUT` got no answer.
    #[error(
        "instance metadata at {endpoint} accepted a connection but did not answer the IMDSv2 \
         token PUT within the {timeout} limit: either IMDS is very slow, or this is the IMDSv2 \
         hop-limit pitfall: a pod not on the host network is one hop further away than the \
         instance's metadata PUT response hop limit of 1 lets the answer travel (raise it to \
         2 with `aws ec2 modify-instance-metadata-options --http-put-response-hop-limit 2`, \
         or run the agent with hostNetwork: true)"
    )]
    TokenNoAnswer { endpoint: String, timeout: String },
    /// The token `PUT` was answered with an error status.
    #[error("instance metadata at {endpoint} answered the IMDSv2 token PUT with HTTP {status}")]
    TokenRejected { endpoint: String, status: u16 },
    /// A read with the token was answered 401.
    #[error(
        "instance metadata at {endpoint} refused the IMDSv2 token it had just issued (HTTP 401 \
         for {path})"
    )]
    TokenRefused { endpoint: String, path: String },
    /// The overall timeout ran out during the reads.
    #[error("instance metadata at {endpoint} did not answer {path} within {timeout}")]
    Timeout {
        endpoint: String,
        path: String,
        timeout: String,
    },
    /// A read failed after the token was issued (a reset, an answer that is not HTTP).
    #[error("instance metadata at {endpoint}: {detail}")]
    Request { endpoint: String, detail: String },
    /// A read was answered with a status other than 200 (or 404 for an optional item).
    #[error("instance metadata at {endpoint} answered {path} with HTTP {status}")]
    Status {
        endpoint: String,
        path: String,
        status: u16,
    },
    /// The answers do not make a valid topology.
    #[error("instance metadata at {endpoint} describes an invalid topology: {detail}")]
    Invalid { endpoint: String, detail: String },
}

/// Reads this instance's topology from the IMDS at `endpoint` (`http://HOST[:PORT]`), all
/// within `timeout`.
pub async fn fetch_topology(endpoint: &str, timeout: Duration) -> Result<Topology, TopologyError> {
    let endpoint = parse_endpoint(endpoint).map_err(TopologyError::InvalidEndpoint)?;
    fetch_topology_from(&endpoint, timeout).await
}

/// [`fetch_topology`] for an endpoint already parsed (from the configuration).
pub async fn fetch_topology_from(
    endpoint: &ImdsEndpoint,
    timeout: Duration,
) -> Result<Topology, TopologyError> {
    let deadline = Instant::now() + timeout;
    let imds = Imds {
        endpoint: endpoint.to_string(),
        authority: endpoint.authority(),
        addr: resolve(endpoint, deadline).await?,
        deadline,
        timeout,
        token: HeaderValue::from_static(""),
    };
    let imds = imds.with_token().await?;
    // Every step already ends at the deadline; this only makes the bound plain to see.
    match tokio::time::timeout_at(deadline, imds.read_topology()).await {
        Ok(result) => result,
        Err(_elapsed) => Err(imds.timeout("the topology")),
    }
}

async fn resolve(endpoint: &ImdsEndpoint, deadline: Instant) -> Result<SocketAddr, TopologyError> {
    let name = match endpoint.host() {
        ImdsHost::Ip(ip) => return Ok(SocketAddr::new(*ip, endpoint.port())),
        ImdsHost::Name(name) => name,
    };
    let unreachable = |detail: String| TopologyError::Unreachable {
        endpoint: endpoint.to_string(),
        detail,
    };
    match crate::probe::resolve(name, endpoint.port(), deadline).await {
        Err(ResolveError::Timeout { .. }) => {
            Err(unreachable(format!("resolving {name} timed out")))
        }
        Err(ResolveError::Lookup { source, .. }) => {
            Err(unreachable(format!("cannot resolve {name}: {source}")))
        }
        Err(ResolveError::Empty { .. }) => Err(unreachable(format!("{name} has no address"))),
        Ok(addrs) => Ok(addrs[0]),
    }
}

/// One fetch's connection details and token.
struct Imds {
    /// For messages: `http://host:port`.
    endpoint: String,
    authority: String,
    addr: SocketAddr,
    deadline: Instant,
    timeout: Duration,
    token: HeaderValue,
}

/// Where a request stopped.
enum Stopped {
    /// No connection: nothing of the exchange happened.
    Connect(ProbeFailure),
    /// Connected, then the exchange failed.
    Exchange(ProbeFailure),
}

impl Imds {
    /// `PUT /latest/api/token`: the one step whose failure has its own meanings.
    async fn with_token(mut self) -> Result<Imds, TopologyError> {
        let mut headers = HeaderMap::new();
        headers.insert(TTL_HEADER, HeaderValue::from_static(TOKEN_TTL_SECONDS));
        let response = match self.request(Method::PUT, TOKEN_PATH, headers).await {
            Ok(response) => response,
            Err(Stopped::Connect(failure)) => {
                return Err(TopologyError::Unreachable {
                    endpoint: self.endpoint,
                    detail: failure.message,
                })
            }
            Err(Stopped::Exchange(failure)) if failure.reason == FailureReason::Timeout => {
                return Err(TopologyError::TokenNoAnswer {
                    endpoint: self.endpoint,
                    timeout: format_duration(self.timeout),
                })
            }
            Err(Stopped::Exchange(failure)) => return Err(self.request_failed(failure)),
        };
        if response.status != StatusCode::OK {
            return Err(TopologyError::TokenRejected {
                endpoint: self.endpoint,
                status: response.status.as_u16(),
            });
        }
        let token = std::str::from_utf8(&response.body)
            .ok()
            .map(str::trim)
            .and_then(|token| HeaderValue::from_str(token).ok())
            .filter(|token| !token.is_empty());
        match token {
            Some(token) => {
                self.token = token;
                Ok(self)
            }
            None => Err(TopologyError::Invalid {
                endpoint: self.endpoint,
                detail: "the IMDSv2 token is empty or not printable ASCII".into(),
            }),
        }
    }

    async fn read_topology(&self) -> Result<Topology, TopologyError> {
        let (
            instance_id,
            instance_type,
            availability_zone,
            availability_zone_id,
            placement_group,
            primary_mac,
            macs,
        ) = tokio::try_join!(
            self.required("instance-id"),
            self.required("instance-type"),
            self.required("placement/availability-zone"),
            self.optional("placement/availability-zone-id"),
            self.optional("placement/group-name"),
            self.required("mac"),
            self.required("network/interfaces/macs/"),
        )?;
        let primary_mac = primary_mac.to_ascii_lowercase();

        let mut macs: Vec<String> = lines(&macs)
            .map(|mac| mac.trim_end_matches('/').to_ascii_lowercase())
            .take(MAX_INTERFACES + 1)
            .collect();
        if !macs.contains(&primary_mac) {
            macs.push(primary_mac.clone());
        }
        macs.sort();
        macs.dedup();
        if macs.len() > MAX_INTERFACES {
            return Err(self.invalid(format!("more than {MAX_INTERFACES} interfaces")));
        }
        let interfaces: Vec<NetworkInterface> = futures::stream::iter(macs)
            .map(|mac| self.read_interface(mac))
            .buffered(INTERFACES_IN_FLIGHT)
            .try_collect()
            .await?;

        let topology = Topology {
            instance_id,
            instance_type,
            availability_zone,
            availability_zone_id,
            placement_group,
            primary_mac,
            interfaces,
        };
        topology.validate().map_err(|detail| self.invalid(detail))?;
        Ok(topology)
    }

    async fn read_interface(&self, mac: String) -> Result<NetworkInterface, TopologyError> {
        // The MAC is checked before it goes into a path.
        super::check_mac("network/interfaces/macs/", &mac).map_err(|e| self.invalid(e))?;
        let item = |name: &str| format!("network/interfaces/macs/{mac}/{name}");
        let (subnet, vpc, groups, cidr) = (
            item("subnet-id"),
            item("vpc-id"),
            item("security-group-ids"),
            item("subnet-ipv4-cidr-block"),
        );
        let (subnet_id, vpc_id, security_groups, subnet_cidr) = tokio::try_join!(
            self.required(&subnet),
            self.required(&vpc),
            self.optional(&groups),
            self.optional(&cidr),
        )?;
        Ok(NetworkInterface {
            security_group_ids: lines(security_groups.as_deref().unwrap_or(""))
                .map(str::to_owned)
                .take(super::MAX_SECURITY_GROUPS + 1)
                .collect(),
            mac,
            subnet_id,
            vpc_id,
            subnet_cidr,
        })
    }

    /// An item that must be there.
    async fn required(&self, item: &str) -> Result<String, TopologyError> {
        let path = format!("{META}{item}");
        self.optional(item).await?.ok_or(TopologyError::Status {
            endpoint: self.endpoint.clone(),
            path,
            status: StatusCode::NOT_FOUND.as_u16(),
        })
    }

    /// An item whose absence (404) means something: no placement group, no IPv4 subnet.
    async fn optional(&self, item: &str) -> Result<Option<String>, TopologyError> {
        let path = format!("{META}{item}");
        let mut headers = HeaderMap::new();
        headers.insert(TOKEN_HEADER, self.token.clone());
        let response = match self.request(Method::GET, &path, headers).await {
            Ok(response) => response,
            Err(Stopped::Connect(failure) | Stopped::Exchange(failure))
                if failure.reason == FailureReason::Timeout =>
            {
                return Err(self.timeout(&path))
            }
            Err(Stopped::Connect(failure) | Stopped::Exchange(failure)) => {
                return Err(self.request_failed(failure))
            }
        };
        match response.status {
            StatusCode::OK => {}
            StatusCode::NOT_FOUND => return Ok(None),
            StatusCode::UNAUTHORIZED => {
                return Err(TopologyError::TokenRefused {
                    endpoint: self.endpoint.clone(),
                    path,
                })
            }
            status => {
                return Err(TopologyError::Status {
                    endpoint: self.endpoint.clone(),
                    path,
                    status: status.as_u16(),
                })
            }
        }
        match std::str::from_utf8(&response.body) {
            Ok(text) => Ok(Some(text.trim().to_owned())),
            Err(_) => Err(self.invalid(format!("{path} is not UTF-8"))),
        }
    }

    async fn request(
        &self,
        method: Method,
        path: &str,
        headers: HeaderMap,
    ) -> Result<HttpResponse, Stopped> {
        let connection = connect_tcp(self.addr, self.deadline)
            .await
            .map_err(Stopped::Connect)?;
        http_request(
            connection.stream,
            method,
            &self.authority,
            path,
            headers,
            MAX_BODY_BYTES,
            self.deadline,
        )
        .await
        .map_err(Stopped::Exchange)
    }

    fn timeout(&self, path: &str) -> TopologyError {
        TopologyError::Timeout {
            endpoint: self.endpoint.clone(),
            path: path.to_owned(),
            timeout: format_duration(self.timeout),
        }
    }

    fn request_failed(&self, failure: ProbeFailure) -> TopologyError {
        TopologyError::Request {
            endpoint: self.endpoint.clone(),
            detail: failure.message,
        }
    }

    fn invalid(&self, detail: String) -> TopologyError {
        TopologyError::Invalid {
            endpoint: self.endpoint.clone(),
            detail,
        }
    }
}

/// The non-empty lines of a listing, trimmed.
fn lines(text: &str) -> impl Iterator<Item = &str> {
    text.lines().map(str::trim).filter(|line| !line.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_bad_endpoint_is_refused_before_any_traffic() {
        // Loopback even so: were parsing wrong, nothing would leave the host.
        let error = fetch_topology("127.0.0.1:1", Duration::from_millis(10))
            .await
            .unwrap_err();
        assert!(
            matches!(&error, TopologyError::InvalidEndpoint(why) if why.contains("http://")),
            "{error}"
        );
    }

    #[test]
    fn listings_skip_blank_lines() {
        let found: Vec<&str> = lines("0e:00:00:00:00:01/\r\n\n 0e:00:00:00:00:02/ \n").collect();
        assert_eq!(found, ["0e:00:00:00:00:01/", "0e:00:00:00:00:02/"]);
    }

    #[test]
    fn the_hop_limit_message_names_the_fix() {
        let error = TopologyError::TokenNoAnswer {
            endpoint: "http://169.254.169.254".into(),
            timeout: "2s".into(),
        }
        .to_string();
        for needle in [
            "hop limit",
            "hostNetwork",
            "--http-put-response-hop-limit 2",
        ] {
            assert!(error.contains(needle), "{needle}: {error}");
        }
    }
}

//! Checking one configured target: resolve its name, then probe every address on its own.
//!
//! A name behind a load balancer or a headless Service has several addresses, and a
//! security-group gap often blocks only some of them (one node group, one zone), so each
//! address gets its own outcome. A name that does not resolve is reported once, as `dns`.
//!
//! Time is bounded per phase: resolution gets at most `timeout`, and each address gets at
//! most `timeout` for connect plus handshake, all addresses in parallel. So
//! [`check_target`] returns within about twice `timeout`, and a slow resolver never eats
//! into the connect budget (which would turn into a misleading `timeout`).

use std::net::SocketAddr;
use std::time::Duration;

use futures::future::join_all;
use serde::{Serialize, Serializer};
use tokio::time::Instant;

use super::http::{http_get, DEFAULT_MAX_BODY_BYTES};
use super::nats::{nats_handshake, NatsServerInfo};
use super::reason::{FailureReason, ProbeFailure};
use super::resolve::ResolveError;
use super::spec::{TargetCheck, TargetSpec};
use super::tcp::{connect_tcp, TcpConnection};
use crate::units::format_duration;

/// Most addresses probed for one name; the rest are counted in
/// [`TargetReport::addresses_skipped`]. Each address becomes a metric series, so a name
/// with hundreds of records must not become hundreds of series.
pub const MAX_ADDRESSES_PER_TARGET: usize = 16;

/// Prometheus answers 200 on this path once it has loaded its storage and configuration.
const PROMETHEUS_READY_PATH: &str = "/-/ready";

/// Longest excerpt of an unexpected HTTP body quoted in a failure message.
const MAX_QUOTED_BODY: usize = 120;

/// A check that passed on one address.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CheckSuccess {
    /// TCP handshake time.
    #[serde(rename = "connect_rtt_ms", serialize_with = "as_millis")]
    pub connect_rtt: Duration,
    /// Connect plus the protocol exchange.
    #[serde(rename = "total_ms", serialize_with = "as_millis")]
    pub total: Duration,
    /// The HTTP status, for `prometheus` and `http` checks.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_status: Option<u16>,
    /// What the NATS server said about itself, for `nats` checks.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nats: Option<NatsServerInfo>,
}

/// The outcome of checking one address of a target.
#[derive(Debug, Clone, PartialEq)]
pub struct AddressReport {
    pub address: SocketAddr,
    pub result: Result<CheckSuccess, ProbeFailure>,
}

impl AddressReport {
    pub fn is_ok(&self) -> bool {
        self.result.is_ok()
    }
}

/// Serialised flat: `{"address", "ok", ...success fields | "reason", "message"}`.
impl Serialize for AddressReport {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Flat<'a> {
            address: &'a SocketAddr,
            ok: bool,
            #[serde(flatten)]
            success: Option<&'a CheckSuccess>,
            #[serde(flatten)]
            failure: Option<&'a ProbeFailure>,
        }
        Flat {
            address: &self.address,
            ok: self.is_ok(),
            success: self.result.as_ref().ok(),
            failure: self.result.as_ref().err(),
        }
        .serialize(serializer)
    }
}

/// The outcome of checking one target: a resolution failure, or one report per address.
#[derive(Debug, Clone, PartialEq)]
pub struct TargetReport {
    pub spec: TargetSpec,
    /// `Err` when the name did not resolve (reason `dns`); then nothing was probed.
    pub addresses: Result<Vec<AddressReport>, ProbeFailure>,
    /// Addresses beyond [`MAX_ADDRESSES_PER_TARGET`], not probed.
    pub addresses_skipped: usize,
}

impl TargetReport {
    /// True when the name resolved and every probed address passed.
    pub fn all_ok(&self) -> bool {
        self.addresses
            .as_ref()
            .is_ok_and(|reports| reports.iter().all(AddressReport::is_ok))
    }
}

/// Serialised as `{"target", "host", "port", "check", "ok", "resolve_failure"?,
/// "addresses", "addresses_skipped"?}`; `addresses` is empty when resolution failed.
impl Serialize for TargetReport {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Flat<'a> {
            target: &'a str,
            host: &'a str,
            port: u16,
            check: &'a TargetCheck,
            ok: bool,
            #[serde(skip_serializing_if = "Option::is_none")]
            resolve_failure: Option<&'a ProbeFailure>,
            addresses: &'a [AddressReport],
            #[serde(skip_serializing_if = "is_zero")]
            addresses_skipped: usize,
        }
        Flat {
            target: &self.spec.name,
            host: &self.spec.host,
            port: self.spec.port,
            check: &self.spec.check,
            ok: self.all_ok(),
            resolve_failure: self.addresses.as_ref().err(),
            addresses: self.addresses.as_deref().unwrap_or(&[]),
            addresses_skipped: self.addresses_skipped,
        }
        .serialize(serializer)
    }
}

/// Checks one target once. Never fails as a call: every problem is in the report.
pub async fn check_target(spec: &TargetSpec, timeout: Duration) -> TargetReport {
    let addresses = match resolve(spec, timeout).await {
        Ok(addresses) => addresses,
        Err(failure) => {
            tracing::debug!(target_name = %spec.name, %failure, "target did not resolve");
            return TargetReport {
                spec: spec.clone(),
                addresses: Err(failure),
                addresses_skipped: 0,
            };
        }
    };
    let addresses_skipped = addresses.len().saturating_sub(MAX_ADDRESSES_PER_TARGET);
    let probes = addresses
        .into_iter()
        .take(MAX_ADDRESSES_PER_TARGET)
        .map(|address| check_address(spec, address, timeout));
    // All in this task: dropping the check cancels every probe and closes its socket.
    let reports = join_all(probes).await;
    for report in &reports {
        if let Err(failure) = &report.result {
            tracing::debug!(target_name = %spec.name, address = %report.address, %failure, "target check failed");
        }
    }
    TargetReport {
        spec: spec.clone(),
        addresses: Ok(reports),
        addresses_skipped,
    }
}

/// Checks several targets at once; the reports come in the order of `specs`.
pub async fn check_targets(specs: &[TargetSpec], timeout: Duration) -> Vec<TargetReport> {
    join_all(specs.iter().map(|spec| check_target(spec, timeout))).await
}

/// The addresses behind the spec's host, in the resolver's order, without duplicates.
async fn resolve(spec: &TargetSpec, timeout: Duration) -> Result<Vec<SocketAddr>, ProbeFailure> {
    let deadline = Instant::now() + timeout;
    super::resolve(&spec.host, spec.port, deadline)
        .await
        .map_err(|e| {
            let detail = match e {
                ResolveError::Timeout { .. } => {
                    format!("no answer within {}", format_duration(timeout))
                }
                ResolveError::Lookup { source, .. } => source.to_string(),
                ResolveError::Empty { .. } => "the name has no addresses".to_owned(),
            };
            ProbeFailure::new(
                FailureReason::Dns,
                format!("resolve {}: {detail}", spec.host),
            )
        })
}

async fn check_address(spec: &TargetSpec, address: SocketAddr, timeout: Duration) -> AddressReport {
    let started = Instant::now();
    // A timeout too large to add (`Duration::MAX`) simply means no deadline worth having.
    let deadline = started
        .checked_add(timeout)
        .unwrap_or_else(|| started + Duration::from_secs(365 * 24 * 3600));
    let result = probe_address(spec, address, started, deadline)
        .await
        .map_err(|mut failure| {
            if failure.reason == FailureReason::Timeout {
                failure.message =
                    format!("{} ({} timeout)", failure.message, format_duration(timeout));
            }
            failure
        });
    AddressReport { address, result }
}

async fn probe_address(
    spec: &TargetSpec,
    address: SocketAddr,
    started: Instant,
    deadline: Instant,
) -> Result<CheckSuccess, ProbeFailure> {
    let TcpConnection {
        mut stream,
        connect_rtt,
    } = connect_tcp(address, deadline).await?;
    // Past the connect, say so: "connected, then wrong answer" and "no connection" need
    // different fixes.
    let after_connect = |mut failure: ProbeFailure| {
        failure.message = format!(
            "{} (TCP connected in {})",
            failure.message,
            format_duration(connect_rtt)
        );
        failure
    };

    let mut success = CheckSuccess {
        connect_rtt,
        total: Duration::ZERO,
        http_status: None,
        nats: None,
    };
    match &spec.check {
        TargetCheck::Tcp => {}
        TargetCheck::Nats => {
            let info = nats_handshake(&mut stream, deadline)
                .await
                .map_err(after_connect)?;
            success.nats = Some(info);
        }
        TargetCheck::Prometheus => {
            let status = get_expecting(spec, stream, PROMETHEUS_READY_PATH, deadline, |status| {
                status == 200
            })
            .await
            .map_err(after_connect)?;
            success.http_status = Some(status);
        }
        TargetCheck::Http { path } => {
            let status = get_expecting(spec, stream, path, deadline, |status| {
                (200..300).contains(&status)
            })
            .await
            .map_err(after_connect)?;
            success.http_status = Some(status);
        }
    }
    success.total = started.elapsed();
    Ok(success)
}

/// `GET path`, failing with `http_status` unless `accept(status)`.
async fn get_expecting(
    spec: &TargetSpec,
    stream: tokio::net::TcpStream,
    path: &str,
    deadline: Instant,
    accept: impl Fn(u16) -> bool,
) -> Result<u16, ProbeFailure> {
    let response = http_get(
        stream,
        &spec.authority(),
        path,
        DEFAULT_MAX_BODY_BYTES,
        deadline,
    )
    .await?;
    let status = response.status.as_u16();
    if accept(status) {
        return Ok(status);
    }
    let mut message = format!("GET {path} answered {}", response.status);
    let body = quote_body(&response.body);
    if !body.is_empty() {
        message.push_str(": ");
        message.push_str(&body);
    }
    Err(ProbeFailure::new(FailureReason::HttpStatus, message))
}

/// The start of a body as one printable line, for a failure message.
fn quote_body(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(4 * MAX_QUOTED_BODY)]);
    let one_line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut printable = one_line.chars().filter(|c| !c.is_control());
    let mut quoted: String = printable.by_ref().take(MAX_QUOTED_BODY).collect();
    if printable.next().is_some() {
        quoted.push_str("...");
    }
    quoted
}

fn as_millis<S: Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    // Microsecond resolution is all a network round trip needs.
    serializer.serialize_f64(duration.as_micros() as f64 / 1000.0)
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(text: &str) -> TargetSpec {
        TargetSpec::parse(text).unwrap()
    }

    #[tokio::test]
    async fn ip_literals_skip_the_resolver() {
        let addresses = resolve(&spec("n=[::1]:4222"), Duration::from_secs(1))
            .await
            .unwrap();
        assert_eq!(addresses, ["[::1]:4222".parse::<SocketAddr>().unwrap()]);
    }

    #[tokio::test]
    async fn join_all_keeps_order() {
        let delays = [30u64, 0, 10];
        let outputs = join_all(delays.iter().map(|&ms| async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            ms
        }))
        .await;
        assert_eq!(outputs, delays);
        assert!(join_all(Vec::<std::future::Ready<()>>::new())
            .await
            .is_empty());
    }

    #[test]
    fn reports_serialise_flat() {
        let ok = AddressReport {
            address: "10.0.0.1:4222".parse().unwrap(),
            result: Ok(CheckSuccess {
                connect_rtt: Duration::from_micros(1500),
                total: Duration::from_millis(3),
                http_status: None,
                nats: Some(NatsServerInfo {
                    server_id: "N1".into(),
                    server_name: String::new(),
                    version: "2.9.10".into(),
                    jetstream: true,
                }),
            }),
        };
        let failed = AddressReport {
            address: "10.0.0.2:4222".parse().unwrap(),
            result: Err(ProbeFailure::new(FailureReason::Timeout, "no answer")),
        };
        let report = TargetReport {
            spec: spec("nats=nats.svc:4222"),
            addresses: Ok(vec![ok, failed]),
            addresses_skipped: 0,
        };
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["target"], "nats");
        assert_eq!(json["check"], "nats");
        assert_eq!(json["ok"], false);
        assert!(json.get("resolve_failure").is_none());
        assert!(json.get("addresses_skipped").is_none());
        let first = &json["addresses"][0];
        assert_eq!(first["address"], "10.0.0.1:4222");
        assert_eq!(first["ok"], true);
        assert_eq!(first["connect_rtt_ms"], 1.5);
        assert_eq!(first["nats"]["jetstream"], true);
        assert!(first.get("reason").is_none());
        let second = &json["addresses"][1];
        assert_eq!(second["ok"], false);
        assert_eq!(second["reason"], "timeout");
        assert_eq!(second["message"], "no answer");

        let unresolved = TargetReport {
            spec: spec("nats=nats.svc:4222"),
            addresses: Err(ProbeFailure::new(FailureReason::Dns, "NXDOMAIN")),
            addresses_skipped: 0,
        };
        assert!(!unresolved.all_ok());
        let json = serde_json::to_value(&unresolved).unwrap();
        assert_eq!(json["resolve_failure"]["reason"], "dns");
        assert_eq!(json["addresses"], serde_json::json!([]));
    }

    #[test]
    fn quoted_bodies_are_one_short_line() {
        assert_eq!(quote_body(b"Service Unavailable\n"), "Service Unavailable");
        assert_eq!(quote_body(b"a\r\n\tb\x1b[0m"), "a b[0m");
        let long = quote_body(&[b'x'; 10_000]);
        assert_eq!(long.len(), MAX_QUOTED_BODY + 3);
        assert_eq!(quote_body(&[0xff, 0xfe]), "\u{fffd}\u{fffd}");
    }
}

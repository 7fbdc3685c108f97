//! Target specifications as operators write them: `NAME=HOST:PORT[:CHECK]`.
//!
//! Parsing happens once, when the configuration is read, so that a typo fails fast with a
//! message naming the bad value instead of showing up later as a failing check.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use hyper::http::uri::PathAndQuery;
use serde::Serialize;

use crate::dns_name::{is_dns_name, NameRules};

/// Well-known ports whose service is assumed when a spec names no check.
const NATS_PORT: u16 = 4222;
const PROMETHEUS_PORT: u16 = 9090;

/// Longest target name: it is a metric label value and a column in `efaprobe check`.
const MAX_NAME_LEN: usize = 63;
/// Longest HTTP path accepted: a check path is a short, fixed endpoint.
const MAX_PATH_LEN: usize = 1024;

/// A target spec that cannot be used, naming the offending value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetSpecError {
    /// The overall shape is wrong (no `=`, no port).
    #[error("target {spec:?}: expected NAME=HOST:PORT[:CHECK]")]
    Shape { spec: String },
    /// The name is empty, too long or has characters unfit for a metric label.
    #[error("target {spec:?}: name {name:?} must be 1 to 63 letters, digits, '.', '_' or '-'")]
    Name { spec: String, name: String },
    /// The host is neither a host name nor an IP address.
    #[error(
        "target {spec:?}: host {host:?} is not a host name or IP address \
         (write IPv6 addresses in brackets: [::1]:4222)"
    )]
    Host { spec: String, host: String },
    /// The port is not a number from 1 to 65535.
    #[error("target {spec:?}: port {port:?} is not a number from 1 to 65535")]
    Port { spec: String, port: String },
    /// The check is not one this agent knows.
    #[error(
        "target {spec:?}: check {check:?} is not one of tcp, nats, prometheus, http, http:/PATH"
    )]
    Check { spec: String, check: String },
    /// The HTTP path does not start with `/` or is not a valid URL path.
    #[error("target {spec:?}: HTTP path {path:?} must start with '/' and be a valid URL path")]
    HttpPath { spec: String, path: String },
}

/// What to verify once the TCP connection is up.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TargetCheck {
    /// The connection itself is the check.
    Tcp,
    /// NATS handshake: `INFO`, `CONNECT`, `PING`/`PONG`; reports JetStream.
    Nats,
    /// Prometheus readiness: `GET /-/ready` answers 200.
    Prometheus,
    /// `GET path` answers 2xx.
    Http { path: String },
}

impl TargetCheck {
    /// The check assumed for a port when the spec names none.
    pub fn default_for_port(port: u16) -> TargetCheck {
        match port {
            NATS_PORT => TargetCheck::Nats,
            PROMETHEUS_PORT => TargetCheck::Prometheus,
            _ => TargetCheck::Tcp,
        }
    }
}

impl fmt::Display for TargetCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TargetCheck::Tcp => f.write_str("tcp"),
            TargetCheck::Nats => f.write_str("nats"),
            TargetCheck::Prometheus => f.write_str("prometheus"),
            TargetCheck::Http { path } => write!(f, "http:{path}"),
        }
    }
}

/// Serialised in the same form it is written in a spec (`"nats"`, `"http:/healthz"`).
impl Serialize for TargetCheck {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// One configured target: a named service at a host and port, and how to check it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct TargetSpec {
    /// The operator's name for the target; the `target` metric label.
    pub name: String,
    /// A host name, or an IP address (IPv6 without brackets).
    pub host: String,
    pub port: u16,
    pub check: TargetCheck,
}

impl TargetSpec {
    /// Parses `NAME=HOST:PORT[:CHECK]`.
    pub fn parse(spec: &str) -> Result<TargetSpec, TargetSpecError> {
        let shape = || TargetSpecError::Shape { spec: spec.into() };
        let (name, rest) = spec.split_once('=').ok_or_else(shape)?;
        if !is_valid_name(name) {
            return Err(TargetSpecError::Name {
                spec: spec.into(),
                name: name.into(),
            });
        }

        let (host, after_host) = match rest.strip_prefix('[') {
            Some(bracketed) => {
                let bad_host = |host: &str| TargetSpecError::Host {
                    spec: spec.into(),
                    host: host.into(),
                };
                let (inside, after) = bracketed.split_once(']').ok_or_else(|| bad_host(rest))?;
                let ip = Ipv6Addr::from_str(inside).map_err(|_| bad_host(inside))?;
                (ip.to_string(), after.strip_prefix(':').ok_or_else(shape)?)
            }
            None => {
                let (host, after) = rest.split_once(':').ok_or_else(shape)?;
                if !is_valid_host(host) {
                    return Err(TargetSpecError::Host {
                        spec: spec.into(),
                        host: host.into(),
                    });
                }
                (host.to_owned(), after)
            }
        };

        let (port_text, check_text) = match after_host.split_once(':') {
            Some((port, check)) => (port, Some(check)),
            None => (after_host, None),
        };
        let port = parse_port(port_text).ok_or_else(|| TargetSpecError::Port {
            spec: spec.into(),
            port: port_text.into(),
        })?;
        let check = match check_text {
            None => TargetCheck::default_for_port(port),
            Some(text) => parse_check(spec, text)?,
        };

        Ok(TargetSpec {
            name: name.into(),
            host,
            port,
            check,
        })
    }

    /// The host as a literal IP address, when it is one (no resolution needed).
    pub fn ip(&self) -> Option<IpAddr> {
        self.host.parse().ok()
    }

    /// `host:port`, with brackets around an IPv6 address: the HTTP `Host` header, and how a
    /// target that did not resolve is labelled.
    pub fn authority(&self) -> String {
        match self.ip() {
            Some(IpAddr::V6(ip)) => format!("[{ip}]:{}", self.port),
            _ => format!("{}:{}", self.host, self.port),
        }
    }
}

impl FromStr for TargetSpec {
    type Err = TargetSpecError;

    fn from_str(spec: &str) -> Result<TargetSpec, TargetSpecError> {
        TargetSpec::parse(spec)
    }
}

/// The canonical spec: `NAME=HOST:PORT:CHECK`, which parses back to the same value.
impl fmt::Display for TargetSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}:{}", self.name, self.authority(), self.check)
    }
}

fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// An IPv4 literal, or a host name (RFC 1123, see [`crate::dns_name`]; optionally fully
/// qualified with a trailing dot). Anything else would only fail later, inside the resolver.
fn is_valid_host(host: &str) -> bool {
    Ipv4Addr::from_str(host).is_ok() || is_dns_name(host, NameRules::Resolvable)
}

/// Digits only (`u16::from_str` would also take `+80`), and not port 0.
fn parse_port(text: &str) -> Option<u16> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok().filter(|&port| port != 0)
}

fn parse_check(spec: &str, text: &str) -> Result<TargetCheck, TargetSpecError> {
    match text {
        "tcp" => Ok(TargetCheck::Tcp),
        "nats" => Ok(TargetCheck::Nats),
        "prometheus" => Ok(TargetCheck::Prometheus),
        "http" => Ok(TargetCheck::Http { path: "/".into() }),
        _ => match text.strip_prefix("http:") {
            Some(path) if is_valid_path(path) => Ok(TargetCheck::Http { path: path.into() }),
            Some(path) => Err(TargetSpecError::HttpPath {
                spec: spec.into(),
                path: path.into(),
            }),
            None => Err(TargetSpecError::Check {
                spec: spec.into(),
                check: text.into(),
            }),
        },
    }
}

fn is_valid_path(path: &str) -> bool {
    path.starts_with('/')
        && path.len() <= MAX_PATH_LEN
        && !path.contains('#')
        && PathAndQuery::from_str(path).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(spec: &str) -> TargetSpec {
        TargetSpec::parse(spec).unwrap_or_else(|e| panic!("{spec}: {e}"))
    }

    #[test]
    fn check_defaults_by_port() {
        assert_eq!(parse("n=nats.svc:4222").check, TargetCheck::Nats);
        assert_eq!(parse("p=prom.svc:9090").check, TargetCheck::Prometheus);
        assert_eq!(parse("db=10.0.0.5:5432").check, TargetCheck::Tcp);
    }

    #[test]
    fn explicit_checks() {
        assert_eq!(parse("a=h:1:tcp").check, TargetCheck::Tcp);
        assert_eq!(parse("a=h:4222:tcp").check, TargetCheck::Tcp);
        assert_eq!(parse("a=h:5000:nats").check, TargetCheck::Nats);
        assert_eq!(parse("a=h:80:prometheus").check, TargetCheck::Prometheus);
        assert_eq!(
            parse("a=h:80:http").check,
            TargetCheck::Http { path: "/".into() }
        );
        assert_eq!(
            parse("a=h:80:http:/-/healthy?verbose=1").check,
            TargetCheck::Http {
                path: "/-/healthy?verbose=1".into()
            }
        );
    }

    #[test]
    fn all_fields() {
        let spec = parse("event-plane=nats.dynamo.svc.cluster.local.:4222");
        assert_eq!(spec.name, "event-plane");
        assert_eq!(spec.host, "nats.dynamo.svc.cluster.local.");
        assert_eq!(spec.port, 4222);
        assert_eq!(spec.ip(), None);
        assert_eq!(spec.authority(), "nats.dynamo.svc.cluster.local.:4222");
    }

    #[test]
    fn ip_literals() {
        let v4 = parse("n=127.0.0.1:4222");
        assert_eq!(v4.ip(), Some(IpAddr::from([127, 0, 0, 1])));
        assert_eq!(v4.authority(), "127.0.0.1:4222");

        let v6 = parse("n=[::1]:4222");
        assert_eq!(v6.host, "::1");
        assert_eq!(v6.ip(), Some(IpAddr::V6(Ipv6Addr::LOCALHOST)));
        assert_eq!(v6.authority(), "[::1]:4222");
        assert_eq!(v6.check, TargetCheck::Nats);

        let v6 = parse("w=[fd00:0::10]:8080:http:/x");
        assert_eq!(v6.host, "fd00::10");
        assert_eq!(v6.check, TargetCheck::Http { path: "/x".into() });
    }

    #[test]
    fn display_round_trips() {
        for text in [
            "n=nats:4222",
            "p=[::1]:9090:http:/-/healthy",
            "x=10.0.0.1:80:http",
            "t=host_name.example:5432",
        ] {
            let spec = parse(text);
            assert_eq!(parse(&spec.to_string()), spec, "{text} -> {spec}");
        }
        assert_eq!(parse("n=nats:4222").to_string(), "n=nats:4222:nats");
    }

    #[test]
    fn errors_name_the_bad_value() {
        let cases: &[(&str, &str)] = &[
            ("nats:4222", "NAME=HOST:PORT"),
            ("n=nats", "NAME=HOST:PORT"),
            ("n=[::1]", "NAME=HOST:PORT"),
            ("=nats:4222", "name \"\""),
            ("bad name=nats:4222", "name \"bad name\""),
            ("n=:4222", "host \"\""),
            ("n=::1:4222", "host \"\""),
            ("n=[::1:4222", "host \"[::1:4222\""),
            ("n=[10.0.0.1]:4222", "host \"10.0.0.1\""),
            ("n=nats..svc:4222", "host \"nats..svc\""),
            ("n=10.0.0.300:4222", "host \"10.0.0.300\""),
            ("n=na ts:4222", "host \"na ts\""),
            ("n=nats:http", "port \"http\""),
            ("n=nats:0", "port \"0\""),
            ("n=nats:65536", "port \"65536\""),
            ("n=nats:+80", "port \"+80\""),
            ("n=nats::nats", "port \"\""),
            ("n=nats:4222:grpc", "check \"grpc\""),
            ("n=nats:4222:", "check \"\""),
            ("n=nats:4222:NATS", "check \"NATS\""),
            ("n=h:80:http:healthz", "path \"healthz\""),
            ("n=h:80:http:", "path \"\""),
            ("n=h:80:http:/a b", "path \"/a b\""),
        ];
        for (text, needle) in cases {
            let err = TargetSpec::parse(text).expect_err(text);
            let message = err.to_string();
            assert!(message.contains(needle), "{text}: {message}");
            assert!(message.contains(text), "{text}: {message}");
        }
    }

    #[test]
    fn hostile_input_never_panics() {
        let long = "a".repeat(10_000);
        for text in [
            "",
            "=",
            "==",
            "a=[",
            "a=[]",
            "a=[]:",
            "a=]:1",
            "a=\u{0}:1",
            "a=ä:1",
            "ä=h:1",
            &format!("a={long}:1"),
            &format!("{long}=h:1"),
            &format!("a=h:1:http:/{long}"),
        ] {
            assert!(TargetSpec::parse(text).is_err(), "{text:?}");
        }
    }

    #[test]
    fn check_serialises_as_written() {
        let spec = parse("w=h:80:http:/ready");
        let json = serde_json::to_value(&spec).unwrap();
        assert_eq!(json["check"], "http:/ready");
        assert_eq!(json["name"], "w");
        assert_eq!(json["port"], 80);
    }
}

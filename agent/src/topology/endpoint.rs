//! The instance metadata endpoint as operators write it: `http://HOST[:PORT]`.
//!
//! Only plain `http` with a host and an optional port: IMDS has no TLS, and a path, query or
//! user part would be silently ignored by the reads, which always ask for `/latest/...`.
//! Tests and the lab point this at a fake IMDS (`scripts/fake-imds.py`); production uses
//! [`DEFAULT_IMDS_ENDPOINT`]. Turning topology off (`none`) is the configuration's business.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};

use crate::dns_name::{is_dns_name, NameRules};

/// The EC2 instance metadata service (IPv4; Nitro instances also answer on
/// `http://[fd00:ec2::254]` when its IPv6 endpoint is enabled).
pub const DEFAULT_IMDS_ENDPOINT: &str = "http://169.254.169.254";

const HTTP_PORT: u16 = 80;

/// Where instance metadata is read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImdsEndpoint {
    host: ImdsHost,
    port: u16,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImdsHost {
    Ip(IpAddr),
    /// A DNS name, lower case; resolved on each fetch.
    Name(String),
}

impl ImdsEndpoint {
    pub fn host(&self) -> &ImdsHost {
        &self.host
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The `Host` header: `host:port`, IPv6 in brackets, the port left out when it is 80.
    pub fn authority(&self) -> String {
        let host = match &self.host {
            ImdsHost::Ip(IpAddr::V6(ip)) => format!("[{ip}]"),
            ImdsHost::Ip(IpAddr::V4(ip)) => ip.to_string(),
            ImdsHost::Name(name) => name.clone(),
        };
        if self.port == HTTP_PORT {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }
}

impl fmt::Display for ImdsEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "http://{}", self.authority())
    }
}

impl std::str::FromStr for ImdsEndpoint {
    type Err = String;

    fn from_str(s: &str) -> Result<ImdsEndpoint, String> {
        parse_endpoint(s)
    }
}

/// Parses `http://IP[:PORT]`, `http://[IPv6][:PORT]` or `http://NAME[:PORT]` (one trailing
/// `/` allowed). The error says what is wrong and what is expected.
pub fn parse_endpoint(s: &str) -> Result<ImdsEndpoint, String> {
    let expected = "expected http://HOST[:PORT], e.g. http://169.254.169.254";
    let fail = |why: &str| Err(format!("{s:?}: {why}; {expected}"));
    let Some(rest) = s
        .get(..7)
        .filter(|scheme| scheme.eq_ignore_ascii_case("http://"))
        .map(|_| &s[7..])
    else {
        if s.get(..8)
            .is_some_and(|scheme| scheme.eq_ignore_ascii_case("https://"))
        {
            return fail("instance metadata speaks plain HTTP only");
        }
        return fail("not an http:// URL");
    };
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.contains(['/', '?', '#', '@']) {
        return fail("a path, query or user part would be ignored");
    }
    let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
        let Some((ip, after)) = bracketed.split_once(']') else {
            return fail("unclosed [ in the host");
        };
        let Ok(ip) = ip.parse::<Ipv6Addr>() else {
            return fail("not an IPv6 address in [ ]");
        };
        let port = match after {
            "" => None,
            _ => match after.strip_prefix(':') {
                Some(port) => Some(port),
                None => return fail("unexpected text after ]"),
            },
        };
        (ImdsHost::Ip(IpAddr::V6(ip)), port)
    } else {
        let (host, port) = match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        };
        if port.is_some_and(|p| p.contains(':')) {
            return fail("an IPv6 address goes in brackets");
        }
        let host = match host.parse::<IpAddr>() {
            Ok(ip) => ImdsHost::Ip(ip),
            Err(_) if is_dns_name(host, NameRules::HostName) => {
                ImdsHost::Name(host.to_ascii_lowercase())
            }
            Err(_) => return fail("not an IP address or host name"),
        };
        (host, port)
    };
    let port = match port {
        None => HTTP_PORT,
        Some(digits) => match digits.parse::<u16>() {
            Ok(port) if port != 0 && digits.bytes().all(|b| b.is_ascii_digit()) => port,
            _ => return fail("the port is not a number from 1 to 65535"),
        },
    };
    Ok(ImdsEndpoint { host, port })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> ImdsEndpoint {
        parse_endpoint(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn accepted_endpoints() {
        let default = ok(DEFAULT_IMDS_ENDPOINT);
        assert_eq!(default.host(), &ImdsHost::Ip([169, 254, 169, 254].into()));
        assert_eq!(default.port(), 80);
        assert_eq!(default.to_string(), "http://169.254.169.254");
        let lab = ok("http://198.18.0.1:8080/");
        assert_eq!(lab.authority(), "198.18.0.1:8080");
        assert_eq!(lab.to_string(), "http://198.18.0.1:8080");
        let v6 = ok("HTTP://[fd00:ec2::254]");
        assert_eq!(v6.authority(), "[fd00:ec2::254]");
        assert_eq!(ok("http://[::1]:1338").authority(), "[::1]:1338");
        let named = ok("http://IMDS.lab.example:1338");
        assert_eq!(named.host(), &ImdsHost::Name("imds.lab.example".into()));
        assert_eq!(named.to_string(), "http://imds.lab.example:1338");
        assert_eq!(
            "http://localhost:9".parse::<ImdsEndpoint>().unwrap().port(),
            9
        );
    }

    #[test]
    fn refused_endpoints_say_why() {
        for (s, why) in [
            ("", "not an http:// URL"),
            ("none", "not an http:// URL"),
            ("169.254.169.254", "not an http:// URL"),
            ("https://169.254.169.254", "plain HTTP"),
            ("http://", "not an IP address or host name"),
            ("http://169.254.169.254/latest", "path"),
            ("http://169.254.169.254?x", "query"),
            ("http://user@host", "user"),
            ("http://host:0", "port"),
            ("http://host:65536", "port"),
            ("http://host:+80", "port"),
            ("http://host:", "port"),
            ("http://fd00:ec2::254", "brackets"),
            ("http://[fd00:ec2::254", "unclosed"),
            ("http://[1.2.3.4]", "IPv6"),
            ("http://[::1]x", "after ]"),
            ("http://300.1.1.1", "not an IP address or host name"),
            ("http://bad_name", "not an IP address or host name"),
            ("http://-a.b", "not an IP address or host name"),
        ] {
            let error = parse_endpoint(s).unwrap_err();
            assert!(error.contains(why), "{s:?}: {error}");
            assert!(error.contains("expected http://HOST[:PORT]"), "{error}");
        }
    }
}

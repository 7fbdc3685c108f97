//! Value parsers for clap (`value_parser = ...`): each turns one flag's text into its type and
//! says, when it cannot, what the value is and what is allowed.

use std::fmt::Display;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::time::Duration;

use crate::dns_name::{is_dns_name, NameRules};
use crate::units::parse_duration;

/// A value that may be set but blank (`POD_IP=""` from a downward API that has none yet):
/// blank is "not set".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Blankable<T>(pub Option<T>);

impl<T> Blankable<T> {
    pub fn get(&self) -> Option<&T> {
        self.0.as_ref()
    }
}

/// A duration from `min` to `max`, both included.
pub fn duration_within(
    min: Duration,
    max: Duration,
) -> impl Fn(&str) -> Result<Duration, String> + Clone + Send + Sync + 'static {
    move |text: &str| {
        let allowed = || format!("allowed: {} to {}", bound(min), bound(max));
        let d = parse_duration(text.trim()).map_err(|e| format!("{e}; {}", allowed()))?;
        if d < min || d > max {
            return Err(format!("{text:?} is out of range; {}", allowed()));
        }
        Ok(d)
    }
}

/// A bound as an operator would write it: `0`, `250us`, `100ms`, `30s`, `10m`, `1h`.
fn bound(d: Duration) -> String {
    let nanos = d.as_nanos();
    if nanos == 0 {
        return "0".into();
    }
    let units: [(u128, &str); 6] = [
        (3_600_000_000_000, "h"),
        (60_000_000_000, "m"),
        (1_000_000_000, "s"),
        (1_000_000, "ms"),
        (1_000, "us"),
        (1, "ns"),
    ];
    let (per, unit) = units
        .into_iter()
        .find(|(per, _)| nanos % per == 0)
        .unwrap_or((1, "ns"));
    format!("{}{unit}", nanos / per)
}

/// A whole number from `min` to `max`, both included; `unit` names what it counts.
pub fn whole_number<T>(
    min: T,
    max: T,
    unit: &'static str,
) -> impl Fn(&str) -> Result<T, String> + Clone + Send + Sync + 'static
where
    T: FromStr + PartialOrd + Display + Copy + Send + Sync + 'static,
{
    move |text: &str| {
        text.trim()
            .parse::<T>()
            .ok()
            .filter(|n| *n >= min && *n <= max)
            .ok_or_else(|| format!("{text:?} is not a whole number of {unit} from {min} to {max}"))
    }
}

/// A decimal number from `min` to `max`, both included (never NaN or infinite).
pub fn decimal_within(
    min: f64,
    max: f64,
    what: &'static str,
) -> impl Fn(&str) -> Result<f64, String> + Clone + Send + Sync + 'static {
    move |text: &str| {
        text.trim()
            .parse::<f64>()
            .ok()
            .filter(|n| n.is_finite() && *n >= min && *n <= max)
            .ok_or_else(|| format!("{text:?} is not {what} from {min} to {max}"))
    }
}

/// `IP:PORT`, IPv6 in brackets.
pub fn socket_address(text: &str) -> Result<SocketAddr, String> {
    text.trim()
        .parse()
        .map_err(|_| format!("{text:?} is not IP:PORT (IPv6 as [ADDRESS]:PORT)"))
}

/// An IP address, or blank for none.
pub fn blank_or_ip(text: &str) -> Result<Blankable<IpAddr>, String> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(Blankable(None));
    }
    text.parse()
        .map(|ip| Blankable(Some(ip)))
        .map_err(|_| format!("{text:?} is not an IP address"))
}

/// One item of a comma-separated list, blank items skipped (`a,,b`, a trailing comma).
pub fn list_item<T, E: Display + 'static>(
    parse: fn(&str) -> Result<T, E>,
) -> impl Fn(&str) -> Result<Blankable<T>, String> + Clone + Send + Sync + 'static
where
    T: Send + Sync + 'static,
{
    move |text: &str| {
        let text = text.trim();
        if text.is_empty() {
            return Ok(Blankable(None));
        }
        parse(text)
            .map(|v| Blankable(Some(v)))
            .map_err(|e| e.to_string())
    }
}

/// The items of a list that are not blank.
pub fn items<T: Clone>(list: &[Blankable<T>]) -> Vec<T> {
    list.iter().filter_map(|b| b.0.clone()).collect()
}

/// A peer agent's address: `IPv4:PORT`, `[IPv6]:PORT` or `HOSTNAME:PORT`, port 1 to 65535.
pub fn peer_address(p: &str) -> Result<String, String> {
    let (host, port) = if let Some(rest) = p.strip_prefix('[') {
        let (v6, port) = rest
            .split_once("]:")
            .ok_or_else(|| format!("peer {p:?} is not [IPv6]:PORT"))?;
        if v6.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(format!("peer {p:?}: {v6:?} is not an IPv6 address"));
        }
        (None, port)
    } else {
        let (host, port) = p
            .rsplit_once(':')
            .ok_or_else(|| format!("peer {p:?} is not HOST:PORT"))?;
        (Some(host), port)
    };
    port.parse::<u16>()
        .ok()
        .filter(|n| *n != 0 && port.bytes().all(|b| b.is_ascii_digit()))
        .ok_or_else(|| format!("peer {p:?} has no valid port (1 to 65535)"))?;
    if let Some(host) = host {
        if host.contains(':') {
            return Err(format!(
                "peer {p:?}: an IPv6 address goes in brackets, [ADDRESS]:PORT"
            ));
        }
        if host.parse::<std::net::Ipv4Addr>().is_err() && !is_dns_name(host, NameRules::HostName) {
            return Err(format!(
                "peer {p:?}: {host:?} is neither an IPv4 address nor a host name"
            ));
        }
    }
    Ok(p.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_bounded_and_the_bounds_said() {
        let interval = duration_within(Duration::from_millis(100), Duration::from_secs(600));
        assert_eq!(interval("2s"), Ok(Duration::from_secs(2)));
        let err = interval("100000h").unwrap_err();
        assert_eq!(err, "\"100000h\" is out of range; allowed: 100ms to 10m");
        let err = interval("fast").unwrap_err();
        assert!(
            err.contains("\"fast\" is not a duration") && err.contains("allowed: 100ms to 10m"),
            "{err}"
        );
    }

    #[test]
    fn numbers_are_bounded_and_the_bounds_said() {
        let rounds = whole_number(1u32, 100, "rounds");
        assert_eq!(rounds("3"), Ok(3));
        for bad in ["0", "101", "-1", "x", "1.5"] {
            let err = rounds(bad).unwrap_err();
            assert!(
                err.contains("from 1 to 100") && err.contains(&format!("{bad:?}")),
                "{err}"
            );
        }
        let ratio = decimal_within(0.0, 1.0, "a ratio");
        assert_eq!(ratio("0.5"), Ok(0.5));
        for bad in ["1.5", "NaN", "inf", "-0.1", "x"] {
            assert!(
                ratio(bad).unwrap_err().contains("a ratio from 0 to 1"),
                "{bad}"
            );
        }
    }

    #[test]
    fn addresses() {
        assert_eq!(
            socket_address("127.0.0.1:9"),
            Ok("127.0.0.1:9".parse().unwrap())
        );
        assert!(socket_address("9476").unwrap_err().contains("IP:PORT"));
        assert_eq!(blank_or_ip(""), Ok(Blankable(None)));
        assert_eq!(
            blank_or_ip("x").unwrap_err(),
            "\"x\" is not an IP address",
            "the value as given, not Some(..)"
        );
    }

    #[test]
    fn peers() {
        for good in [
            "10.0.0.6:9476",
            "[::1]:9476",
            "[fd00::5]:1",
            "node-b:9476",
            "a.b.c:9",
        ] {
            assert_eq!(peer_address(good), Ok(good.to_owned()), "{good}");
        }
        for bad in [
            "10.0.0.6",
            "10.0.0.6:0",
            "10.0.0.6:99999",
            "10.0.0.6:+1",
            "bad host!:9476",
            "[::1:9476",
            "[::1]9476",
            "[zz::1]:9476",
            "::1:9476",
            "10.0.0.300:9476",
            ":9476",
            "-node:9476",
        ] {
            let err = peer_address(bad).expect_err(bad);
            assert!(err.contains(&format!("{bad:?}")), "{bad}: {err}");
        }
    }

    #[test]
    fn blank_list_items_are_skipped() {
        let peer = list_item(peer_address);
        assert_eq!(peer(" "), Ok(Blankable(None)));
        assert_eq!(peer(" a:1"), Ok(Blankable(Some("a:1".to_owned()))));
        assert_eq!(items(&[Blankable(None), Blankable(Some(1))]), [1]);
    }
}

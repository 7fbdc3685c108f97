//! Discovery's settings (`efaprobe agent` and `efaprobe discover` read the same ones) into a
//! [`DiscoveryConfig`].

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use super::values::{self, Blankable};
use super::{ConfigError, ConfigErrors};
use crate::discovery::{DiscoveryConfig, MAX_PEER_GRACE, SERVICE_ACCOUNT_NAMESPACE_FILE};
use crate::dns_name::{is_dns_name, NameRules};

/// Shortest and longest time between rounds (and between DNS resolutions): below 100ms the
/// probes of one round would overlap the next; above 10 minutes a broken path goes unseen
/// for longer than any alert would wait.
pub const MIN_INTERVAL: Duration = Duration::from_millis(100);
pub const MAX_INTERVAL: Duration = Duration::from_secs(600);

#[derive(Debug, Clone, clap::Args)]
pub struct DiscoveryArgs {
    /// How peers are found: static (the --peers list), dns (a headless Service name resolved
    /// each round) or kubernetes (watch the DaemonSet's own pods).
    #[arg(long, env = "EFAPROBE_DISCOVERY", default_value = "static")]
    pub discovery: String,
    /// static: peer agents' listen addresses, `HOST:PORT` (IPv6 as `[ADDRESS]:PORT`),
    /// comma-separated.
    #[arg(long, env = "EFAPROBE_PEERS", value_delimiter = ',', value_parser = values::list_item(values::peer_address))]
    pub peers: Vec<Blankable<String>>,
    /// dns: the headless Service name to resolve each round.
    #[arg(long, env = "EFAPROBE_DNS_NAME")]
    pub dns_name: Option<String>,
    /// kubernetes: the namespace of the agent's pods (default: the service account's).
    #[arg(long, env = "POD_NAMESPACE")]
    pub namespace: Option<String>,
    /// kubernetes: label selector of the agent's pods.
    #[arg(
        long,
        env = "EFAPROBE_SELECTOR",
        default_value = "app.kubernetes.io/name=efaprobe"
    )]
    pub selector: String,
    /// How long a newly eligible peer is reported unknown rather than probed into an alert
    /// (dns and kubernetes discovery; static peers are judged from the first round); 0 to 10m.
    #[arg(long, env = "EFAPROBE_PEER_GRACE", default_value = "30s", value_parser = values::duration_within(Duration::ZERO, MAX_PEER_GRACE))]
    pub peer_grace: Duration,
}

/// The agent's listen address; `efaprobe discover` takes the port peers listen on from it.
#[derive(Debug, Clone, clap::Args)]
pub struct ListenArgs {
    /// HTTP listen address: metrics, API, and the hello peers fetch.
    #[arg(long, env = "EFAPROBE_LISTEN", default_value = "0.0.0.0:9476", value_parser = values::socket_address)]
    pub listen: SocketAddr,
}

/// The round interval; `efaprobe discover` resolves a DNS name again at the same pace.
#[derive(Debug, Clone, clap::Args)]
pub struct IntervalArgs {
    /// Time between probe rounds, and between resolutions of --dns-name; 100ms to 10m.
    #[arg(long, alias = "refresh", env = "EFAPROBE_INTERVAL", default_value = "5s", value_parser = values::duration_within(MIN_INTERVAL, MAX_INTERVAL))]
    pub interval: Duration,
}

/// `efaprobe discover`'s flags: the agent's discovery settings, the same flags and
/// environment variables, so `kubectl exec ds/efaprobe -- efaprobe discover --once` answers
/// for that pod.
#[derive(Debug, clap::Args)]
pub struct DiscoverArgs {
    #[command(flatten)]
    pub discovery: DiscoveryArgs,
    /// The port peer agents listen on (default: the port of --listen).
    #[arg(long)]
    pub port: Option<u16>,
    #[command(flatten)]
    pub listen: ListenArgs,
    #[command(flatten)]
    pub interval: IntervalArgs,
    /// Print the set once and exit, instead of printing it again at every change.
    #[arg(long)]
    pub once: bool,
    /// One JSON document per set instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `efaprobe discover`'s discovery and how often a DNS name is resolved again, or every bad
/// setting (after those clap's parsers refused).
pub fn discover_config(
    args: &DiscoverArgs,
    refused: ConfigErrors,
) -> Result<(DiscoveryConfig, Duration), ConfigErrors> {
    let mut errors = refused;
    let port = args.port.unwrap_or(args.listen.listen.port());
    let config = discovery_config(&args.discovery, port, &mut errors);
    match config {
        Some((config, _grace)) => errors.or_ok((config, args.interval.interval)),
        None => Err(errors),
    }
}

/// Discovery's configuration and the grace period for newly eligible peers. `agent_port` is
/// the port every discovered peer agent listens on (this agent's own). Bad settings go to
/// `errors`; `None` when the configuration cannot be made.
pub fn discovery_config(
    args: &DiscoveryArgs,
    agent_port: u16,
    errors: &mut ConfigErrors,
) -> Option<(DiscoveryConfig, Duration)> {
    discovery_config_with(
        args,
        agent_port,
        Path::new(SERVICE_ACCOUNT_NAMESPACE_FILE),
        errors,
    )
}

/// The static peers: blanks skipped, each address once, in the order given.
pub fn static_peers(args: &DiscoveryArgs) -> Vec<String> {
    let mut peers: Vec<String> = Vec::new();
    for p in values::items(&args.peers) {
        if !peers.contains(&p) {
            peers.push(p);
        }
    }
    peers
}

/// [`discovery_config`] with the service account's namespace file given, so tests do not
/// depend on the machine they run on.
pub fn discovery_config_with(
    args: &DiscoveryArgs,
    agent_port: u16,
    namespace_file: &Path,
    errors: &mut ConfigErrors,
) -> Option<(DiscoveryConfig, Duration)> {
    let static_peers = static_peers(args);
    let dns_name = args
        .dns_name
        .as_deref()
        .map(str::trim)
        .filter(|n| !n.is_empty());
    let source = args.discovery.trim();
    // A setting that the chosen source would ignore is a mistake in the manifest: say so
    // rather than probe a different set of peers than the operator meant.
    if source != "dns" && dns_name.is_some() {
        errors.push(ConfigError::of::<DiscoveryArgs>(
            "dns-name",
            format!("only used with --discovery dns, not {source:?}"),
        ));
    }
    if source != "static" && !static_peers.is_empty() && !errors.names("peers") {
        errors.push(ConfigError::of::<DiscoveryArgs>(
            "peers",
            format!("only used with --discovery static, not {source:?}"),
        ));
    }
    let config = match source {
        "static" => DiscoveryConfig::Static(static_peers),
        "dns" => {
            let port = needs_port(agent_port, errors);
            match dns_name {
                None => {
                    errors.push(ConfigError::of::<DiscoveryArgs>(
                        "dns-name",
                        "required with --discovery dns (the headless Service's name)",
                    ));
                    return None;
                }
                Some(name) if !is_dns_name(name, NameRules::HostName) => {
                    errors.push(ConfigError::of::<DiscoveryArgs>(
                        "dns-name",
                        format!("{name:?} is not a DNS name (RFC 1123: labels of letters, digits and hyphens)"),
                    ));
                    return None;
                }
                Some(name) => DiscoveryConfig::Dns {
                    name: name.to_owned(),
                    port,
                },
            }
        }
        "kubernetes" => {
            let port = needs_port(agent_port, errors);
            let namespace = match args.namespace.as_deref().map(str::trim) {
                Some(ns) if !ns.is_empty() => Some(ns.to_owned()),
                _ => std::fs::read_to_string(namespace_file)
                    .map(|s| s.trim().to_owned())
                    .ok()
                    .filter(|s| !s.is_empty()),
            };
            let namespace = match namespace {
                None => {
                    errors.push(ConfigError::of::<DiscoveryArgs>(
                        "namespace",
                        format!(
                            "required with --discovery kubernetes: not set, and {} cannot be read",
                            namespace_file.display()
                        ),
                    ));
                    None
                }
                Some(ns) if !is_dns_name(&ns, NameRules::KubernetesLabel) => {
                    errors.push(ConfigError::of::<DiscoveryArgs>(
                        "namespace",
                        format!("{ns:?} is not a Kubernetes namespace name (an RFC 1123 label, lowercase)"),
                    ));
                    None
                }
                Some(ns) => Some(ns),
            };
            let selector = args.selector.trim();
            if let Err(detail) = validate_selector(selector) {
                errors.push(ConfigError::of::<DiscoveryArgs>("selector", detail));
            }
            DiscoveryConfig::Kubernetes {
                namespace: namespace?,
                selector: selector.to_owned(),
                port,
            }
        }
        other => {
            errors.push(ConfigError::of::<DiscoveryArgs>(
                "discovery",
                format!("{other:?} is not one of static, dns, kubernetes"),
            ));
            return None;
        }
    };
    Some((config, args.peer_grace))
}

/// The port discovered peers are reached on: this agent's own, which must not be 0.
fn needs_port(agent_port: u16, errors: &mut ConfigErrors) -> u16 {
    if agent_port == 0 {
        errors.push(ConfigError::of::<ListenArgs>(
            "listen",
            "port 0: discovered peers are reached on this agent's own port",
        ));
    }
    agent_port
}

/// Checks a label selector's syntax (`k=v`, `k==v`, `k!=v`, `k`, `!k`, `k in (a,b)`,
/// `k notin (a,b)`, comma-separated), so a typo stops the agent at start instead of leaving
/// it with no peers while the API server rejects every watch.
fn validate_selector(selector: &str) -> Result<(), String> {
    if selector.is_empty() {
        return Err("empty: it would select every pod in the namespace".into());
    }
    let mut depth = 0u32;
    let mut start = 0;
    let mut requirements = Vec::new();
    for (i, c) in selector.char_indices() {
        match c {
            '(' => depth += 1,
            ')' if depth == 0 => return Err(format!("{selector:?}: unbalanced ')'")),
            ')' => depth -= 1,
            ',' if depth == 0 => {
                requirements.push(&selector[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err(format!("{selector:?}: unbalanced '('"));
    }
    requirements.push(&selector[start..]);
    for req in requirements.iter().map(|r| r.trim()) {
        validate_requirement(req).map_err(|why| format!("{selector:?}: {req:?} {why}"))?;
    }
    Ok(())
}

fn validate_requirement(req: &str) -> Result<(), &'static str> {
    if let Some(key) = req.strip_prefix('!') {
        return label_key(key.trim());
    }
    for op in [" notin ", " in "] {
        if let Some((key, values)) = req.split_once(op) {
            label_key(key.trim())?;
            let values = values
                .trim()
                .strip_prefix('(')
                .and_then(|v| v.strip_suffix(')'))
                .ok_or("needs its values in parentheses")?;
            for v in values.split(',') {
                label_value(v.trim())?;
            }
            return Ok(());
        }
    }
    let (key, value) = if let Some(kv) = req.split_once("!=") {
        kv
    } else if let Some(kv) = req.split_once("==") {
        kv
    } else if let Some(kv) = req.split_once('=') {
        kv
    } else {
        return label_key(req);
    };
    label_key(key.trim())?;
    label_value(value.trim())
}

/// `[prefix/]name`: the prefix a DNS subdomain, the name a label value that is not empty.
fn label_key(key: &str) -> Result<(), &'static str> {
    let name = match key.split_once('/') {
        Some((prefix, name)) => {
            if !is_dns_name(prefix, NameRules::KubernetesName) {
                return Err("has a key prefix that is not a DNS name");
            }
            name
        }
        None => key,
    };
    if name.is_empty() {
        return Err("has an empty key");
    }
    label_value(name).map_err(|_| "has a key that is not a label name")
}

/// At most 63 characters, alphanumerics with `-`, `_` and `.` inside; may be empty.
fn label_value(value: &str) -> Result<(), &'static str> {
    let ok = value.len() <= 63
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && value
            .bytes()
            .next()
            .is_none_or(|b| b.is_ascii_alphanumeric())
        && value
            .bytes()
            .last()
            .is_none_or(|b| b.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err("has a value that is not a label value")
    }
}

#[cfg(test)]
mod tests;

//! Peer discovery: which peer agents this node probes.
//!
//! Three sources, chosen by `--discovery`:
//! - `static`: the `--peers` list, fixed for the life of the process.
//! - `dns`: a headless Service name, resolved again every round (see [`dns`]).
//! - `kubernetes`: a watch on the DaemonSet's own pods (see [`kubernetes`]), which knows when
//!   a peer became Ready and drops a terminating one before it could look `down`.
//!
//! Every source publishes a whole [`PeerSet`] on a `watch` channel: the receiver always holds
//! the latest set, and a consumer that falls behind skips straight to it.

pub mod dns;
pub mod kubernetes;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::cli::parse_duration;
use crate::config::ConfigError;

/// Where a pod finds its own namespace when `POD_NAMESPACE` is not set.
pub const SERVICE_ACCOUNT_NAMESPACE_FILE: &str =
    "/var/run/secrets/kubernetes.io/serviceaccount/namespace";

/// Longest grace period accepted. Longer would hide a peer that never comes up for longer than
/// anyone would wait for an alert; and the eligibility times of pods are capped at this age
/// (see [`kubernetes::candidate_from_pod`]), which is only sound while no grace exceeds it.
pub const MAX_PEER_GRACE: Duration = Duration::from_secs(600);

/// One peer agent as discovery sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerCandidate {
    /// `IP:PORT` (IPv6 as `[::1]:9476`) of the peer agent; a static peer may be `NAME:PORT`.
    pub address: String,
    /// `spec.nodeName` for kubernetes; `None` otherwise.
    pub node_name: Option<String>,
    /// When it became Running and Ready (kubernetes), or was first resolved (dns) or configured
    /// (static). The monitor keeps the peer `unknown` until this plus the grace period, so a
    /// peer that is still starting raises no alert.
    pub eligible_since: Instant,
}

/// The peers to probe, keyed by address.
pub type PeerSet = BTreeMap<String, PeerCandidate>;

#[derive(Debug, Clone, clap::Args)]
pub struct DiscoveryArgs {
    /// How peers are found: static (the --peers list), dns (a headless Service name resolved
    /// each round) or kubernetes (watch the DaemonSet's own pods).
    #[arg(long, env = "EFAPROBE_DISCOVERY", default_value = "static")]
    pub discovery: String,
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
    /// (dns and kubernetes discovery; static peers are judged from the first round).
    #[arg(long, env = "EFAPROBE_PEER_GRACE", default_value = "30s")]
    pub peer_grace: String,
}

/// Where peers come from, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiscoveryConfig {
    /// Peer agents' addresses, `HOST:PORT`, already validated by the agent's configuration.
    Static(Vec<String>),
    Dns {
        name: String,
        port: u16,
    },
    Kubernetes {
        namespace: String,
        selector: String,
        port: u16,
    },
}

/// Discovery could not start or could not answer.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    /// No Kubernetes client: outside a cluster with no kubeconfig, or a broken service account.
    #[error("cannot make a Kubernetes client (in-cluster service account or kubeconfig): {0}")]
    KubeClient(#[source] kube::Error),
    /// The API server refused or failed a request.
    #[error("cannot list pods in namespace {namespace:?} with selector {selector:?}: {source}")]
    KubeList {
        namespace: String,
        selector: String,
        #[source]
        source: kube::Error,
    },
    /// The resolver answered with an error: NXDOMAIN, SERVFAIL, no resolver reachable.
    #[error("cannot resolve {name:?}: {source}")]
    DnsLookup {
        name: String,
        #[source]
        source: std::io::Error,
    },
    /// The resolver did not answer in time.
    #[error("resolving {name:?} took longer than {timeout:?}")]
    DnsTimeout { name: String, timeout: Duration },
    /// The name resolved, but to no address.
    #[error("{name:?} resolves to no address")]
    DnsEmpty { name: String },
}

impl DiscoveryError {
    /// A bounded label for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            DiscoveryError::KubeClient(_) => "kube_client",
            DiscoveryError::KubeList { .. } => "kube_api",
            DiscoveryError::DnsLookup { .. } => "dns",
            DiscoveryError::DnsTimeout { .. } => "dns_timeout",
            DiscoveryError::DnsEmpty { .. } => "dns_empty",
        }
    }
}

fn bad(setting: &'static str, env: &'static str, detail: impl Into<String>) -> ConfigError {
    ConfigError {
        setting,
        flag: setting,
        env,
        detail: detail.into(),
    }
}

impl DiscoveryConfig {
    /// Validates the discovery settings. `static_peers` is the agent's validated `--peers`;
    /// `agent_port` is the port every discovered peer agent listens on (this agent's own).
    /// Returns the grace period for newly eligible peers too.
    pub fn from_args(
        args: &DiscoveryArgs,
        static_peers: &[String],
        agent_port: u16,
    ) -> Result<(DiscoveryConfig, Duration), ConfigError> {
        Self::from_args_with(
            args,
            static_peers,
            agent_port,
            Path::new(SERVICE_ACCOUNT_NAMESPACE_FILE),
        )
    }

    /// [`DiscoveryConfig::from_args`] with the service account's namespace file given, so
    /// tests do not depend on the machine they run on.
    pub fn from_args_with(
        args: &DiscoveryArgs,
        static_peers: &[String],
        agent_port: u16,
        namespace_file: &Path,
    ) -> Result<(DiscoveryConfig, Duration), ConfigError> {
        let grace = parse_duration(args.peer_grace.trim())
            .map_err(|e| bad("peer-grace", "EFAPROBE_PEER_GRACE", e))?;
        if grace > MAX_PEER_GRACE {
            return Err(bad(
                "peer-grace",
                "EFAPROBE_PEER_GRACE",
                format!("{:?} is longer than 10m", args.peer_grace),
            ));
        }
        let dns_name = args
            .dns_name
            .as_deref()
            .map(str::trim)
            .filter(|n| !n.is_empty());
        let source = args.discovery.trim();
        // A setting that the chosen source would ignore is a mistake in the manifest: say so
        // rather than probe a different set of peers than the operator meant.
        if source != "dns" && dns_name.is_some() {
            return Err(bad(
                "dns-name",
                "EFAPROBE_DNS_NAME",
                format!("only used with --discovery dns, not {source:?}"),
            ));
        }
        if source != "static" && !static_peers.is_empty() {
            return Err(bad(
                "peers",
                "EFAPROBE_PEERS",
                format!("only used with --discovery static, not {source:?}"),
            ));
        }
        let needs_port = || {
            if agent_port == 0 {
                Err(bad(
                    "listen",
                    "EFAPROBE_LISTEN",
                    "port 0: discovered peers are reached on this agent's own port",
                ))
            } else {
                Ok(agent_port)
            }
        };
        let config = match source {
            "static" => DiscoveryConfig::Static(static_peers.to_vec()),
            "dns" => {
                let name = dns_name.ok_or_else(|| {
                    bad(
                        "dns-name",
                        "EFAPROBE_DNS_NAME",
                        "required with --discovery dns (the headless Service's name)",
                    )
                })?;
                if !is_dns_name(name) {
                    return Err(bad(
                        "dns-name",
                        "EFAPROBE_DNS_NAME",
                        format!("{name:?} is not a DNS name"),
                    ));
                }
                DiscoveryConfig::Dns {
                    name: name.to_owned(),
                    port: needs_port()?,
                }
            }
            "kubernetes" => {
                let namespace = match args.namespace.as_deref().map(str::trim) {
                    Some(ns) if !ns.is_empty() => ns.to_owned(),
                    _ => std::fs::read_to_string(namespace_file)
                        .map(|s| s.trim().to_owned())
                        .ok()
                        .filter(|s| !s.is_empty())
                        .ok_or_else(|| {
                            bad(
                                "namespace",
                                "POD_NAMESPACE",
                                format!(
                                    "required with --discovery kubernetes: not set, and {} \
                                     cannot be read",
                                    namespace_file.display()
                                ),
                            )
                        })?,
                };
                if !is_dns_label(&namespace) {
                    return Err(bad(
                        "namespace",
                        "POD_NAMESPACE",
                        format!("{namespace:?} is not a Kubernetes namespace name"),
                    ));
                }
                let selector = args.selector.trim();
                validate_selector(selector).map_err(|d| bad("selector", "EFAPROBE_SELECTOR", d))?;
                DiscoveryConfig::Kubernetes {
                    namespace,
                    selector: selector.to_owned(),
                    port: needs_port()?,
                }
            }
            other => {
                return Err(bad(
                    "discovery",
                    "EFAPROBE_DISCOVERY",
                    format!("{other:?} is not one of static, dns, kubernetes"),
                ))
            }
        };
        Ok((config, grace))
    }
}

/// Starts discovery; the receiver always holds the latest set. `refresh` is how often DNS is
/// resolved again (the agent passes its probe interval). Each source runs until `shutdown`
/// turns true or its sender is dropped; until then the set's sender stays alive, so
/// `changed()` on the receiver waits rather than failing.
///
/// Only a missing Kubernetes client fails here. A DNS name that does not resolve yet starts
/// with an empty set and is retried every round: a Service created after the DaemonSet, or
/// cluster DNS still starting, must not crash-loop the agent.
pub async fn start(
    config: DiscoveryConfig,
    refresh: Duration,
    shutdown: watch::Receiver<bool>,
) -> Result<watch::Receiver<PeerSet>, DiscoveryError> {
    match config {
        DiscoveryConfig::Static(peers) => {
            let (tx, rx) = watch::channel(static_set(&peers, Instant::now()));
            tokio::spawn(async move {
                let mut shutdown = shutdown;
                let _ = shutdown.wait_for(|stop| *stop).await;
                drop(tx);
            });
            Ok(rx)
        }
        DiscoveryConfig::Dns { name, port } => {
            let (tx, rx) = watch::channel(PeerSet::new());
            tokio::spawn(dns::watch_dns(name, port, refresh, tx, shutdown));
            Ok(rx)
        }
        DiscoveryConfig::Kubernetes {
            namespace,
            selector,
            port,
        } => {
            let client = kube::Client::try_default()
                .await
                .map_err(DiscoveryError::KubeClient)?;
            let (tx, rx) = watch::channel(PeerSet::new());
            tokio::spawn(async move {
                kubernetes::watch_pods(client, &namespace, &selector, port, tx, shutdown).await
            });
            Ok(rx)
        }
    }
}

/// The set for a static list: every peer eligible from `now`.
pub fn static_set(peers: &[String], now: Instant) -> PeerSet {
    peers
        .iter()
        .map(|address| {
            (
                address.clone(),
                PeerCandidate {
                    address: address.clone(),
                    node_name: None,
                    eligible_since: now,
                },
            )
        })
        .collect()
}

/// Replaces the published set with `new` if it differs, and logs who came and went. Returns
/// whether it changed; an unchanged set wakes no receiver.
fn publish(tx: &watch::Sender<PeerSet>, new: PeerSet, source: &'static str) -> bool {
    tx.send_if_modified(|current| {
        if *current == new {
            return false;
        }
        for (address, peer) in &new {
            if !current.contains_key(address) {
                tracing::info!(source, %address, node = ?peer.node_name, "peer discovered");
            }
        }
        for (address, peer) in current.iter() {
            if !new.contains_key(address) {
                tracing::info!(source, %address, node = ?peer.node_name, "peer gone");
            }
        }
        *current = new;
        true
    })
}

/// A DNS name: dot-separated labels of letters, digits, `-` and `_`, a trailing dot allowed.
fn is_dns_name(name: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// An RFC 1123 label, as Kubernetes namespace names are.
fn is_dns_label(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
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

/// `[prefix/]name`: the prefix a DNS name, the name a label value that is not empty.
fn label_key(key: &str) -> Result<(), &'static str> {
    let name = match key.split_once('/') {
        Some((prefix, name)) => {
            if !is_dns_name(prefix) {
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
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: DiscoveryArgs,
    }

    fn args(extra: &[&str]) -> DiscoveryArgs {
        let mut full = vec!["efaprobe"];
        full.extend_from_slice(extra);
        Cli::try_parse_from(full)
            .expect("clap accepts the shape")
            .args
    }

    fn from(
        extra: &[&str],
        peers: &[&str],
        ns_file: &Path,
    ) -> Result<(DiscoveryConfig, Duration), ConfigError> {
        let peers: Vec<String> = peers.iter().map(|p| p.to_string()).collect();
        DiscoveryConfig::from_args_with(&args(extra), &peers, 9476, ns_file)
    }

    const NO_FILE: &str = "/nonexistent/efaprobe/namespace";

    #[test]
    fn static_is_the_default() {
        let (c, grace) = from(&[], &["10.0.0.1:9476"], Path::new(NO_FILE)).unwrap();
        assert_eq!(c, DiscoveryConfig::Static(vec!["10.0.0.1:9476".into()]));
        assert_eq!(grace, Duration::from_secs(30));
    }

    #[test]
    fn dns_takes_the_agent_port() {
        let (c, _) = from(
            &[
                "--discovery",
                "dns",
                "--dns-name",
                "efaprobe.monitoring.svc",
            ],
            &[],
            Path::new(NO_FILE),
        )
        .unwrap();
        assert_eq!(
            c,
            DiscoveryConfig::Dns {
                name: "efaprobe.monitoring.svc".into(),
                port: 9476
            }
        );
    }

    #[test]
    fn kubernetes_namespace_from_flag_or_service_account_file() {
        let (c, grace) = from(
            &[
                "--discovery",
                "kubernetes",
                "--namespace",
                "monitoring",
                "--peer-grace",
                "0",
            ],
            &[],
            Path::new(NO_FILE),
        )
        .unwrap();
        assert_eq!(
            c,
            DiscoveryConfig::Kubernetes {
                namespace: "monitoring".into(),
                selector: "app.kubernetes.io/name=efaprobe".into(),
                port: 9476
            }
        );
        assert_eq!(grace, Duration::ZERO);

        let dir = std::env::temp_dir().join(format!("efp-disc-ns-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("namespace");
        std::fs::write(&file, "efa-system\n").unwrap();
        let result = from(&["--discovery", "kubernetes"], &[], &file);
        let _ = std::fs::remove_dir_all(&dir);
        let (c, _) = result.unwrap();
        assert!(
            matches!(&c, DiscoveryConfig::Kubernetes { namespace, .. } if namespace == "efa-system"),
            "{c:?}"
        );
    }

    #[test]
    fn each_bad_setting_is_named() {
        let cases: &[(&[&str], &[&str], &str)] = &[
            (&["--discovery", "consul"], &[], "discovery"),
            (&["--discovery", "dns"], &[], "dns-name"),
            (
                &["--discovery", "dns", "--dns-name", "bad name!"],
                &[],
                "dns-name",
            ),
            (&["--dns-name", "efaprobe"], &[], "dns-name"),
            (
                &["--discovery", "dns", "--dns-name", "efaprobe"],
                &["10.0.0.1:9476"],
                "peers",
            ),
            (&["--discovery", "kubernetes"], &[], "namespace"),
            (
                &["--discovery", "kubernetes", "--namespace", "Monitoring"],
                &[],
                "namespace",
            ),
            (
                &[
                    "--discovery",
                    "kubernetes",
                    "--namespace",
                    "m",
                    "--selector",
                    "",
                ],
                &[],
                "selector",
            ),
            (
                &[
                    "--discovery",
                    "kubernetes",
                    "--namespace",
                    "m",
                    "--selector",
                    "app=efa probe",
                ],
                &[],
                "selector",
            ),
            (
                &[
                    "--discovery",
                    "kubernetes",
                    "--namespace",
                    "m",
                    "--selector",
                    "app in (a",
                ],
                &[],
                "selector",
            ),
            (&["--peer-grace", "soon"], &[], "peer-grace"),
            (&["--peer-grace", "11m"], &[], "peer-grace"),
        ];
        for (extra, peers, setting) in cases {
            let err = from(extra, peers, Path::new(NO_FILE)).expect_err(setting);
            assert_eq!(err.setting, *setting, "{extra:?}: {err}");
            assert!(err.to_string().contains(&format!("--{setting}")), "{err}");
            assert!(err.to_string().contains(err.env), "{err}");
        }
    }

    #[test]
    fn port_zero_cannot_be_discovered() {
        let peers: Vec<String> = vec![];
        let err = DiscoveryConfig::from_args_with(
            &args(&["--discovery", "dns", "--dns-name", "efaprobe"]),
            &peers,
            0,
            Path::new(NO_FILE),
        )
        .unwrap_err();
        assert_eq!(err.setting, "listen");
    }

    #[test]
    fn selectors() {
        for good in [
            "app.kubernetes.io/name=efaprobe",
            "app==efaprobe,tier!=test",
            "app.kubernetes.io/name in (efaprobe, efaprobe-canary),!legacy",
            "environment notin (qa)",
            "gpu",
            "app=",
        ] {
            assert_eq!(validate_selector(good), Ok(()), "{good}");
        }
        for bad in [
            "",
            "app=efa probe",
            "=efaprobe",
            "app=efaprobe,",
            "app in efaprobe",
            "app in (a,b",
            "app)",
            "-app=x",
            "bad prefix!/app=x",
            "app=-x",
        ] {
            assert!(validate_selector(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[tokio::test]
    async fn static_set_is_published_and_kept_until_shutdown() {
        let (stop_tx, stop_rx) = watch::channel(false);
        let peers = vec!["198.18.0.1:9476".to_string(), "node-b:9476".to_string()];
        let mut rx = start(
            DiscoveryConfig::Static(peers.clone()),
            Duration::from_secs(1),
            stop_rx,
        )
        .await
        .unwrap();
        let set = rx.borrow_and_update().clone();
        assert_eq!(set.keys().cloned().collect::<Vec<_>>(), peers);
        assert!(set.values().all(|p| p.node_name.is_none()));
        // While running, `changed()` waits (the sender is alive) rather than failing at once.
        assert!(
            tokio::time::timeout(Duration::from_millis(50), rx.changed())
                .await
                .is_err()
        );
        stop_tx.send(true).unwrap();
        let closed = tokio::time::timeout(Duration::from_secs(5), rx.changed()).await;
        assert!(matches!(closed, Ok(Err(_))), "sender dropped at shutdown");
    }

    #[test]
    fn publish_reports_changes_only() {
        let now = Instant::now();
        let (tx, mut rx) = watch::channel(PeerSet::new());
        let set = static_set(&["198.18.0.1:9476".into()], now);
        assert!(publish(&tx, set.clone(), "test"));
        assert!(rx.has_changed().unwrap());
        rx.borrow_and_update();
        assert!(!publish(&tx, set, "test"));
        assert!(!rx.has_changed().unwrap());
    }
}

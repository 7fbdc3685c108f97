//! The node actions' flags (`efaprobe agent --node-condition ...`), each also read from an
//! environment variable, and the typed settings they become, checked once at start.

use std::time::Duration;

/// The taint the startup gate removes unless `--startup-taint` names another.
pub const DEFAULT_STARTUP_TAINT: &str = "efaprobe.io/fabric-unverified";

/// What the agent does to its own Node object through the Kubernetes API. Everything is off
/// unless asked for.
#[derive(Debug, Clone, clap::Args)]
pub struct NodeActionArgs {
    /// Write the node condition `EFAFabricReady` on this node (needs `patch` on nodes/status).
    #[arg(long, env = "EFAPROBE_NODE_CONDITION", default_value = "false",
          num_args = 0..=1, default_missing_value = "true",
          value_parser = clap::builder::BoolishValueParser::new())]
    pub node_condition: bool,
    /// Share of the judged peers of this node's topology group that answer over IP but not
    /// over the fabric at which the condition turns False (and at least 2 such peers).
    #[arg(long, env = "EFAPROBE_CONDITION_THRESHOLD", default_value_t = 0.5)]
    pub condition_threshold: f64,
    /// How often the condition is written when nothing changed (its lastHeartbeatTime).
    #[arg(long, env = "EFAPROBE_CONDITION_HEARTBEAT", default_value = "5m")]
    pub condition_heartbeat: String,
    /// Post events.k8s.io/v1 Events on this node for each peer's move into and out of an
    /// unhealthy state (needs `create` and `patch` on events).
    #[arg(long, env = "EFAPROBE_NODE_EVENTS", default_value = "false",
          num_args = 0..=1, default_missing_value = "true",
          value_parser = clap::builder::BoolishValueParser::new())]
    pub node_events: bool,
    /// Event writes (new Events and series updates) per minute, at most.
    #[arg(long, env = "EFAPROBE_NODE_EVENTS_PER_MINUTE", default_value_t = 10)]
    pub node_events_per_minute: u32,
    /// Remove the startup taint (--startup-taint) from this node once its fabric is verified
    /// (needs `get` and `patch` on nodes). The agent never adds a taint.
    #[arg(long, env = "EFAPROBE_STARTUP_TAINT_GATE", default_value = "false",
          num_args = 0..=1, default_missing_value = "true",
          value_parser = clap::builder::BoolishValueParser::new())]
    pub startup_taint_gate: bool,
    /// The key of the taint the gate removes; no other taint is touched.
    #[arg(long, env = "EFAPROBE_STARTUP_TAINT", default_value = DEFAULT_STARTUP_TAINT)]
    pub startup_taint: String,
    /// Peers of this node's topology group that must answer on the fabric before the gate
    /// removes the taint (or all there are, when fewer).
    #[arg(long, env = "EFAPROBE_VERIFY_PEERS", default_value_t = 2)]
    pub verify_peers: u32,
    /// With no peer of its group to verify against, the gate removes the taint after this
    /// long (and the condition says so).
    #[arg(long, env = "EFAPROBE_STARTUP_TAINT_TIMEOUT", default_value = "10m")]
    pub startup_taint_timeout: String,
}

/// The node actions, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeActionSettings {
    pub condition: bool,
    /// In (0, 1].
    pub condition_threshold: f64,
    pub condition_heartbeat: Duration,
    pub events: bool,
    pub events_per_minute: u32,
    /// `None` when the gate is off.
    pub startup_taint: Option<StartupTaint>,
}

/// The startup gate's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartupTaint {
    pub key: String,
    pub verify_peers: usize,
    pub timeout: Duration,
}

impl NodeActionSettings {
    /// Whether any action needs the Kubernetes API.
    pub fn any(&self) -> bool {
        self.condition || self.events || self.startup_taint.is_some()
    }

    /// Everything off (the default).
    pub fn off() -> NodeActionSettings {
        NodeActionSettings {
            condition: false,
            condition_threshold: 0.5,
            condition_heartbeat: Duration::from_secs(300),
            events: false,
            events_per_minute: 10,
            startup_taint: None,
        }
    }

    pub fn from_args(a: &NodeActionArgs) -> Result<NodeActionSettings, NodeActionSettingsError> {
        if !(a.condition_threshold.is_finite()
            && a.condition_threshold > 0.0
            && a.condition_threshold <= 1.0)
        {
            return Err(bad(
                "condition-threshold",
                "EFAPROBE_CONDITION_THRESHOLD",
                format!("{}: a share above 0, at most 1", a.condition_threshold),
            ));
        }
        let condition_heartbeat = duration_within(
            &a.condition_heartbeat,
            Duration::from_secs(30),
            Duration::from_secs(3600),
        )
        .map_err(|d| bad("condition-heartbeat", "EFAPROBE_CONDITION_HEARTBEAT", d))?;
        if !(1..=600).contains(&a.node_events_per_minute) {
            return Err(bad(
                "node-events-per-minute",
                "EFAPROBE_NODE_EVENTS_PER_MINUTE",
                "between 1 and 600",
            ));
        }
        if !is_taint_key(&a.startup_taint) {
            return Err(bad(
                "startup-taint",
                "EFAPROBE_STARTUP_TAINT",
                format!(
                    "{:?} is not a taint key ([PREFIX/]NAME, NAME at most 63 of \
                     letters, digits, '-', '_', '.')",
                    a.startup_taint.chars().take(80).collect::<String>()
                ),
            ));
        }
        if !(1..=1000).contains(&a.verify_peers) {
            return Err(bad(
                "verify-peers",
                "EFAPROBE_VERIFY_PEERS",
                "between 1 and 1000 peers",
            ));
        }
        let timeout = duration_within(
            &a.startup_taint_timeout,
            Duration::from_secs(1),
            Duration::from_secs(24 * 3600),
        )
        .map_err(|d| bad("startup-taint-timeout", "EFAPROBE_STARTUP_TAINT_TIMEOUT", d))?;
        Ok(NodeActionSettings {
            condition: a.node_condition,
            condition_threshold: a.condition_threshold,
            condition_heartbeat,
            events: a.node_events,
            events_per_minute: a.node_events_per_minute,
            startup_taint: a.startup_taint_gate.then(|| StartupTaint {
                key: a.startup_taint.clone(),
                verify_peers: a.verify_peers as usize,
                timeout,
            }),
        })
    }
}

/// A node-action setting that cannot be used, named (the same shape as the agent's own
/// configuration errors, into which it converts field by field).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid setting {setting} (flag --{flag}, env {env}): {detail}")]
pub struct NodeActionSettingsError {
    pub setting: &'static str,
    pub flag: &'static str,
    pub env: &'static str,
    pub detail: String,
}

fn bad(
    flag: &'static str,
    env: &'static str,
    detail: impl Into<String>,
) -> NodeActionSettingsError {
    NodeActionSettingsError {
        setting: flag,
        flag,
        env,
        detail: detail.into(),
    }
}

/// `500ms`, `30s`, `5m`, `1h`, between `min` and `max`.
fn duration_within(text: &str, min: Duration, max: Duration) -> Result<Duration, String> {
    let bad = || format!("{text:?} is not a duration like 30s, 5m or 1h");
    let unit_at = text.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (number, unit) = text.split_at(unit_at);
    let per_unit_ms: u64 = match unit {
        "ms" => 1,
        "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return Err(bad()),
    };
    if number.is_empty() || number.len() > 9 {
        return Err(bad());
    }
    let value: u64 = number.parse().map_err(|_| bad())?;
    let d = Duration::from_millis(value * per_unit_ms);
    if d < min || d > max {
        return Err(format!("{text}: between {min:?} and {max:?}"));
    }
    Ok(d)
}

/// A Kubernetes taint key: a qualified name, `[PREFIX/]NAME`, PREFIX a DNS subdomain.
pub fn is_taint_key(key: &str) -> bool {
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    let name_ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name.as_bytes()[name.len() - 1].is_ascii_alphanumeric();
    name_ok && prefix.is_none_or(crate::hello::is_node_name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: NodeActionArgs,
    }

    fn parse(args: &[&str]) -> Result<NodeActionSettings, NodeActionSettingsError> {
        let mut full = vec!["efaprobe"];
        full.extend_from_slice(args);
        NodeActionSettings::from_args(&Cli::try_parse_from(full).expect("clap").args)
    }

    #[test]
    fn everything_is_off_by_default() {
        assert_eq!(parse(&[]).unwrap(), NodeActionSettings::off());
        assert!(!parse(&[]).unwrap().any());
    }

    #[test]
    fn flags_turn_actions_on() {
        let s = parse(&[
            "--node-condition",
            "--node-events=true",
            "--startup-taint-gate",
            "--verify-peers",
            "3",
            "--startup-taint-timeout",
            "90s",
            "--condition-threshold",
            "0.25",
        ])
        .unwrap();
        assert!(s.condition && s.events);
        assert_eq!(s.condition_threshold, 0.25);
        assert_eq!(
            s.startup_taint,
            Some(StartupTaint {
                key: DEFAULT_STARTUP_TAINT.into(),
                verify_peers: 3,
                timeout: Duration::from_secs(90),
            })
        );
        let s = parse(&["--node-condition=false", "--startup-taint", "example.com/x"]).unwrap();
        assert!(!s.condition);
        assert_eq!(
            s.startup_taint, None,
            "a key alone does not turn the gate on"
        );
    }

    #[test]
    fn each_bad_setting_is_named_with_flag_and_variable() {
        let cases: &[(&[&str], &str, &str)] = &[
            (
                &["--condition-threshold", "0"],
                "condition-threshold",
                "EFAPROBE_CONDITION_THRESHOLD",
            ),
            (
                &["--condition-threshold", "1.5"],
                "condition-threshold",
                "EFAPROBE_CONDITION_THRESHOLD",
            ),
            (
                &["--condition-threshold", "NaN"],
                "condition-threshold",
                "EFAPROBE_CONDITION_THRESHOLD",
            ),
            (
                &["--condition-heartbeat", "1s"],
                "condition-heartbeat",
                "EFAPROBE_CONDITION_HEARTBEAT",
            ),
            (
                &["--condition-heartbeat", "often"],
                "condition-heartbeat",
                "EFAPROBE_CONDITION_HEARTBEAT",
            ),
            (
                &["--node-events-per-minute", "0"],
                "node-events-per-minute",
                "EFAPROBE_NODE_EVENTS_PER_MINUTE",
            ),
            (
                &["--startup-taint", "Bad Key"],
                "startup-taint",
                "EFAPROBE_STARTUP_TAINT",
            ),
            (
                &["--startup-taint", "a/b/c"],
                "startup-taint",
                "EFAPROBE_STARTUP_TAINT",
            ),
            (
                &["--startup-taint", ""],
                "startup-taint",
                "EFAPROBE_STARTUP_TAINT",
            ),
            (
                &["--verify-peers", "0"],
                "verify-peers",
                "EFAPROBE_VERIFY_PEERS",
            ),
            (
                &["--startup-taint-timeout", "0s"],
                "startup-taint-timeout",
                "EFAPROBE_STARTUP_TAINT_TIMEOUT",
            ),
            (
                &["--startup-taint-timeout", "2d"],
                "startup-taint-timeout",
                "EFAPROBE_STARTUP_TAINT_TIMEOUT",
            ),
        ];
        for (args, flag, env) in cases {
            let err = parse(args).expect_err(flag);
            assert_eq!((err.flag, err.env), (*flag, *env), "{args:?}");
            let text = err.to_string();
            assert!(
                text.contains(&format!("--{flag}")) && text.contains(env),
                "{text}"
            );
        }
    }

    #[test]
    fn taint_keys() {
        assert!(is_taint_key(DEFAULT_STARTUP_TAINT));
        assert!(is_taint_key("node.cilium.io/agent-not-ready"));
        assert!(is_taint_key("unverified"));
        assert!(!is_taint_key("-x"));
        assert!(
            !is_taint_key("Upper.example/x"),
            "the prefix is a lowercase DNS subdomain"
        );
        assert!(!is_taint_key(&"a".repeat(64)));
    }
}

//! The node actions' flags (`efaprobe agent --node-condition ...`), each also read from an
//! environment variable, typed by their value parsers, and the settings they become.

use std::time::Duration;

use super::values;
use crate::node_actions::settings::{
    is_taint_key, NodeActionSettings, StartupTaint, DEFAULT_STARTUP_TAINT,
};

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
    /// over the fabric at which the condition turns False (and at least 2 such peers); above
    /// 0, at most 1.
    #[arg(long, env = "EFAPROBE_CONDITION_THRESHOLD", default_value = "0.5",
          value_parser = share)]
    pub condition_threshold: f64,
    /// How often the condition is written when nothing changed (its lastHeartbeatTime),
    /// 30s to 1h.
    #[arg(long, env = "EFAPROBE_CONDITION_HEARTBEAT", default_value = "5m",
          value_parser = values::duration_within(Duration::from_secs(30), Duration::from_secs(3600)))]
    pub condition_heartbeat: Duration,
    /// Post events.k8s.io/v1 Events on this node for each peer's move into and out of an
    /// unhealthy state (needs `create` and `patch` on events).
    #[arg(long, env = "EFAPROBE_NODE_EVENTS", default_value = "false",
          num_args = 0..=1, default_missing_value = "true",
          value_parser = clap::builder::BoolishValueParser::new())]
    pub node_events: bool,
    /// Event writes (new Events and series updates) per minute, at most; 1 to 600.
    #[arg(long, env = "EFAPROBE_NODE_EVENTS_PER_MINUTE", default_value = "10",
          value_parser = values::whole_number(1u32, 600, "writes"))]
    pub node_events_per_minute: u32,
    /// Remove the startup taint (--startup-taint) from this node once its fabric is verified
    /// (needs `get` and `patch` on nodes). The agent never adds a taint.
    #[arg(long, env = "EFAPROBE_STARTUP_TAINT_GATE", default_value = "false",
          num_args = 0..=1, default_missing_value = "true",
          value_parser = clap::builder::BoolishValueParser::new())]
    pub startup_taint_gate: bool,
    /// The key of the taint the gate removes; no other taint is touched.
    #[arg(long, env = "EFAPROBE_STARTUP_TAINT", default_value = DEFAULT_STARTUP_TAINT,
          value_parser = taint_key)]
    pub startup_taint: String,
    /// Peers of this node's topology group that must answer on the fabric before the gate
    /// removes the taint (or all there are, when fewer); 1 to 1000.
    #[arg(long, env = "EFAPROBE_VERIFY_PEERS", default_value = "2",
          value_parser = values::whole_number(1u32, 1000, "peers"))]
    pub verify_peers: u32,
    /// With no peer of its group to verify against, the gate removes the taint after this
    /// long (and the condition says so); 1s to 24h.
    #[arg(long, env = "EFAPROBE_STARTUP_TAINT_TIMEOUT", default_value = "10m",
          value_parser = values::duration_within(Duration::from_secs(1), Duration::from_secs(24 * 3600)))]
    pub startup_taint_timeout: Duration,
}

/// The node actions the flags ask for (their values are checked by their parsers).
pub fn node_action_settings(a: &NodeActionArgs) -> NodeActionSettings {
    NodeActionSettings {
        condition: a.node_condition,
        condition_threshold: a.condition_threshold,
        condition_heartbeat: a.condition_heartbeat,
        events: a.node_events,
        events_per_minute: a.node_events_per_minute,
        startup_taint: a.startup_taint_gate.then(|| StartupTaint {
            key: a.startup_taint.clone(),
            verify_peers: a.verify_peers as usize,
            timeout: a.startup_taint_timeout,
        }),
    }
}

/// A share above 0, at most 1.
fn share(text: &str) -> Result<f64, String> {
    text.trim()
        .parse::<f64>()
        .ok()
        .filter(|n| n.is_finite() && *n > 0.0 && *n <= 1.0)
        .ok_or_else(|| format!("{text:?} is not a share above 0, at most 1"))
}

fn taint_key(text: &str) -> Result<String, String> {
    if is_taint_key(text) {
        Ok(text.to_owned())
    } else {
        Err(format!(
            "{:?} is not a taint key ([PREFIX/]NAME, NAME at most 63 of letters, digits, '-', \
             '_', '.', PREFIX a lowercase DNS subdomain)",
            text.chars().take(80).collect::<String>()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{parse_command_line, ConfigErrors};
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: NodeActionArgs,
    }

    fn parse(args: &[&str]) -> Result<NodeActionSettings, ConfigErrors> {
        let mut full = vec!["efaprobe"];
        full.extend_from_slice(args);
        let parsed = parse_command_line::<Cli, _>(full.into_iter().map(Into::into)).expect("clap");
        parsed
            .errors
            .or_ok(node_action_settings(&parsed.parsed.expect("parsed").args))
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
            let errors = parse(args).expect_err(flag);
            let err = &errors.0[0];
            assert_eq!((err.flag, err.env), (*flag, *env), "{args:?}");
            let text = err.to_string();
            assert!(
                text.contains(&format!("--{flag}")) && text.contains(env),
                "{text}"
            );
        }
    }
}

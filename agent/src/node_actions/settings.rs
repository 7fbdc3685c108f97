//! The node actions' settings, as the configuration layer (`config::node_actions`) checked
//! them from the flags.

use std::time::Duration;

/// The taint the startup gate removes unless `--startup-taint` names another.
pub const DEFAULT_STARTUP_TAINT: &str = "efaprobe.io/fabric-unverified";

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

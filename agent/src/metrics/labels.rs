//! Label sets and label values of the agent's metrics.
//!
//! Every bounded label (`state`, `reason`, `path`, `result`) is an enum, so a value outside
//! the documented set cannot reach a series. Free-text values (peer names, addresses,
//! provider strings) go through [`LabelText`], which escapes them: prometheus-client 0.24
//! writes label values verbatim, and one `"` in a peer-supplied name would otherwise break
//! the whole exposition, not just one series.

use std::fmt::{self, Write};

use prometheus_client::encoding::{
    EncodeLabelSet, EncodeLabelValue, LabelSetEncoder, LabelValueEncoder,
};

use super::per_peer::PerPeerMode;
use crate::fabric_ping::engine::ProbeOutcome;
use crate::probe::FailureReason;
use crate::verdict::{DiagnosisReason, PeerState};

/// Which path a peer probe used.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    strum::VariantArray,
    strum::IntoStaticStr,
)]
#[strum(serialize_all = "snake_case")]
pub enum ProbePath {
    /// TCP/HTTP hello to the peer's agent.
    Ip,
    /// libfabric RDM ping (OS-bypass).
    Fabric,
}

impl ProbePath {
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// The outcome of one peer probe: the `result` label of `efa_probes_total`.
///
/// IP failures keep the kind that points at a fix (the same words as [`FailureReason`]);
/// fabric failures are either silent (`timeout`), reported by the provider
/// (`provider_error`), or never sent (`error`).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    strum::VariantArray,
    strum::IntoStaticStr,
)]
#[strum(serialize_all = "snake_case")]
pub enum ProbeResult {
    /// The peer answered.
    Ok,
    /// No answer before the deadline (either path): packets silently dropped.
    Timeout,
    /// IP: the peer's host refused the connection (agent not listening).
    Refused,
    /// IP: ICMP unreachable, no route, or a local error sending.
    Unreachable,
    /// IP: the connection was reset after it was established.
    Reset,
    /// IP: the peer's address is a name that did not resolve.
    Dns,
    /// IP: something answered, but not an efaprobe hello (including a non-2xx status).
    Protocol,
    /// Fabric: the provider reported the send failed (an error completion).
    ProviderError,
    /// The probe could not be made: on the fabric, it never left (no such peer, no
    /// transmit slot, engine stopped).
    Error,
}

impl ProbeResult {
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

impl ProbeResult {
    /// The results a probe on `path` can have: the series created at 0 up front.
    pub fn possible_on(path: ProbePath) -> &'static [ProbeResult] {
        use ProbeResult::*;
        match path {
            ProbePath::Ip => &[Ok, Timeout, Refused, Unreachable, Reset, Dns, Protocol],
            ProbePath::Fabric => &[Ok, Timeout, ProviderError, Error],
        }
    }

    /// An IP probe's failure, by kind. `http_status` counts as `protocol`: a hello
    /// answered with an error status came from something that is not a working agent.
    pub const fn from_failure(reason: FailureReason) -> ProbeResult {
        match reason {
            FailureReason::Dns => ProbeResult::Dns,
            FailureReason::Timeout => ProbeResult::Timeout,
            FailureReason::Refused => ProbeResult::Refused,
            FailureReason::Unreachable => ProbeResult::Unreachable,
            FailureReason::Reset => ProbeResult::Reset,
            FailureReason::Protocol | FailureReason::HttpStatus => ProbeResult::Protocol,
        }
    }
}

impl From<FailureReason> for ProbeResult {
    fn from(reason: FailureReason) -> ProbeResult {
        ProbeResult::from_failure(reason)
    }
}

/// A fabric probe's outcome.
impl From<&ProbeOutcome> for ProbeResult {
    fn from(outcome: &ProbeOutcome) -> ProbeResult {
        match outcome {
            ProbeOutcome::Pong { .. } => ProbeResult::Ok,
            ProbeOutcome::Timeout => ProbeResult::Timeout,
            ProbeOutcome::SendFailed { .. } => ProbeResult::ProviderError,
            ProbeOutcome::NotSent { .. } => ProbeResult::Error,
        }
    }
}

/// Implements [`EncodeLabelValue`] through an `as_str` that returns a fixed, safe word.
macro_rules! label_value_from_as_str {
    ($($ty:ty),*) => {$(
        impl EncodeLabelValue for $ty {
            fn encode(&self, encoder: &mut LabelValueEncoder) -> fmt::Result {
                encoder.write_str(self.as_str())
            }
        }
    )*};
}

/// The verdict enums live in `verdict` and `probe`, which know nothing of metrics; these
/// wrappers give them a label encoding without touching those modules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StateLabel(pub PeerState);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DiagnosisLabel(pub DiagnosisReason);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FailureLabel(pub FailureReason);

impl StateLabel {
    fn as_str(&self) -> &'static str {
        self.0.as_str()
    }
}

impl DiagnosisLabel {
    fn as_str(&self) -> &'static str {
        self.0.as_str()
    }
}

impl FailureLabel {
    fn as_str(&self) -> &'static str {
        self.0.as_str()
    }
}

label_value_from_as_str!(
    ProbePath,
    ProbeResult,
    StateLabel,
    DiagnosisLabel,
    FailureLabel,
    PerPeerMode
);

/// A free-text label value, escaped as both text formats require (`\\`, `\"`, `\n`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LabelText(pub String);

impl From<&str> for LabelText {
    fn from(text: &str) -> LabelText {
        LabelText(text.to_owned())
    }
}

impl EncodeLabelValue for LabelText {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> fmt::Result {
        write_escaped(encoder, &self.0)
    }
}

/// Writes `text` with `\\`, `\"` and `\n` escaped.
fn write_escaped(encoder: &mut LabelValueEncoder, text: &str) -> fmt::Result {
    let mut rest = text;
    while let Some(at) = rest.find(['\\', '"', '\n']) {
        encoder.write_str(&rest[..at])?;
        encoder.write_str(match rest.as_bytes()[at] {
            b'\\' => "\\\\",
            b'"' => "\\\"",
            _ => "\\n",
        })?;
        rest = &rest[at + 1..];
    }
    encoder.write_str(rest)
}

/// `peer="NAME"`, the name borrowed from the state for one scrape (escaped like
/// [`LabelText`]).
#[derive(Debug, Clone, Copy)]
pub struct PeerName<'a>(pub &'a str);

impl EncodeLabelValue for PeerName<'_> {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> fmt::Result {
        write_escaped(encoder, self.0)
    }
}

impl EncodeLabelSet for PeerName<'_> {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> fmt::Result {
        [("peer", *self)].encode(encoder)
    }
}

/// `group`: the peer's topology group, bounded (see `groups`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ProbeLabels {
    pub path: ProbePath,
    pub group: LabelText,
    pub result: ProbeResult,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct PathGroupLabels {
    pub path: ProbePath,
    pub group: LabelText,
}

/// A per-node count by verdict (`efa_peers_by_state`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct StateLabels {
    pub state: StateLabel,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ModeLabels {
    pub mode: PerPeerMode,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, EncodeLabelSet)]
pub struct TargetAddressLabels {
    pub target: LabelText,
    pub address: LabelText,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct TargetFailureLabels {
    pub target: LabelText,
    pub address: LabelText,
    pub reason: FailureLabel,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ProviderLabels {
    pub provider: LabelText,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct DeviceLabels {
    pub provider: LabelText,
    pub domain: LabelText,
    pub address: LabelText,
}

/// The node's place in EC2: its primary interface's subnet and VPC.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct TopologyLabels {
    pub instance_id: LabelText,
    pub instance_type: LabelText,
    pub availability_zone: LabelText,
    pub subnet: LabelText,
    pub vpc: LabelText,
    /// Empty when the instance is in no placement group.
    pub placement_group: LabelText,
}

/// One hardware counter of one port of one device.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, EncodeLabelSet)]
pub struct HwCounterLabels {
    pub device: LabelText,
    pub port: LabelText,
    pub counter: LabelText,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct BuildLabels {
    pub version: LabelText,
    pub provider: LabelText,
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::family::Family;
    use prometheus_client::metrics::gauge::Gauge;
    use prometheus_client::registry::Registry;
    use strum::VariantArray;

    #[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
    struct PeerLabels {
        peer: LabelText,
    }

    fn encoded(labels: PeerLabels) -> String {
        let mut registry = Registry::default();
        let family = Family::<PeerLabels, Gauge>::default();
        registry.register("x", "x", family.clone());
        family.get_or_create(&labels).set(1);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        text.lines().nth(2).unwrap().to_owned()
    }

    #[test]
    fn free_text_is_escaped() {
        let line = encoded(PeerLabels {
            peer: LabelText::from("a\"b\\c\nd} 1\nevil 2"),
        });
        assert_eq!(line, r#"x{peer="a\"b\\c\nd} 1\nevil 2"} 1"#);
        let plain = encoded(PeerLabels {
            peer: LabelText::from("ip-10-0-1-12.ec2.internal"),
        });
        assert_eq!(plain, r#"x{peer="ip-10-0-1-12.ec2.internal"} 1"#);
    }

    #[test]
    fn bounded_labels_are_snake_case_words() {
        let results: Vec<&str> = ProbeResult::VARIANTS.iter().map(|r| r.as_str()).collect();
        assert_eq!(
            results,
            [
                "ok",
                "timeout",
                "refused",
                "unreachable",
                "reset",
                "dns",
                "protocol",
                "provider_error",
                "error"
            ]
        );
        assert_eq!(ProbePath::Ip.as_str(), "ip");
        assert_eq!(ProbePath::Fabric.as_str(), "fabric");
    }

    #[test]
    fn failures_map_to_probe_results() {
        assert_eq!(
            ProbeResult::from(FailureReason::Timeout),
            ProbeResult::Timeout
        );
        assert_eq!(
            ProbeResult::from(FailureReason::HttpStatus),
            ProbeResult::Protocol
        );
        assert_eq!(ProbeResult::from(FailureReason::Dns), ProbeResult::Dns);
        assert_eq!(
            ProbeResult::from(&ProbeOutcome::NotSent {
                reason: "no peer".into()
            }),
            ProbeResult::Error
        );
        assert_eq!(
            ProbeResult::from(&ProbeOutcome::Timeout),
            ProbeResult::Timeout
        );
    }
}

/// What a fabric ping pair came to (`measured`, `unsettled`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct PairResultLabels {
    pub result: &'static str,
}

/// Why a peer was probed (`monitor::schedule::Role`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RoleLabels {
    pub role: &'static str,
}

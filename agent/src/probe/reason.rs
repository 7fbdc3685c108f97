//! Why a probe failed, as a small closed set of reasons.
//!
//! The reason becomes the `reason` label of `efa_target_failures_total`, so it must stay
//! bounded: every failure, whatever its cause, maps to one of these seven values, and the
//! free text goes into the message instead.

use std::fmt;
use std::io;

use serde::{Deserialize, Serialize};

/// The kind of a failed check. Each kind points an operator at a different fix.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    strum::VariantArray,
    strum::IntoStaticStr,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum FailureReason {
    /// The name did not resolve (no answer, NXDOMAIN, no addresses).
    Dns,
    /// No answer before the deadline: packets silently dropped, the signature of a
    /// security-group gap or a blackholed route.
    Timeout,
    /// The host answered with a reset: reachable, but nothing listens on the port.
    Refused,
    /// ICMP host or network unreachable, or no route from this node.
    Unreachable,
    /// The connection was reset or broken after it was established.
    Reset,
    /// Connected, but the answer was not what the check expects (not NATS, not HTTP, an
    /// `-ERR`, a line or body over the limit, or the server closed without answering).
    Protocol,
    /// An HTTP answer with a status the check does not accept.
    HttpStatus,
}

impl FailureReason {
    /// The label value used in metrics and JSON; identical to the serde form.
    pub fn as_str(self) -> &'static str {
        self.into()
    }

    /// Classifies an OS error from connecting to, reading from or writing to a peer.
    ///
    /// Errors outside the known set (no source address, network down, a local firewall's
    /// `EPERM`) all mean this node could not get packets to the address, so they count as
    /// `unreachable`; the message keeps the OS's own text.
    pub fn from_io_error(err: &io::Error) -> FailureReason {
        use io::ErrorKind as K;
        match err.kind() {
            K::ConnectionRefused => FailureReason::Refused,
            K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe => FailureReason::Reset,
            // ETIMEDOUT: the kernel gave up retransmitting; same meaning as our deadline.
            K::TimedOut => FailureReason::Timeout,
            // Data that does not parse, or a peer that hung up mid-answer.
            K::InvalidData | K::UnexpectedEof => FailureReason::Protocol,
            _ => FailureReason::Unreachable,
        }
    }
}

impl fmt::Display for FailureReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failed check: the bounded reason plus a message for the human reading it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{reason}: {message}")]
pub struct ProbeFailure {
    pub reason: FailureReason,
    pub message: String,
}

impl ProbeFailure {
    /// `message` often quotes what the other side sent (a peer's hello, a server's answer):
    /// its control characters are replaced (see [`crate::untrusted_text`]).
    pub fn new(reason: FailureReason, message: impl Into<String>) -> ProbeFailure {
        let mut message = message.into();
        crate::untrusted_text::make_printable(&mut message);
        ProbeFailure { reason, message }
    }

    /// A failure from an OS error, classified by [`FailureReason::from_io_error`]; `context`
    /// says what was being done (`"connect to 10.0.0.1:4222"`).
    pub fn from_io(context: &str, err: &io::Error) -> ProbeFailure {
        ProbeFailure::new(
            FailureReason::from_io_error(err),
            format!("{context}: {err}"),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use strum::VariantArray;

    #[test]
    fn as_str_matches_serde_for_every_reason() {
        for reason in FailureReason::VARIANTS.iter().copied() {
            let json = serde_json::to_string(&reason).unwrap();
            assert_eq!(json, format!("\"{}\"", reason.as_str()));
            let back: FailureReason = serde_json::from_str(&json).unwrap();
            assert_eq!(back, reason);
            assert_eq!(reason.to_string(), reason.as_str());
        }
    }

    #[test]
    fn label_values_are_the_documented_ones() {
        let labels: Vec<&str> = FailureReason::VARIANTS.iter().map(|r| r.as_str()).collect();
        assert_eq!(
            labels,
            [
                "dns",
                "timeout",
                "refused",
                "unreachable",
                "reset",
                "protocol",
                "http_status"
            ]
        );
    }

    /// Real errno values, as the kernel returns them from connect/read/write.
    #[test]
    fn os_errors_are_classified() {
        let cases = [
            (libc::ECONNREFUSED, FailureReason::Refused),
            (libc::EHOSTUNREACH, FailureReason::Unreachable),
            (libc::ENETUNREACH, FailureReason::Unreachable),
            (libc::ENETDOWN, FailureReason::Unreachable),
            (libc::EADDRNOTAVAIL, FailureReason::Unreachable),
            (libc::EPERM, FailureReason::Unreachable),
            (libc::ECONNRESET, FailureReason::Reset),
            (libc::ECONNABORTED, FailureReason::Reset),
            (libc::EPIPE, FailureReason::Reset),
            (libc::ETIMEDOUT, FailureReason::Timeout),
        ];
        for (errno, want) in cases {
            let err = io::Error::from_raw_os_error(errno);
            assert_eq!(
                FailureReason::from_io_error(&err),
                want,
                "errno {errno}: {err}"
            );
        }
    }

    #[test]
    fn failure_message_keeps_context_and_os_text() {
        let err = io::Error::from_raw_os_error(libc::ECONNREFUSED);
        let failure = ProbeFailure::from_io("connect to 127.0.0.1:1", &err);
        assert_eq!(failure.reason, FailureReason::Refused);
        assert!(failure.message.starts_with("connect to 127.0.0.1:1: "));
        assert!(failure.message.contains("refused"), "{}", failure.message);
        let json = serde_json::to_value(&failure).unwrap();
        assert_eq!(json["reason"], "refused");
    }
}

//! What the engine thread has queued or in flight: sends waiting for the provider, sends it
//! has taken, and probes waiting for their pongs.

use std::time::{Duration, Instant};

use fabric::EndpointAddress;
use tokio::sync::oneshot;

use super::ProbeOutcome;

pub(super) enum Outgoing {
    Ping {
        seq: u64,
    },
    Pong {
        key: EndpointAddress,
        bytes: Vec<u8>,
        queued_at: Instant,
    },
}

/// How long a pong may wait behind one still in flight to the same destination. A prober
/// gives up on a probe after its timeout anyway; on a path where sends never complete, pongs
/// go no further than this.
pub(super) const PONG_MAX_WAIT: Duration = Duration::from_secs(1);

pub(super) struct InFlight {
    pub key: EndpointAddress,
    pub size: usize,
    pub deadline: Instant,
    pub sent_at: Option<Instant>,
    /// The token of the ping in flight, which its pong must echo: drawn afresh for each
    /// ping, so that nobody who has not seen the ping can answer it.
    pub token: u64,
    /// Whether a second ping follows the first one's pong.
    pub pair: bool,
    /// The first ping's answer, once it came: (rtt, dwell, responder).
    pub cold: Option<(Duration, Duration, u64)>,
    pub reply: oneshot::Sender<ProbeOutcome>,
}

pub(super) enum SendPurpose {
    Ping {
        seq: u64,
        key: EndpointAddress,
        size: usize,
        token: u64,
    },
    Pong {
        key: EndpointAddress,
        /// To a sender that is no explicit peer: whether one of its pongs completed before
        /// (see `stranger_pongs_in_flight`).
        stranger: Option<bool>,
    },
}

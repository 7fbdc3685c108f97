//! Where a peer probe is scheduled within a round: the probe each picked peer gets (a
//! single ping or a pair, a larger size or not, its deadlines), and the follow-ups a result
//! calls for (a confirmation, the fabric probe of an address just learned).

use std::time::Duration;

use super::observe::PeerRtts;
use super::{PeerMonitor, MIN_CONFIRM_DEADLINE};
use crate::fabric_ping::{rail_deadline_floor, FabricPinger, PeerHandle, ProbeOutcome};
use crate::hello::Hello;
use crate::probe::hello::{fetch_hello, HelloFailure};

/// One peer probe to run: what it needs, owned, so that it runs while results are applied.
pub(super) struct Job {
    key: String,
    fabric: Option<(FabricPinger, PeerHandle)>,
    /// The larger probe, on its own endpoint: (endpoint, handle, size).
    large: Option<(FabricPinger, PeerHandle, usize)>,
    /// Rails 1 and up: (rail, its engine, the peer's handle there), one ping each.
    rails: Vec<(u16, FabricPinger, PeerHandle)>,
    /// Rails 1 and up held when the job was made, and whether `rails` is only half of them.
    rails_held: usize,
    rotated: bool,
    /// Measure the RTT with a ping pair (else one ping proves the path).
    pair: bool,
    size: usize,
    ip_deadline: Duration,
    fabric_deadline: Duration,
    /// Rails 1 and up: `fabric_deadline`, but at least what a steady rail's ping can take
    /// ([`rail_deadline_floor`]).
    rail_deadline: Duration,
    /// 0 for the round's probe, then 1, 2, ... for confirmations.
    confirmation: u32,
}

/// What one probe found for one peer, before it is applied.
pub(super) struct RoundResult {
    pub key: String,
    pub confirmation: u32,
    /// The probe had a fabric address to ping (else the fabric was not probed).
    pub fabric_attempted: bool,
    /// The fabric probe was a ping pair (an RTT measurement), not a single ping.
    pub pair: bool,
    pub hello: Result<(Hello, Duration), HelloFailure>,
    pub fabric: Option<ProbeOutcome>,
    /// A larger probe sent after the small one answered: (size, outcome).
    pub large: Option<(usize, ProbeOutcome)>,
    /// Rails 1 and up that were pinged: (rail, outcome).
    pub rails: Vec<(u16, ProbeOutcome)>,
    /// Rails 1 and up held when the probe was made.
    pub rails_held: usize,
    /// Only half of them were pinged, by turn (see `rails::EVERY_RAIL_UP_TO`).
    pub rotated: bool,
}

impl Job {
    /// Both paths at once; the larger probe only after the small one answered.
    pub(super) async fn run(self) -> RoundResult {
        let Job {
            key,
            fabric,
            large,
            rails,
            rails_held,
            rotated,
            pair,
            size,
            ip_deadline,
            fabric_deadline,
            rail_deadline,
            confirmation,
        } = self;
        let fabric_attempted = fabric.is_some();
        let fabric = async {
            let Some((pinger, handle)) = fabric else {
                return (None, None);
            };
            let small = if pair {
                pinger.probe(handle, size, fabric_deadline).get().await
            } else {
                pinger.reach(handle, size, fabric_deadline).get().await
            };
            // Larger sizes only where the small one answered: a path that drops everything
            // says nothing about sizes.
            let large = match (&small, large) {
                (Some(ProbeOutcome::Pong { .. }), Some((lp, lh, big))) => lp
                    .reach(lh, big, fabric_deadline)
                    .get()
                    .await
                    .map(|o| (big, o)),
                _ => None,
            };
            (small, large)
        };
        // Every other rail at once: one poll loop serves them all.
        let rails =
            futures::future::join_all(rails.into_iter().map(|(rail, engine, handle)| async move {
                let outcome = engine.reach(handle, size, rail_deadline).get().await;
                (
                    rail,
                    outcome.unwrap_or_else(|| ProbeOutcome::NotSent {
                        reason: "fabric engine stopped".into(),
                    }),
                )
            }));
        let (hello, (fabric, large), rails) =
            tokio::join!(fetch_hello(&key, ip_deadline), fabric, rails);
        RoundResult {
            key,
            confirmation,
            fabric_attempted,
            pair,
            hello,
            fabric,
            large,
            rails,
            rails_held,
            rotated,
        }
    }
}

impl PeerMonitor {
    /// The probe of `key` for this round (`confirmation` 0, with the round's larger size if
    /// any) or a confirmation of it.
    pub(super) fn job(&self, key: &str, large: Option<usize>, confirmation: u32) -> Option<Job> {
        let peer = self.peers.get(key)?;
        let probing = peer.probing.as_deref();
        let timeout = self.settings.timeout;
        let fabric = match (self.rails.first(), probing.and_then(|p| p.fabric.as_ref())) {
            (Some(p), Some((_, h))) => Some((p.clone(), *h)),
            _ => None,
        };
        let large = match (
            &self.large_pinger,
            probing.and_then(|p| p.large_handle),
            large,
        ) {
            (Some(p), Some(h), Some(size)) if confirmation == 0 => Some((p.clone(), h, size)),
            _ => None,
        };
        let never = PeerRtts::default();
        let rtts = probing.map_or(&never, |p| &p.rtts);
        let slow = rtts
            .fabric_cold
            .is_some_and(|r| r > self.settings.policy.max_rtt);
        let pair = confirmation == 0
            && (rtts.fabric.is_none()
                || slow
                || rtts.rounds_since_fabric + 1 >= self.settings.fabric_rtt_every);
        let (ip_deadline, fabric_deadline) = if confirmation == 0 {
            (timeout, timeout)
        } else {
            (
                confirm_deadline(rtts.ip, timeout),
                confirm_deadline(rtts.fabric_cold, timeout),
            )
        };
        // Confirmations ping every rail: a rail's failure is confirmed on that rail.
        let rotated = confirmation == 0 && probing.is_some_and(|p| p.rails.rotates());
        let rails = probing.map_or_else(Vec::new, |p| p.rails.probes(&self.rails, rotated));
        let rails_held = probing.map_or(0, |p| p.rails.held());
        let rail_deadline = fabric_deadline.max(rail_deadline_floor(timeout));
        Some(Job {
            key: key.to_owned(),
            fabric,
            large,
            rails,
            rails_held,
            rotated,
            pair,
            size: self.settings.probe_size,
            ip_deadline,
            fabric_deadline,
            rail_deadline,
            confirmation,
        })
    }

    /// The probe that follows an applied result of `key`, if any: at once, the fabric probe
    /// of an address its hello just taught (rather than leave the peer `unknown` until the
    /// next round: a peer newly in this node's sample would otherwise lose one), or a
    /// confirmation of a result that disagrees with its state, up to the confirmations its
    /// hysteresis needs.
    pub(super) fn follow_up(&self, key: &str, done: &RoundResult) -> Option<Job> {
        let probing = self.peers.get(key)?.probing.as_deref()?;
        let confirmations = self.settings.policy.hysteresis.max(1) - 1;
        let n = done.confirmation;
        let learned = (!done.fabric_attempted && probing.fabric.is_some())
            || probing.rails.held() > done.rails_held;
        let confirm = probing.verdict.is_changing() && n < confirmations;
        if learned {
            self.job(key, None, n)
        } else if confirm {
            self.job(key, None, n + 1)
        } else {
            None
        }
    }
}

/// A confirming probe's deadline: four times the peer's recent answer time, at least
/// [`MIN_CONFIRM_DEADLINE`], at most the probe timeout (which a peer never heard from gets).
pub(super) fn confirm_deadline(recent: Option<Duration>, timeout: Duration) -> Duration {
    recent
        .map_or(timeout, |r| (r * 4).max(MIN_CONFIRM_DEADLINE))
        .min(timeout)
}

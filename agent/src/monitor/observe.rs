//! What one probe of a peer saw, path by path: pure functions of the probe's results and of
//! what the monitor knows of the peer. No sockets, no engine: unit tests drive them.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::fabric_ping::ProbeOutcome;
use crate::hello::Hello;
use crate::metrics::ProbeResult;
use crate::probe::hello::HelloFailure;
use crate::probe::FailureReason;
use crate::state::{PathFailure, PathStatus};
use crate::verdict::{FabricObservation, IpObservation};

/// A probe to count in `efa_probes_total`, and the RTT for the histogram if it measured one.
pub(super) type Counted = (ProbeResult, Option<Duration>);

/// The IP path's result (the hello fetch).
#[derive(Debug, Clone, PartialEq)]
pub(super) struct IpSeen {
    pub observation: IpObservation,
    pub status: PathStatus,
    pub counted: Counted,
}

pub(super) fn ip_path(hello: &Result<(Hello, Duration), HelloFailure>) -> IpSeen {
    match hello {
        Ok((_, rtt)) => IpSeen {
            observation: IpObservation::Answered(*rtt),
            status: PathStatus {
                reachable: Some(true),
                rtt_seconds: Some(rtt.as_secs_f64()),
                last_failure: None,
                last_error: None,
                provider_reason: None,
            },
            counted: (ProbeResult::Ok, Some(*rtt)),
        },
        Err(HelloFailure { failure, foreign }) => IpSeen {
            observation: match failure.reason {
                _ if *foreign => IpObservation::ForeignHello,
                FailureReason::Timeout => IpObservation::Timeout,
                FailureReason::Refused => IpObservation::Refused,
                FailureReason::Protocol | FailureReason::HttpStatus => IpObservation::Protocol,
                _ => IpObservation::OtherError,
            },
            status: PathStatus {
                reachable: Some(false),
                rtt_seconds: None,
                last_failure: Some(failure.reason.into()),
                last_error: Some(failure.message.clone()),
                provider_reason: None,
            },
            counted: (ProbeResult::from_failure(failure.reason), None),
        },
    }
}

/// What the fabric path is, for a peer whose probe had nothing to ping.
#[derive(Debug, Clone, Copy)]
pub(super) struct FabricContext<'a> {
    /// This node has a fabric endpoint.
    pub local_fabric: bool,
    /// The provider this node was asked to use.
    pub provider: Option<&'a str>,
    /// The peer's latest hello.
    pub hello: Option<&'a Hello>,
    /// The peer's latest measured RTT, reported for a path a single ping proved.
    pub measured: Option<Duration>,
    /// Why this node's engine refused the address the peer's hello names, if it did.
    pub refused: Option<&'a str>,
}

/// Whether `hello` offers a fabric a node using `provider` can probe: available, and of
/// that provider.
pub(super) fn offers_fabric(hello: &Hello, provider: Option<&str>) -> bool {
    hello.fabric.available && Some(hello.fabric.provider.as_str()) == provider
}

/// The fabric address `hello` offers rail `rail` of a node using `provider`: its endpoint
/// `rail`'s, while it [offers a fabric](offers_fabric).
pub(super) fn offered_rail_address(
    hello: &Hello,
    provider: Option<&str>,
    rail: usize,
) -> Option<Vec<u8>> {
    offers_fabric(hello, provider)
        .then(|| hello.fabric_address(rail))
        .flatten()
}

/// The address rail 0 probes: the fabric path's (see [`offered_rail_address`]).
pub(super) fn offered_address(hello: &Hello, provider: Option<&str>) -> Option<Vec<u8>> {
    offered_rail_address(hello, provider, 0)
}

/// Whether a hello just fetched (`fresh`) no longer offers `held`, the address in use: it
/// withdrew its fabric, names another provider or another address. Such a hello wins over
/// a ping of the old address in the same round; a failed fetch (`None`) withdraws nothing.
pub(super) fn withdraws(
    held: Option<&[u8]>,
    fresh: Option<&Hello>,
    provider: Option<&str>,
) -> bool {
    match (held, fresh) {
        (Some(held), Some(hello)) => offered_address(hello, provider).as_deref() != Some(held),
        _ => false,
    }
}

/// The fabric path's result.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct FabricSeen {
    pub observation: FabricObservation,
    /// `None`: nothing new (the address is not learned yet); the path's status stays.
    pub status: Option<PathStatus>,
    /// The probe sent, if one was.
    pub counted: Option<Counted>,
}

/// The fabric path: what was probed this round, or why nothing was.
pub(super) fn fabric_path(outcome: Option<&ProbeOutcome>, ctx: FabricContext<'_>) -> FabricSeen {
    let not_probed = |observation, failure, why| FabricSeen {
        observation,
        status: Some(not_probed(failure, why)),
        counted: None,
    };
    match (outcome, ctx.hello) {
        _ if !ctx.local_fabric => FabricSeen {
            observation: FabricObservation::LocalNoFabric,
            status: None,
            counted: None,
        },
        (Some(outcome), _) => {
            let (observation, status, result) = fabric_result(outcome, ctx.measured, ctx.provider);
            FabricSeen {
                observation,
                status: Some(status),
                counted: Some((result, rtt_of(outcome))),
            }
        }
        (None, Some(hello)) if !hello.fabric.available => not_probed(
            FabricObservation::PeerNoFabric,
            PathFailure::PeerNoFabric,
            hello
                .fabric
                .error
                .clone()
                .unwrap_or_else(|| "no fabric".into()),
        ),
        (None, Some(hello)) if Some(hello.fabric.provider.as_str()) != ctx.provider => not_probed(
            FabricObservation::ProviderMismatch,
            PathFailure::ProviderMismatch,
            format!(
                "the peer uses {:?}, this node {:?}",
                hello.fabric.provider,
                ctx.provider.unwrap_or("none")
            ),
        ),
        (None, Some(_)) if ctx.refused.is_some() => not_probed(
            FabricObservation::BadAddress,
            PathFailure::BadAddress,
            ctx.refused.unwrap_or_default().to_owned(),
        ),
        (None, _) => FabricSeen {
            observation: FabricObservation::NotLearned,
            status: None,
            counted: None,
        },
    }
}

/// The RTTs the monitor keeps of a peer: what a confirming probe's deadline and the choice
/// of a single ping or a pair rest on.
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct PeerRtts {
    /// The latest RTT a ping pair measured on the fabric path.
    pub fabric: Option<Duration>,
    /// The latest answer time of a first (or single) ping, idle responder included: what a
    /// confirming probe's deadline is based on.
    pub fabric_cold: Option<Duration>,
    /// Rounds since the fabric RTT was measured.
    pub rounds_since_fabric: u32,
    /// The latest hello's time.
    pub ip: Option<Duration>,
}

impl PeerRtts {
    /// Learns from a fabric probe's outcome; for an answered pair, whether it measured the
    /// RTT (`efa_fabric_rtt_pairs_total{result}`).
    pub fn learn_fabric(&mut self, outcome: &ProbeOutcome, confirmation: u32) -> Option<bool> {
        let ProbeOutcome::Pong {
            rtt,
            cold_rtt,
            warm,
            ..
        } = outcome
        else {
            return None;
        };
        self.fabric_cold = Some(*cold_rtt);
        if *warm {
            self.fabric = Some(*rtt);
            self.rounds_since_fabric = 0;
        } else if confirmation == 0 {
            self.rounds_since_fabric += 1;
        }
        Some(*warm)
    }
}

/// Larger probes: records the latest outcome per size, and returns the probe to count.
pub(super) fn large_probe(
    results: &mut BTreeMap<usize, bool>,
    large: Option<&(usize, ProbeOutcome)>,
) -> Option<Counted> {
    let (size, outcome) = large?;
    match outcome {
        ProbeOutcome::Pong { .. } => {
            results.insert(*size, true);
        }
        ProbeOutcome::Timeout | ProbeOutcome::SendFailed { .. } => {
            results.insert(*size, false);
        }
        ProbeOutcome::NotSent { .. } => {}
    }
    let (_, _, result) = fabric_result(outcome, None, None);
    Some((result, rtt_of(outcome)))
}

/// The smallest larger size now lost, while the small probe answers.
pub(super) fn lost_size(
    results: &BTreeMap<usize, bool>,
    fabric: &FabricObservation,
) -> Option<usize> {
    match fabric {
        FabricObservation::Answered(_) => {
            results.iter().find(|(_, ok)| !**ok).map(|(size, _)| *size)
        }
        _ => None,
    }
}

/// The fabric status of a path whose larger probes are lost.
pub(super) fn size_lost(status: &mut PathStatus, lost: usize, probe_size: usize) {
    status.last_failure = Some(PathFailure::ProbeSize);
    status.last_error = Some(format!(
        "{lost}-byte probes get no answer while {probe_size}-byte probes do"
    ));
}

pub(super) fn not_probed(failure: PathFailure, why: String) -> PathStatus {
    PathStatus {
        reachable: None,
        rtt_seconds: None,
        last_failure: Some(failure),
        last_error: Some(why),
        provider_reason: None,
    }
}

/// The RTT an outcome measured: a pair's second ping's only (a single ping's includes the
/// responder's polling).
pub(super) fn rtt_of(outcome: &ProbeOutcome) -> Option<Duration> {
    match outcome {
        ProbeOutcome::Pong {
            rtt, warm: true, ..
        } => Some(*rtt),
        _ => None,
    }
}

/// What a fabric outcome means; `measured` is the peer's latest measured RTT, reported for
/// a path a single ping proved. On `efa` (`provider`), a failed send's own error code is
/// decoded into the status's `provider_reason`.
pub(super) fn fabric_result(
    outcome: &ProbeOutcome,
    measured: Option<Duration>,
    provider: Option<&str>,
) -> (FabricObservation, PathStatus, ProbeResult) {
    let failed = |failure, error| PathStatus {
        reachable: Some(false),
        rtt_seconds: None,
        last_failure: Some(failure),
        last_error: Some(error),
        provider_reason: None,
    };
    match outcome {
        ProbeOutcome::Pong { rtt, warm, .. } => {
            let rtt = if *warm {
                *rtt
            } else {
                measured.unwrap_or(*rtt)
            };
            (
                FabricObservation::Answered(rtt),
                PathStatus {
                    reachable: Some(true),
                    rtt_seconds: Some(rtt.as_secs_f64()),
                    last_failure: None,
                    last_error: None,
                    provider_reason: None,
                },
                ProbeResult::Ok,
            )
        }
        ProbeOutcome::Timeout => (
            FabricObservation::Timeout,
            failed(
                PathFailure::Timeout,
                "no answer before the deadline (silently dropped)".into(),
            ),
            ProbeResult::Timeout,
        ),
        ProbeOutcome::SendFailed { error } => {
            // Other providers number their codes as they like: only efa's are decoded.
            let decoded = (provider == Some("efa"))
                .then(|| fabric::EfaErrno::decode(error.prov_errno))
                .flatten();
            let mut status = failed(PathFailure::ProviderError, error.to_string());
            if let Some(efa) = decoded {
                status.provider_reason = Some(efa.reason);
                status.last_error = Some(format!(
                    "{error} [efa {} ({}): {}]",
                    efa.name,
                    efa.code,
                    efa.reason.as_str()
                ));
            }
            (
                FabricObservation::Failed,
                status,
                ProbeResult::ProviderError,
            )
        }
        ProbeOutcome::NotSent { reason } => (
            FabricObservation::Failed,
            failed(PathFailure::NotSent, reason.clone()),
            ProbeResult::Error,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hello::HelloFabric;
    use crate::metrics::ProbeResult;
    use crate::probe::ProbeFailure;

    const MS: Duration = Duration::from_millis(1);

    fn pong(warm: bool) -> ProbeOutcome {
        ProbeOutcome::Pong {
            rtt: Duration::from_micros(20),
            cold_rtt: 12 * MS,
            dwell: Duration::from_micros(3),
            responder_id: 1,
            warm,
        }
    }

    fn hello(provider: &str, available: bool) -> Hello {
        Hello {
            node_name: "peer".into(),
            agent_version: "test".into(),
            instance_id: 1,
            fabric: HelloFabric {
                provider: provider.into(),
                available,
                error: (!available).then(|| "no device".into()),
                endpoints: vec![],
            },
            topology: None,
            node_actions: None,
        }
    }

    fn ctx(hello: Option<&Hello>) -> FabricContext<'_> {
        FabricContext {
            local_fabric: true,
            provider: Some("efa"),
            hello,
            measured: Some(Duration::from_micros(25)),
            refused: None,
        }
    }

    #[test]
    fn an_efa_send_failure_says_what_its_own_error_code_means() {
        let failed = |prov_errno| ProbeOutcome::SendFailed {
            error: fabric::CompletionError {
                code: 113,
                text: "No route to host".into(),
                prov_errno,
                prov_text: "Unreachable remote".into(),
            },
        };
        let (observation, status, result) = fabric_result(&failed(15), None, Some("efa"));
        assert_eq!(observation, FabricObservation::Failed);
        assert_eq!(result, ProbeResult::ProviderError);
        assert_eq!(status.last_failure, Some(PathFailure::ProviderError));
        assert_eq!(
            status.provider_reason,
            Some(fabric::EfaReason::UnreachableRemote)
        );
        let text = status.last_error.unwrap();
        assert!(
            text.ends_with("[efa LOCAL_ERROR_UNREACH_REMOTE (15): unreachable_remote]"),
            "{text}"
        );
        let (_, status, _) = fabric_result(&failed(4124), None, Some("efa"));
        assert_eq!(
            status.provider_reason,
            Some(fabric::EfaReason::RemoteUnresponsive)
        );
        // Another provider's number means nothing here; nor does an undocumented one.
        let (_, status, _) = fabric_result(&failed(15), None, Some("udp;ofi_rxd"));
        assert_eq!(status.provider_reason, None);
        assert!(!status.last_error.unwrap().contains("[efa"));
        let (_, status, _) = fabric_result(&failed(99999), None, Some("efa"));
        assert_eq!(status.provider_reason, None);
        // And it is in /v1/peers' words.
        let (_, status, _) = fabric_result(&failed(13), None, Some("efa"));
        let json = serde_json::to_value(&status).unwrap();
        assert_eq!(json["provider_reason"], "remote_unresponsive");
    }

    #[test]
    fn the_ip_path_answered_or_failed_by_kind() {
        let seen = ip_path(&Ok((hello("efa", true), 3 * MS)));
        assert_eq!(seen.observation, IpObservation::Answered(3 * MS));
        assert_eq!(seen.status.reachable, Some(true));
        assert_eq!(seen.counted, (ProbeResult::Ok, Some(3 * MS)));
        for (reason, observation, counted, failure) in [
            (
                FailureReason::Timeout,
                IpObservation::Timeout,
                ProbeResult::Timeout,
                PathFailure::Timeout,
            ),
            (
                FailureReason::Refused,
                IpObservation::Refused,
                ProbeResult::Refused,
                PathFailure::Refused,
            ),
            (
                FailureReason::HttpStatus,
                IpObservation::Protocol,
                ProbeResult::Protocol,
                PathFailure::HttpStatus,
            ),
            (
                FailureReason::Dns,
                IpObservation::OtherError,
                ProbeResult::Dns,
                PathFailure::Dns,
            ),
        ] {
            let seen = ip_path(&Err(ProbeFailure::new(reason, "why").into()));
            assert_eq!(seen.observation, observation);
            assert_eq!(seen.counted, (counted, None));
            assert_eq!(seen.status.reachable, Some(false));
            assert_eq!(seen.status.last_failure, Some(failure));
            assert_eq!(seen.status.last_error.as_deref(), Some("why"));
        }
        // Another agent version's hello: a protocol failure, of an agent that is up.
        let foreign = HelloFailure {
            failure: ProbeFailure::new(FailureReason::Protocol, "missing field"),
            foreign: true,
        };
        let seen = ip_path(&Err(foreign));
        assert_eq!(seen.observation, IpObservation::ForeignHello);
        assert_eq!(seen.counted, (ProbeResult::Protocol, None));
        assert_eq!(seen.status.last_failure, Some(PathFailure::Protocol));
    }

    #[test]
    fn the_fabric_path_probed_or_why_not() {
        // Answered by a single ping: the latest measured RTT is reported, none is counted.
        let seen = fabric_path(Some(&pong(false)), ctx(None));
        assert_eq!(
            seen.observation,
            FabricObservation::Answered(Duration::from_micros(25))
        );
        assert_eq!(seen.counted, Some((ProbeResult::Ok, None)));
        let seen = fabric_path(Some(&ProbeOutcome::Timeout), ctx(None));
        assert_eq!(seen.observation, FabricObservation::Timeout);
        assert_eq!(
            seen.status.unwrap().last_failure,
            Some(PathFailure::Timeout)
        );
        // Nothing to ping: the peer's hello says why, or the address is not learned yet.
        let none = hello("efa", false);
        let seen = fabric_path(None, ctx(Some(&none)));
        assert_eq!(seen.observation, FabricObservation::PeerNoFabric);
        let status = seen.status.unwrap();
        assert_eq!(status.last_failure, Some(PathFailure::PeerNoFabric));
        assert_eq!(status.last_error.as_deref(), Some("no device"));
        assert_eq!(seen.counted, None);
        let other = hello("tcp", true);
        let seen = fabric_path(None, ctx(Some(&other)));
        assert_eq!(seen.observation, FabricObservation::ProviderMismatch);
        assert_eq!(
            seen.status.unwrap().last_failure,
            Some(PathFailure::ProviderMismatch)
        );
        let same = hello("efa", true);
        let seen = fabric_path(None, ctx(Some(&same)));
        assert_eq!(
            (seen.observation, seen.status),
            (FabricObservation::NotLearned, None)
        );
        // No fabric here: whatever the peer says.
        let local = FabricContext {
            local_fabric: false,
            ..ctx(Some(&other))
        };
        let seen = fabric_path(Some(&pong(true)), local);
        assert_eq!(
            (seen.observation, seen.status, seen.counted),
            (FabricObservation::LocalNoFabric, None, None)
        );
    }

    fn with_address(mut hello: Hello, hex: &str) -> Hello {
        hello.fabric.endpoints = vec![crate::hello::HelloEndpoint {
            rail: 0,
            mac: None,
            domain: "d0".into(),
            address: hex.into(),
            display: hex.into(),
        }];
        hello
    }

    #[test]
    fn a_fresh_hello_that_withdraws_or_changes_the_address_wins() {
        let efa = Some("efa");
        let offering = with_address(hello("efa", true), "0a0b");
        let held = offered_address(&offering, efa).expect("offered");
        assert_eq!(held, vec![0x0a, 0x0b]);
        // The same address: kept. A failed fetch (no fresh hello) withdraws nothing.
        assert!(!withdraws(Some(&held), Some(&offering), efa));
        assert!(!withdraws(Some(&held), None, efa));
        // Nothing held: nothing to withdraw.
        assert!(!withdraws(None, Some(&hello("efa", false)), efa));
        // Fabric gone, another provider, another address: the old one goes at once.
        let gone = with_address(hello("efa", false), "0a0b");
        let other_provider = with_address(hello("tcp", true), "0a0b");
        let moved = with_address(hello("efa", true), "0c0d");
        let no_endpoint = hello("efa", true);
        for fresh in [&gone, &other_provider, &moved, &no_endpoint] {
            assert!(withdraws(Some(&held), Some(fresh), efa), "{fresh:?}");
        }
        assert_eq!(offered_address(&gone, efa), None);
        assert_eq!(offered_address(&other_provider, efa), None);
        // Withdrawn: nothing is pinged this round, and the hello says why.
        let seen = fabric_path(None, ctx(Some(&gone)));
        assert_eq!(seen.observation, FabricObservation::PeerNoFabric);
        let seen = fabric_path(None, ctx(Some(&other_provider)));
        assert_eq!(seen.observation, FabricObservation::ProviderMismatch);
        let seen = fabric_path(None, ctx(Some(&moved)));
        assert_eq!(seen.observation, FabricObservation::NotLearned);
    }

    #[test]
    fn a_refused_address_is_reported_as_such() {
        let offering = with_address(hello("efa", true), "0a0b");
        let refused = FabricContext {
            refused: Some("fi_av_insert: invalid argument"),
            ..ctx(Some(&offering))
        };
        let seen = fabric_path(None, refused);
        assert_eq!(seen.observation, FabricObservation::BadAddress);
        let status = seen.status.unwrap();
        assert_eq!(status.last_failure, Some(PathFailure::BadAddress));
        assert_eq!(
            status.last_error.as_deref(),
            Some("fi_av_insert: invalid argument")
        );
        assert_eq!(seen.counted, None);
        // A hello that withdrew its fabric says so first.
        let gone = hello("efa", false);
        let seen = fabric_path(
            None,
            FabricContext {
                hello: Some(&gone),
                ..refused
            },
        );
        assert_eq!(seen.observation, FabricObservation::PeerNoFabric);
    }

    #[test]
    fn rtts_are_learned_from_pairs_and_counted_in_rounds() {
        let mut rtts = PeerRtts::default();
        assert_eq!(rtts.learn_fabric(&ProbeOutcome::Timeout, 0), None);
        assert_eq!(rtts.learn_fabric(&pong(false), 0), Some(false));
        assert_eq!((rtts.fabric, rtts.fabric_cold), (None, Some(12 * MS)));
        assert_eq!(rtts.rounds_since_fabric, 1);
        // A confirmation is not a round of its own.
        rtts.learn_fabric(&pong(false), 1);
        assert_eq!(rtts.rounds_since_fabric, 1);
        assert_eq!(rtts.learn_fabric(&pong(true), 0), Some(true));
        assert_eq!(rtts.fabric, Some(Duration::from_micros(20)));
        assert_eq!(rtts.rounds_since_fabric, 0);
    }

    #[test]
    fn larger_probes_keep_their_latest_outcome_and_name_the_smallest_lost() {
        let mut results = BTreeMap::new();
        let answered = FabricObservation::Answered(MS);
        assert_eq!(large_probe(&mut results, None), None);
        assert_eq!(
            large_probe(&mut results, Some(&(8192, ProbeOutcome::Timeout))),
            Some((ProbeResult::Timeout, None))
        );
        large_probe(&mut results, Some(&(1024, pong(false))));
        assert_eq!(lost_size(&results, &answered), Some(8192));
        // A path that drops everything says nothing about sizes.
        assert_eq!(lost_size(&results, &FabricObservation::Timeout), None);
        // Not sent: no news about the size.
        large_probe(
            &mut results,
            Some(&(
                1024,
                ProbeOutcome::NotSent {
                    reason: "no slot".into(),
                },
            )),
        );
        assert_eq!(results.get(&1024), Some(&true));
        large_probe(&mut results, Some(&(8192, pong(false))));
        assert_eq!(lost_size(&results, &answered), None);
        let mut status = PathStatus::default();
        size_lost(&mut status, 8192, 64);
        assert_eq!(status.last_failure, Some(PathFailure::ProbeSize));
        assert_eq!(
            status.last_error.as_deref(),
            Some("8192-byte probes get no answer while 64-byte probes do")
        );
    }
}

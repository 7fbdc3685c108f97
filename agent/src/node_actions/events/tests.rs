//! Moves and their aggregation, with no API: a flapping peer is one Event per reason and a
//! series count, not one Event per flap.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::*;
use crate::node_actions::condition::tests::peer;
use crate::verdict::DiagnosisReason;

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_800_000_000 + secs)
}

fn dropped(name: &str) -> PeerStatus {
    let mut p = peer(
        name,
        Some("subnet-a"),
        PeerState::FabricDropped,
        Some(DiagnosisReason::CrossSubnet),
    );
    p.summary = "IP works but the fabric is dropped.".into();
    p
}

fn healthy(name: &str) -> PeerStatus {
    peer(name, Some("subnet-a"), PeerState::Healthy, None)
}

fn reasons(moves: &[PeerMove]) -> Vec<(&str, PeerEventReason)> {
    moves.iter().map(|m| (m.peer.as_str(), m.reason)).collect()
}

#[test]
fn moves_into_and_out_of_unhealthy_states() {
    use PeerEventReason as R;
    let mut t = PeerTransitions::default();
    let unknown = peer("gpu-3", Some("subnet-a"), PeerState::Unknown, None);
    assert!(t.observe(&[healthy("gpu-2"), unknown.clone()]).is_empty());
    let moves = t.observe(&[dropped("gpu-2"), unknown.clone()]);
    assert_eq!(reasons(&moves), [("gpu-2", R::PeerFabricDropped)]);
    assert_eq!(
        moves[0].note,
        "Peer gpu-2: fabric_dropped (cross_subnet). IP works but the fabric is dropped."
    );
    assert!(
        t.observe(&[dropped("gpu-2"), unknown.clone()]).is_empty(),
        "no move"
    );
    let down = peer("gpu-2", None, PeerState::Down, None);
    assert_eq!(reasons(&t.observe(&[down])), [("gpu-2", R::PeerDown)]);
    assert_eq!(
        reasons(&t.observe(&[healthy("gpu-2")])),
        [("gpu-2", R::PeerRecovered)]
    );
    // Unknown -> healthy is no recovery; a peer first seen unhealthy is a move.
    assert!(t.observe(&[healthy("gpu-2"), healthy("gpu-3")]).is_empty());
    assert_eq!(
        reasons(&t.observe(&[healthy("gpu-2"), healthy("gpu-3"), dropped("gpu-4")])),
        [("gpu-4", R::PeerFabricDropped)]
    );
}

#[test]
fn long_summaries_are_cut_to_what_the_api_takes() {
    let mut p = dropped("gpu-2");
    p.summary = "é".repeat(2000).into();
    let moves = PeerTransitions::default().observe(&[p]);
    assert!(moves[0].note.len() <= MAX_NOTE_BYTES);
    assert!(moves[0].note.len() > MAX_NOTE_BYTES - 2);
}

/// Performs every due write as if the API took it, naming created Events `ev-N`.
fn flush(agg: &mut EventAggregator, now: SystemTime, created: &mut u32) -> Vec<EventWrite> {
    let writes = agg.due(now);
    for w in &writes {
        let name = matches!(w, EventWrite::Create { .. }).then(|| {
            *created += 1;
            format!("ev-{created}")
        });
        agg.written(w, name);
    }
    writes
}

#[test]
fn a_flapping_peer_is_one_event_per_reason_and_a_series() {
    let mut t = PeerTransitions::default();
    let mut agg = EventAggregator::new(10);
    let mut created = 0;
    let mut writes = Vec::new();
    // 20 flaps over 5 minutes, a write pass after each observation.
    for i in 0..40u64 {
        let p = if i % 2 == 0 {
            dropped("gpu-2")
        } else {
            healthy("gpu-2")
        };
        for m in t.observe(&[p]) {
            agg.record(m, at(i * 7));
        }
        writes.extend(flush(&mut agg, at(i * 7), &mut created));
    }
    assert_eq!(created, 2, "one Event per (peer, reason): {writes:#?}");
    let last_count = |reason| {
        writes
            .iter()
            .filter(|w| w.key().1 == reason)
            .map(EventWrite::count)
            .max()
    };
    assert_eq!(last_count(PeerEventReason::PeerFabricDropped), Some(20));
    assert_eq!(last_count(PeerEventReason::PeerRecovered), Some(20));
    assert!(matches!(
        writes.last(),
        Some(EventWrite::Series { name, count: 20, .. }) if name == "ev-2"
    ));
    // After the window, the same move is a new Event.
    agg.record(
        PeerMove {
            peer: "gpu-2".into(),
            reason: PeerEventReason::PeerFabricDropped,
            note: "again".into(),
        },
        at(40 * 7 + 601),
    );
    let again = flush(&mut agg, at(40 * 7 + 601), &mut created);
    assert!(
        matches!(&again[..], [EventWrite::Create { count: 1, note, .. }] if note == "again"),
        "{again:?}"
    );
}

#[test]
fn writes_per_minute_are_bounded_and_repeats_wait_in_the_series() {
    let mut agg = EventAggregator::new(3);
    let mut created = 0;
    let mv = |peer: String| PeerMove {
        peer,
        reason: PeerEventReason::PeerDown,
        note: "down".into(),
    };
    for n in 0..10 {
        agg.record(mv(format!("gpu-{n}")), at(0));
    }
    assert_eq!(flush(&mut agg, at(0), &mut created).len(), 3);
    assert!(
        flush(&mut agg, at(30), &mut created).is_empty(),
        "budget spent"
    );
    // gpu-0 repeats meanwhile: its series update waits behind the pending creates.
    agg.record(mv("gpu-0".into()), at(40));
    agg.record(mv("gpu-0".into()), at(45));
    let mut all = Vec::new();
    for minute in 1..=4 {
        let w = flush(&mut agg, at(60 * minute), &mut created);
        assert!(w.len() <= 3, "minute {minute}: {w:?}");
        all.extend(w);
    }
    assert_eq!(created, 10, "every peer's Event, in time");
    assert!(
        all.iter().any(|w| matches!(w,
            EventWrite::Series { key, count: 3, last_seen, .. }
                if key.0 == "gpu-0" && *last_seen == at(45))),
        "{all:#?}"
    );
}

#[test]
fn a_failed_write_is_retried_and_a_lost_event_recreated() {
    let mut agg = EventAggregator::new(10);
    let m = PeerMove {
        peer: "gpu-2".into(),
        reason: PeerEventReason::PeerDown,
        note: "down".into(),
    };
    agg.record(m.clone(), at(0));
    assert_eq!(agg.due(at(0)).len(), 1);
    // Not confirmed: due again.
    let w = agg.due(at(1));
    assert!(matches!(&w[..], [EventWrite::Create { .. }]));
    agg.written(&w[0], Some("ev-1".into()));
    agg.record(m, at(2));
    let w = agg.due(at(3));
    assert!(matches!(&w[..], [EventWrite::Series { count: 2, .. }]));
    agg.lost(w[0].key());
    assert!(matches!(
        &agg.due(at(4))[..],
        [EventWrite::Create { count: 2, .. }]
    ));
}

#[test]
fn tracked_pairs_are_bounded() {
    let mut agg = EventAggregator::new(1);
    for n in 0..(MAX_TRACKED + 5) {
        agg.record(
            PeerMove {
                peer: format!("gpu-{n}"),
                reason: PeerEventReason::PeerDown,
                note: String::new(),
            },
            at(0),
        );
    }
    assert_eq!(agg.tracked(), MAX_TRACKED);
    assert_eq!(agg.dropped(), 5);
}

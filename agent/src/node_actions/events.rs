//! Events on the Node (events.k8s.io/v1) for each peer's move into and out of an unhealthy
//! state, aggregated. Pure: [`PeerTransitions`] turns successive peer lists into moves,
//! [`EventAggregator`] decides which API writes they become, and the writer performs them.
//!
//! Bounds, so a flapping fabric cannot flood the API server (NVSentinel's users once found
//! 800k duplicate Events from one incident):
//! - at most one new Event per (peer, reason) per [`EVENT_WINDOW`]; repeats inside it are
//!   counted into that Event's series (`series.count`, `series.lastObservedTime`);
//! - at most `per_minute` writes (new Events and series updates together) per rolling
//!   minute; what does not fit waits, and a series update carries every repeat meanwhile;
//! - at most [`MAX_TRACKED`] (peer, reason) pairs kept; past that, new pairs are dropped
//!   and counted ([`EventAggregator::dropped`]).

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, SystemTime};

use crate::state::PeerStatus;
use crate::verdict::PeerState;

/// One Event per (peer, reason) per this long; repeats go into its series.
pub const EVENT_WINDOW: Duration = Duration::from_secs(600);
/// (peer, reason) pairs tracked at most.
pub const MAX_TRACKED: usize = 4096;
/// The API server refuses a longer `note`.
pub const MAX_NOTE_BYTES: usize = 1024;
const MINUTE: Duration = Duration::from_secs(60);

/// The `reason` of an Event about a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PeerEventReason {
    PeerFabricDropped,
    PeerIpBlocked,
    PeerDown,
    PeerDegraded,
    PeerRecovered,
}

impl PeerEventReason {
    pub const fn as_str(self) -> &'static str {
        match self {
            PeerEventReason::PeerFabricDropped => "PeerFabricDropped",
            PeerEventReason::PeerIpBlocked => "PeerIpBlocked",
            PeerEventReason::PeerDown => "PeerDown",
            PeerEventReason::PeerDegraded => "PeerDegraded",
            PeerEventReason::PeerRecovered => "PeerRecovered",
        }
    }

    /// Moves into a fault are `Warning`s; recoveries `Normal`.
    pub const fn event_type(self) -> &'static str {
        match self {
            PeerEventReason::PeerRecovered => "Normal",
            _ => "Warning",
        }
    }

    /// The reason for a move into `state`, when it is unhealthy.
    fn into_state(state: PeerState) -> Option<PeerEventReason> {
        match state {
            PeerState::FabricDropped => Some(PeerEventReason::PeerFabricDropped),
            PeerState::IpBlocked => Some(PeerEventReason::PeerIpBlocked),
            PeerState::Down => Some(PeerEventReason::PeerDown),
            PeerState::Degraded => Some(PeerEventReason::PeerDegraded),
            PeerState::Healthy | PeerState::Unknown => None,
        }
    }
}

fn is_unhealthy(state: PeerState) -> bool {
    PeerEventReason::into_state(state).is_some()
}

/// A peer's move worth an Event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerMove {
    pub peer: String,
    pub reason: PeerEventReason,
    /// For a person: the peer's summary (what is wrong and what to do).
    pub note: String,
}

/// The last state of each peer, to tell moves.
#[derive(Debug, Default)]
pub struct PeerTransitions {
    last: BTreeMap<String, PeerState>,
}

impl PeerTransitions {
    /// The moves since the last call: into an unhealthy state (from anything else, or a peer
    /// first seen unhealthy), from one unhealthy state to another, and from unhealthy back
    /// to healthy. Moves to and from `unknown` are not news. Peers gone are forgotten.
    pub fn observe(&mut self, peers: &[PeerStatus]) -> Vec<PeerMove> {
        let mut moves = Vec::new();
        let mut now = BTreeMap::new();
        for p in peers {
            let previous = self.last.get(&p.name).copied();
            now.insert(p.name.clone(), p.state);
            if previous == Some(p.state) {
                continue;
            }
            let reason = match (previous, PeerEventReason::into_state(p.state)) {
                (_, Some(into)) => into,
                (Some(before), None) if is_unhealthy(before) && p.state == PeerState::Healthy => {
                    PeerEventReason::PeerRecovered
                }
                _ => continue,
            };
            let mut note = format!("Peer {}: {}", p.name, p.state.as_str());
            if let Some(r) = p.reason {
                note.push_str(&format!(" ({})", r.as_str()));
            }
            if !p.summary.is_empty() {
                note.push_str(". ");
                note.push_str(&p.summary);
            }
            moves.push(PeerMove {
                peer: p.name.clone(),
                reason,
                note: truncate(note, MAX_NOTE_BYTES),
            });
        }
        self.last = now;
        moves
    }
}

fn truncate(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut cut = max;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
    }
    text
}

/// The key events are aggregated by.
pub type EventKey = (String, PeerEventReason);

/// A write the writer should make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventWrite {
    /// A new Event; `count` above 1 comes with a series.
    Create {
        key: EventKey,
        note: String,
        first_seen: SystemTime,
        last_seen: SystemTime,
        count: u32,
    },
    /// A series update of the Event `name`.
    Series {
        key: EventKey,
        name: String,
        count: u32,
        last_seen: SystemTime,
    },
}

impl EventWrite {
    pub fn key(&self) -> &EventKey {
        match self {
            EventWrite::Create { key, .. } | EventWrite::Series { key, .. } => key,
        }
    }

    pub fn count(&self) -> u32 {
        match self {
            EventWrite::Create { count, .. } | EventWrite::Series { count, .. } => *count,
        }
    }
}

#[derive(Debug, Clone)]
struct Series {
    /// The Event's name once created.
    name: Option<String>,
    note: String,
    first_seen: SystemTime,
    last_seen: SystemTime,
    count: u32,
    /// The count the API has.
    written: u32,
}

/// Decides which moves become which writes (see the module's bounds).
#[derive(Debug)]
pub struct EventAggregator {
    per_minute: usize,
    series: BTreeMap<EventKey, Series>,
    /// When each write of the last minute was handed out.
    recent_writes: VecDeque<SystemTime>,
    dropped: u64,
}

impl EventAggregator {
    pub fn new(per_minute: u32) -> EventAggregator {
        EventAggregator {
            per_minute: per_minute.max(1) as usize,
            series: BTreeMap::new(),
            recent_writes: VecDeque::new(),
            dropped: 0,
        }
    }

    /// Counts a move: into the (peer, reason) series of the last [`EVENT_WINDOW`], or a new
    /// one.
    pub fn record(&mut self, m: PeerMove, now: SystemTime) {
        let key = (m.peer, m.reason);
        if let Some(s) = self.series.get_mut(&key) {
            // A series not yet fully written keeps counting past its window: its repeats
            // must not be lost, and it still is the one Event for them.
            let fresh = age(s.first_seen, now) < EVENT_WINDOW;
            if fresh || s.written < s.count {
                s.count = s.count.saturating_add(1);
                s.last_seen = now;
                return;
            }
        }
        if !self.series.contains_key(&key) && self.series.len() >= MAX_TRACKED && !self.evict(now) {
            self.dropped += 1;
            return;
        }
        self.series.insert(
            key,
            Series {
                name: None,
                note: m.note,
                first_seen: now,
                last_seen: now,
                count: 1,
                written: 0,
            },
        );
    }

    /// Makes room by forgetting the oldest fully written series; false when there is none.
    fn evict(&mut self, now: SystemTime) -> bool {
        self.prune(now);
        if self.series.len() < MAX_TRACKED {
            return true;
        }
        let oldest = self
            .series
            .iter()
            .filter(|(_, s)| s.written == s.count)
            .min_by_key(|(_, s)| s.last_seen)
            .map(|(k, _)| k.clone());
        match oldest {
            Some(k) => {
                self.series.remove(&k);
                true
            }
            None => false,
        }
    }

    /// Forgets series whose window has passed and whose every repeat is written.
    fn prune(&mut self, now: SystemTime) {
        self.series
            .retain(|_, s| s.written < s.count || age(s.first_seen, now) < EVENT_WINDOW);
    }

    /// The writes due now, within the per-minute budget: new Events first (oldest first),
    /// then series updates. Each handed out counts against the budget, done or not.
    pub fn due(&mut self, now: SystemTime) -> Vec<EventWrite> {
        self.prune(now);
        while self
            .recent_writes
            .front()
            .is_some_and(|t| age(*t, now) >= MINUTE)
        {
            self.recent_writes.pop_front();
        }
        let room = self.per_minute.saturating_sub(self.recent_writes.len());
        let mut creates: Vec<(&EventKey, &Series)> = self
            .series
            .iter()
            .filter(|(_, s)| s.name.is_none())
            .collect();
        creates.sort_by_key(|(_, s)| s.first_seen);
        let updates = self
            .series
            .iter()
            .filter(|(_, s)| s.name.is_some() && s.written < s.count);
        let writes: Vec<EventWrite> = creates
            .into_iter()
            .map(|(key, s)| EventWrite::Create {
                key: key.clone(),
                note: s.note.clone(),
                first_seen: s.first_seen,
                last_seen: s.last_seen,
                count: s.count,
            })
            .chain(updates.map(|(key, s)| EventWrite::Series {
                key: key.clone(),
                name: s.name.clone().unwrap_or_default(),
                count: s.count,
                last_seen: s.last_seen,
            }))
            .take(room)
            .collect();
        self.recent_writes.extend(writes.iter().map(|_| now));
        writes
    }

    /// The API took `write`; `name` is the created Event's.
    pub fn written(&mut self, write: &EventWrite, name: Option<String>) {
        if let Some(s) = self.series.get_mut(write.key()) {
            s.written = s.written.max(write.count());
            if name.is_some() {
                s.name = name;
            }
        }
    }

    /// The Event of `key` is gone (404 on a series update): the next write creates a new one.
    pub fn lost(&mut self, key: &EventKey) {
        if let Some(s) = self.series.get_mut(key) {
            s.name = None;
            s.written = 0;
        }
    }

    /// Moves dropped because [`MAX_TRACKED`] pairs were pending.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Pairs tracked now.
    pub fn tracked(&self) -> usize {
        self.series.len()
    }
}

fn age(since: SystemTime, now: SystemTime) -> Duration {
    now.duration_since(since).unwrap_or(Duration::ZERO)
}

#[cfg(test)]
mod tests;

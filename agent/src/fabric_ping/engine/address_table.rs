//! The engine's address table: which endpoint addresses are in the address vector, who uses
//! each (explicit peers, learned senders, sends in flight), and which learned senders go
//! first when there are too many (least recently heard from).

use std::collections::{BTreeMap, HashMap};

use fabric::{Endpoint, EndpointAddress, FabricAddr};

use super::counters::{bump, Counters};
use super::{EngineError, PeerHandle};

/// One address-vector entry, shared by the explicit peers and learned senders that use the
/// same address.
pub(super) struct AvEntry {
    pub addr: FabricAddr,
    /// Explicit peers (add_peer) using this address.
    refs: u32,
    /// Set while the entry is also a learned sender: its position in the LRU order.
    learned_tick: Option<u64>,
    /// Pings not yet completed, by probe size (one unanswered per size at most: see
    /// `flush_outbox`).
    pub pings_in_flight: BTreeMap<usize, u32>,
    /// Pongs not yet completed (at most one).
    pub pongs_in_flight: u32,
    /// Whether a pong from this address answered a ping (the health watch minds only
    /// peers that did).
    pub answered: bool,
    /// Whether a pong to this address completed: the sender is really there (a send to an
    /// address where nobody answers never completes on rxd).
    pub proven: bool,
}

impl AvEntry {
    /// Whether an explicit peer (not only a learned sender) uses this address.
    pub fn is_peer(&self) -> bool {
        self.refs > 0
    }

    fn unused(&self) -> bool {
        self.refs == 0
            && self.learned_tick.is_none()
            && self.pings_in_flight.values().all(|n| *n == 0)
            && self.pongs_in_flight == 0
    }
}

pub(super) struct AddressTable {
    peers: HashMap<PeerHandle, EndpointAddress>,
    next_handle: u64,
    entries: HashMap<EndpointAddress, AvEntry>,
    learned_lru: BTreeMap<u64, EndpointAddress>,
    tick: u64,
    max_learned: usize,
}

impl AddressTable {
    pub fn new(max_learned: usize) -> Self {
        AddressTable {
            peers: HashMap::new(),
            next_handle: 1,
            entries: HashMap::new(),
            learned_lru: BTreeMap::new(),
            tick: 0,
            max_learned,
        }
    }

    pub fn add_peer(
        &mut self,
        ep: &mut Endpoint,
        counters: &Counters,
        address: EndpointAddress,
    ) -> Result<PeerHandle, EngineError> {
        self.ensure(ep, counters, &address)?;
        let entry = self.entries.get_mut(&address).expect("just ensured");
        entry.refs += 1;
        let handle = PeerHandle(self.next_handle);
        self.next_handle += 1;
        self.peers.insert(handle, address);
        Ok(handle)
    }

    pub fn remove_peer(&mut self, ep: &mut Endpoint, counters: &Counters, handle: PeerHandle) {
        if let Some(key) = self.peers.remove(&handle) {
            if let Some(entry) = self.entries.get_mut(&key) {
                entry.refs = entry.refs.saturating_sub(1);
            }
            self.release_if_unused(ep, counters, &key);
        }
    }

    /// The address an explicit peer was added with.
    pub fn peer(&self, handle: PeerHandle) -> Option<&EndpointAddress> {
        self.peers.get(&handle)
    }

    pub fn get(&self, key: &[u8]) -> Option<&AvEntry> {
        self.entries.get(key)
    }

    pub fn get_mut(&mut self, key: &[u8]) -> Option<&mut AvEntry> {
        self.entries.get_mut(key)
    }

    /// Makes sure `address` has an AV entry, inserting it if needed.
    fn ensure(
        &mut self,
        ep: &mut Endpoint,
        counters: &Counters,
        address: &[u8],
    ) -> Result<FabricAddr, EngineError> {
        if let Some(entry) = self.entries.get(address) {
            return Ok(entry.addr);
        }
        let addr = ep.insert_peer(address).map_err(EngineError::Address)?;
        self.entries.insert(
            EndpointAddress::from(address),
            AvEntry {
                addr,
                refs: 0,
                learned_tick: None,
                pings_in_flight: BTreeMap::new(),
                pongs_in_flight: 0,
                answered: false,
                proven: false,
            },
        );
        sync_av_count(ep, counters);
        Ok(addr)
    }

    /// Removes an AV entry that nothing uses any more.
    pub fn release_if_unused(&mut self, ep: &mut Endpoint, counters: &Counters, key: &[u8]) {
        if self.entries.get(key).is_some_and(AvEntry::unused) {
            let entry = self.entries.remove(key).expect("checked above");
            if let Err(e) = ep.remove_peer(entry.addr) {
                tracing::warn!(error = %e, "fi_av_remove failed");
            }
            sync_av_count(ep, counters);
        }
    }

    /// Finds or inserts the sender of a ping, keeping at most `max_learned` learned entries
    /// (least recently used go first).
    pub fn learn(
        &mut self,
        ep: &mut Endpoint,
        counters: &Counters,
        key: &[u8],
    ) -> Result<FabricAddr, EngineError> {
        self.tick += 1;
        let tick = self.tick;
        if !self.entries.contains_key(key) {
            // Refused before anything is evicted for it: otherwise each unusable address
            // would push a real sender out.
            ep.check_address(key).map_err(EngineError::Address)?;
            if self.learned_lru.len() >= self.max_learned {
                self.evict_oldest_learned(ep, counters);
            }
        }
        let addr = self.ensure(ep, counters, key)?;
        let entry = self.entries.get_mut(key).expect("just ensured");
        if let Some(old) = entry.learned_tick.replace(tick) {
            self.learned_lru.remove(&old);
        }
        self.learned_lru.insert(tick, EndpointAddress::from(key));
        Ok(addr)
    }

    /// Evicts the least recently heard learned sender, among those never proven there if
    /// any: a flood of strangers from silent addresses then evicts its own kind, not a peer's
    /// second endpoint that has been answered for long.
    fn evict_oldest_learned(&mut self, ep: &mut Endpoint, counters: &Counters) {
        let unproven = self
            .learned_lru
            .iter()
            .find(|(_, key)| self.entries.get(*key).is_some_and(|e| !e.proven))
            .map(|(tick, _)| *tick);
        let oldest = unproven.or_else(|| self.learned_lru.keys().next().copied());
        if let Some(key) = oldest.and_then(|tick| self.learned_lru.remove(&tick)) {
            if let Some(entry) = self.entries.get_mut(&key) {
                entry.learned_tick = None;
            }
            bump(&counters.learned_peers_evicted);
            self.release_if_unused(ep, counters, &key);
        }
    }
}

impl AddressTable {
    /// The endpoint was opened anew, with an empty address vector: explicit peers are
    /// inserted again (their handles stay), learned senders are forgotten (their next ping
    /// teaches them again), and nothing is in flight any more. Returns the peers the new
    /// endpoint refused.
    pub fn reinsert(&mut self, ep: &mut Endpoint, counters: &Counters) -> usize {
        self.learned_lru.clear();
        self.entries.retain(|_, e| e.refs > 0);
        let mut refused = Vec::new();
        for (key, entry) in &mut self.entries {
            entry.learned_tick = None;
            entry.pings_in_flight.clear();
            entry.pongs_in_flight = 0;
            match ep.insert_peer(key) {
                Ok(addr) => entry.addr = addr,
                Err(e) => {
                    tracing::warn!(error = %e, "peer refused by the reopened endpoint");
                    refused.push(key.clone());
                }
            }
        }
        // A refused peer's handle stays issued; probing it answers NotSent (unknown peer).
        for key in &refused {
            self.entries.remove(key);
        }
        self.peers.retain(|_, key| !refused.contains(key));
        sync_av_count(ep, counters);
        refused.len()
    }
}

fn sync_av_count(ep: &Endpoint, counters: &Counters) {
    counters
        .av_entries
        .store(ep.peer_count() as u64, std::sync::atomic::Ordering::Relaxed);
}

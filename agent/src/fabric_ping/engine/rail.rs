//! One rail of an engine: its endpoint and everything about its peers (address table,
//! probes in flight, outbox, counters, health watch, pacing). The thread's loop
//! ([`super::event_loop`]) drives every rail of its group through [`Rail::plan`] and
//! [`Rail::service`]; nothing here knows about the other rails.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fabric::{
    CompletionError, Endpoint, EndpointAddress, EndpointConfig, Event, FabricAddr, SendId,
};
use tokio::sync::oneshot;

use super::address_table::AddressTable;
use super::counters::{bump, MalformedReason};
use super::health::HealthWatch;
use super::outgoing::{InFlight, Outgoing, SendPurpose, PONG_MAX_WAIT};
use super::pacing::{steady_wait, ExpectedWarm, Outstanding, Pacing, Wait};
use super::{
    learned_peer_limit, EngineError, PeerHandle, PingerConfig, ProbeOutcome, Published,
    RailCommand, Shared,
};
use crate::fabric_ping::wire::{self, Kind, Message, FLAG_FOLLOWS};

pub(super) struct Rail {
    ep: Endpoint,
    /// How `ep` was opened, to open it anew.
    endpoint_config: EndpointConfig,
    health: HealthWatch,
    shared: Arc<Shared>,
    config: PingerConfig,
    table: AddressTable,
    inflight: HashMap<u64, InFlight>,
    deadlines: BTreeMap<(Instant, u64), ()>,
    sends: HashMap<SendId, SendPurpose>,
    outbox: VecDeque<Outgoing>,
    queued_pongs: usize,
    /// Pongs in flight to senders that are no explicit peer, by whether the sender ever
    /// acknowledged one (index 1) or not (0), each at most `stranger_pong_budget`: on rxd a
    /// send to an address where nobody answers never completes, so without this bound
    /// strangers' pings from such addresses would take every transmit slot; and a flood of
    /// those cannot take the share of senders known to answer (a peer's second endpoint).
    stranger_pongs_in_flight: [usize; 2],
    stranger_pong_budget: usize,
    next_seq: u64,
    pacing: Pacing,
    /// Rails 1 and up: polled at this one period whatever they wait for (see
    /// [`PingerConfig::rail_poll`]); rail 0 is paced by `pacing`.
    steady: Option<Duration>,
    /// Probes whose second ping is in flight: its pong is due within microseconds.
    warm_awaited: BTreeSet<u64>,
    /// Probers' first pings answered here, whose second ping is due.
    expected_warm: ExpectedWarm,
    /// When the completion queues were last polled, and the gap to the poll before: the
    /// longest a message this poll reads can have waited unread.
    last_poll: Instant,
    poll_gap: Duration,
    events: Vec<Event>,
    rx_data: Vec<u8>,
    scratch: Vec<u8>,
}

impl Rail {
    pub(super) fn new(
        ep: Endpoint,
        endpoint_config: EndpointConfig,
        shared: Arc<Shared>,
        config: PingerConfig,
    ) -> Self {
        let steady = shared.steady.then_some(config.rail_poll);
        Rail {
            ep,
            endpoint_config,
            health: HealthWatch::new(Instant::now(), config.reopen_after),
            table: AddressTable::new(learned_peer_limit(&shared.provider, &config)),
            shared,
            stranger_pong_budget: config
                .max_stranger_pongs_in_flight
                .unwrap_or(config.tx_slots / 4)
                .max(1),
            config,
            inflight: HashMap::new(),
            deadlines: BTreeMap::new(),
            sends: HashMap::new(),
            outbox: VecDeque::new(),
            queued_pongs: 0,
            stranger_pongs_in_flight: [0; 2],
            next_seq: 1,
            pacing: Pacing::default(),
            steady,
            warm_awaited: BTreeSet::new(),
            expected_warm: ExpectedWarm::default(),
            last_poll: Instant::now(),
            poll_gap: Duration::ZERO,
            events: Vec::new(),
            rx_data: Vec::new(),
            scratch: Vec::new(),
        }
    }

    /// What this rail wants before its next poll, given what it has outstanding. Called
    /// once after each [`service`](Self::service): its pacing counts polls.
    pub(super) fn plan(&mut self, now: Instant) -> Wait {
        self.expected_warm.prune(now);
        if let Some(period) = self.steady {
            let busy =
                !(self.inflight.is_empty() && self.outbox.is_empty() && self.sends.is_empty());
            return steady_wait(period, busy, self.config.responder);
        }
        let outstanding = Outstanding {
            warm: !self.warm_awaited.is_empty()
                || self.expected_warm.pending()
                || self.queued_pongs > 0,
            probes: !self.inflight.is_empty() || !self.outbox.is_empty(),
            sends: !self.sends.is_empty(),
        };
        self.pacing.next(now, outstanding, &self.config)
    }

    /// Whether this rail keeps its steady period when given a command (rails 1 and up): the
    /// loop then posts the command's sends ([`send_queued`](Self::send_queued)) and leaves
    /// the poll to the rail's next period.
    pub(super) fn steady(&self) -> bool {
        self.steady.is_some()
    }

    /// Posts what is queued, without reading the completion queues.
    pub(super) fn send_queued(&mut self) {
        self.flush_outbox();
    }

    /// One poll: completions first, then the sends they caused (pongs, second pings) at
    /// once, then deadlines and the health watch.
    pub(super) fn service(&mut self) {
        self.progress();
        self.flush_outbox();
        let now = Instant::now();
        self.expire(now);
        if self.health.stalled(now) {
            self.reopen(now);
        }
    }

    /// The group stops: in-flight probes answer `NotSent`. Dropping the rail then closes
    /// the endpoint before its memory and queues.
    pub(super) fn stop(&mut self) {
        for (_, probe) in self.inflight.drain() {
            let _ = probe.reply.send(ProbeOutcome::NotSent {
                reason: EngineError::Stopped.to_string(),
            });
        }
        self.deadlines.clear();
        self.warm_awaited.clear();
    }

    pub(super) fn handle(&mut self, cmd: RailCommand) {
        match cmd {
            RailCommand::AddPeer(address, reply) => {
                let result = self
                    .table
                    .add_peer(&mut self.ep, &self.shared.counters, address);
                let _ = reply.send(result);
            }
            RailCommand::RemovePeer(handle) => {
                self.table
                    .remove_peer(&mut self.ep, &self.shared.counters, handle)
            }
            RailCommand::Probe {
                peer,
                size,
                timeout,
                pair,
                reply,
            } => self.start_probe(peer, size, timeout, pair, reply),
        }
    }

    fn start_probe(
        &mut self,
        peer: PeerHandle,
        size: usize,
        timeout: Duration,
        pair: bool,
        reply: oneshot::Sender<ProbeOutcome>,
    ) {
        let Some(key) = self.table.peer(peer).cloned() else {
            let _ = reply.send(ProbeOutcome::NotSent {
                reason: EngineError::UnknownPeer.to_string(),
            });
            return;
        };
        let now = Instant::now();
        if self.table.get(&key).is_some_and(|e| e.answered) {
            self.health.wanted(now);
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let deadline = now + timeout;
        self.inflight.insert(
            seq,
            InFlight {
                key,
                size: size.min(self.ep.max_message()),
                deadline,
                sent_at: None,
                token: 0,
                pair,
                cold: None,
                reply,
            },
        );
        self.deadlines.insert((deadline, seq), ());
        self.outbox.push_back(Outgoing::Ping { seq });
    }

    /// Posts queued sends. One that the provider refuses for now (FI_EAGAIN) stays queued
    /// and the rest go ahead: tcp;ofi_rxm answers FI_EAGAIN for as long as a peer refuses its
    /// connection, and that peer must not hold up the others.
    ///
    /// At most one unanswered ping per probe size and one pong (`max_pongs_in_flight_per_peer`)
    /// per destination are in flight; a large probe stuck on a path that drops large packets
    /// never holds up the small ones. On a blackholed path rxd
    /// never completes a send (it retransmits until the path heals) and other providers may
    /// take long to give up; without this cap every probe to such a peer would hold a
    /// transmit slot, and after a hundred rounds no peer could be probed. A ping waits while
    /// an earlier one to its peer is in flight (and times out at its own deadline); a pong to
    /// a destination that has one in flight waits for it, up to `PONG_MAX_WAIT`, and is then
    /// dropped and counted.
    fn flush_outbox(&mut self) {
        let mut deferred = VecDeque::new();
        while let Some(out) = self.outbox.pop_front() {
            let (dest, key, purpose) = match &out {
                Outgoing::Ping { seq } => {
                    let Some(probe) = self.inflight.get(seq) else {
                        continue; // expired while queued
                    };
                    let Some(entry) = self.table.get(&probe.key) else {
                        continue;
                    };
                    // The warm ping of a pair may go while the cold one's completion is
                    // pending: its pong proved the path, and waiting for the provider's
                    // acknowledgement would let the responder fall idle again.
                    let same_size = entry.pings_in_flight.get(&probe.size).copied().unwrap_or(0);
                    if same_size > 0 && probe.cold.is_none() {
                        deferred.push_back(out);
                        continue;
                    }
                    let token = rand::random();
                    Message {
                        kind: Kind::Ping,
                        seq: *seq,
                        sender_id: self.shared.id,
                        token,
                        dwell_ns: 0,
                        flags: if probe.pair && probe.cold.is_none() {
                            FLAG_FOLLOWS
                        } else {
                            0
                        },
                        unread_ns: 0,
                        address: self.ep.name(),
                    }
                    .encode_into(probe.size, &mut self.scratch);
                    let key = probe.key.clone();
                    (
                        entry.addr,
                        key.clone(),
                        SendPurpose::Ping {
                            seq: *seq,
                            key,
                            size: probe.size,
                            token,
                        },
                    )
                }
                Outgoing::Pong {
                    key,
                    bytes,
                    queued_at,
                } => {
                    let cap = self.config.max_pongs_in_flight_per_peer;
                    // Looked up now, not when queued: a learned sender evicted meanwhile
                    // has no entry (its handle may be another's by now), and its pong goes.
                    let Some(entry) = self.table.get(key) else {
                        self.queued_pongs -= 1;
                        bump(&self.shared.counters.pongs_dropped_backlog);
                        continue;
                    };
                    let dest = entry.addr;
                    let stranger = (!entry.is_peer()).then_some(entry.proven);
                    let strangers_full = stranger.is_some_and(|proven| {
                        self.stranger_pongs_in_flight[usize::from(proven)]
                            >= self.stranger_pong_budget
                    });
                    if strangers_full || entry.pongs_in_flight >= cap {
                        // The pair's second pong often finds the first one's completion
                        // pending (rxd completes a send when the peer acknowledges it): it
                        // waits for it, within bounds. So do pongs to strangers beyond
                        // their budget.
                        if queued_at.elapsed() < PONG_MAX_WAIT {
                            deferred.push_back(out);
                        } else {
                            self.queued_pongs -= 1;
                            bump(&self.shared.counters.pongs_dropped_backlog);
                        }
                        continue;
                    }
                    self.scratch.clear();
                    self.scratch.extend_from_slice(bytes);
                    let dwell = u64::try_from(queued_at.elapsed().as_nanos()).unwrap_or(u64::MAX);
                    wire::restamp_dwell(&mut self.scratch, dwell);
                    (
                        dest,
                        key.clone(),
                        SendPurpose::Pong {
                            key: key.clone(),
                            stranger,
                        },
                    )
                }
            };
            match self.ep.send(dest, &self.scratch) {
                Ok(id) => {
                    let now = Instant::now();
                    if let SendPurpose::Ping { seq, token, .. } = &purpose {
                        if let Some(p) = self.inflight.get_mut(seq) {
                            p.sent_at = Some(now);
                            p.token = *token;
                            if p.cold.is_some() {
                                self.warm_awaited.insert(*seq);
                                self.pacing.warm(now, &self.config);
                            } else {
                                self.pacing.first_ping_sent(now, p.pair);
                            }
                        }
                        bump(&self.shared.counters.pings_sent);
                    } else {
                        self.queued_pongs -= 1;
                    }
                    if let SendPurpose::Pong {
                        stranger: Some(proven),
                        ..
                    } = &purpose
                    {
                        self.stranger_pongs_in_flight[usize::from(*proven)] += 1;
                    }
                    if let Some(entry) = self.table.get_mut(&key) {
                        match purpose {
                            SendPurpose::Ping { size, .. } => {
                                *entry.pings_in_flight.entry(size).or_default() += 1
                            }
                            SendPurpose::Pong { .. } => entry.pongs_in_flight += 1,
                        }
                    }
                    self.sends.insert(id, purpose);
                    self.pacing.activity(now, &self.config);
                }
                Err(e) if e.is_again() => deferred.push_back(out),
                // Every transmit slot is taken (by sends a provider never completes, on
                // blackholed paths): the rest waits for one, and a ping times out at its
                // own deadline if none comes.
                Err(fabric::Error::TxBusy(_)) => {
                    deferred.push_back(out);
                    break;
                }
                Err(e) => match purpose {
                    SendPurpose::Ping { seq, .. } => self.finish(
                        seq,
                        ProbeOutcome::NotSent {
                            reason: e.to_string(),
                        },
                    ),
                    SendPurpose::Pong { .. } => {
                        self.queued_pongs -= 1;
                        bump(&self.shared.counters.pong_send_failures);
                    }
                },
            }
        }
        deferred.append(&mut self.outbox);
        self.outbox = deferred;
    }

    fn progress(&mut self) {
        let now = Instant::now();
        self.poll_gap = now.saturating_duration_since(self.last_poll);
        self.last_poll = now;
        self.events.clear();
        self.rx_data.clear();
        if let Err(e) = self.ep.poll(&mut self.events, &mut self.rx_data) {
            tracing::warn!(error = %e, "reading completion queues failed");
            return;
        }
        if self.events.is_empty() {
            return;
        }
        // One clock read for the batch: every message in it was read by this poll.
        let polled_at = Instant::now();
        self.pacing.activity(polled_at, &self.config);
        let events = std::mem::take(&mut self.events);
        for event in &events {
            match event {
                Event::Sent(id) => self.send_done(*id, None),
                Event::SendFailed(id, err) => self.send_done(*id, Some(err.clone())),
                Event::Received { data, from } => self.received(data.clone(), *from, polled_at),
                Event::ReceiveFailed(err) => {
                    tracing::debug!(error = %err, "receive failed");
                    bump(&self.shared.counters.receive_errors);
                }
            }
        }
        self.events = events;
    }

    fn send_done(&mut self, id: SendId, error: Option<CompletionError>) {
        let Some(purpose) = self.sends.remove(&id) else {
            return;
        };
        self.health.progress(Instant::now());
        let key = match &purpose {
            SendPurpose::Ping { key, .. } | SendPurpose::Pong { key, .. } => key.clone(),
        };
        if let SendPurpose::Pong {
            stranger: Some(proven),
            ..
        } = &purpose
        {
            self.stranger_pongs_in_flight[usize::from(*proven)] -= 1;
        }
        if let Some(entry) = self.table.get_mut(&key) {
            match purpose {
                SendPurpose::Ping { size, .. } => {
                    if let Some(n) = entry.pings_in_flight.get_mut(&size) {
                        *n = n.saturating_sub(1);
                    }
                }
                SendPurpose::Pong { .. } => {
                    entry.pongs_in_flight = entry.pongs_in_flight.saturating_sub(1);
                    entry.proven |= error.is_none();
                }
            }
        }
        match (purpose, error) {
            (SendPurpose::Ping { seq, .. }, Some(error)) => {
                bump(&self.shared.counters.probe_send_failures);
                self.finish(seq, ProbeOutcome::SendFailed { error });
            }
            (SendPurpose::Pong { .. }, Some(error)) => {
                tracing::debug!(%error, "pong send failed");
                bump(&self.shared.counters.pong_send_failures);
            }
            _ => {}
        }
        self.table
            .release_if_unused(&mut self.ep, &self.shared.counters, &key);
    }

    fn received(&mut self, range: Range<usize>, from: Option<FabricAddr>, received_at: Instant) {
        let data = &self.rx_data[range];
        let msg = match Message::decode(data) {
            Ok(m) => m,
            Err(e) => {
                self.shared.counters.malformed(MalformedReason::from(&e));
                return;
            }
        };
        match msg.kind {
            Kind::Pong => {
                let (seq, dwell, responder) = (msg.seq, msg.dwell_ns, msg.sender_id);
                let Some(probe) = self.inflight.get(&seq).filter(|p| p.sent_at.is_some()) else {
                    bump(&self.shared.counters.late_pongs);
                    return;
                };
                if let Err(reason) = self.answers(probe, msg.token, from) {
                    self.shared.counters.malformed(reason);
                    return;
                }
                let sent_at = probe.sent_at.expect("filtered above");
                if let Some(entry) = self.table.get_mut(&probe.key) {
                    entry.answered = true;
                }
                self.health.progress(received_at);
                let dwell = Duration::from_nanos(dwell);
                let rtt = received_at.duration_since(sent_at).saturating_sub(dwell);
                bump(&self.shared.counters.pongs_received);
                let probe = self.inflight.get_mut(&seq).expect("looked up above");
                match probe.cold {
                    None if probe.pair => {
                        // First of the pair: send the warm ping now.
                        probe.cold = Some((rtt, dwell, responder));
                        probe.sent_at = None;
                        self.outbox.push_back(Outgoing::Ping { seq });
                    }
                    None => self.finish(
                        seq,
                        ProbeOutcome::Pong {
                            rtt,
                            cold_rtt: rtt,
                            dwell,
                            responder_id: responder,
                            warm: false,
                        },
                    ),
                    Some((cold_rtt, _, _)) => {
                        // Measured only if both sides were polling when the messages came.
                        let settled = Duration::from_nanos(msg.unread_ns)
                            <= self.config.settled_gap
                            && self.poll_gap <= self.config.settled_gap;
                        if !settled {
                            bump(&self.shared.counters.pairs_unsettled);
                        }
                        self.finish(
                            seq,
                            ProbeOutcome::Pong {
                                rtt,
                                cold_rtt,
                                dwell,
                                responder_id: responder,
                                warm: settled,
                            },
                        )
                    }
                }
            }
            Kind::Ping => {
                let (seq, token, size) = (msg.seq, msg.token, data.len());
                let window = self.config.warm_spin;
                let follows = msg.flags & FLAG_FOLLOWS != 0;
                if follows {
                    // The first of a pair: its second follows as soon as the prober sees
                    // this pong, and must find this side awake.
                    self.expected_warm
                        .first(msg.sender_id, seq, received_at, window);
                    self.pacing.warm(received_at, &self.config);
                } else {
                    // A second ping (it carries no flag) ends the wait for it.
                    self.expected_warm.arrived(msg.sender_id, seq);
                }
                let key = EndpointAddress::from(msg.address);
                self.answer_ping(key, seq, token, size, received_at);
            }
        }
    }

    /// Whether a pong carrying `token`, from `from`, answers the ping of `probe` in flight.
    /// Sequence numbers are no secret (they count up): the token is, and where the provider
    /// names senders the pong must come from the address the ping went to.
    fn answers(
        &self,
        probe: &InFlight,
        token: u64,
        from: Option<FabricAddr>,
    ) -> Result<(), MalformedReason> {
        if token != probe.token {
            return Err(MalformedReason::BadToken);
        }
        if self.ep.reports_source() {
            let dest = self.table.get(&probe.key).map(|e| e.addr);
            if from.is_none() || from != dest {
                return Err(MalformedReason::WrongSender);
            }
        }
        Ok(())
    }

    fn answer_ping(
        &mut self,
        key: EndpointAddress,
        seq: u64,
        token: u64,
        size: usize,
        received_at: Instant,
    ) {
        if self.queued_pongs >= self.config.max_queued_pongs {
            bump(&self.shared.counters.pongs_dropped_queue_full);
            return;
        }
        if (self.table)
            .learn(&mut self.ep, &self.shared.counters, &key)
            .is_err()
        {
            self.shared.counters.malformed(MalformedReason::BadAddress);
            return;
        }
        let mut bytes = Vec::with_capacity(size);
        Message {
            kind: Kind::Pong,
            seq,
            sender_id: self.shared.id,
            token,
            dwell_ns: received_at.elapsed().as_nanos() as u64,
            flags: 0,
            unread_ns: u64::try_from(self.poll_gap.as_nanos()).unwrap_or(u64::MAX),
            address: &[],
        }
        .encode_into(size, &mut bytes);
        self.queued_pongs += 1;
        bump(&self.shared.counters.pings_answered);
        self.outbox.push_back(Outgoing::Pong {
            key,
            bytes,
            queued_at: received_at,
        });
    }

    /// Opens the endpoint anew (see `health.rs`) at a new address, which the hello follows
    /// ([`FabricPinger::address_changes`](super::FabricPinger::address_changes)), and inserts
    /// the explicit peers again. (Reopened at the old address, it was unreachable from peers
    /// on rxd, which keeps state about the old one.) What was in flight is lost.
    fn reopen(&mut self, now: Instant) {
        self.health.reopened(now);
        let old = self.shared.published.borrow().address.clone();
        let fresh = match Endpoint::open(self.ep.domain(), self.endpoint_config) {
            Ok(ep) => ep,
            Err(error) => {
                tracing::error!(
                    rail = self.shared.rail,
                    %error,
                    "fabric endpoint stopped working and cannot be opened anew"
                );
                return;
            }
        };
        drop(std::mem::replace(&mut self.ep, fresh));
        self.sends.clear();
        self.stranger_pongs_in_flight = [0; 2];
        self.outbox.retain(|o| matches!(o, Outgoing::Ping { .. }));
        self.queued_pongs = 0;
        let refused = self.table.reinsert(&mut self.ep, &self.shared.counters);
        let published = Published::of(&self.ep);
        tracing::warn!(
            rail = self.shared.rail,
            domain = %self.shared.domain,
            old = %old,
            new = %published.address,
            peers_refused = refused,
            "fabric endpoint stopped completing sends to peers that answered before: opened \
             it anew, at a new address"
        );
        self.shared.published.send_replace(published);
        bump(&self.shared.counters.endpoint_reopens);
    }

    fn expire(&mut self, now: Instant) {
        while let Some((&(deadline, seq), _)) = self.deadlines.first_key_value() {
            if deadline > now {
                break;
            }
            self.deadlines.pop_first();
            let Some(probe) = self.inflight.get(&seq) else {
                continue;
            };
            let outcome = match probe.cold {
                // Only the warm ping is missing: the peer is reachable.
                Some((rtt, dwell, responder_id)) => ProbeOutcome::Pong {
                    rtt,
                    cold_rtt: rtt,
                    dwell,
                    responder_id,
                    warm: false,
                },
                None => {
                    bump(&self.shared.counters.probe_timeouts);
                    ProbeOutcome::Timeout
                }
            };
            self.finish(seq, outcome);
        }
    }

    fn finish(&mut self, seq: u64, outcome: ProbeOutcome) {
        self.warm_awaited.remove(&seq);
        if let Some(probe) = self.inflight.remove(&seq) {
            self.deadlines.remove(&(probe.deadline, seq));
            let _ = probe.reply.send(outcome);
        }
    }
}

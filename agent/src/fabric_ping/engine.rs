//! The fabric ping engine: one RDM endpoint per domain, driven by a thread of its own.
//!
//! The thread owns the endpoint (libfabric objects, registered memory) and everything about
//! peers; callers talk to it through a channel and get answers on oneshot channels, so the
//! async agent and the blocking CLI use the same engine.
//!
//! Progress is manual on EFA (and on rxd/rxm here): nothing moves unless the completion queues
//! are read, and no wait object is offered. How the thread paces its polls is what an agent
//! costs (see [`Pacing`]): it spins only while an answer is due within microseconds (the
//! second, "warm" ping of a probe, on both sides), polls every few hundred microseconds while
//! a first ping waits for a responder that may be idle, and otherwise sleeps between slow
//! polls, which still answer pings and accept connections.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use fabric::{CompletionError, Domain, Endpoint, EndpointConfig, Event, FabricAddr, SendId};
use serde::Serialize;
use tokio::sync::oneshot;

use super::wire::{DecodeError, Kind, Message, FLAG_FOLLOWS, HEADER_LEN, MAX_ADDR_LEN};

/// How an engine is opened and paced.
#[derive(Debug, Clone)]
pub struct PingerConfig {
    /// libfabric provider (`efa`, `tcp`, `udp;ofi_rxd`, `shm`).
    pub provider: String,
    /// Local IP to bind, for providers that run over IP. Ignored by EFA and shm.
    pub bind: Option<IpAddr>,
    /// Largest probe, in bytes (the slot size of the endpoint's buffers).
    pub max_probe_size: usize,
    /// Poll period while nothing is in flight: bounds how late an idle responder sees a
    /// ping (which is why probes come in pairs; see [`FabricPinger::probe`]). Each poll
    /// costs tens of microseconds here (a timer wake-up plus the provider's progress), so
    /// 20 ms keeps an idle engine well under 1% of a core.
    pub idle_poll: Duration,
    /// Longest poll period while a pair's first ping waits for its pong. The responder spins
    /// from its answer until the second ping arrives, so this bounds what the responder
    /// spends per probe (half of it, on average) as much as what the prober spends polling
    /// (the wait over it, times a poll's cost): with a ~10 ms wait and ~50 µs polls, 1 ms
    /// makes the two about equal and their sum least.
    pub wait_poll: Duration,
    /// How long either side spins for a second ("warm") ping or its pong before giving up on
    /// it and backing off.
    pub warm_spin: Duration,
    /// A pair's second ping measures the path only if neither side let its message wait
    /// longer than this unread: the responder's poll gap when it read the ping (the pong's
    /// `unread` word) and the prober's when it read the pong. Longer, one side slept or was
    /// not scheduled (a busy or CPU-throttled node), and the pair reports `warm: false`.
    pub settled_gap: Duration,
    /// Spin this long after any traffic. 0 for an agent; a benchmark's responder lingers so
    /// that back-to-back probes find it awake.
    pub linger: Duration,
    /// Whether this endpoint answers pings. One that does not (the agent's endpoint for
    /// larger probes, which peers never ping) sleeps until asked to probe.
    pub responder: bool,
    /// Sends in flight at most (each holds a `max_probe_size` buffer); more wait.
    pub tx_slots: usize,
    /// Receives kept posted (each a `max_probe_size` buffer).
    pub rx_slots: usize,
    /// Peers learned from their pings and kept in the address vector (least recently used
    /// are evicted), bounding what strangers can make this engine hold.
    pub max_learned_peers: usize,
    /// Pongs waiting for transmit resources, at most; more are dropped and counted.
    pub max_queued_pongs: usize,
    /// Pongs in flight to one destination, at most; a ping answered beyond that is dropped
    /// and counted (see `flush_outbox`). 1 for an agent; `efaprobe simulate-peers`, whose
    /// one responder answers every probe of the agent under test, raises it.
    pub max_pongs_in_flight_per_peer: u32,
}

impl PingerConfig {
    pub fn new(provider: &str) -> Self {
        PingerConfig {
            provider: provider.to_owned(),
            bind: None,
            max_probe_size: 8192,
            idle_poll: Duration::from_millis(20),
            wait_poll: Duration::from_millis(1),
            warm_spin: Duration::from_millis(5),
            settled_gap: Duration::from_micros(500),
            linger: Duration::ZERO,
            responder: true,
            tx_slots: 128,
            rx_slots: 64,
            max_learned_peers: 1024,
            max_queued_pongs: 1024,
            max_pongs_in_flight_per_peer: 1,
        }
    }
}

/// Why an engine could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// the provider or a device is missing
    #[error(transparent)]
    Fabric(#[from] fabric::Error),
    /// the engine thread could not be started
    #[error("cannot start the fabric engine thread: {0}")]
    Thread(std::io::Error),
}

/// Sets the environment a provider must see before libfabric loads it. Call it early in
/// `main`, before other threads exist.
pub fn prepare_environment(provider: &str) {
    if provider == "efa" && std::env::var_os("FI_EFA_ENABLE_SHM_TRANSFER").is_none() {
        // Otherwise a peer on the same host is reached through shared memory and the probe
        // says nothing about the device.
        std::env::set_var("FI_EFA_ENABLE_SHM_TRANSFER", "0");
    }
}

/// Opens one engine per domain (device) of the provider: one per EFA NIC on multi-rail nodes.
pub fn open_all(config: &PingerConfig) -> Result<Vec<FabricPinger>, OpenError> {
    // EFA addresses are device GIDs and shm names are derived from the node string (two
    // processes given the same IP would collide): only IP providers take the bind address.
    let ip_provider = !matches!(config.provider.split(';').next(), Some("efa") | Some("shm"));
    let node = config.bind.filter(|_| ip_provider).map(|ip| ip.to_string());
    // Queues no deeper than what the engine keeps in flight: providers size their own
    // pools by them (rxd's are ~4 MiB per endpoint at its defaults).
    let query = fabric::Query::provider(&config.provider)
        .bind(node.as_deref())
        .queue_sizes(config.tx_slots, config.rx_slots);
    let list = fabric::InfoList::get(&query)?;
    list.per_domain()
        .into_iter()
        .map(|info| FabricPinger::start(info.to_owned()?, config.clone()))
        .collect()
}

/// What became of one probe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum ProbeOutcome {
    /// The peer answered. `rtt` excludes the time the responder held the ping, and comes
    /// from the second ping of the pair when that one answered in time (`warm`; see
    /// [`FabricPinger::probe`]); `cold_rtt` is the first ping's, which includes however long
    /// an idle responder took to notice it. Without a warm answer `rtt` is `cold_rtt`: it
    /// proves the path, but says little about its latency.
    Pong {
        rtt: Duration,
        cold_rtt: Duration,
        dwell: Duration,
        responder_id: u64,
        warm: bool,
    },
    /// No answer before the deadline: the path drops silently.
    Timeout,
    /// The provider reported the send failed, with its reason.
    SendFailed { error: CompletionError },
    /// The probe never left: no such peer, the provider refused the send, or the engine
    /// stopped.
    NotSent { reason: String },
}

/// An engine's handle for a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PeerHandle(u64);

impl PeerHandle {
    /// A handle no engine issues: probing it answers `NotSent` once every command sent
    /// before it has been handled, which makes it a barrier in tests.
    pub fn never_issued() -> PeerHandle {
        PeerHandle(0)
    }
}

/// Counters of one engine, for metrics and tests.
#[derive(Debug, Default)]
struct Counters {
    pings_sent: AtomicU64,
    pongs_received: AtomicU64,
    probe_timeouts: AtomicU64,
    probe_send_failures: AtomicU64,
    pings_answered: AtomicU64,
    pong_send_failures: AtomicU64,
    pongs_dropped_queue_full: AtomicU64,
    pongs_dropped_backlog: AtomicU64,
    late_pongs: AtomicU64,
    pairs_unsettled: AtomicU64,
    receive_errors: AtomicU64,
    malformed: [AtomicU64; 5],
    learned_peers_evicted: AtomicU64,
    av_entries: AtomicU64,
}

const MALFORMED_LABELS: [&str; 5] = [
    "truncated",
    "bad_magic",
    "bad_version",
    "bad_kind",
    "bad_address",
];

fn malformed_index(e: &DecodeError) -> usize {
    MALFORMED_LABELS
        .iter()
        .position(|l| *l == e.label())
        .expect("every DecodeError label is listed")
}

/// A point-in-time copy of an engine's counters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PingerStats {
    pub pings_sent: u64,
    pub pongs_received: u64,
    pub probe_timeouts: u64,
    pub probe_send_failures: u64,
    pub pings_answered: u64,
    pub pong_send_failures: u64,
    pub pongs_dropped_queue_full: u64,
    /// Pongs dropped after waiting too long behind one still in flight to the same
    /// destination.
    pub pongs_dropped_backlog: u64,
    pub late_pongs: u64,
    /// Pairs whose second ping did not measure the path: a side let a message wait unread
    /// longer than `settled_gap` (reported `warm: false`).
    pub pairs_unsettled: u64,
    pub receive_errors: u64,
    /// Dropped messages by reason (`truncated`, `bad_magic`, `bad_version`, `bad_kind`,
    /// `bad_address`).
    pub malformed: BTreeMap<&'static str, u64>,
    pub learned_peers_evicted: u64,
    /// Entries in the address vector now.
    pub av_entries: u64,
}

impl PingerStats {
    pub fn malformed_total(&self) -> u64 {
        self.malformed.values().sum()
    }
}

struct Shared {
    provider: String,
    fabric: String,
    domain: String,
    address: Vec<u8>,
    address_display: String,
    id: u64,
    counters: Counters,
}

enum Command {
    AddPeer(Vec<u8>, oneshot::Sender<Result<PeerHandle, String>>),
    RemovePeer(PeerHandle),
    Probe {
        peer: PeerHandle,
        size: usize,
        timeout: Duration,
        /// Measure the round-trip time with a second ping (see [`FabricPinger::probe`]).
        pair: bool,
        reply: oneshot::Sender<ProbeOutcome>,
    },
    Shutdown,
}

/// A pending answer from the engine thread: `.await` it, or `wait()` outside async code.
pub struct Reply<T>(oneshot::Receiver<T>);

impl<T> Reply<T> {
    /// Blocks until the engine answers. Not for use inside an async runtime.
    pub fn wait(self) -> Option<T> {
        self.0.blocking_recv().ok()
    }

    pub async fn get(self) -> Option<T> {
        self.0.await.ok()
    }
}

/// Handle to one engine (one endpoint on one domain). Cheap to clone; the engine stops when
/// the last handle is dropped or [`shutdown`](Self::shutdown) is called.
#[derive(Clone)]
pub struct FabricPinger {
    shared: Arc<Shared>,
    commands: mpsc::Sender<Command>,
    thread: Arc<Mutex<Option<JoinHandle<()>>>>,
}

impl FabricPinger {
    /// Opens the endpoint on `info`'s domain and starts the engine thread.
    pub fn start(info: fabric::Info, config: PingerConfig) -> Result<FabricPinger, OpenError> {
        let provider = info.provider_name();
        let fabric_name = info.fabric_name();
        let domain_name = info.domain_name();
        let domain = Domain::open(info)?;
        let slot_size = config.max_probe_size.max(HEADER_LEN + MAX_ADDR_LEN);
        let endpoint = Endpoint::open(
            &domain,
            EndpointConfig {
                slot_size,
                tx_slots: config.tx_slots,
                rx_slots: config.rx_slots,
                ..EndpointConfig::default()
            },
        )?;
        let shared = Arc::new(Shared {
            provider,
            fabric: fabric_name,
            domain: domain_name,
            address: endpoint.name().to_vec(),
            address_display: endpoint.display_address(endpoint.name()),
            id: rand::random(),
            counters: Counters::default(),
        });
        let (tx, rx) = mpsc::channel();
        let engine = Engine::new(endpoint, shared.clone(), rx, config);
        let thread = std::thread::Builder::new()
            .name(format!("fabric-{}", shared.domain))
            .spawn(move || engine.run())
            .map_err(OpenError::Thread)?;
        Ok(FabricPinger {
            shared,
            commands: tx,
            thread: Arc::new(Mutex::new(Some(thread))),
        })
    }

    fn send(&self, cmd: Command) -> Result<(), mpsc::SendError<Command>> {
        self.commands.send(cmd)
    }

    /// The provider as libfabric names it (`udp;ofi_rxd`, `efa`, ...).
    pub fn provider(&self) -> &str {
        &self.shared.provider
    }

    pub fn fabric_name(&self) -> &str {
        &self.shared.fabric
    }

    /// The domain (device) this engine's endpoint is on.
    pub fn domain(&self) -> &str {
        &self.shared.domain
    }

    /// This endpoint's raw fabric address, to publish to peers.
    pub fn address(&self) -> &[u8] {
        &self.shared.address
    }

    /// The provider's printable form of [`address`](Self::address).
    pub fn address_display(&self) -> &str {
        &self.shared.address_display
    }

    /// Random identity of this engine instance, carried in every message.
    pub fn instance_id(&self) -> u64 {
        self.shared.id
    }

    /// Adds a peer by its raw fabric address (as the peer published it).
    pub fn add_peer(&self, address: &[u8]) -> Reply<Result<PeerHandle, String>> {
        let (tx, rx) = oneshot::channel();
        if let Err(mpsc::SendError(Command::AddPeer(_, tx))) =
            self.send(Command::AddPeer(address.to_vec(), tx))
        {
            let _ = tx.send(Err("fabric engine stopped".into()));
        }
        Reply(rx)
    }

    /// Forgets a peer; its address-vector entry goes once nothing is in flight to it.
    pub fn remove_peer(&self, peer: PeerHandle) {
        let _ = self.send(Command::RemovePeer(peer));
    }

    /// Probes a peer with `size`-byte pings (at least the header and this engine's address).
    ///
    /// The first ping decides reachability. Its pong wakes nothing on this side (the engine
    /// spins while a probe is in flight) but the responder may have been idle, and without a
    /// wait object an idle engine polls only every `idle_poll`: so as soon as the first pong
    /// is back a second ping goes out, to a responder that is now spinning, and its RTT is the
    /// one reported. Answers when the pair completes, a send fails, or `timeout` passes (with
    /// the first pong's RTT if only it came back).
    pub fn probe(&self, peer: PeerHandle, size: usize, timeout: Duration) -> Reply<ProbeOutcome> {
        self.send_probe(peer, size, timeout, true)
    }

    /// Probes a peer with one ping: proves the path (or not) at a fraction of the cost of
    /// [`probe`](Self::probe), since neither side spins, but its RTT includes however long
    /// the responder took to notice the ping (up to its `idle_poll`).
    pub fn reach(&self, peer: PeerHandle, size: usize, timeout: Duration) -> Reply<ProbeOutcome> {
        self.send_probe(peer, size, timeout, false)
    }

    fn send_probe(
        &self,
        peer: PeerHandle,
        size: usize,
        timeout: Duration,
        pair: bool,
    ) -> Reply<ProbeOutcome> {
        let (tx, rx) = oneshot::channel();
        let cmd = Command::Probe {
            peer,
            size,
            timeout,
            pair,
            reply: tx,
        };
        if let Err(mpsc::SendError(Command::Probe { reply, .. })) = self.send(cmd) {
            let _ = reply.send(ProbeOutcome::NotSent {
                reason: "fabric engine stopped".into(),
            });
        }
        Reply(rx)
    }

    pub fn stats(&self) -> PingerStats {
        let c = &self.shared.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        PingerStats {
            pings_sent: get(&c.pings_sent),
            pongs_received: get(&c.pongs_received),
            probe_timeouts: get(&c.probe_timeouts),
            probe_send_failures: get(&c.probe_send_failures),
            pings_answered: get(&c.pings_answered),
            pong_send_failures: get(&c.pong_send_failures),
            pongs_dropped_queue_full: get(&c.pongs_dropped_queue_full),
            pongs_dropped_backlog: get(&c.pongs_dropped_backlog),
            late_pongs: get(&c.late_pongs),
            pairs_unsettled: get(&c.pairs_unsettled),
            receive_errors: get(&c.receive_errors),
            malformed: MALFORMED_LABELS
                .iter()
                .zip(&c.malformed)
                .map(|(l, a)| (*l, get(a)))
                .collect(),
            learned_peers_evicted: get(&c.learned_peers_evicted),
            av_entries: get(&c.av_entries),
        }
    }

    /// Stops the engine and waits for it to close its endpoint. In-flight probes answer
    /// `NotSent`. Other clones of this handle see a stopped engine.
    pub fn shutdown(&self) {
        let _ = self.send(Command::Shutdown);
        if let Some(t) = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = t.join();
        }
    }
}

/// One address-vector entry, shared by the explicit peers and learned senders that use the
/// same address.
struct AvEntry {
    addr: FabricAddr,
    /// Explicit peers (add_peer) using this address.
    refs: u32,
    /// Set while the entry is also a learned sender: its position in the LRU order.
    learned_tick: Option<u64>,
    /// Pings not yet completed, by probe size (one unanswered per size at most: see
    /// `flush_outbox`).
    pings_in_flight: BTreeMap<usize, u32>,
    /// Pongs not yet completed (at most one).
    pongs_in_flight: u32,
}

enum Outgoing {
    Ping {
        seq: u64,
    },
    Pong {
        dest: FabricAddr,
        key: Vec<u8>,
        bytes: Vec<u8>,
        queued_at: Instant,
    },
}

/// How long a pong may wait behind one still in flight to the same destination. A prober
/// gives up on a probe after its timeout anyway; on a path where sends never complete, pongs
/// go no further than this.
const PONG_MAX_WAIT: Duration = Duration::from_secs(1);

struct InFlight {
    key: Vec<u8>,
    size: usize,
    deadline: Instant,
    sent_at: Option<Instant>,
    /// Whether a second ping follows the first one's pong.
    pair: bool,
    /// The first ping's answer, once it came: (rtt, dwell, responder).
    cold: Option<(Duration, Duration, u64)>,
    reply: oneshot::Sender<ProbeOutcome>,
}

enum SendPurpose {
    Ping { seq: u64, key: Vec<u8>, size: usize },
    Pong { key: Vec<u8> },
}

struct Engine {
    ep: Endpoint,
    shared: Arc<Shared>,
    commands: mpsc::Receiver<Command>,
    config: PingerConfig,
    epoch: Instant,
    peers: HashMap<PeerHandle, Vec<u8>>,
    next_handle: u64,
    av: HashMap<Vec<u8>, AvEntry>,
    learned_lru: BTreeMap<u64, Vec<u8>>,
    tick: u64,
    inflight: HashMap<u64, InFlight>,
    deadlines: BTreeMap<(Instant, u64), ()>,
    sends: HashMap<SendId, SendPurpose>,
    outbox: VecDeque<Outgoing>,
    queued_pongs: usize,
    next_seq: u64,
    pacing: Pacing,
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
    stopping: bool,
}

impl Engine {
    fn new(
        ep: Endpoint,
        shared: Arc<Shared>,
        commands: mpsc::Receiver<Command>,
        config: PingerConfig,
    ) -> Self {
        let now = Instant::now();
        Engine {
            ep,
            shared,
            commands,
            config,
            epoch: now,
            peers: HashMap::new(),
            next_handle: 1,
            av: HashMap::new(),
            learned_lru: BTreeMap::new(),
            tick: 0,
            inflight: HashMap::new(),
            deadlines: BTreeMap::new(),
            sends: HashMap::new(),
            outbox: VecDeque::new(),
            queued_pongs: 0,
            next_seq: 1,
            pacing: Pacing::default(),
            warm_awaited: BTreeSet::new(),
            expected_warm: ExpectedWarm::default(),
            last_poll: Instant::now(),
            poll_gap: Duration::ZERO,
            events: Vec::new(),
            rx_data: Vec::new(),
            scratch: Vec::new(),
            stopping: false,
        }
    }

    fn counters(&self) -> &Counters {
        &self.shared.counters
    }

    fn run(mut self) {
        while !self.stopping {
            let now = Instant::now();
            self.expected_warm.prune(now);
            let outstanding = Outstanding {
                warm: !self.warm_awaited.is_empty()
                    || self.expected_warm.pending()
                    || self.queued_pongs > 0,
                probes: !self.inflight.is_empty() || !self.outbox.is_empty(),
                sends: !self.sends.is_empty(),
            };
            let command = match self.pacing.next(now, outstanding, &self.config) {
                Wait::Spin => self.commands.try_recv().map_err(|e| match e {
                    mpsc::TryRecvError::Empty => None,
                    mpsc::TryRecvError::Disconnected => Some(()),
                }),
                Wait::For(period) => self.commands.recv_timeout(period).map_err(|e| match e {
                    mpsc::RecvTimeoutError::Timeout => None,
                    mpsc::RecvTimeoutError::Disconnected => Some(()),
                }),
                Wait::Forever => self.commands.recv().map_err(|_| Some(())),
            };
            match command {
                Ok(cmd) => {
                    self.handle(cmd);
                    while let Ok(cmd) = self.commands.try_recv() {
                        self.handle(cmd);
                    }
                }
                Err(Some(())) => break,
                Err(None) => {}
            }
            // Completions first, then the sends they caused (pongs, second pings) at once.
            self.progress();
            self.flush_outbox();
            self.expire(Instant::now());
        }
        for (_, probe) in self.inflight.drain() {
            let _ = probe.reply.send(ProbeOutcome::NotSent {
                reason: "fabric engine stopped".into(),
            });
        }
        // Dropping self closes the endpoint before its memory and queues.
    }

    fn handle(&mut self, cmd: Command) {
        match cmd {
            Command::AddPeer(address, reply) => {
                let result = self.add_peer(address);
                let _ = reply.send(result);
            }
            Command::Shutdown => self.stopping = true,
            Command::RemovePeer(handle) => {
                if let Some(key) = self.peers.remove(&handle) {
                    if let Some(entry) = self.av.get_mut(&key) {
                        entry.refs = entry.refs.saturating_sub(1);
                    }
                    self.maybe_release(&key);
                }
            }
            Command::Probe {
                peer,
                size,
                timeout,
                pair,
                reply,
            } => self.start_probe(peer, size, timeout, pair, reply),
        }
    }

    fn add_peer(&mut self, address: Vec<u8>) -> Result<PeerHandle, String> {
        self.ensure_av(&address)?;
        let entry = self.av.get_mut(&address).expect("just ensured");
        entry.refs += 1;
        let handle = PeerHandle(self.next_handle);
        self.next_handle += 1;
        self.peers.insert(handle, address);
        Ok(handle)
    }

    /// Makes sure `address` has an AV entry, inserting it if needed.
    fn ensure_av(&mut self, address: &[u8]) -> Result<FabricAddr, String> {
        if let Some(entry) = self.av.get(address) {
            return Ok(entry.addr);
        }
        let addr = self.ep.insert_peer(address).map_err(|e| e.to_string())?;
        self.av.insert(
            address.to_vec(),
            AvEntry {
                addr,
                refs: 0,
                learned_tick: None,
                pings_in_flight: BTreeMap::new(),
                pongs_in_flight: 0,
            },
        );
        self.sync_av_count();
        Ok(addr)
    }

    /// Removes an AV entry that nothing uses any more.
    fn maybe_release(&mut self, key: &[u8]) {
        let unused = self.av.get(key).is_some_and(|e| {
            e.refs == 0
                && e.learned_tick.is_none()
                && e.pings_in_flight.values().all(|n| *n == 0)
                && e.pongs_in_flight == 0
        });
        if unused {
            let entry = self.av.remove(key).expect("checked above");
            if let Err(e) = self.ep.remove_peer(entry.addr) {
                tracing::warn!(error = %e, "fi_av_remove failed");
            }
            self.sync_av_count();
        }
    }

    fn sync_av_count(&self) {
        self.counters()
            .av_entries
            .store(self.ep.peer_count() as u64, Ordering::Relaxed);
    }

    fn start_probe(
        &mut self,
        peer: PeerHandle,
        size: usize,
        timeout: Duration,
        pair: bool,
        reply: oneshot::Sender<ProbeOutcome>,
    ) {
        let Some(key) = self.peers.get(&peer).cloned() else {
            let _ = reply.send(ProbeOutcome::NotSent {
                reason: "unknown peer".into(),
            });
            return;
        };
        let seq = self.next_seq;
        self.next_seq += 1;
        let deadline = Instant::now() + timeout;
        self.inflight.insert(
            seq,
            InFlight {
                key,
                size: size.min(self.ep.max_message()),
                deadline,
                sent_at: None,
                pair,
                cold: None,
                reply,
            },
        );
        self.deadlines.insert((deadline, seq), ());
        self.outbox.push_back(Outgoing::Ping { seq });
    }

    fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
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
                    let Some(entry) = self.av.get(&probe.key) else {
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
                    Message {
                        kind: Kind::Ping,
                        seq: *seq,
                        sender_id: self.shared.id,
                        send_ts: self.now_ns(),
                        dwell_ns: 0,
                        flags: if probe.pair && probe.cold.is_none() {
                            FLAG_FOLLOWS
                        } else {
                            0
                        },
                        unread_ns: 0,
                        address: &self.shared.address,
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
                        },
                    )
                }
                Outgoing::Pong {
                    dest,
                    key,
                    bytes,
                    queued_at,
                } => {
                    let cap = self.config.max_pongs_in_flight_per_peer;
                    if self.av.get(key).is_some_and(|e| e.pongs_in_flight >= cap) {
                        // The pair's second pong often finds the first one's completion
                        // pending (rxd completes a send when the peer acknowledges it): it
                        // waits for it, within bounds.
                        if queued_at.elapsed() < PONG_MAX_WAIT {
                            deferred.push_back(out);
                        } else {
                            self.queued_pongs -= 1;
                            self.counters()
                                .pongs_dropped_backlog
                                .fetch_add(1, Ordering::Relaxed);
                        }
                        continue;
                    }
                    self.scratch.clear();
                    self.scratch.extend_from_slice(bytes);
                    let dwell = u64::try_from(queued_at.elapsed().as_nanos()).unwrap_or(u64::MAX);
                    super::wire::restamp_dwell(&mut self.scratch, dwell);
                    (*dest, key.clone(), SendPurpose::Pong { key: key.clone() })
                }
            };
            match self.ep.send(dest, &self.scratch) {
                Ok(id) => {
                    let now = Instant::now();
                    if let SendPurpose::Ping { seq, .. } = &purpose {
                        if let Some(p) = self.inflight.get_mut(seq) {
                            p.sent_at = Some(now);
                            if p.cold.is_some() {
                                self.warm_awaited.insert(*seq);
                                self.pacing.warm(now, &self.config);
                            } else {
                                self.pacing.first_ping_sent(now, p.pair);
                            }
                        }
                        self.counters().pings_sent.fetch_add(1, Ordering::Relaxed);
                    } else {
                        self.queued_pongs -= 1;
                    }
                    if let Some(entry) = self.av.get_mut(&key) {
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
                        self.counters()
                            .pong_send_failures
                            .fetch_add(1, Ordering::Relaxed);
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
                Event::Received(range) => self.received(range.clone(), polled_at),
                Event::ReceiveFailed(err) => {
                    tracing::debug!(error = %err, "receive failed");
                    self.counters()
                        .receive_errors
                        .fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        self.events = events;
    }

    fn send_done(&mut self, id: SendId, error: Option<CompletionError>) {
        let Some(purpose) = self.sends.remove(&id) else {
            return;
        };
        let key = match &purpose {
            SendPurpose::Ping { key, .. } | SendPurpose::Pong { key } => key.clone(),
        };
        if let Some(entry) = self.av.get_mut(&key) {
            match purpose {
                SendPurpose::Ping { size, .. } => {
                    if let Some(n) = entry.pings_in_flight.get_mut(&size) {
                        *n = n.saturating_sub(1);
                    }
                }
                SendPurpose::Pong { .. } => {
                    entry.pongs_in_flight = entry.pongs_in_flight.saturating_sub(1)
                }
            }
        }
        match (purpose, error) {
            (SendPurpose::Ping { seq, .. }, Some(error)) => {
                self.counters()
                    .probe_send_failures
                    .fetch_add(1, Ordering::Relaxed);
                self.finish(seq, ProbeOutcome::SendFailed { error });
            }
            (SendPurpose::Pong { .. }, Some(error)) => {
                tracing::debug!(%error, "pong send failed");
                self.counters()
                    .pong_send_failures
                    .fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
        self.maybe_release(&key);
    }

    fn received(&mut self, range: std::ops::Range<usize>, received_at: Instant) {
        let data = &self.rx_data[range];
        let msg = match Message::decode(data) {
            Ok(m) => m,
            Err(e) => {
                self.counters().malformed[malformed_index(&e)].fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
        match msg.kind {
            Kind::Pong => {
                let (seq, dwell, responder) = (msg.seq, msg.dwell_ns, msg.sender_id);
                let Some(sent_at) = self.inflight.get(&seq).and_then(|p| p.sent_at) else {
                    self.counters().late_pongs.fetch_add(1, Ordering::Relaxed);
                    return;
                };
                let dwell = Duration::from_nanos(dwell);
                let rtt = received_at.duration_since(sent_at).saturating_sub(dwell);
                self.counters()
                    .pongs_received
                    .fetch_add(1, Ordering::Relaxed);
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
                            self.counters()
                                .pairs_unsettled
                                .fetch_add(1, Ordering::Relaxed);
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
                let (seq, send_ts, size) = (msg.seq, msg.send_ts, data.len());
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
                let key = msg.address.to_vec();
                self.answer_ping(key, seq, send_ts, size, received_at);
            }
        }
    }

    fn answer_ping(
        &mut self,
        key: Vec<u8>,
        seq: u64,
        send_ts: u64,
        size: usize,
        received_at: Instant,
    ) {
        if self.queued_pongs >= self.config.max_queued_pongs {
            self.counters()
                .pongs_dropped_queue_full
                .fetch_add(1, Ordering::Relaxed);
            return;
        }
        let dest = match self.learn(&key) {
            Ok(d) => d,
            Err(_) => {
                self.counters().malformed[malformed_index(&DecodeError::BadAddress(key.len()))]
                    .fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
        let mut bytes = Vec::with_capacity(size);
        Message {
            kind: Kind::Pong,
            seq,
            sender_id: self.shared.id,
            send_ts,
            dwell_ns: received_at.elapsed().as_nanos() as u64,
            flags: 0,
            unread_ns: u64::try_from(self.poll_gap.as_nanos()).unwrap_or(u64::MAX),
            address: &[],
        }
        .encode_into(size, &mut bytes);
        self.queued_pongs += 1;
        self.counters()
            .pings_answered
            .fetch_add(1, Ordering::Relaxed);
        self.outbox.push_back(Outgoing::Pong {
            dest,
            key,
            bytes,
            queued_at: received_at,
        });
    }

    /// Finds or inserts the sender of a ping, keeping at most `max_learned_peers` learned
    /// entries (least recently used go first).
    fn learn(&mut self, key: &[u8]) -> Result<FabricAddr, String> {
        self.tick += 1;
        let tick = self.tick;
        if !self.av.contains_key(key) {
            let learned = self.learned_lru.len();
            if learned >= self.config.max_learned_peers {
                self.evict_oldest_learned();
            }
        }
        let addr = self.ensure_av(key)?;
        let entry = self.av.get_mut(key).expect("just ensured");
        if let Some(old) = entry.learned_tick.replace(tick) {
            self.learned_lru.remove(&old);
        }
        self.learned_lru.insert(tick, key.to_vec());
        Ok(addr)
    }

    fn evict_oldest_learned(&mut self) {
        if let Some((_, key)) = self.learned_lru.pop_first() {
            if let Some(entry) = self.av.get_mut(&key) {
                entry.learned_tick = None;
            }
            self.counters()
                .learned_peers_evicted
                .fetch_add(1, Ordering::Relaxed);
            self.maybe_release(&key);
        }
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
                    self.counters()
                        .probe_timeouts
                        .fetch_add(1, Ordering::Relaxed);
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

/// What the engine thread does before its next poll.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wait {
    /// Poll again at once (checking for commands without blocking).
    Spin,
    /// Wait for a command at most this long.
    For(Duration),
    /// Nothing outstanding and nothing to answer: wait for a command.
    Forever,
}

/// What is outstanding, as far as pacing is concerned.
#[derive(Debug, Clone, Copy, Default)]
struct Outstanding {
    /// A second ping's pong is awaited here, or a prober's second ping is expected.
    warm: bool,
    /// Probes in flight or sends queued.
    probes: bool,
    /// Send completions not reported yet (rxd never completes one on a blackholed path).
    sends: bool,
}

/// The first poll period while a pair's first ping waits: its pong comes after the
/// responder's next poll (up to `idle_poll` away), rarely sooner.
const PAIR_BACKOFF: Duration = Duration::from_micros(200);
/// The first poll period while only single pings wait (see [`FabricPinger::reach`]): a late
/// look at their answers costs nothing but a few milliseconds of a result nobody times.
const SINGLE_BACKOFF: Duration = Duration::from_millis(2);

/// How often the engine polls, which is most of what it costs: on this machine a wake-up
/// and a poll cost ~50 µs of CPU, a spinning engine a whole core.
///
/// A probe that measures the RTT is a pair of pings (see [`FabricPinger::probe`]). The first
/// reaches a responder that may be idle and sees it up to `idle_poll` later; the prober
/// meanwhile polls with periods doubling up to `wait_poll`. Once the first pong is back the
/// second ping goes at once, to a responder that has been spinning since it answered the
/// first (the first ping says a second follows), and the prober spins for its pong. So each
/// side spins for microseconds to a fraction of a millisecond per probe, never for the
/// responder's idle latency. A single ping ([`FabricPinger::reach`]) makes nobody spin and
/// is polled for slowly; so is a first ping unanswered after `idle_poll`, which is on a
/// silent path.
#[derive(Debug, Default)]
struct Pacing {
    /// Spin until then while something warm is outstanding.
    hot_until: Option<Instant>,
    /// Spin until then regardless (`linger`).
    linger_until: Option<Instant>,
    backoff: Duration,
    /// When the latest first ping of a pair went out.
    last_pair_ping: Option<Instant>,
}

impl Pacing {
    /// A second ping went out, or a first ping was answered: spin for what follows.
    fn warm(&mut self, now: Instant, config: &PingerConfig) {
        let until = now + config.warm_spin;
        self.hot_until = Some(self.hot_until.map_or(until, |t| t.max(until)));
    }

    /// A probe's first ping went out; `pair`: a second follows its pong.
    fn first_ping_sent(&mut self, now: Instant, pair: bool) {
        if pair {
            self.last_pair_ping = Some(now);
        }
        self.backoff = Duration::ZERO;
    }

    /// A completion or a send: poll soon again.
    fn activity(&mut self, now: Instant, config: &PingerConfig) {
        self.backoff = Duration::ZERO;
        if !config.linger.is_zero() {
            self.linger_until = Some(now + config.linger);
        }
    }

    fn next(&mut self, now: Instant, out: Outstanding, config: &PingerConfig) -> Wait {
        let hot = out.warm && self.hot_until.is_some_and(|t| now < t);
        if hot || self.linger_until.is_some_and(|t| now < t) {
            self.backoff = Duration::ZERO;
            return Wait::Spin;
        }
        if out.probes {
            // A first pong is due within the responder's idle poll; past that the path is
            // probably silent, and polling fast for it would only burn the CPU.
            let due = self
                .last_pair_ping
                .is_some_and(|t| now.duration_since(t) < config.idle_poll + config.idle_poll / 4);
            let (floor, cap) = if due {
                (PAIR_BACKOFF, config.wait_poll)
            } else {
                (SINGLE_BACKOFF, config.idle_poll / 4)
            };
            self.backoff = (self.backoff * 2).clamp(floor, cap.max(floor));
            return Wait::For(self.backoff);
        }
        self.backoff = Duration::ZERO;
        if config.responder || out.sends {
            Wait::For(config.idle_poll)
        } else {
            Wait::Forever
        }
    }
}

/// Pairs bounded in number: a stranger's pings can make a responder spin a little, never
/// hold memory.
const MAX_EXPECTED_WARM: usize = 1024;

/// Probers' first pings answered here, by (sender, sequence), until their second is due.
#[derive(Debug, Default)]
struct ExpectedWarm {
    due: HashMap<(u64, u64), Instant>,
    order: VecDeque<(Instant, (u64, u64))>,
}

impl ExpectedWarm {
    /// The first ping of a pair arrived: its second is expected within `window`.
    fn first(&mut self, sender: u64, seq: u64, now: Instant, window: Duration) {
        if self.order.len() < 2 * MAX_EXPECTED_WARM && self.due.len() < MAX_EXPECTED_WARM {
            let until = now + window;
            self.due.insert((sender, seq), until);
            self.order.push_back((until, (sender, seq)));
        }
    }

    /// A ping that is no pair's first arrived: if it is a pair's second, stop waiting.
    fn arrived(&mut self, sender: u64, seq: u64) {
        self.due.remove(&(sender, seq));
    }

    /// Forgets pairs whose second ping did not come in time.
    fn prune(&mut self, now: Instant) {
        while let Some(&(until, key)) = self.order.front() {
            if until > now {
                break;
            }
            self.order.pop_front();
            if self.due.get(&key) == Some(&until) {
                self.due.remove(&key);
            }
        }
    }

    fn pending(&self) -> bool {
        !self.due.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn efa_keeps_same_host_peers_on_the_device() {
        // The only test in this crate that touches this variable.
        std::env::remove_var("FI_EFA_ENABLE_SHM_TRANSFER");
        prepare_environment("udp;ofi_rxd");
        assert!(std::env::var_os("FI_EFA_ENABLE_SHM_TRANSFER").is_none());
        prepare_environment("efa");
        assert_eq!(std::env::var("FI_EFA_ENABLE_SHM_TRANSFER").unwrap(), "0");
        // An operator's explicit setting wins.
        std::env::set_var("FI_EFA_ENABLE_SHM_TRANSFER", "1");
        prepare_environment("efa");
        assert_eq!(std::env::var("FI_EFA_ENABLE_SHM_TRANSFER").unwrap(), "1");
        std::env::remove_var("FI_EFA_ENABLE_SHM_TRANSFER");
    }

    fn pacing_config() -> PingerConfig {
        PingerConfig::new("udp;ofi_rxd")
    }

    #[test]
    fn an_idle_engine_polls_slowly_and_one_that_answers_nobody_sleeps() {
        let mut config = pacing_config();
        let t0 = Instant::now();
        let mut pacing = Pacing::default();
        let idle = Outstanding::default();
        assert_eq!(pacing.next(t0, idle, &config), Wait::For(config.idle_poll));
        config.responder = false;
        assert_eq!(pacing.next(t0, idle, &config), Wait::Forever);
        // A send the provider never completes (rxd on a blackholed path) is still polled.
        let sends = Outstanding {
            sends: true,
            ..idle
        };
        assert_eq!(pacing.next(t0, sends, &config), Wait::For(config.idle_poll));
    }

    #[test]
    fn a_first_ping_is_polled_for_with_doubling_periods_then_slowly_once_overdue() {
        let config = pacing_config();
        let t0 = Instant::now();
        let mut pacing = Pacing::default();
        pacing.first_ping_sent(t0, true);
        let waiting = Outstanding {
            probes: true,
            ..Outstanding::default()
        };
        let periods: Vec<Wait> = (0..6).map(|_| pacing.next(t0, waiting, &config)).collect();
        let us = Duration::from_micros;
        assert_eq!(
            periods,
            [200, 400, 800, 1000, 1000, 1000].map(|p| Wait::For(us(p))),
            "capped at wait_poll ({:?})",
            config.wait_poll
        );
        // Past the responder's idle poll the path is probably silent.
        let late = t0 + config.idle_poll * 2;
        let mut last = Wait::Spin;
        for _ in 0..12 {
            last = pacing.next(late, waiting, &config);
        }
        assert_eq!(last, Wait::For(config.idle_poll / 4));
        // Activity starts over, from the period for pongs not due yet.
        pacing.activity(late, &config);
        assert_eq!(pacing.next(late, waiting, &config), Wait::For(us(2000)));
        // A new pair's first ping: from the shortest.
        pacing.first_ping_sent(late, true);
        assert_eq!(pacing.next(late, waiting, &config), Wait::For(us(200)));
    }

    #[test]
    fn single_pings_are_polled_for_slowly() {
        let config = pacing_config();
        let t0 = Instant::now();
        let mut pacing = Pacing::default();
        pacing.first_ping_sent(t0, false);
        let waiting = Outstanding {
            probes: true,
            ..Outstanding::default()
        };
        let periods: Vec<Wait> = (0..4).map(|_| pacing.next(t0, waiting, &config)).collect();
        let us = Duration::from_micros;
        assert_eq!(periods, [2000, 4000, 5000, 5000].map(|p| Wait::For(us(p))));
    }

    #[test]
    fn the_engine_spins_only_while_something_warm_is_due() {
        let config = pacing_config();
        let t0 = Instant::now();
        let mut pacing = Pacing::default();
        let warm = Outstanding {
            warm: true,
            probes: true,
            ..Outstanding::default()
        };
        pacing.first_ping_sent(t0, true);
        // Nothing warm yet: a first ping is waited for, not spun on.
        assert!(matches!(pacing.next(t0, warm, &config), Wait::For(_)));
        pacing.warm(t0, &config);
        assert_eq!(pacing.next(t0, warm, &config), Wait::Spin);
        let nearly = t0 + config.warm_spin - Duration::from_micros(1);
        assert_eq!(pacing.next(nearly, warm, &config), Wait::Spin);
        // The awaited answer came: no more spinning, though the window is open.
        let answered = Outstanding {
            warm: false,
            ..warm
        };
        assert!(matches!(pacing.next(t0, answered, &config), Wait::For(_)));
        // It never came: give up spinning when the window closes.
        assert!(matches!(
            pacing.next(t0 + config.warm_spin, warm, &config),
            Wait::For(_)
        ));
    }

    #[test]
    fn lingering_spins_after_traffic_for_its_window() {
        let mut config = pacing_config();
        config.linger = Duration::from_millis(1);
        let t0 = Instant::now();
        let mut pacing = Pacing::default();
        pacing.activity(t0, &config);
        let idle = Outstanding::default();
        assert_eq!(pacing.next(t0, idle, &config), Wait::Spin);
        assert_eq!(
            pacing.next(t0 + config.linger, idle, &config),
            Wait::For(config.idle_poll)
        );
    }

    #[test]
    fn a_responder_waits_for_a_pairs_second_ping_until_it_comes_or_the_window_closes() {
        let t0 = Instant::now();
        let window = Duration::from_millis(5);
        let mut expected = ExpectedWarm::default();
        assert!(!expected.pending());
        expected.first(7, 1, t0, window);
        expected.first(8, 1, t0, window);
        assert!(expected.pending());
        expected.arrived(7, 1);
        assert!(expected.pending(), "8's second ping is still due");
        expected.arrived(8, 1);
        assert!(!expected.pending());
        // A second ping that never comes is forgotten after the window.
        expected.first(7, 2, t0, window);
        expected.prune(t0 + window / 2);
        assert!(expected.pending());
        expected.prune(t0 + window);
        assert!(!expected.pending());
        // A single ping of another prober (no pair) leaves nothing behind.
        expected.arrived(9, 1);
        assert!(!expected.pending());
    }

    #[test]
    fn strangers_pings_cannot_make_a_responder_hold_unbounded_pairs() {
        let t0 = Instant::now();
        let mut expected = ExpectedWarm::default();
        for seq in 0..(3 * MAX_EXPECTED_WARM as u64) {
            expected.first(99, seq, t0, Duration::from_millis(2));
        }
        assert_eq!(expected.due.len(), MAX_EXPECTED_WARM);
        assert!(expected.order.len() <= 2 * MAX_EXPECTED_WARM);
        expected.prune(t0 + Duration::from_millis(2));
        assert!(!expected.pending());
        assert!(expected.order.is_empty());
    }
}

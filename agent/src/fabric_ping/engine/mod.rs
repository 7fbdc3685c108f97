//! The fabric ping engine: one RDM endpoint per rail (an EFA device, or a local address on
//! IP providers), and one thread that drives every rail of its group.
//!
//! The thread owns the endpoints (libfabric objects, registered memory) and everything about
//! peers; callers hold a [`FabricPinger`] per rail and talk to the thread through one channel
//! (each command carries its rail's index; the steady rails', 1 and up, wait in a [`mailbox`]
//! for the thread's next wake-up instead of waking it) and get answers on oneshot channels,
//! so the async agent and the blocking CLI use the same engine. [`open_rails`] opens a node's rails on one
//! thread ([`open`] says which rails a provider has); [`FabricPinger::start`] opens one.
//!
//! Progress is manual on EFA (and on rxd/rxm here): nothing moves unless the completion queues
//! are read, and no wait object is offered. How the thread paces its polls is what an agent
//! costs (see [`pacing`]): a rail spins only while an answer is due within microseconds (the
//! second, "warm" ping of a probe, on both sides), polls every few hundred microseconds while
//! a first ping waits for a responder that may be idle, and otherwise sleeps between slow
//! polls, which still answer pings and accept connections. Each rail paces itself; the loop
//! ([`event_loop`]) sleeps until the earliest rail is due and then polls the rails due by
//! then (up to an eighth of their period early, so that rails due about together share a
//! wake-up) and those just given a command: a busy rail does not make the idle ones poll, and
//! idle rails are polled together, so 32 idle rails cost about one wake-up per `idle_poll`
//! and 32 completion-queue polls (BENCHMARKS.md: idle engine cost by rail count).
//!
//! Each rail has its own address table ([`address_table`]), probes in flight and outbox
//! ([`outgoing`]), counters ([`counters`]), watch on its endpoint and reopen ([`health`]):
//! one rail's peers, failures and reopens leave the others alone ([`rail`]).
//!
//! Lifetime: the thread stops when [`FabricPinger::shutdown`] is called on any rail of its
//! group (it stops every rail of the group: the agent stops them all at exit), or when every
//! handle of every rail of the group has been dropped.

mod address_table;
mod counters;
mod event_loop;
mod health;
mod mailbox;
mod open;
mod outgoing;
mod pacing;
mod rail;

pub use counters::{MalformedReason, PingerStats};
pub use open::{open_all, open_rails, rail_infos, start_rails, RAIL_PING_MAX};

use std::net::IpAddr;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::{JoinHandle, ThreadId};
use std::time::Duration;

use fabric::{CompletionError, Endpoint, EndpointAddress};
use serde::Serialize;
use tokio::sync::{oneshot, watch};

use counters::Counters;

/// How an engine is opened and paced.
#[derive(Debug, Clone)]
pub struct PingerConfig {
    /// libfabric provider (`efa`, `tcp`, `udp;ofi_rxd`, `shm`).
    pub provider: String,
    /// Local IP of the one rail [`open_all`] opens, for providers that run over IP; `None`:
    /// the provider's first interface. Ignored by EFA and shm, and by [`open_rails`], which
    /// takes a list of them.
    pub bind: Option<IpAddr>,
    /// Largest probe, in bytes (the slot size of the endpoint's buffers).
    pub max_probe_size: usize,
    /// Poll period while nothing is in flight: bounds how late an idle responder sees a
    /// ping (which is why probes come in pairs; see [`FabricPinger::probe`]). Each poll
    /// costs tens of microseconds here (a timer wake-up plus the provider's progress), so
    /// 20 ms keeps an idle engine well under 1% of a core; the rails of a group share the
    /// wake-up, and each adds its own poll (a few microseconds).
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
    /// Pongs in flight at most to senders that are no explicit peer, in each of two shares:
    /// senders that acknowledged a pong before, and those that never did; `None`: a quarter
    /// of `tx_slots` each. So strangers whose pongs never complete (rxd, silent addresses)
    /// leave the rest to this node's probes, its peers' pongs and senders known to be there.
    pub max_stranger_pongs_in_flight: Option<usize>,
    /// Receives kept posted (each a `max_probe_size` buffer).
    pub rx_slots: usize,
    /// Peers learned from their pings and kept in the address vector (least recently used
    /// are evicted; providers that cope with fewer get fewer: see [`learned_peer_limit`])
    /// are evicted), bounding what strangers can make this engine hold.
    pub max_learned_peers: usize,
    /// Pongs waiting for transmit resources, at most; more are dropped and counted.
    pub max_queued_pongs: usize,
    /// Pongs in flight to one destination, at most; a ping answered beyond that is dropped
    /// and counted (see `flush_outbox`). 1 for an agent; `efaprobe simulate-peers`, whose
    /// one responder answers every probe of the agent under test, raises it.
    pub max_pongs_in_flight_per_peer: u32,
    /// How rails 1 and up of a group ([`start_rails`]) are polled: at this one steady
    /// period, whatever they wait for (their pings' pongs, their peers' pings, send
    /// completions), and all in the same wake-up; a command's sends go out at once, without a
    /// poll. They carry single pings only (no pairs, no larger probes: those are rail 0's), so
    /// nothing they read is timed to the poll. Rail 0 keeps the pacing above. A poll costs
    /// about the same whether or not it reads anything (on `udp;ofi_rxd` each is several
    /// `recvmsg` calls), and with a peer probed every round or two each rail has a ping
    /// outstanding most of the time, so this period sets much of what rails 1 and up cost
    /// (the rest is each ping's own packets: BENCHMARKS.md). It bounds how late they answer
    /// a peer's ping and read a pong: the agent keeps it well below the probe timeout (see
    /// `cli/agent.rs`).
    pub rail_poll: Duration,
    /// Open the endpoint anew when, for this long, pings to peers that answered before got
    /// no send completion and no pong at all (see `health.rs`); later reopens that bring
    /// nothing back wait longer.
    pub reopen_after: Duration,
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
            max_stranger_pongs_in_flight: None,
            rx_slots: 64,
            max_learned_peers: 1024,
            max_queued_pongs: 1024,
            max_pongs_in_flight_per_peer: 1,
            reopen_after: Duration::from_secs(20),
            rail_poll: Duration::from_millis(50),
        }
    }
}

/// Why an engine could not be opened, or could not do what it was asked.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// the provider or a device is missing
    #[error(transparent)]
    Open(#[from] fabric::Error),
    /// the engine thread could not be started
    #[error("cannot start the fabric engine thread: {0}")]
    Thread(std::io::Error),
    /// the engine thread has stopped (shut down)
    #[error("fabric engine stopped")]
    Stopped,
    /// the handle was never issued by this engine, or the peer was removed
    #[error("unknown peer")]
    UnknownPeer,
    /// the provider refused a peer's address (see `fabric::Endpoint::check_address`)
    #[error("peer address: {0}")]
    Address(fabric::Error),
    /// the provider listed no interface that holds a rail's bind address
    #[error("provider {provider} has no interface at {bind} (it listed {listed:?})")]
    NoInterfaceAt {
        provider: String,
        bind: IpAddr,
        listed: Vec<String>,
    },
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

/// What an engine publishes of its endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    pub address: EndpointAddress,
    /// The provider's printable form (`fi_av_straddr`).
    pub display: String,
}

impl Published {
    fn of(endpoint: &Endpoint) -> Published {
        Published {
            address: endpoint.name().clone(),
            display: endpoint.display_address(endpoint.name()),
        }
    }
}

/// The [`PingerConfig::rail_poll`] an agent probing with `timeout` uses: a tenth of it, at
/// most 50 ms (at least 1 ms; 100 ms measured no cheaper, BENCHMARKS.md). A healthy rail's
/// ping then takes at most three of them beyond the network (waiting in the mailbox for this
/// node's next poll, the peer's poll to answer, this node's to read the pong), and a first
/// ping to a peer on rxd, whose handshake takes two more, five: well within `timeout`.
pub fn rail_poll_for(timeout: Duration) -> Duration {
    (timeout / 10).clamp(Duration::from_millis(1), Duration::from_millis(50))
}

/// The least deadline a ping on a steady rail (1 and up) gets: the five polls of
/// [`rail_poll_for`] a first ping can take, within `timeout`. A confirming probe's deadline
/// is set from rail 0's answer time, which polls promptly; rails 1 and up need this floor.
pub fn rail_deadline_floor(timeout: Duration) -> Duration {
    (rail_poll_for(timeout) * 5).min(timeout)
}

/// Learned senders an engine keeps at most on `provider`. rxd keeps state for every peer and
/// retransmits to silent ones without end; 128 silent senders wedged it (issue #15), so it
/// keeps fewer than half its transmit slots. Others keep what is configured.
pub fn learned_peer_limit(provider: &str, config: &PingerConfig) -> usize {
    if provider.contains("ofi_rxd") {
        config.max_learned_peers.min((config.tx_slots / 2).max(1))
    } else {
        config.max_learned_peers
    }
}

/// What the handles of one rail and the thread share about it.
struct Shared {
    /// The rail's index in its group: its position in the node's rail list.
    rail: usize,
    /// Polled every [`PingerConfig::rail_poll`] (rails 1 and up), its commands left in the
    /// group's mailbox.
    steady: bool,
    provider: String,
    fabric: String,
    domain: String,
    /// The published address and its printable form; a reopened endpoint may have another.
    published: watch::Sender<Published>,
    id: u64,
    counters: Counters,
}

/// What the handles send to the thread.
enum Command {
    /// For the rail of that index.
    Rail(usize, RailCommand),
    /// A steady rail's command is in the group's [`mailbox`] and no steady poll is scheduled
    /// to take it.
    Wake,
    /// Stop every rail of the group.
    Shutdown,
}

enum RailCommand {
    AddPeer(
        EndpointAddress,
        oneshot::Sender<Result<PeerHandle, EngineError>>,
    ),
    RemovePeer(PeerHandle),
    Probe {
        peer: PeerHandle,
        size: usize,
        timeout: Duration,
        /// Measure the round-trip time with a second ping (see [`FabricPinger::probe`]).
        pair: bool,
        reply: oneshot::Sender<ProbeOutcome>,
    },
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

/// What the rails of one group share: the thread that drives them, and where the steady
/// rails' commands wait for it.
struct Group {
    thread: Mutex<Option<JoinHandle<()>>>,
    thread_id: ThreadId,
    mailbox: Arc<mailbox::Mailbox>,
}

/// Handle to one rail: one endpoint on one domain, driven by its group's thread with the
/// group's other rails. Cheap to clone. The thread stops when [`shutdown`](Self::shutdown)
/// is called on any rail of the group, or when the last handle of every rail is dropped.
#[derive(Clone)]
pub struct FabricPinger {
    shared: Arc<Shared>,
    commands: mpsc::Sender<Command>,
    group: Arc<Group>,
}

impl FabricPinger {
    /// Opens an endpoint on `info`'s domain and starts a thread for it alone: a group of one
    /// rail (see [`start_rails`] for several).
    pub fn start(info: fabric::Info, config: PingerConfig) -> Result<FabricPinger, EngineError> {
        let mut one = start_rails(vec![info], config)?;
        Ok(one.remove(0))
    }

    /// Sends a command for this rail (a steady rail's is left in the mailbox); gives it back
    /// if the thread has stopped.
    fn send(&self, cmd: RailCommand) -> Result<(), RailCommand> {
        // Adding a peer goes on the channel even so: its caller waits for the handle before
        // it can send anything, and a peer's rails are added together (one wake-up for all).
        // Every command that names a handle follows the reply that issued it, whichever way
        // it goes.
        if self.shared.steady && !matches!(cmd, RailCommand::AddPeer(..)) {
            if self.group.mailbox.post(self.shared.rail, cmd)? == mailbox::Posted::Wake {
                // A stopped thread closed the mailbox first: the command was dropped, and its
                // reply says so.
                let _ = self.commands.send(Command::Wake);
            }
            return Ok(());
        }
        match self.commands.send(Command::Rail(self.shared.rail, cmd)) {
            Err(mpsc::SendError(Command::Rail(_, cmd))) => Err(cmd),
            // A failed send gives back what it was given, which was a rail's command.
            _ => Ok(()),
        }
    }

    /// This rail's index in its group (the order [`open_rails`] opened them in).
    pub fn rail(&self) -> usize {
        self.shared.rail
    }

    /// The thread that drives this rail: the same for every rail of the group.
    pub fn engine_thread(&self) -> ThreadId {
        self.group.thread_id
    }

    /// The provider as libfabric names it (`udp;ofi_rxd`, `efa`, ...).
    pub fn provider(&self) -> &str {
        &self.shared.provider
    }

    pub fn fabric_name(&self) -> &str {
        &self.shared.fabric
    }

    /// The domain (device) this rail's endpoint is on.
    pub fn domain(&self) -> &str {
        &self.shared.domain
    }

    /// This endpoint's raw fabric address, to publish to peers. It may change when the
    /// engine opens its endpoint anew (see [`address_changes`](Self::address_changes)).
    pub fn address(&self) -> EndpointAddress {
        self.shared.published.borrow().address.clone()
    }

    /// The provider's printable form of [`address`](Self::address).
    pub fn address_display(&self) -> String {
        self.shared.published.borrow().display.clone()
    }

    /// Sees every change of [`address`](Self::address), for what publishes it (the hello).
    pub fn address_changes(&self) -> watch::Receiver<Published> {
        self.shared.published.subscribe()
    }

    /// Random identity of this rail's engine instance, carried in every message.
    pub fn instance_id(&self) -> u64 {
        self.shared.id
    }

    /// Adds a peer by its raw fabric address (as the peer published it).
    pub fn add_peer(&self, address: &[u8]) -> Reply<Result<PeerHandle, EngineError>> {
        let (tx, rx) = oneshot::channel();
        if let Err(RailCommand::AddPeer(_, tx)) =
            self.send(RailCommand::AddPeer(EndpointAddress::from(address), tx))
        {
            let _ = tx.send(Err(EngineError::Stopped));
        }
        Reply(rx)
    }

    /// Forgets a peer; its address-vector entry goes once nothing is in flight to it.
    pub fn remove_peer(&self, peer: PeerHandle) {
        let _ = self.send(RailCommand::RemovePeer(peer));
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
        let cmd = RailCommand::Probe {
            peer,
            size,
            timeout,
            pair,
            reply: tx,
        };
        if let Err(RailCommand::Probe { reply, .. }) = self.send(cmd) {
            let _ = reply.send(ProbeOutcome::NotSent {
                reason: EngineError::Stopped.to_string(),
            });
        }
        Reply(rx)
    }

    pub fn stats(&self) -> PingerStats {
        self.shared.counters.snapshot()
    }

    /// Stops the thread, and with it every rail of the group, and waits for it to close
    /// their endpoints. In-flight probes answer `NotSent`. Every handle of every rail of the
    /// group then sees a stopped engine; calling it again, on any of them, does nothing.
    pub fn shutdown(&self) {
        let _ = self.commands.send(Command::Shutdown);
        let thread = (self.group.thread)
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(t) = thread {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn rails_above_0_poll_well_within_the_probe_timeout() {
        let ms = Duration::from_millis;
        assert_eq!(rail_poll_for(ms(1000)), ms(50));
        assert_eq!(rail_poll_for(ms(500)), ms(50));
        assert_eq!(rail_poll_for(ms(200)), ms(20));
        assert_eq!(rail_poll_for(ms(5)), ms(1));
        // A first ping's five polls fit in the timeout, and a confirmation waits for them.
        for timeout in [ms(5), ms(200), ms(500), ms(1000), ms(30_000)] {
            assert!(
                rail_poll_for(timeout) * 5 <= timeout.max(ms(5)),
                "{timeout:?}"
            );
            assert_eq!(
                rail_deadline_floor(timeout),
                (rail_poll_for(timeout) * 5).min(timeout)
            );
        }
        assert_eq!(rail_deadline_floor(ms(1000)), ms(250));
    }

    use super::*;

    #[test]
    fn rxd_keeps_fewer_learned_senders_than_its_transmit_slots() {
        let config = PingerConfig::new("udp;ofi_rxd");
        assert_eq!(learned_peer_limit("udp;ofi_rxd", &config), 64);
        assert!(learned_peer_limit("udp;ofi_rxd", &config) < config.tx_slots);
        assert_eq!(
            learned_peer_limit("tcp;ofi_rxm", &config),
            config.max_learned_peers
        );
        assert_eq!(learned_peer_limit("efa", &config), config.max_learned_peers);
        let mut few = config.clone();
        few.max_learned_peers = 3;
        assert_eq!(learned_peer_limit("udp;ofi_rxd", &few), 3);
    }

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
}

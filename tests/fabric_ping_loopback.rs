//! Fabric ping over loopback on the real providers: the `fabric-ping` command end to end, and
//! the engine against hostile input and peer churn.

// Only what this binary uses (the rest of support is tests/system's), so none of it is dead.
#[path = "support"]
mod support {
    pub mod machine;
    pub mod process;
}

use std::process::Command;
use std::time::{Duration, Instant};

use efaprobe::fabric_ping::{self, FabricPinger, PeerHandle, PingerConfig, ProbeOutcome};
use fabric::{Domain, Endpoint, EndpointConfig, InfoList, Query};
use support::machine::{alone_in_a_child, busy};
use support::process::{wait_until, Process};

const BIN: &str = env!("CARGO_BIN_EXE_efaprobe");

/// A responder on loopback, serving once its exchange port answers.
fn start_responder(provider: &str, port: u16) -> Process {
    let responder = Process::spawn(
        Command::new(BIN)
            .args(["fabric-ping", "--provider", provider, "--bind", "127.0.0.1"])
            .args(["--port", &port.to_string()]),
    );
    wait_for_port(port);
    responder
}

fn wait_for_port(port: u16) {
    wait_until(
        &format!("responder on {port} listens"),
        Duration::from_secs(10),
        || {
            std::net::TcpStream::connect(("127.0.0.1", port))
                .map(drop)
                .map_err(|e| e.to_string())
        },
    );
}

fn prober(provider: &str, port: u16, extra: &[&str]) -> (i32, serde_json::Value, Duration) {
    let started = Instant::now();
    let out = Command::new(BIN)
        .args(["fabric-ping", "--provider", provider, "--bind", "127.0.0.1"])
        .args(["--peer", &format!("127.0.0.1:{port}"), "--json"])
        .args(extra)
        .output()
        .expect("run prober");
    let json = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "prober output is not JSON ({e}): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap_or(-1), json, started.elapsed())
}

#[test]
fn fabric_ping_succeeds_on_each_provider() {
    let _busy = busy();
    for (provider, port) in [("tcp", 27_701), ("udp;ofi_rxd", 27_702), ("shm", 27_703)] {
        let _responder = start_responder(provider, port);
        let (code, report, _) = prober(provider, port, &["--count", "20", "--interval", "0"]);
        assert_eq!(code, 0, "{provider}: {report}");
        assert_eq!(report["verdict"], "ok", "{provider}: {report}");
        assert_eq!(report["sent"], 20);
        assert_eq!(report["received"], 20);
        assert!(report["provider"]
            .as_str()
            .unwrap()
            .contains(provider.split(';').next().unwrap()));
        assert!(report["rtt_p50_us"].as_f64().unwrap() > 0.0);
        assert!(report["rtt_p99_us"].as_f64().unwrap() >= report["rtt_p50_us"].as_f64().unwrap());
        assert!(report["error"].is_null());
    }
}

#[test]
fn nothing_listening_is_unreachable_with_exit_2() {
    let _busy = busy();
    let (code, report, took) = prober("udp;ofi_rxd", 27_704, &["--timeout", "1s"]);
    assert_eq!(code, 2, "{report}");
    assert_eq!(report["verdict"], "unreachable");
    assert_eq!(report["ip_path_ok"], false);
    assert!(report["error"].as_str().unwrap().contains("IP path failed"));
    assert!(took < Duration::from_secs(5));
}

#[test]
fn bad_arguments_exit_64() {
    let _busy = busy();
    let out = Command::new(BIN)
        .args(["fabric-ping", "--bind", "not-an-ip"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let out = Command::new(BIN)
        .args(["fabric-ping", "--bind", "127.0.0.1", "--interval", "soon"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("interval"));
}

#[test]
fn missing_provider_exits_3_with_the_reason() {
    let _busy = busy();
    let out = Command::new(BIN)
        .args(["fabric-ping", "--provider", "efa", "--bind", "127.0.0.1"])
        .args(["--peer", "127.0.0.1:27705"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("efa"));
}

fn engine(max_learned: usize) -> FabricPinger {
    engine_on("udp;ofi_rxd", max_learned)
}

fn engine_on(provider: &str, max_learned: usize) -> FabricPinger {
    let mut config = PingerConfig::new(provider);
    config.bind = Some("127.0.0.1".parse().unwrap());
    config.max_learned_peers = max_learned;
    fabric_ping::open_all(&config).unwrap().remove(0)
}

/// `responder` as a peer of `prober`.
fn add(prober: &FabricPinger, responder: &FabricPinger) -> PeerHandle {
    prober
        .add_peer(&responder.address())
        .wait()
        .unwrap()
        .unwrap()
}

/// A bare endpoint on the same provider, to send what no efaprobe would.
fn raw_endpoint() -> Endpoint {
    raw_endpoint_on("udp;ofi_rxd")
}

fn raw_endpoint_on(provider: &str) -> Endpoint {
    let list = InfoList::get(&Query::provider(provider).bind(Some("127.0.0.1"))).unwrap();
    let domain = Domain::open(list.iter().next().unwrap().to_owned().unwrap()).unwrap();
    Endpoint::open(&domain, EndpointConfig::default()).unwrap()
}

/// Polls `ep` (its progress is manual) until `done` or the deadline.
fn drive(ep: &mut Endpoint, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    let (mut ev, mut rx) = (Vec::new(), Vec::new());
    while Instant::now() < deadline {
        ev.clear();
        rx.clear();
        ep.poll(&mut ev, &mut rx).unwrap();
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    false
}

fn send(ep: &mut Endpoint, to: fabric::FabricAddr, bytes: &[u8]) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match ep.send(to, bytes) {
            Ok(_) => return,
            Err(e)
                if (e.is_again() || matches!(e, fabric::Error::TxBusy(_)))
                    && Instant::now() < deadline =>
            {
                ep.poll(&mut Vec::new(), &mut Vec::new()).unwrap();
            }
            Err(e) => panic!("raw send: {e}"),
        }
    }
}

#[test]
fn malformed_and_hostile_messages_are_counted_and_dropped() {
    let _busy = busy();
    use fabric_ping::wire::{Kind, Message, MAGIC};
    let responder = engine(16);
    let mut attacker = raw_endpoint();
    let to = attacker.insert_peer(&responder.address()).unwrap();

    let mut good_ping = Vec::new();
    let own = attacker.name().to_vec();
    Message {
        kind: Kind::Ping,
        seq: 1,
        sender_id: 9,
        token: 0,
        dwell_ns: 0,
        unread_ns: 0,
        flags: 0,
        address: &own,
    }
    .encode_into(64, &mut good_ping);

    let mut wrong_version = good_ping.clone();
    wrong_version[4] = 200;
    let mut wrong_kind = good_ping.clone();
    wrong_kind[5] = 77;
    let mut huge_addr_len = good_ping.clone();
    huge_addr_len[6..8].copy_from_slice(&u16::MAX.to_be_bytes());
    // A well-formed header whose address is one byte short for this provider.
    let mut short_addr = Vec::new();
    Message {
        kind: Kind::Ping,
        seq: 2,
        sender_id: 9,
        token: 0,
        dwell_ns: 0,
        unread_ns: 0,
        flags: 0,
        address: &own[..own.len() - 1],
    }
    .encode_into(64, &mut short_addr);
    let hostile: Vec<(&str, Vec<u8>)> = vec![
        ("bad_magic", b"GET / HTTP/1.1\r\n\r\n".repeat(4)),
        ("truncated", good_ping[..20].to_vec()),
        ("truncated", MAGIC.to_be_bytes().to_vec()),
        ("bad_version", wrong_version),
        ("bad_kind", wrong_kind),
        ("bad_address", huge_addr_len),
        ("bad_address", short_addr),
        ("truncated", vec![]),
    ];
    for (_, bytes) in &hostile {
        send(&mut attacker, to, bytes);
    }
    // A pong nobody asked for is a late pong, not a crash.
    let mut stray_pong = Vec::new();
    Message {
        kind: Kind::Pong,
        seq: 999_999,
        sender_id: 9,
        token: 0,
        dwell_ns: u64::MAX,
        unread_ns: 0,
        flags: 0,
        address: &[],
    }
    .encode_into(64, &mut stray_pong);
    send(&mut attacker, to, &stray_pong);

    let expected = hostile.len() as u64;
    assert!(
        drive(&mut attacker, || responder.stats().malformed_total()
            >= expected),
        "malformed not all counted: {:?}",
        responder.stats()
    );
    let stats = responder.stats();
    for (label, _) in &hostile {
        let want = hostile.iter().filter(|(l, _)| l == label).count() as u64;
        assert_eq!(stats.malformed[label], want, "{label}: {stats:?}");
    }
    assert!(drive(&mut attacker, || responder.stats().late_pongs == 1));
    assert_eq!(responder.stats().pings_answered, 0);

    // Still serving: a real prober gets its answers.
    let prober = engine(16);
    let peer = add(&prober, &responder);
    let outcome = prober
        .probe(peer, 64, Duration::from_secs(3))
        .wait()
        .unwrap();
    assert!(matches!(outcome, ProbeOutcome::Pong { .. }), "{outcome:?}");
    prober.shutdown();
    responder.shutdown();
}

#[test]
fn learned_senders_are_bounded() {
    let _busy = busy();
    use fabric_ping::wire::{Kind, Message};
    let responder = engine(3);
    let mut senders: Vec<Endpoint> = (0..6).map(|_| raw_endpoint()).collect();
    for (i, ep) in senders.iter_mut().enumerate() {
        let to = ep.insert_peer(&responder.address()).unwrap();
        let own = ep.name().to_vec();
        let mut ping = Vec::new();
        Message {
            kind: Kind::Ping,
            seq: i as u64,
            sender_id: i as u64,
            token: 0,
            dwell_ns: 0,
            unread_ns: 0,
            flags: 0,
            address: &own,
        }
        .encode_into(64, &mut ping);
        send(ep, to, &ping);
        let want = i as u64 + 1;
        assert!(drive(ep, || responder.stats().pings_answered >= want));
    }
    // An evicted sender's entry stays while its pong is unacknowledged (removing an address
    // under an in-flight send is not safe), so keep every sender progressing.
    let deadline = Instant::now() + Duration::from_secs(10);
    while responder.stats().av_entries > 3 && Instant::now() < deadline {
        for ep in senders.iter_mut() {
            ep.poll(&mut Vec::new(), &mut Vec::new()).unwrap();
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    let stats = responder.stats();
    assert_eq!(stats.pings_answered, 6);
    assert!(stats.av_entries <= 3, "{stats:?}");
    assert_eq!(stats.learned_peers_evicted, 3, "{stats:?}");
    responder.shutdown();
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap()
}

#[test]
fn thousand_peers_added_and_removed_return_to_baseline() {
    if !alone_in_a_child("thousand_peers_added_and_removed_return_to_baseline") {
        return;
    }
    let pinger = engine(16);
    // Real addresses of this provider that nobody listens on: nothing is ever sent to them.
    let template = pinger.address().to_vec();
    let address = |i: u16| {
        let mut a = template.clone();
        // sockaddr_in: family(2) port(2) addr(4) ...; vary the port.
        a[2..4].copy_from_slice(&(20_000 + i).to_be_bytes());
        a
    };
    let cycle = |pinger: &FabricPinger| {
        let handles: Vec<_> = (0..1000)
            .map(|i| pinger.add_peer(&address(i)).wait().unwrap().unwrap())
            .collect();
        assert_eq!(pinger.stats().av_entries, 1000);
        for h in handles {
            pinger.remove_peer(h);
        }
        // Removal is asynchronous; a probe of a removed handle is the barrier.
        let barrier = pinger.probe(PeerHandle::never_issued(), 64, Duration::ZERO);
        assert!(matches!(barrier.wait(), Some(ProbeOutcome::NotSent { .. })));
        assert_eq!(pinger.stats().av_entries, 0);
    };
    cycle(&pinger); // warm-up: allocator pools and maps reach their working size
    let baseline = rss_kib();
    for _ in 0..5 {
        cycle(&pinger);
    }
    let grown = rss_kib().saturating_sub(baseline);
    assert!(
        grown < 1024,
        "RSS grew by {grown} KiB over 5000 peer insertions"
    );
    pinger.shutdown();
}

#[test]
fn a_dead_peer_does_not_hold_up_a_live_one() {
    let _busy = busy();
    // tcp;ofi_rxm keeps answering FI_EAGAIN to sends towards a peer that refuses its
    // connection; the engine must go on serving the others meanwhile.
    let open = || {
        let mut config = PingerConfig::new("tcp");
        config.bind = Some("127.0.0.1".parse().unwrap());
        fabric_ping::open_all(&config).unwrap().remove(0)
    };
    let prober = open();
    let live = open();
    let mut dead_addr = prober.address().to_vec();
    dead_addr[2..4].copy_from_slice(&1u16.to_be_bytes()); // port 1: nothing listens
    let dead = prober.add_peer(&dead_addr).wait().unwrap().unwrap();
    let alive = prober.add_peer(&live.address()).wait().unwrap().unwrap();

    let to_dead = prober.probe(dead, 64, Duration::from_secs(2));
    let to_live = prober.probe(alive, 64, Duration::from_secs(2));
    let live_outcome = to_live.wait().unwrap();
    assert!(
        matches!(live_outcome, ProbeOutcome::Pong { .. }),
        "{live_outcome:?}"
    );
    assert_eq!(to_dead.wait().unwrap(), ProbeOutcome::Timeout);
    prober.shutdown();
    live.shutdown();
}

/// A responder that does not stay awake for a pair's second ping (as one that ignores the
/// flag): the ping waits unread until its next poll, the pong says so, and the pair reports
/// `warm: false` rather than that wait as the path's RTT.
#[test]
fn a_pair_that_found_the_responder_asleep_is_not_a_measurement() {
    if !alone_in_a_child("a_pair_that_found_the_responder_asleep_is_not_a_measurement") {
        return;
    }
    let mut config = PingerConfig::new("udp;ofi_rxd");
    config.bind = Some("127.0.0.1".parse().unwrap());
    config.warm_spin = Duration::ZERO;
    let responder = fabric_ping::open_all(&config).unwrap().remove(0);
    let prober = engine(16);
    let peer = add(&prober, &responder);
    let mut outcomes = Vec::new();
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(40));
        match prober
            .probe(peer, 64, Duration::from_secs(1))
            .wait()
            .unwrap()
        {
            ProbeOutcome::Pong { rtt, warm, .. } => outcomes.push((rtt, warm)),
            other => panic!("pair: {other:?}"),
        }
    }
    let measured = outcomes.iter().filter(|o| o.1).count();
    assert!(
        measured <= 5,
        "{measured} of 20 pairs called measured: {outcomes:?}"
    );
    assert_eq!(prober.stats().pairs_unsettled, 20 - measured as u64);
}

/// A probe's second ping finds an idle responder awake (its first says one follows), so the
/// RTT it reports is the path's, not the responder's polling period; a pair where either side
/// let a message wait unread (asleep, or not scheduled) says so (`warm: false`) instead of
/// reporting that wait as RTT; a single ping (`reach`) proves the path and says it measured
/// nothing (`warm: false`).
#[test]
fn pairs_measure_the_path_and_single_pings_prove_it() {
    // Timing: the other tests' engines spinning on two cores would delay the pongs.
    if !alone_in_a_child("pairs_measure_the_path_and_single_pings_prove_it") {
        return;
    }
    let responder = engine(16);
    let prober = engine(16);
    let peer = add(&prober, &responder);
    let timeout = Duration::from_secs(1);
    // Asleep, the responder would see a second ping up to 20 ms late. On a quiet machine
    // nearly every pair is measured, in tens of microseconds here; a machine busy elsewhere
    // deschedules either side now and then (those pairs say `warm: false`), so a batch of 30
    // pairs may be tried up to 3 times. A responder that ignores the flag fails every batch.
    let mut batches = Vec::new();
    let mut pairs = 0;
    let mut unsettled = 0;
    let measured = |batch: &[(Duration, bool)]| {
        let mut warm: Vec<Duration> = batch.iter().filter(|o| o.1).map(|o| o.0).collect();
        warm.sort();
        warm.len() >= 20 && warm[warm.len() / 2] < Duration::from_millis(1)
    };
    while batches.len() < 3 {
        let mut batch = Vec::new();
        for _ in 0..30 {
            // Longer than the responder's idle poll: it is asleep when each probe starts.
            std::thread::sleep(Duration::from_millis(40));
            pairs += 1;
            match prober.probe(peer, 64, timeout).wait().unwrap() {
                ProbeOutcome::Pong { rtt, warm, .. } => {
                    unsettled += u64::from(!warm);
                    batch.push((rtt, warm));
                }
                other => panic!("pair: {other:?}"),
            }
        }
        let done = measured(&batch);
        batches.push(batch);
        if done {
            break;
        }
    }
    assert!(
        measured(batches.last().unwrap()),
        "no batch of 30 pairs had 20 measured with a median under 1 ms: {batches:?}"
    );
    assert_eq!(prober.stats().pairs_unsettled, unsettled);
    for _ in 0..5 {
        match prober.reach(peer, 64, timeout).wait().unwrap() {
            ProbeOutcome::Pong {
                rtt,
                cold_rtt,
                warm: false,
                ..
            } => assert_eq!(rtt, cold_rtt),
            other => panic!("single: {other:?}"),
        }
    }
    let stats = prober.stats();
    assert_eq!(stats.pings_sent, 2 * pairs + 5);
    assert_eq!(stats.pongs_received, 2 * pairs + 5);
    assert_eq!(responder.stats().pongs_dropped_backlog, 0);
}

/// A pong as a hostile endpoint writes it: `seq` and `token` are what it claims to answer.
fn pong_bytes(seq: u64, token: u64) -> Vec<u8> {
    use fabric_ping::wire::{Kind, Message};
    let mut bytes = Vec::new();
    Message {
        kind: Kind::Pong,
        seq,
        sender_id: 66,
        token,
        dwell_ns: 0,
        unread_ns: 0,
        flags: 0,
        address: &[],
    }
    .encode_into(64, &mut bytes);
    bytes
}

/// The pings an endpoint received since the last call: (sender's address, seq, token).
fn pings_received(ep: &mut Endpoint) -> Vec<(Vec<u8>, u64, u64)> {
    use fabric_ping::wire::{Kind, Message};
    let (mut events, mut data) = (Vec::new(), Vec::new());
    ep.poll(&mut events, &mut data).unwrap();
    events
        .iter()
        .filter_map(|e| match e {
            fabric::Event::Received { data: r, .. } => Message::decode(&data[r.clone()]).ok(),
            _ => None,
        })
        .filter(|m| m.kind == Kind::Ping)
        .map(|m| (m.address.to_vec(), m.seq, m.token))
        .collect()
}

/// Issue #15 item 3: a peer that reads the pings it receives and forges pongs for the next
/// 40 sequence numbers (with the token it saw, and with guesses) cannot make a silent peer
/// reachable; nor, where the provider names senders (tcp), can a pong that carries the
/// silent peer's real token (read off its pings, as an eavesdropper could) but comes from
/// another address.
#[test]
fn forged_pongs_do_not_make_a_silent_peer_reachable() {
    let _busy = busy();
    for provider in ["udp;ofi_rxd", "tcp"] {
        let prober = engine_on(provider, 16);
        let mut forger = raw_endpoint_on(provider);
        let mut silent = raw_endpoint_on(provider);
        let forger_peer = prober.add_peer(forger.name()).wait().unwrap().unwrap();
        let silent_peer = prober.add_peer(silent.name()).wait().unwrap().unwrap();
        let relays_from_another_address = provider == "tcp";

        // Each round probes both at once, so the forger's pongs for the next sequence
        // numbers arrive while the silent peer's probe is in flight.
        let rounds = 8;
        let probing = {
            let prober = prober.clone();
            std::thread::spawn(move || {
                (0..rounds)
                    .map(|_| {
                        let to_forger = prober.probe(forger_peer, 64, Duration::from_millis(400));
                        let to_silent = prober.probe(silent_peer, 64, Duration::from_millis(400));
                        (to_forger.wait().unwrap(), to_silent.wait().unwrap())
                    })
                    .collect::<Vec<_>>()
            })
        };
        let mut back_to_prober = None;
        let deadline = Instant::now() + Duration::from_secs(30);
        while !probing.is_finished() && Instant::now() < deadline {
            for (from, seq, token) in pings_received(&mut forger) {
                let to = *back_to_prober.get_or_insert_with(|| forger.insert_peer(&from).unwrap());
                // Its own ping answered honestly, then pongs for the next 40 sequence
                // numbers with the token it saw and with a guess each.
                send(&mut forger, to, &pong_bytes(seq, token));
                for next in seq + 1..=seq + 40 {
                    send(&mut forger, to, &pong_bytes(next, token));
                    send(&mut forger, to, &pong_bytes(next, next));
                }
            }
            for (_, seq, token) in pings_received(&mut silent) {
                if let (true, Some(to)) = (relays_from_another_address, back_to_prober) {
                    send(&mut forger, to, &pong_bytes(seq, token));
                }
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        assert!(probing.is_finished(), "{provider}: probes did not finish");
        let outcomes = probing.join().unwrap();
        for (to_forger, to_silent) in &outcomes {
            assert!(
                matches!(to_forger, ProbeOutcome::Pong { .. }),
                "{provider}: the forger answers its own pings: {to_forger:?}"
            );
            assert_eq!(
                *to_silent,
                ProbeOutcome::Timeout,
                "{provider}: the silent peer was made to look reachable"
            );
        }
        let stats = prober.stats();
        assert!(stats.malformed["bad_token"] > 0, "{provider}: {stats:?}");
        if relays_from_another_address {
            assert!(stats.malformed["wrong_sender"] > 0, "{provider}: {stats:?}");
        }
        prober.shutdown();
    }
}

/// A ping from `attacker` that claims to come from `sender`.
fn ping_claiming(attacker: &mut Endpoint, to: fabric::FabricAddr, sender: &[u8], seq: u64) {
    use fabric_ping::wire::{Kind, Message};
    let mut ping = Vec::new();
    Message {
        kind: Kind::Ping,
        seq,
        sender_id: 77,
        token: seq,
        dwell_ns: 0,
        unread_ns: 0,
        flags: 0,
        address: sender,
    }
    .encode_into(64, &mut ping);
    send(attacker, to, &ping);
}

/// Both directions between an agent's engine and a real peer answer, ten times over.
fn still_answering_and_probing(agent: &FabricPinger, peer: &FabricPinger, what: &str) {
    let agent_to_peer = add(agent, peer);
    let peer_to_agent = add(peer, agent);
    for _ in 0..10 {
        let out = agent
            .probe(agent_to_peer, 64, Duration::from_secs(2))
            .wait()
            .unwrap();
        assert!(
            matches!(out, ProbeOutcome::Pong { .. }),
            "{what}: agent's probe: {out:?}"
        );
        let back = peer
            .probe(peer_to_agent, 64, Duration::from_secs(2))
            .wait()
            .unwrap();
        assert!(
            matches!(back, ProbeOutcome::Pong { .. }),
            "{what}: peer's probe: {back:?}"
        );
    }
    agent.remove_peer(agent_to_peer);
    peer.remove_peer(peer_to_agent);
}

/// Issue #15 item 4: pings whose sender address is all zeros, of family 0xffff or of the
/// unspecified IP, and then pings from 200 distinct senders that never answer (real
/// addresses of this provider where nobody listens: rxd retransmits a pong to them for ever),
/// leave the engine answering its real peer and probing it.
#[test]
fn crafted_sender_addresses_do_not_wedge_the_engine() {
    let _busy = busy();
    let agent = fabric_ping::open_all(&{
        let mut config = PingerConfig::new("udp;ofi_rxd");
        config.bind = Some("127.0.0.1".parse().unwrap());
        config
    })
    .unwrap()
    .remove(0);
    let peer = engine(16);
    still_answering_and_probing(&agent, &peer, "before");

    let mut attacker = raw_endpoint();
    let to = attacker.insert_peer(&agent.address()).unwrap();
    let template = agent.address().to_vec();
    let zeros = vec![0u8; template.len()];
    let mut family_ffff = template.clone();
    family_ffff[..2].copy_from_slice(&[0xff, 0xff]);
    let mut unspecified = template.clone();
    unspecified[4..8].copy_from_slice(&[0, 0, 0, 0]); // sockaddr_in: family, port, address
    let mut port_zero = template.clone();
    port_zero[2..4].copy_from_slice(&[0, 0]);
    let crafted = [zeros, family_ffff, unspecified, port_zero];
    let answered_before = agent.stats().pings_answered;
    for (seq, sender) in crafted.iter().enumerate() {
        ping_claiming(&mut attacker, to, sender, seq as u64);
    }
    assert!(
        drive(&mut attacker, || agent.stats().malformed["bad_address"]
            >= crafted.len() as u64),
        "crafted addresses not refused: {:?}",
        agent.stats()
    );
    assert_eq!(agent.stats().pings_answered, answered_before);
    still_answering_and_probing(&agent, &peer, "after crafted addresses");

    let dead = |i: u16| {
        let mut a = template.clone();
        a[2..4].copy_from_slice(&(21_000 + i).to_be_bytes());
        a
    };
    for i in 0..200 {
        ping_claiming(&mut attacker, to, &dead(i), 100 + u64::from(i));
    }
    let heard = |s: &fabric_ping::PingerStats| {
        s.pings_answered + s.pongs_dropped_queue_full + s.pongs_dropped_backlog
    };
    assert!(
        drive(&mut attacker, || heard(&agent.stats()) >= 200),
        "dead senders' pings not all handled: {:?}",
        agent.stats()
    );
    still_answering_and_probing(&agent, &peer, "after 200 dead senders");
    let stats = agent.stats();
    assert!(stats.learned_peers_evicted > 0, "{stats:?}");
    // The bounds held it; the health watch (20 s) had nothing to do.
    assert_eq!(stats.endpoint_reopens, 0, "{stats:?}");
    agent.shutdown();
    peer.shutdown();
}

/// Issue #15 item 4, the health watch: an engine whose every transmit slot is held by sends
/// rxd never completes (pings to peers whose nodes went away) cannot send to the peer that
/// answers; it notices (no completion, no pong, for `reopen_after`), opens its endpoint
/// anew, publishes its new address, counts it, and probes and answers its real peer again.
#[test]
fn an_engine_whose_sends_stopped_completing_reopens_its_endpoint() {
    let _busy = busy();
    let mut config = PingerConfig::new("udp;ofi_rxd");
    config.bind = Some("127.0.0.1".parse().unwrap());
    config.tx_slots = 8;
    config.reopen_after = Duration::from_millis(500);
    let agent = fabric_ping::open_all(&config).unwrap().remove(0);
    let published = agent.address();
    let peer = engine(16);
    let to_peer = add(&agent, &peer);
    let out = agent
        .probe(to_peer, 64, Duration::from_secs(2))
        .wait()
        .unwrap();
    assert!(matches!(out, ProbeOutcome::Pong { .. }), "{out:?}");

    // Eight peers that went away: nobody listens at their addresses.
    let gone: Vec<PeerHandle> = (0..8u16)
        .map(|i| {
            let mut a = published.to_vec();
            a[2..4].copy_from_slice(&(21_300 + i).to_be_bytes());
            agent.add_peer(&a).wait().unwrap().unwrap()
        })
        .collect();
    for h in &gone {
        let out = agent
            .reach(*h, 64, Duration::from_millis(100))
            .wait()
            .unwrap();
        assert_eq!(out, ProbeOutcome::Timeout);
    }
    // Every slot is held now; the live peer is probed until the engine has reopened.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut outcomes = Vec::new();
    while agent.stats().endpoint_reopens == 0 && Instant::now() < deadline {
        outcomes.push(
            agent
                .reach(to_peer, 64, Duration::from_millis(200))
                .wait()
                .unwrap(),
        );
    }
    assert_eq!(agent.stats().endpoint_reopens, 1, "{:?}", agent.stats());
    assert!(
        outcomes.contains(&ProbeOutcome::Timeout),
        "the slots were never exhausted: {outcomes:?}"
    );
    assert_ne!(agent.address(), published, "the new address is published");
    for h in gone {
        agent.remove_peer(h);
    }
    still_answering_and_probing(&agent, &peer, "after reopening");
    agent.shutdown();
    peer.shutdown();
}

/// Issue #15 item 10: what the engine drops and evicts reaches `/metrics`' encoding, read
/// from the engine at scrape time.
#[test]
fn malformed_messages_and_evictions_are_exported() {
    let _busy = busy();
    use efaprobe::metrics::Metrics;
    use efaprobe::state::FabricStatus;
    let responder = engine(2);
    let state = efaprobe::state::AgentState::new(
        "test",
        FabricStatus {
            provider: "udp;ofi_rxd".into(),
            available: true,
            error: None,
            devices: vec![],
        },
    );
    let metrics = Metrics::new("test", std::sync::Arc::new(state));
    metrics.set_fabric_engines(std::slice::from_ref(&responder));
    let line = |text: &str, series: &str| {
        text.lines()
            .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
            .map(|l| l[series.len() + 1..].to_owned())
    };
    let before = metrics.encode();
    assert_eq!(
        line(&before, "efa_fabric_malformed_total{reason=\"bad_magic\"}").as_deref(),
        Some("0"),
        "{before}"
    );

    let mut attacker = raw_endpoint();
    let to = attacker.insert_peer(&responder.address()).unwrap();
    send(
        &mut attacker,
        to,
        b"not an efaprobe message at all, but long enough to have a header",
    );
    send(&mut attacker, to, b"short");
    // Three senders through a table of two: one eviction.
    let template = attacker.name().to_vec();
    for i in 0..3u16 {
        let mut sender = template.clone();
        sender[2..4].copy_from_slice(&(21_500 + i).to_be_bytes());
        ping_claiming(&mut attacker, to, &sender, u64::from(i));
    }
    assert!(drive(&mut attacker, || {
        let s = responder.stats();
        s.malformed_total() >= 2 && s.learned_peers_evicted >= 1
    }));
    let after = metrics.encode();
    let value = |series: &str| line(&after, series).unwrap_or_else(|| panic!("{series}: {after}"));
    assert_eq!(
        value("efa_fabric_malformed_total{reason=\"bad_magic\"}"),
        "1"
    );
    assert_eq!(
        value("efa_fabric_malformed_total{reason=\"truncated\"}"),
        "1"
    );
    assert_eq!(value("efa_fabric_learned_peers_evicted_total"), "1");
    assert_eq!(value("efa_fabric_endpoint_reopens_total"), "0");
    responder.shutdown();
}

/// Names of this process's threads whose name starts with `fabric-` (the engine threads).
fn fabric_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .filter(|comm| comm.starts_with("fabric-"))
        .count()
}

/// Waits (boundedly) until this process has `n` threads named `fabric-*`, and for another
/// half second to see that no more come.
fn threads_are(n: usize, what: &str) {
    wait_until(what, Duration::from_secs(5), || match fabric_threads() {
        count if count == n => Ok(()),
        count => Err(format!("{count} fabric-* threads, not {n}")),
    });
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(fabric_threads(), n, "{what}");
}

/// `n` rails on loopback, one thread for them all.
fn rails_on(provider: &str, n: usize, tune: impl FnOnce(&mut PingerConfig)) -> Vec<FabricPinger> {
    let mut config = PingerConfig::new(provider);
    tune(&mut config);
    let binds = vec!["127.0.0.1".parse().unwrap(); n];
    let rails = fabric_ping::open_rails(&config, &binds).unwrap();
    assert_eq!(rails.len(), n, "{provider}: one rail per bind address");
    rails
}

fn answers(prober: &FabricPinger, peer: PeerHandle, what: &str) {
    let out = prober
        .probe(peer, 64, Duration::from_secs(2))
        .wait()
        .unwrap();
    assert!(matches!(out, ProbeOutcome::Pong { .. }), "{what}: {out:?}");
}

/// Issue #12 item 1: two nodes of two rails each (the same address twice is two endpoints):
/// rail i probes rail i of the other node and both directions answer, on `udp;ofi_rxd` and
/// `tcp`; each node's rails are driven by one thread (two `fabric-*` threads in all, counted
/// in a process of its own), and a rail's pings reach only its own counterpart.
#[test]
fn two_nodes_of_two_rails_probe_rail_to_rail_each_on_one_thread() {
    if !alone_in_a_child("two_nodes_of_two_rails_probe_rail_to_rail_each_on_one_thread") {
        return;
    }
    for provider in ["udp;ofi_rxd", "tcp"] {
        let threads_before = fabric_threads();
        let a = rails_on(provider, 2, |_| {});
        let b = rails_on(provider, 2, |_| {});
        // A thread names itself once it runs: wait for that, not for more threads.
        threads_are(
            threads_before + 2,
            &format!("{provider}: one per node, not per rail"),
        );
        for node in [&a, &b] {
            assert_eq!(node[0].engine_thread(), node[1].engine_thread());
            assert_eq!((node[0].rail(), node[1].rail()), (0, 1));
            assert_ne!(
                node[0].address(),
                node[1].address(),
                "{provider}: two endpoints"
            );
        }
        assert_ne!(a[0].engine_thread(), b[0].engine_thread());
        for i in 0..2 {
            let a_to_b = add(&a[i], &b[i]);
            let b_to_a = add(&b[i], &a[i]);
            for _ in 0..5 {
                answers(&a[i], a_to_b, &format!("{provider}: rail {i}, a to b"));
                answers(&b[i], b_to_a, &format!("{provider}: rail {i}, b to a"));
            }
            if i == 0 {
                // Rail 1 has not been probed yet: nothing reached it.
                for rail in [&a[1], &b[1]] {
                    assert_eq!(rail.stats().pings_answered, 0, "{provider}: rail 1");
                }
            }
        }
        for rail in a.iter().chain(&b) {
            let stats = rail.stats();
            assert!(stats.pongs_received >= 10, "{provider}: {stats:?}");
            assert_eq!(
                stats.pings_answered, stats.pongs_received,
                "{provider}: {stats:?}"
            );
        }
        a[1].shutdown();
        b[0].shutdown();
        threads_are(
            threads_before,
            &format!("{provider}: shutdown stops the group"),
        );
        // Every rail of a stopped group says so.
        let out = a[0].probe(PeerHandle::never_issued(), 64, Duration::from_secs(1));
        assert!(
            matches!(out.wait(), Some(ProbeOutcome::NotSent { .. })),
            "{provider}: rail 0 of a stopped group"
        );
        assert!(matches!(
            b[1].add_peer(&a[0].address()).wait(),
            Some(Err(fabric_ping::EngineError::Stopped))
        ));
    }
}

/// Issue #12 item 1: the peer of rail 1 stops; rail 1's probes time out while rail 0, on the
/// same thread, keeps answering and being answered.
#[test]
fn a_rail_whose_peer_stopped_times_out_while_the_other_answers() {
    let _busy = busy();
    let node = rails_on("udp;ofi_rxd", 2, |_| {});
    let peers = [engine(16), engine(16)];
    let to_peer: Vec<PeerHandle> = (0..2).map(|i| add(&node[i], &peers[i])).collect();
    let from_peer0 = add(&peers[0], &node[0]);
    answers(&node[0], to_peer[0], "rail 0");
    answers(&node[1], to_peer[1], "rail 1");
    peers[1].shutdown();
    for round in 0..3 {
        let out = node[1]
            .probe(to_peer[1], 64, Duration::from_millis(300))
            .wait()
            .unwrap();
        assert_eq!(out, ProbeOutcome::Timeout, "rail 1, round {round}");
        answers(&node[0], to_peer[0], &format!("rail 0, round {round}"));
        answers(
            &peers[0],
            from_peer0,
            &format!("rail 0's peer, round {round}"),
        );
    }
    let (rail0, rail1) = (node[0].stats(), node[1].stats());
    assert_eq!(rail0.probe_timeouts, 0, "{rail0:?}");
    assert_eq!(rail1.probe_timeouts, 3, "{rail1:?}");
    node[0].shutdown();
    peers[0].shutdown();
}

/// Issue #12 item 1, health per rail: rail 1's peer goes away and rail 1's sends stop
/// completing (rxd retransmits to a silent address for ever), so rail 1 opens its endpoint
/// anew at a new address; rail 0, on the same thread, answers throughout, keeps its address
/// and is not reopened; rail 1 then probes a live peer again.
#[test]
fn a_reopen_of_one_rail_leaves_the_other_alone() {
    let _busy = busy();
    let node = rails_on("udp;ofi_rxd", 2, |config| {
        config.reopen_after = Duration::from_millis(500);
    });
    let published = [node[0].address(), node[1].address()];
    let peer0 = engine(16);
    let gone = engine(16);
    let to_peer0 = add(&node[0], &peer0);
    let to_gone = add(&node[1], &gone);
    answers(&node[0], to_peer0, "rail 0");
    answers(&node[1], to_gone, "rail 1");
    gone.shutdown();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut rounds = 0;
    while node[1].stats().endpoint_reopens == 0 && Instant::now() < deadline {
        let out = node[1]
            .reach(to_gone, 64, Duration::from_millis(200))
            .wait()
            .unwrap();
        assert_eq!(out, ProbeOutcome::Timeout, "rail 1's peer is gone");
        answers(
            &node[0],
            to_peer0,
            &format!("rail 0 while rail 1 stalls ({rounds})"),
        );
        rounds += 1;
    }
    assert_eq!(node[1].stats().endpoint_reopens, 1, "{:?}", node[1].stats());
    assert_ne!(
        node[1].address(),
        published[1],
        "rail 1's new address is published"
    );
    assert_eq!(node[0].stats().endpoint_reopens, 0, "{:?}", node[0].stats());
    assert_eq!(node[0].address(), published[0], "rail 0 keeps its endpoint");
    assert_eq!(node[0].stats().probe_timeouts, 0, "{:?}", node[0].stats());
    node[1].remove_peer(to_gone);
    let peer1 = engine(16);
    still_answering_and_probing(&node[1], &peer1, "rail 1 after its reopen");
    still_answering_and_probing(&node[0], &peer0, "rail 0 after rail 1's reopen");
    node[0].shutdown();
    peer0.shutdown();
    peer1.shutdown();
}

/// Issue #12: rails 1 and up carry single pings only, in slots of `RAIL_PING_MAX` bytes
/// (not `max_probe_size`): a ping asked of rail 1 at 8 KiB goes cut to that size and the
/// peer's rail 1, whose slots are as small, receives it whole and answers; rail 0 carries the
/// full size. Uncut, the peer's receive would be truncated (a receive error, no pong).
#[test]
fn rails_above_0_carry_pings_cut_to_their_small_slots() {
    let _busy = busy();
    let a = rails_on("udp;ofi_rxd", 2, |_| {});
    let b = rails_on("udp;ofi_rxd", 2, |_| {});
    const { assert!(fabric_ping::RAIL_PING_MAX < 8192) };
    for i in 0..2 {
        let to_b = add(&a[i], &b[i]);
        let out = a[i]
            .reach(to_b, 8192, Duration::from_secs(2))
            .wait()
            .unwrap();
        assert!(
            matches!(out, ProbeOutcome::Pong { .. }),
            "rail {i}: {out:?}"
        );
    }
    for rail in a.iter().chain(&b) {
        let stats = rail.stats();
        assert_eq!(stats.receive_errors, 0, "rail {}: {stats:?}", rail.rail());
    }
    assert_eq!(b[1].stats().pings_answered, 1);
    a[0].shutdown();
    b[0].shutdown();
}

/// A steady rail's ping waits in the mailbox for the engine's next wake-up; on a prober that
/// answers nobody, an idle rail 1 has no poll scheduled (the thread sleeps until given a
/// command), so posting the ping must wake it: the ping is answered at once, not at the
/// timeout. Then, with polls scheduled while pings are in flight, more go the same way.
#[test]
fn an_idle_steady_rail_is_woken_for_its_ping() {
    let _busy = busy();
    let prober = rails_on("udp;ofi_rxd", 2, |c| c.responder = false);
    let responder = rails_on("udp;ofi_rxd", 2, |_| {});
    let to_b = add(&prober[1], &responder[1]);
    let timeout = Duration::from_secs(5);
    for round in 0..3 {
        // Long enough for rail 1 to have nothing outstanding and sleep.
        std::thread::sleep(Duration::from_millis(300));
        let started = std::time::Instant::now();
        // Waited for on a thread of its own: an engine never woken would never answer.
        let (done, outcomes) = std::sync::mpsc::channel();
        let rail = prober[1].clone();
        std::thread::spawn(move || {
            let outs: Vec<_> = (0..3)
                .map(|_| rail.reach(to_b, 64, timeout).wait())
                .collect();
            let _ = done.send(outs);
        });
        let outs: Vec<_> = outcomes
            .recv_timeout(timeout * 2)
            .unwrap_or_else(|_| panic!("round {round}: the engine never answered"))
            .into_iter()
            .map(Option::unwrap)
            .collect();
        let took = started.elapsed();
        for out in &outs {
            assert!(
                matches!(out, ProbeOutcome::Pong { .. }),
                "round {round}: {out:?}"
            );
        }
        // Three pings in turn, each within a few of rail 1's 50 ms polls: far from 5 s.
        assert!(took < Duration::from_secs(2), "round {round}: {took:?}");
    }
    prober[0].shutdown();
    responder[0].shutdown();
}

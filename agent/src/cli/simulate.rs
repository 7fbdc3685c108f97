//! `efaprobe simulate-peers`: one process that looks like N peer agents, for measuring an agent
//! at scale on one machine.
//!
//! Each simulated peer has an HTTP address of its own (`--ip-base`, then the next addresses:
//! every address in 127.0.0.0/8 is local on Linux, so nothing needs setting up on loopback)
//! and answers `GET /v1/hello` with a valid [`Hello`] named `sim-00001`, `sim-00002`, ...
//! The list of peers (`HOST:PORT`, comma-separated) goes to `--peers-file` or stdout, ready
//! for the agent's `--peers` or `EFAPROBE_PEERS`.
//!
//! The fabric side is simplified: a few fabric engines (`--fabric-engines`, default ONE) answer
//! for all the peers, peer i publishing engine i mod K's address. The agent under test still
//! keeps N peers with N handles and sends every probe of every round, all answered; but its
//! engine holds K address-vector entries, not N (entries are shared by address), and its cap
//! of one unanswered ping per destination and size serialises the probes that share an
//! address: with one engine, a round of thousands of peers runs one cold ping at a time, so it
//! takes longer and can time out probes that a real cluster would answer. More engines spread
//! that (`benches/agent_scale.sh` runs 1 and 16). The responders lift their own cap of one pong in
//! flight per destination, since every pong here goes to the one agent.
//!
//! So a run measures the agent's costs that grow with N (per-peer state and verdicts, hello
//! fetches over TCP, metric series, probe bookkeeping, its engine's polling while probes are
//! in flight), not N address-vector entries in the provider nor N independent fabric paths;
//! and this process, on the same machine, answers for the whole cluster (its CPU competes
//! with the agent's, its responders idle-poll like real ones).
//!
//! `--rails N` gives every peer N rails: each responder opens N endpoints (rails 0 to N-1)
//! on its one engine thread, and peer i's rail r is responder i mod K's rail r, a real
//! endpoint that answers. An agent with N rails (`--fabric-bind` with N addresses) then pairs
//! N rails with every peer and probes each, as on a cluster of N-rail nodes; with fewer rails
//! on either side, the common ones are paired and the difference is warned about.
//!
//! `--fabric-provider none` publishes peers without a fabric (the agent reports `unknown` /
//! `peer_no_fabric` for them).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::http::header::CONTENT_TYPE;
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use serde::Serialize;

use crate::config::simulate::simulate_config;
pub use crate::config::simulate::{
    node_name, peer_ips, sim_topology, Args, MAX_COUNT, MAX_ENGINES,
};
use crate::config::ConfigErrors;
use crate::fabric_ping::{self as engine, FabricPinger, PingerConfig};
use crate::hello::{Hello, HelloEndpoint, HelloFabric};
use crate::shutdown::ShutdownSignal;

use super::agent::VERSION;
use super::EXIT_USAGE;

/// Pongs the shared responder keeps in flight to one destination (an agent probes at most 64
/// peers at once, two pings each).
const PONGS_IN_FLIGHT: u32 = 256;

pub fn run(args: Args, refused: ConfigErrors) -> ExitCode {
    let ips = match simulate_config(&args, refused) {
        Ok(ips) => ips,
        Err(errors) => {
            errors.print("simulate-peers");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let provider = Some(args.fabric_provider.clone()).filter(|p| p != "none");
    if let Some(provider) = &provider {
        engine::prepare_environment(provider);
    }
    fabric::process::init();
    let runtime = match super::current_thread_runtime("simulate-peers", ExitCode::FAILURE) {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    // One group of `--rails` rails per responder, each group one engine thread.
    let mut responders: Vec<Vec<FabricPinger>> = Vec::new();
    if let Some(provider) = &provider {
        for _ in 0..args.fabric_engines {
            match open_responder(provider, args.fabric_bind, args.rails as usize) {
                Ok(rails) => responders.push(rails),
                Err(e) => {
                    eprintln!(
                        "efaprobe simulate-peers: fabric provider {provider:?} unusable: {e}"
                    );
                    responders.iter().flatten().for_each(FabricPinger::shutdown);
                    return ExitCode::FAILURE;
                }
            }
        }
    }
    let result = runtime.block_on(serve(&args, &ips, &responders));
    runtime.shutdown_timeout(Duration::from_millis(200));
    if !responders.is_empty() {
        let mut answered = 0;
        let mut dropped = 0;
        let mut failed = 0;
        for p in responders.iter().flatten() {
            let stats = p.stats();
            answered += stats.pings_answered;
            dropped += stats.pongs_dropped_backlog + stats.pongs_dropped_queue_full;
            failed += stats.pong_send_failures;
        }
        responders.iter().flatten().for_each(FabricPinger::shutdown);
        // One line for scripts: how much the responders answered, and what they dropped.
        let line = serde_json::json!({
            "responders": responders.len(),
            "rails": args.rails,
            "pings_answered": answered,
            "pongs_dropped": dropped,
            "pong_send_failures": failed,
        });
        eprintln!("{line}");
    }
    match result {
        Ok(served) => {
            eprintln!(
                "efaprobe simulate-peers: stopped after {} hello requests",
                served
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("efaprobe simulate-peers: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// One responder: `rails` endpoints on one engine thread, rail r the r-th.
fn open_responder(provider: &str, bind: IpAddr, rails: usize) -> Result<Vec<FabricPinger>, String> {
    let mut config = PingerConfig::new(provider);
    // Every pong goes to the one agent under test: an agent's cap of one pong in flight per
    // destination would drop most of them here, where N real responders would each have one.
    config.max_pongs_in_flight_per_peer = PONGS_IN_FLIGHT;
    config.max_queued_pongs = 4 * PONGS_IN_FLIGHT as usize;
    // The agent under test is no explicit peer here: it may have every slot.
    config.max_stranger_pongs_in_flight = Some(config.tx_slots);
    // On IP providers, `bind` once per rail (the same address, an endpoint each); on efa,
    // every device, and shm one: repeated in order up to `rails`, cut to it when more.
    let mut infos = Vec::with_capacity(rails);
    while infos.len() < rails {
        // At most `rails` rounds: each lists one device at least, or stops here.
        let found = engine::rail_infos(&config, &vec![bind; rails]).map_err(|e| e.to_string())?;
        if found.is_empty() {
            return Err("no device found".to_owned());
        }
        infos.extend(found);
    }
    infos.truncate(rails);
    engine::start_rails(infos, config).map_err(|e| e.to_string())
}

/// The hello of one simulated peer: a valid document, as an agent would serve it, naming
/// `rails`' endpoints, rail r the r-th (none: the peer says it has no fabric).
pub fn sim_hello(name: String, provider: &str, rails: &[FabricPinger]) -> Hello {
    Hello {
        node_name: name,
        agent_version: VERSION.to_owned(),
        instance_id: rand::random(),
        fabric: HelloFabric {
            provider: provider.to_owned(),
            available: !rails.is_empty(),
            error: rails
                .is_empty()
                .then(|| "fabric path turned off (--fabric-provider none)".to_owned()),
            endpoints: (0u16..)
                .zip(rails)
                .map(|(rail, p)| HelloEndpoint::of(rail, p, None))
                .collect(),
        },
        topology: None,
        node_actions: None,
    }
}

#[derive(Serialize)]
struct Ready {
    peers: usize,
    /// Each responder's rails' addresses, rail 0 first.
    responders: Vec<Vec<String>>,
}

async fn serve(
    args: &Args,
    ips: &[Ipv4Addr],
    responders: &[Vec<FabricPinger>],
) -> anyhow::Result<u64> {
    use anyhow::Context;
    let mut signals = ShutdownSignal::install().context("installing signal handlers")?;
    let served = Arc::new(AtomicU64::new(0));
    let mut listeners = Vec::with_capacity(ips.len());
    for (i, ip) in ips.iter().enumerate() {
        let address = SocketAddr::new(IpAddr::V4(*ip), args.port);
        let listener = tokio::net::TcpListener::bind(address)
            .await
            .with_context(|| {
                format!(
                    "cannot listen on {address} (peer {} of {}; thousands of peers need \
                     `ulimit -n` above the count)",
                    i + 1,
                    ips.len()
                )
            })?;
        listeners.push(listener);
    }
    let mut tasks = tokio::task::JoinSet::new();
    for (i, listener) in listeners.into_iter().enumerate() {
        let mut hello = sim_hello(
            node_name(&args.name_prefix, i + 1),
            &args.fabric_provider,
            responders
                .get(i % responders.len().max(1))
                .map_or(&[], Vec::as_slice),
        );
        hello.topology = sim_topology(&args.name_prefix, i, args.placement_groups);
        let body = Bytes::from(serde_json::to_vec(&hello).context("encoding a hello")?);
        let served = served.clone();
        let app = Router::new()
            .route(
                "/v1/hello",
                get(move || {
                    served.fetch_add(1, Ordering::Relaxed);
                    let body = body.clone();
                    async move { ([(CONTENT_TYPE, "application/json")], body) }
                }),
            )
            .route("/healthz", get(|| async { "ok" }));
        tasks.spawn(async move { axum::serve(listener, app).await });
    }

    let list = ips
        .iter()
        .map(|ip| format!("{ip}:{}", args.port))
        .collect::<Vec<_>>()
        .join(",");
    match &args.peers_file {
        Some(path) => {
            // Written whole, then renamed: a script waiting for the file never reads half.
            let partial = path.with_extension("partial");
            std::fs::write(&partial, format!("{list}\n"))
                .and_then(|()| std::fs::rename(&partial, path))
                .with_context(|| format!("writing {}", path.display()))?;
        }
        None => println!("{list}"),
    }
    let ready = Ready {
        peers: ips.len(),
        responders: responders
            .iter()
            .map(|rails| rails.iter().map(|p| p.address_display()).collect())
            .collect(),
    };
    eprintln!(
        "efaprobe simulate-peers: serving {}",
        serde_json::to_string(&ready).unwrap_or_default()
    );

    tokio::select! {
        _ = signals.recv() => {}
        Some(ended) = tasks.join_next() => {
            tasks.abort_all();
            match ended {
                Ok(Err(e)) => anyhow::bail!("a peer's server stopped: {e}"),
                Ok(Ok(())) => anyhow::bail!("a peer's server stopped"),
                Err(e) => anyhow::bail!("a peer's server failed: {e}"),
            }
        }
    }
    tasks.abort_all();
    Ok(served.load(Ordering::Relaxed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hellos_are_valid() {
        let hello = sim_hello(node_name("sim", 1), "none", &[]);
        assert_eq!(hello.node_name, "sim-00001");
        let body = serde_json::to_vec(&hello).unwrap();
        let parsed = Hello::parse(&body).unwrap();
        assert!(!parsed.fabric.available);
        assert!(crate::hello::is_node_name(&node_name(
            "sim",
            MAX_COUNT as usize
        )));
    }

    #[tokio::test]
    async fn serves_each_peer_its_own_hello() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("peers");
        // A free port on two loopback addresses of their own.
        let probe = std::net::TcpListener::bind("127.3.9.1:0").unwrap();
        let port = probe.local_addr().unwrap().port();
        drop(probe);
        let args = Args {
            count: 2,
            ip_base: Ipv4Addr::new(127, 3, 9, 1),
            port,
            fabric_provider: "none".into(),
            fabric_bind: IpAddr::V4(Ipv4Addr::LOCALHOST),
            name_prefix: "sim".into(),
            fabric_engines: 1,
            rails: 1,
            placement_groups: 2,
            peers_file: Some(file.clone()),
        };
        let ips = peer_ips(args.ip_base, args.count).unwrap();
        let server = tokio::spawn(async move { serve(&args, &ips, &[]).await });
        let mut list = String::new();
        for _ in 0..100 {
            if let Ok(text) = std::fs::read_to_string(&file) {
                list = text;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let peers: Vec<&str> = list.trim().split(',').collect();
        assert_eq!(peers.len(), 2, "{list:?}");
        for (i, peer) in peers.iter().enumerate() {
            let addr: SocketAddr = peer.parse().unwrap();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
            let conn = crate::probe::tcp::connect_tcp(addr, deadline)
                .await
                .unwrap();
            let response =
                crate::probe::http::http_get(conn.stream, peer, "/v1/hello", 65536, deadline)
                    .await
                    .unwrap();
            assert_eq!(response.status, 200);
            let hello = Hello::parse(&response.body).unwrap();
            assert_eq!(hello.node_name, node_name("sim", i + 1));
            let topology = hello.topology.unwrap();
            let group = format!("sim-pg-{}", i % 2);
            assert_eq!(topology.placement_group.as_deref(), Some(group.as_str()));
        }
        server.abort();
    }
}

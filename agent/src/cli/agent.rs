//! `efaprobe agent`: the long-running per-node agent.

use std::process::ExitCode;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::watch;

use crate::config::discovery::ListenArgs;
use crate::config::{AgentArgs, AgentConfig, ConfigError, ConfigErrors};
use crate::fabric_ping::{self, FabricPinger, PingerConfig};
use crate::hello::{Hello, HelloEndpoint, HelloFabric};
use crate::http::verify::VerifyGate;
use crate::http::{router_with_verify, AppState, ServeLimits};
use crate::inventory::rails::rail_mac;
use crate::metrics::Metrics;
use crate::monitor::{self, PeerMonitor, PeerProbeSettings, RoundInputs};
use crate::retry;
use crate::state::{AgentState, FabricDevice, FabricStatus};
use crate::topology::fetch_topology_from;
use crate::verdict::diagnosis::Placement;

use super::EXIT_USAGE;

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

pub fn run(args: AgentArgs, refused: ConfigErrors) -> ExitCode {
    let config = match AgentConfig::from_args_after(&args, refused) {
        Ok(c) => c,
        Err(errors) => {
            errors.print("agent");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    // The flags as given (a static peer list among them) are not read again.
    drop(args);
    if let Some(provider) = &config.fabric_provider {
        fabric_ping::prepare_environment(provider);
    }
    fabric::process::init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("efaprobe agent: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(serve(config));
    // The fabric is closed and the server stopped; a blocking task still running (a name
    // lookup, a sysfs read) must not hold the exit, which a restart waits for.
    runtime.shutdown_timeout(Duration::from_millis(200));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("efaprobe agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Opens this node's fabric: its rails (every device on `efa`, one per `--fabric-bind`
/// address on IP providers), all driven by one engine thread, each with the MAC of the
/// interface it sits on where the system says. A missing provider is not fatal: the agent
/// runs IP-only and says so.
///
/// `responder`: whether the endpoints answer peers' pings (the ones published in the hello);
/// an endpoint only for this node's own probes sleeps while it has nothing in flight, and
/// only rail 0 gets one (the larger probes are sent on rail 0 alone: see `monitor::rails`).
fn open_fabric(config: &AgentConfig, responder: bool) -> (Vec<FabricPinger>, FabricStatus) {
    let Some(provider) = &config.fabric_provider else {
        return (
            vec![],
            FabricStatus {
                provider: "none".into(),
                available: false,
                error: Some("fabric path turned off (--fabric-provider none)".into()),
                devices: vec![],
            },
        );
    };
    let mut pc = PingerConfig::new(provider);
    pc.responder = responder;
    pc.rail_poll = fabric_ping::rail_poll_for(config.timeout);
    if !responder {
        // Only this node's own larger probes and their pongs: a few batches' worth.
        pc.tx_slots = 32;
        pc.rx_slots = 16;
    }
    let largest = config.large_probe_sizes.iter().copied().max().unwrap_or(0);
    pc.max_probe_size = pc.max_probe_size.max(config.probe_size).max(largest);
    let rails = fabric_ping::rail_infos(&pc, &config.fabric_bind).and_then(|mut infos| {
        if !responder {
            infos.truncate(1);
        }
        fabric_ping::start_rails(infos, pc)
    });
    match rails {
        Ok(pingers) if !pingers.is_empty() => {
            let devices = pingers
                .iter()
                .enumerate()
                .map(|(rail, p)| FabricDevice {
                    rail: u16::try_from(rail).unwrap_or(u16::MAX),
                    mac: rail_mac(
                        provider,
                        p.domain(),
                        config.fabric_bind.get(rail).copied(),
                        &config.sysfs_root,
                    ),
                    domain: p.domain().to_owned(),
                    provider: p.provider().to_owned(),
                    address: p.address_display().to_owned(),
                })
                .collect();
            (
                pingers,
                FabricStatus {
                    provider: provider.clone(),
                    available: true,
                    error: None,
                    devices,
                },
            )
        }
        Ok(_) => (vec![], no_fabric(provider, "no device found".into())),
        Err(e) => (vec![], no_fabric(provider, e.to_string())),
    }
}

fn no_fabric(provider: &str, error: String) -> FabricStatus {
    tracing::warn!(provider, %error, "fabric unavailable: running IP-only");
    FabricStatus {
        provider: provider.to_owned(),
        available: false,
        error: Some(error),
        devices: vec![],
    }
}

async fn serve(config: AgentConfig) -> anyhow::Result<()> {
    use anyhow::Context;
    // Shared, not copied: with a static list it holds every peer's address.
    let config = Arc::new(config);
    let shutdown = crate::shutdown::cancelled_on_signal().context("installing signal handlers")?;
    let (pingers, fabric) = open_fabric(&config, true);
    let pinger = pingers.first().cloned();
    // The larger probes get an endpoint of their own on the same device (see PeerMonitor).
    let large_pinger = match (&pinger, config.large_probe_sizes.is_empty()) {
        (Some(p), false) => match open_fabric(&config, false)
            .0
            .into_iter()
            .find(|l| l.domain() == p.domain())
        {
            Some(l) => Some(l),
            None => {
                tracing::warn!("no second endpoint for larger probes: sizes not probed");
                None
            }
        },
        _ => None,
    };

    let state = Arc::new(AgentState::new(&config.node_name, fabric.clone()));
    let metrics = Arc::new(Metrics::new(VERSION, state.clone()));
    metrics.set_per_peer_mode(config.per_peer_metrics);
    metrics.set_fabric_engines(&[&pingers[..], large_pinger.as_slice()].concat());
    let hello = Hello {
        node_name: config.node_name.clone(),
        agent_version: VERSION.to_owned(),
        instance_id: rand::random(),
        fabric: HelloFabric {
            provider: fabric.provider.clone(),
            available: fabric.available,
            error: fabric.error.clone(),
            endpoints: pingers
                .iter()
                .zip(&fabric.devices)
                .map(|(p, device)| HelloEndpoint::of(device.rail, p, device.mac.clone()))
                .collect(),
        },
        topology: None,
        node_actions: None,
    };
    let hello = Arc::new(RwLock::new(hello));
    tokio::spawn(crate::hello::follow_fabric_addresses(
        hello.clone(),
        &pingers,
    ));
    let app = AppState {
        state: state.clone(),
        metrics: metrics.clone(),
        hello: hello.clone(),
    };

    // Verifies (POST /v1/verify) go to the monitor's verify task.
    let (verify_tx, verify_rx) = tokio::sync::mpsc::channel(monitor::verify::VERIFY_QUEUE);
    let verify_gate = VerifyGate::new(verify_tx, config.timeout, metrics.clone());

    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| anyhow::anyhow!(listen_failure(config.listen, &e)))?;
    tracing::info!(listen = %config.listen, node = %config.node_name, "serving");
    let server = {
        let stop = shutdown.clone();
        let limits = ServeLimits::after_raising_open_files_limit();
        tokio::spawn(async move {
            crate::http::serve(
                listener,
                router_with_verify(app, verify_gate),
                limits,
                stop.cancelled_owned(),
            )
            .await
        })
    };

    // Instance topology, bounded by its own timeout: off AWS, start-up waits no longer. The
    // HTTP server already answers /healthz meanwhile. A failed read is retried in the
    // background (instance metadata can hiccup at boot); what arrives later is published to
    // the hello, the metrics and the monitor.
    let first = match &config.imds_endpoint {
        None => {
            tracing::info!("instance metadata not read (--imds-endpoint none)");
            None
        }
        Some(endpoint) => read_topology(endpoint, config.imds_timeout).await,
    };
    publish_topology(first.clone(), &hello, &metrics);
    let (topology_tx, mut topology_rx) = watch::channel(first.clone().map(Arc::new));
    if let (None, Some(endpoint)) = (&first, config.imds_endpoint.clone()) {
        let (hello, metrics, timeout) = (hello.clone(), metrics.clone(), config.imds_timeout);
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let waits = retry::delays(retry::doubling(
                Duration::from_secs(1),
                Duration::from_secs(300),
            ));
            for wait in waits {
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = stop.cancelled() => return,
                }
                if let Some(t) = read_topology(&endpoint, timeout).await {
                    let _ = topology_tx.send(Some(Arc::new(t.clone())));
                    publish_topology(Some(t), &hello, &metrics);
                    return;
                }
            }
        });
    }
    let topology = topology_rx.borrow_and_update().clone();

    let peer_sets =
        crate::discovery::start(config.discovery.clone(), config.interval, shutdown.clone())
            .await
            .context("starting peer discovery")?;
    let mut monitor = PeerMonitor::new(
        PeerProbeSettings {
            node_name: config.node_name.clone(),
            interval: config.interval,
            schedule: config.schedule,
            fabric_rtt_every: config.fabric_rtt_every,
            timeout: config.timeout,
            probe_size: config.probe_size,
            large_probe_sizes: config.large_probe_sizes.clone(),
            policy: config.policy,
            provider: config.fabric_provider.clone(),
            placement: topology.as_deref().and_then(Placement::of),
        },
        state.clone(),
        metrics.clone(),
        pingers.clone(),
    )
    .with_large_probe_endpoint(large_pinger.clone());
    monitor.set_topology(topology);

    let node_actions = crate::node_actions::start(
        config.node_actions.clone(),
        &config.node_name,
        config.interval * config.policy.hysteresis,
        state.clone(),
        hello.clone(),
        metrics.clone(),
        shutdown.clone(),
    )
    .await
    .context("starting node actions (a Kubernetes client from the service account)")?;

    let probing = tokio::spawn(monitor::run(
        monitor,
        RoundInputs {
            state: state.clone(),
            metrics: metrics.clone(),
            peer_sets,
            topology: topology_rx,
            is_self: {
                let config = Arc::clone(&config);
                Box::new(move |address| config.is_self(address))
            },
            peer_grace: config.peer_grace,
            interval: config.interval,
            targets: config.targets.clone(),
            target_timeout: config.timeout,
            sysfs_root: config.sysfs_root.clone(),
            verify: Some(verify_rx),
        },
        shutdown.clone(),
    ));

    shutdown.cancelled().await;
    tracing::info!("stopping");
    let _ = tokio::time::timeout(Duration::from_secs(10), probing).await;
    let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
    if let Some(task) = node_actions {
        let _ = tokio::time::timeout(Duration::from_secs(2), task).await;
    }
    for p in pingers.iter().chain(&large_pinger) {
        p.shutdown();
    }
    tracing::info!("stopped");
    Ok(())
}

/// Why the HTTP server cannot listen, plainly. Exit code 1, not 64: the setting is valid, and
/// what stops it (a port another process holds, such as the previous agent pod on a
/// host-network node still stopping) is the machine's state at that moment, which a restart
/// may find gone; 64 says "fix the configuration", which no retry can.
fn listen_failure(listen: std::net::SocketAddr, e: &std::io::Error) -> String {
    let setting = ConfigError::of::<ListenArgs>("listen", "");
    let why = match e.kind() {
        std::io::ErrorKind::AddrInUse => format!(
            "port {} is already in use by another process (another agent, or one still \
             stopping): stop it or choose another port",
            listen.port()
        ),
        std::io::ErrorKind::AddrNotAvailable => {
            format!("{} is not an address of this node", listen.ip())
        }
        std::io::ErrorKind::PermissionDenied => format!(
            "port {} needs a privilege this process lacks (below 1024: CAP_NET_BIND_SERVICE)",
            listen.port()
        ),
        _ => e.to_string(),
    };
    format!(
        "cannot listen on {listen} (flag --{}, env {}): {why}",
        setting.flag, setting.env
    )
}

async fn read_topology(
    endpoint: &crate::topology::ImdsEndpoint,
    timeout: Duration,
) -> Option<crate::topology::Topology> {
    match fetch_topology_from(endpoint, timeout).await {
        Ok(t) => {
            tracing::info!(az = %t.availability_zone, instance = %t.instance_id, "instance topology read");
            Some(t)
        }
        Err(e) => {
            tracing::warn!(error = %e, "no instance topology (retrying): diagnoses will not name subnets or zones");
            None
        }
    }
}

fn publish_topology(
    topology: Option<crate::topology::Topology>,
    hello: &RwLock<Hello>,
    metrics: &Metrics,
) {
    metrics.set_topology(topology.as_ref());
    hello.write().unwrap_or_else(|p| p.into_inner()).topology = topology;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_taken_port_is_said_plainly() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let e = std::net::TcpListener::bind(addr).unwrap_err();
        let said = listen_failure(addr, &e);
        assert!(
            said.contains(&format!("port {} is already in use", addr.port())),
            "{said}"
        );
        assert!(
            said.contains("--listen") && said.contains("EFAPROBE_LISTEN"),
            "{said}"
        );
    }
}

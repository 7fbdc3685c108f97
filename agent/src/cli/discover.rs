//! `efaprobe discover`: which peers would this node probe?
//!
//! Takes the agent's discovery settings (the same flags and environment variables, so
//! `kubectl exec ds/efaprobe -- efaprobe discover --once` answers for that pod) and prints the
//! peer set: once with `--once`, or again at every change until SIGINT/SIGTERM. Exit status: 0
//! when a set was found, 1 when discovery failed (the error says why), 64 for a bad setting.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::config::discovery::discover_config;
pub use crate::config::discovery::DiscoverArgs as Args;
use crate::config::ConfigErrors;
use crate::discovery::{self, DiscoveryConfig, DiscoveryError, PeerSet};
use crate::shutdown::ShutdownSignal;

use super::EXIT_USAGE;

/// How long `--once` waits for the API server or the resolver.
const ONCE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the runtime waits, on exit, for a resolver thread stuck in `getaddrinfo`.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(100);

pub fn run(args: Args, refused: ConfigErrors) -> ExitCode {
    let (config, refresh) = match discover_config(&args, refused) {
        Ok(v) => v,
        Err(errors) => {
            errors.print("discover");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    if !args.once {
        // libfabric, linked in, installs SIGTERM/SIGINT handlers that end the process; take
        // them back so following ends cleanly on a signal.
        fabric::process::init();
    }
    let runtime = match super::current_thread_runtime("discover", ExitCode::FAILURE) {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    let result = if args.once {
        runtime.block_on(discover_once(config)).map(|set| {
            print_set(&set, args.json);
        })
    } else {
        runtime.block_on(follow(config, refresh, args.json))
    };
    // A resolver thread stuck in getaddrinfo must not hold up the exit.
    runtime.shutdown_timeout(SHUTDOWN_GRACE);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("efaprobe discover: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The set as of now: the static list, one resolution, or one listing of the pods.
async fn discover_once(config: DiscoveryConfig) -> Result<PeerSet, DiscoveryError> {
    let now = std::time::Instant::now();
    match config {
        DiscoveryConfig::Static(peers) => Ok(discovery::static_set(&peers, now)),
        DiscoveryConfig::Dns { name, port } => {
            let found = discovery::dns::resolve(&name, port, ONCE_TIMEOUT).await?;
            Ok(discovery::dns::merge(&PeerSet::new(), &found, now))
        }
        DiscoveryConfig::Kubernetes {
            namespace,
            selector,
            port,
        } => {
            let client = kube::Client::try_default()
                .await
                .map_err(DiscoveryError::KubeClient)?;
            discovery::kubernetes::list_once(client, &namespace, &selector, port).await
        }
    }
}

/// Prints the set now and at every change, until SIGINT or SIGTERM.
async fn follow(
    config: DiscoveryConfig,
    refresh: Duration,
    json: bool,
) -> Result<(), DiscoveryError> {
    let mut signals = match ShutdownSignal::install() {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "no signal handlers; stop with SIGKILL");
            return follow_until(config, refresh, json, std::future::pending()).await;
        }
    };
    follow_until(config, refresh, json, async move { signals.recv().await }).await
}

async fn follow_until(
    config: DiscoveryConfig,
    refresh: Duration,
    json: bool,
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), DiscoveryError> {
    let stop_discovery = CancellationToken::new();
    let mut peers = discovery::start(config, refresh, stop_discovery.clone()).await?;
    let mut stop = std::pin::pin!(stop);
    // The first set of dns and kubernetes is the empty one before the first answer.
    let mut first = true;
    loop {
        let set = peers.borrow_and_update().clone();
        if !(first && set.is_empty()) {
            print_set(&set, json);
        }
        first = false;
        tokio::select! {
            changed = peers.changed() => if changed.is_err() { break },
            _ = &mut stop => break,
        }
    }
    stop_discovery.cancel();
    Ok(())
}

#[derive(Serialize)]
struct SetView<'a> {
    peers: Vec<PeerView<'a>>,
}

#[derive(Serialize)]
struct PeerView<'a> {
    address: &'a str,
    node_name: Option<&'a str>,
    /// How long the peer has been eligible, as of printing: compare with the grace period.
    eligible_for_ms: u64,
}

fn print_set(set: &PeerSet, json: bool) {
    let views: Vec<PeerView> = set
        .values()
        .map(|p| PeerView {
            address: &p.address,
            node_name: p.node_name.as_deref(),
            eligible_for_ms: u64::try_from(p.eligible_since.elapsed().as_millis())
                .unwrap_or(u64::MAX),
        })
        .collect();
    let text = if json {
        let mut line = serde_json::to_string(&SetView { peers: views }).unwrap_or_default();
        line.push('\n');
        line
    } else {
        let mut out = format!("{} peers\n", views.len());
        for v in &views {
            out.push_str(&format!(
                "{:<40} {:<32} eligible for {:.1}s\n",
                v.address,
                v.node_name.unwrap_or("-"),
                v.eligible_for_ms as f64 / 1000.0
            ));
        }
        out
    };
    // A closed stdout (`| head`) must not panic; flush so a reader sees each set at once.
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(text.as_bytes());
    let _ = stdout.flush();
}

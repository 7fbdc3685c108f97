//! SIGTERM/SIGINT as a future, or as the [`CancellationToken`] every task of a process
//! watches to stop.
//!
//! Call `fabric::process::init()` first: libfabric's providers install SIGINT/SIGTERM handlers
//! that end the process, and tokio chains to whatever handler it finds, so without it a
//! SIGTERM would kill the agent before it closes the fabric.

use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio_util::sync::CancellationToken;

pub struct ShutdownSignal {
    term: Signal,
    int: Signal,
}

impl ShutdownSignal {
    /// Must be called inside a tokio runtime, after `fabric::process::init()`.
    pub fn install() -> std::io::Result<ShutdownSignal> {
        Ok(ShutdownSignal {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    /// Resolves at the first SIGTERM or SIGINT.
    pub async fn recv(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}

/// A token cancelled at the first SIGTERM or SIGINT: the one shutdown of a process, which
/// every task it starts watches (a clone, or a child token for a part that may stop alone).
/// Must be called inside a tokio runtime, after `fabric::process::init()`.
pub fn cancelled_on_signal() -> std::io::Result<CancellationToken> {
    let mut signals = ShutdownSignal::install()?;
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        signals.recv().await;
        cancel.cancel();
    });
    Ok(token)
}

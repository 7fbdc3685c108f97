//! SIGTERM/SIGINT as a future.
//!
//! Call `fabric::process::init()` first: libfabric's providers install SIGINT/SIGTERM handlers
//! that end the process, and tokio chains to whatever handler it finds, so without it a
//! SIGTERM would kill the agent before it closes the fabric.

use tokio::signal::unix::{signal, Signal, SignalKind};

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

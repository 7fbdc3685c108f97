//! `efaprobe fabric-ping`'s flags, and the engine configuration they make.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use crate::fabric_ping::PingerConfig;
use crate::units::parse_duration;

pub const DEFAULT_PORT: u16 = 47_600;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// libfabric provider: efa, tcp, "udp;ofi_rxd", shm.
    #[arg(long, default_value = "efa")]
    pub provider: String,
    /// Local IP: the TCP exchange listens or connects from here, and IP-based providers bind
    /// their fabric endpoint to it.
    #[arg(long)]
    pub bind: IpAddr,
    /// Responder: TCP port on which fabric addresses are exchanged.
    #[arg(long, default_value_t = DEFAULT_PORT)]
    pub port: u16,
    /// Prober: the responder's exchange address (IP:PORT). Without it, this is the responder.
    #[arg(long)]
    pub peer: Option<SocketAddr>,
    /// Probes to send.
    #[arg(long, default_value_t = 10)]
    pub count: u32,
    /// Probe size in bytes (raised to the header plus this node's fabric address if smaller).
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    /// Time between probes (0 sends the next as soon as the last is answered).
    #[arg(long, default_value = "200ms", value_parser = parse_duration)]
    pub interval: Duration,
    /// Deadline for each probe, and for the TCP exchange.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Use this domain (device) rather than the provider's first.
    #[arg(long)]
    pub domain: Option<String>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    /// Print every probe.
    #[arg(long, short)]
    pub verbose: bool,
}

impl Args {
    /// The engine this run opens.
    pub fn pinger_config(&self) -> PingerConfig {
        let mut config = PingerConfig::new(&self.provider);
        config.bind = Some(self.bind);
        config.max_probe_size = config.max_probe_size.max(self.size);
        // A tool run by hand, often back to back (--interval 0): both sides stay awake
        // between probes, which an agent does not (it would cost every node a spinning core).
        config.linger = Duration::from_millis(1);
        config
    }
}

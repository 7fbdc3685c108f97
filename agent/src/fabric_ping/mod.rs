//! Fabric (OS-bypass) reachability: the wire message, the ping engine, and the TCP exchange
//! of fabric addresses used by `efaprobe fabric-ping`.

pub mod engine;
pub mod exchange;
pub mod wire;

pub use engine::{
    open_all, open_rails, prepare_environment, rail_deadline_floor, rail_infos, rail_poll_for,
    start_rails, EngineError, FabricPinger, MalformedReason, PeerHandle, PingerConfig, PingerStats,
    ProbeOutcome, Published, Reply, RAIL_PING_MAX,
};

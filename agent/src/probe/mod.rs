//! IP probes of infrastructure services ("targets"): can this node open a TCP connection
//! to each address behind a target's name, and does the service answer its protocol?
//!
//! - [`spec`]: `NAME=HOST:PORT[:CHECK]` as operators write it.
//! - [`target`]: one check of one target, every address on its own ([`check_target`]).
//! - [`tcp`], [`nats`], [`http`]: the connect and the protocol exchanges, each bounded by a
//!   deadline; [`http::http_get`] also serves the agent's hello requests to its peers.
//! - [`hello`]: the IP probe of a peer agent ([`hello::fetch_hello`]).
//! - [`reason`]: the bounded failure reasons that label metrics.
//! - [`resolve`]: name resolution with a deadline, for every caller in the agent.
//!
//! Nothing here panics or waits without a deadline: the agent runs these checks forever,
//! against servers that may be broken or hostile.

pub mod hello;
pub mod http;
pub mod nats;
pub mod reason;
pub mod resolve;
pub mod spec;
pub mod target;
pub mod tcp;

pub use reason::{FailureReason, ProbeFailure};
pub use resolve::{resolve, ResolveError};
pub use spec::{TargetCheck, TargetSpec, TargetSpecError};
pub use target::{check_target, check_targets, AddressReport, CheckSuccess, TargetReport};

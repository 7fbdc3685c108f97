//! efaprobe: per node, can this node reach each peer and each service, on which path, and if
//! not, why.
//!
//! All FFI lives in the `fabric` crate; this crate has no `unsafe`.
#![forbid(unsafe_code)]

pub mod cli;
pub mod config;
pub mod discovery;
pub mod dns_name;
pub mod fabric_ping;
pub mod hello;
pub mod http;
pub mod inventory;
pub mod metrics;
pub mod monitor;
pub mod node_actions;
pub mod probe;
pub mod retry;
pub mod shutdown;
pub mod state;
pub mod topology;
pub mod units;
pub mod untrusted_text;
pub mod verdict;

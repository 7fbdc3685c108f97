//! efaprobe: per node, can this node reach each peer and each service, on which path, and if
//! not, why.
//!
//! All FFI lives in the `fabric` crate; this crate has no `unsafe`.
#![forbid(unsafe_code)]

pub mod cli;
pub mod config;
pub mod discovery;
pub mod fabric_ping;
pub mod hello;
pub mod http;
pub mod inventory;
pub mod metrics;
pub mod monitor;
pub mod probe;
pub mod shutdown;
pub mod state;
pub mod topology;
pub mod untrusted_text;
pub mod verdict;

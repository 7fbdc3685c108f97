//! Test hosts made of network namespaces and veth pairs, with addresses from 198.18.0.0/15
//! only. Everything a test creates is removed when its handle is dropped.
//!
//! Fixed ports on the host's loopback are below 32768, outside Linux's ephemeral range: an
//! outgoing connection elsewhere on the machine may hold any port inside it.
//!
//! A binary includes the files it uses, all of each: `tests/system` this list;
//! `tests/fabric_ping_loopback.rs` only `machine` and `process`.

pub mod agent;
pub mod imds;
pub mod metrics;
pub mod netns;
pub mod process;
pub mod prometheus;

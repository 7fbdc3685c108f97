//! Test hosts made of network namespaces and veth pairs, with addresses from 198.18.0.0/15
//! only. Everything a test creates is removed when its handle is dropped.
#![allow(dead_code)]

pub mod metrics;
pub mod netns;

//! A safe layer over libfabric's reliable-datagram (RDM) messaging.
//!
//! One owning type per libfabric object. Each child holds an `Arc` to its parent, so a parent
//! is closed only after every child, and each type closes its object in `Drop`. The
//! [`Endpoint`] owns the memory that posted operations point at (buffers, registrations and
//! operation contexts), so that memory stays put until the endpoint itself is closed.
//!
//! This crate is the only place in efaprobe with `unsafe` code; every block says why it is sound.

mod address;
mod av;
mod cq;
mod domain;
mod efa_errno;
mod endpoint;
mod error;
mod info;
mod mr;
pub mod process;
mod stray_filter;

pub use address::{AddressError, EndpointAddress, MAX_ADDRESS_LEN};
pub use av::{AddressVector, FabricAddr};
pub use cq::CompletionQueue;
pub use domain::{Domain, Fabric};
pub use efa_errno::{EfaErrno, EfaReason};
pub use endpoint::{Endpoint, EndpointConfig, Event, SendId};
pub use error::{CompletionError, Error, Result};
pub use info::{Info, InfoList, InfoRef, Query};
pub use mr::MemoryRegion;
pub use stray_filter::StrayFilterError;

/// The libfabric library this process runs against, as `major.minor`.
pub fn runtime_version() -> (u32, u32) {
    // SAFETY: fi_version takes no arguments and returns a constant.
    let v = unsafe { fabric_sys::fi_version() };
    (v >> 16, v & 0xffff)
}

/// The API version these bindings were compiled against, as `major.minor`.
pub fn compiled_version() -> (u32, u32) {
    let v = fabric_sys::FI_COMPILED_VERSION;
    (v >> 16, v & 0xffff)
}

//! Raw libfabric bindings, generated at build time from the system's headers.
//!
//! The safe layer lives in the `fabric` crate; nothing here is meant to be called directly by
//! the agent.
#![allow(
    non_upper_case_globals,
    non_camel_case_types,
    non_snake_case,
    dead_code
)]
#![allow(
    clippy::all,
    clippy::undocumented_unsafe_blocks,
    unsafe_op_in_unsafe_fn
)]

include!(concat!(env!("OUT_DIR"), "/bindings.rs"));

/// `FI_VERSION(FI_MAJOR_VERSION, FI_MINOR_VERSION)`: the API version of the headers these
/// bindings were generated from. Passed to `fi_getinfo` so that a newer libfabric at run time
/// keeps the structure layouts and semantics this build was compiled against.
pub const FI_COMPILED_VERSION: u32 = fi_version_of(FI_MAJOR_VERSION, FI_MINOR_VERSION);

/// The `FI_VERSION` macro of `fabric.h`, which bindgen cannot translate.
pub const fn fi_version_of(major: u32, minor: u32) -> u32 {
    (major << 16) | minor
}

/// `FI_ADDR_UNSPEC` / `FI_ADDR_NOTAVAIL`: `((uint64_t) -1)`, a cast bindgen cannot evaluate.
pub const FI_ADDR_NOTAVAIL: fi_addr_t = u64::MAX;

/// `FI_LOCAL_MR`, the `fi_info.mode` bit by which libfabric 1.x providers asked for registered
/// local buffers before `FI_MR_LOCAL` in `mr_mode` replaced it. Written out because libfabric
/// 2.x headers define it behind a deprecation `_Pragma`, which bindgen drops; the bit itself is
/// ABI and unchanged (the tests compare it with the header's value).
pub const FI_LOCAL_MR: u64 = 1 << 55;

#[cfg(test)]
mod tests {
    use super::*;

    extern "C" {
        /// consts.c: `FI_LOCAL_MR` as the header defines it.
        static fabric_sys_header_local_mr: u64;
    }

    #[test]
    fn written_out_constants_match_the_headers() {
        // SAFETY: a constant defined in consts.c, never written.
        assert_eq!(FI_LOCAL_MR, unsafe { fabric_sys_header_local_mr });
    }

    #[test]
    fn compiled_version_matches_the_headers() {
        assert_eq!(FI_COMPILED_VERSION >> 16, FI_MAJOR_VERSION);
        assert_eq!(FI_COMPILED_VERSION & 0xffff, FI_MINOR_VERSION);
    }

    #[test]
    fn runtime_library_is_at_least_the_compiled_version() {
        // SAFETY: fi_version takes no arguments and only returns a constant.
        let runtime = unsafe { fi_version() };
        assert!(runtime >= FI_COMPILED_VERSION, "runtime {runtime:#x}");
    }
}

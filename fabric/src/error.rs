use std::ffi::CStr;
use std::os::raw::c_int;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Errors from the libfabric calls made by this crate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A libfabric call returned an error code.
    #[error("{call} failed: {text} (code {code})")]
    Call {
        call: &'static str,
        /// The positive libfabric error number (`FI_E*`, errno values below 256).
        code: i32,
        text: String,
    },
    /// `fi_getinfo` found nothing that matches.
    #[error("no libfabric provider matches {query}: {detail}")]
    NoProvider { query: String, detail: String },
    /// A caller passed something this layer refuses before it reaches libfabric.
    #[error("invalid argument: {0}")]
    Invalid(String),
    /// Every transmit slot is in flight; the caller must wait for completions.
    #[error("all {0} transmit slots are in flight")]
    TxBusy(usize),
}

impl Error {
    pub(crate) fn from_code(call: &'static str, ret: isize) -> Self {
        let code = ret.unsigned_abs() as i32;
        Error::Call {
            call,
            code,
            text: strerror(code),
        }
    }

    /// The libfabric error number, when the error came from libfabric.
    pub fn code(&self) -> Option<i32> {
        match self {
            Error::Call { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// True for `FI_EAGAIN`: the provider wants progress before it takes more work.
    pub fn is_again(&self) -> bool {
        self.code() == Some(fabric_sys::FI_EAGAIN as i32)
    }
}

/// A failed operation, as read from a completion queue's error entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize)]
#[error("{text} (code {code}); provider: {prov_text} (prov_errno {prov_errno})")]
pub struct CompletionError {
    /// The generic libfabric error number (`FI_EHOSTUNREACH`, `FI_EIO`, ...).
    pub code: i32,
    /// `fi_strerror(code)`.
    pub text: String,
    /// The provider's own error code: EFA's names the cause (unreachable remote, bad QP, ...).
    pub prov_errno: i32,
    /// `fi_cq_strerror(prov_errno)`: the provider's own words, which on EFA name security
    /// groups and subnets.
    pub prov_text: String,
}

/// `fi_strerror`, which returns static strings owned by libfabric.
pub(crate) fn strerror(code: i32) -> String {
    // SAFETY: fi_strerror accepts any integer and returns a pointer to a static, NUL-terminated
    // string (an "Unknown error" text for values it does not know), never NULL.
    let text = unsafe { CStr::from_ptr(fabric_sys::fi_strerror(code as c_int)) };
    text.to_string_lossy().into_owned()
}

/// Returns `Ok(ret)` for a non-negative return, the libfabric error otherwise.
pub(crate) fn check(call: &'static str, ret: isize) -> Result<isize> {
    if ret < 0 {
        Err(Error::from_code(call, ret))
    } else {
        Ok(ret)
    }
}

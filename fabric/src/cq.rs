use std::ffi::CStr;
use std::os::raw::{c_char, c_void};
use std::ptr::{self, NonNull};
use std::sync::Arc;

use fabric_sys as sys;

use crate::domain::{close_fid, Domain};
use crate::error::{check, strerror, CompletionError, Error, Result};

struct CqInner {
    ptr: NonNull<sys::fid_cq>,
    _domain: Domain,
}

// SAFETY: opened with FI_THREAD_SAFE, so the provider serialises access.
unsafe impl Send for CqInner {}
// SAFETY: as for Send.
unsafe impl Sync for CqInner {}

impl Drop for CqInner {
    fn drop(&mut self) {
        // SAFETY: fid_cq begins with its fid; the endpoint bound to it holds an Arc and is
        // closed first.
        close_fid("completion queue", unsafe {
            ptr::addr_of_mut!((*self.ptr.as_ptr()).fid)
        });
    }
}

/// A completion queue (`fi_cq_open`) in `FI_CQ_FORMAT_MSG` with no wait object: it is
/// polled, because progress is manual on EFA and needs the polling anyway. (Wait objects were
/// tried: rxd refuses them, and with shm and tcp `fi_cq_sread` saw arrivals milliseconds late.)
#[derive(Clone)]
pub struct CompletionQueue {
    inner: Arc<CqInner>,
}

/// What one read of a queue found.
pub(crate) enum CqRead {
    /// This many entries were written to the buffer.
    Entries(usize),
    /// An error entry is at the head: read it with `read_error`.
    ErrorAvailable,
}

/// A failed operation, with the context it was posted with.
pub(crate) struct CqError {
    pub op_context: *mut c_void,
    pub error: CompletionError,
}

impl CompletionQueue {
    pub fn open(domain: &Domain, size: usize) -> Result<CompletionQueue> {
        let mut attr = sys::fi_cq_attr {
            size,
            format: sys::fi_cq_format_FI_CQ_FORMAT_MSG,
            wait_obj: sys::fi_wait_obj_FI_WAIT_NONE,
            ..Default::default()
        };
        let mut ptr = ptr::null_mut();
        // SAFETY: the domain is open, attr and ptr are valid for the call.
        let ret = unsafe { sys::fi_cq_open(domain.as_ptr(), &mut attr, &mut ptr, ptr::null_mut()) };
        check("fi_cq_open", ret as isize)?;
        Ok(CompletionQueue {
            inner: Arc::new(CqInner {
                ptr: NonNull::new(ptr).expect("fi_cq_open succeeded with NULL"),
                _domain: domain.clone(),
            }),
        })
    }

    /// Reads completions (and drives the provider's progress, which is manual on EFA). With
    /// `sources`, each entry's sender is written there too (`fi_cq_readfrom`: the endpoint
    /// must have `FI_SOURCE`).
    pub(crate) fn read(
        &self,
        buf: &mut [sys::fi_cq_msg_entry],
        sources: Option<&mut [sys::fi_addr_t]>,
    ) -> Result<CqRead> {
        let ret = match sources {
            // SAFETY: buf is valid for buf.len() entries of the format this CQ was opened
            // with, and src for as many fi_addr_t (no more are asked for).
            Some(src) => unsafe {
                sys::fi_cq_readfrom(
                    self.inner.ptr.as_ptr(),
                    buf.as_mut_ptr().cast(),
                    buf.len().min(src.len()),
                    src.as_mut_ptr(),
                )
            },
            // SAFETY: buf is valid for buf.len() entries of the format this CQ was opened with.
            None => unsafe {
                sys::fi_cq_read(self.inner.ptr.as_ptr(), buf.as_mut_ptr().cast(), buf.len())
            },
        };
        if ret == -(sys::FI_EAGAIN as isize) {
            return Ok(CqRead::Entries(0));
        }
        if ret == -(sys::FI_EAVAIL as isize) {
            return Ok(CqRead::ErrorAvailable);
        }
        check("fi_cq_read", ret).map(|n| CqRead::Entries(n as usize))
    }

    /// Reads the error entry at the head of the queue and decodes it, with the provider's own
    /// error text.
    pub(crate) fn read_error(&self) -> Result<Option<CqError>> {
        // err_data_size 0 lets the provider point err_data at its own buffer, which stays
        // valid until the next read of this queue: long enough for fi_cq_strerror below.
        let mut entry = sys::fi_cq_err_entry::default();
        // SAFETY: entry is a valid, zeroed error entry.
        let ret = unsafe { sys::fi_cq_readerr(self.inner.ptr.as_ptr(), &mut entry, 0) };
        if ret == -(sys::FI_EAGAIN as isize) {
            return Ok(None);
        }
        check("fi_cq_readerr", ret)?;
        let mut buf = [0 as c_char; 512];
        // SAFETY: prov_errno and err_data come from the entry just read from this queue; buf
        // is writable for its length. The returned pointer is NULL, buf, or a string owned by
        // the provider that lives at least until the next call on this queue.
        let prov_text = unsafe {
            let p = sys::fi_cq_strerror(
                self.inner.ptr.as_ptr(),
                entry.prov_errno,
                entry.err_data,
                buf.as_mut_ptr(),
                buf.len(),
            );
            if p.is_null() {
                String::new()
            } else {
                CStr::from_ptr(p).to_string_lossy().into_owned()
            }
        };
        let code = entry.err.abs();
        Ok(Some(CqError {
            op_context: entry.op_context,
            error: CompletionError {
                code,
                text: strerror(code),
                prov_errno: entry.prov_errno,
                prov_text,
            },
        }))
    }

    pub(crate) fn as_fid(&self) -> *mut sys::fid {
        // SAFETY: fid_cq begins with its fid, and the CQ is open while self exists.
        unsafe { ptr::addr_of_mut!((*self.inner.ptr.as_ptr()).fid) }
    }
}

impl From<CqError> for Error {
    fn from(e: CqError) -> Self {
        Error::Call {
            call: "completion",
            code: e.error.code,
            text: e.error.to_string(),
        }
    }
}

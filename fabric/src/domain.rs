use std::ptr::{self, NonNull};
use std::sync::Arc;

use fabric_sys as sys;

use crate::error::{check, Result};
use crate::info::Info;

/// Closes a libfabric object, logging (not panicking) if the provider refuses: `Drop` has no
/// caller to report to, and a refused close leaks one object rather than corrupting anything.
pub(crate) fn close_fid(what: &'static str, fid: *mut sys::fid) {
    // SAFETY: callers pass the fid of an object they own and never use it again.
    let ret = unsafe { sys::fi_close(fid) };
    if ret != 0 {
        tracing::warn!(object = what, error = %crate::error::strerror(-ret), "fi_close failed");
    }
}

struct FabricInner {
    ptr: NonNull<sys::fid_fabric>,
}

// SAFETY: objects are opened with FI_THREAD_SAFE (see Hints), so the provider serialises
// concurrent calls on them itself.
unsafe impl Send for FabricInner {}
// SAFETY: as for Send.
unsafe impl Sync for FabricInner {}

impl Drop for FabricInner {
    fn drop(&mut self) {
        // SAFETY: fid_fabric begins with its fid; every domain holds an Arc to this, so none is
        // left open when this runs.
        close_fid("fabric", unsafe {
            ptr::addr_of_mut!((*self.ptr.as_ptr()).fid)
        });
    }
}

/// An open fabric (`fi_fabric`): the provider's view of one network.
#[derive(Clone)]
pub struct Fabric {
    inner: Arc<FabricInner>,
}

impl Fabric {
    pub fn open(info: &Info) -> Result<Fabric> {
        let mut ptr = ptr::null_mut();
        // SAFETY: fabric_attr of a valid info is valid; ptr is a valid out pointer.
        let ret =
            unsafe { sys::fi_fabric((*info.as_ptr()).fabric_attr, &mut ptr, ptr::null_mut()) };
        check("fi_fabric", ret as isize)?;
        Ok(Fabric {
            inner: Arc::new(FabricInner {
                ptr: NonNull::new(ptr).expect("fi_fabric succeeded with NULL"),
            }),
        })
    }
}

struct DomainInner {
    ptr: NonNull<sys::fid_domain>,
    info: Info,
    // Declared after ptr: the fabric is released only after this domain is closed.
    _fabric: Fabric,
}

// SAFETY: opened with FI_THREAD_SAFE; see FabricInner.
unsafe impl Send for DomainInner {}
// SAFETY: as for Send.
unsafe impl Sync for DomainInner {}

impl Drop for DomainInner {
    fn drop(&mut self) {
        // SAFETY: fid_domain begins with its fid; every child holds an Arc to this, so all are
        // closed already.
        close_fid("domain", unsafe {
            ptr::addr_of_mut!((*self.ptr.as_ptr()).fid)
        });
    }
}

/// An open access domain (`fi_domain`): one device (one EFA NIC, one IP interface).
#[derive(Clone)]
pub struct Domain {
    inner: Arc<DomainInner>,
}

impl Domain {
    /// Opens the fabric and the domain that `info` describes.
    pub fn open(info: Info) -> Result<Domain> {
        let fabric = Fabric::open(&info)?;
        let mut ptr = ptr::null_mut();
        // SAFETY: the fabric is open, info is valid for the call, ptr is a valid out pointer.
        let ret = unsafe {
            sys::fi_domain(
                fabric.inner.ptr.as_ptr(),
                info.as_ptr(),
                &mut ptr,
                ptr::null_mut(),
            )
        };
        check("fi_domain", ret as isize)?;
        Ok(Domain {
            inner: Arc::new(DomainInner {
                ptr: NonNull::new(ptr).expect("fi_domain succeeded with NULL"),
                info,
                _fabric: fabric,
            }),
        })
    }

    pub fn info(&self) -> &Info {
        &self.inner.info
    }

    pub(crate) fn as_ptr(&self) -> *mut sys::fid_domain {
        self.inner.ptr.as_ptr()
    }
}

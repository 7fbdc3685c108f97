use std::os::raw::c_char;
use std::ptr::{self, NonNull};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use fabric_sys as sys;

use crate::address::EndpointAddress;
use crate::domain::{close_fid, Domain};
use crate::error::{check, Error, Result};

/// A peer's handle in an address vector (`fi_addr_t`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FabricAddr(pub(crate) sys::fi_addr_t);

impl FabricAddr {
    pub fn raw(self) -> u64 {
        self.0
    }
}

struct AvInner {
    ptr: NonNull<sys::fid_av>,
    entries: AtomicUsize,
    _domain: Domain,
}

// SAFETY: opened with FI_THREAD_SAFE, so the provider serialises access.
unsafe impl Send for AvInner {}
// SAFETY: as for Send.
unsafe impl Sync for AvInner {}

impl Drop for AvInner {
    fn drop(&mut self) {
        // SAFETY: fid_av begins with its fid; endpoints bound to it hold an Arc, so they are
        // closed first.
        close_fid("address vector", unsafe {
            ptr::addr_of_mut!((*self.ptr.as_ptr()).fid)
        });
    }
}

/// An address vector (`fi_av_open`): the table of peers an endpoint can send to.
#[derive(Clone)]
pub struct AddressVector {
    inner: Arc<AvInner>,
}

impl AddressVector {
    /// Opens an address vector sized for `expected_count` peers. The count is a hint; a
    /// provider that refuses it (shm takes at most 256) is asked again with its own default.
    pub fn open(domain: &Domain, expected_count: usize) -> Result<AddressVector> {
        let mut ptr = ptr::null_mut();
        let mut ret = 0;
        for count in [expected_count, 0] {
            let mut attr = sys::fi_av_attr {
                type_: sys::fi_av_type_FI_AV_UNSPEC,
                count,
                ..Default::default()
            };
            // SAFETY: the domain is open, attr and ptr are valid for the call.
            ret = unsafe { sys::fi_av_open(domain.as_ptr(), &mut attr, &mut ptr, ptr::null_mut()) };
            let refused_size = ret == -(sys::FI_ENOSYS as i32) || ret == -(sys::FI_EINVAL as i32);
            if !refused_size || count == 0 {
                break;
            }
        }
        check("fi_av_open", ret as isize)?;
        Ok(AddressVector {
            inner: Arc::new(AvInner {
                ptr: NonNull::new(ptr).expect("fi_av_open succeeded with NULL"),
                entries: AtomicUsize::new(0),
                _domain: domain.clone(),
            }),
        })
    }

    /// Inserts one raw address. The caller (the endpoint) has checked its length against the
    /// provider's address format, because libfabric reads as many bytes as the format implies.
    pub(crate) fn insert_checked(&self, addr: &[u8]) -> Result<FabricAddr> {
        let mut out: sys::fi_addr_t = sys::FI_ADDR_NOTAVAIL;
        // SAFETY: addr holds a complete address of the provider's format (checked by the
        // caller), out is valid for one fi_addr_t, and no context is used (synchronous AV).
        let ret = unsafe {
            sys::fi_av_insert(
                self.inner.ptr.as_ptr(),
                addr.as_ptr().cast(),
                1,
                &mut out,
                0,
                ptr::null_mut(),
            )
        };
        check("fi_av_insert", ret as isize)?;
        if ret != 1 || out == sys::FI_ADDR_NOTAVAIL {
            return Err(Error::Invalid(
                "fi_av_insert rejected the address (malformed for this provider)".into(),
            ));
        }
        self.inner.entries.fetch_add(1, Ordering::Relaxed);
        Ok(FabricAddr(out))
    }

    pub fn remove(&self, addr: FabricAddr) -> Result<()> {
        let mut raw = addr.0;
        // SAFETY: raw is valid for one fi_addr_t for the duration of the call.
        let ret = unsafe { sys::fi_av_remove(self.inner.ptr.as_ptr(), &mut raw, 1, 0) };
        check("fi_av_remove", ret as isize)?;
        self.inner.entries.fetch_sub(1, Ordering::Relaxed);
        Ok(())
    }

    /// Entries inserted and not yet removed.
    pub fn len(&self) -> usize {
        self.inner.entries.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The provider's printable form of a raw address (`fi_av_straddr`), for logs and the API.
    pub(crate) fn straddr_checked(&self, addr: &[u8]) -> String {
        let mut buf = [0 as c_char; 256];
        let mut len = buf.len();
        // SAFETY: addr is a complete address (checked by the caller); buf and len describe a
        // writable buffer; fi_av_straddr writes at most len bytes, NUL-terminated.
        let out = unsafe {
            sys::fi_av_straddr(
                self.inner.ptr.as_ptr(),
                addr.as_ptr().cast(),
                buf.as_mut_ptr(),
                &mut len,
            )
        };
        if out.is_null() {
            return EndpointAddress::from(addr).to_hex();
        }
        // SAFETY: fi_av_straddr NUL-terminates within buf (truncating if needed).
        let s = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) };
        s.to_string_lossy().into_owned()
    }

    pub(crate) fn as_fid(&self) -> *mut sys::fid {
        // SAFETY: fid_av begins with its fid, and the AV is open while self exists.
        unsafe { ptr::addr_of_mut!((*self.inner.ptr.as_ptr()).fid) }
    }
}

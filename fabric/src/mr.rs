use std::alloc::{self, Layout};
use std::os::raw::c_void;
use std::ptr::{self, NonNull};

use fabric_sys as sys;

use crate::domain::{close_fid, Domain};
use crate::error::{check, Error, Result};

/// A page-aligned buffer and, when the provider's `mr_mode` asks for it (`FI_MR_LOCAL`), its
/// registration (`fi_mr_reg`). The buffer is owned here so that it is freed only after the
/// registration is closed.
///
/// Memory is handed out as raw pointers to posted operations, and read back as slices only
/// for ranges no operation is using; the [`Endpoint`](crate::Endpoint) keeps that bookkeeping.
pub struct MemoryRegion {
    // Field order is drop order: the registration closes before the memory is freed.
    mr: Option<NonNull<sys::fid_mr>>,
    desc: *mut c_void,
    base: NonNull<u8>,
    layout: Layout,
    _domain: Domain,
}

// SAFETY: the buffer is owned by this value; the registration was opened with FI_THREAD_SAFE.
unsafe impl Send for MemoryRegion {}

const PAGE: usize = 4096;

impl MemoryRegion {
    /// Allocates `len` zeroed bytes and, with `register` (callers pass true when the
    /// domain requires local registration), registers them for `access` (`FI_SEND`,
    /// `FI_RECV`). `key` must be unique in the domain unless the provider chooses keys itself.
    pub fn allocate(
        domain: &Domain,
        len: usize,
        access: u64,
        key: u64,
        register: bool,
    ) -> Result<Self> {
        let layout = Layout::from_size_align(len.max(1).next_multiple_of(PAGE), PAGE)
            .map_err(|e| Error::Invalid(format!("buffer of {len} bytes: {e}")))?;
        // SAFETY: layout has a non-zero size.
        let base = NonNull::new(unsafe { alloc::alloc_zeroed(layout) })
            .ok_or_else(|| Error::Invalid(format!("cannot allocate {len} bytes")))?;
        let mut region = MemoryRegion {
            mr: None,
            desc: ptr::null_mut(),
            base,
            layout,
            _domain: domain.clone(),
        };
        if register {
            let requested_key = if domain.info().provider_keys() {
                0
            } else {
                key
            };
            let mut mr = ptr::null_mut();
            // SAFETY: base..base+size is a live allocation owned by `region`, which closes the
            // registration (in Drop) before freeing it; mr is a valid out pointer.
            let ret = unsafe {
                sys::fi_mr_reg(
                    domain.as_ptr(),
                    base.as_ptr().cast(),
                    layout.size(),
                    access,
                    0,
                    requested_key,
                    0,
                    &mut mr,
                    ptr::null_mut(),
                )
            };
            check("fi_mr_reg", ret as isize)?;
            let mr = NonNull::new(mr).expect("fi_mr_reg succeeded with NULL");
            region.mr = Some(mr);
            // SAFETY: mr is a registration just opened.
            region.desc = unsafe { sys::fi_mr_desc(mr.as_ptr()) };
        }
        Ok(region)
    }

    /// The descriptor to pass with operations on this memory (NULL when not registered).
    pub(crate) fn desc(&self) -> *mut c_void {
        self.desc
    }

    pub fn is_registered(&self) -> bool {
        self.mr.is_some()
    }

    pub fn len(&self) -> usize {
        self.layout.size()
    }

    pub fn is_empty(&self) -> bool {
        false
    }

    /// Pointer to byte `offset`. Panics if out of bounds.
    pub(crate) fn ptr_at(&self, offset: usize) -> *mut u8 {
        assert!(offset < self.layout.size(), "offset {offset} out of bounds");
        // SAFETY: offset is within the allocation (checked above).
        unsafe { self.base.as_ptr().add(offset) }
    }
}

impl Drop for MemoryRegion {
    fn drop(&mut self) {
        if let Some(mr) = self.mr.take() {
            // SAFETY: fid_mr begins with its fid; the endpoint that used this memory is closed
            // before its regions are dropped.
            close_fid("memory region", unsafe {
                ptr::addr_of_mut!((*mr.as_ptr()).fid)
            });
        }
        // SAFETY: base was allocated with this layout and is freed once, after deregistration.
        unsafe { alloc::dealloc(self.base.as_ptr(), self.layout) }
    }
}

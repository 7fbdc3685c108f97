use std::ffi::{CStr, CString};
use std::net::SocketAddr;
use std::os::raw::c_char;
use std::ptr::{self, NonNull};

use fabric_sys as sys;

use crate::error::{check, Error, Result};

/// What to ask `fi_getinfo` for: reliable-datagram messaging on one provider.
#[derive(Debug, Clone, Default)]
pub struct Query {
    /// Provider name as libfabric spells it (`efa`, `tcp`, `udp;ofi_rxd`, `shm`); `None` asks
    /// every provider.
    pub provider: Option<String>,
    /// Local address to bind to, for providers that run over IP (`tcp`, `udp`). EFA and shm
    /// ignore it.
    pub node: Option<String>,
    /// Transmit and receive queue depths to ask for (`tx_attr.size`, `rx_attr.size`); `None`
    /// takes the provider's defaults. Providers size their internal pools by them, so an
    /// endpoint that keeps few operations in flight costs less memory with small ones.
    pub queue_sizes: Option<(usize, usize)>,
}

impl Query {
    pub fn provider(name: &str) -> Self {
        Query {
            provider: Some(name.to_owned()),
            node: None,
            queue_sizes: None,
        }
    }

    /// Asks for queues of these depths (see [`Query::queue_sizes`]).
    pub fn queue_sizes(mut self, tx: usize, rx: usize) -> Self {
        self.queue_sizes = Some((tx, rx));
        self
    }

    pub fn bind(mut self, node: Option<&str>) -> Self {
        self.node = node.map(str::to_owned);
        self
    }

    fn describe(&self) -> String {
        format!(
            "provider {} at {}",
            self.provider.as_deref().unwrap_or("(any)"),
            self.node.as_deref().unwrap_or("(any address)")
        )
    }
}

/// The list `fi_getinfo` returns, freed with `fi_freeinfo`.
pub struct InfoList {
    head: NonNull<sys::fi_info>,
}

// SAFETY: the list is plain heap data owned by this value; libfabric keeps no reference to it
// and nothing else mutates it, so it may move between and be read from any thread.
unsafe impl Send for InfoList {}
// SAFETY: see Send; all access through &InfoList is read-only.
unsafe impl Sync for InfoList {}

impl InfoList {
    /// Asks libfabric for RDM endpoints with send/receive messaging that match `query`.
    ///
    /// The request carries the API version of the headers this build was compiled against,
    /// so a newer libfabric at run time keeps to the layouts and semantics compiled here.
    ///
    /// On providers whose report of each message's sender is trusted (see
    /// [`Info::reports_source`]) `FI_SOURCE` is asked for, and done without if refused.
    pub fn get(query: &Query) -> Result<InfoList> {
        let source = query
            .provider
            .as_deref()
            .is_some_and(source_report_verified);
        match InfoList::get_with(query, source) {
            Err(Error::NoProvider { .. }) if source => InfoList::get_with(query, false),
            found => found,
        }
    }

    fn get_with(query: &Query, source: bool) -> Result<InfoList> {
        let hints = Hints::rdm_messaging(query.provider.as_deref(), query.queue_sizes, source)?;
        let node = query
            .node
            .as_deref()
            .map(CString::new)
            .transpose()
            .map_err(|_| Error::Invalid("bind address contains a NUL byte".into()))?;
        let flags = if node.is_some() { sys::FI_SOURCE } else { 0 };
        let mut head: *mut sys::fi_info = ptr::null_mut();
        // SAFETY: hints is a valid fi_info from fi_allocinfo, node is NULL or a NUL-terminated
        // string that outlives the call, service is NULL, and head is a valid out pointer.
        let ret = unsafe {
            sys::fi_getinfo(
                sys::FI_COMPILED_VERSION,
                node.as_ref().map_or(ptr::null(), |n| n.as_ptr()),
                ptr::null(),
                flags,
                hints.0.as_ptr(),
                &mut head,
            )
        };
        if ret == -(sys::FI_ENODATA as i32) || (ret == 0 && head.is_null()) {
            return Err(Error::NoProvider {
                query: query.describe(),
                detail: "fi_getinfo returned no match (provider absent, no device, or it \
                         lacks RDM send/receive)"
                    .into(),
            });
        }
        check("fi_getinfo", ret as isize)?;
        Ok(InfoList {
            head: NonNull::new(head).expect("fi_getinfo succeeded with a NULL list"),
        })
    }

    pub fn iter(&self) -> impl Iterator<Item = InfoRef<'_>> {
        let mut next = Some(self.head);
        std::iter::from_fn(move || {
            let cur = next?;
            // SAFETY: every node of the list is a valid fi_info until fi_freeinfo in Drop,
            // which cannot run while `self` is borrowed.
            let info = unsafe { cur.as_ref() };
            next = NonNull::new(info.next);
            Some(InfoRef { info })
        })
    }

    /// One entry per distinct domain (device), in libfabric's order of preference.
    pub fn per_domain(&self) -> Vec<InfoRef<'_>> {
        let mut seen = Vec::new();
        let mut out = Vec::new();
        for info in self.iter() {
            let key = (info.provider_name(), info.domain_name());
            if !seen.contains(&key) {
                seen.push(key);
                out.push(info);
            }
        }
        out
    }
}

impl Drop for InfoList {
    fn drop(&mut self) {
        // SAFETY: head came from fi_getinfo and is freed exactly once, here.
        unsafe { sys::fi_freeinfo(self.head.as_ptr()) }
    }
}

/// A borrowed entry of an [`InfoList`].
#[derive(Clone, Copy)]
pub struct InfoRef<'a> {
    info: &'a sys::fi_info,
}

impl<'a> InfoRef<'a> {
    pub fn provider_name(&self) -> String {
        // SAFETY: fabric_attr is set on every entry fi_getinfo returns.
        let attr = unsafe { &*self.info.fabric_attr };
        cstr(attr.prov_name)
    }

    pub fn fabric_name(&self) -> String {
        // SAFETY: as in provider_name.
        let attr = unsafe { &*self.info.fabric_attr };
        cstr(attr.name)
    }

    pub fn domain_name(&self) -> String {
        // SAFETY: domain_attr is set on every entry fi_getinfo returns.
        let attr = unsafe { &*self.info.domain_attr };
        cstr(attr.name)
    }

    /// The local socket address the entry binds to, for providers that run over IP
    /// (`FI_SOCKADDR*` formats; queried with a node address and `FI_SOURCE`, it is that
    /// address); `None` for other formats or no source address.
    pub fn source_address(&self) -> Option<SocketAddr> {
        let info = self.info;
        let ip_format = [sys::FI_SOCKADDR, sys::FI_SOCKADDR_IN, sys::FI_SOCKADDR_IN6]
            .contains(&(info.addr_format as _));
        if !ip_format || info.src_addr.is_null() || info.src_addrlen == 0 {
            return None;
        }
        // SAFETY: src_addr points to src_addrlen bytes owned by the entry, which `self`
        // borrows; they are only read, within this call.
        let raw =
            unsafe { std::slice::from_raw_parts(info.src_addr.cast::<u8>(), info.src_addrlen) };
        crate::stray_filter::socket_addr_of(raw)
    }

    /// Owned copy, which outlives the list.
    pub fn to_owned(&self) -> Result<Info> {
        // SAFETY: info is a valid fi_info; fi_dupinfo deep-copies it or returns NULL.
        let dup = unsafe { sys::fi_dupinfo(self.info) };
        NonNull::new(dup)
            .map(|ptr| Info { ptr })
            .ok_or(Error::Call {
                call: "fi_dupinfo",
                code: libc::ENOMEM,
                text: "out of memory".into(),
            })
    }
}

/// One `fi_info`, owned (a deep copy made by `fi_dupinfo`).
pub struct Info {
    ptr: NonNull<sys::fi_info>,
}

// SAFETY: as for InfoList: plain heap data that this value alone owns.
unsafe impl Send for Info {}
// SAFETY: as for InfoList; &Info only reads.
unsafe impl Sync for Info {}

impl Info {
    pub(crate) fn as_ptr(&self) -> *mut sys::fi_info {
        self.ptr.as_ptr()
    }

    fn get(&self) -> &sys::fi_info {
        // SAFETY: ptr is valid until Drop.
        unsafe { self.ptr.as_ref() }
    }

    fn view(&self) -> InfoRef<'_> {
        InfoRef { info: self.get() }
    }

    pub fn provider_name(&self) -> String {
        self.view().provider_name()
    }

    pub fn fabric_name(&self) -> String {
        self.view().fabric_name()
    }

    pub fn domain_name(&self) -> String {
        self.view().domain_name()
    }

    /// True when the provider needs local buffers registered (`FI_MR_LOCAL`, or the older
    /// `FI_LOCAL_MR` mode bit).
    pub fn needs_local_mr(&self) -> bool {
        let info = self.get();
        // SAFETY: domain_attr is set on every entry fi_getinfo returns.
        let mr_mode = unsafe { (*info.domain_attr).mr_mode } as u64;
        mr_mode & sys::FI_MR_LOCAL as u64 != 0 || info.mode & sys::FI_LOCAL_MR != 0
    }

    /// Whether memory keys are chosen by the provider; otherwise the caller picks unique keys.
    pub fn provider_keys(&self) -> bool {
        // SAFETY: as in needs_local_mr.
        let mr_mode = unsafe { (*self.get().domain_attr).mr_mode } as u64;
        mr_mode & sys::FI_MR_PROV_KEY as u64 != 0
    }

    /// Whether completions of received messages name their sender (`FI_SOURCE`), and the
    /// provider's naming is one this crate trusts: the address-vector handle of the sender,
    /// or none for a sender that is not in the address vector.
    pub fn reports_source(&self) -> bool {
        self.get().caps & sys::FI_SOURCE != 0 && source_report_verified(&self.provider_name())
    }

    /// Largest message the endpoint accepts.
    pub fn max_msg_size(&self) -> usize {
        // SAFETY: ep_attr is set on every entry fi_getinfo returns.
        unsafe { (*self.get().ep_attr).max_msg_size }
    }

    /// Transmit and receive queue depths the provider advertises.
    pub fn queue_sizes(&self) -> (usize, usize) {
        let info = self.get();
        // SAFETY: tx_attr and rx_attr are set on every entry fi_getinfo returns.
        unsafe { ((*info.tx_attr).size, (*info.rx_attr).size) }
    }
}

impl Drop for Info {
    fn drop(&mut self) {
        // SAFETY: ptr came from fi_dupinfo and is freed once, here.
        unsafe { sys::fi_freeinfo(self.ptr.as_ptr()) }
    }
}

/// Providers whose `FI_SOURCE` report was checked here (`fabric/tests/providers.rs`): in
/// libfabric 1.17 `tcp;ofi_rxm` names senders right; `udp;ofi_rxd` names every sender
/// handle 0, and shm names a sender outside the address vector handle 0, which would let a
/// stranger pass for the first peer inserted. EFA is not on the list until it is checked on
/// a device.
fn source_report_verified(provider: &str) -> bool {
    provider.split(';').next() == Some("tcp")
}

/// Hints for fi_getinfo, allocated by libfabric so that `fi_freeinfo` can free them.
struct Hints(NonNull<sys::fi_info>);

impl Hints {
    fn rdm_messaging(
        provider: Option<&str>,
        queues: Option<(usize, usize)>,
        source: bool,
    ) -> Result<Hints> {
        // SAFETY: fi_dupinfo(NULL) is fi_allocinfo: a zeroed fi_info with zeroed attribute
        // structures, or NULL.
        let raw = unsafe { sys::fi_dupinfo(ptr::null()) };
        let hints = Hints(NonNull::new(raw).ok_or(Error::Invalid("fi_allocinfo failed".into()))?);
        // SAFETY: the attribute pointers of an fi_allocinfo result are valid and owned by it.
        // prov_name must be malloc'd because fi_freeinfo frees it.
        unsafe {
            let h = &mut *hints.0.as_ptr();
            h.caps = sys::FI_MSG as u64;
            if source {
                h.caps |= sys::FI_SOURCE;
            }
            // Every operation is given a context of the size FI_CONTEXT2 asks for.
            h.mode = sys::FI_CONTEXT | sys::FI_CONTEXT2;
            (*h.ep_attr).type_ = sys::fi_ep_type_FI_EP_RDM;
            if let Some((tx, rx)) = queues {
                (*h.tx_attr).size = tx;
                (*h.rx_attr).size = rx;
            }
            (*h.domain_attr).threading = sys::fi_threading_FI_THREAD_SAFE;
            (*h.domain_attr).mr_mode = (sys::FI_MR_LOCAL
                | sys::FI_MR_VIRT_ADDR
                | sys::FI_MR_ALLOCATED
                | sys::FI_MR_PROV_KEY) as i32;
            if let Some(name) = provider {
                let c = CString::new(name)
                    .map_err(|_| Error::Invalid("provider name contains a NUL byte".into()))?;
                (*h.fabric_attr).prov_name = libc::strdup(c.as_ptr());
            }
        }
        Ok(hints)
    }
}

impl Drop for Hints {
    fn drop(&mut self) {
        // SAFETY: allocated by fi_dupinfo(NULL) and freed once; fi_freeinfo also frees the
        // strdup'd provider name.
        unsafe { sys::fi_freeinfo(self.0.as_ptr()) }
    }
}

fn cstr(p: *const c_char) -> String {
    if p.is_null() {
        return String::new();
    }
    // SAFETY: non-NULL strings in fi_info are NUL-terminated and live as long as the info.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

use std::cell::UnsafeCell;
use std::net::SocketAddr;
use std::ops::Range;
use std::os::raw::c_void;
use std::ptr::{self, NonNull};

use fabric_sys as sys;

use crate::address::EndpointAddress;
use crate::av::{AddressVector, FabricAddr};
use crate::cq::{CompletionQueue, CqError, CqRead};
use crate::domain::{close_fid, Domain};
use crate::error::{check, CompletionError, Error, Result};
use crate::mr::MemoryRegion;
use crate::stray_filter::{self, StrayFilterError};

/// The provider whose endpoints get a filter against malformed datagrams.
const RXD_OVER_UDP: &str = "udp;ofi_rxd";

/// Sizes of an endpoint's buffer pools.
#[derive(Debug, Clone, Copy)]
pub struct EndpointConfig {
    /// Largest message sent or received, in bytes.
    pub slot_size: usize,
    /// Sends in flight at most.
    pub tx_slots: usize,
    /// Receives kept posted.
    pub rx_slots: usize,
    /// Expected number of peers (a hint to the address vector).
    pub av_size: usize,
    /// Register the buffers even when the provider does not ask for it (`FI_MR_LOCAL`), to
    /// exercise the registration path on providers that do not need it.
    pub always_register: bool,
}

impl Default for EndpointConfig {
    fn default() -> Self {
        EndpointConfig {
            slot_size: 8192,
            tx_slots: 128,
            rx_slots: 64,
            av_size: 1024,
            always_register: false,
        }
    }
}

/// Identifies one send until its completion.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SendId(u64);

/// One thing [`Endpoint::poll`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The send completed: the provider is done with it.
    Sent(SendId),
    /// The send failed, with the provider's reason.
    SendFailed(SendId, CompletionError),
    /// A message arrived; its bytes are this range of the caller's receive buffer.
    Received {
        data: Range<usize>,
        /// Its sender's handle, on an endpoint that [reports sources](Endpoint::reports_source)
        /// and when the sender is in the address vector; `None` otherwise.
        from: Option<FabricAddr>,
    },
    /// A posted receive failed (its buffer is posted again).
    ReceiveFailed(CompletionError),
}

/// Fixed-size slots of one registered buffer, each with the operation context libfabric
/// requires (`FI_CONTEXT2`) at a stable address.
struct SlotPool {
    // Drop order: the region (registration, then memory) goes with the contexts, after the
    // endpoint that used them has been closed in Endpoint::drop.
    mem: MemoryRegion,
    contexts: Box<[UnsafeCell<sys::fi_context2>]>,
    slot_size: usize,
    /// Slots no operation is using.
    free: Vec<u32>,
    /// Bumped each time a slot is handed out, so a stale SendId never matches.
    generation: Box<[u32]>,
}

impl SlotPool {
    fn new(
        domain: &Domain,
        (slots, slot_size): (usize, usize),
        access: u64,
        key: u64,
        always_register: bool,
    ) -> Result<Self> {
        let register = always_register || domain.info().needs_local_mr();
        let mem = MemoryRegion::allocate(domain, slots * slot_size, access, key, register)?;
        let contexts = (0..slots)
            .map(|_| UnsafeCell::new(sys::fi_context2::default()))
            .collect();
        Ok(SlotPool {
            mem,
            contexts,
            slot_size,
            free: (0..slots as u32).rev().collect(),
            generation: vec![0; slots].into_boxed_slice(),
        })
    }

    fn buf(&self, slot: u32) -> *mut u8 {
        self.mem.ptr_at(slot as usize * self.slot_size)
    }

    fn context(&self, slot: u32) -> *mut c_void {
        self.contexts[slot as usize].get().cast()
    }

    /// Maps a context pointer from a completion back to its slot; `None` if it is not one of
    /// this pool's.
    fn slot_of(&self, ctx: *mut c_void) -> Option<u32> {
        let base = self.contexts.as_ptr() as usize;
        let size = std::mem::size_of::<UnsafeCell<sys::fi_context2>>();
        let offset = (ctx as usize).checked_sub(base)?;
        let slot = offset / size;
        (offset % size == 0 && slot < self.contexts.len()).then_some(slot as u32)
    }

    fn send_id(&self, slot: u32) -> SendId {
        SendId((u64::from(self.generation[slot as usize]) << 32) | u64::from(slot))
    }

    /// Copies the first `len` bytes of a slot that no operation is using.
    fn copy_out(&self, slot: u32, len: usize, out: &mut Vec<u8>) {
        let len = len.min(self.slot_size);
        // SAFETY: the slot's receive has completed, so the provider no longer writes to it
        // until it is posted again, and slot*slot_size+len is within the region.
        let bytes = unsafe { std::slice::from_raw_parts(self.buf(slot), len) };
        out.extend_from_slice(bytes);
    }
}

/// A reliable-datagram endpoint (`fi_endpoint`, `FI_EP_RDM`) bound to its own address vector
/// and one completion queue for both its sends and its receives, with a pool of receives
/// always posted.
///
/// One queue, not one per direction: each read of a queue drives the provider's progress on
/// the endpoint (rxd reads its UDP socket and runs its timers), so a poll with sends in flight
/// and a second queue paid for that twice.
///
/// Every buffer and context a posted operation points at is owned here and outlives the
/// endpoint's `fi_close`, which runs first in `Drop`.
pub struct Endpoint {
    ptr: NonNull<sys::fid_ep>,
    // Dropped after `ptr` is closed, in this order: memory, queues, AV, domain.
    tx: SlotPool,
    rx: SlotPool,
    /// Receive slots that could not be posted yet (the provider said FI_EAGAIN).
    rx_unposted: Vec<u32>,
    cq: CompletionQueue,
    av: AddressVector,
    domain: Domain,
    name: EndpointAddress,
    /// The provider's address format (`FI_SOCKADDR_IN`, `FI_ADDR_EFA`, `FI_ADDR_STR`, ...).
    addr_format: u32,
    completions: Vec<sys::fi_cq_msg_entry>,
    /// On `udp;ofi_rxd`: whether malformed datagrams are filtered out before rxd reads them
    /// (see [`Endpoint::stray_filter`]).
    stray_filter: Option<std::result::Result<SocketAddr, StrayFilterError>>,
    /// Senders of the receive completions read (`FI_SOURCE`), when the provider reports them.
    sources: Option<Vec<sys::fi_addr_t>>,
}

// SAFETY: every libfabric object here was opened with FI_THREAD_SAFE, and the slot pools are
// owned memory; moving the endpoint to another thread is sound. It is not Sync: all
// operations take &mut self.
unsafe impl Send for Endpoint {}

impl Endpoint {
    /// Opens, binds and enables an endpoint on `domain` and posts its receives.
    pub fn open(domain: &Domain, config: EndpointConfig) -> Result<Endpoint> {
        let info = domain.info();
        if config.slot_size == 0 || config.tx_slots == 0 || config.rx_slots == 0 {
            return Err(Error::Invalid("endpoint pools must be non-empty".into()));
        }
        if config.slot_size > info.max_msg_size() {
            return Err(Error::Invalid(format!(
                "message size {} exceeds the provider's maximum {}",
                config.slot_size,
                info.max_msg_size()
            )));
        }
        let (tx_depth, rx_depth) = info.queue_sizes();
        let tx_slots = config.tx_slots.min(tx_depth.max(1));
        let rx_slots = config.rx_slots.min(rx_depth.max(1));

        let av = AddressVector::open(domain, config.av_size)?;
        let cq = CompletionQueue::open(domain, (tx_slots + rx_slots) * 2)?;
        let reg = config.always_register;
        let tx = SlotPool::new(
            domain,
            (tx_slots, config.slot_size),
            sys::FI_SEND as u64,
            1,
            reg,
        )?;
        let rx = SlotPool::new(
            domain,
            (rx_slots, config.slot_size),
            sys::FI_RECV as u64,
            2,
            reg,
        )?;

        let mut raw = ptr::null_mut();
        // SAFETY: the domain is open and info is the one it was opened with; raw is a valid
        // out pointer.
        let ret =
            unsafe { sys::fi_endpoint(domain.as_ptr(), info.as_ptr(), &mut raw, ptr::null_mut()) };
        check("fi_endpoint", ret as isize)?;
        let mut ep = Endpoint {
            ptr: NonNull::new(raw).expect("fi_endpoint succeeded with NULL"),
            tx,
            rx,
            rx_unposted: Vec::new(),
            cq,
            av,
            domain: domain.clone(),
            name: EndpointAddress::default(),
            addr_format: 0,
            completions: vec![sys::fi_cq_msg_entry::default(); 32],
            stray_filter: None,
            sources: info
                .reports_source()
                .then(|| vec![sys::FI_ADDR_NOTAVAIL; 32]),
        };
        // From here on `ep` owns the endpoint and closes it on any error below.
        ep.bind(ep.av.as_fid(), 0, "fi_ep_bind(av)")?;
        ep.bind(
            ep.cq.as_fid(),
            (sys::FI_TRANSMIT | sys::FI_RECV) as u64,
            "fi_ep_bind(cq)",
        )?;
        // SAFETY: the endpoint is open and bound to its AV and CQs.
        check("fi_enable", unsafe { sys::fi_enable(ep.ptr.as_ptr()) }
            as isize)?;
        ep.name = ep.read_name()?;
        if info.provider_name() == RXD_OVER_UDP {
            ep.stray_filter = Some(stray_filter::attach_for(&ep.name));
            match &ep.stray_filter {
                Some(Ok(addr)) => tracing::debug!(%addr, "rxd: malformed datagrams filtered"),
                Some(Err(e)) => tracing::warn!(
                    error = %e,
                    "rxd: malformed datagrams are not filtered; one can crash libfabric's rxd"
                ),
                None => {}
            }
        }
        // SAFETY: info is valid; addr_format is a plain field.
        ep.addr_format = unsafe { (*info.as_ptr()).addr_format };
        ep.rx_unposted = (0..ep.rx.contexts.len() as u32).collect();
        ep.post_receives()?;
        Ok(ep)
    }

    fn bind(&self, fid: *mut sys::fid, flags: u64, call: &'static str) -> Result<()> {
        // SAFETY: both objects are open and belong to the same domain.
        let ret = unsafe { sys::fi_ep_bind(self.ptr.as_ptr(), fid, flags) };
        check(call, ret as isize).map(drop)
    }

    fn read_name(&self) -> Result<EndpointAddress> {
        let mut buf = vec![0u8; 256];
        let mut len = buf.len();
        // SAFETY: buf is writable for len bytes; fi_getname writes at most len bytes and sets
        // len to the name's size. The endpoint begins with its fid.
        let ret = unsafe {
            sys::fi_getname(
                ptr::addr_of_mut!((*self.ptr.as_ptr()).fid),
                buf.as_mut_ptr().cast(),
                &mut len,
            )
        };
        check("fi_getname", ret as isize)?;
        buf.truncate(len);
        Ok(EndpointAddress::new(buf))
    }

    /// This endpoint's fabric address, to publish to peers.
    pub fn name(&self) -> &EndpointAddress {
        &self.name
    }

    /// On `udp;ofi_rxd`, whether the endpoint's UDP socket drops datagrams that do not hold
    /// an rxd header (empty, short, another protocol's) before rxd reads them, which would
    /// crash it: the socket's address, or why the filter is not there. `None` on other
    /// providers. A well-formed header naming an unknown peer still crashes rxd.
    pub fn stray_filter(&self) -> Option<&std::result::Result<SocketAddr, StrayFilterError>> {
        self.stray_filter.as_ref()
    }

    pub fn domain(&self) -> &Domain {
        &self.domain
    }

    /// Whether the buffers are registered with the provider (`fi_mr_reg`).
    pub fn buffers_registered(&self) -> bool {
        self.tx.mem.is_registered() && self.rx.mem.is_registered()
    }

    /// Whether received messages name their sender (see [`Event::Received`]).
    pub fn reports_source(&self) -> bool {
        self.sources.is_some()
    }

    /// Largest message [`send`](Self::send) takes.
    pub fn max_message(&self) -> usize {
        self.tx.slot_size
    }

    /// Peers currently in the address vector.
    pub fn peer_count(&self) -> usize {
        self.av.len()
    }

    /// Checks that `addr` is a whole, usable address of this provider's format, before it
    /// reaches libfabric: libfabric reads as many bytes as the format implies (so a short
    /// address would be read past), and a malformed one can break the provider (on rxd, one
    /// failed `fi_av_insert` of an all-zero address broke later sends). Socket addresses must
    /// be of this endpoint's family and length, name a port and not the unspecified address;
    /// EFA addresses must be as long as this endpoint's and name a GID.
    pub fn check_address(&self, addr: &[u8]) -> Result<()> {
        let checked = match self.addr_format {
            sys::FI_ADDR_STR => {
                // A NUL-terminated string with no NUL inside.
                let ok = addr.len() > 1
                    && addr.len() <= 256
                    && addr.last() == Some(&0)
                    && !addr[..addr.len() - 1].contains(&0);
                ok.then_some(())
                    .ok_or_else(|| "not a NUL-terminated name".to_owned())
            }
            _ if addr.len() != self.name.len() => Err(format!(
                "{} bytes (this endpoint's address has {})",
                addr.len(),
                self.name.len()
            )),
            sys::FI_SOCKADDR | sys::FI_SOCKADDR_IN | sys::FI_SOCKADDR_IN6 => {
                check_sockaddr(addr, &self.name)
            }
            // efa_ep_addr: a 16-byte GID, then the queue pair number and key.
            sys::FI_ADDR_EFA if addr.iter().take(16).all(|b| *b == 0) => {
                Err("its GID is zero".to_owned())
            }
            _ => Ok(()),
        };
        checked.map_err(|why| Error::Invalid(format!("fabric address refused: {why}")))
    }

    /// Adds a peer by its raw fabric address.
    pub fn insert_peer(&mut self, addr: &[u8]) -> Result<FabricAddr> {
        self.check_address(addr)?;
        self.av.insert_checked(addr)
    }

    /// Removes a peer. Sends still in flight to it complete (possibly in error) as usual.
    pub fn remove_peer(&mut self, addr: FabricAddr) -> Result<()> {
        self.av.remove(addr)
    }

    /// The provider's printable form of an address (`fi_av_straddr`).
    pub fn display_address(&self, addr: &[u8]) -> String {
        match self.check_address(addr) {
            Ok(()) => self.av.straddr_checked(addr),
            Err(_) => EndpointAddress::from(addr).to_hex(),
        }
    }

    /// Sends `data` to `dest`. The bytes are copied into a registered slot that stays owned
    /// until its completion is read by [`poll`](Self::poll).
    ///
    /// Returns `Err(e)` with `e.is_again()` when the provider needs progress first.
    pub fn send(&mut self, dest: FabricAddr, data: &[u8]) -> Result<SendId> {
        if data.len() > self.tx.slot_size {
            return Err(Error::Invalid(format!(
                "message of {} bytes exceeds slot size {}",
                data.len(),
                self.tx.slot_size
            )));
        }
        let slot = self
            .tx
            .free
            .pop()
            .ok_or(Error::TxBusy(self.tx.contexts.len()))?;
        let buf = self.tx.buf(slot);
        // SAFETY: the slot is free (no operation points at it) and slot_size bytes long, and
        // data.len() <= slot_size.
        unsafe { ptr::copy_nonoverlapping(data.as_ptr(), buf, data.len()) };
        // SAFETY: buf and the context belong to a slot owned by this endpoint until its
        // completion (or until the endpoint is closed, before the memory is freed); desc
        // matches the region; dest came from this endpoint's AV.
        let ret = unsafe {
            sys::fi_send(
                self.ptr.as_ptr(),
                buf.cast(),
                data.len(),
                self.tx.mem.desc(),
                dest.0,
                self.tx.context(slot),
            )
        };
        if ret < 0 {
            self.tx.free.push(slot);
            return Err(Error::from_code("fi_send", ret));
        }
        self.tx.generation[slot as usize] = self.tx.generation[slot as usize].wrapping_add(1);
        Ok(self.tx.send_id(slot))
    }

    /// Receive buffers the endpoint has.
    pub fn receive_slots(&self) -> usize {
        self.rx.contexts.len()
    }

    /// Receive buffers currently posted (all of them, unless the provider said FI_EAGAIN).
    pub fn receives_posted(&self) -> usize {
        self.rx.contexts.len() - self.rx_unposted.len()
    }

    /// Sends in flight (not yet completed).
    pub fn sends_in_flight(&self) -> usize {
        self.tx.contexts.len() - self.tx.free.len()
    }

    fn post_receives(&mut self) -> Result<()> {
        while let Some(&slot) = self.rx_unposted.last() {
            // SAFETY: the slot is not posted; its buffer and context are owned by this
            // endpoint and outlive its fi_close; desc matches the region.
            let ret = unsafe {
                sys::fi_recv(
                    self.ptr.as_ptr(),
                    self.rx.buf(slot).cast(),
                    self.rx.slot_size,
                    self.rx.mem.desc(),
                    fabric_sys::FI_ADDR_NOTAVAIL,
                    self.rx.context(slot),
                )
            };
            if ret == -(sys::FI_EAGAIN as isize) {
                break;
            }
            check("fi_recv", ret)?;
            self.rx_unposted.pop();
        }
        Ok(())
    }

    /// Reads the completion queue until it is empty (each read drives the provider's
    /// progress), appending what happened to `events`. Received bytes are appended to
    /// `rx_data`, and each `Event::Received` names its range there. Receive buffers are posted
    /// again at once. Returns the number of events appended.
    pub fn poll(&mut self, events: &mut Vec<Event>, rx_data: &mut Vec<u8>) -> Result<usize> {
        let before = events.len();
        loop {
            let read = self
                .cq
                .read(&mut self.completions, self.sources.as_deref_mut())?;
            match read {
                CqRead::Entries(0) => break,
                CqRead::Entries(n) => {
                    for i in 0..n {
                        self.take(i, events, rx_data);
                    }
                }
                CqRead::ErrorAvailable => {
                    if let Some(err) = self.cq.read_error()? {
                        self.take_error(err, events);
                    }
                }
            }
        }
        self.post_receives()?;
        Ok(events.len() - before)
    }

    /// Turns the `i`th completion just read into an event: a send's slot is free again, a
    /// receive's is queued for posting again.
    fn take(&mut self, i: usize, events: &mut Vec<Event>, rx_data: &mut Vec<u8>) {
        let entry = self.completions[i];
        if let Some(slot) = self.tx.slot_of(entry.op_context) {
            events.push(Event::Sent(self.tx.send_id(slot)));
            self.tx.free.push(slot);
        } else if let Some(slot) = self.rx.slot_of(entry.op_context) {
            let start = rx_data.len();
            self.rx.copy_out(slot, entry.len, rx_data);
            let from = self
                .sources
                .as_ref()
                .map(|s| s[i])
                .filter(|a| *a != sys::FI_ADDR_NOTAVAIL)
                .map(FabricAddr);
            events.push(Event::Received {
                data: start..rx_data.len(),
                from,
            });
            self.rx_unposted.push(slot);
        }
    }

    fn take_error(&mut self, err: CqError, events: &mut Vec<Event>) {
        if let Some(slot) = self.tx.slot_of(err.op_context) {
            events.push(Event::SendFailed(self.tx.send_id(slot), err.error));
            self.tx.free.push(slot);
        } else {
            // A receive's, or one without a context of ours: either way a receive failed.
            if let Some(slot) = self.rx.slot_of(err.op_context) {
                self.rx_unposted.push(slot);
            }
            events.push(Event::ReceiveFailed(err.error));
        }
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        // SAFETY: the endpoint is open; after this no operation touches the slot memory,
        // which the fields dropped next free.
        close_fid("endpoint", unsafe {
            ptr::addr_of_mut!((*self.ptr.as_ptr()).fid)
        });
    }
}

/// A socket address (`sockaddr_in` or `sockaddr_in6`, as IP providers name endpoints) that
/// is of `own`'s family, names a port and is not the unspecified address. The caller has
/// checked that `addr` is as long as `own`.
fn check_sockaddr(addr: &[u8], own: &[u8]) -> std::result::Result<(), String> {
    let family = |a: &[u8]| a.get(..2).map(|f| u16::from_ne_bytes([f[0], f[1]]));
    let (theirs, ours) = (family(addr), family(own));
    if theirs != ours {
        return Err(format!(
            "address family {:#06x}, not this endpoint's {:#06x}",
            theirs.unwrap_or(0),
            ours.unwrap_or(0)
        ));
    }
    // Both layouts: family (2), port (2, network order); the IPv4 address follows, the IPv6
    // one after a 4-byte flow label.
    let ip = match i32::from(theirs.unwrap_or(0)) {
        libc::AF_INET => addr.get(4..8),
        libc::AF_INET6 => addr.get(8..24),
        other => return Err(format!("address family {other:#06x} is not IP")),
    };
    let Some(ip) = ip else {
        return Err(format!("{} bytes is too short for its family", addr.len()));
    };
    if addr[2..4] == [0, 0] {
        return Err("port 0".to_owned());
    }
    if ip.iter().all(|b| *b == 0) {
        return Err("the unspecified address".to_owned());
    }
    Ok(())
}

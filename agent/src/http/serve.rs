//! The HTTP server's accept loop and connections, bounded so that no client can starve the
//! agent of file descriptors.
//!
//! `axum::serve` holds a connection for as long as its client likes: a client that connects
//! and sends nothing, or drips a header a byte at a time, keeps a descriptor, and enough of
//! them make `accept` (and the agent's own probes) fail with "Too many open files". Here:
//!
//! - **Header-read timeout**: a request head must be complete within
//!   [`ServeLimits::header_read_timeout`] of the connection's accept (first request) or of its
//!   first byte (later requests). This closes connections that never send a request, too.
//! - **Idle timeout**: a kept-alive connection with no request and no bytes moving for
//!   [`ServeLimits::idle_timeout`] is closed (also a client that stops reading a response).
//! - **A bound on connections** below the descriptor limit ([`ServeLimits::for_open_files`]),
//!   so descriptors are left for probing. At the bound, a new connection is not refused: the
//!   connection that has waited longest without a request in progress is closed for it, so
//!   the kubelet's `/healthz` and Prometheus's scrape get in however many idle or slow
//!   clients hold the rest.
//!
//! Connections are served by hyper's HTTP/1 connection driver, with keep-alive; hyper's own
//! header timer is not used because it also starts on every wait between keep-alive requests,
//! which would make the idle timeout and the header-read timeout one and the same.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use hyper::body::Incoming;
use hyper::service::Service as _;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify, Semaphore};
use tokio::task::JoinSet;

/// Time for a request head to arrive in full: generous for any real client on a node's
/// network (a head is a few hundred bytes), short against a client that holds a descriptor.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a kept-alive connection may wait for its next request: longer than a 15 s
/// Prometheus scrape interval, so a scraper keeps its connection between scrapes.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(20);
/// Descriptors kept out of the server's reach for probing (hello fetches, target checks,
/// fabric endpoints), discovery, logs and `/proc` reads: at least this many, or a quarter of
/// the limit when that is more.
pub const RESERVED_DESCRIPTORS: u64 = 256;
/// Most connections held at once, whatever the descriptor limit (about 5.5 KiB each).
pub const MAX_CONNECTIONS: usize = 1024;
/// Fewest connections allowed, even under an absurdly low descriptor limit.
const MIN_CONNECTIONS: usize = 8;
/// How long graceful shutdown waits for requests in progress.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);
/// At the bound, how long a new connection waits for the closed one's descriptor.
const WAIT_FOR_A_SLOT: Duration = Duration::from_secs(1);
/// After `accept` fails for want of descriptors, wait this long before the next try.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// While a request is in progress, how often its connection's timeouts are looked at.
const IN_FLIGHT_RECHECK_MS: u64 = 250;
/// At most one log line per this interval about connections closed to make room.
const EVICTION_LOG_EVERY: Duration = Duration::from_secs(10);

/// The server's bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServeLimits {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
}

impl ServeLimits {
    /// The default timeouts, and a connection bound that leaves
    /// [`RESERVED_DESCRIPTORS`] (or a quarter of `limit`) of the soft `RLIMIT_NOFILE` free.
    pub fn for_open_files(limit: u64) -> ServeLimits {
        let reserved = RESERVED_DESCRIPTORS.max(limit / 4);
        let usable = usize::try_from(limit.saturating_sub(reserved)).unwrap_or(usize::MAX);
        ServeLimits {
            max_connections: usable.clamp(MIN_CONNECTIONS, MAX_CONNECTIONS),
            header_read_timeout: HEADER_READ_TIMEOUT,
            idle_timeout: IDLE_TIMEOUT,
        }
    }
}

impl ServeLimits {
    /// Raises this process's soft `RLIMIT_NOFILE` to its hard limit (see
    /// [`fabric::process::raise_open_files_limit`]), then derives the limits from it. Call it
    /// once, at start; a limit that cannot be read or raised is logged, and 1024 (the usual
    /// container default) assumed.
    pub fn after_raising_open_files_limit() -> ServeLimits {
        let soft = match fabric::process::raise_open_files_limit() {
            Ok(limit) => {
                if limit.was != limit.now {
                    tracing::info!(
                        from = limit.was,
                        to = limit.now,
                        "open-files limit raised to the hard limit"
                    );
                }
                limit.now
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot raise the open-files limit");
                fabric::process::open_files_limit().unwrap_or(1024)
            }
        };
        let limits = ServeLimits::for_open_files(soft);
        tracing::info!(
            open_files = soft,
            max_connections = limits.max_connections,
            "HTTP connections bounded below the open-files limit"
        );
        limits
    }
}

/// Serves `router` on `listener` until `shutdown` resolves, then stops accepting, lets
/// requests in progress finish (up to [`SHUTDOWN_GRACE`]) and closes every connection.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ServeLimits,
    shutdown: impl Future<Output = ()>,
) {
    let server = Server {
        limits,
        epoch: Instant::now(),
        slots: Arc::new(Semaphore::new(limits.max_connections)),
        open: Arc::new(Mutex::new(HashMap::new())),
        service: TowerToHyperService::new(router),
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut connections = JoinSet::new();
    let mut next_id = 0u64;
    let mut evictions = EvictionLog::default();
    tokio::pin!(shutdown);
    loop {
        // Reap finished connections so the set holds only live ones.
        while connections.try_join_next().is_some() {}
        let (stream, _) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    accept_failed(&e).await;
                    continue;
                }
            },
        };
        let Some(slot) = server.slot(&mut evictions).await else {
            tracing::warn!(
                limit = limits.max_connections,
                "connection limit reached and every connection is busy: new connection closed"
            );
            continue;
        };
        next_id += 1;
        let connection = server.open(next_id);
        let (shared, stop) = (server.clone_parts(), stop_rx.clone());
        connections.spawn(async move {
            shared.drive(stream, connection, stop).await;
            drop(slot);
        });
    }
    drop(listener);
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while connections.join_next().await.is_some() {}
    });
    if drained.await.is_err() {
        tracing::warn!(
            left = connections.len(),
            "connections still open after the shutdown grace: closed"
        );
        connections.abort_all();
    }
}

/// `accept` failed: a client that gave up before it was accepted is nothing; running out of
/// descriptors is worth a line and a pause, not a spin.
async fn accept_failed(e: &io::Error) {
    let out_of_descriptors = matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE));
    if out_of_descriptors {
        tracing::warn!(error = %e, "cannot accept a connection: out of file descriptors");
        tokio::time::sleep(ACCEPT_BACKOFF).await;
    } else {
        tracing::debug!(error = %e, "accept failed");
    }
}

/// What the accept loop and every connection share.
struct Server {
    limits: ServeLimits,
    /// Times in a connection's [`Activity`] are milliseconds since this instant.
    epoch: Instant,
    slots: Arc<Semaphore>,
    open: Arc<Mutex<HashMap<u64, Arc<Connection>>>>,
    service: TowerToHyperService<Router>,
}

impl Server {
    fn clone_parts(&self) -> Server {
        Server {
            limits: self.limits,
            epoch: self.epoch,
            slots: self.slots.clone(),
            open: self.open.clone(),
            service: self.service.clone(),
        }
    }

    fn now(&self) -> u64 {
        millis_since(self.epoch)
    }

    /// A free slot for a new connection; at the bound, closes the longest-waiting connection
    /// without a request in progress and takes its slot. `None` when all are busy.
    async fn slot(&self, log: &mut EvictionLog) -> Option<tokio::sync::OwnedSemaphorePermit> {
        if let Ok(slot) = self.slots.clone().try_acquire_owned() {
            return Some(slot);
        }
        let victim = longest_waiting(&lock(&self.open));
        if let Some(victim) = victim {
            victim.evict.notify_one();
            log.evicted(self.limits.max_connections);
        }
        tokio::time::timeout(WAIT_FOR_A_SLOT, self.slots.clone().acquire_owned())
            .await
            .ok()?
            .ok()
    }

    fn open(&self, id: u64) -> Arc<Connection> {
        let connection = Arc::new(Connection {
            id,
            activity: Activity::accepted(self.now()),
            evict: Notify::new(),
        });
        lock(&self.open).insert(id, connection.clone());
        connection
    }

    /// Serves one connection until it ends, times out, is evicted or shutdown closes it.
    async fn drive(
        &self,
        stream: TcpStream,
        connection: Arc<Connection>,
        mut stop: watch::Receiver<bool>,
    ) {
        let _ = stream.set_nodelay(true);
        let io = TokioIo::new(Watched {
            inner: stream,
            connection: connection.clone(),
            epoch: self.epoch,
        });
        let service = {
            let (service, connection, epoch) =
                (self.service.clone(), connection.clone(), self.epoch);
            hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
                let in_progress = RequestInProgress::start(connection.clone(), epoch);
                let response = service.call(request);
                async move {
                    let response: Result<_, Infallible> = response.await;
                    drop(in_progress);
                    response
                }
            })
        };
        let conn = hyper::server::conn::http1::Builder::new()
            .keep_alive(true)
            .header_read_timeout(None)
            .serve_connection(io, service);
        tokio::pin!(conn);
        let mut stopping = false;
        loop {
            let next_check = self.epoch
                + Duration::from_millis(connection.activity.deadline(&self.limits, self.now()));
            tokio::select! {
                result = conn.as_mut() => {
                    if let Err(e) = result {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                    break;
                }
                _ = connection.evict.notified() => {
                    tracing::debug!(id = connection.id, "closed to make room for a new connection");
                    break;
                }
                _ = stop.wait_for(|s| *s), if !stopping => {
                    // A client still sending its request head is owed nothing.
                    if connection.activity.reading_a_head() {
                        break;
                    }
                    // Finishes a response in progress; a connection between requests
                    // closes at once.
                    conn.as_mut().graceful_shutdown();
                    stopping = true;
                }
                _ = tokio::time::sleep_until(next_check.into()) => {
                    if let Some(why) = connection.activity.expired(&self.limits, self.now()) {
                        tracing::debug!(id = connection.id, why, "connection closed");
                        break;
                    }
                }
            }
        }
        lock(&self.open).remove(&connection.id);
    }
}

/// One open connection, as the accept loop sees it.
struct Connection {
    id: u64,
    activity: Activity,
    evict: Notify,
}

/// The connection in the registry that has waited longest with no request in progress.
fn longest_waiting(open: &HashMap<u64, Arc<Connection>>) -> Option<Arc<Connection>> {
    open.values()
        .filter(|c| c.activity.in_flight.load(Ordering::Acquire) == 0)
        .min_by_key(|c| c.activity.waiting_since.load(Ordering::Acquire))
        .cloned()
}

/// When a connection last did what, in milliseconds since the server's epoch plus one (so
/// that 0 means "not now").
#[derive(Debug, Default)]
struct Activity {
    /// Requests handed to the router and not yet answered.
    in_flight: AtomicU32,
    /// When the request head being read began: the accept for the first request, its first
    /// byte for later ones; 0 while no head is being read.
    head_started: AtomicU64,
    /// When bytes last moved either way.
    last_progress: AtomicU64,
    /// Since when the connection has had no request in progress.
    waiting_since: AtomicU64,
}

impl Activity {
    fn accepted(now: u64) -> Activity {
        let activity = Activity::default();
        activity.head_started.store(now + 1, Ordering::Release);
        activity.last_progress.store(now + 1, Ordering::Release);
        activity.waiting_since.store(now + 1, Ordering::Release);
        activity
    }

    fn read(&self, now: u64) {
        self.last_progress.store(now + 1, Ordering::Release);
        // The first byte of a next request starts its header clock.
        if self.in_flight.load(Ordering::Acquire) == 0 {
            let _ =
                self.head_started
                    .compare_exchange(0, now + 1, Ordering::AcqRel, Ordering::Acquire);
        }
    }

    fn reading_a_head(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) == 0
            && self.head_started.load(Ordering::Acquire) != 0
    }

    fn wrote(&self, now: u64) {
        self.last_progress.store(now + 1, Ordering::Release);
    }

    /// Why the connection must close now, if it must.
    fn expired(&self, limits: &ServeLimits, now: u64) -> Option<&'static str> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        let head_started = self.head_started.load(Ordering::Acquire);
        if head_started != 0 {
            let elapsed = (now + 1).saturating_sub(head_started);
            return (elapsed >= millis(limits.header_read_timeout))
                .then_some("no complete request head within the header-read timeout");
        }
        let quiet = (now + 1).saturating_sub(self.last_progress.load(Ordering::Acquire));
        (quiet >= millis(limits.idle_timeout)).then_some("idle for the idle timeout")
    }

    /// When to look again (milliseconds since the epoch): the earliest moment
    /// [`Activity::expired`] could say yes.
    fn deadline(&self, limits: &ServeLimits, now: u64) -> u64 {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            // Answers take milliseconds; look again soon after this one is done.
            return now + IN_FLIGHT_RECHECK_MS;
        }
        let head_started = self.head_started.load(Ordering::Acquire);
        let at = if head_started != 0 {
            head_started - 1 + millis(limits.header_read_timeout)
        } else {
            self.last_progress.load(Ordering::Acquire) - 1 + millis(limits.idle_timeout)
        };
        at.max(now + 1)
    }
}

/// Held while the router answers a request: the head is complete, the request is in
/// progress, and the connection is neither idle nor evictable.
struct RequestInProgress {
    connection: Arc<Connection>,
    epoch: Instant,
}

impl RequestInProgress {
    fn start(connection: Arc<Connection>, epoch: Instant) -> RequestInProgress {
        let activity = &connection.activity;
        activity.in_flight.fetch_add(1, Ordering::AcqRel);
        activity.head_started.store(0, Ordering::Release);
        RequestInProgress { connection, epoch }
    }
}

impl Drop for RequestInProgress {
    fn drop(&mut self) {
        let now = millis_since(self.epoch) + 1;
        let activity = &self.connection.activity;
        activity.waiting_since.store(now, Ordering::Release);
        activity.last_progress.store(now, Ordering::Release);
        activity.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The connection's socket, noting every byte that moves in its [`Activity`].
struct Watched {
    inner: TcpStream,
    connection: Arc<Connection>,
    epoch: Instant,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.connection.activity.read(millis_since(self.epoch));
        }
        result
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            self.connection.activity.wrote(millis_since(self.epoch));
        }
        result
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            self.connection.activity.wrote(millis_since(self.epoch));
        }
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Counts connections closed to make room, and says so at most every
/// [`EVICTION_LOG_EVERY`].
#[derive(Default)]
struct EvictionLog {
    since_last_line: u64,
    last_line: Option<Instant>,
}

impl EvictionLog {
    fn evicted(&mut self, limit: usize) {
        self.since_last_line += 1;
        if self
            .last_line
            .is_none_or(|t| t.elapsed() >= EVICTION_LOG_EVERY)
        {
            tracing::warn!(
                limit,
                closed = self.since_last_line,
                "connection limit reached: closing the longest-waiting idle connections for new ones"
            );
            self.since_last_line = 0;
            self.last_line = Some(Instant::now());
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX / 2)
}

fn millis_since(epoch: Instant) -> u64 {
    millis(epoch.elapsed())
}

/// A poisoned registry only means a connection task panicked between two plain updates.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
#[path = "serve_tests.rs"]
mod tests;

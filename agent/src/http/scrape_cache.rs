//! One `/metrics` encoding shared by the scrapes that come close together.
//!
//! Encoding walks every series (1.5 ms at 1k peers, 26 ms at 10k in mode `all`; see
//! BENCHMARKS.md). 32 scrapers in parallel once took 110% of a core and delayed the probes
//! enough to turn a peer `degraded`. So encodes run one at a time, off the runtime's worker
//! threads, and a scrape that finds a fresh encoding of its format takes it: at most one
//! encode per format per window, however many clients ask.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::metrics::{ExpositionFormat, Metrics};

/// A body is reused for at least this long: short against Prometheus's scrape interval
/// (seconds), long against a flood.
pub const MIN_REUSE: Duration = Duration::from_millis(100);
/// ...and for this many times as long as it took to encode, so encoding takes at most about
/// 1/21 of a core per format, whatever the registry's size.
const REUSE_PER_ENCODE_TIME: u32 = 20;

/// Why no body could be encoded.
#[derive(Debug, thiserror::Error)]
pub enum ScrapeError {
    /// the encoding task failed
    #[error("encoding the metrics failed: {0}")]
    EncodeFailed(String),
}

/// The last encoding of each format, and the lock that makes encodes one at a time.
#[derive(Default)]
pub struct ScrapeCache {
    latest: tokio::sync::Mutex<Latest>,
    encodes: AtomicU64,
}

#[derive(Default)]
struct Latest {
    open_metrics: Option<Encoding>,
    prometheus_text: Option<Encoding>,
}

impl Latest {
    fn of(&mut self, format: ExpositionFormat) -> &mut Option<Encoding> {
        match format {
            ExpositionFormat::OpenMetrics => &mut self.open_metrics,
            ExpositionFormat::PrometheusText => &mut self.prometheus_text,
        }
    }
}

struct Encoding {
    done: Instant,
    reuse_for: Duration,
    body: Bytes,
}

impl ScrapeCache {
    /// The exposition of `metrics` in `format`: the last one, if it is fresh, else a new
    /// one. Callers that arrive while an encode runs wait for it and share its body.
    pub async fn body(
        &self,
        metrics: &Arc<Metrics>,
        format: ExpositionFormat,
    ) -> Result<Bytes, ScrapeError> {
        let mut latest = self.latest.lock().await;
        if let Some(fresh) = latest
            .of(format)
            .as_ref()
            .filter(|e| e.done.elapsed() < e.reuse_for)
        {
            return Ok(fresh.body.clone());
        }
        let started = Instant::now();
        let metrics = metrics.clone();
        self.encodes.fetch_add(1, Ordering::Relaxed);
        // Off the worker threads: the probes' timing runs on those.
        let body = tokio::task::spawn_blocking(move || Bytes::from(metrics.encode_as(format)))
            .await
            .map_err(|e| ScrapeError::EncodeFailed(e.to_string()))?;
        let took = started.elapsed();
        *latest.of(format) = Some(Encoding {
            done: Instant::now(),
            reuse_for: MIN_REUSE.max(took * REUSE_PER_ENCODE_TIME),
            body: body.clone(),
        });
        Ok(body)
    }

    /// Encodes run so far (for tests and benchmarks).
    pub fn encodes(&self) -> u64 {
        self.encodes.load(Ordering::Relaxed)
    }

    /// How long the last body of `format` is reused, if there is one.
    pub async fn reuse_window(&self, format: ExpositionFormat) -> Option<Duration> {
        self.latest
            .lock()
            .await
            .of(format)
            .as_ref()
            .map(|e| e.reuse_for)
    }
}

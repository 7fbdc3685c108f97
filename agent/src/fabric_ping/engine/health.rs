//! The engine's watch on its own endpoint: whether it has stopped working, so that it is
//! opened anew. Pure: fed the events, asked with the clock.
//!
//! A provider can wedge an endpoint for good (on rxd in libfabric 1.17 one failed
//! `fi_av_insert` broke every later send, and sends to silent addresses hold transmit slots
//! for ever). What that looks like from here: pings go to peers that have answered before, and
//! for `stall_after` no send completes (not even in error) and no pong comes back. One peer
//! that went silent looks the same on rxd (it never fails a send), so reopening backs off:
//! each reopen that brings nothing back doubles the wait before the next, up to
//! `MAX_BACKOFF`.

use std::time::{Duration, Instant};

/// Longest wait between reopens that bring nothing back.
const MAX_BACKOFF: Duration = Duration::from_secs(600);

#[derive(Debug)]
pub(super) struct HealthWatch {
    stall_after: Duration,
    /// The latest send completion (or error completion) or accepted pong.
    last_progress: Instant,
    /// Since when pings to peers that answered before have waited with no progress.
    wanted_since: Option<Instant>,
    /// Wait at least this long after a reopen before the next one.
    backoff: Duration,
    last_reopen: Option<Instant>,
}

impl HealthWatch {
    pub fn new(now: Instant, stall_after: Duration) -> Self {
        HealthWatch {
            stall_after,
            last_progress: now,
            wanted_since: None,
            backoff: stall_after,
            last_reopen: None,
        }
    }

    /// A send completed (even in error: the provider is alive) or a pong was accepted.
    pub fn progress(&mut self, now: Instant) {
        self.last_progress = now;
        self.wanted_since = None;
        if self.last_reopen.is_some() {
            // The endpoint works again: the next stall is met as the first was.
            self.last_reopen = None;
            self.backoff = self.stall_after;
        }
    }

    /// A probe went to a peer that has answered before.
    pub fn wanted(&mut self, now: Instant) {
        self.wanted_since.get_or_insert(now);
    }

    /// Whether the endpoint should be opened anew now.
    pub fn stalled(&self, now: Instant) -> bool {
        let wanted_long = self
            .wanted_since
            .is_some_and(|t| now.saturating_duration_since(t) >= self.stall_after);
        let silent_long = now.saturating_duration_since(self.last_progress) >= self.stall_after;
        let backed_off = self
            .last_reopen
            .is_none_or(|t| now.saturating_duration_since(t) >= self.backoff);
        wanted_long && silent_long && backed_off
    }

    /// The endpoint was opened anew.
    pub fn reopened(&mut self, now: Instant) {
        if self.last_reopen.is_some() {
            self.backoff = (self.backoff * 2).min(MAX_BACKOFF.max(self.stall_after));
        }
        self.last_reopen = Some(now);
        self.wanted_since = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STALL: Duration = Duration::from_secs(10);

    #[test]
    fn a_stall_is_pings_to_answering_peers_with_no_progress_for_the_whole_window() {
        let t0 = Instant::now();
        let mut watch = HealthWatch::new(t0, STALL);
        // Nobody to probe: never stalled, however quiet.
        assert!(!watch.stalled(t0 + STALL * 10));
        watch.wanted(t0 + STALL * 10);
        assert!(!watch.stalled(t0 + STALL * 10), "just started waiting");
        assert!(watch.stalled(t0 + STALL * 11));
        // Any completion or pong means the endpoint works.
        watch.progress(t0 + STALL * 11);
        assert!(!watch.stalled(t0 + STALL * 30));
        watch.wanted(t0 + STALL * 30);
        watch.progress(t0 + STALL * 35);
        assert!(
            !watch.stalled(t0 + STALL * 40),
            "progress within the window"
        );
    }

    #[test]
    fn reopens_that_bring_nothing_back_back_off_and_recovery_resets() {
        let t0 = Instant::now();
        let mut watch = HealthWatch::new(t0, STALL);
        watch.wanted(t0);
        let mut now = t0 + STALL;
        assert!(watch.stalled(now));
        watch.reopened(now);
        let mut waits = Vec::new();
        for _ in 0..8 {
            watch.wanted(now);
            let mut next = now + STALL;
            while !watch.stalled(next) {
                next += Duration::from_secs(1);
            }
            waits.push(next.duration_since(now).as_secs());
            watch.reopened(next);
            now = next;
        }
        assert_eq!(waits, [10, 20, 40, 80, 160, 320, 600, 600]);
        // The peer answers again: the next stall is met after one window.
        watch.progress(now);
        watch.wanted(now);
        assert!(watch.stalled(now + STALL));
    }
}

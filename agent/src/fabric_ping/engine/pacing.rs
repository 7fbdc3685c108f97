//! How often the engine thread polls, and how long it waits between polls: pure decisions
//! from what is outstanding and the clock, tested without a provider.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use super::PingerConfig;

/// What the engine thread does before its next poll.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Wait {
    /// Poll again at once (checking for commands without blocking).
    Spin,
    /// Wait for a command at most this long.
    For(Duration),
    /// Nothing outstanding and nothing to answer: wait for a command.
    Forever,
}

/// What is outstanding, as far as pacing is concerned.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Outstanding {
    /// A second ping's pong is awaited here, or a prober's second ping is expected.
    pub(super) warm: bool,
    /// Probes in flight or sends queued.
    pub(super) probes: bool,
    /// Send completions not reported yet (rxd never completes one on a blackholed path).
    pub(super) sends: bool,
}

/// The first poll period while a pair's first ping waits: its pong comes after the
/// responder's next poll (up to `idle_poll` away), rarely sooner.
const PAIR_BACKOFF: Duration = Duration::from_micros(200);
/// The first poll period while only single pings wait (see [`FabricPinger::reach`](super::FabricPinger::reach)): a late
/// look at their answers costs nothing but a few milliseconds of a result nobody times.
const SINGLE_BACKOFF: Duration = Duration::from_millis(2);

/// How often the engine polls, which is most of what it costs: on this machine a wake-up
/// and a poll cost ~50 µs of CPU, a spinning engine a whole core.
///
/// A probe that measures the RTT is a pair of pings (see [`FabricPinger::probe`](super::FabricPinger::probe)). The first
/// reaches a responder that may be idle and sees it up to `idle_poll` later; the prober
/// meanwhile polls with periods doubling up to `wait_poll`. Once the first pong is back the
/// second ping goes at once, to a responder that has been spinning since it answered the
/// first (the first ping says a second follows), and the prober spins for its pong. So each
/// side spins for microseconds to a fraction of a millisecond per probe, never for the
/// responder's idle latency. A single ping ([`FabricPinger::reach`](super::FabricPinger::reach)) makes nobody spin and
/// is polled for slowly; so is a first ping unanswered after `idle_poll`, which is on a
/// silent path.
#[derive(Debug, Default)]
pub(super) struct Pacing {
    /// Spin until then while something warm is outstanding.
    hot_until: Option<Instant>,
    /// Spin until then regardless (`linger`).
    linger_until: Option<Instant>,
    backoff: Duration,
    /// When the latest first ping of a pair went out.
    last_pair_ping: Option<Instant>,
}

impl Pacing {
    /// A second ping went out, or a first ping was answered: spin for what follows.
    pub(super) fn warm(&mut self, now: Instant, config: &PingerConfig) {
        let until = now + config.warm_spin;
        self.hot_until = Some(self.hot_until.map_or(until, |t| t.max(until)));
    }

    /// A probe's first ping went out; `pair`: a second follows its pong.
    pub(super) fn first_ping_sent(&mut self, now: Instant, pair: bool) {
        if pair {
            self.last_pair_ping = Some(now);
        }
        self.backoff = Duration::ZERO;
    }

    /// A completion or a send: poll soon again.
    pub(super) fn activity(&mut self, now: Instant, config: &PingerConfig) {
        self.backoff = Duration::ZERO;
        if !config.linger.is_zero() {
            self.linger_until = Some(now + config.linger);
        }
    }

    pub(super) fn next(&mut self, now: Instant, out: Outstanding, config: &PingerConfig) -> Wait {
        let hot = out.warm && self.hot_until.is_some_and(|t| now < t);
        if hot || self.linger_until.is_some_and(|t| now < t) {
            self.backoff = Duration::ZERO;
            return Wait::Spin;
        }
        if out.probes {
            // A first pong is due within the responder's idle poll; past that the path is
            // probably silent, and polling fast for it would only burn the CPU.
            let due = self
                .last_pair_ping
                .is_some_and(|t| now.duration_since(t) < config.idle_poll + config.idle_poll / 4);
            let (floor, cap) = if due {
                (PAIR_BACKOFF, config.wait_poll)
            } else {
                (SINGLE_BACKOFF, config.idle_poll / 4)
            };
            self.backoff = (self.backoff * 2).clamp(floor, cap.max(floor));
            return Wait::For(self.backoff);
        }
        self.backoff = Duration::ZERO;
        if config.responder || out.sends {
            Wait::For(config.idle_poll)
        } else {
            Wait::Forever
        }
    }
}

/// What a steady rail (1 and up, [`PingerConfig::rail_poll`]) waits for after a poll: its
/// period, busy or not (`busy`: probes, queued sends or send completions outstanding), so
/// that it never spins and stays in step with the other steady rails; only one that answers
/// nobody and has nothing outstanding sleeps until given a command.
pub(super) fn steady_wait(period: Duration, busy: bool, responder: bool) -> Wait {
    if busy || responder {
        Wait::For(period)
    } else {
        Wait::Forever
    }
}

/// Pairs bounded in number: a stranger's pings can make a responder spin a little, never
/// hold memory.
pub(super) const MAX_EXPECTED_WARM: usize = 1024;

/// Probers' first pings answered here, by (sender, sequence), until their second is due.
#[derive(Debug, Default)]
pub(super) struct ExpectedWarm {
    due: HashMap<(u64, u64), Instant>,
    order: VecDeque<(Instant, (u64, u64))>,
}

impl ExpectedWarm {
    /// The first ping of a pair arrived: its second is expected within `window`.
    pub(super) fn first(&mut self, sender: u64, seq: u64, now: Instant, window: Duration) {
        if self.order.len() < 2 * MAX_EXPECTED_WARM && self.due.len() < MAX_EXPECTED_WARM {
            let until = now + window;
            self.due.insert((sender, seq), until);
            self.order.push_back((until, (sender, seq)));
        }
    }

    /// A ping that is no pair's first arrived: if it is a pair's second, stop waiting.
    pub(super) fn arrived(&mut self, sender: u64, seq: u64) {
        self.due.remove(&(sender, seq));
    }

    /// Forgets pairs whose second ping did not come in time.
    pub(super) fn prune(&mut self, now: Instant) {
        while let Some(&(until, key)) = self.order.front() {
            if until > now {
                break;
            }
            self.order.pop_front();
            if self.due.get(&key) == Some(&until) {
                self.due.remove(&key);
            }
        }
    }

    pub(super) fn pending(&self) -> bool {
        !self.due.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pacing_config() -> PingerConfig {
        PingerConfig::new("udp;ofi_rxd")
    }

    #[test]
    fn an_idle_engine_polls_slowly_and_one_that_answers_nobody_sleeps() {
        let mut config = pacing_config();
        let t0 = Instant::now();
        let mut pacing = Pacing::default();
        let idle = Outstanding::default();
        assert_eq!(pacing.next(t0, idle, &config), Wait::For(config.idle_poll));
        config.responder = false;
        assert_eq!(pacing.next(t0, idle, &config), Wait::Forever);
        // A send the provider never completes (rxd on a blackholed path) is still polled.
        let sends = Outstanding {
            sends: true,
            ..idle
        };
        assert_eq!(pacing.next(t0, sends, &config), Wait::For(config.idle_poll));
    }

    #[test]
    fn a_first_ping_is_polled_for_with_doubling_periods_then_slowly_once_overdue() {
        let config = pacing_config();
        let t0 = Instant::now();
        let mut pacing = Pacing::default();
        pacing.first_ping_sent(t0, true);
        let waiting = Outstanding {
            probes: true,
            ..Outstanding::default()
        };
        let periods: Vec<Wait> = (0..6).map(|_| pacing.next(t0, waiting, &config)).collect();
        let us = Duration::from_micros;
        assert_eq!(
            periods,
            [200, 400, 800, 1000, 1000, 1000].map(|p| Wait::For(us(p))),
            "capped at wait_poll ({:?})",
            config.wait_poll
        );
        // Past the responder's idle poll the path is probably silent.
        let late = t0 + config.idle_poll * 2;
        let mut last = Wait::Spin;
        for _ in 0..12 {
            last = pacing.next(late, waiting, &config);
        }
        assert_eq!(last, Wait::For(config.idle_poll / 4));
        // Activity starts over, from the period for pongs not due yet.
        pacing.activity(late, &config);
        assert_eq!(pacing.next(late, waiting, &config), Wait::For(us(2000)));
        // A new pair's first ping: from the shortest.
        pacing.first_ping_sent(late, true);
        assert_eq!(pacing.next(late, waiting, &config), Wait::For(us(200)));
    }

    #[test]
    fn single_pings_are_polled_for_slowly() {
        let config = pacing_config();
        let t0 = Instant::now();
        let mut pacing = Pacing::default();
        pacing.first_ping_sent(t0, false);
        let waiting = Outstanding {
            probes: true,
            ..Outstanding::default()
        };
        let periods: Vec<Wait> = (0..4).map(|_| pacing.next(t0, waiting, &config)).collect();
        let us = Duration::from_micros;
        assert_eq!(periods, [2000, 4000, 5000, 5000].map(|p| Wait::For(us(p))));
    }

    #[test]
    fn the_engine_spins_only_while_something_warm_is_due() {
        let config = pacing_config();
        let t0 = Instant::now();
        let mut pacing = Pacing::default();
        let warm = Outstanding {
            warm: true,
            probes: true,
            ..Outstanding::default()
        };
        pacing.first_ping_sent(t0, true);
        // Nothing warm yet: a first ping is waited for, not spun on.
        assert!(matches!(pacing.next(t0, warm, &config), Wait::For(_)));
        pacing.warm(t0, &config);
        assert_eq!(pacing.next(t0, warm, &config), Wait::Spin);
        let nearly = t0 + config.warm_spin - Duration::from_micros(1);
        assert_eq!(pacing.next(nearly, warm, &config), Wait::Spin);
        // The awaited answer came: no more spinning, though the window is open.
        let answered = Outstanding {
            warm: false,
            ..warm
        };
        assert!(matches!(pacing.next(t0, answered, &config), Wait::For(_)));
        // It never came: give up spinning when the window closes.
        assert!(matches!(
            pacing.next(t0 + config.warm_spin, warm, &config),
            Wait::For(_)
        ));
    }

    #[test]
    fn a_steady_rail_polls_at_its_period_whatever_it_waits_for() {
        let period = Duration::from_millis(50);
        for (busy, responder) in [(true, true), (true, false), (false, true)] {
            assert_eq!(steady_wait(period, busy, responder), Wait::For(period));
        }
        assert_eq!(steady_wait(period, false, false), Wait::Forever);
    }

    #[test]
    fn lingering_spins_after_traffic_for_its_window() {
        let mut config = pacing_config();
        config.linger = Duration::from_millis(1);
        let t0 = Instant::now();
        let mut pacing = Pacing::default();
        pacing.activity(t0, &config);
        let idle = Outstanding::default();
        assert_eq!(pacing.next(t0, idle, &config), Wait::Spin);
        assert_eq!(
            pacing.next(t0 + config.linger, idle, &config),
            Wait::For(config.idle_poll)
        );
    }

    #[test]
    fn a_responder_waits_for_a_pairs_second_ping_until_it_comes_or_the_window_closes() {
        let t0 = Instant::now();
        let window = Duration::from_millis(5);
        let mut expected = ExpectedWarm::default();
        assert!(!expected.pending());
        expected.first(7, 1, t0, window);
        expected.first(8, 1, t0, window);
        assert!(expected.pending());
        expected.arrived(7, 1);
        assert!(expected.pending(), "8's second ping is still due");
        expected.arrived(8, 1);
        assert!(!expected.pending());
        // A second ping that never comes is forgotten after the window.
        expected.first(7, 2, t0, window);
        expected.prune(t0 + window / 2);
        assert!(expected.pending());
        expected.prune(t0 + window);
        assert!(!expected.pending());
        // A single ping of another prober (no pair) leaves nothing behind.
        expected.arrived(9, 1);
        assert!(!expected.pending());
    }

    #[test]
    fn strangers_pings_cannot_make_a_responder_hold_unbounded_pairs() {
        let t0 = Instant::now();
        let mut expected = ExpectedWarm::default();
        for seq in 0..(3 * MAX_EXPECTED_WARM as u64) {
            expected.first(99, seq, t0, Duration::from_millis(2));
        }
        assert_eq!(expected.due.len(), MAX_EXPECTED_WARM);
        assert!(expected.order.len() <= 2 * MAX_EXPECTED_WARM);
        expected.prune(t0 + Duration::from_millis(2));
        assert!(!expected.pending());
        assert!(expected.order.is_empty());
    }
}

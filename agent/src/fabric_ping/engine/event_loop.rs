//! The engine thread's loop: one thread drives every rail of its group. Commands in (each for
//! one rail, or the group's shutdown), then each rail that is due is polled
//! ([`Rail::service`]) and says when it wants its next poll ([`Rail::plan`]).
//!
//! Pacing is combined across rails: the loop spins while any rail wants to, and otherwise
//! sleeps until the earliest rail is due (or a command comes); a rail is polled when it is
//! due or has just been given a command, not because another rail was. A rail may be polled
//! a little early, by at most an eighth of the period it asked for, so that rails due at about
//! the same time share one wake-up: idle rails all ask for `idle_poll` after the same
//! wake-up, and stay together.
//!
//! Rails 1 and up are steady ([`PingerConfig::rail_poll`](super::PingerConfig::rail_poll)):
//! each asks for the same period after every poll, busy or not, and a command only posts its
//! sends, so they stay together too, and what they cost is set by that period. Their commands
//! do not wake the thread: they wait in the group's [`Mailbox`], taken at every wake-up
//! before the thread sleeps again; the thread tells the mailbox whether a steady poll is
//! scheduled, and only when none is does a poster wake it.

use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use super::mailbox::Mailbox;
use super::pacing::Wait;
use super::rail::Rail;
use super::{Command, RailCommand};

/// How early, as a fraction of the period a rail asked for, it may be polled to share a
/// wake-up with another rail.
const EARLY_FRACTION: u32 = 8;

/// When a rail is due: pure, so that the loop's sharing of wake-ups is tested without a
/// provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Due {
    /// Poll it then; `None`: only when it is given a command.
    at: Option<Instant>,
    /// How much earlier than `at` it may be polled.
    early: Duration,
}

impl Due {
    fn now(now: Instant) -> Due {
        Due {
            at: Some(now),
            early: Duration::ZERO,
        }
    }

    /// What a rail, just polled at `now`, asked for.
    fn after(now: Instant, wait: Wait) -> Due {
        match wait {
            Wait::Spin => Due::now(now),
            Wait::For(period) => Due {
                at: Some(now + period),
                early: period / EARLY_FRACTION,
            },
            Wait::Forever => Due {
                at: None,
                early: Duration::ZERO,
            },
        }
    }

    fn by(&self, now: Instant) -> bool {
        self.at.is_some_and(|at| at <= now + self.early)
    }
}

/// A rail and when it is due.
struct Scheduled {
    rail: Rail,
    due: Due,
}

pub(super) struct Engine {
    rails: Vec<Scheduled>,
    commands: mpsc::Receiver<Command>,
    mailbox: Arc<Mailbox>,
    /// What was taken from the mailbox, being handled (kept for its allocation).
    mail: Vec<(usize, RailCommand)>,
}

impl Engine {
    /// Every rail is due at once: the first poll posts nothing new but reads what came.
    pub(super) fn new(
        rails: Vec<Rail>,
        commands: mpsc::Receiver<Command>,
        mailbox: Arc<Mailbox>,
    ) -> Self {
        let now = Instant::now();
        Engine {
            rails: rails
                .into_iter()
                .map(|rail| Scheduled {
                    rail,
                    due: Due::now(now),
                })
                .collect(),
            commands,
            mailbox,
            mail: Vec::new(),
        }
    }

    pub(super) fn run(mut self) {
        loop {
            self.take_mail();
            let now = Instant::now();
            let earliest = self.rails.iter().filter_map(|s| s.due.at).min();
            let command = match earliest {
                Some(due) if due <= now => self.commands.try_recv().map_err(|e| match e {
                    mpsc::TryRecvError::Empty => None,
                    mpsc::TryRecvError::Disconnected => Some(()),
                }),
                Some(due) => self.commands.recv_timeout(due - now).map_err(|e| match e {
                    mpsc::RecvTimeoutError::Timeout => None,
                    mpsc::RecvTimeoutError::Disconnected => Some(()),
                }),
                None => self.commands.recv().map_err(|_| Some(())),
            };
            let stopping = match command {
                Ok(first) => {
                    let mut stop = self.handle(first);
                    while let Ok(cmd) = self.commands.try_recv() {
                        stop |= self.handle(cmd);
                    }
                    stop
                }
                Err(disconnected) => disconnected.is_some(),
            };
            if stopping {
                break;
            }
            let now = Instant::now();
            for scheduled in &mut self.rails {
                if scheduled.due.by(now) {
                    scheduled.rail.service();
                    let polled = Instant::now();
                    scheduled.due = Due::after(polled, scheduled.rail.plan(polled));
                }
            }
        }
        // Before the rails stop: what was left unanswered for them is dropped (its replies
        // say the engine stopped), and later posts are refused.
        self.mailbox.close();
        for scheduled in &mut self.rails {
            scheduled.rail.stop();
        }
        // Dropping the rails closes each endpoint before its memory and queues.
    }

    /// Handles what the steady rails' handles left in the mailbox, and tells it whether a
    /// steady poll is scheduled (then the thread wakes for it without being woken).
    fn take_mail(&mut self) {
        let ticking = self
            .rails
            .iter()
            .any(|s| s.rail.steady() && s.due.at.is_some());
        let mut mail = std::mem::take(&mut self.mail);
        self.mailbox.take(ticking, &mut mail);
        for (index, command) in mail.drain(..) {
            self.handle(Command::Rail(index, command));
        }
        self.mail = mail;
    }

    /// Hands a command to its rail, which is then polled at once (its answer, or the send
    /// it queued, should not wait for its next poll), or, on a steady rail (1 and up), posts
    /// the sends it queued and keeps its period. Returns whether the group stops.
    fn handle(&mut self, command: Command) -> bool {
        match command {
            Command::Shutdown => true,
            // The loop takes the mailbox before it sleeps again.
            Command::Wake => false,
            Command::Rail(index, command) => {
                // Indices come from handles this group issued: every one is in range.
                if let Some(scheduled) = self.rails.get_mut(index) {
                    scheduled.rail.handle(command);
                    let now = Instant::now();
                    if scheduled.rail.steady() {
                        // Sends now; the poll stays with the other steady rails'.
                        scheduled.rail.send_queued();
                        if scheduled.due.at.is_none() {
                            scheduled.due = Due::after(now, scheduled.rail.plan(now));
                        }
                    } else {
                        scheduled.due = Due::now(now);
                    }
                }
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IDLE: Duration = Duration::from_millis(20);

    /// The loop's wake-up: the earliest rail's time; then every rail due by it is polled.
    fn polled_at_first_wakeup(rails: &[Due]) -> Vec<bool> {
        let wakeup = rails.iter().filter_map(|d| d.at).min().unwrap();
        rails.iter().map(|d| d.by(wakeup)).collect()
    }

    #[test]
    fn idle_rails_polled_one_after_another_share_the_next_wakeup() {
        let t0 = Instant::now();
        // 32 rails polled in turn after one wake-up, each poll taking 20 µs.
        let rails: Vec<Due> = (0..32)
            .map(|i| Due::after(t0 + Duration::from_micros(20 * i), Wait::For(IDLE)))
            .collect();
        assert!(polled_at_first_wakeup(&rails).iter().all(|&p| p));
    }

    #[test]
    fn a_spinning_or_waiting_rail_does_not_make_an_idle_one_poll() {
        let t0 = Instant::now();
        let idle = Due::after(t0, Wait::For(IDLE));
        for busy in [Wait::Spin, Wait::For(Duration::from_micros(200))] {
            let rails = [Due::after(t0, busy), idle];
            assert_eq!(polled_at_first_wakeup(&rails), [true, false], "{busy:?}");
        }
        // Polled early by an eighth of its period at most.
        assert!(!idle.by(t0 + IDLE - IDLE / 8 - Duration::from_micros(1)));
        assert!(idle.by(t0 + IDLE - IDLE / 8));
    }

    #[test]
    fn a_rail_with_nothing_to_answer_is_polled_only_when_given_a_command() {
        let t0 = Instant::now();
        let asleep = Due::after(t0, Wait::Forever);
        assert!(!asleep.by(t0 + Duration::from_secs(3600)));
        assert!(Due::now(t0).by(t0));
    }
}

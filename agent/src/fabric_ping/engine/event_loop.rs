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

use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::pacing::Wait;
use super::rail::Rail;
use super::Command;

/// How early, as a fraction of the period a rail asked for, it may be polled to share a
/// wake-up with another rail.
const EARLY_FRACTION: u32 = 8;

/// A rail and when it is due.
struct Scheduled {
    rail: Rail,
    /// Poll it then; `None`: only when it is given a command.
    due: Option<Instant>,
    /// How much earlier than `due` it may be polled.
    early: Duration,
}

impl Scheduled {
    fn due_by(&self, now: Instant) -> bool {
        self.due.is_some_and(|due| due <= now + self.early)
    }

    /// Asks the rail, just polled, when it wants its next poll.
    fn plan(&mut self, now: Instant) {
        (self.due, self.early) = match self.rail.plan(now) {
            Wait::Spin => (Some(now), Duration::ZERO),
            Wait::For(period) => (Some(now + period), period / EARLY_FRACTION),
            Wait::Forever => (None, Duration::ZERO),
        };
    }
}

pub(super) struct Engine {
    rails: Vec<Scheduled>,
    commands: mpsc::Receiver<Command>,
}

impl Engine {
    /// Every rail is due at once: the first poll posts nothing new but reads what came.
    pub(super) fn new(rails: Vec<Rail>, commands: mpsc::Receiver<Command>) -> Self {
        let now = Instant::now();
        Engine {
            rails: rails
                .into_iter()
                .map(|rail| Scheduled {
                    rail,
                    due: Some(now),
                    early: Duration::ZERO,
                })
                .collect(),
            commands,
        }
    }

    pub(super) fn run(mut self) {
        loop {
            let now = Instant::now();
            let earliest = self.rails.iter().filter_map(|s| s.due).min();
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
                if scheduled.due_by(now) {
                    scheduled.rail.service();
                    scheduled.plan(Instant::now());
                }
            }
        }
        for scheduled in &mut self.rails {
            scheduled.rail.stop();
        }
        // Dropping the rails closes each endpoint before its memory and queues.
    }

    /// Hands a command to its rail, which is then polled at once (its answer, or the send
    /// it queued, should not wait for its next poll). Returns whether the group stops.
    fn handle(&mut self, command: Command) -> bool {
        match command {
            Command::Shutdown => true,
            Command::Rail(index, command) => {
                // Indices come from handles this group issued: every one is in range.
                if let Some(scheduled) = self.rails.get_mut(index) {
                    scheduled.rail.handle(command);
                    scheduled.due = Some(Instant::now());
                    scheduled.early = Duration::ZERO;
                }
                false
            }
        }
    }
}

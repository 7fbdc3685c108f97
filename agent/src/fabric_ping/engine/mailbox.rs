//! Where commands for the steady rails (1 and up) wait for the engine thread, instead of the
//! channel: a send on the channel wakes the thread, and at 32 rails a round's pings woke it
//! for every few commands, on both sides a futex call and a context switch. A steady rail
//! polls every `rail_poll` anyway, so its commands are left here and taken at the thread's
//! next wake-up, at most one `rail_poll` later (a steady rail's ping deadline allows for it:
//! [`rail_deadline_floor`](super::rail_deadline_floor)). Only when no steady poll is
//! scheduled does a poster wake the thread. Adding a peer is not left here: its caller waits
//! for the handle (see `FabricPinger::send`).
//!
//! What waits here is bounded by what the callers have in flight, as on the channel.

use std::sync::Mutex;

use super::RailCommand;

#[derive(Default)]
pub(super) struct Mailbox {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// (rail index, command), in the order posted.
    commands: Vec<(usize, RailCommand)>,
    /// The thread will poll a steady rail, and take these, without being woken.
    ticking: bool,
    /// The thread has stopped: nothing posted would be taken.
    closed: bool,
}

/// What [`Mailbox::post`] asks of the poster.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Posted {
    /// Left for the thread's next steady poll.
    Left,
    /// Left, but no steady poll is scheduled: wake the thread.
    Wake,
}

impl Mailbox {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A poster or the thread that panicked holding the lock left the vector whole.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Leaves `command` for rail `rail`; gives it back if the thread has stopped.
    pub(super) fn post(&self, rail: usize, command: RailCommand) -> Result<Posted, RailCommand> {
        let mut inner = self.lock();
        if inner.closed {
            return Err(command);
        }
        inner.commands.push((rail, command));
        // Under the lock that `take` sets `ticking` under: a thread about to sleep without a
        // steady poll has either taken this command or is woken for it.
        Ok(if inner.ticking {
            Posted::Left
        } else {
            Posted::Wake
        })
    }

    /// The thread, before it sleeps: moves what was left into `into`, and records whether a
    /// steady poll is scheduled (`ticking`: posters then need not wake it).
    pub(super) fn take(&self, ticking: bool, into: &mut Vec<(usize, RailCommand)>) {
        let mut inner = self.lock();
        inner.ticking = ticking;
        into.append(&mut inner.commands);
    }

    /// The thread has stopped: what is left is dropped (its replies then say so), and every
    /// later post is given back.
    pub(super) fn close(&self) {
        let left = {
            let mut inner = self.lock();
            inner.closed = true;
            std::mem::take(&mut inner.commands)
        };
        drop(left);
    }
}

#[cfg(test)]
mod tests {
    use super::super::PeerHandle;
    use super::*;

    fn remove(n: u64) -> RailCommand {
        RailCommand::RemovePeer(PeerHandle(n))
    }

    fn rails_of(taken: &[(usize, RailCommand)]) -> Vec<usize> {
        taken.iter().map(|(r, _)| *r).collect()
    }

    #[test]
    fn a_poster_wakes_the_thread_only_when_no_steady_poll_is_scheduled() {
        let mailbox = Mailbox::default();
        let mut taken = Vec::new();
        // Before the thread first looked, nothing is scheduled.
        assert_eq!(mailbox.post(1, remove(1)).ok(), Some(Posted::Wake));
        mailbox.take(true, &mut taken);
        assert_eq!(rails_of(&taken), [1]);
        assert_eq!(mailbox.post(2, remove(2)).ok(), Some(Posted::Left));
        assert_eq!(mailbox.post(3, remove(3)).ok(), Some(Posted::Left));
        mailbox.take(false, &mut taken);
        assert_eq!(rails_of(&taken), [1, 2, 3], "in the order posted");
        assert_eq!(mailbox.post(1, remove(4)).ok(), Some(Posted::Wake));
    }

    #[test]
    fn after_the_thread_stops_posts_are_given_back_and_what_was_left_is_dropped() {
        let mailbox = Mailbox::default();
        let (reply, answer) = tokio::sync::oneshot::channel();
        let add = RailCommand::AddPeer(fabric::EndpointAddress::from(&[1u8][..]), reply);
        assert!(mailbox.post(1, add).is_ok());
        mailbox.close();
        // The reply's sender went with the command: its receiver hears the engine is gone.
        assert!(answer.blocking_recv().is_err());
        assert!(matches!(
            mailbox.post(1, remove(1)),
            Err(RailCommand::RemovePeer(_))
        ));
        let mut taken = Vec::new();
        mailbox.take(true, &mut taken);
        assert!(taken.is_empty());
    }
}

//! The group a peer's probes are counted under (`efa_probes_total{group}`): the one its
//! hellos name, once they have named it steadily. A peer's first group is taken at once; a
//! change only after [`STABLE_HELLOS`] consecutive hellos over at least [`STABLE_FOR`] named
//! the new one. A peer that rotates its placement group in every hello keeps its first group,
//! and a slower one takes a new name at most once per [`STABLE_FOR`]: no single peer fills
//! the bounded group names (see `metrics::groups`).

use std::time::{Duration, Instant};

/// Consecutive hellos naming a new group before the peer's probes move to it.
pub(super) const STABLE_HELLOS: u32 = 3;
/// How long a new group must have been named, without a change, before the probes move.
pub(super) const STABLE_FOR: Duration = Duration::from_secs(60);

/// A peer's counted group, and the one its hellos name instead, if they do.
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct StableGroup {
    current: Option<String>,
    /// The new group, when its hellos first named it, and in how many hellos in a row.
    candidate: Option<(String, Instant, u32)>,
}

impl StableGroup {
    /// The group counted now.
    pub fn current(&self) -> Option<&str> {
        self.current.as_deref()
    }

    /// Learns the group a hello fetched at `now` names (`None`: the hello names none).
    pub fn observe(&mut self, named: Option<&str>, now: Instant) {
        let Some(named) = named else {
            // A hello without topology says nothing new: the counted group stays.
            return;
        };
        if self.current.is_none() {
            self.current = Some(named.to_owned());
            return;
        }
        if self.current.as_deref() == Some(named) {
            self.candidate = None;
            return;
        }
        match &mut self.candidate {
            Some((group, since, seen)) if group == named => {
                *seen += 1;
                if *seen >= STABLE_HELLOS && now.saturating_duration_since(*since) >= STABLE_FOR {
                    self.current = self.candidate.take().map(|(g, _, _)| g);
                }
            }
            _ => self.candidate = Some((named.to_owned(), now, 1)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn a_rotating_peer_keeps_its_first_group() {
        let start = Instant::now();
        let mut group = StableGroup::default();
        let mut names = std::collections::BTreeSet::new();
        // A new placement group in every hello, one a second for ten minutes.
        for i in 0..600u32 {
            group.observe(Some(&format!("pg:{i}")), start + SECOND * i);
            names.insert(group.current().unwrap().to_owned());
        }
        assert_eq!(names.len(), 1, "{names:?}");
        // Two groups in turn: neither new one is ever steady.
        let mut group = StableGroup::default();
        for i in 0..600u32 {
            let name = ["pg:a", "pg:b", "pg:c"][i as usize % 3];
            group.observe(Some(name), start + SECOND * i);
        }
        assert_eq!(group.current(), Some("pg:a"));
    }

    #[test]
    fn a_steady_move_is_taken_after_a_minute_and_a_few_hellos() {
        let start = Instant::now();
        let mut group = StableGroup::default();
        group.observe(None, start);
        assert_eq!(group.current(), None);
        group.observe(Some("pg:a"), start);
        assert_eq!(group.current(), Some("pg:a"));
        // Named by many hellos within the minute: not yet.
        for i in 1..=59u32 {
            group.observe(Some("pg:b"), start + SECOND * i);
        }
        assert_eq!(group.current(), Some("pg:a"));
        // A hello without topology changes nothing.
        group.observe(None, start + SECOND * 60);
        group.observe(Some("pg:b"), start + SECOND * 61);
        assert_eq!(group.current(), Some("pg:b"));
        // A minute, but too few hellos (one every 30 s): not yet.
        let mut group = StableGroup::default();
        group.observe(Some("pg:a"), start);
        group.observe(Some("pg:b"), start + SECOND);
        group.observe(Some("pg:b"), start + SECOND * 61);
        assert_eq!(group.current(), Some("pg:a"));
        group.observe(Some("pg:b"), start + SECOND * 91);
        assert_eq!(group.current(), Some("pg:b"));
        // Back to the old group: the candidate starts over.
        group.observe(Some("pg:c"), start + SECOND * 100);
        group.observe(Some("pg:b"), start + SECOND * 101);
        group.observe(Some("pg:c"), start + SECOND * 200);
        group.observe(Some("pg:c"), start + SECOND * 201);
        assert_eq!(group.current(), Some("pg:b"));
    }
}

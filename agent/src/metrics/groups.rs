//! The `group` label of `efa_probes_total` and `efa_probe_rtt_seconds`: the peer's topology
//! group as the caller names it (`pg:cluster-a`, `subnet:subnet-0abc`, `unknown`), bounded so
//! a caller cannot grow the families without limit.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::labels::LabelText;

/// Named groups kept as label values at once; a group past them is [`OTHER_GROUP`].
pub const MAX_PROBE_GROUPS: usize = 32;
/// The group of probes of a peer whose topology is not known yet.
pub const UNKNOWN_GROUP: &str = "unknown";
/// Where probes of groups past [`MAX_PROBE_GROUPS`] are counted.
pub const OTHER_GROUP: &str = "other";
/// A named group no probe was counted in for this long gives its name up (and its series
/// go) when a group not named yet is counted: groups that are gone do not keep later ones
/// under `other` until a restart.
pub const GROUP_IDLE_RELEASE: Duration = Duration::from_secs(600);

/// The groups holding a name, each with when a probe was last counted in it.
#[derive(Debug, Default)]
pub(super) struct ProbeGroups {
    named: HashMap<String, Instant>,
    other: bool,
}

/// Where a probe of a group is counted.
#[derive(Debug, PartialEq)]
pub(super) struct Admitted {
    /// The label value.
    pub label: LabelText,
    /// The value is new: its series are to be created at zero.
    pub new: bool,
    /// Names given up (idle for [`GROUP_IDLE_RELEASE`]): their series are to be removed.
    pub released: Vec<LabelText>,
}

impl ProbeGroups {
    /// Where a probe of `group` counted at `now` goes. `other` given by the caller is the
    /// overflow group itself.
    pub fn admit(&mut self, group: &str, now: Instant) -> Admitted {
        if let Some(last) = self.named.get_mut(group) {
            *last = now;
            return Admitted {
                label: LabelText::from(group),
                new: false,
                released: Vec::new(),
            };
        }
        // A group not named yet: the names idle long enough are given up first.
        let mut released = Vec::new();
        self.named.retain(|name, last| {
            let idle = now.saturating_duration_since(*last) >= GROUP_IDLE_RELEASE;
            if idle {
                released.push(LabelText::from(name.as_str()));
            }
            !idle
        });
        if group != OTHER_GROUP && self.named.len() < MAX_PROBE_GROUPS {
            self.named.insert(group.to_owned(), now);
            return Admitted {
                label: LabelText::from(group),
                new: true,
                released,
            };
        }
        let new = !self.other;
        self.other = true;
        Admitted {
            label: LabelText::from(OTHER_GROUP),
            new,
            released,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: Duration = Duration::from_secs(60);

    #[test]
    fn an_idle_group_gives_its_name_up_to_a_new_one() {
        let start = Instant::now();
        let mut groups = ProbeGroups::default();
        for g in 0..MAX_PROBE_GROUPS {
            let admitted = groups.admit(&format!("pg:{g}"), start);
            assert!(admitted.new && admitted.released.is_empty());
        }
        // Full: a later group is other, while the named ones are in use.
        let late = groups.admit("pg:late", start + MINUTE);
        assert_eq!(late.label, LabelText::from(OTHER_GROUP));
        assert!(late.new && late.released.is_empty());
        // pg:0 stays in use; the others go idle.
        for minute in 1..=10 {
            groups.admit("pg:0", start + MINUTE * minute);
        }
        let late = groups.admit("pg:late", start + MINUTE * 10);
        assert_eq!(late.label, LabelText::from("pg:late"));
        assert!(late.new);
        assert_eq!(late.released.len(), MAX_PROBE_GROUPS - 1);
        assert!(!late.released.contains(&LabelText::from("pg:0")));
        // The group in use kept its name; a released one is new again when it comes back.
        assert!(!groups.admit("pg:0", start + MINUTE * 10).new);
        let back = groups.admit("pg:1", start + MINUTE * 11);
        assert_eq!((back.label, back.new), (LabelText::from("pg:1"), true));
    }

    #[test]
    fn a_group_in_use_keeps_its_name() {
        let start = Instant::now();
        let mut groups = ProbeGroups::default();
        groups.admit("pg:a", start);
        // Just under the idle time: nothing is released.
        let b = groups.admit("pg:b", start + GROUP_IDLE_RELEASE - Duration::from_secs(1));
        assert!(b.released.is_empty());
        let c = groups.admit("pg:c", start + GROUP_IDLE_RELEASE);
        assert_eq!(c.released, vec![LabelText::from("pg:a")]);
    }
}

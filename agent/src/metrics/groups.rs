//! The `group` label of `efa_probes_total` and `efa_probe_rtt_seconds`: the peer's topology
//! group as the caller names it (`pg:cluster-a`, `subnet:subnet-0abc`, `unknown`), bounded so
//! a caller cannot grow the families without limit.

use std::collections::HashSet;

use super::labels::LabelText;

/// Named groups kept as label values, first seen first kept; later ones are [`OTHER_GROUP`].
pub const MAX_PROBE_GROUPS: usize = 32;
/// The group of probes of a peer whose topology is not known yet.
pub const UNKNOWN_GROUP: &str = "unknown";
/// Where probes of groups past [`MAX_PROBE_GROUPS`] are counted.
pub const OTHER_GROUP: &str = "other";

/// The groups seen so far. Counters are never removed (a counter that vanishes and comes
/// back reads as a reset), so the cap counts every group since the agent started.
#[derive(Debug, Default)]
pub(super) struct ProbeGroups {
    named: HashSet<String>,
    other: bool,
}

impl ProbeGroups {
    /// The label value `group` is counted under, and whether that value is new (its series
    /// are to be created at zero). `other` given by the caller is the overflow group itself.
    pub fn admit(&mut self, group: &str) -> (LabelText, bool) {
        if self.named.contains(group) {
            return (LabelText::from(group), false);
        }
        if group != OTHER_GROUP && self.named.len() < MAX_PROBE_GROUPS {
            self.named.insert(group.to_owned());
            return (LabelText::from(group), true);
        }
        let new = !self.other;
        self.other = true;
        (LabelText::from(OTHER_GROUP), new)
    }
}

//! Which peers a node probes each round, and when.
//!
//! A full mesh is O(N²): at 5,000 nodes every node would probe 4,999 peers every round. So a
//! node probes at most its budget (`budget` peer probes per second, times the interval) each
//! round:
//!
//! - every peer under **watch** (not healthy, or its verdict is changing), whatever its group,
//!   up to half the capacity: a problem once seen stays in view until it is gone;
//! - its **mesh**: the peers in its own topology group (placement group, else subnet), where
//!   NCCL and MPI jobs run and a dropped path hurts first;
//! - a **sample** of `sample` peers from other groups;
//! - peers whose group is not known yet (**learn**: no hello so far), with what is left.
//!
//! Samples rotate deterministically: each node orders the candidates by a rendezvous hash of
//! (its own key, the peer's key), a permutation of its own, and takes the next window of that
//! order every `rotation` rounds. Every pair is covered within ⌈candidates / window⌉
//! rotations, a peer that joins or leaves moves no other peer's place, and since every node's
//! permutation differs, each peer is watched by about `sample` other-group nodes at any time.
//! A mesh larger than what the budget leaves rotates the same way.
//!
//! When every peer fits in the capacity, every peer is probed every round: small clusters
//! keep the full mesh.
//!
//! Within a round the probes are spread evenly over the spread window in small batches, each
//! at a random point of its slot ([`spread`]), so neither this node nor its peers see bursts.

use std::time::Duration;

/// How peers are chosen and paced.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScheduleConfig {
    /// Peer probes this node starts per second, at most (confirmations come on top, bounded
    /// by the hysteresis). A peer probe is one hello over HTTP and one fabric probe.
    pub budget: f64,
    /// Peers from other topology groups probed each round.
    pub sample: usize,
    /// Rounds a sample is kept before the window moves on: verdicts and loss ratios need
    /// consecutive rounds of the same peers.
    pub rotation: u64,
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        ScheduleConfig {
            budget: 20.0,
            sample: 16,
            rotation: 6,
        }
    }
}

impl ScheduleConfig {
    /// Peers probed per round at most.
    pub fn capacity(&self, interval: Duration) -> usize {
        ((self.budget * interval.as_secs_f64()).floor() as usize).max(1)
    }
}

/// Why a peer is probed this round.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    strum::VariantArray,
    strum::IntoStaticStr,
)]
#[strum(serialize_all = "snake_case")]
pub enum Role {
    /// Not healthy, or its verdict is changing: kept in view whatever its group.
    Watch,
    /// In this node's topology group.
    Mesh,
    /// In another topology group, sampled.
    Sample,
    /// Its group is not known yet (no hello so far).
    Learn,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// A peer as the scheduler sees it.
#[derive(Debug, Clone, Copy)]
pub struct Candidate<'a> {
    pub key: &'a str,
    /// Its topology group, once its hello said.
    pub group: Option<&'a str>,
    /// Not healthy, or changing.
    pub watch: bool,
}

/// The peers to probe this round, in the order they are started.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    pub picks: Vec<(String, Role)>,
    /// Peers per round the budget allows.
    pub capacity: usize,
}

impl Plan {
    pub fn count(&self, role: Role) -> usize {
        self.picks.iter().filter(|(_, r)| *r == role).count()
    }
}

/// Chooses this round's peers. `me` is this node's own key (its name), `round` counts rounds
/// from start-up.
pub fn plan(
    me: &str,
    own_group: Option<&str>,
    peers: &[Candidate<'_>],
    round: u64,
    interval: Duration,
    config: &ScheduleConfig,
) -> Plan {
    let capacity = config.capacity(interval);
    let role_of = |c: &Candidate<'_>| match (c.watch, c.group, own_group) {
        (true, _, _) => Role::Watch,
        (false, None, _) => Role::Learn,
        (false, Some(g), Some(own)) if g == own => Role::Mesh,
        (false, Some(_), _) => Role::Sample,
    };
    let mut by_role: [Vec<&str>; 4] = Default::default();
    let mut ordered: Vec<(u64, &Candidate<'_>)> =
        peers.iter().map(|c| (rendezvous(me, c.key), c)).collect();
    ordered.sort_unstable_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.key.cmp(b.1.key)));
    for (_, c) in &ordered {
        by_role[role_of(c) as usize].push(c.key);
    }
    let [watch, mesh, sample, learn] = by_role;
    if peers.len() <= capacity {
        // Everything fits: the full mesh, in rendezvous order.
        let picks = ordered
            .iter()
            .map(|(_, c)| (c.key.to_owned(), role_of(c)))
            .collect();
        return Plan { picks, capacity };
    }
    let epoch = round / config.rotation.max(1);
    let mut picks: Vec<(String, Role)> = Vec::with_capacity(capacity);
    let take = |keys: &[&str], n: usize, role: Role, picks: &mut Vec<(String, Role)>| {
        picks.extend(window(keys, n, epoch).map(|k| (k.to_owned(), role)));
    };
    take(&watch, capacity / 2, Role::Watch, &mut picks);
    let left = capacity - picks.len();
    // With no group of its own (no instance metadata), a node has no mesh: the sample is
    // what the budget leaves.
    let others = sample.len() + learn.len();
    let sample_quota = match own_group {
        None => left,
        Some(_) => config.sample.min(left).min(others),
    };
    take(&mesh, left - sample_quota, Role::Mesh, &mut picks);
    let left = capacity - picks.len();
    take(&sample, sample_quota.min(left), Role::Sample, &mut picks);
    let left = capacity - picks.len();
    take(&learn, left, Role::Learn, &mut picks);
    Plan { picks, capacity }
}

/// `n` keys from `keys`, the window of rotation `epoch`: consecutive windows tile the list,
/// wrapping around, so every key comes up within ⌈len / n⌉ epochs.
fn window<'a>(keys: &'a [&'a str], n: usize, epoch: u64) -> impl Iterator<Item = &'a str> + 'a {
    let len = keys.len();
    let n = n.min(len);
    let start = if len == 0 {
        0
    } else {
        ((epoch as u128 * n as u128) % len as u128) as usize
    };
    (0..n).map(move |i| keys[(start + i) % len])
}

/// A stable 64-bit hash of the pair (FNV-1a, then a finalizer so that close keys spread).
/// Stable across versions and processes, unlike the standard library's hasher.
pub fn rendezvous(me: &str, peer: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in me.bytes().chain([0xff]).chain(peer.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // splitmix64's finalizer.
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// Start offsets for `n` probes spread evenly over `window` in batches of `batch`: batch
/// `b` starts at a random point of its own slot (`jitter` in [0, 1), from the caller's random
/// source). Batches rather than single probes because a fabric engine pays per poll, not per
/// probe: the probes of a batch share the polls that wait for their answers.
pub fn spread(
    n: usize,
    window: Duration,
    batch: usize,
    mut jitter: impl FnMut() -> f64,
) -> Vec<Duration> {
    let batch = batch.max(1);
    let slots = n.div_ceil(batch);
    if slots == 0 {
        return Vec::new();
    }
    let slot = window.as_secs_f64() / slots as f64;
    let starts: Vec<Duration> = (0..slots)
        .map(|i| Duration::from_secs_f64(slot * (i as f64 + jitter().clamp(0.0, 0.999_999))))
        .collect();
    (0..n).map(|i| starts[i / batch]).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap, BTreeSet};

    const SECOND: Duration = Duration::from_secs(1);

    fn config(budget: f64, sample: usize, rotation: u64) -> ScheduleConfig {
        ScheduleConfig {
            budget,
            sample,
            rotation,
        }
    }

    fn names(prefix: &str, n: usize) -> Vec<String> {
        (0..n).map(|i| format!("{prefix}-{i:04}")).collect()
    }

    fn candidates<'a>(keys: &'a [String], group: Option<&'a str>) -> Vec<Candidate<'a>> {
        keys.iter()
            .map(|k| Candidate {
                key: k,
                group,
                watch: false,
            })
            .collect()
    }

    fn keys_of(plan: &Plan, role: Role) -> BTreeSet<String> {
        plan.picks
            .iter()
            .filter(|(_, r)| *r == role)
            .map(|(k, _)| k.clone())
            .collect()
    }

    #[test]
    fn a_small_cluster_keeps_its_full_mesh() {
        let same = names("a", 10);
        let other = names("b", 5);
        let mut peers = candidates(&same, Some("pg:a"));
        peers.extend(candidates(&other, Some("pg:b")));
        let plan = plan(
            "me",
            Some("pg:a"),
            &peers,
            0,
            5 * SECOND,
            &config(20.0, 2, 6),
        );
        assert_eq!(plan.capacity, 100);
        assert_eq!(plan.picks.len(), 15);
        assert_eq!(plan.count(Role::Mesh), 10);
        assert_eq!(plan.count(Role::Sample), 5, "all of them, not just 2");
    }

    #[test]
    fn a_large_cluster_gets_its_mesh_and_a_sample_within_the_budget() {
        let same = names("a", 40);
        let other = names("b", 4960);
        let mut peers = candidates(&same, Some("pg:a"));
        peers.extend(candidates(&other, Some("subnet:x")));
        let cfg = config(20.0, 16, 6);
        let p = plan("a-9999", Some("pg:a"), &peers, 0, 5 * SECOND, &cfg);
        assert_eq!(p.picks.len(), 56, "40 mesh + 16 sampled");
        assert_eq!(keys_of(&p, Role::Mesh), same.iter().cloned().collect());
        assert_eq!(p.count(Role::Sample), 16);
        assert!(keys_of(&p, Role::Sample)
            .iter()
            .all(|k| k.starts_with("b-")));
    }

    #[test]
    fn samples_rotate_every_rotation_rounds_and_cover_every_peer() {
        let other = names("b", 100);
        let peers = candidates(&other, Some("pg:b"));
        let mesh_key = vec!["a-1".to_owned()];
        let mut all = candidates(&mesh_key, Some("pg:a"));
        all.extend(peers);
        let cfg = config(2.0, 8, 3); // capacity 10: 1 mesh + 8 sampled
        let at = |round| plan("a-0", Some("pg:a"), &all, round, 5 * SECOND, &cfg);
        assert_eq!(at(0), at(1), "kept for `rotation` rounds");
        assert_eq!(at(0), at(2));
        assert_ne!(keys_of(&at(2), Role::Sample), keys_of(&at(3), Role::Sample));
        // Consecutive windows do not overlap, and 13 rotations (100 / 8, rounded up) cover all.
        assert!(keys_of(&at(0), Role::Sample).is_disjoint(&keys_of(&at(3), Role::Sample)));
        let mut seen = BTreeSet::new();
        for rotation in 0..13 {
            seen.extend(keys_of(&at(rotation * 3), Role::Sample));
        }
        assert_eq!(seen.len(), 100);
    }

    #[test]
    fn every_node_samples_differently_so_every_peer_is_watched() {
        // 200 nodes in 20 groups of 10, each probing its mesh (9) and 4 sampled: every node
        // is sampled by some other group's node in round 0, and by about 4 on average.
        let all = names("n", 200);
        let group_of = |k: &str| format!("g{}", k[2..].parse::<usize>().unwrap() / 10);
        let groups: Vec<String> = all.iter().map(|k| group_of(k)).collect();
        let cfg = config(2.6, 4, 6); // capacity 13 = 9 mesh + 4 sampled
        let mut watchers: BTreeMap<&str, usize> = BTreeMap::new();
        for me in &all {
            let peers: Vec<Candidate<'_>> = all
                .iter()
                .zip(&groups)
                .filter(|(k, _)| *k != me)
                .map(|(k, g)| Candidate {
                    key: k,
                    group: Some(g),
                    watch: false,
                })
                .collect();
            let own = group_of(me);
            let p = plan(me, Some(&own), &peers, 0, 5 * SECOND, &cfg);
            assert_eq!(p.count(Role::Mesh), 9);
            assert_eq!(p.count(Role::Sample), 4);
            for k in keys_of(&p, Role::Sample) {
                *watchers
                    .entry(all.iter().find(|a| **a == k).unwrap())
                    .or_default() += 1;
            }
        }
        let covered = watchers.len();
        let max = *watchers.values().max().unwrap();
        assert!(covered >= 190, "only {covered} of 200 sampled by someone");
        assert!(
            max <= 15,
            "one peer sampled by {max} nodes: the hash is lopsided"
        );
    }

    #[test]
    fn unhealthy_peers_stay_in_view_and_cannot_crowd_out_the_mesh() {
        let same = names("a", 30);
        let other = names("b", 1000);
        let mut peers = candidates(&same, Some("pg:a"));
        peers.extend(candidates(&other, Some("pg:b")));
        for c in peers.iter_mut().filter(|c| c.key.starts_with("b-00")) {
            c.watch = true; // b-0000 .. b-0099
        }
        let cfg = config(10.0, 8, 6); // capacity 50
        let p = plan("a-x", Some("pg:a"), &peers, 0, 5 * SECOND, &cfg);
        assert_eq!(p.picks.len(), 50);
        assert_eq!(p.count(Role::Watch), 25, "half the capacity at most");
        assert_eq!(p.count(Role::Sample), 8);
        assert_eq!(p.count(Role::Mesh), 17, "the rest, rotating");
        let few = {
            let mut f = peers.clone();
            f.iter_mut().for_each(|c| c.watch = c.key == "b-0500");
            f
        };
        let p = plan("a-x", Some("pg:a"), &few, 0, 5 * SECOND, &cfg);
        assert_eq!(
            keys_of(&p, Role::Watch),
            BTreeSet::from(["b-0500".to_owned()])
        );
        assert_eq!(p.count(Role::Mesh), 30);
    }

    #[test]
    fn without_a_group_of_its_own_a_node_samples_up_to_its_budget_and_learns() {
        let known = names("b", 300);
        let unknown = names("u", 300);
        let mut peers = candidates(&known, Some("pg:b"));
        peers.extend(candidates(&unknown, None));
        let cfg = config(20.0, 16, 6);
        let p = plan("me", None, &peers, 0, 5 * SECOND, &cfg);
        assert_eq!(p.picks.len(), 100);
        assert_eq!(p.count(Role::Sample), 100);
        // With a group, what the mesh and sample leave goes to peers not known yet.
        let p = plan("me", Some("pg:a"), &peers, 0, 5 * SECOND, &cfg);
        assert_eq!(p.count(Role::Sample), 16);
        assert_eq!(p.count(Role::Learn), 84);
    }

    #[test]
    fn a_peer_joining_moves_no_other_peer() {
        let mut keys = names("b", 500);
        let cfg = config(4.0, 10, 6); // capacity 20, no mesh: 20 sampled
        let before = plan(
            "me",
            Some("pg:a"),
            &candidates(&keys, Some("pg:b")),
            0,
            5 * SECOND,
            &cfg,
        );
        keys.push("b-new".to_owned());
        let after = plan(
            "me",
            Some("pg:a"),
            &candidates(&keys, Some("pg:b")),
            0,
            5 * SECOND,
            &cfg,
        );
        let (b, a) = (
            keys_of(&before, Role::Sample),
            keys_of(&after, Role::Sample),
        );
        assert!(b.intersection(&a).count() >= 9, "{b:?} vs {a:?}");
    }

    #[test]
    fn the_rendezvous_hash_is_stable() {
        // Pinned: plans must not change with the toolchain or between processes.
        assert_eq!(
            rendezvous("node-a", "node-b"),
            rendezvous("node-a", "node-b")
        );
        assert_ne!(
            rendezvous("node-a", "node-b"),
            rendezvous("node-b", "node-a")
        );
        // Values computed independently (FNV-1a then splitmix64's finalizer, in Python).
        assert_eq!(rendezvous("", ""), 0x4f2d_b50f_1240_40cd);
        assert_eq!(rendezvous("node-a", "node-b"), 0xd9a5_d151_20f1_741e);
    }

    #[test]
    fn probes_are_spread_evenly_in_batches_with_jitter_inside_their_slots() {
        let offsets = spread(4, Duration::from_secs(4), 1, || 0.5);
        assert_eq!(
            offsets,
            [0.5, 1.5, 2.5, 3.5].map(Duration::from_secs_f64).to_vec()
        );
        let mut values = [0.0, 0.999, 2.0, -1.0].into_iter();
        let offsets = spread(4, Duration::from_secs(4), 1, || values.next().unwrap());
        for (i, o) in offsets.iter().enumerate() {
            assert!(*o >= Duration::from_secs(i as u64), "{offsets:?}");
            assert!(*o < Duration::from_secs(i as u64 + 1), "{offsets:?}");
        }
        // 10 probes in batches of 4: slots of 4, 4 and 2 probes, a second each.
        let offsets = spread(10, Duration::from_secs(3), 4, || 0.25);
        let at = |s: f64| Duration::from_secs_f64(s);
        assert_eq!(
            offsets,
            [0.25, 0.25, 0.25, 0.25, 1.25, 1.25, 1.25, 1.25, 2.25, 2.25]
                .map(at)
                .to_vec()
        );
        assert!(spread(0, SECOND, 4, || 0.5).is_empty());
    }

    #[test]
    fn capacity_is_the_budget_over_an_interval_and_never_zero() {
        assert_eq!(config(20.0, 16, 6).capacity(5 * SECOND), 100);
        assert_eq!(config(0.01, 16, 6).capacity(SECOND), 1);
    }
}

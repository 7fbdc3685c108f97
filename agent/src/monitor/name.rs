//! A peer's node name, taken from its hello. The name keys its per-peer series; a second peer
//! saying a name another already holds (a misconfigured or hostile agent) is marked as such
//! in the state rather than merged with the first (see [`AgentState::claim_name`]).

use crate::hello::Hello;
use crate::state::{AgentState, NameClaim};

/// Claims the hello's node name for the peer under `key`; a new conflict is logged once, with
/// both claimants' addresses and instance ids (the name alone cannot tell them apart).
pub(super) fn claim(state: &AgentState, key: &str, hello: &Hello) {
    if let NameClaim::Conflict {
        conflict,
        new: true,
    } = state.claim_name(key, &hello.node_name, hello.instance_id)
    {
        tracing::warn!(
            peer = %hello.node_name,
            address = %key,
            instance_id = conflict.instance_id,
            held_by = %conflict.held_by,
            held_by_instance_id = conflict.held_by_instance_id,
            "peer claims a node name another peer holds (name_conflict): it keeps its own \
             verdict, shown in /v1/peers; the per-peer series under the name stay the holder's"
        );
    }
}

//! The efa provider's own error codes (`prov_errno` of a completion error), decoded into a
//! small closed set of reasons an operator can act on.
//!
//! The numbers are the efa provider's documented ones (libfabric's `prov/efa/src/efa_errno.h`):
//! 0 to 15 are the device's completion statuses (`EFA_IO_COMP_STATUS_*`, from rdma-core), and
//! 4096 on are the provider's own (`FI_EFA_ERR_*`). They mean something only on `efa`: other
//! providers number their `prov_errno` as they like, so [`EfaErrno::decode`] is asked only for
//! completions of an efa endpoint.

use serde::Serialize;

/// The first of the provider's own codes; below it, the device's completion statuses.
const PROV_ERRNO_START: i32 = 4096;

/// What an efa completion error says about the path, bounded (a label value).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    strum::VariantArray,
    strum::IntoStaticStr,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum EfaReason {
    /// The remote answered before and stopped (13, 4124): the peer's device or host went
    /// away, or a rule changed under an established path.
    RemoteUnresponsive,
    /// The remote was never heard from (15): the packets never reach it. A security group
    /// without its self-referencing rule, or another subnet.
    UnreachableRemote,
    /// The device reaches the remote, but the provider's handshake failed (4126, 4113).
    HandshakeFailed,
    /// The remote has no such queue pair or no address handle for us (9, 14): the peer's
    /// endpoint was closed or reopened (an agent restart).
    UnknownPeer,
    /// The remote had no receive posted (10).
    ReceiverNotReady,
    /// The remote reset the connection (8).
    RemoteAbort,
    /// Message or buffer sizes disagree (6, 11, 4115).
    BadLength,
    /// The operation was flushed as the queue pair closed (1): this node is shutting down.
    Flushed,
    /// This node's own resources ran out (4105, 4108, 4109).
    ResourceExhausted,
    /// The address could not be inserted into the address vector (4110).
    AddressInsert,
    /// Any other documented code: a local or protocol error of the provider.
    ProviderInternal,
}

impl EfaReason {
    /// The label value; identical to the serde form.
    pub fn as_str(self) -> &'static str {
        self.into()
    }

    /// True where the path to the peer is at fault (not this node's own resources or a
    /// shutdown): what a diagnosis should blame on placement or security groups.
    pub const fn blames_the_path(self) -> bool {
        matches!(
            self,
            EfaReason::RemoteUnresponsive
                | EfaReason::UnreachableRemote
                | EfaReason::HandshakeFailed
                | EfaReason::RemoteAbort
        )
    }
}

/// One decoded efa `prov_errno`: its documented name and what it says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EfaErrno {
    pub code: i32,
    /// The provider's name for it, without its prefix (`LOCAL_ERROR_UNREACH_REMOTE`).
    pub name: &'static str,
    pub reason: EfaReason,
}

impl EfaErrno {
    /// Decodes an efa provider's `prov_errno`; `None` for a number the provider does not
    /// document (0 included: success is no error).
    pub fn decode(prov_errno: i32) -> Option<EfaErrno> {
        use EfaReason as R;
        let (name, reason) = match prov_errno {
            1 => ("FLUSHED", R::Flushed),
            2 => ("LOCAL_ERROR_QP_INTERNAL_ERROR", R::ProviderInternal),
            3 => ("LOCAL_ERROR_UNSUPPORTED_OP", R::ProviderInternal),
            4 => ("LOCAL_ERROR_INVALID_AH", R::ProviderInternal),
            5 => ("LOCAL_ERROR_INVALID_LKEY", R::ProviderInternal),
            6 => ("LOCAL_ERROR_BAD_LENGTH", R::BadLength),
            7 => ("REMOTE_ERROR_BAD_ADDRESS", R::ProviderInternal),
            8 => ("REMOTE_ERROR_ABORT", R::RemoteAbort),
            9 => ("REMOTE_ERROR_BAD_DEST_QPN", R::UnknownPeer),
            10 => ("REMOTE_ERROR_RNR", R::ReceiverNotReady),
            11 => ("REMOTE_ERROR_BAD_LENGTH", R::BadLength),
            12 => ("REMOTE_ERROR_BAD_STATUS", R::ProviderInternal),
            13 => ("LOCAL_ERROR_UNRESP_REMOTE", R::RemoteUnresponsive),
            14 => ("REMOTE_ERROR_UNKNOWN_PEER", R::UnknownPeer),
            15 => ("LOCAL_ERROR_UNREACH_REMOTE", R::UnreachableRemote),
            4105 => ("OOM", R::ResourceExhausted),
            4108 => ("RXE_POOL_EXHAUSTED", R::ResourceExhausted),
            4109 => ("TXE_POOL_EXHAUSTED", R::ResourceExhausted),
            4110 => ("AV_INSERT", R::AddressInsert),
            4113 => ("PEER_HANDSHAKE", R::HandshakeFailed),
            4115 => ("RTM_MISMATCH", R::BadLength),
            4124 => ("ESTABLISHED_RECV_UNRESP", R::RemoteUnresponsive),
            4126 => ("UNESTABLISHED_RECV_UNRESP", R::HandshakeFailed),
            // The rest of the provider's own range (4096 to 4125) is documented: packet and
            // completion handling errors inside the provider.
            PROV_ERRNO_START..=4125 => ("PROVIDER", R::ProviderInternal),
            _ => return None,
        };
        Some(EfaErrno {
            code: prov_errno,
            name,
            reason,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_path_errors_decode_to_their_reasons() {
        // Numbers as prov/efa/src/efa_errno.h documents them.
        let cases = [
            (
                13,
                "LOCAL_ERROR_UNRESP_REMOTE",
                EfaReason::RemoteUnresponsive,
            ),
            (
                15,
                "LOCAL_ERROR_UNREACH_REMOTE",
                EfaReason::UnreachableRemote,
            ),
            (
                4124,
                "ESTABLISHED_RECV_UNRESP",
                EfaReason::RemoteUnresponsive,
            ),
            (
                4126,
                "UNESTABLISHED_RECV_UNRESP",
                EfaReason::HandshakeFailed,
            ),
            (4113, "PEER_HANDSHAKE", EfaReason::HandshakeFailed),
            (9, "REMOTE_ERROR_BAD_DEST_QPN", EfaReason::UnknownPeer),
            (14, "REMOTE_ERROR_UNKNOWN_PEER", EfaReason::UnknownPeer),
            (10, "REMOTE_ERROR_RNR", EfaReason::ReceiverNotReady),
            (8, "REMOTE_ERROR_ABORT", EfaReason::RemoteAbort),
            (1, "FLUSHED", EfaReason::Flushed),
            (4110, "AV_INSERT", EfaReason::AddressInsert),
            (4105, "OOM", EfaReason::ResourceExhausted),
        ];
        for (code, name, reason) in cases {
            let d = EfaErrno::decode(code).unwrap_or_else(|| panic!("{code} not decoded"));
            assert_eq!((d.code, d.name, d.reason), (code, name, reason));
        }
    }

    #[test]
    fn every_documented_code_decodes_and_nothing_else_does() {
        for code in (1..=15).chain(4096..=4126) {
            assert!(EfaErrno::decode(code).is_some(), "{code}");
        }
        for code in [0, 16, 4095, 4127, -1, i32::MIN, i32::MAX] {
            assert_eq!(EfaErrno::decode(code), None, "{code}");
        }
    }

    #[test]
    fn only_path_faults_blame_the_path() {
        assert!(EfaReason::UnreachableRemote.blames_the_path());
        assert!(EfaReason::RemoteUnresponsive.blames_the_path());
        assert!(!EfaReason::ResourceExhausted.blames_the_path());
        assert!(!EfaReason::Flushed.blames_the_path());
    }

    #[test]
    fn labels_match_serde() {
        for code in (1..=15).chain(4096..=4126) {
            let r = EfaErrno::decode(code).unwrap().reason;
            assert_eq!(serde_json::to_value(r).unwrap(), r.as_str());
        }
    }
}

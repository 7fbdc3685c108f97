//! The fabric probe message.
//!
//! ```text
//!  0  magic      u32  "EFAP"
//!  4  version    u8   1
//!  5  kind       u8   1 ping, 2 pong
//!  6  addr_len   u16  length of the sender's fabric address that follows the header
//!  8  seq        u64  prober's sequence number, echoed in the pong
//! 16  sender_id  u64  random per engine instance: who sent this message
//! 24  token      u64  ping: a fresh random value per ping, which the pong echoes; a pong
//!                     answers a ping only if it carries that ping's token (and, where the
//!                     provider reports senders, comes from the address the ping went to)
//! 32  dwell      u64  pong: ns the responder held the ping before answering
//!     / flags         ping: bit 0 (FOLLOWS) a second ping of the same sequence follows as
//!                     soon as this one's pong is back: stay awake for it. Other bits are 0
//!                     and ignored, so older responders read a ping as before.
//! 40  address    [addr_len]  the sender's fabric address (pings), so a responder can answer a
//!                            peer it has never seen
//! 40  unread     u64  pong (no address), when it is at least 48 bytes long: ns between the
//!                     responder's completion poll that read the ping and the poll before, the
//!                     longest the ping can have waited unread (a responder asleep, or not
//!                     scheduled). 0: not known (older responders pad with zeros here).
//!     padding    zeros up to the probe size
//! ```
//! Integers are big-endian. Everything a peer sends is untrusted: decoding checks every length
//! and never panics.
//!
//! The token took the place of version 1's `send_ts` (the prober's clock, echoed in the pong),
//! which responders of every version echo unread and no prober ever read back. So the wire
//! version stays 1 and old and new agents keep answering each other during a rolling
//! upgrade: an old responder echoes a new prober's token, and a new responder an old
//! prober's clock. A version 2 would have made every new prober deaf to old responders (they
//! drop other versions) until the last node was upgraded. Old probers, whose "tokens" are
//! clocks and whose sequence numbers count from 1, stay open to forged pongs; new ones are not.

pub const MAGIC: u32 = 0x4546_4150;
pub const VERSION: u8 = 1;
pub const HEADER_LEN: usize = 40;
/// Ping flag: the second ping of this probe follows at once (see the layout above).
pub const FLAG_FOLLOWS: u64 = 1;
/// Longest fabric address accepted (EFA's is 32 bytes, shm's a short string).
pub const MAX_ADDR_LEN: usize = 256;
/// A pong this long or longer carries the `unread` word.
const UNREAD_END: usize = HEADER_LEN + 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Ping = 1,
    Pong = 2,
}

/// A decoded message; `address` borrows from the received bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message<'a> {
    pub kind: Kind,
    pub seq: u64,
    pub sender_id: u64,
    /// Pings: the prober's token for this ping; pongs: the token of the ping answered.
    pub token: u64,
    /// Pongs only (0 in pings).
    pub dwell_ns: u64,
    /// Pings only (0 in pongs): [`FLAG_FOLLOWS`].
    pub flags: u64,
    /// Pongs only (0 in pings, and when not known): how long the ping may have waited unread
    /// at the responder.
    pub unread_ns: u64,
    pub address: &'a [u8],
}

/// Why a received message was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// shorter than its header or than the address it declares
    #[error("truncated message")]
    Truncated,
    /// not an efaprobe message
    #[error("bad magic")]
    BadMagic,
    /// from an efaprobe version this one does not speak
    #[error("unsupported version {0}")]
    UnsupportedVersion(u8),
    /// unknown message kind
    #[error("unknown kind {0}")]
    BadKind(u8),
    /// a ping without a usable sender address, or one longer than any provider's
    #[error("bad sender address length {0}")]
    BadAddress(usize),
}

impl DecodeError {
    /// Bounded label for counting drops.
    pub fn label(&self) -> &'static str {
        match self {
            DecodeError::Truncated => "truncated",
            DecodeError::BadMagic => "bad_magic",
            DecodeError::UnsupportedVersion(_) => "bad_version",
            DecodeError::BadKind(_) => "bad_kind",
            DecodeError::BadAddress(_) => "bad_address",
        }
    }
}

/// Rewrites the dwell word of an encoded pong: a responder stamps it as the pong leaves,
/// so that time spent queued behind another send is not counted as the path's.
pub fn restamp_dwell(pong: &mut [u8], dwell_ns: u64) {
    if let Some(word) = pong.get_mut(32..40) {
        word.copy_from_slice(&dwell_ns.to_be_bytes());
    }
}

impl<'a> Message<'a> {
    /// Bytes this message needs before padding.
    pub fn encoded_len(&self) -> usize {
        HEADER_LEN + self.address.len()
    }

    /// Writes the message padded with zeros to at least `size` bytes into `out` (cleared
    /// first).
    pub fn encode_into(&self, size: usize, out: &mut Vec<u8>) {
        assert!(self.address.len() <= MAX_ADDR_LEN, "own address too long");
        out.clear();
        out.extend_from_slice(&MAGIC.to_be_bytes());
        out.push(VERSION);
        out.push(self.kind as u8);
        out.extend_from_slice(&(self.address.len() as u16).to_be_bytes());
        let word = match self.kind {
            Kind::Ping => self.flags,
            Kind::Pong => self.dwell_ns,
        };
        for v in [self.seq, self.sender_id, self.token, word] {
            out.extend_from_slice(&v.to_be_bytes());
        }
        out.extend_from_slice(self.address);
        if self.kind == Kind::Pong && self.address.is_empty() && size >= UNREAD_END {
            out.extend_from_slice(&self.unread_ns.to_be_bytes());
        }
        if out.len() < size {
            out.resize(size, 0);
        }
    }

    pub fn decode(buf: &'a [u8]) -> Result<Message<'a>, DecodeError> {
        let header = buf.get(..HEADER_LEN).ok_or(DecodeError::Truncated)?;
        let u64_at = |at: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&header[at..at + 8]);
            u64::from_be_bytes(b)
        };
        if header[0..4] != MAGIC.to_be_bytes() {
            return Err(DecodeError::BadMagic);
        }
        if header[4] != VERSION {
            return Err(DecodeError::UnsupportedVersion(header[4]));
        }
        let kind = match header[5] {
            1 => Kind::Ping,
            2 => Kind::Pong,
            other => return Err(DecodeError::BadKind(other)),
        };
        let addr_len = u16::from_be_bytes([header[6], header[7]]) as usize;
        if addr_len > MAX_ADDR_LEN || (kind == Kind::Ping && addr_len == 0) {
            return Err(DecodeError::BadAddress(addr_len));
        }
        let address = buf
            .get(HEADER_LEN..HEADER_LEN + addr_len)
            .ok_or(DecodeError::Truncated)?;
        Ok(Message {
            kind,
            seq: u64_at(8),
            sender_id: u64_at(16),
            token: u64_at(24),
            dwell_ns: if kind == Kind::Pong { u64_at(32) } else { 0 },
            flags: if kind == Kind::Ping { u64_at(32) } else { 0 },
            unread_ns: match buf.get(HEADER_LEN..UNREAD_END) {
                Some(word) if kind == Kind::Pong && addr_len == 0 => {
                    u64::from_be_bytes(word.try_into().expect("8 bytes"))
                }
                _ => 0,
            },
            address,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ping(addr: &[u8]) -> Message<'_> {
        Message {
            kind: Kind::Ping,
            seq: 7,
            sender_id: 0xabcdef,
            token: 123_456_789,
            dwell_ns: 0,
            flags: FLAG_FOLLOWS,
            unread_ns: 0,
            address: addr,
        }
    }

    #[test]
    fn the_dwell_word_is_flags_in_a_ping_and_dwell_in_a_pong() {
        let addr = [3u8; 8];
        let mut buf = Vec::new();
        ping(&addr).encode_into(64, &mut buf);
        assert_eq!(buf[32..40], FLAG_FOLLOWS.to_be_bytes());
        let pong = Message {
            kind: Kind::Pong,
            dwell_ns: 5_000,
            flags: 0,
            unread_ns: 20_000_000,
            address: &[],
            ..ping(&addr)
        };
        pong.encode_into(64, &mut buf);
        assert_eq!(buf[32..40], 5_000u64.to_be_bytes());
        assert_eq!(buf[40..48], 20_000_000u64.to_be_bytes());
        assert_eq!(Message::decode(&buf).unwrap(), pong);
        // Too short for the word: not sent, read as not known.
        pong.encode_into(44, &mut buf);
        assert_eq!(buf.len(), 44);
        assert_eq!(Message::decode(&buf).unwrap().unread_ns, 0);
        // A pong from before the word existed (zero padding) says nothing.
        let old = Message {
            unread_ns: 0,
            ..pong
        };
        old.encode_into(64, &mut buf);
        assert!(buf[40..].iter().all(|b| *b == 0));
        assert_eq!(Message::decode(&buf).unwrap().unread_ns, 0);
        restamp_dwell(&mut buf, 7_000);
        assert_eq!(Message::decode(&buf).unwrap().dwell_ns, 7_000);
        // A v1 ping from before flags existed (word 0) asks for nothing.
        let plain = Message {
            flags: 0,
            ..ping(&addr)
        };
        plain.encode_into(64, &mut buf);
        assert_eq!(Message::decode(&buf).unwrap().flags, 0);
    }

    #[test]
    fn round_trip_with_padding() {
        let addr = [1u8, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16];
        let mut buf = Vec::new();
        ping(&addr).encode_into(1024, &mut buf);
        assert_eq!(buf.len(), 1024);
        assert_eq!(Message::decode(&buf).unwrap(), ping(&addr));
    }

    #[test]
    fn each_defect_has_its_own_error() {
        let addr = [9u8; 16];
        let mut good = Vec::new();
        ping(&addr).encode_into(64, &mut good);

        assert_eq!(Message::decode(&good[..39]), Err(DecodeError::Truncated));
        assert_eq!(Message::decode(&good[..50]), Err(DecodeError::Truncated));
        let mut bad = good.clone();
        bad[0] = b'X';
        assert_eq!(Message::decode(&bad), Err(DecodeError::BadMagic));
        let mut bad = good.clone();
        bad[4] = 2;
        assert_eq!(
            Message::decode(&bad),
            Err(DecodeError::UnsupportedVersion(2))
        );
        let mut bad = good.clone();
        bad[5] = 9;
        assert_eq!(Message::decode(&bad), Err(DecodeError::BadKind(9)));
        let mut bad = good.clone();
        bad[6..8].copy_from_slice(&0xffffu16.to_be_bytes());
        assert_eq!(Message::decode(&bad), Err(DecodeError::BadAddress(0xffff)));
        let mut bad = good;
        bad[6..8].copy_from_slice(&0u16.to_be_bytes());
        assert_eq!(Message::decode(&bad), Err(DecodeError::BadAddress(0)));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(20_000))]

        /// Any bytes at all: decode returns, never panics, and what it accepts is consistent.
        #[test]
        fn decode_never_panics(buf in proptest::collection::vec(any::<u8>(), 0..600)) {
            if let Ok(m) = Message::decode(&buf) {
                prop_assert!(m.address.len() <= MAX_ADDR_LEN);
                prop_assert!(HEADER_LEN + m.address.len() <= buf.len());
            }
        }

        /// Valid headers with hostile lengths and kinds, the inputs random bytes rarely reach.
        #[test]
        fn hostile_headers_are_rejected_or_bounded(
            version in any::<u8>(), kind in any::<u8>(), addr_len in any::<u16>(),
            tail in proptest::collection::vec(any::<u8>(), 0..400),
        ) {
            let mut buf = MAGIC.to_be_bytes().to_vec();
            buf.extend_from_slice(&[version, kind]);
            buf.extend_from_slice(&addr_len.to_be_bytes());
            buf.extend_from_slice(&[0u8; 32]);
            buf.extend_from_slice(&tail);
            match Message::decode(&buf) {
                Ok(m) => {
                    prop_assert_eq!(version, VERSION);
                    prop_assert_eq!(m.address.len(), addr_len as usize);
                }
                Err(e) => prop_assert!(!e.label().is_empty()),
            }
        }

        #[test]
        fn round_trip(seq in any::<u64>(), id in any::<u64>(), ts in any::<u64>(), word in any::<u64>(),
                      addr in proptest::collection::vec(any::<u8>(), 1..=MAX_ADDR_LEN), size in 0usize..2048,
                      is_ping in any::<bool>(), unread in any::<u64>()) {
            let (kind, dwell_ns, flags) = if is_ping { (Kind::Ping, 0, word) } else { (Kind::Pong, word, 0) };
            // Pongs carry no address, and the unread word when there is room for it.
            let (address, unread_ns) = if is_ping { (&addr[..], 0) } else { (&[][..], unread) };
            let m = Message { kind, seq, sender_id: id, token: ts, dwell_ns, flags, unread_ns, address };
            let mut buf = Vec::new();
            m.encode_into(size, &mut buf);
            prop_assert_eq!(buf.len(), size.max(m.encoded_len()));
            let unread_ns = if size >= UNREAD_END { unread_ns } else { 0 };
            prop_assert_eq!(Message::decode(&buf).unwrap(), Message { unread_ns, ..m });
        }
    }
}

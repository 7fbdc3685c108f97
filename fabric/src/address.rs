//! An endpoint's own address, as the provider names it (`fi_getname`) and as peers publish it.

use std::borrow::Borrow;
use std::fmt;
use std::ops::Deref;

/// Longest address accepted in hex form (512 bytes raw): EFA's is 32 bytes, IP providers'
/// a socket address, shm's a short string.
pub const MAX_ADDRESS_LEN: usize = 512;

/// An endpoint address: raw bytes in the provider's format, what `fi_getname` returns and
/// `fi_av_insert` takes. Its published form is lower-case hex ([`to_hex`](Self::to_hex),
/// [`from_hex`](Self::from_hex)); `Display` prints that form.
///
/// Not to be confused with [`FabricAddr`](crate::FabricAddr), the handle an address vector
/// gives an inserted address.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct EndpointAddress(Vec<u8>);

/// Why a published address could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    /// an odd number of digits, or something that is not a hex digit
    #[error("fabric address is not hex")]
    NotHex,
    /// longer than any provider's address
    #[error("fabric address of {0} hex digits is longer than {max}", max = 2 * MAX_ADDRESS_LEN)]
    TooLong(usize),
}

impl EndpointAddress {
    pub fn new(bytes: Vec<u8>) -> Self {
        EndpointAddress(bytes)
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The published form: two lower-case hex digits per byte.
    pub fn to_hex(&self) -> String {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut s = String::with_capacity(self.0.len() * 2);
        for b in &self.0 {
            s.push(DIGITS[usize::from(b >> 4)] as char);
            s.push(DIGITS[usize::from(b & 0xf)] as char);
        }
        s
    }

    /// Reads the published form (either case). Untrusted input: bounded, never panics.
    pub fn from_hex(s: &str) -> Result<Self, AddressError> {
        if s.len() > 2 * MAX_ADDRESS_LEN {
            return Err(AddressError::TooLong(s.len()));
        }
        let digits = s.as_bytes();
        if digits.len() % 2 != 0 {
            return Err(AddressError::NotHex);
        }
        let nibble = |d: u8| match d {
            b'0'..=b'9' => Ok(d - b'0'),
            b'a'..=b'f' => Ok(d - b'a' + 10),
            b'A'..=b'F' => Ok(d - b'A' + 10),
            _ => Err(AddressError::NotHex),
        };
        digits
            .chunks_exact(2)
            .map(|pair| Ok(nibble(pair[0])? << 4 | nibble(pair[1])?))
            .collect::<Result<Vec<u8>, _>>()
            .map(EndpointAddress)
    }
}

impl Deref for EndpointAddress {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.0
    }
}

// Lookups by raw bytes (as received) in maps keyed by addresses: the derived Hash and Eq are
// those of the bytes.
impl Borrow<[u8]> for EndpointAddress {
    fn borrow(&self) -> &[u8] {
        &self.0
    }
}

impl AsRef<[u8]> for EndpointAddress {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl From<Vec<u8>> for EndpointAddress {
    fn from(bytes: Vec<u8>) -> Self {
        EndpointAddress(bytes)
    }
}

impl From<&[u8]> for EndpointAddress {
    fn from(bytes: &[u8]) -> Self {
        EndpointAddress(bytes.to_vec())
    }
}

impl From<EndpointAddress> for Vec<u8> {
    fn from(address: EndpointAddress) -> Self {
        address.0
    }
}

impl fmt::Display for EndpointAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for EndpointAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EndpointAddress({})", self.to_hex())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip_and_rejects() {
        let a = EndpointAddress::new(vec![0, 1, 254, 255]);
        assert_eq!(a.to_hex(), "0001feff");
        assert_eq!(EndpointAddress::from_hex(&a.to_hex()).unwrap(), a);
        assert_eq!(EndpointAddress::from_hex("0001FEFF").unwrap(), a);
        assert_eq!(
            EndpointAddress::from_hex("").unwrap(),
            EndpointAddress::default()
        );
        assert_eq!(EndpointAddress::from_hex("abc"), Err(AddressError::NotHex));
        assert_eq!(EndpointAddress::from_hex("zz"), Err(AddressError::NotHex));
        assert_eq!(EndpointAddress::from_hex("é1"), Err(AddressError::NotHex));
        assert_eq!(EndpointAddress::from_hex("+1"), Err(AddressError::NotHex));
        let long = "00".repeat(MAX_ADDRESS_LEN + 1);
        assert!(matches!(
            EndpointAddress::from_hex(&long),
            Err(AddressError::TooLong(_))
        ));
        assert!(EndpointAddress::from_hex(&"ab".repeat(MAX_ADDRESS_LEN)).is_ok());
    }
}

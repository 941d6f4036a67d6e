//! Our own UDP datagrams: hole-punch probes and their acks.
//!
//! A `udp://` link is a QUIC connection (`crate::quic`); the only other datagrams on a UDP
//! listener's socket are these. They share the port with QUIC, told apart by byte 0: QUIC sets
//! its fixed bit (0x40) in every packet (we never grease it), these types never do.
//!
//! Layouts (byte 0 is the type):
//!
//! ```text
//! 5 Punch:     type || token (16 bytes, from the relay's `punch` frame)
//! 6 PunchAck:  type || token
//! ```
//!
//! Types 1 to 4, 7 and 8 were protocol 2's own UDP handshake, transport and cookie datagrams;
//! they are refused now.
//!
//! Punch datagrams carry no secret: the token only ties a datagram to one coordination, so a
//! stray packet does not start anything. What they open is then authenticated by the link's
//! ordinary handshake.

use super::WireError;

/// Largest datagram of ours accepted, in bytes of UDP payload (far above the 17 a punch takes).
///
/// QUIC's floor (RFC 9000 section 14): 1200 bytes fits the IPv6 minimum MTU of 1280 minus IP
/// and UDP headers.
pub const MAX_DATAGRAM_BYTES: usize = 1200;

/// Type byte of [`Datagram::Punch`].
pub const TYPE_PUNCH: u8 = 5;
/// Type byte of [`Datagram::PunchAck`].
pub const TYPE_PUNCH_ACK: u8 = 6;
/// Bytes of a punch token.
pub const PUNCH_TOKEN_BYTES: usize = 16;

/// One parsed datagram of ours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Datagram {
    /// A hole-punch probe (type 5), sent toward a peer's reflexive address.
    Punch {
        /// The coordination's token.
        token: [u8; PUNCH_TOKEN_BYTES],
    },
    /// The answer to a [`Datagram::Punch`] (type 6): the path works both ways.
    PunchAck {
        /// The token of the punch answered.
        token: [u8; PUNCH_TOKEN_BYTES],
    },
}

impl Datagram {
    /// Parses one datagram.
    ///
    /// Errors: [`WireError::Oversize`] beyond [`MAX_DATAGRAM_BYTES`], [`WireError::Truncated`]
    /// if empty or not exactly one token after the type, [`WireError::UnknownDatagramType`]
    /// for a type byte other than 5 or 6.
    pub fn parse(buf: &[u8]) -> Result<Self, WireError> {
        if buf.len() > MAX_DATAGRAM_BYTES {
            return Err(WireError::Oversize {
                len: buf.len(),
                max: MAX_DATAGRAM_BYTES,
            });
        }
        let Some((&kind, rest)) = buf.split_first() else {
            return Err(truncated(buf, 1));
        };
        if kind != TYPE_PUNCH && kind != TYPE_PUNCH_ACK {
            return Err(WireError::UnknownDatagramType(kind));
        }
        let token: [u8; PUNCH_TOKEN_BYTES] = rest
            .try_into()
            .map_err(|_| truncated(buf, 1 + PUNCH_TOKEN_BYTES))?;
        Ok(if kind == TYPE_PUNCH {
            Datagram::Punch { token }
        } else {
            Datagram::PunchAck { token }
        })
    }

    /// Appends the datagram's bytes to `out`.
    pub fn write(&self, out: &mut Vec<u8>) {
        let (kind, token) = match self {
            Datagram::Punch { token } => (TYPE_PUNCH, token),
            Datagram::PunchAck { token } => (TYPE_PUNCH_ACK, token),
        };
        out.push(kind);
        out.extend_from_slice(token);
    }

    /// Length in bytes of what [`Datagram::write`] appends.
    pub fn encoded_len(&self) -> usize {
        1 + PUNCH_TOKEN_BYTES
    }
}

/// The error for a datagram shorter than `min` bytes.
fn truncated(buf: &[u8], min: usize) -> WireError {
    WireError::Truncated {
        what: "datagram",
        len: buf.len(),
        min,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::collection::vec;
    use proptest::prelude::*;

    #[test]
    fn punch_datagrams_round_trip_and_need_exactly_one_token() {
        for d in [
            Datagram::Punch { token: [7; 16] },
            Datagram::PunchAck { token: [9; 16] },
        ] {
            let mut out = Vec::new();
            d.write(&mut out);
            assert_eq!(out.len(), d.encoded_len());
            assert_eq!(Datagram::parse(&out).ok(), Some(d));
            assert!(Datagram::parse(&out[..16]).is_err());
            out.push(0);
            assert!(Datagram::parse(&out).is_err());
        }
    }

    #[test]
    fn layouts_are_pinned() {
        let mut out = Vec::new();
        Datagram::PunchAck { token: [1; 16] }.write(&mut out);
        assert_eq!(out[0], 6);
        assert_eq!(&out[1..], &[1; 16]);
    }

    #[test]
    fn old_and_unknown_types_are_refused() {
        for kind in [0u8, 1, 2, 3, 4, 7, 8, 0x40, 0xc0] {
            let mut d = vec![kind];
            d.extend_from_slice(&[0; 16]);
            assert!(matches!(
                Datagram::parse(&d),
                Err(WireError::UnknownDatagramType(k)) if k == kind
            ));
        }
        assert!(matches!(
            Datagram::parse(&[]),
            Err(WireError::Truncated { .. })
        ));
        assert!(matches!(
            Datagram::parse(&[5; 1201]),
            Err(WireError::Oversize { .. })
        ));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_parse_canonically(bytes in vec(any::<u8>(), 0..1300)) {
            if let Ok(d) = Datagram::parse(&bytes) {
                let mut out = Vec::new();
                d.write(&mut out);
                prop_assert_eq!(out, bytes);
            }
        }
    }
}

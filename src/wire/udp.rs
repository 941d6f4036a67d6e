//! UDP datagrams: the envelope of everything msgtier sends over UDP.
//!
//! The UDP transport reads one datagram, calls [`Datagram::parse`], and dispatches on the
//! variant: handshake messages go to the Noise state machine of the session named by the
//! indices, transport records to that session's [`super::record::Opener`] and then its
//! [`super::fragment::Reassembler`]. Sending is the reverse with [`Datagram::write`].
//!
//! Like WireGuard, each side picks a random 32-bit index for its own end of a session
//! and the other side echoes it as `receiver`, so a datagram finds its session without
//! trusting the source address (which changes under NAT rebinding or roaming).
//!
//! Layouts (byte 0 is the type, indices are big-endian `u32`):
//!
//! ```text
//! 1 HandshakeInit:  type || sender || Noise XX message 1
//! 2 HandshakeResp:  type || sender || receiver || Noise XX message 2
//! 3 HandshakeFinal: type || sender || receiver || Noise XX message 3
//! 4 Transport:      type || receiver || record (counter || ciphertext || tag)
//! 5 Punch:          type || token (16 bytes, from the relay's `punch` frame)
//! 6 PunchAck:       type || token
//! 7 CookieReply:    type || receiver || cookie (16 bytes)
//! 8 HandshakeInit with a cookie: type || sender || cookie || Noise XX message 1
//! ```
//!
//! Under load a listener answers an init without a valid cookie with a `CookieReply` (21
//! bytes, smaller than any init) instead of starting a handshake: a MAC over the source address
//! and the sender index under a secret it rotates, so checking it needs no state. The dialer
//! repeats its init with the cookie, which proves it receives at that address (WireGuard's
//! cookie, without its encryption: the cookie says nothing secret).
//!
//! Punch datagrams carry no secret: the token only ties a datagram to one coordination, so a
//! stray packet does not start a handshake. What they open is then authenticated by the
//! ordinary Noise handshake.

use super::record::RECORD_OVERHEAD;
use super::WireError;

/// Largest datagram we send or accept, in bytes of UDP payload.
///
/// QUIC's choice (RFC 9000 section 14): 1200 bytes fits the IPv6 minimum MTU of 1280
/// minus IP and UDP headers, so datagrams are not fragmented by IP on common paths.
pub const MAX_DATAGRAM_BYTES: usize = 1200;

/// Type byte of [`Datagram::HandshakeInit`].
pub const TYPE_HANDSHAKE_INIT: u8 = 1;
/// Type byte of [`Datagram::HandshakeResp`].
pub const TYPE_HANDSHAKE_RESP: u8 = 2;
/// Type byte of [`Datagram::HandshakeFinal`].
pub const TYPE_HANDSHAKE_FINAL: u8 = 3;
/// Type byte of [`Datagram::Transport`].
pub const TYPE_TRANSPORT: u8 = 4;

/// Bytes of one session index (a big-endian `u32`).
pub const INDEX_BYTES: usize = 4;

/// Type byte of [`Datagram::Punch`].
pub const TYPE_PUNCH: u8 = 5;
/// Type byte of [`Datagram::PunchAck`].
pub const TYPE_PUNCH_ACK: u8 = 6;
/// Bytes of a punch token.
pub const PUNCH_TOKEN_BYTES: usize = 16;
/// Type byte of [`Datagram::CookieReply`].
pub const TYPE_COOKIE_REPLY: u8 = 7;
/// Type byte of a [`Datagram::HandshakeInit`] that carries a cookie.
pub const TYPE_HANDSHAKE_INIT_COOKIE: u8 = 8;
/// Bytes of a cookie.
pub const COOKIE_BYTES: usize = 16;

/// Bytes before the record in a transport datagram: the type byte and the receiver
/// index. [`super::fragment::max_chunk`] subtracts it.
pub const TRANSPORT_HEADER_BYTES: usize = 1 + INDEX_BYTES;

/// Bytes before the Noise message in `HandshakeResp` / `HandshakeFinal`: type, sender
/// and receiver.
const HANDSHAKE_REPLY_HEADER_BYTES: usize = 1 + 2 * INDEX_BYTES;

/// One parsed UDP datagram, borrowing its payload from the receive buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Datagram<'a> {
    /// First handshake message, from the initiator (type 1, or 8 with a cookie).
    HandshakeInit {
        /// The initiator's index for this session; the responder echoes it as `receiver`.
        sender: u32,
        /// The cookie a listener under load asked for, if any.
        cookie: Option<[u8; COOKIE_BYTES]>,
        /// Noise XX message 1 (`-> e`).
        noise: &'a [u8],
    },
    /// Second handshake message, from the responder (type 2).
    HandshakeResp {
        /// The responder's index for this session.
        sender: u32,
        /// The initiator's index, from its `HandshakeInit`.
        receiver: u32,
        /// Noise XX message 2 (`<- e, ee, s, es`).
        noise: &'a [u8],
    },
    /// Third handshake message, from the initiator (type 3); completes the session.
    HandshakeFinal {
        /// The initiator's index, as in its `HandshakeInit`.
        sender: u32,
        /// The responder's index, from its `HandshakeResp`.
        receiver: u32,
        /// Noise XX message 3 (`-> s, se`).
        noise: &'a [u8],
    },
    /// A sealed record of an established session (type 4).
    Transport {
        /// The recipient's index for the session.
        receiver: u32,
        /// The record; at least [`RECORD_OVERHEAD`] bytes.
        record: &'a [u8],
    },
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
    /// A listener under load asks the initiator to repeat its init with `cookie` (type 7).
    CookieReply {
        /// The initiator's index, from its init.
        receiver: u32,
        /// What to put in the repeated init.
        cookie: [u8; COOKIE_BYTES],
    },
}

impl<'a> Datagram<'a> {
    /// Parses one datagram.
    ///
    /// Errors: [`WireError::Oversize`] beyond [`MAX_DATAGRAM_BYTES`],
    /// [`WireError::Truncated`] if empty or shorter than its type's header (for
    /// `Transport`: header plus [`RECORD_OVERHEAD`]), [`WireError::UnknownDatagramType`]
    /// for a type byte other than 1 to 8. Handshake payloads are not checked here; the
    /// Noise layer rejects malformed ones.
    pub fn parse(buf: &'a [u8]) -> Result<Self, WireError> {
        if buf.len() > MAX_DATAGRAM_BYTES {
            return Err(WireError::Oversize {
                len: buf.len(),
                max: MAX_DATAGRAM_BYTES,
            });
        }
        let Some((&kind, rest)) = buf.split_first() else {
            return Err(truncated(buf, 1));
        };
        match kind {
            TYPE_HANDSHAKE_INIT => {
                let (sender, noise) =
                    read_index(rest).ok_or_else(|| truncated(buf, 1 + INDEX_BYTES))?;
                Ok(Datagram::HandshakeInit {
                    sender,
                    cookie: None,
                    noise,
                })
            }
            TYPE_HANDSHAKE_INIT_COOKIE => {
                let short = || truncated(buf, 1 + INDEX_BYTES + COOKIE_BYTES);
                let (sender, rest) = read_index(rest).ok_or_else(short)?;
                let (cookie, noise) = rest.split_first_chunk::<COOKIE_BYTES>().ok_or_else(short)?;
                Ok(Datagram::HandshakeInit {
                    sender,
                    cookie: Some(*cookie),
                    noise,
                })
            }
            TYPE_COOKIE_REPLY => {
                let short = || truncated(buf, 1 + INDEX_BYTES + COOKIE_BYTES);
                let (receiver, rest) = read_index(rest).ok_or_else(short)?;
                let cookie: [u8; COOKIE_BYTES] = rest.try_into().map_err(|_| short())?;
                Ok(Datagram::CookieReply { receiver, cookie })
            }
            TYPE_HANDSHAKE_RESP | TYPE_HANDSHAKE_FINAL => {
                let short = || truncated(buf, HANDSHAKE_REPLY_HEADER_BYTES);
                let (sender, rest) = read_index(rest).ok_or_else(short)?;
                let (receiver, noise) = read_index(rest).ok_or_else(short)?;
                Ok(if kind == TYPE_HANDSHAKE_RESP {
                    Datagram::HandshakeResp {
                        sender,
                        receiver,
                        noise,
                    }
                } else {
                    Datagram::HandshakeFinal {
                        sender,
                        receiver,
                        noise,
                    }
                })
            }
            TYPE_TRANSPORT => {
                let short = || truncated(buf, TRANSPORT_HEADER_BYTES + RECORD_OVERHEAD);
                let (receiver, record) = read_index(rest).ok_or_else(short)?;
                if record.len() < RECORD_OVERHEAD {
                    return Err(short());
                }
                Ok(Datagram::Transport { receiver, record })
            }
            TYPE_PUNCH | TYPE_PUNCH_ACK => {
                let token: [u8; PUNCH_TOKEN_BYTES] = rest
                    .try_into()
                    .map_err(|_| truncated(buf, 1 + PUNCH_TOKEN_BYTES))?;
                Ok(if kind == TYPE_PUNCH {
                    Datagram::Punch { token }
                } else {
                    Datagram::PunchAck { token }
                })
            }
            other => Err(WireError::UnknownDatagramType(other)),
        }
    }

    /// Appends the datagram's bytes to `out`.
    ///
    /// Writes whatever it holds; keeping it within [`MAX_DATAGRAM_BYTES`] (see
    /// [`super::fragment::max_chunk`]) is the caller's job, and [`Datagram::parse`] on
    /// the other side refuses longer ones.
    pub fn write(&self, out: &mut Vec<u8>) {
        out.reserve(self.encoded_len());
        match *self {
            Datagram::HandshakeInit {
                sender,
                cookie,
                noise,
            } => {
                match cookie {
                    None => {
                        out.push(TYPE_HANDSHAKE_INIT);
                        out.extend_from_slice(&sender.to_be_bytes());
                    }
                    Some(c) => {
                        out.push(TYPE_HANDSHAKE_INIT_COOKIE);
                        out.extend_from_slice(&sender.to_be_bytes());
                        out.extend_from_slice(&c);
                    }
                }
                out.extend_from_slice(noise);
            }
            Datagram::CookieReply { receiver, cookie } => {
                out.push(TYPE_COOKIE_REPLY);
                out.extend_from_slice(&receiver.to_be_bytes());
                out.extend_from_slice(&cookie);
            }
            Datagram::HandshakeResp {
                sender,
                receiver,
                noise,
            } => {
                out.push(TYPE_HANDSHAKE_RESP);
                out.extend_from_slice(&sender.to_be_bytes());
                out.extend_from_slice(&receiver.to_be_bytes());
                out.extend_from_slice(noise);
            }
            Datagram::HandshakeFinal {
                sender,
                receiver,
                noise,
            } => {
                out.push(TYPE_HANDSHAKE_FINAL);
                out.extend_from_slice(&sender.to_be_bytes());
                out.extend_from_slice(&receiver.to_be_bytes());
                out.extend_from_slice(noise);
            }
            Datagram::Transport { receiver, record } => {
                out.push(TYPE_TRANSPORT);
                out.extend_from_slice(&receiver.to_be_bytes());
                out.extend_from_slice(record);
            }
            Datagram::Punch { token } => {
                out.push(TYPE_PUNCH);
                out.extend_from_slice(&token);
            }
            Datagram::PunchAck { token } => {
                out.push(TYPE_PUNCH_ACK);
                out.extend_from_slice(&token);
            }
        }
    }

    /// Length in bytes of what [`Datagram::write`] appends.
    pub fn encoded_len(&self) -> usize {
        match self {
            Datagram::HandshakeInit { noise, cookie, .. } => {
                1 + INDEX_BYTES + cookie.map_or(0, |_| COOKIE_BYTES) + noise.len()
            }
            Datagram::CookieReply { .. } => 1 + INDEX_BYTES + COOKIE_BYTES,
            Datagram::HandshakeResp { noise, .. } | Datagram::HandshakeFinal { noise, .. } => {
                HANDSHAKE_REPLY_HEADER_BYTES + noise.len()
            }
            Datagram::Transport { record, .. } => TRANSPORT_HEADER_BYTES + record.len(),
            Datagram::Punch { .. } | Datagram::PunchAck { .. } => 1 + PUNCH_TOKEN_BYTES,
        }
    }
}

/// Splits a big-endian `u32` index off the front of `bytes`.
fn read_index(bytes: &[u8]) -> Option<(u32, &[u8])> {
    let (index, rest) = bytes.split_first_chunk::<INDEX_BYTES>()?;
    Some((u32::from_be_bytes(*index), rest))
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

    fn round_trip(datagram: Datagram<'_>) -> Vec<u8> {
        let mut out = Vec::new();
        datagram.write(&mut out);
        assert_eq!(out.len(), datagram.encoded_len());
        assert_eq!(Datagram::parse(&out).ok(), Some(datagram));
        out
    }

    #[test]
    fn punch_datagrams_round_trip_and_need_exactly_one_token() {
        let token = [7u8; PUNCH_TOKEN_BYTES];
        let punch = round_trip(Datagram::Punch { token });
        assert_eq!(punch[0], TYPE_PUNCH);
        let ack = round_trip(Datagram::PunchAck { token });
        assert_eq!(ack[0], TYPE_PUNCH_ACK);
        assert!(matches!(
            Datagram::parse(&punch[..punch.len() - 1]),
            Err(WireError::Truncated { .. })
        ));
        let mut long = punch.clone();
        long.push(0);
        assert!(Datagram::parse(&long).is_err());
    }

    proptest! {
        #[test]
        fn every_type_round_trips(
            sender in any::<u32>(),
            receiver in any::<u32>(),
            payload in vec(any::<u8>(), RECORD_OVERHEAD..MAX_DATAGRAM_BYTES - 25),
            cookie in any::<[u8; 16]>(),
        ) {
            let init = round_trip(Datagram::HandshakeInit { sender, cookie: None, noise: &payload });
            prop_assert_eq!(init[0], 1);
            let with_cookie = round_trip(Datagram::HandshakeInit {
                sender,
                cookie: Some(cookie),
                noise: &payload,
            });
            prop_assert_eq!(with_cookie[0], 8);
            let reply = round_trip(Datagram::CookieReply { receiver, cookie });
            prop_assert_eq!(reply.len(), 21);
            let resp = round_trip(Datagram::HandshakeResp { sender, receiver, noise: &payload });
            prop_assert_eq!(resp[0], 2);
            let fin = round_trip(Datagram::HandshakeFinal { sender, receiver, noise: &payload });
            prop_assert_eq!(fin[0], 3);
            let transport = round_trip(Datagram::Transport { receiver, record: &payload });
            prop_assert_eq!(transport[0], 4);
            prop_assert_eq!(&transport[1..5], &receiver.to_be_bytes());
        }

        /// Parsing never panics, and whatever parses writes back to the same bytes.
        #[test]
        fn arbitrary_bytes_parse_canonically(bytes in vec(any::<u8>(), 0..1300)) {
            if let Ok(datagram) = Datagram::parse(&bytes) {
                let mut out = Vec::new();
                datagram.write(&mut out);
                prop_assert_eq!(out, bytes);
            }
        }
    }

    #[test]
    fn layouts_are_pinned() {
        let resp = round_trip(Datagram::HandshakeResp {
            sender: 0x0102_0304,
            receiver: 0x0a0b_0c0d,
            noise: b"xy",
        });
        assert_eq!(resp, [2, 1, 2, 3, 4, 0x0a, 0x0b, 0x0c, 0x0d, b'x', b'y']);
        let init = round_trip(Datagram::HandshakeInit {
            sender: 7,
            cookie: None,
            noise: b"",
        });
        assert_eq!(init, [1, 0, 0, 0, 7]);
        let init = round_trip(Datagram::HandshakeInit {
            sender: 7,
            cookie: Some([0xcc; 16]),
            noise: b"n",
        });
        let mut want = vec![8, 0, 0, 0, 7];
        want.extend_from_slice(&[0xcc; 16]);
        want.push(b'n');
        assert_eq!(init, want);
        let reply = round_trip(Datagram::CookieReply {
            receiver: 9,
            cookie: [0xdd; 16],
        });
        let mut want = vec![7, 0, 0, 0, 9];
        want.extend_from_slice(&[0xdd; 16]);
        assert_eq!(reply, want);
    }

    #[test]
    fn empty_is_truncated() {
        assert!(matches!(
            Datagram::parse(&[]),
            Err(WireError::Truncated { len: 0, min: 1, .. })
        ));
    }

    #[test]
    fn unknown_types_are_rejected() {
        for kind in [0u8, 9, 0x7f, 0xff] {
            let mut bytes = vec![kind];
            bytes.extend_from_slice(&[0; 40]);
            assert!(matches!(
                Datagram::parse(&bytes),
                Err(WireError::UnknownDatagramType(k)) if k == kind
            ));
        }
    }

    #[test]
    fn short_headers_are_truncated() {
        let cases = [
            (TYPE_HANDSHAKE_INIT, 5),
            (TYPE_HANDSHAKE_INIT_COOKIE, 21),
            (TYPE_COOKIE_REPLY, 21),
            (TYPE_HANDSHAKE_RESP, 9),
            (TYPE_HANDSHAKE_FINAL, 9),
            (TYPE_TRANSPORT, 5 + RECORD_OVERHEAD),
        ];
        for (kind, min) in cases {
            for len in 1..min {
                let mut bytes = vec![0u8; len];
                bytes[0] = kind;
                assert!(
                    matches!(Datagram::parse(&bytes), Err(WireError::Truncated { min: m, .. }) if m == min),
                    "type {kind} len {len}"
                );
            }
            let mut bytes = vec![0u8; min];
            bytes[0] = kind;
            assert!(Datagram::parse(&bytes).is_ok(), "type {kind} len {min}");
        }
    }

    #[test]
    fn oversize_is_rejected() {
        let mut bytes = vec![0u8; MAX_DATAGRAM_BYTES + 1];
        bytes[0] = TYPE_TRANSPORT;
        assert!(matches!(
            Datagram::parse(&bytes),
            Err(WireError::Oversize {
                len: 1201,
                max: 1200
            })
        ));
        assert!(Datagram::parse(&bytes[..MAX_DATAGRAM_BYTES]).is_ok());
    }
}

//! One UDP session's datagram mapping, pure: between a [`Link`](crate::proto::link::Link)'s
//! handshake steps and records and the session datagrams of [`crate::wire::udp`].
//!
//! A session is known by two indices, WireGuard's way: ours (chosen by our listener socket) and
//! the peer's (learned from its first handshake datagram). The PeerActor holds one
//! [`UdpSession`] per UDP link and passes bytes through it; the ListenerActor has already
//! checked a datagram's index and source before it gets here.

use crate::proto::link::{Packet, Transmit};
use crate::wire::udp::{Datagram, COOKIE_BYTES, MAX_DATAGRAM_BYTES};

/// See the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpSession {
    /// Our index for the session.
    pub local_idx: u32,
    /// The peer's index, once its first handshake datagram told it.
    pub remote_idx: Option<u32>,
    /// A listener under load asked us to repeat our init with this cookie.
    pub cookie: Option<[u8; COOKIE_BYTES]>,
}

impl UdpSession {
    /// A session with our index (and the peer's, when an init already named it).
    pub fn new(local_idx: u32, remote_idx: Option<u32>) -> UdpSession {
        UdpSession {
            local_idx,
            remote_idx,
            cookie: None,
        }
    }

    /// The datagram carrying `t`; `None` while the peer's index is unknown (nothing but our
    /// handshake init can be addressed before it).
    pub fn encode(&self, t: &Transmit) -> Option<Vec<u8>> {
        let remote_idx = self.remote_idx.or(match t {
            Transmit::Handshake { step: 1, .. } => Some(0),
            _ => None,
        })?;
        let datagram = match t {
            Transmit::Handshake { step: 1, bytes } => Datagram::HandshakeInit {
                sender: self.local_idx,
                cookie: self.cookie,
                noise: bytes,
            },
            Transmit::Handshake { step: 2, bytes } => Datagram::HandshakeResp {
                sender: self.local_idx,
                receiver: remote_idx,
                noise: bytes,
            },
            Transmit::Handshake { bytes, .. } => Datagram::HandshakeFinal {
                sender: self.local_idx,
                receiver: remote_idx,
                noise: bytes,
            },
            Transmit::Record(record) | Transmit::Data(record) => Datagram::Transport {
                receiver: remote_idx,
                record,
            },
        };
        let mut out = Vec::with_capacity(MAX_DATAGRAM_BYTES);
        datagram.write(&mut out);
        Some(out)
    }

    /// What a datagram of this session carries for the link, learning the peer's index from
    /// its first handshake datagram; `None` for what is not the link's (garbage, punch
    /// datagrams, which the listener hands to the relay, and a cookie reply, which only
    /// changes how our next init goes out: the link's retransmission sends it).
    pub fn decode<'a>(&mut self, data: &'a [u8]) -> Option<Packet<'a>> {
        let packet = match Datagram::parse(data).ok()? {
            Datagram::CookieReply { cookie, .. } => {
                if self.remote_idx.is_none() {
                    self.cookie = Some(cookie);
                }
                return None;
            }
            Datagram::HandshakeInit { sender, noise, .. } => {
                self.remote_idx.get_or_insert(sender);
                Packet::Handshake {
                    step: 1,
                    bytes: noise,
                }
            }
            Datagram::HandshakeResp { sender, noise, .. } => {
                self.remote_idx.get_or_insert(sender);
                Packet::Handshake {
                    step: 2,
                    bytes: noise,
                }
            }
            Datagram::HandshakeFinal { noise, .. } => Packet::Handshake {
                step: 3,
                bytes: noise,
            },
            Datagram::Transport { record, .. } => Packet::Record(record),
            Datagram::Punch { .. } | Datagram::PunchAck { .. } => return None,
        };
        Some(packet)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_init_goes_out_before_the_peer_index_is_known() {
        let dialer = UdpSession::new(7, None);
        let init = Transmit::Handshake {
            step: 1,
            bytes: vec![1; 32],
        };
        let record = Transmit::Record(vec![2; 40]);
        assert!(dialer.encode(&init).is_some());
        assert_eq!(dialer.encode(&record), None);
    }

    #[test]
    fn a_handshake_exchange_maps_both_ways_and_learns_the_indices() {
        let mut dialer = UdpSession::new(7, None);
        let mut acceptor = UdpSession::new(9, None);
        let init = dialer
            .encode(&Transmit::Handshake {
                step: 1,
                bytes: vec![1; 32],
            })
            .unwrap();
        assert!(matches!(
            acceptor.decode(&init),
            Some(Packet::Handshake { step: 1, .. })
        ));
        assert_eq!(acceptor.remote_idx, Some(7));
        let resp = acceptor
            .encode(&Transmit::Handshake {
                step: 2,
                bytes: vec![3; 80],
            })
            .unwrap();
        assert!(matches!(
            dialer.decode(&resp),
            Some(Packet::Handshake { step: 2, .. })
        ));
        assert_eq!(dialer.remote_idx, Some(9));
        let record = dialer.encode(&Transmit::Record(vec![4; 40])).unwrap();
        match acceptor.decode(&record) {
            Some(Packet::Record(r)) => assert_eq!(r, &[4; 40][..]),
            other => panic!("{other:?}"),
        }
    }

    /// A listener under load answers our init with a cookie: the next init carries it, and
    /// once the session is up a cookie reply changes nothing.
    #[test]
    fn a_cookie_reply_makes_the_next_init_carry_the_cookie() {
        let mut dialer = UdpSession::new(7, None);
        let init = Transmit::Handshake {
            step: 1,
            bytes: vec![1; 112],
        };
        let first = dialer.encode(&init).unwrap();
        assert!(matches!(
            Datagram::parse(&first),
            Ok(Datagram::HandshakeInit { cookie: None, .. })
        ));
        let mut reply = Vec::new();
        Datagram::CookieReply {
            receiver: 7,
            cookie: [9; 16],
        }
        .write(&mut reply);
        assert!(
            reply.len() < first.len(),
            "the reply is smaller than the init"
        );
        assert!(dialer.decode(&reply).is_none());
        let again = dialer.encode(&init).unwrap();
        assert!(matches!(
            Datagram::parse(&again),
            Ok(Datagram::HandshakeInit {
                sender: 7,
                cookie: Some(c),
                ..
            }) if c == [9; 16]
        ));
    }

    #[test]
    fn punch_datagrams_and_garbage_are_not_the_links() {
        let mut s = UdpSession::new(1, Some(2));
        let mut punch = Vec::new();
        Datagram::Punch { token: [5; 16] }.write(&mut punch);
        assert!(s.decode(&punch).is_none());
        assert!(s.decode(&[0xff, 1, 2]).is_none());
    }
}

//! The DiscoveryActor's LAN sockets: one UDP socket per multicast group of config
//! `lan_discovery_group`, joined on the default interface, with the beacon format and rules of
//! `proto::lan`. Not an actor: the DiscoveryActor owns the sockets, sends its beacons on them,
//! and a task per socket hands what it hears to the actor as [`LanDatagram`]s.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use actix::prelude::*;
use log::{debug, warn};
use socket2::{Domain, Protocol, Socket, Type};

use crate::proto::lan::BEACON_BYTES;

/// A datagram heard on a LAN socket (task -> DiscoveryActor).
#[derive(Message)]
#[rtype(result = "()")]
pub struct LanDatagram {
    pub src: SocketAddr,
    pub data: Vec<u8>,
}

/// One joined group.
pub struct LanSocket {
    pub group: SocketAddr,
    /// The same socket as the reader task's, for sending: a plain non-blocking `sendto`
    /// (tokio's `try_send_to` answers WouldBlock until the socket was polled for writing).
    sender: std::net::UdpSocket,
    /// A send failed once already (logged once, then only at debug).
    send_failed: bool,
    /// Datagrams the reader dropped because the actor's mailbox was full (a flood).
    dropped: Arc<AtomicU64>,
}

/// A socket bound to `group`'s port that receives its datagrams, sends to it with a TTL of 1
/// (the LAN only) and hears the other nodes of this host too (multicast loop).
fn bind(group: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    let domain = if group.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let socket = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?;
    // Several nodes on one host share the port: each gets a copy of every datagram.
    socket.set_reuse_address(true)?;
    match group.ip() {
        IpAddr::V4(ip) => {
            socket.bind(&group.into())?;
            socket.join_multicast_v4(&ip, &Ipv4Addr::UNSPECIFIED)?;
            socket.set_multicast_ttl_v4(1)?;
            socket.set_multicast_loop_v4(true)?;
        }
        IpAddr::V6(ip) => {
            socket.set_only_v6(true)?;
            // Linux refuses to bind an IPv6 socket to a multicast address (EINVAL).
            let any = SocketAddr::new(std::net::Ipv6Addr::UNSPECIFIED.into(), group.port());
            socket.bind(&any.into())?;
            socket.join_multicast_v6(&ip, 0)?;
            socket.set_multicast_hops_v6(1)?;
            socket.set_multicast_loop_v6(true)?;
        }
    }
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

impl LanSocket {
    /// Joins `group` and starts the task that hands its datagrams to `to`. `None` (logged) when
    /// this host cannot join it (no such interface, no multicast route, no IPv6).
    pub fn open<A>(group: SocketAddr, to: Addr<A>) -> Option<LanSocket>
    where
        A: Actor<Context = Context<A>> + Handler<LanDatagram>,
    {
        let opened = bind(group).and_then(|s| {
            let sender = s.try_clone()?;
            Ok((tokio::net::UdpSocket::from_std(s)?, sender))
        });
        let dropped = Arc::new(AtomicU64::new(0));
        let counter = dropped.clone();
        let (reader, sender) = match opened {
            Ok(pair) => pair,
            Err(e) => {
                warn!("LAN discovery on {group} is off: {e}");
                return None;
            }
        };
        actix::spawn(async move {
            // Larger than a beacon, so an oversized datagram is seen as such and refused.
            let mut buf = vec![0u8; BEACON_BYTES * 2];
            loop {
                match reader.recv_from(&mut buf).await {
                    Ok((n, src)) => {
                        let datagram = LanDatagram {
                            src,
                            data: buf[..n].to_vec(),
                        };
                        // The mailbox is bounded: under a flood, datagrams are dropped here.
                        if to.try_send(datagram).is_err() {
                            if !to.connected() {
                                return;
                            }
                            counter.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Err(e) => debug!("LAN socket {group}: {e}"),
                }
            }
        });
        Some(LanSocket {
            group,
            sender,
            send_failed: false,
            dropped,
        })
    }

    /// Datagrams dropped so far because the node was busy.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Sends a beacon to the group; a failure is logged once per socket (an interface without
    /// multicast fails every time).
    pub fn send(&mut self, beacon: &[u8]) {
        match self.sender.send_to(beacon, self.group) {
            Ok(_) => {
                if self.send_failed {
                    debug!("LAN beacons to {} go out again", self.group);
                    self.send_failed = false;
                }
            }
            Err(e) if !self.send_failed => {
                warn!(
                    "cannot send LAN beacons to {}: {e} (logged once)",
                    self.group
                );
                self.send_failed = true;
            }
            Err(e) => debug!("LAN beacon to {}: {e}", self.group),
        }
    }
}

//! LAN discovery beacons, pure: the datagram format and what a node does with one it hears.
//!
//! A node announces itself to an administratively scoped multicast group (IPv4
//! [`DEFAULT_GROUP_V4`], IPv6 link-scope [`DEFAULT_GROUP_V6`]) every [`ANNOUNCE_INTERVAL_MS`],
//! at start, and soon after it hears a node it did not know (so a newcomer learns everyone in
//! about a second, as Syncthing's local discovery does). Members that hear it dial it; identity
//! and membership are then proven by the link handshake, as for any dial.
//!
//! # The beacon reveals nothing but its existence
//!
//! ```text
//! magic "MTL1" (4) | nonce (24) | XChaCha20-Poly1305(key, nonce, aad = magic, plaintext) + tag (16)
//! plaintext = length (u16 BE) | MessagePack {id, instance, sent_unix_ms, ports} | zero padding
//! ```
//!
//! The key is `NetworkKey::expand("lan beacon v1")`, so only members of the same network (same
//! name and secret) can open a beacon or make one: a stranger sees random bytes of a fixed size
//! ([`BEACON_BYTES`]: the padding hides the id's length), learns neither the network, the node id
//! nor the ports, and cannot forge one. `ports` are the transports and ports of the node's
//! listeners that are not bound to loopback; the receiver dials them at the datagram's source
//! address. `instance` is random per process start: a new one for a known id means the node
//! restarted, and its dialer skips its backoff.
//!
//! # What a stranger can still do, and the bounds on it
//!
//! Replay a member's beacon from its own address, to make members dial it. A beacon is taken
//! only within [`MAX_SKEW_MS`] of its timestamp and only if it is newer than the last one taken
//! from that (id, instance), and the dials a source address can cause are limited to
//! [`DIALS_PER_SOURCE`] per [`SOURCE_WINDOW_MS`] (state for at most [`MAX_SOURCES`] addresses).
//! Such a dial reaches a handshake the replayer cannot complete.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

use chacha20poly1305::{AeadInOut, Key, KeyInit, Tag, XChaCha20Poly1305, XNonce};
use serde::{Deserialize, Serialize};

use crate::addr::Transport;
use crate::proto::handshake::NetworkKey;

/// Default IPv4 group: in 239.255.0.0/16, the IPv4 organization-local scope (RFC 2365).
pub const DEFAULT_GROUP_V4: &str = "239.255.77.1:17771";
/// Default IPv6 group: `ff12::` is transient, link-local scope (RFC 4291).
pub const DEFAULT_GROUP_V6: &str = "[ff12::6d74]:17771";
/// Between two announcements.
pub const ANNOUNCE_INTERVAL_MS: u64 = 30_000;
/// After hearing a new node, our own beacon goes out this soon (and no sooner than this after
/// the last one).
pub const ANSWER_DELAY_MS: u64 = 1_000;
/// A beacon further than this from our clock is refused (a replay, or a clock far off).
pub const MAX_SKEW_MS: u64 = 90_000;
/// Dials one source address may cause per [`SOURCE_WINDOW_MS`]. A host running several nodes
/// sends one beacon per node per interval, so this leaves room for a few of them.
pub const DIALS_PER_SOURCE: u32 = 16;
/// See [`DIALS_PER_SOURCE`].
pub const SOURCE_WINDOW_MS: u64 = 60_000;
/// Source addresses whose dials are counted at once (the oldest window is dropped beyond).
pub const MAX_SOURCES: usize = 256;
/// (id, instance) pairs remembered for replay and restart detection.
pub const MAX_REMEMBERED: usize = 1024;
/// Listener ports a beacon carries at most.
pub const MAX_PORTS: usize = 8;

const MAGIC: [u8; 4] = *b"MTL1";
const NONCE_BYTES: usize = 24;
const TAG_BYTES: usize = 16;
/// Plaintext size, padding included: room for a 64-character id and [`MAX_PORTS`] ports.
const PLAINTEXT_BYTES: usize = 192;
/// Every beacon's size on the wire.
pub const BEACON_BYTES: usize = MAGIC.len() + NONCE_BYTES + PLAINTEXT_BYTES + TAG_BYTES;
const KEY_LABEL: &[u8] = b"lan beacon v1";

/// What a beacon says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Beacon {
    /// The announcing node's id.
    pub id: String,
    /// Random per process start.
    pub instance: u64,
    /// When it was sent, by the sender's clock.
    pub sent_unix_ms: u64,
    /// Its listeners reachable from the LAN: (`udp` | `tcp` | `ws`, port).
    pub ports: Vec<(String, u16)>,
}

/// Why a datagram was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("not a beacon (size or magic)")]
    NotABeacon,
    /// Not made with our network's key: another network's beacon, or a forgery.
    #[error("not from this network")]
    Foreign,
    #[error("malformed content")]
    Malformed,
    #[error("too old or too far ahead")]
    Stale,
    #[error("replayed")]
    Replayed,
    #[error("over the dial limit for its source address")]
    RateLimited,
}

impl Refusal {
    /// Its name in counters.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::NotABeacon => "not_a_beacon",
            Refusal::Foreign => "foreign",
            Refusal::Malformed => "malformed",
            Refusal::Stale => "stale",
            Refusal::Replayed => "replayed",
            Refusal::RateLimited => "rate_limited",
        }
    }
}

/// The beacon cipher of one network.
#[derive(Clone)]
pub struct BeaconKey {
    cipher: XChaCha20Poly1305,
}

impl std::fmt::Debug for BeaconKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BeaconKey").finish_non_exhaustive()
    }
}

impl BeaconKey {
    pub fn new(network_key: &NetworkKey) -> BeaconKey {
        let key = network_key.expand(KEY_LABEL);
        let key: &Key = (&*key).into();
        BeaconKey {
            cipher: XChaCha20Poly1305::new(key),
        }
    }

    /// The datagram for `beacon`, sealed with `nonce` (random per beacon: the caller draws it).
    /// `None` if the beacon does not fit (an id over 64 characters or too many ports).
    pub fn seal(&self, beacon: &Beacon, nonce: [u8; NONCE_BYTES]) -> Option<Vec<u8>> {
        let body = rmp_serde::to_vec(beacon).ok()?;
        if body.len() + 2 > PLAINTEXT_BYTES || beacon.ports.len() > MAX_PORTS {
            return None;
        }
        let mut out = Vec::with_capacity(BEACON_BYTES);
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&(body.len() as u16).to_be_bytes());
        out.extend_from_slice(&body);
        out.resize(MAGIC.len() + NONCE_BYTES + PLAINTEXT_BYTES, 0);
        let tag = self
            .cipher
            .encrypt_inout_detached(
                &XNonce::from(nonce),
                &MAGIC,
                (&mut out[MAGIC.len() + NONCE_BYTES..]).into(),
            )
            .ok()?;
        out.extend_from_slice(tag.as_slice());
        Some(out)
    }

    /// Opens a datagram: the beacon, if it is one of this network's.
    pub fn open(&self, datagram: &[u8]) -> Result<Beacon, Refusal> {
        if datagram.len() != BEACON_BYTES || datagram[..MAGIC.len()] != MAGIC {
            return Err(Refusal::NotABeacon);
        }
        let rest = &datagram[MAGIC.len()..];
        let (nonce, rest) = rest
            .split_first_chunk::<NONCE_BYTES>()
            .ok_or(Refusal::NotABeacon)?;
        let (sealed, tag) = rest
            .split_last_chunk::<TAG_BYTES>()
            .ok_or(Refusal::NotABeacon)?;
        let mut plain = sealed.to_vec();
        self.cipher
            .decrypt_inout_detached(
                &XNonce::from(*nonce),
                &MAGIC,
                plain.as_mut_slice().into(),
                &Tag::from(*tag),
            )
            .map_err(|_| Refusal::Foreign)?;
        let len = usize::from(u16::from_be_bytes([plain[0], plain[1]]));
        let body = plain.get(2..2 + len).ok_or(Refusal::Malformed)?;
        let beacon: Beacon = rmp_serde::from_slice(body).map_err(|_| Refusal::Malformed)?;
        let ports_ok = beacon.ports.len() <= MAX_PORTS
            && beacon
                .ports
                .iter()
                .all(|(t, p)| *p != 0 && transport(t).is_some());
        if !crate::wire::frame::valid_id(&beacon.id) || !ports_ok {
            return Err(Refusal::Malformed);
        }
        Ok(beacon)
    }
}

fn transport(name: &str) -> Option<Transport> {
    [Transport::Udp, Transport::Tcp, Transport::Ws]
        .into_iter()
        .find(|t| t.as_str() == name)
}

/// What to do about a beacon that was taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heard {
    /// The node.
    pub id: String,
    /// Its listener URLs at the beacon's source address, best transport first.
    pub urls: Vec<String>,
    /// A new instance of a node we had heard before: it restarted.
    pub restarted: bool,
    /// The first beacon of this (id, instance): answer with ours soon.
    pub new: bool,
}

/// The beacons heard so far: replay and restart memory, and the per-source dial limit.
#[derive(Debug)]
pub struct Listener {
    key: BeaconKey,
    me: String,
    /// id -> (instance, sent_unix_ms of the newest beacon taken).
    seen: HashMap<String, (u64, u64)>,
    /// source address -> (window start ms, dials in it).
    sources: HashMap<IpAddr, (u64, u32)>,
}

impl Listener {
    pub fn new(key: BeaconKey, me: &str) -> Listener {
        Listener {
            key,
            me: me.to_string(),
            seen: HashMap::new(),
            sources: HashMap::new(),
        }
    }

    /// The network's beacon key (to seal our own beacons).
    pub fn key(&self) -> &BeaconKey {
        &self.key
    }

    /// A datagram from `src` at `now_unix_ms` (wall clock, compared with the beacon's) and
    /// `now_ms` (monotonic, for the rate limit). `Ok(None)`: our own beacon, looped back.
    pub fn on_datagram(
        &mut self,
        src: SocketAddr,
        datagram: &[u8],
        now_unix_ms: u64,
        now_ms: u64,
    ) -> Result<Option<Heard>, Refusal> {
        let beacon = self.key.open(datagram)?;
        if beacon.id == self.me {
            return Ok(None);
        }
        if beacon.sent_unix_ms.abs_diff(now_unix_ms) > MAX_SKEW_MS {
            return Err(Refusal::Stale);
        }
        let held = self.seen.get(&beacon.id).copied();
        if let Some((instance, sent)) = held {
            if instance == beacon.instance && beacon.sent_unix_ms <= sent {
                return Err(Refusal::Replayed);
            }
        }
        self.count_dial(src.ip(), now_ms)?;
        if held.is_none() && self.seen.len() >= MAX_REMEMBERED {
            // Forget the stalest entry rather than refuse a new node.
            if let Some(oldest) = self
                .seen
                .iter()
                .min_by_key(|(_, (_, sent))| *sent)
                .map(|(id, _)| id.clone())
            {
                self.seen.remove(&oldest);
            }
        }
        self.seen
            .insert(beacon.id.clone(), (beacon.instance, beacon.sent_unix_ms));
        let mut ports: Vec<(Transport, u16)> = beacon
            .ports
            .iter()
            .filter_map(|(t, p)| Some((transport(t)?, *p)))
            .collect();
        // UDP (QUIC) first, then TCP, then WebSocket, as the router ranks links.
        ports.sort();
        ports.dedup();
        // An IPv6 link-local source needs its interface scope to be dialled, which a URL
        // cannot carry: such a beacon is heard (and answered) but gives nothing to dial; the
        // node's IPv4 beacon or a routable IPv6 address does.
        let host = match src.ip() {
            IpAddr::V4(ip) => Some(ip.to_string()),
            IpAddr::V6(ip) if ip.is_unicast_link_local() => None,
            IpAddr::V6(ip) => Some(format!("[{ip}]")),
        };
        let urls = match host {
            Some(host) => ports
                .iter()
                .map(|(t, p)| format!("{t}://{host}:{p}"))
                .collect(),
            None => Vec::new(),
        };
        Ok(Some(Heard {
            id: beacon.id,
            urls,
            restarted: held.is_some_and(|(instance, _)| instance != beacon.instance),
            new: held.is_none_or(|(instance, _)| instance != beacon.instance),
        }))
    }

    fn count_dial(&mut self, ip: IpAddr, now_ms: u64) -> Result<(), Refusal> {
        if !self.sources.contains_key(&ip) && self.sources.len() >= MAX_SOURCES {
            self.sources
                .retain(|_, (start, _)| now_ms.saturating_sub(*start) < SOURCE_WINDOW_MS);
            if self.sources.len() >= MAX_SOURCES {
                let oldest = self
                    .sources
                    .iter()
                    .min_by_key(|(_, (start, _))| *start)
                    .map(|(ip, _)| *ip);
                if let Some(oldest) = oldest {
                    self.sources.remove(&oldest);
                }
            }
        }
        let entry = self.sources.entry(ip).or_insert((now_ms, 0));
        if now_ms.saturating_sub(entry.0) >= SOURCE_WINDOW_MS {
            *entry = (now_ms, 0);
        }
        if entry.1 >= DIALS_PER_SOURCE {
            return Err(Refusal::RateLimited);
        }
        entry.1 += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(secret: &str) -> BeaconKey {
        BeaconKey::new(&NetworkKey::derive("lan", secret))
    }

    fn beacon(id: &str, instance: u64, sent: u64) -> Beacon {
        Beacon {
            id: id.into(),
            instance,
            sent_unix_ms: sent,
            ports: vec![("tcp".into(), 7000), ("udp".into(), 7001)],
        }
    }

    const NOW: u64 = 1_800_000_000_000;

    fn src(last: u8) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, last], 17771))
    }

    #[test]
    fn a_beacon_opens_for_members_only_and_hides_its_content() {
        let k = key("s");
        let b = beacon("node-1", 7, NOW);
        let d = k.seal(&b, [1; NONCE_BYTES]).unwrap();
        assert_eq!(d.len(), BEACON_BYTES);
        assert_eq!(k.open(&d).unwrap(), b);
        // A short id and a long one give beacons of the same size.
        let long = beacon(&"x".repeat(64), 7, NOW);
        assert_eq!(k.seal(&long, [2; NONCE_BYTES]).unwrap().len(), BEACON_BYTES);
        // Nothing readable: not the id, not the ports.
        assert!(!d.windows(6).any(|w| w == b"node-1"));
        assert!(!d.windows(3).any(|w| w == b"tcp"));
        // Another secret (or network) cannot open it.
        assert_eq!(key("other").open(&d), Err(Refusal::Foreign));
        // Any bit flipped anywhere after the magic is refused.
        for i in 4..d.len() {
            let mut bad = d.clone();
            bad[i] ^= 0x10;
            assert_eq!(k.open(&bad), Err(Refusal::Foreign), "byte {i}");
        }
        assert_eq!(k.open(&d[..d.len() - 1]), Err(Refusal::NotABeacon));
        assert_eq!(k.open(b"MTL1"), Err(Refusal::NotABeacon));
    }

    #[test]
    fn what_does_not_fit_is_not_sealed_and_bad_content_is_refused() {
        let k = key("s");
        assert!(k.seal(&beacon(&"x".repeat(200), 1, NOW), [0; 24]).is_none());
        let mut many = beacon("a", 1, NOW);
        many.ports = (1..=9).map(|p| ("tcp".to_string(), p)).collect();
        assert!(k.seal(&many, [0; 24]).is_none());
        let mut bad = beacon("a", 1, NOW);
        bad.ports = vec![("quic".into(), 1)];
        let d = k.seal(&bad, [0; 24]).unwrap();
        assert_eq!(k.open(&d), Err(Refusal::Malformed));
        let d = k.seal(&beacon("no spaces", 1, NOW), [0; 24]).unwrap();
        assert_eq!(k.open(&d), Err(Refusal::Malformed));
    }

    #[test]
    fn a_heard_beacon_gives_urls_at_its_source_and_new_and_restart_flags() {
        let k = key("s");
        let mut l = Listener::new(k.clone(), "me");
        let d = k.seal(&beacon("b", 1, NOW), [3; 24]).unwrap();
        let heard = l.on_datagram(src(2), &d, NOW + 5, 0).unwrap().unwrap();
        assert_eq!(heard.id, "b");
        assert_eq!(heard.urls, ["udp://10.0.0.2:7001", "tcp://10.0.0.2:7000"]);
        assert!(heard.new && !heard.restarted);
        // The next periodic beacon: not new.
        let d = k.seal(&beacon("b", 1, NOW + 30_000), [4; 24]).unwrap();
        let heard = l
            .on_datagram(src(2), &d, NOW + 30_000, 30_000)
            .unwrap()
            .unwrap();
        assert!(!heard.new && !heard.restarted);
        // Restarted: a new instance.
        let d = k.seal(&beacon("b", 2, NOW + 31_000), [5; 24]).unwrap();
        let heard = l
            .on_datagram(src(2), &d, NOW + 31_000, 31_000)
            .unwrap()
            .unwrap();
        assert!(heard.new && heard.restarted);
        // Our own beacon, looped back by the kernel: nothing.
        let d = k.seal(&beacon("me", 9, NOW), [6; 24]).unwrap();
        assert_eq!(l.on_datagram(src(1), &d, NOW, 31_000), Ok(None));
        // IPv6 sources get brackets.
        let d = k.seal(&beacon("c", 1, NOW), [7; 24]).unwrap();
        let v6: SocketAddr = "[fd00::5]:17771".parse().unwrap();
        let heard = l.on_datagram(v6, &d, NOW, 31_000).unwrap().unwrap();
        assert_eq!(heard.urls[1], "tcp://[fd00::5]:7000");
        // A link-local source: heard, nothing to dial.
        let d = k.seal(&beacon("e", 1, NOW), [8; 24]).unwrap();
        let ll: SocketAddr = "[fe80::5]:17771".parse().unwrap();
        let heard = l.on_datagram(ll, &d, NOW, 31_000).unwrap().unwrap();
        assert!(heard.new && heard.urls.is_empty());
    }

    #[test]
    fn replays_stale_beacons_and_floods_are_bounded() {
        let k = key("s");
        let mut l = Listener::new(k.clone(), "me");
        let d = k.seal(&beacon("b", 1, NOW), [3; 24]).unwrap();
        assert!(l.on_datagram(src(2), &d, NOW, 0).is_ok());
        // The same beacon again, from anywhere: a replay.
        assert_eq!(l.on_datagram(src(66), &d, NOW, 1), Err(Refusal::Replayed));
        // Too old, or too far ahead.
        let old = k
            .seal(&beacon("c", 1, NOW - MAX_SKEW_MS - 1), [4; 24])
            .unwrap();
        assert_eq!(l.on_datagram(src(3), &old, NOW, 2), Err(Refusal::Stale));
        let ahead = k
            .seal(&beacon("c", 1, NOW + MAX_SKEW_MS + 1), [4; 24])
            .unwrap();
        assert_eq!(l.on_datagram(src(3), &ahead, NOW, 2), Err(Refusal::Stale));

        // One source address sending many valid beacons (here: many ids): at most
        // DIALS_PER_SOURCE are taken per window.
        let mut taken = 0;
        for i in 0..100u64 {
            let d = k
                .seal(&beacon(&format!("n{i}"), 1, NOW), [i as u8; 24])
                .unwrap();
            if l.on_datagram(src(9), &d, NOW, 10).is_ok() {
                taken += 1;
            }
        }
        assert_eq!(taken, DIALS_PER_SOURCE);
        // The window passes: room again.
        let d = k.seal(&beacon("late", 1, NOW + 60_000), [200; 24]).unwrap();
        assert!(l
            .on_datagram(src(9), &d, NOW + 60_000, 10 + SOURCE_WINDOW_MS)
            .is_ok());
        // Forged beacons never count, whatever their number.
        let mut l = Listener::new(k.clone(), "me");
        let forged = key("guess").seal(&beacon("b", 1, NOW), [1; 24]).unwrap();
        for _ in 0..1000 {
            assert_eq!(
                l.on_datagram(src(9), &forged, NOW, 0),
                Err(Refusal::Foreign)
            );
        }
        assert!(l.sources.is_empty() && l.seen.is_empty());
        // The source table stays bounded.
        for i in 0..(MAX_SOURCES as u64 + 50) {
            let d = k
                .seal(&beacon(&format!("s{i}"), 1, NOW), [i as u8; 24])
                .unwrap();
            let ip = SocketAddr::from(([10, 1, (i >> 8) as u8, i as u8], 1));
            let _ = l.on_datagram(ip, &d, NOW, i);
        }
        assert!(l.sources.len() <= MAX_SOURCES);
    }
}

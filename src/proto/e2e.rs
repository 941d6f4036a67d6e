//! End-to-end sealing of [`Envelope`]s: what only the source and the target of a message
//! can read, whatever relays it crosses.
//!
//! Links ([`super::handshake`], [`crate::wire::record`]) protect one hop. A message for a
//! node with no direct link travels in a [`Frame::Data`](crate::wire::frame::Frame::Data)
//! envelope through relays that read its clear header (to route it) but must not read or
//! alter its content. For that:
//!
//! - Every pair of nodes shares a [`PairKey`]: HKDF-SHA256 over the X25519 agreement of
//!   their identity keys, salted with a key derived from the network secret and bound to
//!   both node ids. Only the two endpoints can compute it (a relay knows the network
//!   secret but neither private key), and only inside the same network. The key is the
//!   same in both directions; the direction is authenticated by the associated data.
//! - [`seal`] encrypts the plaintext with XChaCha20-Poly1305 under a fresh random 24-byte
//!   nonce, and authenticates every header field except `hops` (which relays increment)
//!   as associated data ([`associated_data`]): a relay can neither redirect, re-date,
//!   re-label nor swap the direction of a message.
//! - The target remembers which `(source, id)` it accepted until the message would have
//!   expired anyway ([`ReplayCache`]), and drops messages that are expired or dated too far
//!   in the future ([`MAX_CLOCK_SKEW_MS`]), so that a relay cannot replay a message later.
//! - The plaintext is a rmp-serde encoded [`Payload`].
//!
//! Receiving, in order: check `envelope.target` is this node and pick the pair key for
//! `envelope.source`; optionally [`ReplayCache::check`] to drop stale messages before
//! decrypting; [`open`]; then [`ReplayCache::check_and_insert`] (only after `open`
//! succeeded, so forged envelopes can neither fill the cache nor pre-empt a genuine id);
//! then [`Payload::decode`].
//!
//! Which public key belongs to which node id is up to the caller: an id pinned on a direct
//! link is proven by Noise, while a key learnt from a flooded
//! [`LinkState`](crate::wire::frame::LinkState) is only as trustworthy as the network
//! members that relayed it.
//!
//! Pure: no sockets, no clocks (time comes in as `now_ms`). The only side effect is
//! reading the operating system's random number generator for nonces.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::io::Cursor;
use std::sync::Arc;

use chacha20poly1305::{AeadInOut, Key, KeyInit, Tag, XChaCha20Poly1305, XNonce};
use hkdf::Hkdf;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::identity::{Identity, IdentityError};
use crate::proto::handshake::NetworkKey;
use crate::wire::frame::{Envelope, MessageKind};
use crate::wire::{MAX_DECODE_DEPTH, MAX_FRAME_BYTES};

/// HKDF info prefix of every [`PairKey`] (followed by the two node ids): domain
/// separation from every other key derived in msgtier. Bump the version with any
/// incompatible change of the sealing.
pub const E2E_INFO: &[u8] = b"msgtier e2e v1";

/// Label passed to [`NetworkKey::expand`] to get the HKDF salt of [`PairKey::derive`]:
/// ties pair keys to the network secret, so the same identities in another network (or
/// with another secret) agree on a different key.
const E2E_SALT_LABEL: &[u8] = b"e2e salt";

/// Prefix of the associated data of every seal ([`associated_data`]), so that the bytes
/// authenticated here can never be mistaken for another msgtier layout.
const AD_LABEL: &[u8] = b"msgtier e2e ad v3";

/// Length of an XChaCha20-Poly1305 nonce, in bytes (192 bits, draft-irtf-cfrg-xchacha):
/// long enough to be picked at random without a realistic chance of repeating.
pub const NONCE_BYTES: usize = 24;

/// Length of a Poly1305 authentication tag, in bytes (RFC 8439).
pub const TAG_BYTES: usize = 16;

/// Bytes [`seal`] adds to a plaintext: the nonce in front and the tag behind.
pub const SEAL_OVERHEAD_BYTES: usize = NONCE_BYTES + TAG_BYTES;

/// Largest plaintext [`seal`] accepts, in bytes: `envelope.sealed` must stay within the
/// wire limit [`MAX_FRAME_BYTES`] (checked by
/// [`Envelope::check_limits`](crate::wire::frame::Envelope::check_limits)).
pub const MAX_PLAINTEXT_BYTES: usize = MAX_FRAME_BYTES - SEAL_OVERHEAD_BYTES;

/// Byte encoding [`MessageKind::Request`] in the associated data (0 left unused, so an
/// all-zero layout is never a valid one).
const AD_KIND_REQUEST: u8 = 1;

/// Byte encoding [`MessageKind::Response`] in the associated data.
const AD_KIND_RESPONSE: u8 = 2;

/// How far, in milliseconds, an origin's clock may be ahead of the target's: a message is
/// refused as [`E2eError::FromFuture`] if dated more than this (or more than its own lifetime,
/// if shorter) ahead of the target's clock. One minute covers hosts without NTP for days
/// (typical quartz drift is a few seconds a day). No allowance is added at the other end: a
/// message expires at `timestamp_ms + ttl_ms` on the target's clock, the moment its sender
/// stops waiting, so a request withheld by a relay past the sender's timeout is refused (with
/// clocks that agree; a target whose clock is behind by d accepts it for d longer).
pub const MAX_CLOCK_SKEW_MS: u64 = 60_000;

/// Most replay-cache entries one source may hold: no member can fill the cache for others.
pub const REPLAY_QUOTA_PER_SOURCE: usize = 16_384;

/// Longest lifetime, in milliseconds, the target honours: a larger `ttl_ms` is treated as
/// this. Five minutes outlasts any store-and-forward path of a few relays, and bounds how
/// long a [`ReplayCache`] entry lives (at most `MAX_TTL_MS + 2 * MAX_CLOCK_SKEW_MS`).
pub const MAX_TTL_MS: u32 = 300_000;

/// Bytes [`Payload::encode`] reserves beyond the variable-length fields: map and array
/// markers, the variant names (at most 8 bytes each), a `u64`, an `i32`, two booleans and
/// up to four bin32/str32 length headers (5 bytes each) come to under 64.
const PAYLOAD_FIXED_OVERHEAD_BYTES: usize = 64;

/// Every way sealing, opening, replay checking or payload decoding can fail.
#[derive(Debug, thiserror::Error)]
pub enum E2eError {
    /// The X25519 agreement with the other node's public key was refused
    /// ([`IdentityError::LowOrderPublicKey`]: a low-order point would give a predictable
    /// shared secret).
    #[error("end-to-end key agreement failed: {0}")]
    KeyAgreement(#[source] IdentityError),

    /// The operating system's random number generator failed to give a nonce.
    #[error("operating system random number generator failed: {0}")]
    Random(getrandom::Error),

    /// The plaintext is too long to seal into an envelope the wire accepts.
    #[error("plaintext of {len} bytes exceeds the {max}-byte limit")]
    Oversize {
        /// Plaintext length that was refused.
        len: usize,
        /// The limit, [`MAX_PLAINTEXT_BYTES`].
        max: usize,
    },

    /// The cipher refused to encrypt (its limit is about 256 GiB, far above
    /// [`MAX_PLAINTEXT_BYTES`], so this is not expected).
    #[error("cannot encrypt {len} bytes")]
    Encrypt {
        /// Plaintext length that was refused.
        len: usize,
    },

    /// `envelope.sealed` is shorter than a nonce and a tag.
    #[error("sealed payload truncated: {len} bytes, need at least {min}")]
    Truncated {
        /// Length of `sealed`.
        len: usize,
        /// [`SEAL_OVERHEAD_BYTES`].
        min: usize,
    },

    /// Authentication failed: the wrong pair key (not an endpoint, another network), or
    /// the sealed bytes or an authenticated header field were altered.
    #[error("sealed payload failed authentication")]
    Decrypt,

    /// This `(source, id)` was already accepted and has not expired yet.
    #[error("message replayed")]
    Replayed,

    /// The message's lifetime (`timestamp_ms + ttl_ms`, ttl capped at [`MAX_TTL_MS`]) is over.
    #[error("message expired")]
    Expired,

    /// The message is dated more than [`MAX_CLOCK_SKEW_MS`] (or its lifetime) after our clock.
    #[error("message dated in the future")]
    FromFuture,

    /// The message is dated before this node started: what it accepted before is forgotten,
    /// so it could be a replay.
    #[error("message dated before this node started")]
    BeforeStart,

    /// The message is dated at or before its source's floor in the replay cache: older than
    /// the messages the cache had to forget to make room, so it could be one of them.
    #[error("message older than the replay window of its source")]
    BelowFloor,

    /// The plaintext is not a MessagePack encoding of a [`Payload`].
    #[error("malformed payload: {0}")]
    Decode(#[from] rmp_serde::decode::Error),

    /// A payload decoded but did not use all the plaintext.
    #[error("{trailing} trailing bytes after the payload")]
    TrailingBytes {
        /// How many bytes were left over.
        trailing: usize,
    },
}

/// The symmetric key two nodes share for end-to-end messages, in both directions.
///
/// Holds only the keyed cipher, whose key is zeroed on drop (chacha20poly1305's `zeroize`
/// feature); `Debug` prints nothing secret.
#[derive(Clone)]
pub struct PairKey {
    /// XChaCha20-Poly1305 keyed with the derived pair key.
    cipher: XChaCha20Poly1305,
}

impl PairKey {
    /// Derives the key this node (`identity`, id `my_id`) shares with the node `their_id`
    /// whose identity key is `their_public`:
    ///
    /// ```text
    /// shared = X25519(identity, their_public)          (low-order keys refused)
    /// salt   = network_key.expand(b"e2e salt")
    /// key    = HKDF-SHA256(ikm = shared, salt,
    ///                      info = E2E_INFO || len || lo || len || hi)
    /// ```
    ///
    /// where `(lo, hi)` are `my_id` and `their_id` in byte order and each `len` is the
    /// id's length as a `u64` big-endian. Symmetric: both nodes get the same key. A node
    /// messaging itself passes its own public key and id twice.
    ///
    /// Errors: [`E2eError::KeyAgreement`] if `their_public` is a low-order point.
    pub fn derive(
        identity: &Identity,
        their_public: &[u8; 32],
        network_key: &NetworkKey,
        my_id: &str,
        their_id: &str,
    ) -> Result<PairKey, E2eError> {
        let shared = identity
            .diffie_hellman(their_public)
            .map_err(E2eError::KeyAgreement)?;
        let salt = network_key.expand(E2E_SALT_LABEL);
        let (lo, hi) = if my_id.as_bytes() <= their_id.as_bytes() {
            (my_id, their_id)
        } else {
            (their_id, my_id)
        };
        let (lo_len, hi_len) = (len_prefix(lo), len_prefix(hi));
        let mut key = Zeroizing::new([0u8; 32]);
        Hkdf::<Sha256>::new(Some(salt.as_slice()), shared.as_slice())
            .expand_multi_info(
                &[E2E_INFO, &lo_len, lo.as_bytes(), &hi_len, hi.as_bytes()],
                key.as_mut_slice(),
            )
            .expect("32 bytes is within HKDF-SHA256's 8160-byte output limit");
        let key: &Key = (&*key).into();
        Ok(PairKey {
            cipher: XChaCha20Poly1305::new(key),
        })
    }
}

impl fmt::Debug for PairKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PairKey").finish_non_exhaustive()
    }
}

/// The length of `s` as a `u64` big-endian prefix (lossless: `usize` is at most 64 bits
/// on every supported target).
fn len_prefix(s: &str) -> [u8; 8] {
    u64::try_from(s.len()).unwrap_or(u64::MAX).to_be_bytes()
}

/// The bytes [`seal`] authenticates besides the ciphertext: every header field of the
/// envelope except `hops` (changed by relays) and `sealed`, in a fixed layout where no
/// two envelopes give the same bytes:
///
/// ```text
/// "msgtier e2e ad v1" || id (u64 BE) || len(source) (u64 BE) || source
///   || len(target) (u64 BE) || target || kind (1 request, 2 response)
///   || timestamp_ms (u64 BE) || ttl_ms (u32 BE) || clear (1 byte, 0 when sealed)
/// ```
pub fn associated_data(envelope: &Envelope) -> Vec<u8> {
    let mut ad = Vec::with_capacity(
        AD_LABEL.len() + 8 + 8 + envelope.source.len() + 8 + envelope.target.len() + 1 + 8 + 4,
    );
    ad.extend_from_slice(AD_LABEL);
    ad.extend_from_slice(&envelope.id.to_be_bytes());
    ad.extend_from_slice(&len_prefix(&envelope.source));
    ad.extend_from_slice(envelope.source.as_bytes());
    ad.extend_from_slice(&len_prefix(&envelope.target));
    ad.extend_from_slice(envelope.target.as_bytes());
    ad.push(match envelope.kind {
        MessageKind::Request => AD_KIND_REQUEST,
        MessageKind::Response => AD_KIND_RESPONSE,
    });
    ad.extend_from_slice(&envelope.timestamp_ms.to_be_bytes());
    ad.extend_from_slice(&envelope.ttl_ms.to_be_bytes());
    ad.push(u8::from(envelope.clear) | (u8::from(envelope.signature.is_some()) << 1));
    ad
}

/// Context prefix of the bytes an envelope's signature covers ([`signed_bytes`]), so they can
/// never be mistaken for an advert's or anything else msgtier signs.
const SIGNATURE_CONTEXT: &[u8] = b"msgtier envelope signature v1";

/// The bytes a durable envelope's origin signs: [`SIGNATURE_CONTEXT`], the envelope's
/// associated data (every header field but `hops`, see [`associated_data`]), the length of the
/// sealed bytes and the sealed bytes themselves (nonce, ciphertext, tag). Only the signature
/// field itself and `hops` are outside it.
pub fn signed_bytes(envelope: &Envelope) -> Vec<u8> {
    let ad = associated_data(envelope);
    let mut m = Vec::with_capacity(SIGNATURE_CONTEXT.len() + ad.len() + 8 + envelope.sealed.len());
    m.extend_from_slice(SIGNATURE_CONTEXT);
    m.extend_from_slice(&ad);
    m.extend_from_slice(&(envelope.sealed.len() as u64).to_be_bytes());
    m.extend_from_slice(&envelope.sealed);
    m
}

/// Seals `plaintext` into a durable envelope and signs it: the signature field is set first
/// (its presence is part of the associated data), then [`seal`], then the signature over
/// [`signed_bytes`] with `identity`'s signing key.
pub fn seal_signed(
    key: &PairKey,
    identity: &Identity,
    envelope: &mut Envelope,
    plaintext: &[u8],
) -> Result<(), E2eError> {
    envelope.clear = false;
    envelope.signature = Some(vec![0; crate::wire::frame::ENVELOPE_SIGNATURE_BYTES]);
    seal(key, envelope, plaintext)?;
    let signature = identity.sign(&signed_bytes(envelope));
    let mut field = Vec::with_capacity(crate::wire::frame::ENVELOPE_SIGNATURE_BYTES);
    field.extend_from_slice(&identity.signing_public());
    field.extend_from_slice(&signature);
    envelope.signature = Some(field);
    Ok(())
}

/// Whether a durable envelope's signature is its source's: made by the signing key it carries,
/// which is bound to `source_identity` (the X25519 key held for `envelope.source`). False for
/// an envelope without a signature.
pub fn verify_signature(envelope: &Envelope, source_identity: &[u8; 32]) -> bool {
    let Some(field) = envelope.signature.as_deref() else {
        return false;
    };
    let Some((key, sig)) = field.split_first_chunk::<32>() else {
        return false;
    };
    let Ok(sig) = <&[u8; crate::identity::SIGNATURE_BYTES]>::try_from(sig) else {
        return false;
    };
    crate::identity::verify_bound(key, source_identity, &signed_bytes(envelope), sig)
}

/// Seals `plaintext` into `envelope.sealed` as `nonce (24) || ciphertext || tag (16)`,
/// with a fresh random nonce and [`associated_data`]`(envelope)` authenticated: fill in
/// every other header field first.
///
/// Errors: [`E2eError::Oversize`] for more than [`MAX_PLAINTEXT_BYTES`],
/// [`E2eError::Random`] if no nonce could be drawn. On error `envelope` is unchanged.
pub fn seal(key: &PairKey, envelope: &mut Envelope, plaintext: &[u8]) -> Result<(), E2eError> {
    let mut nonce = [0u8; NONCE_BYTES];
    getrandom::fill(&mut nonce).map_err(E2eError::Random)?;
    seal_with_nonce(key, envelope, plaintext, nonce)
}

/// [`seal`] with a given nonce. Private: a nonce must never be used twice under a key,
/// which only a random one guarantees here (both endpoints seal under the same key).
fn seal_with_nonce(
    key: &PairKey,
    envelope: &mut Envelope,
    plaintext: &[u8],
    nonce: [u8; NONCE_BYTES],
) -> Result<(), E2eError> {
    if plaintext.len() > MAX_PLAINTEXT_BYTES {
        return Err(E2eError::Oversize {
            len: plaintext.len(),
            max: MAX_PLAINTEXT_BYTES,
        });
    }
    let clear = std::mem::replace(&mut envelope.clear, false);
    let ad = associated_data(envelope);
    envelope.clear = clear;
    let mut sealed = Vec::with_capacity(SEAL_OVERHEAD_BYTES + plaintext.len());
    sealed.extend_from_slice(&nonce);
    sealed.extend_from_slice(plaintext);
    let tag = key
        .cipher
        .encrypt_inout_detached(
            &XNonce::from(nonce),
            &ad,
            (&mut sealed[NONCE_BYTES..]).into(),
        )
        .map_err(|_| E2eError::Encrypt {
            len: plaintext.len(),
        })?;
    sealed.extend_from_slice(tag.as_slice());
    envelope.sealed = sealed.into();
    envelope.clear = false;
    Ok(())
}

/// Authenticates and decrypts `envelope.sealed`, returning the plaintext.
///
/// `key` must be the pair key of `envelope.source` and this node, and the caller must
/// have checked that `envelope.target` is this node. Does not check freshness: see
/// [`ReplayCache`].
///
/// Errors: [`E2eError::Truncated`] if `sealed` is shorter than [`SEAL_OVERHEAD_BYTES`],
/// [`E2eError::Decrypt`] if authentication fails.
pub fn open(key: &PairKey, envelope: &Envelope) -> Result<Vec<u8>, E2eError> {
    if envelope.clear {
        // Nothing to authenticate here: a clear envelope is only taken from its source's link.
        return Err(E2eError::Decrypt);
    }
    let truncated = || E2eError::Truncated {
        len: envelope.sealed.len(),
        min: SEAL_OVERHEAD_BYTES,
    };
    let (nonce, rest) = envelope
        .sealed
        .split_first_chunk::<NONCE_BYTES>()
        .ok_or_else(truncated)?;
    let (ciphertext, tag) = rest.split_last_chunk::<TAG_BYTES>().ok_or_else(truncated)?;
    let ad = associated_data(envelope);
    let mut plaintext = ciphertext.to_vec();
    key.cipher
        .decrypt_inout_detached(
            &XNonce::from(*nonce),
            &ad,
            plaintext.as_mut_slice().into(),
            &Tag::from(*tag),
        )
        .map_err(|_| E2eError::Decrypt)?;
    Ok(plaintext)
}

/// What a target remembers to drop replayed messages: the `(source, id)` of every
/// accepted envelope until it would be refused as expired anyway, and the time it started
/// remembering (an envelope dated before that is refused: it may have been accepted by the
/// process before, whose memory is gone).
///
/// Bounded without ever reopening a replay window: at most `capacity` entries, at most
/// `per_source` of them from one source. Expired entries are forgotten first; if the source's
/// share (or the whole cache) is still full, the oldest entry (by timestamp) of that source (of
/// the source with the most entries) is forgotten and that source's *floor* raised to its
/// timestamp: from then on anything from it dated at or before the floor is refused
/// ([`E2eError::BelowFloor`]), as it could be the forgotten one. So a sender faster than
/// `per_source` messages per lifetime is not throttled (the floor trails its newest messages by
/// `per_source` messages), a replay is refused either way, and one busy source cannot push the
/// others out.
#[derive(Debug, Clone)]
pub struct ReplayCache {
    /// Most entries kept (at least 1).
    capacity: usize,
    /// Most entries kept per source (at least 1).
    per_source: usize,
    /// Envelopes dated before this (unix ms) are refused.
    floor_ms: u64,
    /// Entries remembered, over all sources.
    len: usize,
    /// Every remembered `(expiry, source, id)` ordered by expiry, to forget expired ones.
    by_expiry: BTreeSet<(u64, Arc<str>, u64)>,
    /// Per source: its entries, and its floor. The source's name is shared with the other
    /// indexes (no string is copied per message).
    sources: HashMap<Arc<str>, SourceWindow>,
    /// Sources left with a floor and no entry, by when nothing unexpired can be under the floor.
    floors: BTreeSet<(u64, Arc<str>)>,
}

/// One source's part of a [`ReplayCache`].
#[derive(Debug, Clone, Default)]
struct SourceWindow {
    /// Expiry and timestamp (ms) of each remembered id.
    ids: HashMap<u64, (u64, u64)>,
    /// `(timestamp_ms, id)` of its remembered envelopes.
    by_time: BTreeSet<(u64, u64)>,
    /// Envelopes dated at or before this were (or may have been) forgotten: refused.
    floor_ms: Option<u64>,
    /// Whether it is in [`ReplayCache::floors`] (at most once, so that set stays within the
    /// number of sources).
    queued: bool,
}

impl ReplayCache {
    /// An empty cache holding at most `capacity` entries, `per_source` per source (0 is taken
    /// as 1: a cache that remembers nothing would accept every replay), refusing envelopes
    /// dated before `floor_ms` (the node's start, unix ms).
    pub fn new(capacity: usize, per_source: usize, floor_ms: u64) -> Self {
        ReplayCache {
            capacity: capacity.max(1),
            per_source: per_source.max(1),
            floor_ms,
            len: 0,
            by_expiry: BTreeSet::new(),
            sources: HashMap::new(),
            floors: BTreeSet::new(),
        }
    }

    /// Number of remembered messages.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no message is remembered.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Checks `envelope` without remembering it: cheap, so it may run before [`open`] to
    /// drop stale messages without decrypting them.
    ///
    /// Errors: [`E2eError::FromFuture`] if `timestamp_ms > now_ms + min(MAX_CLOCK_SKEW_MS,
    /// lifetime)`, [`E2eError::BeforeStart`] if `timestamp_ms` is before the floor,
    /// [`E2eError::Expired`] if `now_ms > timestamp_ms + min(ttl_ms, MAX_TTL_MS)`,
    /// [`E2eError::BelowFloor`] if it is dated at or before its source's floor,
    /// [`E2eError::Replayed`] if its `(source, id)` is remembered.
    pub fn check(&self, now_ms: u64, envelope: &Envelope) -> Result<(), E2eError> {
        let lifetime = u64::from(envelope.ttl_ms.min(MAX_TTL_MS));
        if envelope.timestamp_ms > now_ms.saturating_add(MAX_CLOCK_SKEW_MS.min(lifetime)) {
            return Err(E2eError::FromFuture);
        }
        if envelope.timestamp_ms < self.floor_ms {
            return Err(E2eError::BeforeStart);
        }
        if now_ms > expiry_ms(envelope) {
            return Err(E2eError::Expired);
        }
        let Some(window) = self.sources.get(envelope.source.as_str()) else {
            return Ok(());
        };
        if window.floor_ms.is_some_and(|f| envelope.timestamp_ms <= f) {
            return Err(E2eError::BelowFloor);
        }
        if window.ids.contains_key(&envelope.id) {
            return Err(E2eError::Replayed);
        }
        Ok(())
    }

    /// [`ReplayCache::check`], then remembers the envelope, making room as the type's docs
    /// say. Call it only for envelopes [`open`] authenticated.
    pub fn check_and_insert(&mut self, now_ms: u64, envelope: &Envelope) -> Result<(), E2eError> {
        self.check(now_ms, envelope)?;
        self.forget_expired(now_ms);
        let ts = envelope.timestamp_ms;
        let source: Arc<str> = match self.sources.get_key_value(envelope.source.as_str()) {
            Some((name, _)) => name.clone(),
            None => Arc::from(envelope.source.as_str()),
        };
        let count = self.sources.get(&source).map_or(0, |s| s.by_time.len());
        if count >= self.per_source {
            self.forget_oldest_before(&source, ts)?;
        }
        if self.len >= self.capacity {
            let heaviest = self
                .sources
                .iter()
                .max_by_key(|(_, s)| s.by_time.len())
                .map(|(name, _)| name.clone())
                .unwrap_or_else(|| source.clone());
            let before = if heaviest == source { ts } else { u64::MAX };
            self.forget_oldest_before(&heaviest, before)?;
        }
        let expiry = expiry_ms(envelope);
        self.by_expiry.insert((expiry, source.clone(), envelope.id));
        let window = self.sources.entry(source).or_default();
        window.ids.insert(envelope.id, (expiry, ts));
        window.by_time.insert((ts, envelope.id));
        self.len += 1;
        Ok(())
    }

    /// Forgets `source`'s oldest entry if it is dated before `before`, raising its floor to
    /// that entry's timestamp; refuses ([`E2eError::BelowFloor`]) if the oldest is not older.
    fn forget_oldest_before(&mut self, source: &Arc<str>, before: u64) -> Result<(), E2eError> {
        let Some(window) = self.sources.get_mut(source) else {
            return Ok(());
        };
        let Some(&(ts, id)) = window.by_time.first() else {
            return Ok(());
        };
        if ts >= before {
            return Err(E2eError::BelowFloor);
        }
        window.by_time.pop_first();
        window.floor_ms = Some(window.floor_ms.map_or(ts, |f| f.max(ts)));
        if let Some((expiry, _)) = window.ids.remove(&id) {
            self.len -= 1;
            self.by_expiry.remove(&(expiry, source.clone(), id));
        }
        Ok(())
    }

    /// Drops every entry that expired before `now_ms` (its envelope would be refused as
    /// [`E2eError::Expired`] anyway), and the floors nothing unexpired can be under.
    fn forget_expired(&mut self, now_ms: u64) {
        while let Some((expiry, _, _)) = self.by_expiry.first() {
            if *expiry >= now_ms {
                break;
            }
            let Some((_, source, id)) = self.by_expiry.pop_first() else {
                break;
            };
            let Some(window) = self.sources.get_mut(&source) else {
                continue;
            };
            let Some((_, ts)) = window.ids.remove(&id) else {
                continue;
            };
            self.len -= 1;
            window.by_time.remove(&(ts, id));
            if window.by_time.is_empty() {
                match window.floor_ms {
                    Some(_) if window.queued => {}
                    Some(f) if f.saturating_add(MAX_TTL_MS.into()) >= now_ms => {
                        window.queued = true;
                        self.floors
                            .insert((f.saturating_add(MAX_TTL_MS.into()), source));
                    }
                    _ => {
                        self.sources.remove(&source);
                    }
                }
            }
        }
        while let Some((until, _)) = self.floors.first() {
            if *until >= now_ms {
                break;
            }
            if let Some((_, source)) = self.floors.pop_first() {
                match self.sources.get_mut(&source) {
                    Some(w) if w.by_time.is_empty() => {
                        self.sources.remove(&source);
                    }
                    Some(w) => w.queued = false,
                    None => {}
                }
            }
        }
    }
}

/// The last millisecond at which `envelope` is still accepted:
/// `timestamp_ms + min(ttl_ms, MAX_TTL_MS)`, saturating.
fn expiry_ms(envelope: &Envelope) -> u64 {
    envelope
        .timestamp_ms
        .saturating_add(u64::from(envelope.ttl_ms.min(MAX_TTL_MS)))
}

/// `{"message": [`: the map key of [`Payload::Message`] and its one-element array.
const MESSAGE_PREFIX: [u8; 10] = [0x81, 0xa7, b'm', b'e', b's', b's', b'a', b'g', b'e', 0x91];

/// The plaintext inside a sealed envelope, encoded with rmp-serde's compact form (as
/// frames are: variants keyed by snake_case name, fields as arrays, bytes as `bin`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Payload {
    /// A message for the target; `body` selects a script by name or is a plain message.
    Message {
        /// The message content.
        #[serde(with = "serde_bytes")]
        body: Vec<u8>,
    },
    /// A durable envelope handed over in custody: the receiver stores it (a carrier) or takes
    /// it (its target, or its origin for a receipt), on disk, before it answers `delivered`;
    /// a refusal is `failed` with why. The envelope is the origin's, sealed for its target and
    /// signed: the receiver of the custody cannot read it unless it is the target.
    Custody {
        /// The envelope in custody.
        envelope: Envelope,
    },
    /// A copy of a message published to a topic, for one subscriber (`crate::proto::publication`).
    Publish {
        /// What the origin signed.
        publication: crate::proto::publication::Publication,
        /// The message content.
        #[serde(with = "serde_bytes")]
        body: Vec<u8>,
    },
    /// The answer to request `in_reply_to`.
    Reply {
        /// The [`Envelope::id`] of the request being answered.
        in_reply_to: u64,
        /// What became of the request.
        outcome: Outcome,
        /// Links the request crossed on its way to the target (what `x-hops` reports).
        request_hops: u8,
    },
}

/// What became of a [`Payload::Message`] at its target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The plain message was delivered.
    Delivered,
    /// The message named a script, which ran.
    Script {
        /// The script's exit code; `None` if it was killed by a signal or timed out.
        exit_code: Option<i32>,
        /// What the script wrote to standard output (possibly truncated).
        #[serde(with = "serde_bytes")]
        stdout: Vec<u8>,
        /// What the script wrote to standard error (possibly truncated).
        #[serde(with = "serde_bytes")]
        stderr: Vec<u8>,
        /// Whether the script was killed for running too long.
        timed_out: bool,
        /// Whether `stdout` or `stderr` was cut to fit the reply.
        truncated: bool,
        /// The target's node stopped (crashed or was killed) while the script ran: it is never
        /// run again for this message, and what it wrote is lost.
        #[serde(default)]
        interrupted: bool,
    },
    /// The request could not be served.
    Failed {
        /// Machine-readable reason, e.g. `"script_busy"`.
        code: String,
        /// Human-readable detail.
        message: String,
    },
}

impl Payload {
    /// Encodes the payload (rmp-serde compact form) into a buffer allocated once at its
    /// final size, so a large body is copied exactly once.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.variable_len() + PAYLOAD_FIXED_OVERHEAD_BYTES);
        // Writing into a Vec never fails, every sequence has a known length and no
        // extension types are used, so rmp-serde cannot fail here.
        rmp_serde::encode::write(&mut out, self)
            .expect("encoding a Payload into a Vec cannot fail");
        out
    }

    /// The encoding of `Payload::Message { body }` (the same bytes as its [`Payload::encode`]),
    /// written without copying `body` into a payload first: `{"message": [bin]}`.
    pub fn encode_message(body: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(MESSAGE_PREFIX.len() + 5 + body.len());
        out.extend_from_slice(&MESSAGE_PREFIX);
        crate::wire::write_bin_header(&mut out, body.len());
        out.extend_from_slice(body);
        out
    }

    /// The body of an encoded `message` payload, borrowed, if `bytes` is exactly one as
    /// [`Payload::encode_message`] writes it; `None` for anything else (decode it then).
    pub fn message_body(bytes: &[u8]) -> Option<&[u8]> {
        let rest = bytes.strip_prefix(&MESSAGE_PREFIX)?;
        match crate::wire::split_bin(rest)? {
            (body, []) => Some(body),
            _ => None,
        }
    }

    /// Decodes a payload that must span all of `bytes`.
    ///
    /// Errors: [`E2eError::Decode`] for anything that is not a payload (including a
    /// truncated one), [`E2eError::TrailingBytes`] if bytes follow it. Never panics;
    /// memory used is bounded by the input length.
    pub fn decode(bytes: &[u8]) -> Result<Payload, E2eError> {
        let mut de = rmp_serde::Deserializer::new(Cursor::new(bytes));
        de.set_max_depth(MAX_DECODE_DEPTH);
        let payload = Payload::deserialize(&mut de)?;
        let used = usize::try_from(de.position()).unwrap_or(usize::MAX);
        let trailing = bytes.len().saturating_sub(used);
        if trailing != 0 {
            return Err(E2eError::TrailingBytes { trailing });
        }
        Ok(payload)
    }

    /// Total length of the payload's variable-length fields, in bytes.
    fn variable_len(&self) -> usize {
        match self {
            Payload::Message { body } => body.len(),
            Payload::Custody { envelope } => envelope.sealed.len() + 512,
            Payload::Publish { publication, body } => {
                body.len().saturating_add(publication.topic.len() + 128)
            }
            Payload::Reply { outcome, .. } => match outcome {
                Outcome::Delivered => 0,
                Outcome::Script { stdout, stderr, .. } => stdout.len().saturating_add(stderr.len()),
                Outcome::Failed { code, message } => code.len().saturating_add(message.len()),
            },
        }
    }
}

#[cfg(test)]
mod tests {

    /// The hand-written message encoding is the derived one at every bin width, and its body
    /// parses back borrowed; anything else is left to the decoder.
    #[test]
    fn message_payloads_encode_and_parse_without_the_derive() {
        for len in [0usize, 3, 255, 256, 65_535, 65_536, 100_000] {
            let body = vec![0x61; len];
            let fast = Payload::encode_message(&body);
            let derived = Payload::Message { body: body.clone() }.encode();
            assert_eq!(fast, derived, "len {len}");
            assert_eq!(Payload::message_body(&fast), Some(&body[..]));
            assert_eq!(Payload::message_body(&fast[..fast.len() - 1]), None);
        }
        let reply = Payload::Reply {
            in_reply_to: 1,
            outcome: Outcome::Delivered,
            request_hops: 1,
        }
        .encode();
        assert_eq!(Payload::message_body(&reply), None);
    }

    use bytes::Bytes;

    use super::*;
    use crate::wire::frame::Frame;
    use proptest::collection::vec;
    use proptest::prelude::*;

    const NOW_MS: u64 = 1_700_000_000_000;

    /// Three members of network "home" and their derived keys.
    struct Net {
        a: Identity,
        b: Identity,
        c: Identity,
        network_key: NetworkKey,
    }

    impl Net {
        fn new() -> Net {
            Net {
                a: Identity::generate().expect("generate"),
                b: Identity::generate().expect("generate"),
                c: Identity::generate().expect("generate"),
                network_key: NetworkKey::derive("home", "s3cret"),
            }
        }

        /// (key of a for b, key of b for a).
        fn ab(&self) -> (PairKey, PairKey) {
            let ab = PairKey::derive(&self.a, &self.b.public(), &self.network_key, "a", "b")
                .expect("derive a->b");
            let ba = PairKey::derive(&self.b, &self.a.public(), &self.network_key, "b", "a")
                .expect("derive b->a");
            (ab, ba)
        }
    }

    fn envelope(source: &str, target: &str) -> Envelope {
        Envelope {
            id: 0x0102_0304_0506_0708,
            source: source.into(),
            target: target.into(),
            kind: MessageKind::Request,
            timestamp_ms: NOW_MS,
            ttl_ms: 30_000,
            hops: 0,
            clear: false,
            sealed: Bytes::new(),
            signature: None,
        }
    }

    fn sealed(key: &PairKey, plaintext: &[u8]) -> Envelope {
        let mut env = envelope("a", "b");
        seal(key, &mut env, plaintext).expect("seal");
        env
    }

    #[test]
    fn seal_open_round_trip_both_directions() {
        let net = Net::new();
        let (ab, ba) = net.ab();
        let env = sealed(&ab, b"hello b");
        assert_eq!(env.sealed.len(), 7 + SEAL_OVERHEAD_BYTES);
        assert_eq!(open(&ba, &env).expect("open"), b"hello b");
        // The key is symmetric: the sender can open its own message too.
        assert_eq!(open(&ab, &env).expect("open"), b"hello b");

        let mut back = envelope("b", "a");
        back.kind = MessageKind::Response;
        seal(&ba, &mut back, b"hello a").expect("seal");
        assert_eq!(open(&ab, &back).expect("open"), b"hello a");

        let empty = sealed(&ab, b"");
        assert_eq!(empty.sealed.len(), SEAL_OVERHEAD_BYTES);
        assert_eq!(open(&ba, &empty).expect("open"), b"");
    }

    #[test]
    fn loopback_round_trip() {
        let net = Net::new();
        let own = PairKey::derive(&net.a, &net.a.public(), &net.network_key, "a", "a")
            .expect("derive a->a");
        let mut env = envelope("a", "a");
        seal(&own, &mut env, b"note to self").expect("seal");
        assert_eq!(open(&own, &env).expect("open"), b"note to self");
        // Not the key of a with anyone else.
        let (ab, _) = net.ab();
        assert!(matches!(open(&ab, &env), Err(E2eError::Decrypt)));
    }

    #[test]
    fn derivation_is_symmetric_and_deterministic() {
        let net = Net::new();
        let (ab, ba) = net.ab();
        let (ab2, _) = net.ab();
        let nonce = [7u8; NONCE_BYTES];
        let mut x = envelope("a", "b");
        let mut y = envelope("a", "b");
        let mut z = envelope("a", "b");
        seal_with_nonce(&ab, &mut x, b"same", nonce).expect("seal");
        seal_with_nonce(&ba, &mut y, b"same", nonce).expect("seal");
        seal_with_nonce(&ab2, &mut z, b"same", nonce).expect("seal");
        assert_eq!(x.sealed, y.sealed);
        assert_eq!(x.sealed, z.sealed);
    }

    #[test]
    fn keys_differ_per_pair_and_bind_the_ids() {
        let net = Net::new();
        let nonce = [7u8; NONCE_BYTES];
        let seal_with = |key: &PairKey| {
            let mut env = envelope("a", "b");
            seal_with_nonce(key, &mut env, b"x", nonce).expect("seal");
            env.sealed
        };
        let (ab, _) = net.ab();
        let ac =
            PairKey::derive(&net.a, &net.c.public(), &net.network_key, "a", "c").expect("derive");
        // Same keys, other ids: another key (ids are bound, with unambiguous lengths).
        let renamed =
            PairKey::derive(&net.a, &net.b.public(), &net.network_key, "a", "bb").expect("derive");
        let shifted =
            PairKey::derive(&net.a, &net.b.public(), &net.network_key, "ab", "b").expect("derive");
        let reference = seal_with(&ab);
        for other in [&ac, &renamed, &shifted] {
            assert_ne!(seal_with(other), reference);
        }
    }

    #[test]
    fn low_order_public_keys_are_refused() {
        let net = Net::new();
        let mut one = [0u8; 32];
        one[0] = 1;
        for low in [[0u8; 32], one] {
            assert!(matches!(
                PairKey::derive(&net.a, &low, &net.network_key, "a", "b"),
                Err(E2eError::KeyAgreement(IdentityError::LowOrderPublicKey))
            ));
        }
    }

    #[test]
    fn every_flipped_bit_of_sealed_is_rejected() {
        let net = Net::new();
        let (ab, ba) = net.ab();
        let env = sealed(&ab, b"12345678");
        for i in 0..env.sealed.len() {
            for bit in 0..8 {
                let mut bad = env.clone();
                let mut flipped = bad.sealed.to_vec();
                flipped[i] ^= 1 << bit;
                bad.sealed = flipped.into();
                assert!(
                    matches!(open(&ba, &bad), Err(E2eError::Decrypt)),
                    "byte {i} bit {bit}"
                );
            }
        }
    }

    /// Every single-bit change of `s` that is still UTF-8.
    fn string_flips(s: &str) -> Vec<String> {
        let mut out = Vec::new();
        for i in 0..s.len() {
            for bit in 0..8 {
                let mut bytes = s.as_bytes().to_vec();
                bytes[i] ^= 1 << bit;
                if let Ok(flipped) = String::from_utf8(bytes) {
                    out.push(flipped);
                }
            }
        }
        out
    }

    #[test]
    fn every_authenticated_header_change_is_rejected() {
        let net = Net::new();
        let (ab, ba) = net.ab();
        let mut env = envelope("node-a", "node-b");
        env.ttl_ms = 0x0a0b_0c0d;
        seal(&ab, &mut env, b"payload").expect("seal");

        let mut altered: Vec<Envelope> = Vec::new();
        for bit in 0..64 {
            let mut e = env.clone();
            e.id ^= 1 << bit;
            altered.push(e);
            let mut e = env.clone();
            e.timestamp_ms ^= 1 << bit;
            altered.push(e);
        }
        for bit in 0..32 {
            let mut e = env.clone();
            e.ttl_ms ^= 1 << bit;
            altered.push(e);
        }
        for source in string_flips(&env.source) {
            let mut e = env.clone();
            e.source = source;
            altered.push(e);
        }
        for target in string_flips(&env.target) {
            let mut e = env.clone();
            e.target = target;
            altered.push(e);
        }
        let mut e = env.clone();
        e.kind = MessageKind::Response;
        altered.push(e);
        // Direction swapped: same pair key, but the message was not sealed this way.
        let mut e = env.clone();
        std::mem::swap(&mut e.source, &mut e.target);
        altered.push(e);
        // Bytes moved between source and target.
        let mut e = env.clone();
        e.source = "node-an".into();
        e.target = "ode-b".into();
        altered.push(e);

        assert!(altered.len() > 200);
        for bad in &altered {
            assert!(
                matches!(open(&ba, bad), Err(E2eError::Decrypt)),
                "{bad:?} accepted"
            );
        }
    }

    #[test]
    fn hops_is_not_authenticated() {
        let net = Net::new();
        let (ab, ba) = net.ab();
        let env = sealed(&ab, b"payload");
        for hops in [1, 2, 17, u8::MAX] {
            let mut relayed = env.clone();
            relayed.hops = hops;
            assert_eq!(open(&ba, &relayed).expect("open"), b"payload");
        }
    }

    #[test]
    fn a_relay_of_the_same_network_cannot_open() {
        let net = Net::new();
        let (ab, _) = net.ab();
        let env = sealed(&ab, b"secret");
        // c knows the network secret and both public keys, but neither private key.
        let attempts = [
            PairKey::derive(&net.c, &net.a.public(), &net.network_key, "c", "a"),
            PairKey::derive(&net.c, &net.b.public(), &net.network_key, "c", "b"),
            PairKey::derive(&net.c, &net.a.public(), &net.network_key, "b", "a"),
            PairKey::derive(&net.c, &net.b.public(), &net.network_key, "a", "b"),
        ];
        for key in attempts {
            let key = key.expect("derive");
            assert!(matches!(open(&key, &env), Err(E2eError::Decrypt)));
        }
    }

    #[test]
    fn another_network_secret_or_name_cannot_open() {
        let net = Net::new();
        let (ab, _) = net.ab();
        let env = sealed(&ab, b"secret");
        for other in [
            NetworkKey::derive("home", "s3cret!"),
            NetworkKey::derive("work", "s3cret"),
        ] {
            let key = PairKey::derive(&net.b, &net.a.public(), &other, "b", "a").expect("derive");
            assert!(matches!(open(&key, &env), Err(E2eError::Decrypt)));
        }
    }

    #[test]
    fn seals_use_fresh_nonces() {
        let net = Net::new();
        let (ab, ba) = net.ab();
        let first = sealed(&ab, b"same plaintext");
        let second = sealed(&ab, b"same plaintext");
        assert_ne!(first.sealed, second.sealed);
        assert_ne!(first.sealed[..NONCE_BYTES], second.sealed[..NONCE_BYTES]);
        assert_eq!(open(&ba, &first).expect("open"), b"same plaintext");
        assert_eq!(open(&ba, &second).expect("open"), b"same plaintext");
    }

    #[test]
    fn truncated_sealed_is_rejected() {
        let net = Net::new();
        let (ab, ba) = net.ab();
        let env = sealed(&ab, b"x");
        for len in 0..SEAL_OVERHEAD_BYTES {
            let mut bad = env.clone();
            bad.sealed.truncate(len);
            assert!(matches!(
                open(&ba, &bad),
                Err(E2eError::Truncated { len: l, min: SEAL_OVERHEAD_BYTES }) if l == len
            ));
        }
        let mut bad = env;
        bad.sealed.truncate(SEAL_OVERHEAD_BYTES);
        assert!(matches!(open(&ba, &bad), Err(E2eError::Decrypt)));
    }

    #[test]
    fn oversize_plaintext_is_refused_and_the_largest_fits_the_wire() {
        let net = Net::new();
        let (ab, ba) = net.ab();
        let mut env = envelope("a", "b");
        let big = vec![0x5a; MAX_PLAINTEXT_BYTES + 1];
        assert!(matches!(
            seal(&ab, &mut env, &big),
            Err(E2eError::Oversize { len, max: MAX_PLAINTEXT_BYTES }) if len == big.len()
        ));
        assert!(env.sealed.is_empty(), "unchanged on error");
        seal(&ab, &mut env, &big[1..]).expect("seal the largest");
        assert_eq!(env.sealed.len(), MAX_FRAME_BYTES);
        assert!(env.check_limits().is_ok());
        assert_eq!(open(&ba, &env).expect("open").len(), MAX_PLAINTEXT_BYTES);
    }

    #[test]
    fn associated_data_layout_is_pinned_and_unambiguous() {
        let mut env = envelope("ab", "c");
        env.kind = MessageKind::Response;
        env.ttl_ms = 0x1122_3344;
        env.hops = 9;
        env.sealed = vec![1, 2, 3].into();
        let mut want = b"msgtier e2e ad v3".to_vec();
        want.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
        want.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 2, b'a', b'b']);
        want.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 1, b'c']);
        want.push(2);
        want.extend_from_slice(&NOW_MS.to_be_bytes());
        want.extend_from_slice(&[0x11, 0x22, 0x33, 0x44]);
        want.push(0); // sealed, not clear
        assert_eq!(associated_data(&env), want);

        // hops and sealed are not part of it.
        let mut relayed = env.clone();
        relayed.hops = 10;
        relayed.sealed.clear();
        assert_eq!(associated_data(&relayed), want);
        // Moving a byte from source to target changes it.
        let moved = Envelope {
            source: "a".into(),
            target: "bc".into(),
            ..env.clone()
        };
        assert_ne!(associated_data(&moved), want);
        let mut request = env;
        request.kind = MessageKind::Request;
        assert_ne!(associated_data(&request), want);
    }

    #[test]
    fn pair_key_debug_prints_nothing_secret() {
        let net = Net::new();
        let (ab, _) = net.ab();
        assert_eq!(format!("{ab:?}"), "PairKey { .. }");
    }

    #[test]
    fn sealed_envelope_travels_in_a_data_frame() {
        let net = Net::new();
        let (ab, ba) = net.ab();
        let payload = Payload::Message {
            body: b"run backup".to_vec(),
        };
        let mut env = envelope("a", "b");
        seal(&ab, &mut env, &payload.encode()).expect("seal");
        let bytes = Frame::Data(env).encode();
        let Ok(Frame::Data(mut received)) = Frame::decode(&bytes) else {
            panic!("not a data frame");
        };
        received.hops += 1;
        let mut cache = ReplayCache::new(16, 16, 0);
        cache.check(NOW_MS, &received).expect("fresh");
        let plaintext = open(&ba, &received).expect("open");
        cache
            .check_and_insert(NOW_MS, &received)
            .expect("first time");
        assert_eq!(Payload::decode(&plaintext).expect("decode"), payload);
        assert!(matches!(
            cache.check(NOW_MS, &received),
            Err(E2eError::Replayed)
        ));
    }

    // ---- replay cache ----

    fn msg(source: &str, id: u64, timestamp_ms: u64, ttl_ms: u32) -> Envelope {
        Envelope {
            id,
            source: source.into(),
            target: "t".into(),
            kind: MessageKind::Request,
            timestamp_ms,
            ttl_ms,
            hops: 0,
            clear: false,
            sealed: Bytes::new(),
            signature: None,
        }
    }

    #[test]
    fn duplicate_is_dropped() {
        let mut cache = ReplayCache::new(8, 8, 0);
        let m = msg("a", 1, NOW_MS, 10_000);
        cache.check_and_insert(NOW_MS, &m).expect("fresh");
        assert!(matches!(
            cache.check_and_insert(NOW_MS + 5_000, &m),
            Err(E2eError::Replayed)
        ));
        // Still a replay with different unauthenticated hops, or another kind.
        let mut relayed = m.clone();
        relayed.hops = 3;
        relayed.kind = MessageKind::Response;
        assert!(matches!(
            cache.check_and_insert(NOW_MS, &relayed),
            Err(E2eError::Replayed)
        ));
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn same_id_from_different_sources_is_accepted() {
        let mut cache = ReplayCache::new(8, 8, 0);
        cache
            .check_and_insert(NOW_MS, &msg("a", 1, NOW_MS, 10_000))
            .expect("from a");
        cache
            .check_and_insert(NOW_MS, &msg("b", 1, NOW_MS, 10_000))
            .expect("from b");
        cache
            .check_and_insert(NOW_MS, &msg("a", 2, NOW_MS, 10_000))
            .expect("other id from a");
        assert_eq!(cache.len(), 3);
    }

    #[test]
    fn expired_is_dropped_at_the_exact_boundary() {
        let mut cache = ReplayCache::new(8, 8, 0);
        let m = msg("a", 1, NOW_MS, 10_000);
        let last_ms = NOW_MS + 10_000;
        assert!(matches!(
            cache.check_and_insert(last_ms + 1, &m),
            Err(E2eError::Expired)
        ));
        assert!(cache.is_empty());
        cache.check_and_insert(last_ms, &m).expect("last moment");
    }

    #[test]
    fn future_is_dropped_at_the_exact_boundary() {
        let mut cache = ReplayCache::new(8, 8, 0);
        let ahead = msg("a", 1, NOW_MS + MAX_CLOCK_SKEW_MS + 1, 100_000);
        assert!(matches!(
            cache.check_and_insert(NOW_MS, &ahead),
            Err(E2eError::FromFuture)
        ));
        let skewed = msg("a", 2, NOW_MS + MAX_CLOCK_SKEW_MS, 100_000);
        cache
            .check_and_insert(NOW_MS, &skewed)
            .expect("within skew");
        // The allowance is capped by the message's own lifetime.
        let short = msg("a", 5, NOW_MS + 1_001, 1_000);
        assert!(matches!(
            cache.check_and_insert(NOW_MS, &short),
            Err(E2eError::FromFuture)
        ));
        cache
            .check_and_insert(NOW_MS, &msg("a", 6, NOW_MS + 1_000, 1_000))
            .expect("within its lifetime");
        // A clock near zero or a timestamp near the end of time does not overflow.
        assert!(matches!(
            cache.check_and_insert(0, &msg("a", 3, u64::MAX, u32::MAX)),
            Err(E2eError::FromFuture)
        ));
        cache
            .check_and_insert(u64::MAX, &msg("a", 4, u64::MAX, u32::MAX))
            .expect("saturating expiry");
    }

    #[test]
    fn ttl_is_clamped() {
        let mut cache = ReplayCache::new(8, 8, 0);
        let m = msg("a", 1, NOW_MS, u32::MAX);
        let last_ms = NOW_MS + u64::from(MAX_TTL_MS);
        assert!(matches!(
            cache.check(last_ms + 1, &m),
            Err(E2eError::Expired)
        ));
        cache.check_and_insert(last_ms, &m).expect("fresh");
    }

    /// A source over its share forgets its oldest entry and refuses anything dated at or
    /// before it from then on; a full cache takes the room from the source with the most
    /// entries. Every replay is refused either way.
    #[test]
    fn a_full_share_forgets_the_oldest_and_raises_its_floor() {
        let mut cache = ReplayCache::new(3, 2, 0);
        let a1 = msg("a", 1, NOW_MS, 50_000);
        let a2 = msg("a", 2, NOW_MS + 1, 50_000);
        let a3 = msg("a", 3, NOW_MS + 2, 50_000);
        for m in [&a1, &a2, &a3] {
            cache.check_and_insert(NOW_MS + 5, m).expect("fresh");
        }
        assert!(matches!(
            cache.check(NOW_MS + 5, &a1),
            Err(E2eError::BelowFloor)
        ));
        assert!(matches!(
            cache.check(NOW_MS + 5, &a2),
            Err(E2eError::Replayed)
        ));
        // A new message dated at the floor could be the forgotten one: refused.
        assert!(matches!(
            cache.check_and_insert(NOW_MS + 5, &msg("a", 9, NOW_MS, 50_000)),
            Err(E2eError::BelowFloor)
        ));
        // b gets in; c fills the cache: a (two entries) gives up its oldest.
        let b1 = msg("b", 1, NOW_MS, 50_000);
        cache
            .check_and_insert(NOW_MS + 5, &b1)
            .expect("b has its own share");
        let c1 = msg("c", 1, NOW_MS, 50_000);
        cache
            .check_and_insert(NOW_MS + 5, &c1)
            .expect("room from a");
        assert_eq!(cache.len(), 3);
        for (m, replayed) in [
            (&a1, false),
            (&a2, false),
            (&a3, true),
            (&b1, true),
            (&c1, true),
        ] {
            let got = cache.check(NOW_MS + 5, m);
            if replayed {
                assert!(matches!(got, Err(E2eError::Replayed)), "{got:?}");
            } else {
                assert!(matches!(got, Err(E2eError::BelowFloor)), "{got:?}");
            }
        }
    }

    /// A sender far faster than its share per lifetime is not throttled (the floor trails its
    /// newest messages), and not one of its messages can be replayed.
    #[test]
    fn a_fast_source_is_not_throttled_and_nothing_it_sent_replays() {
        let mut cache = ReplayCache::new(1_000, 100, 0);
        let sent: Vec<Envelope> = (0..10_000)
            .map(|i| msg("a", i, NOW_MS + i / 4, 60_000))
            .collect();
        for (i, m) in sent.iter().enumerate() {
            let now = NOW_MS + i as u64 / 4;
            cache.check_and_insert(now, m).expect("an honest message");
        }
        let now = NOW_MS + 10_000 / 4;
        assert!(cache.len() <= 100);
        for m in &sent {
            assert!(cache.check(now, m).is_err(), "message {} replays", m.id);
        }
    }

    /// After a restart the cache is empty: anything dated before the start is refused, so a
    /// request captured before it cannot run again.
    #[test]
    fn envelopes_dated_before_the_start_are_refused() {
        let mut cache = ReplayCache::new(8, 8, NOW_MS);
        let before = msg("a", 1, NOW_MS - 1, 60_000);
        assert!(matches!(
            cache.check_and_insert(NOW_MS + 10, &before),
            Err(E2eError::BeforeStart)
        ));
        cache
            .check_and_insert(NOW_MS + 10, &msg("a", 2, NOW_MS, 60_000))
            .expect("sealed after the start");
    }

    #[test]
    fn capacity_zero_still_remembers_one() {
        let mut cache = ReplayCache::new(0, 0, 0);
        let m = msg("a", 1, NOW_MS, 10_000);
        cache.check_and_insert(NOW_MS, &m).expect("fresh");
        assert!(matches!(
            cache.check_and_insert(NOW_MS, &m),
            Err(E2eError::Replayed)
        ));
        // Dated like the one remembered: it could be it, once that one is forgotten.
        assert!(matches!(
            cache.check_and_insert(NOW_MS, &msg("a", 2, NOW_MS, 10_000)),
            Err(E2eError::BelowFloor)
        ));
        cache
            .check_and_insert(NOW_MS + 1, &msg("a", 3, NOW_MS + 1, 10_000))
            .expect("newer: the older one is forgotten");
        assert!(matches!(
            cache.check(NOW_MS + 1, &m),
            Err(E2eError::BelowFloor)
        ));
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn failed_checks_do_not_insert() {
        let mut cache = ReplayCache::new(8, 8, 0);
        let _ = cache.check_and_insert(NOW_MS, &msg("a", 1, NOW_MS + 10 * MAX_CLOCK_SKEW_MS, 0));
        let _ = cache.check_and_insert(NOW_MS, &msg("a", 2, 0, 0));
        assert!(cache.is_empty());
    }

    // ---- payload ----

    #[test]
    fn payload_wire_format_is_pinned() {
        // {"message": [bin8("hi")]}
        let bytes = Payload::Message {
            body: b"hi".to_vec(),
        }
        .encode();
        let mut want = vec![0x81, 0xa7];
        want.extend_from_slice(b"message");
        want.extend_from_slice(&[0x91, 0xc4, 0x02, b'h', b'i']);
        assert_eq!(bytes, want);
        // {"reply": [5, "delivered"]}
        let bytes = Payload::Reply {
            in_reply_to: 5,
            outcome: Outcome::Delivered,
            request_hops: 2,
        }
        .encode();
        let mut want = vec![0x81, 0xa5];
        want.extend_from_slice(b"reply");
        want.extend_from_slice(&[0x93, 0x05, 0xa9]);
        want.extend_from_slice(b"delivered");
        want.push(0x02);
        assert_eq!(bytes, want);
    }

    #[test]
    fn large_payloads_are_encoded_without_regrowing() {
        let mib = 1 << 20;
        let cases = [
            Payload::Message {
                body: vec![0xaa; mib],
            },
            Payload::Reply {
                in_reply_to: u64::MAX,
                outcome: Outcome::Script {
                    exit_code: Some(i32::MIN),
                    stdout: vec![1; mib / 2],
                    stderr: vec![2; mib / 2],
                    timed_out: true,
                    truncated: true,
                    interrupted: true,
                },
                request_hops: u8::MAX,
            },
            Payload::Reply {
                in_reply_to: u64::MAX,
                outcome: Outcome::Failed {
                    code: "c".repeat(70_000),
                    message: "m".repeat(70_000),
                },
                request_hops: 0,
            },
        ];
        for payload in cases {
            let bytes = payload.encode();
            // Capacity is what was reserved up front: a regrowth would have doubled it.
            assert_eq!(
                bytes.capacity(),
                payload.variable_len() + PAYLOAD_FIXED_OVERHEAD_BYTES
            );
            assert!(bytes.len() <= bytes.capacity());
            assert_eq!(Payload::decode(&bytes).expect("decode"), payload);
        }
    }

    #[test]
    fn payload_garbage_is_rejected() {
        assert!(matches!(Payload::decode(&[]), Err(E2eError::Decode(_))));
        // {"zzz": [1]}
        assert!(matches!(
            Payload::decode(&[0x81, 0xa3, b'z', b'z', b'z', 0x91, 0x01]),
            Err(E2eError::Decode(_))
        ));
        // {"message": [bin32 of 4 GiB]}: declared beyond the input.
        let mut bytes = vec![0x81, 0xa7];
        bytes.extend_from_slice(b"message");
        bytes.extend_from_slice(&[0x91, 0xc6, 0xff, 0xff, 0xff, 0xff, 0x00]);
        assert!(matches!(Payload::decode(&bytes), Err(E2eError::Decode(_))));
        // Deep nesting in an unknown field.
        let mut bytes = vec![0x81, 0xa5];
        bytes.extend_from_slice(b"reply");
        bytes.extend_from_slice(&[0x81, 0xa1, b'x']);
        bytes.extend(std::iter::repeat_n(0x91, 100_000));
        bytes.push(0xc0);
        assert!(matches!(Payload::decode(&bytes), Err(E2eError::Decode(_))));
    }

    fn outcome() -> impl Strategy<Value = Outcome> {
        prop_oneof![
            Just(Outcome::Delivered),
            (
                any::<Option<i32>>(),
                vec(any::<u8>(), 0..200),
                vec(any::<u8>(), 0..200),
                any::<bool>(),
                any::<bool>(),
            )
                .prop_map(|(exit_code, stdout, stderr, timed_out, truncated)| {
                    Outcome::Script {
                        exit_code,
                        stdout,
                        stderr,
                        timed_out,
                        truncated,
                        interrupted: false,
                    }
                }),
            ("\\PC{0,20}", "\\PC{0,80}")
                .prop_map(|(code, message)| Outcome::Failed { code, message }),
        ]
    }

    fn payload() -> impl Strategy<Value = Payload> {
        prop_oneof![
            vec(any::<u8>(), 0..400).prop_map(|body| Payload::Message { body }),
            (any::<u64>(), outcome(), any::<u8>()).prop_map(
                |(in_reply_to, outcome, request_hops)| {
                    Payload::Reply {
                        in_reply_to,
                        outcome,
                        request_hops,
                    }
                }
            ),
        ]
    }

    proptest! {
        #[test]
        fn payload_round_trips(payload in payload()) {
            let bytes = payload.encode();
            prop_assert!(bytes.len() <= bytes.capacity());
            prop_assert_eq!(Payload::decode(&bytes).ok(), Some(payload));
        }

        #[test]
        fn payload_prefixes_and_trailing_bytes_are_rejected(
            payload in payload(),
            extra in vec(any::<u8>(), 1..8),
        ) {
            let mut bytes = payload.encode();
            for len in 0..bytes.len() {
                prop_assert!(Payload::decode(&bytes[..len]).is_err(), "prefix {} accepted", len);
            }
            bytes.extend_from_slice(&extra);
            let trailing = match Payload::decode(&bytes) {
                Err(E2eError::TrailingBytes { trailing }) => Some(trailing),
                _ => None,
            };
            prop_assert_eq!(trailing, Some(extra.len()));
        }

        #[test]
        fn payload_arbitrary_bytes_never_panic(bytes in vec(any::<u8>(), 0..512)) {
            if let Ok(payload) = Payload::decode(&bytes) {
                prop_assert_eq!(Payload::decode(&payload.encode()).ok(), Some(payload));
            }
        }

        #[test]
        fn any_plaintext_round_trips_and_any_flip_fails(
            plaintext in vec(any::<u8>(), 0..300),
            at in any::<prop::sample::Index>(),
            bit in 0u8..8,
            hops in any::<u8>(),
        ) {
            let net = Net::new();
            let (ab, ba) = net.ab();
            let mut env = sealed(&ab, &plaintext);
            env.hops = hops;
            prop_assert_eq!(open(&ba, &env).ok(), Some(plaintext));
            let i = at.index(env.sealed.len());
            let mut flipped = env.sealed.to_vec();
            flipped[i] ^= 1 << bit;
            env.sealed = flipped.into();
            prop_assert!(matches!(open(&ba, &env), Err(E2eError::Decrypt)));
        }
    }
}

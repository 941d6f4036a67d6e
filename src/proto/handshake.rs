//! Link handshake: Noise XX for mutual authentication and keys, then a network
//! membership proof.
//!
//! Every link (UDP, TCP or WebSocket) starts with a `Noise_XX_25519_ChaChaPoly_BLAKE2s`
//! handshake run through snow, with the node's [`Identity`] as the static key, so
//! each side learns the other's identity public key with proof of possession.
//! The connection actors drive a [`Handshake`] with the bytes they receive and
//! send what it returns; once it is finished, [`Handshake::finish`] yields the
//! [`Established`] link secrets.
//!
//! Noise only proves *who* the peer is, not that it belongs to the network. For
//! that, right after the handshake each side sends a MAC ([`NetworkKey::proof`])
//! keyed from the network secret over the handshake hash and its own role: the
//! hash differs on every link, so a proof cannot be replayed on another link, and
//! the role byte differs per direction, so a proof cannot be reflected back to
//! its sender.
//!
//! This module is pure: no I/O, no clocks. Message 1 carries zero padding (so no answer is
//! larger than the request that caused it), the other payloads are empty; the hello frame is
//! sent after the handshake, encrypted with the transport keys.

use std::fmt;

use hkdf::Hkdf;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::identity::Identity;

/// The Noise protocol every link runs.
pub const NOISE_PARAMS: &str = "Noise_XX_25519_ChaChaPoly_BLAKE2s";

/// Noise prologue: mixed into the handshake hash, so a peer speaking another
/// protocol (or another version of this one) fails the handshake instead of
/// being misread. Bump the version when the link protocol changes incompatibly.
pub const NOISE_PROLOGUE: &[u8] = b"msgtier noise v4";

/// X25519 public key length (RFC 7748).
const DH_PUBLIC_BYTES: usize = 32;

/// ChaCha20-Poly1305 authentication tag length (RFC 8439).
const AEAD_TAG_BYTES: usize = 16;

/// Zero bytes the initiator puts in message 1's (clear, hash-bound) payload, so message 1 is
/// larger than the message 2 it asks for: an answer to a spoofed source is never larger than
/// the request (no reflection amplification, the rule QUIC's padded Initial follows).
pub const MSG1_PADDING_BYTES: usize = 80;

/// XX message 1, `-> e`: the ephemeral key and the padding payload.
const XX_MSG1_BYTES: usize = DH_PUBLIC_BYTES + MSG1_PADDING_BYTES;

/// XX message 2, `<- e, ee, s, es`: ephemeral key, encrypted static key, and the
/// tag of the empty encrypted payload.
const XX_MSG2_BYTES: usize = DH_PUBLIC_BYTES + (DH_PUBLIC_BYTES + AEAD_TAG_BYTES) + AEAD_TAG_BYTES;

/// XX message 3, `-> s, se`: encrypted static key and the tag of the empty
/// encrypted payload.
const XX_MSG3_BYTES: usize = (DH_PUBLIC_BYTES + AEAD_TAG_BYTES) + AEAD_TAG_BYTES;

/// Largest handshake message accepted, in bytes. The largest XX message with an
/// empty payload is message 2 at 96 bytes; 128 leaves headroom so framing layers
/// can bound every handshake frame with this one constant.
/// [`Handshake::read_message`] rejects anything longer up front and, below it,
/// anything that is not exactly the expected message's size.
pub const MAX_HANDSHAKE_MSG_BYTES: usize = 128;

/// Salt for deriving the [`NetworkKey`] from the network secret (RFC 5869 salt:
/// domain separation from any other use of the same secret).
const NETWORK_KEY_SALT: &[u8] = b"msgtier network key v1";

/// Prefix of the MAC input of a membership proof.
const PROOF_LABEL: &[u8] = b"msgtier proof v1";

/// Prefix of the HKDF info of [`NetworkKey::expand`]. It differs from
/// [`PROOF_LABEL`] within their common length, so no expansion label can make an
/// HKDF block equal a proof MAC under the same key.
const EXPAND_LABEL: &[u8] = b"msgtier expand v1";

/// Role byte in the proof MAC input for the initiator.
const PROOF_ROLE_INITIATOR: u8 = 1;

/// Role byte in the proof MAC input for the responder.
const PROOF_ROLE_RESPONDER: u8 = 2;

/// Scalar used to test a peer's static key for low order (see [`is_low_order`]).
/// Its value does not matter: X25519 clamps every scalar to a multiple of the
/// cofactor 8, so the product is the identity exactly for low-order points.
const LOW_ORDER_PROBE_SCALAR: [u8; 32] = [0x55; 32];

type HmacSha256 = Hmac<Sha256>;

/// Failures of the link handshake. After any error from
/// [`Handshake::read_message`] the handshake is dead (further calls return
/// [`HandshakeError::Failed`]): the caller drops the link.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// snow refused to set up the handshake with our parameters and key. Not
    /// caused by peer input.
    #[error("cannot set up Noise handshake: {0}")]
    Setup(#[source] snow::Error),

    /// The message is longer than [`MAX_HANDSHAKE_MSG_BYTES`].
    #[error("handshake message of {len} bytes exceeds the {max}-byte limit")]
    Oversized {
        /// Length of the received message.
        len: usize,
        /// The limit, [`MAX_HANDSHAKE_MSG_BYTES`].
        max: usize,
    },

    /// The message does not have the size of the XX message expected now. This
    /// is also what a truncated, padded or out-of-order message looks like: the
    /// three XX messages have distinct sizes.
    #[error("handshake message {message} must be {expected} bytes, got {len}")]
    WrongLength {
        /// Which XX message (1, 2 or 3) was expected.
        message: u8,
        /// Its size.
        expected: usize,
        /// Length of the received message.
        len: usize,
    },

    /// The message failed authentication: tampered with, from another
    /// handshake, or the peer is not running the same protocol (prologue).
    #[error("handshake message failed authentication")]
    Decrypt,

    /// snow rejected the message as malformed.
    #[error("malformed handshake message")]
    Malformed,

    /// The peer's static key is a low-order point: anyone could complete the
    /// handshake under it without a private key.
    #[error("peer's static key is a low-order point")]
    LowOrderRemoteKey,

    /// Any other error snow reports while processing a message.
    #[error("Noise handshake error: {0}")]
    Noise(#[source] snow::Error),

    /// A message arrived after the handshake had finished.
    #[error("handshake is already finished")]
    AlreadyFinished,

    /// [`Handshake::finish`] was called before the last message.
    #[error("handshake is not finished")]
    NotFinished,

    /// An earlier message failed; the handshake cannot continue.
    #[error("handshake already failed")]
    Failed,

    /// snow's finished state lacked something XX guarantees (the peer's static
    /// key, a 32-byte hash). Unreachable with [`NOISE_PARAMS`]; reported rather
    /// than panicking.
    #[error("unexpected Noise state: {0}")]
    UnexpectedNoiseState(&'static str),
}

/// Which side of a link a node is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// The side that dialled and sent Noise message 1.
    Initiator,
    /// The side that accepted.
    Responder,
}

impl Role {
    /// The role of the other side of the link.
    pub fn peer(self) -> Role {
        match self {
            Role::Initiator => Role::Responder,
            Role::Responder => Role::Initiator,
        }
    }

    /// The byte identifying this role in proof MACs.
    fn proof_byte(self) -> u8 {
        match self {
            Role::Initiator => PROOF_ROLE_INITIATOR,
            Role::Responder => PROOF_ROLE_RESPONDER,
        }
    }
}

/// An XX handshake in progress.
///
/// Flow: [`Handshake::initiator`] returns message 1;
/// the responder's [`read_message`](Handshake::read_message)(msg1) returns
/// `Some(msg2)`; the initiator's `read_message(msg2)` returns `Some(msg3)` and
/// the initiator is finished; the responder's `read_message(msg3)` returns `None`
/// and the responder is finished.
#[derive(Debug)]
pub struct Handshake {
    state: snow::HandshakeState,
    role: Role,
    /// Number (1..=3) of the next XX message on the wire, read or written.
    next_message: u8,
    /// Set after any error: the handshake refuses to go on.
    failed: bool,
}

impl Handshake {
    /// Starts a handshake as the dialling side; returns it and message 1 to send.
    pub fn initiator(identity: &Identity) -> Result<(Handshake, Vec<u8>), HandshakeError> {
        Handshake::initiator_bound(identity, &[])
    }

    /// [`Handshake::initiator`] bound to a channel: `binding` (a QUIC connection's exporter,
    /// see [`crate::quic::binding`]) is appended to the prologue, so the handshake completes
    /// only between the two ends of that very channel.
    pub fn initiator_bound(
        identity: &Identity,
        binding: &[u8],
    ) -> Result<(Handshake, Vec<u8>), HandshakeError> {
        let state = builder(identity, binding, |b| b.build_initiator())?;
        let mut handshake = Handshake {
            state,
            role: Role::Initiator,
            next_message: 1,
            failed: false,
        };
        let msg1 = handshake.write_next()?;
        Ok((handshake, msg1))
    }

    /// Starts a handshake as the accepting side, waiting for message 1.
    pub fn responder(identity: &Identity) -> Result<Handshake, HandshakeError> {
        Handshake::responder_bound(identity, &[])
    }

    /// [`Handshake::responder`] bound to a channel (see [`Handshake::initiator_bound`]).
    pub fn responder_bound(
        identity: &Identity,
        binding: &[u8],
    ) -> Result<Handshake, HandshakeError> {
        let state = builder(identity, binding, |b| b.build_responder())?;
        Ok(Handshake {
            state,
            role: Role::Responder,
            next_message: 1,
            failed: false,
        })
    }

    /// Feed the peer's next handshake message; returns the message to send back,
    /// if the pattern has one now (`None` once the handshake is finished).
    ///
    /// Any error leaves the handshake failed; drop the link.
    pub fn read_message(&mut self, msg: &[u8]) -> Result<Option<Vec<u8>>, HandshakeError> {
        if self.failed {
            return Err(HandshakeError::Failed);
        }
        if self.state.is_handshake_finished() {
            return Err(HandshakeError::AlreadyFinished);
        }
        let result = self.read_and_reply(msg);
        if result.is_err() {
            self.failed = true;
        }
        result
    }

    /// Whether all three messages have been exchanged (from this side's view).
    pub fn is_finished(&self) -> bool {
        !self.failed && self.state.is_handshake_finished()
    }

    /// This side's role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// Extracts the link secrets; fails if the handshake is not finished.
    pub fn finish(mut self) -> Result<Established, HandshakeError> {
        if self.failed {
            return Err(HandshakeError::Failed);
        }
        if !self.state.is_handshake_finished() {
            return Err(HandshakeError::NotFinished);
        }
        let remote_static = self
            .remote_static()?
            .ok_or(HandshakeError::UnexpectedNoiseState(
                "no remote static key after XX",
            ))?;
        let handshake_hash: [u8; 32] =
            self.state.get_handshake_hash().try_into().map_err(|_| {
                HandshakeError::UnexpectedNoiseState("handshake hash is not 32 bytes")
            })?;
        // Both sides derive (k1, k2) = Split() of the final chaining key; by the
        // Noise spec the initiator sends with k1 and the responder with k2.
        let (k1, k2) = self.state.dangerously_get_raw_split();
        let (k1, k2) = (Zeroizing::new(k1), Zeroizing::new(k2));
        let (send_key, recv_key) = match self.role {
            Role::Initiator => (k1, k2),
            Role::Responder => (k2, k1),
        };
        Ok(Established {
            role: self.role,
            remote_static,
            handshake_hash,
            send_key,
            recv_key,
        })
    }

    /// Reads one message (the caller has checked `failed`/finished) and writes
    /// the reply if it is our turn.
    fn read_and_reply(&mut self, msg: &[u8]) -> Result<Option<Vec<u8>>, HandshakeError> {
        if msg.len() > MAX_HANDSHAKE_MSG_BYTES {
            return Err(HandshakeError::Oversized {
                len: msg.len(),
                max: MAX_HANDSHAKE_MSG_BYTES,
            });
        }
        let expected = expected_len(self.next_message);
        if msg.len() != expected {
            return Err(HandshakeError::WrongLength {
                message: self.next_message,
                expected,
                len: msg.len(),
            });
        }
        // Message 1 carries the padding, the others an empty payload: with the exact length
        // checked above, the buffer fits what snow writes there.
        let mut payload = [0u8; MSG1_PADDING_BYTES];
        self.state
            .read_message(msg, &mut payload)
            .map_err(read_error)?;
        self.next_message += 1;
        if let Some(remote) = self.remote_static()? {
            if is_low_order(&remote) {
                return Err(HandshakeError::LowOrderRemoteKey);
            }
        }
        if self.state.is_handshake_finished() {
            return Ok(None);
        }
        self.write_next().map(Some)
    }

    /// Writes our next message: message 1 with the padding, the others with an empty payload.
    fn write_next(&mut self) -> Result<Vec<u8>, HandshakeError> {
        let mut buf = vec![0u8; MAX_HANDSHAKE_MSG_BYTES];
        let padding = [0u8; MSG1_PADDING_BYTES];
        let payload: &[u8] = if self.next_message == 1 {
            &padding
        } else {
            &[]
        };
        let len = self
            .state
            .write_message(payload, &mut buf)
            .map_err(HandshakeError::Noise)?;
        buf.truncate(len);
        self.next_message += 1;
        Ok(buf)
    }

    /// The peer's static key, once Noise has delivered it.
    fn remote_static(&self) -> Result<Option<[u8; 32]>, HandshakeError> {
        self.state
            .get_remote_static()
            .map(|key| {
                key.try_into().map_err(|_| {
                    HandshakeError::UnexpectedNoiseState("remote static key is not 32 bytes")
                })
            })
            .transpose()
    }
}

/// Builds a snow handshake state with our parameters, prologue (plus the channel binding)
/// and identity.
fn builder(
    identity: &Identity,
    binding: &[u8],
    build: impl FnOnce(snow::Builder<'_>) -> Result<snow::HandshakeState, snow::Error>,
) -> Result<snow::HandshakeState, HandshakeError> {
    let params: snow::params::NoiseParams = NOISE_PARAMS.parse().map_err(HandshakeError::Setup)?;
    let private = identity.private_bytes();
    let prologue = [NOISE_PROLOGUE, binding].concat();
    let builder = snow::Builder::new(params)
        .local_private_key(private.as_slice())
        .and_then(|b| b.prologue(&prologue))
        .map_err(HandshakeError::Setup)?;
    build(builder).map_err(HandshakeError::Setup)
}

/// Size of XX message `number` with an empty payload.
fn expected_len(number: u8) -> usize {
    match number {
        1 => XX_MSG1_BYTES,
        2 => XX_MSG2_BYTES,
        _ => XX_MSG3_BYTES,
    }
}

/// Maps snow's error for a received message.
fn read_error(err: snow::Error) -> HandshakeError {
    match err {
        snow::Error::Decrypt => HandshakeError::Decrypt,
        snow::Error::Input => HandshakeError::Malformed,
        other => HandshakeError::Noise(other),
    }
}

/// Whether `public` is a low-order X25519 point (including non-canonical
/// encodings), i.e. its product with any clamped scalar is the identity. snow
/// does not check this.
fn is_low_order(public: &[u8; 32]) -> bool {
    let probe = x25519_dalek::StaticSecret::from(LOW_ORDER_PROBE_SCALAR);
    !probe
        .diffie_hellman(&x25519_dalek::PublicKey::from(*public))
        .was_contributory()
}

/// Secrets of a link whose Noise handshake completed.
///
/// The transport keys are used by the caller with ChaCha20-Poly1305 directly,
/// not through snow's `TransportState`, so records are not limited to Noise's
/// 65535-byte message size. The caller owns nonce discipline: a key must never
/// encrypt two records under the same nonce (e.g. a per-direction counter), and
/// a new handshake gives new keys.
pub struct Established {
    /// This side's role on the link.
    pub role: Role,
    /// The peer's identity public key, as proven by Noise.
    pub remote_static: [u8; 32],
    /// Noise handshake hash: unique per handshake, both sides hold the same
    /// value. Input of the membership proofs.
    pub handshake_hash: [u8; 32],
    /// Key for records this side sends (initiator: Noise's first split key,
    /// responder: the second).
    pub send_key: Zeroizing<[u8; 32]>,
    /// Key for records this side receives (the peer's `send_key`).
    pub recv_key: Zeroizing<[u8; 32]>,
}

impl Established {
    /// The membership proof this side sends: `key.proof(self.role, hash)`.
    pub fn local_proof(&self, key: &NetworkKey) -> [u8; 32] {
        key.proof(self.role, &self.handshake_hash)
    }

    /// Checks the membership proof the peer sent, for the peer's role.
    pub fn verify_remote_proof(&self, key: &NetworkKey, proof: &[u8; 32]) -> bool {
        key.verify(self.role.peer(), &self.handshake_hash, proof)
    }
}

impl fmt::Debug for Established {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Established")
            .field("role", &self.role)
            .field("remote_static", &hex::encode(self.remote_static))
            .field("handshake_hash", &hex::encode(self.handshake_hash))
            .finish_non_exhaustive()
    }
}

/// The key proving membership of one network, derived from its name and
/// shared secret. Zeroed on drop; `Debug` prints nothing secret.
#[derive(Clone)]
pub struct NetworkKey {
    key: Zeroizing<[u8; 32]>,
}

impl NetworkKey {
    /// HKDF-SHA256(ikm = secret, salt = b"msgtier network key v1",
    /// info = network name) -> 32 bytes.
    pub fn derive(network: &str, secret: &str) -> NetworkKey {
        let mut key = Zeroizing::new([0u8; 32]);
        Hkdf::<Sha256>::new(Some(NETWORK_KEY_SALT), secret.as_bytes())
            .expand(network.as_bytes(), key.as_mut_slice())
            .expect("32 bytes is within HKDF-SHA256's 8160-byte output limit");
        NetworkKey { key }
    }

    /// The membership proof of the side with `role` on the link with
    /// `handshake_hash`: HMAC-SHA256(key, b"msgtier proof v1" || role byte
    /// (1 initiator, 2 responder) || handshake_hash).
    pub fn proof(&self, role: Role, handshake_hash: &[u8; 32]) -> [u8; 32] {
        self.proof_mac(role, handshake_hash)
            .finalize()
            .into_bytes()
            .into()
    }

    /// Constant-time check of a peer's proof for its role.
    pub fn verify(&self, role: Role, handshake_hash: &[u8; 32], proof: &[u8; 32]) -> bool {
        self.proof_mac(role, handshake_hash)
            .verify_slice(proof)
            .is_ok()
    }

    /// HKDF-SHA256 expansion from the same key material with another label, for
    /// later keys (e.g. end-to-end): HKDF-Expand(PRK = this key,
    /// info = b"msgtier expand v1" || label, 32 bytes).
    pub fn expand(&self, label: &[u8]) -> Zeroizing<[u8; 32]> {
        let mut out = Zeroizing::new([0u8; 32]);
        Hkdf::<Sha256>::from_prk(self.key.as_slice())
            .expect("a 32-byte key is a valid HKDF-SHA256 PRK")
            .expand_multi_info(&[EXPAND_LABEL, label], out.as_mut_slice())
            .expect("32 bytes is within HKDF-SHA256's 8160-byte output limit");
        out
    }

    /// The proof MAC with its input fed in, ready to finalize or verify.
    fn proof_mac(&self, role: Role, handshake_hash: &[u8; 32]) -> HmacSha256 {
        let mut mac = <HmacSha256 as KeyInit>::new_from_slice(self.key.as_slice())
            .expect("HMAC accepts keys of any length");
        mac.update(PROOF_LABEL);
        mac.update(&[role.proof_byte()]);
        mac.update(handshake_hash);
        mac
    }
}

impl fmt::Debug for NetworkKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NetworkKey").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn identity() -> Identity {
        Identity::generate().expect("generate")
    }

    /// Runs a full handshake, returning (initiator, responder) secrets.
    fn handshake(a: &Identity, b: &Identity) -> (Established, Established) {
        let (mut init, msg1) = Handshake::initiator(a).expect("initiator");
        let mut resp = Handshake::responder(b).expect("responder");
        let msg2 = resp.read_message(&msg1).expect("msg1").expect("msg2");
        let msg3 = init.read_message(&msg2).expect("msg2").expect("msg3");
        assert!(init.is_finished());
        assert!(resp.read_message(&msg3).expect("msg3").is_none());
        assert!(resp.is_finished());
        (
            init.finish().expect("initiator finish"),
            resp.finish().expect("responder finish"),
        )
    }

    #[test]
    fn full_handshake_gives_matching_keys_and_identities() {
        let (a, b) = (identity(), identity());
        let (init, resp) = handshake(&a, &b);
        assert_eq!(init.role, Role::Initiator);
        assert_eq!(resp.role, Role::Responder);
        assert_eq!(*init.send_key, *resp.recv_key);
        assert_eq!(*init.recv_key, *resp.send_key);
        assert_ne!(*init.send_key, *init.recv_key);
        assert_eq!(init.handshake_hash, resp.handshake_hash);
        assert_eq!(init.remote_static, b.public());
        assert_eq!(resp.remote_static, a.public());
    }

    #[test]
    fn message_sizes_and_turns() {
        let (a, b) = (identity(), identity());
        let (mut init, msg1) = Handshake::initiator(&a).expect("initiator");
        assert_eq!(init.role(), Role::Initiator);
        assert_eq!(msg1.len(), XX_MSG1_BYTES);
        assert!(!init.is_finished());
        let mut resp = Handshake::responder(&b).expect("responder");
        assert_eq!(resp.role(), Role::Responder);
        let msg2 = resp.read_message(&msg1).expect("msg1").expect("msg2");
        assert_eq!(msg2.len(), XX_MSG2_BYTES);
        assert!(!resp.is_finished());
        let msg3 = init.read_message(&msg2).expect("msg2").expect("msg3");
        assert_eq!(msg3.len(), XX_MSG3_BYTES);
        assert!(msg2.len() <= MAX_HANDSHAKE_MSG_BYTES);
        assert!(msg1.len() <= MAX_HANDSHAKE_MSG_BYTES);
        assert!(resp.read_message(&msg3).expect("msg3").is_none());
    }

    /// A responder's answer is never larger than the request that caused it (so a spoofed
    /// source gets no amplification), and an unpadded message 1 (32 bytes, what an attacker
    /// would send to get 96 back) gets no answer at all.
    #[test]
    fn no_answer_is_larger_than_its_request() {
        let (a, b) = (identity(), identity());
        let (_, msg1) = Handshake::initiator(&a).expect("initiator");
        let mut resp = Handshake::responder(&b).expect("responder");
        let msg2 = resp.read_message(&msg1).expect("msg1").expect("msg2");
        assert!(msg2.len() <= msg1.len(), "{} > {}", msg2.len(), msg1.len());
        let mut resp = Handshake::responder(&b).expect("responder");
        assert!(matches!(
            resp.read_message(&msg1[..DH_PUBLIC_BYTES]),
            Err(HandshakeError::WrongLength { message: 1, .. })
        ));
        // The padding is bound to the handshake: a changed byte fails at message 2.
        let (mut init, msg1) = Handshake::initiator(&a).expect("initiator");
        let mut tampered = msg1.clone();
        tampered[40] ^= 1;
        let mut resp = Handshake::responder(&b).expect("responder");
        let msg2 = resp.read_message(&tampered).expect("msg1").expect("msg2");
        assert!(init.read_message(&msg2).is_err());
    }

    #[test]
    fn handshakes_differ_per_link() {
        let (a, b) = (identity(), identity());
        let (first, _) = handshake(&a, &b);
        let (second, _) = handshake(&a, &b);
        assert_ne!(first.handshake_hash, second.handshake_hash);
        assert_ne!(*first.send_key, *second.send_key);
    }

    #[test]
    fn proof_verifies_with_right_secret_and_role() {
        let (a, b) = (identity(), identity());
        let (init, resp) = handshake(&a, &b);
        let key_a = NetworkKey::derive("home", "s3cret");
        let key_b = NetworkKey::derive("home", "s3cret");
        let from_init = init.local_proof(&key_a);
        let from_resp = resp.local_proof(&key_b);
        assert!(resp.verify_remote_proof(&key_b, &from_init));
        assert!(init.verify_remote_proof(&key_a, &from_resp));
        assert!(key_b.verify(Role::Initiator, &resp.handshake_hash, &from_init));
        assert_eq!(
            from_init,
            key_a.proof(Role::Initiator, &init.handshake_hash)
        );
        assert_ne!(from_init, from_resp);
    }

    #[test]
    fn proof_fails_with_wrong_secret() {
        let (a, b) = (identity(), identity());
        let (init, resp) = handshake(&a, &b);
        let proof = init.local_proof(&NetworkKey::derive("home", "s3cret"));
        assert!(!resp.verify_remote_proof(&NetworkKey::derive("home", "s3cret!"), &proof));
        assert!(!resp.verify_remote_proof(&NetworkKey::derive("home", ""), &proof));
    }

    #[test]
    fn proof_replayed_on_another_link_fails() {
        let (a, b) = (identity(), identity());
        let key = NetworkKey::derive("home", "s3cret");
        let (first_init, _) = handshake(&a, &b);
        let (_, second_resp) = handshake(&a, &b);
        let replayed = first_init.local_proof(&key);
        assert!(!second_resp.verify_remote_proof(&key, &replayed));
    }

    #[test]
    fn reflected_proof_fails() {
        let (a, b) = (identity(), identity());
        let key = NetworkKey::derive("home", "s3cret");
        let (init, resp) = handshake(&a, &b);
        // The initiator's own proof sent back to it as if it were the responder's.
        let own = init.local_proof(&key);
        assert!(!init.verify_remote_proof(&key, &own));
        let own = resp.local_proof(&key);
        assert!(!resp.verify_remote_proof(&key, &own));
        assert!(!key.verify(
            Role::Responder,
            &init.handshake_hash,
            &init.local_proof(&key)
        ));
    }

    #[test]
    fn proof_fails_for_other_network_with_same_secret() {
        let (a, b) = (identity(), identity());
        let (init, resp) = handshake(&a, &b);
        let proof = init.local_proof(&NetworkKey::derive("home", "s3cret"));
        assert!(!resp.verify_remote_proof(&NetworkKey::derive("work", "s3cret"), &proof));
    }

    #[test]
    fn proof_fails_when_altered() {
        let (a, b) = (identity(), identity());
        let key = NetworkKey::derive("home", "s3cret");
        let (init, resp) = handshake(&a, &b);
        let mut proof = init.local_proof(&key);
        proof[31] ^= 1;
        assert!(!resp.verify_remote_proof(&key, &proof));
    }

    #[test]
    fn network_key_derivation_is_deterministic_and_domain_separated() {
        let key = NetworkKey::derive("home", "s3cret");
        let same = NetworkKey::derive("home", "s3cret");
        let hash = [9u8; 32];
        assert_eq!(
            key.proof(Role::Initiator, &hash),
            same.proof(Role::Initiator, &hash)
        );
        assert_eq!(*key.expand(b"e2e"), *same.expand(b"e2e"));
        assert_ne!(*key.expand(b"e2e"), *key.expand(b"other"));
        assert_ne!(*key.expand(b"e2e"), *key.key);
        assert_ne!(
            *key.expand(b"e2e"),
            *NetworkKey::derive("work", "s3cret").expand(b"e2e")
        );
        // Name and secret are not interchangeable.
        assert_ne!(
            *NetworkKey::derive("a", "b").key,
            *NetworkKey::derive("b", "a").key
        );
    }

    #[test]
    fn network_key_debug_prints_nothing_secret() {
        let key = NetworkKey::derive("home", "s3cret");
        let debug = format!("{key:?}");
        assert_eq!(debug, "NetworkKey { .. }");
        assert!(!debug.contains(&hex::encode(*key.key)));
    }

    #[test]
    fn established_debug_hides_keys() {
        let (a, b) = (identity(), identity());
        let (init, _) = handshake(&a, &b);
        let debug = format!("{init:?}");
        assert!(!debug.contains(&hex::encode(*init.send_key)));
        assert!(!debug.contains(&hex::encode(*init.recv_key)));
        assert!(debug.contains(&hex::encode(init.remote_static)));
    }

    #[test]
    fn role_peer() {
        assert_eq!(Role::Initiator.peer(), Role::Responder);
        assert_eq!(Role::Responder.peer(), Role::Initiator);
    }

    #[test]
    fn finish_before_done_fails() {
        let (a, b) = (identity(), identity());
        let (init, msg1) = Handshake::initiator(&a).expect("initiator");
        assert!(matches!(init.finish(), Err(HandshakeError::NotFinished)));
        let mut resp = Handshake::responder(&b).expect("responder");
        resp.read_message(&msg1).expect("msg1");
        assert!(matches!(resp.finish(), Err(HandshakeError::NotFinished)));
    }

    #[test]
    fn out_of_order_messages_fail() {
        let (a, b) = (identity(), identity());
        let (mut init, msg1) = Handshake::initiator(&a).expect("initiator");
        let mut resp = Handshake::responder(&b).expect("responder");
        let msg2 = resp.read_message(&msg1).expect("msg1").expect("msg2");
        let msg3 = init.read_message(&msg2).expect("msg2").expect("msg3");

        // Message 3 where message 1 is expected.
        let mut fresh = Handshake::responder(&b).expect("responder");
        assert!(matches!(
            fresh.read_message(&msg3),
            Err(HandshakeError::WrongLength { message: 1, .. })
        ));
        // Message 2 where message 1 is expected.
        let mut fresh = Handshake::responder(&b).expect("responder");
        assert!(fresh.read_message(&msg2).is_err());
        // Message 1 (another initiator's) where message 2 is expected.
        let (mut other_init, other_msg1) = Handshake::initiator(&a).expect("initiator");
        assert!(other_init.read_message(&other_msg1).is_err());
        // Message 1 replayed where message 3 is expected.
        let mut resp2 = Handshake::responder(&b).expect("responder");
        resp2.read_message(&msg1).expect("msg1");
        assert!(resp2.read_message(&msg1).is_err());
        // Message 2 fed back to its own sender.
        let mut resp3 = Handshake::responder(&b).expect("responder");
        let own_msg2 = resp3.read_message(&msg1).expect("msg1").expect("msg2");
        assert!(resp3.read_message(&own_msg2).is_err());

        // A message after the end.
        assert!(matches!(
            init.read_message(&msg2),
            Err(HandshakeError::AlreadyFinished)
        ));
        resp.read_message(&msg3).expect("msg3");
        assert!(matches!(
            resp.read_message(&msg3),
            Err(HandshakeError::AlreadyFinished)
        ));
        // Both still usable after the stray message.
        let (init, resp) = (
            init.finish().expect("finish"),
            resp.finish().expect("finish"),
        );
        assert_eq!(*init.send_key, *resp.recv_key);
    }

    #[test]
    fn message_from_another_handshake_fails_authentication() {
        let (a, b) = (identity(), identity());
        let (mut init, msg1) = Handshake::initiator(&a).expect("initiator");
        let (_, other_msg1) = Handshake::initiator(&a).expect("initiator");
        let mut other_resp = Handshake::responder(&b).expect("responder");
        let other_msg2 = other_resp
            .read_message(&other_msg1)
            .expect("msg1")
            .expect("msg2");
        let _ = msg1;
        assert!(matches!(
            init.read_message(&other_msg2),
            Err(HandshakeError::Decrypt)
        ));
    }

    #[test]
    fn error_poisons_the_handshake() {
        let (a, b) = (identity(), identity());
        let (mut init, msg1) = Handshake::initiator(&a).expect("initiator");
        let mut resp = Handshake::responder(&b).expect("responder");
        let msg2 = resp.read_message(&msg1).expect("msg1").expect("msg2");
        let mut bad = msg2.clone();
        bad[40] ^= 0x80;
        assert!(matches!(
            init.read_message(&bad),
            Err(HandshakeError::Decrypt)
        ));
        assert!(matches!(
            init.read_message(&msg2),
            Err(HandshakeError::Failed)
        ));
        assert!(!init.is_finished());
        assert!(matches!(init.finish(), Err(HandshakeError::Failed)));
    }

    #[test]
    fn oversized_message_is_rejected() {
        let b = identity();
        let mut resp = Handshake::responder(&b).expect("responder");
        let big = vec![0u8; MAX_HANDSHAKE_MSG_BYTES + 1];
        assert!(matches!(
            resp.read_message(&big),
            Err(HandshakeError::Oversized { len, max: MAX_HANDSHAKE_MSG_BYTES })
                if len == MAX_HANDSHAKE_MSG_BYTES + 1
        ));
        let mut resp = Handshake::responder(&b).expect("responder");
        assert!(resp.read_message(&vec![0u8; 1 << 20]).is_err());
    }

    #[test]
    fn low_order_points_are_detected() {
        let mut one = [0u8; 32];
        one[0] = 1;
        // p - 1 = 2^255 - 20, little-endian.
        let mut p_minus_1 = [0xffu8; 32];
        p_minus_1[0] = 0xec;
        p_minus_1[31] = 0x7f;
        // p itself, a non-canonical encoding of 0.
        let mut p = p_minus_1;
        p[0] = 0xed;
        for point in [[0u8; 32], one, p_minus_1, p] {
            assert!(is_low_order(&point), "{}", hex::encode(point));
        }
        assert!(!is_low_order(&identity().public()));
        assert!(!is_low_order(&x25519_dalek::X25519_BASEPOINT_BYTES));
    }

    /// Runs the handshake up to the point where `step` (1, 2 or 3) is to be read,
    /// returning the reading side and the genuine message.
    fn at_step(step: u8) -> (Handshake, Vec<u8>) {
        let (a, b) = (identity(), identity());
        let (mut init, msg1) = Handshake::initiator(&a).expect("initiator");
        let mut resp = Handshake::responder(&b).expect("responder");
        if step == 1 {
            return (resp, msg1);
        }
        let msg2 = resp.read_message(&msg1).expect("msg1").expect("msg2");
        if step == 2 {
            return (init, msg2);
        }
        let msg3 = init.read_message(&msg2).expect("msg2").expect("msg3");
        (resp, msg3)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Message 1 is a bare ephemeral key: any 32 bytes parse, nothing else does.
        #[test]
        fn random_bytes_at_step_1_never_panic(
            bytes in proptest::collection::vec(any::<u8>(), 0..MAX_HANDSHAKE_MSG_BYTES * 2)
        ) {
            let (mut resp, _) = at_step(1);
            let result = resp.read_message(&bytes);
            prop_assert_eq!(result.is_ok(), bytes.len() == XX_MSG1_BYTES);
        }

        #[test]
        fn random_bytes_at_steps_2_and_3_fail(
            step in 2u8..=3,
            bytes in proptest::collection::vec(any::<u8>(), 0..MAX_HANDSHAKE_MSG_BYTES * 2)
        ) {
            let (mut side, _) = at_step(step);
            prop_assert!(side.read_message(&bytes).is_err());
            prop_assert!(!side.is_finished());
        }

        #[test]
        fn random_bytes_of_the_exact_size_fail_authentication(
            step in 2u8..=3,
            mut bytes in proptest::collection::vec(any::<u8>(), XX_MSG2_BYTES)
        ) {
            let (mut side, genuine) = at_step(step);
            bytes.truncate(genuine.len());
            prop_assert!(matches!(side.read_message(&bytes), Err(HandshakeError::Decrypt)));
        }

        #[test]
        fn truncated_or_extended_messages_fail(
            step in 1u8..=3,
            cut in 0usize..XX_MSG2_BYTES,
            extra in proptest::collection::vec(any::<u8>(), 1..64),
            extend in any::<bool>(),
        ) {
            let (mut side, mut msg) = at_step(step);
            if extend {
                msg.extend_from_slice(&extra);
            } else {
                msg.truncate(cut.min(msg.len() - 1));
            }
            prop_assert!(side.read_message(&msg).is_err());
        }

        /// Flipping any bit of message 2 or 3 breaks authentication; flipping one
        /// in message 1 (an unauthenticated ephemeral key, hashed into the
        /// transcript) makes the two sides disagree, which message 2 exposes.
        #[test]
        fn bit_flips_break_the_handshake(
            step in 1u8..=3,
            index in any::<prop::sample::Index>(),
            bit in 0u8..8,
        ) {
            let (a, b) = (identity(), identity());
            let (mut init, mut msg1) = Handshake::initiator(&a).expect("initiator");
            let mut resp = Handshake::responder(&b).expect("responder");
            if step == 1 {
                let i = index.index(msg1.len());
                msg1[i] ^= 1 << bit;
            }
            // Message 1 is an unauthenticated ephemeral key: always accepted.
            let mut msg2 = resp.read_message(&msg1).expect("msg1").expect("msg2");
            if step == 2 {
                let i = index.index(msg2.len());
                msg2[i] ^= 1 << bit;
            }
            let reply = init.read_message(&msg2);
            if step <= 2 {
                prop_assert!(reply.is_err());
                return Ok(());
            }
            let mut msg3 = reply.expect("msg2").expect("msg3");
            let i = index.index(msg3.len());
            msg3[i] ^= 1 << bit;
            prop_assert!(resp.read_message(&msg3).is_err());
        }
    }
}

//! The node's key material, bundled for the code that needs it on every link.
//!
//! The CryptoActor loads or creates it once at start and hands out this bundle behind an `Arc`:
//! handshakes and proofs run inside the link's own actor, so a link never waits on a message
//! round trip to another actor for key material.

use crate::identity::Identity;
use crate::proto::handshake::NetworkKey;

/// Long-term identity plus the key derived from the network secret.
#[derive(Debug)]
pub struct KeyRing {
    /// The node's X25519 identity, used as the Noise static key.
    pub identity: Identity,
    /// Derived from `network` and `secret`; proves membership on every link.
    pub network_key: NetworkKey,
}

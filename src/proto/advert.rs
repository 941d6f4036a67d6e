//! Signed link-state adverts: sealing our own, checking a received one's MAC and signature.
//!
//! An advert ([`Advert`]) travels as a [`LinkState`]: the origin's encoded advert, its Ed25519
//! signature (by the key bound to its identity key, `crate::identity::verify_bound`) and, for a
//! member's advert, an HMAC keyed from the network key ([`AdvertKey`]). Relays forward the
//! `LinkState` verbatim. The router decides what to accept (`crate::proto::router`); this
//! module only computes and checks.

use hmac::{KeyInit, Mac as _};
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::identity::{verify_bound, Identity};
use crate::proto::handshake::NetworkKey;
use crate::wire::frame::{Advert, LinkState, Mac};

/// HKDF label of the advert MAC key under the network key.
const ADVERT_MAC_LABEL: &[u8] = b"advert mac";

/// The network's advert MAC key: only members (who know the secret) can compute it.
pub struct AdvertKey {
    key: Zeroizing<[u8; 32]>,
}

impl AdvertKey {
    /// Derived from the network key (`NetworkKey::expand("advert mac")`).
    pub fn new(network_key: &NetworkKey) -> AdvertKey {
        AdvertKey {
            key: network_key.expand(ADVERT_MAC_LABEL),
        }
    }

    fn hmac(&self, body: &[u8], signature: &[u8; 64]) -> hmac::Hmac<Sha256> {
        let mut mac = <hmac::Hmac<Sha256> as KeyInit>::new_from_slice(self.key.as_slice())
            .expect("HMAC takes a key of any length");
        mac.update(&(body.len() as u64).to_be_bytes());
        mac.update(body);
        mac.update(signature);
        mac
    }

    /// The MAC over `body || signature`.
    pub fn mac(&self, body: &[u8], signature: &[u8; 64]) -> [u8; 32] {
        self.hmac(body, signature).finalize().into_bytes().into()
    }

    /// Whether `state` carries this network's MAC (constant-time comparison).
    pub fn verify(&self, state: &LinkState) -> bool {
        match &state.mac {
            Some(Mac(m)) => self
                .hmac(&state.body, &state.signature)
                .verify_slice(m)
                .is_ok(),
            None => false,
        }
    }
}

impl std::fmt::Debug for AdvertKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdvertKey(..)")
    }
}

/// Encodes and signs `advert` (whose `public_key` and `signing_key` must be `identity`'s),
/// with the network's MAC when `key` is given (a member's advert) and without it (a public
/// node's own advert in a network it relays for).
pub fn seal(identity: &Identity, key: Option<&AdvertKey>, advert: &Advert) -> LinkState {
    debug_assert_eq!(advert.public_key, identity.public());
    debug_assert_eq!(advert.signing_key, identity.signing_public());
    let body = advert.encode();
    let signature = identity.sign(&LinkState::signed_bytes(&body));
    let mac = key.map(|k| Mac(k.mac(&body, &signature)));
    LinkState {
        body,
        signature,
        mac,
    }
}

/// Whether `state`'s signature is `advert`'s origin's (`advert` is `state.open()`): made with
/// the advert's signing key, which maps to the advert's identity key.
pub fn signed_by_origin(state: &LinkState, advert: &Advert) -> bool {
    verify_bound(
        &advert.signing_key,
        &advert.public_key,
        &LinkState::signed_bytes(&state.body),
        &state.signature,
    )
}

/// Why an advert was refused; counted per reason on `/status` (`adverts_refused`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Refusal {
    /// The body does not decode or breaks a limit.
    Malformed,
    /// It names another network than the domain it arrived in.
    WrongNetwork,
    /// Its MAC is wrong: forged or altered by someone without the network secret.
    BadMac,
    /// It has no MAC and is not a relay's own advert from where one may come.
    NoMac,
    /// Its signature is not the origin's.
    BadSignature,
    /// Its sequence number is too far ahead of our clock.
    SeqAhead,
    /// It carries another identity key than the one we hold for its origin.
    KeyConflict,
    /// The network has a CA and the advert had no valid certificate for its origin and key.
    Uncertified,
}

impl Refusal {
    /// Snake-case name for `/status` and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Malformed => "malformed",
            Refusal::WrongNetwork => "wrong_network",
            Refusal::BadMac => "bad_mac",
            Refusal::NoMac => "no_mac",
            Refusal::BadSignature => "bad_signature",
            Refusal::SeqAhead => "seq_ahead",
            Refusal::KeyConflict => "key_conflict",
            Refusal::Uncertified => "uncertified",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::frame::Neighbor;

    fn advert_of(identity: &Identity) -> Advert {
        Advert {
            network: "home".into(),
            origin: "a".into(),
            seq: 5,
            public_key: identity.public(),
            signing_key: identity.signing_public(),
            addrs: vec![],
            neighbors: vec![Neighbor {
                id: "b".into(),
                cost_us: 10,
            }],
            relay: false,
            certificate: None,
            carrier: false,
            topics: Vec::new(),
        }
    }

    #[test]
    fn a_sealed_advert_verifies_and_any_change_breaks_mac_or_signature() {
        let a = Identity::from_private([1; 32]);
        let key = AdvertKey::new(&NetworkKey::derive("home", "secret"));
        let other_net = AdvertKey::new(&NetworkKey::derive("home", "other secret"));
        let advert = advert_of(&a);
        let state = seal(&a, Some(&key), &advert);
        assert!(key.verify(&state));
        assert!(!other_net.verify(&state), "another secret's MAC");
        assert!(signed_by_origin(&state, &state.open().unwrap()));

        // A relay changes a cost and re-encodes: signature and MAC both fail.
        let mut altered = advert.clone();
        altered.neighbors[0].cost_us = 1;
        let forged = LinkState {
            body: altered.encode(),
            ..state.clone()
        };
        assert!(!key.verify(&forged));
        assert!(!signed_by_origin(&forged, &forged.open().unwrap()));

        // A member without A's key signs its own version of A's advert: the MAC is right
        // (members know the secret) but the signature is not A's.
        let m = Identity::from_private([2; 32]);
        let mut claimed = advert.clone();
        claimed.signing_key = m.signing_public();
        let body = claimed.encode();
        let signature = m.sign(&LinkState::signed_bytes(&body));
        let by_member = LinkState {
            mac: Some(Mac(key.mac(&body, &signature))),
            body,
            signature,
        };
        assert!(key.verify(&by_member));
        assert!(!signed_by_origin(&by_member, &by_member.open().unwrap()));

        // Stripping the MAC leaves nothing to verify.
        let stripped = LinkState { mac: None, ..state };
        assert!(!key.verify(&stripped));
    }
}

//! A message published to a topic: what its origin signs once and every subscriber's copy
//! carries (inside the end-to-end seal), so a subscriber can check who published it even when
//! it came through carriers, and can show that proof to others.
//!
//! The signature is Ed25519 by the origin's signing key (bound to its identity key,
//! `crate::identity::verify_bound`) over [`PUBLISH_SIGNING_CONTEXT`], the origin id, the
//! publication id, its time, the topic and the body, each length-prefixed where its length
//! varies. One signature per publish, however many subscribers get a copy.

use serde::{Deserialize, Serialize};

use crate::identity::{verify_bound, Identity};

/// Prefix of the bytes a publication's signature covers (domain separation from adverts and
/// durable envelopes, which the same key signs).
pub const PUBLISH_SIGNING_CONTEXT: &[u8] = b"msgtier publish v1\0";

/// The signed facts of a publish, carried with its body in each copy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Publication {
    /// Random per publish at its origin; with the origin it is what subscribers deduplicate by.
    pub id: u64,
    /// The topic it was published to (checked: `crate::proto::topic::check_topic`).
    pub topic: String,
    /// The origin's unix time when it published, in milliseconds.
    pub time_unix_ms: u64,
    /// The origin's Ed25519 key that made `signature`.
    #[serde(with = "serde_bytes")]
    pub signing_key: [u8; 32],
    /// The origin's signature over [`signed_bytes`].
    #[serde(with = "serde_bytes")]
    pub signature: [u8; 64],
}

/// The bytes a publication's signature covers.
pub fn signed_bytes(origin: &str, id: u64, time_unix_ms: u64, topic: &str, body: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(
        PUBLISH_SIGNING_CONTEXT.len() + 3 * 8 + origin.len() + topic.len() + 16 + body.len(),
    );
    m.extend_from_slice(PUBLISH_SIGNING_CONTEXT);
    m.extend_from_slice(&(origin.len() as u64).to_be_bytes());
    m.extend_from_slice(origin.as_bytes());
    m.extend_from_slice(&id.to_be_bytes());
    m.extend_from_slice(&time_unix_ms.to_be_bytes());
    m.extend_from_slice(&(topic.len() as u64).to_be_bytes());
    m.extend_from_slice(topic.as_bytes());
    m.extend_from_slice(&(body.len() as u64).to_be_bytes());
    m.extend_from_slice(body);
    m
}

impl Publication {
    /// Signs a publish of `body` to `topic` by `origin` (whose identity is `identity`).
    pub fn sign(
        identity: &Identity,
        origin: &str,
        id: u64,
        time_unix_ms: u64,
        topic: &str,
        body: &[u8],
    ) -> Publication {
        let signature = identity.sign(&signed_bytes(origin, id, time_unix_ms, topic, body));
        Publication {
            id,
            topic: topic.to_string(),
            time_unix_ms,
            signing_key: identity.signing_public(),
            signature,
        }
    }

    /// Whether this is `origin`'s signature (by the signing key bound to `origin_key`, its
    /// identity key) over this publication of `body`.
    pub fn verify(&self, origin: &str, origin_key: &[u8; 32], body: &[u8]) -> bool {
        verify_bound(
            &self.signing_key,
            origin_key,
            &signed_bytes(origin, self.id, self.time_unix_ms, &self.topic, body),
            &self.signature,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_publication_verifies_for_its_origin_only_and_any_change_breaks_it() {
        let a = Identity::from_private([1; 32]);
        let m = Identity::from_private([2; 32]);
        let p = Publication::sign(&a, "a", 7, 1000, "alerts.disk", b"full");
        assert!(p.verify("a", &a.public(), b"full"));
        assert!(!p.verify("a", &a.public(), b"fine"), "another body");
        assert!(!p.verify("b", &a.public(), b"full"), "another origin id");
        assert!(!p.verify("a", &m.public(), b"full"), "another origin key");
        let mut retopic = p.clone();
        retopic.topic = "alerts.cpu".into();
        assert!(!retopic.verify("a", &a.public(), b"full"));
        let mut reid = p.clone();
        reid.id = 8;
        assert!(!reid.verify("a", &a.public(), b"full"));
        // A member signs a publication in a's name with its own key: not bound to a's key.
        let forged = Publication::sign(&m, "a", 7, 1000, "alerts.disk", b"full");
        assert!(!forged.verify("a", &a.public(), b"full"));
    }
}

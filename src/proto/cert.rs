//! Member certificates of an optional network CA (Nebula's model), pure.
//!
//! A network's operator runs `msgtier ca init` once (an Ed25519 key pair: the CA) and signs each
//! member's identity with `msgtier ca sign --network N --id ID --key PUBKEY --days D`. Nodes
//! configured with `network_ca` then take a member's key only with a valid certificate for it:
//! on a link (the certificate comes in its hello) and in adverts (the certificate travels in
//! the advert). Even a member of the network cannot then make others seal to a key of its
//! choice for another member's id: it would need the CA's signature.
//!
//! On the wire and in the config a certificate is `msgtier-cert-v1:` and the hex of its
//! MessagePack encoding.

use serde::{Deserialize, Serialize};

use crate::identity::{Identity, SIGNATURE_BYTES};

/// What the CA's signature covers comes after this (domain separation).
const CERT_SIGNING_CONTEXT: &[u8] = b"msgtier cert v1\0";

/// Prefix of a certificate's text form.
pub const CERT_TEXT_PREFIX: &str = "msgtier-cert-v1:";

/// Largest encoded certificate accepted (two ids of 64 bytes, keys, a signature: ~250 bytes).
pub const MAX_CERT_BYTES: usize = 512;

/// One member's certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Certificate {
    /// The network it is valid in.
    pub network: String,
    /// The member's node id.
    pub node_id: String,
    /// The member's identity (X25519) key, as `/status` shows it.
    #[serde(with = "serde_bytes")]
    pub public_key: [u8; 32],
    /// Valid until this unix time, in seconds.
    pub not_after_unix_s: u64,
    /// The CA's Ed25519 signature over the fields above.
    #[serde(with = "serde_bytes")]
    pub signature: [u8; SIGNATURE_BYTES],
}

/// Why a certificate is not good.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertError {
    /// Not a certificate at all.
    #[error("not a msgtier certificate ({0})")]
    Malformed(&'static str),
    /// Not signed by this network's CA.
    #[error("not signed by the network CA")]
    BadSignature,
    /// For another network, id or key.
    #[error("issued for {0}")]
    Mismatch(String),
    /// Past its `not_after`.
    #[error("expired at unix time {0}")]
    Expired(u64),
}

impl Certificate {
    /// A certificate signed by `ca` (its Ed25519 key), valid until `not_after_unix_s`.
    pub fn issue(
        ca: &Identity,
        network: &str,
        node_id: &str,
        public_key: [u8; 32],
        not_after_unix_s: u64,
    ) -> Certificate {
        let mut cert = Certificate {
            network: network.into(),
            node_id: node_id.into(),
            public_key,
            not_after_unix_s,
            signature: [0; SIGNATURE_BYTES],
        };
        cert.signature = ca.sign(&cert.signed_bytes());
        cert
    }

    fn signed_bytes(&self) -> Vec<u8> {
        let fields = (
            &self.network,
            &self.node_id,
            serde_bytes::Bytes::new(&self.public_key),
            self.not_after_unix_s,
        );
        let mut m = CERT_SIGNING_CONTEXT.to_vec();
        m.extend_from_slice(&rmp_serde::to_vec(&fields).expect("encoding into a Vec"));
        m
    }

    /// The encoded certificate (what hellos and adverts carry).
    pub fn encode(&self) -> Vec<u8> {
        rmp_serde::to_vec(self).expect("encoding into a Vec")
    }

    /// Decodes an encoded certificate (bounded).
    pub fn decode(bytes: &[u8]) -> Result<Certificate, CertError> {
        if bytes.len() > MAX_CERT_BYTES {
            return Err(CertError::Malformed("too long"));
        }
        rmp_serde::from_slice(bytes).map_err(|_| CertError::Malformed("does not decode"))
    }

    /// The text form (`msgtier-cert-v1:<hex>`), for the config.
    pub fn to_text(&self) -> String {
        format!("{CERT_TEXT_PREFIX}{}", hex::encode(self.encode()))
    }

    /// Parses the text form.
    pub fn from_text(s: &str) -> Result<Certificate, CertError> {
        let hex_part = s
            .trim()
            .strip_prefix(CERT_TEXT_PREFIX)
            .ok_or(CertError::Malformed("no msgtier-cert-v1: prefix"))?;
        let bytes = hex::decode(hex_part).map_err(|_| CertError::Malformed("not hex"))?;
        Certificate::decode(&bytes)
    }

    /// Checks the CA's signature, that it is for `network`, `node_id` and `public_key`, and
    /// that it has not expired at `now_unix_s`.
    pub fn verify(
        &self,
        ca: &[u8; 32],
        network: &str,
        node_id: &str,
        public_key: &[u8; 32],
        now_unix_s: u64,
    ) -> Result<(), CertError> {
        let Ok(key) = ed25519_dalek::VerifyingKey::from_bytes(ca) else {
            return Err(CertError::BadSignature);
        };
        let signature = ed25519_dalek::Signature::from_bytes(&self.signature);
        key.verify_strict(&self.signed_bytes(), &signature)
            .map_err(|_| CertError::BadSignature)?;
        if self.network != network || self.node_id != node_id || self.public_key != *public_key {
            return Err(CertError::Mismatch(format!(
                "{:?} in network {:?} with key {}",
                self.node_id,
                self.network,
                hex::encode(self.public_key)
            )));
        }
        if now_unix_s > self.not_after_unix_s {
            return Err(CertError::Expired(self.not_after_unix_s));
        }
        Ok(())
    }
}

/// Checks an encoded certificate from the wire (or its absence) for a member.
pub fn check_encoded(
    encoded: Option<&[u8]>,
    ca: &[u8; 32],
    network: &str,
    node_id: &str,
    public_key: &[u8; 32],
    now_unix_s: u64,
) -> Result<(), CertError> {
    let bytes = encoded.ok_or(CertError::Malformed("missing"))?;
    Certificate::decode(bytes)?.verify(ca, network, node_id, public_key, now_unix_s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_certificate_verifies_only_for_its_ca_network_id_key_and_time() {
        let ca = Identity::from_private([1; 32]);
        let other_ca = Identity::from_private([2; 32]);
        let member = Identity::from_private([3; 32]);
        let cert = Certificate::issue(&ca, "home", "a", member.public(), 1_000);
        let ca_pub = ca.signing_public();
        let ok = |c: &Certificate| c.verify(&ca_pub, "home", "a", &member.public(), 500);
        assert_eq!(ok(&cert), Ok(()));
        let text = cert.to_text();
        assert_eq!(Certificate::from_text(&text).unwrap(), cert);
        assert_eq!(
            cert.verify(
                &other_ca.signing_public(),
                "home",
                "a",
                &member.public(),
                500
            ),
            Err(CertError::BadSignature)
        );
        assert!(matches!(
            cert.verify(&ca_pub, "home", "b", &member.public(), 500),
            Err(CertError::Mismatch(_))
        ));
        assert!(matches!(
            cert.verify(&ca_pub, "work", "a", &member.public(), 500),
            Err(CertError::Mismatch(_))
        ));
        assert!(matches!(
            cert.verify(&ca_pub, "home", "a", &[9; 32], 500),
            Err(CertError::Mismatch(_))
        ));
        assert_eq!(
            cert.verify(&ca_pub, "home", "a", &member.public(), 1_001),
            Err(CertError::Expired(1_000))
        );
        // A member re-labelling its own certificate for another id breaks the signature.
        let mut forged = cert.clone();
        forged.node_id = "b".into();
        assert_eq!(
            forged.verify(&ca_pub, "home", "b", &member.public(), 500),
            Err(CertError::BadSignature)
        );
        assert!(Certificate::from_text("msgtier-cert-v1:zz").is_err());
        assert!(Certificate::decode(&[0xc1; 600]).is_err());
    }
}

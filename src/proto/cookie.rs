//! Stateless cookies for UDP handshakes under load (see `crate::wire::udp`), pure.
//!
//! A cookie is the first 16 bytes of HMAC-SHA256(secret, source address || sender index).
//! The listener rotates its secret every [`COOKIE_ROTATE_US`] and accepts cookies made with
//! the current or the previous one, so a cookie is good for two to four minutes and only from
//! the address it was sent to.

use std::net::SocketAddr;

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::wire::udp::COOKIE_BYTES;

/// How often the secret changes.
pub const COOKIE_ROTATE_US: u64 = 120 * 1_000_000;

/// A listener's cookie secrets.
pub struct CookieJar {
    current: [u8; 32],
    previous: [u8; 32],
    rotated_us: u64,
}

impl std::fmt::Debug for CookieJar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CookieJar")
            .field("rotated_us", &self.rotated_us)
            .finish_non_exhaustive()
    }
}

impl CookieJar {
    /// A jar with a fresh secret, at `now_us`.
    pub fn new(secret: [u8; 32], now_us: u64) -> CookieJar {
        CookieJar {
            current: secret,
            previous: secret,
            rotated_us: now_us,
        }
    }

    /// Rotates the secret when due, drawing the new one from `fresh`.
    pub fn rotate_if_due(&mut self, now_us: u64, fresh: impl FnOnce() -> [u8; 32]) {
        if now_us >= self.rotated_us + COOKIE_ROTATE_US {
            self.previous = self.current;
            self.current = fresh();
            self.rotated_us = now_us;
        }
    }

    /// The cookie for `from` and `sender` under the current secret.
    pub fn make(&self, from: SocketAddr, sender: u32) -> [u8; COOKIE_BYTES] {
        cookie(&self.current, from, sender)
    }

    /// Whether `c` is the cookie for `from` and `sender` under the current or previous secret
    /// (constant-time comparisons).
    pub fn check(&self, from: SocketAddr, sender: u32, c: &[u8; COOKIE_BYTES]) -> bool {
        [&self.current, &self.previous]
            .into_iter()
            .any(|secret| mac(secret, from, sender).verify_truncated_left(c).is_ok())
    }
}

fn mac(secret: &[u8; 32], from: SocketAddr, sender: u32) -> Hmac<Sha256> {
    let mut m = <Hmac<Sha256> as KeyInit>::new_from_slice(secret).expect("any key length");
    m.update(b"msgtier cookie v1");
    match from {
        SocketAddr::V4(a) => m.update(&a.ip().octets()),
        SocketAddr::V6(a) => m.update(&a.ip().octets()),
    }
    m.update(&from.port().to_be_bytes());
    m.update(&sender.to_be_bytes());
    m
}

fn cookie(secret: &[u8; 32], from: SocketAddr, sender: u32) -> [u8; COOKIE_BYTES] {
    let full = mac(secret, from, sender).finalize().into_bytes();
    let mut out = [0u8; COOKIE_BYTES];
    out.copy_from_slice(&full[..COOKIE_BYTES]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cookie_is_good_only_for_its_address_and_index_and_for_two_rotations() {
        let a: SocketAddr = "192.0.2.1:4000".parse().unwrap();
        let b: SocketAddr = "192.0.2.1:4001".parse().unwrap();
        let mut jar = CookieJar::new([1; 32], 0);
        let c = jar.make(a, 7);
        assert!(jar.check(a, 7, &c));
        assert!(!jar.check(b, 7, &c), "another port");
        assert!(!jar.check(a, 8, &c), "another index");
        let mut bad = c;
        bad[0] ^= 1;
        assert!(!jar.check(a, 7, &bad));
        jar.rotate_if_due(COOKIE_ROTATE_US - 1, || [2; 32]);
        assert!(jar.check(a, 7, &c), "not rotated yet");
        jar.rotate_if_due(COOKIE_ROTATE_US, || [2; 32]);
        assert!(jar.check(a, 7, &c), "the previous secret still counts");
        jar.rotate_if_due(2 * COOKIE_ROTATE_US, || [3; 32]);
        assert!(!jar.check(a, 7, &c), "two rotations later it is gone");
    }
}

//! Records: how one encoded frame is sealed for a TCP or WebSocket link.
//!
//! After the Noise XX handshake each side holds a send key and a receive key. The peer
//! actor seals outgoing frames with a [`Sealer`] on the send key and opens incoming ones
//! with an [`Opener`] on the receive key (a `udp://` link runs inside QUIC and does not seal
//! frames again).
//!
//! Layout of a record:
//!
//! ```text
//! counter: u64 big-endian (8 bytes) || ciphertext (plaintext length) || tag (16 bytes)
//! ```
//!
//! The cipher is ChaCha20-Poly1305 (RFC 8439) with nonce `0u32 || counter as u64
//! little-endian` (the layout Noise uses) and empty associated data: the counter is
//! authenticated because it is the nonce. The implementation is `ring`'s (assembly, a few
//! hundred nanoseconds less per record than the `chacha20poly1305` crate, which the
//! end-to-end layer keeps for XChaCha20; see BENCHMARKS.md); the tests check its records
//! against that crate's. Since records may be reordered or duplicated (UDP), the
//! counter is sent in clear and checked against a [`ReplayWindow`] rather than implied by
//! the record's position.

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305};

use super::replay::ReplayWindow;
use super::WireError;

/// Bytes of the clear counter at the start of every record (a big-endian `u64`).
pub const COUNTER_BYTES: usize = 8;

/// Bytes of the Poly1305 authentication tag at the end of every record.
pub const TAG_BYTES: usize = 16;

/// Bytes a record adds to its plaintext: the counter and the tag.
pub const RECORD_OVERHEAD: usize = COUNTER_BYTES + TAG_BYTES;

/// Builds the 96-bit nonce for `counter`: 4 zero bytes, then the counter little-endian,
/// as in the Noise specification's ChaChaPoly cipher functions (section 12.3).
fn nonce(counter: u64) -> Nonce {
    let mut nonce = [0u8; 12];
    nonce[4..].copy_from_slice(&counter.to_le_bytes());
    // Unique: a sealer never uses a counter twice (see `Sealer::next`).
    Nonce::assume_unique_for_key(nonce)
}

/// The AEAD keyed with one direction's key.
fn cipher(key: [u8; 32]) -> LessSafeKey {
    // A 32-byte key is always the right length for ChaCha20-Poly1305.
    LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, &key).expect("32-byte key"))
}

/// Seals records on one direction of a link, numbering them 0, 1, 2, ...
#[derive(Debug)]
pub struct Sealer {
    /// The AEAD keyed with this side's send key.
    cipher: LessSafeKey,
    /// Counter of the next record; never reused, so a nonce is never reused.
    next: u64,
}

impl Sealer {
    /// A sealer for the link's send key, starting at counter 0.
    pub fn new(key: [u8; 32]) -> Self {
        Sealer {
            cipher: cipher(key),
            next: 0,
        }
    }

    /// Counter the next record will carry, i.e. how many records were sealed; lets the
    /// caller rekey well before [`WireError::CounterExhausted`].
    pub fn next_counter(&self) -> u64 {
        self.next
    }

    /// Seals `plaintext` as one record appended to `out`.
    ///
    /// Errors: [`WireError::CounterExhausted`] once counter `u64::MAX` is reached (the
    /// link must rekey), [`WireError::Encrypt`] for a plaintext beyond the cipher's
    /// limit. On error `out` is left as it was and no counter is used.
    pub fn seal(&mut self, plaintext: &[u8], out: &mut Vec<u8>) -> Result<(), WireError> {
        let counter = self.next;
        if counter == u64::MAX {
            return Err(WireError::CounterExhausted);
        }
        let start = out.len();
        out.reserve(RECORD_OVERHEAD + plaintext.len());
        out.extend_from_slice(&counter.to_be_bytes());
        let body = out.len();
        out.extend_from_slice(plaintext);
        let sealed =
            self.cipher
                .seal_in_place_separate_tag(nonce(counter), Aad::empty(), &mut out[body..]);
        match sealed {
            Ok(tag) => out.extend_from_slice(tag.as_ref()),
            Err(_) => {
                out.truncate(start);
                return Err(WireError::Encrypt {
                    len: plaintext.len(),
                });
            }
        }
        self.next = counter + 1;
        Ok(())
    }

    /// Seals in place: `buf` holds [`COUNTER_BYTES`] of room followed by the plaintext; on
    /// return it is the whole record (counter, ciphertext, tag), the same bytes [`Sealer::seal`]
    /// makes, without copying the plaintext. On error `buf` is unchanged.
    pub fn seal_in_place(&mut self, buf: &mut Vec<u8>) -> Result<(), WireError> {
        let counter = self.next;
        if counter == u64::MAX {
            return Err(WireError::CounterExhausted);
        }
        if buf.len() < COUNTER_BYTES {
            return Err(WireError::Truncated {
                what: "record",
                len: buf.len(),
                min: COUNTER_BYTES,
            });
        }
        let tag = self
            .cipher
            .seal_in_place_separate_tag(nonce(counter), Aad::empty(), &mut buf[COUNTER_BYTES..])
            .map_err(|_| WireError::Encrypt {
                len: buf.len() - COUNTER_BYTES,
            })?;
        buf[..COUNTER_BYTES].copy_from_slice(&counter.to_be_bytes());
        buf.extend_from_slice(tag.as_ref());
        self.next = counter + 1;
        Ok(())
    }
}

/// Opens records from one direction of a link, each at most once.
#[derive(Debug)]
pub struct Opener {
    /// The AEAD keyed with this side's receive key.
    cipher: LessSafeKey,
    /// Counters already accepted, so a replayed or duplicated record is refused.
    window: ReplayWindow,
}

impl Opener {
    /// An opener for the link's receive key, with an empty replay window.
    pub fn new(key: [u8; 32]) -> Self {
        Opener {
            cipher: cipher(key),
            window: ReplayWindow::new(),
        }
    }

    /// Authenticates and decrypts one record, returning its plaintext.
    ///
    /// Errors: [`WireError::Truncated`] if shorter than [`RECORD_OVERHEAD`],
    /// [`WireError::Replayed`] if the counter was seen or is too old (checked before
    /// decrypting, so replays cost little), [`WireError::Decrypt`] if authentication
    /// fails. The counter is marked as seen only after successful decryption, so a forged
    /// record cannot block the genuine one.
    pub fn open(&mut self, record: &[u8]) -> Result<Vec<u8>, WireError> {
        let mut buf = record.to_vec();
        let len = self.open_in_place(&mut buf)?.len();
        buf.drain(..COUNTER_BYTES);
        buf.truncate(len);
        Ok(buf)
    }

    /// [`Opener::open`], decrypting in `record`'s own buffer: returns the plaintext within it
    /// (no copy). On error the buffer's contents are unspecified.
    pub fn open_in_place<'a>(&mut self, record: &'a mut [u8]) -> Result<&'a [u8], WireError> {
        let truncated = WireError::Truncated {
            what: "record",
            len: record.len(),
            min: RECORD_OVERHEAD,
        };
        if record.len() < RECORD_OVERHEAD {
            return Err(truncated);
        }
        let Some((counter, sealed)) = record.split_first_chunk_mut::<COUNTER_BYTES>() else {
            return Err(truncated);
        };
        let counter = u64::from_be_bytes(*counter);
        if !self.window.check(counter) {
            return Err(WireError::Replayed { counter });
        }
        // `sealed` is ciphertext || tag; on success the plaintext is its first part.
        let plaintext = self
            .cipher
            .open_in_place(nonce(counter), Aad::empty(), sealed)
            .map_err(|_| WireError::Decrypt)?;
        self.window.update(counter);
        Ok(plaintext)
    }
}

#[cfg(test)]
mod tests {

    /// Sealing in place makes the very record `seal` makes, and it opens.
    #[test]
    fn sealing_in_place_is_sealing() {
        let (mut a, mut b) = (Sealer::new([3; 32]), Sealer::new([3; 32]));
        for plaintext in [&b""[..], b"x", &[7u8; 70_000][..]] {
            let mut copied = Vec::new();
            a.seal(plaintext, &mut copied).unwrap();
            let mut in_place = vec![0u8; COUNTER_BYTES];
            in_place.extend_from_slice(plaintext);
            b.seal_in_place(&mut in_place).unwrap();
            assert_eq!(copied, in_place);
            let mut opener = Opener::new([3; 32]);
            assert_eq!(opener.open(&in_place).unwrap(), plaintext);
        }
    }

    use super::*;
    use chacha20poly1305::aead::Aead;
    use chacha20poly1305::{ChaCha20Poly1305, Key, KeyInit, Nonce};
    use proptest::prelude::*;

    const KEY: [u8; 32] = [0x42; 32];

    fn seal_one(sealer: &mut Sealer, plaintext: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        sealer.seal(plaintext, &mut out).expect("seal");
        out
    }

    proptest! {
        #[test]
        fn seal_open_round_trip(plaintexts in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..1500), 1..8)) {
            let mut sealer = Sealer::new(KEY);
            let mut opener = Opener::new(KEY);
            for plaintext in plaintexts {
                let record = seal_one(&mut sealer, &plaintext);
                prop_assert_eq!(record.len(), plaintext.len() + RECORD_OVERHEAD);
                prop_assert_eq!(opener.open(&record).ok(), Some(plaintext));
            }
        }

        #[test]
        fn any_flipped_bit_is_rejected(
            plaintext in prop::collection::vec(any::<u8>(), 0..200),
            bit in any::<prop::sample::Index>(),
        ) {
            let mut sealer = Sealer::new(KEY);
            let mut opener = Opener::new(KEY);
            let record = seal_one(&mut sealer, &plaintext);
            let mut bad = record.clone();
            let i = bit.index(bad.len() * 8);
            bad[i / 8] ^= 1 << (i % 8);
            prop_assert!(opener.open(&bad).is_err());
            // The forgery did not burn the genuine record's counter.
            prop_assert_eq!(opener.open(&record).ok(), Some(plaintext));
        }

        #[test]
        fn arbitrary_records_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..100)) {
            let mut opener = Opener::new(KEY);
            prop_assert!(opener.open(&bytes).is_err());
        }
    }

    #[test]
    fn layout_and_nonce_match_the_spec() {
        let mut sealer = Sealer::new(KEY);
        seal_one(&mut sealer, b"zero");
        let record = seal_one(&mut sealer, b"hello");
        assert_eq!(&record[..8], &1u64.to_be_bytes());
        // Decrypt with another implementation (the `chacha20poly1305` crate) directly:
        // nonce = 4 zero bytes || 1u64 little-endian.
        let cipher = ChaCha20Poly1305::new(&Key::from(KEY));
        let raw_nonce = Nonce::from([0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0]);
        let plaintext = cipher.decrypt(&raw_nonce, &record[8..]).expect("decrypt");
        assert_eq!(plaintext, b"hello");
    }

    /// A record made by the other implementation opens here, with its counter checked.
    #[test]
    fn records_of_the_chacha20poly1305_crate_open() {
        let cipher = ChaCha20Poly1305::new(&Key::from(KEY));
        let mut opener = Opener::new(KEY);
        for counter in [0u64, 1, 7, 300] {
            let plaintext = vec![counter as u8; 100 + counter as usize];
            let mut raw = [0u8; 12];
            raw[4..].copy_from_slice(&counter.to_le_bytes());
            let mut record = counter.to_be_bytes().to_vec();
            record.extend(cipher.encrypt(&Nonce::from(raw), &plaintext[..]).unwrap());
            assert_eq!(opener.open(&record).ok(), Some(plaintext));
            assert!(matches!(
                opener.open(&record),
                Err(WireError::Replayed { .. })
            ));
        }
        // The same ciphertext under another counter is not authentic.
        let mut record = 9u64.to_be_bytes().to_vec();
        let raw = [0, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0];
        record.extend(cipher.encrypt(&Nonce::from(raw), &b"moved"[..]).unwrap());
        assert!(matches!(opener.open(&record), Err(WireError::Decrypt)));
    }

    #[test]
    fn seal_appends_to_out() {
        let mut sealer = Sealer::new(KEY);
        let mut out = b"prefix".to_vec();
        sealer.seal(b"abc", &mut out).expect("seal");
        assert_eq!(&out[..6], b"prefix");
        assert_eq!(out.len(), 6 + 3 + RECORD_OVERHEAD);
        assert_eq!(Opener::new(KEY).open(&out[6..]).ok(), Some(b"abc".to_vec()));
    }

    #[test]
    fn empty_plaintext_round_trips() {
        let record = seal_one(&mut Sealer::new(KEY), b"");
        assert_eq!(record.len(), RECORD_OVERHEAD);
        assert_eq!(Opener::new(KEY).open(&record).ok(), Some(Vec::new()));
    }

    #[test]
    fn replay_is_rejected() {
        let mut sealer = Sealer::new(KEY);
        let mut opener = Opener::new(KEY);
        let record = seal_one(&mut sealer, b"once");
        assert!(opener.open(&record).is_ok());
        assert!(matches!(
            opener.open(&record),
            Err(WireError::Replayed { counter: 0 })
        ));
    }

    #[test]
    fn reordered_records_are_accepted() {
        let mut sealer = Sealer::new(KEY);
        let mut opener = Opener::new(KEY);
        let records: Vec<_> = (0u8..20).map(|i| seal_one(&mut sealer, &[i])).collect();
        for (i, record) in records.iter().enumerate().rev() {
            assert_eq!(opener.open(record).ok(), Some(vec![i as u8]));
        }
        for record in &records {
            assert!(matches!(
                opener.open(record),
                Err(WireError::Replayed { .. })
            ));
        }
    }

    #[test]
    fn wrong_key_is_rejected() {
        let record = seal_one(&mut Sealer::new(KEY), b"secret");
        let mut opener = Opener::new([0x43; 32]);
        assert!(matches!(opener.open(&record), Err(WireError::Decrypt)));
    }

    #[test]
    fn short_records_are_truncated() {
        let record = seal_one(&mut Sealer::new(KEY), b"");
        for len in 0..RECORD_OVERHEAD {
            assert!(matches!(
                Opener::new(KEY).open(&record[..len]),
                Err(WireError::Truncated { what: "record", .. })
            ));
        }
    }

    #[test]
    fn replay_check_comes_before_decryption() {
        let mut sealer = Sealer::new(KEY);
        let mut opener = Opener::new(KEY);
        let first = seal_one(&mut sealer, b"a");
        assert!(opener.open(&first).is_ok());
        // Same counter, garbage body: refused as a replay, without trying to decrypt.
        let mut forged = first.clone();
        forged[8] ^= 0xff;
        assert!(matches!(
            opener.open(&forged),
            Err(WireError::Replayed { counter: 0 })
        ));
    }

    #[test]
    fn counter_exhaustion_is_refused() {
        let mut sealer = Sealer::new(KEY);
        sealer.next = u64::MAX - 1;
        let last = seal_one(&mut sealer, b"last");
        assert_eq!(sealer.next_counter(), u64::MAX);
        let mut out = b"keep".to_vec();
        assert!(matches!(
            sealer.seal(b"one more", &mut out),
            Err(WireError::CounterExhausted)
        ));
        assert_eq!(out, b"keep");
        assert_eq!(Opener::new(KEY).open(&last).ok(), Some(b"last".to_vec()));
    }

    #[test]
    fn directions_with_different_keys_do_not_mix() {
        let (a_to_b, b_to_a) = ([1u8; 32], [2u8; 32]);
        let mut a_send = Sealer::new(a_to_b);
        let mut b_send = Sealer::new(b_to_a);
        let mut a_recv = Opener::new(b_to_a);
        let mut b_recv = Opener::new(a_to_b);
        let from_a = seal_one(&mut a_send, b"from a");
        let from_b = seal_one(&mut b_send, b"from b");
        assert_eq!(b_recv.open(&from_a).ok(), Some(b"from a".to_vec()));
        assert_eq!(a_recv.open(&from_b).ok(), Some(b"from b".to_vec()));
        // A record reflected back to its sender does not open.
        assert!(matches!(
            Opener::new(b_to_a).open(&from_a),
            Err(WireError::Decrypt)
        ));
    }
}

//! Fragments: how a frame larger than one UDP datagram travels as several.
//!
//! The UDP transport sends every encoded frame through [`split`] and seals each fragment
//! as its own record (one record per [`super::udp::Datagram::Transport`]); on receipt it
//! feeds each opened record to its session's [`Reassembler`], which returns whole frames.
//! Stream transports (TCP, WebSocket) do not use this module.
//!
//! Layout of the plaintext of every UDP transport record:
//!
//! ```text
//! msg_id: u32 BE || index: u16 BE || count: u16 BE || chunk
//! ```
//!
//! [`split`] cuts a frame into `count` chunks where every chunk but the last has the same
//! length and none is empty (a frame of 0 bytes is one fragment with an empty chunk). The
//! reassembler insists on that shape, which lets it bound each message's size from its
//! first fragment.

use std::collections::VecDeque;

use super::record::RECORD_OVERHEAD;
use super::udp::TRANSPORT_HEADER_BYTES;
use super::WireError;

/// Bytes of the fragment header: `msg_id` (4), `index` (2), `count` (2).
pub const FRAGMENT_HEADER_BYTES: usize = 8;

/// Most messages a [`Reassembler`] holds partially at once; starting one more evicts the
/// oldest.
///
/// Senders send one frame's fragments back to back, so only reordering across a few
/// frames is expected; 16 covers that and bounds memory to 16 messages.
pub const MAX_PARTIAL_MESSAGES: usize = 16;

/// Age after which a partial message is dropped, in milliseconds since its first
/// fragment arrived.
///
/// Five seconds is far beyond any reordering delay; anything older lost a fragment and
/// will never complete (there is no retransmission at this layer).
pub const PARTIAL_TIMEOUT_MS: u64 = 5000;

/// Largest chunk that fits one fragment in a datagram of `max_datagram` bytes, once the
/// transport header, the record overhead and the fragment header are taken off.
///
/// `max_chunk(MAX_DATAGRAM_BYTES)` is 1200 - 5 - 24 - 8 = 1163. Returns 0 if nothing
/// fits.
pub fn max_chunk(max_datagram: usize) -> usize {
    max_datagram.saturating_sub(TRANSPORT_HEADER_BYTES + RECORD_OVERHEAD + FRAGMENT_HEADER_BYTES)
}

/// Cuts `frame` into fragments (each `header || chunk`) of at most `max_chunk` bytes of
/// chunk, all tagged with `msg_id`.
///
/// The caller picks a `msg_id` unique among the session's recent messages (a wrapping
/// counter). An empty frame gives one fragment with an empty chunk. Errors with
/// [`WireError::TooManyFragments`] if more than `u16::MAX` fragments would be needed
/// (including any non-empty frame with `max_chunk` 0).
pub fn split(msg_id: u32, frame: &[u8], max_chunk: usize) -> Result<Vec<Vec<u8>>, WireError> {
    let too_many = || WireError::TooManyFragments {
        len: frame.len(),
        max_chunk,
    };
    if frame.is_empty() {
        return Ok(vec![header(msg_id, 0, 1).to_vec()]);
    }
    if max_chunk == 0 {
        return Err(too_many());
    }
    let count = u16::try_from(frame.len().div_ceil(max_chunk)).map_err(|_| too_many())?;
    Ok(frame
        .chunks(max_chunk)
        .zip(0u16..)
        .map(|(chunk, index)| {
            let mut fragment = Vec::with_capacity(FRAGMENT_HEADER_BYTES + chunk.len());
            fragment.extend_from_slice(&header(msg_id, index, count));
            fragment.extend_from_slice(chunk);
            fragment
        })
        .collect())
}

/// Encodes a fragment header.
fn header(msg_id: u32, index: u16, count: u16) -> [u8; FRAGMENT_HEADER_BYTES] {
    let mut header = [0u8; FRAGMENT_HEADER_BYTES];
    header[..4].copy_from_slice(&msg_id.to_be_bytes());
    header[4..6].copy_from_slice(&index.to_be_bytes());
    header[6..].copy_from_slice(&count.to_be_bytes());
    header
}

/// A parsed fragment header plus its chunk.
struct Fragment<'a> {
    /// Which message the fragment belongs to.
    msg_id: u32,
    /// Position of the chunk in the message, below `count`.
    index: u16,
    /// Number of fragments in the message.
    count: u16,
    /// The fragment's piece of the frame.
    chunk: &'a [u8],
}

impl<'a> Fragment<'a> {
    /// Parses the header; checks the length and that `index < count`.
    fn parse(bytes: &'a [u8]) -> Result<Self, WireError> {
        let Some((header, chunk)) = bytes.split_first_chunk::<FRAGMENT_HEADER_BYTES>() else {
            return Err(WireError::Truncated {
                what: "fragment",
                len: bytes.len(),
                min: FRAGMENT_HEADER_BYTES,
            });
        };
        let [m0, m1, m2, m3, i0, i1, c0, c1] = *header;
        let fragment = Fragment {
            msg_id: u32::from_be_bytes([m0, m1, m2, m3]),
            index: u16::from_be_bytes([i0, i1]),
            count: u16::from_be_bytes([c0, c1]),
            chunk,
        };
        if fragment.index >= fragment.count {
            return Err(WireError::FragmentIndex {
                index: fragment.index,
                count: fragment.count,
            });
        }
        Ok(fragment)
    }

    /// Whether this is the message's last fragment (the only one that may be shorter).
    fn is_last(&self) -> bool {
        self.index + 1 == self.count
    }

    /// `FragmentLength` for this fragment.
    fn bad_length(&self) -> WireError {
        WireError::FragmentLength {
            msg_id: self.msg_id,
            index: self.index,
            len: self.chunk.len(),
        }
    }
}

/// One message whose fragments are still arriving.
#[derive(Debug)]
struct Partial {
    /// The message's id, from its fragments.
    msg_id: u32,
    /// Fragments in the message (at least 2; single fragments are never buffered).
    count: u16,
    /// `now_ms` of the first fragment, for [`PARTIAL_TIMEOUT_MS`].
    started_ms: u64,
    /// Length of every chunk but the last, known once any non-last fragment arrived.
    chunk_len: Option<usize>,
    /// The chunks but the last, at `index * chunk_len`; allocated when `chunk_len` is
    /// learned, `(count - 1) * chunk_len` bytes.
    body: Vec<u8>,
    /// The last chunk, kept apart because it may arrive before `chunk_len` is known.
    last: Option<Vec<u8>>,
    /// Bit `i % 64` of word `i / 64` is set once fragment `i` arrived.
    received: Vec<u64>,
    /// How many distinct fragments arrived.
    received_count: u16,
}

impl Partial {
    /// An empty partial message.
    fn new(msg_id: u32, count: u16, started_ms: u64) -> Self {
        Partial {
            msg_id,
            count,
            started_ms,
            chunk_len: None,
            body: Vec::new(),
            last: None,
            received: vec![0; usize::from(count).div_ceil(64)],
            received_count: 0,
        }
    }

    /// Bitmap word and mask of fragment `index`.
    fn bit(index: u16) -> (usize, u64) {
        (usize::from(index / 64), 1 << (index % 64))
    }

    /// Whether fragment `index` already arrived.
    fn has(&self, index: u16) -> bool {
        let (word, mask) = Self::bit(index);
        self.received.get(word).is_some_and(|w| w & mask != 0)
    }

    /// The least total length the message can have given what arrived so far (non-last
    /// chunks are `chunk_len` long, the last is 1 to `chunk_len` bytes); `usize::MAX` on
    /// overflow.
    fn min_total(&self) -> usize {
        let full = usize::from(self.count - 1);
        let total = match (self.chunk_len, self.last.as_ref().map(Vec::len)) {
            (Some(len), Some(last)) => full.checked_mul(len).and_then(|b| b.checked_add(last)),
            (Some(len), None) => full.checked_mul(len).and_then(|b| b.checked_add(1)),
            (None, Some(last)) => usize::from(self.count).checked_mul(last),
            (None, None) => Some(0),
        };
        total.unwrap_or(usize::MAX)
    }

    /// Stores one new (not duplicate) fragment of this message, checking that its chunk
    /// length fits the message's shape and that the message stays within
    /// `max_message_bytes`. On error the partial must be dropped.
    fn accept(
        &mut self,
        fragment: &Fragment<'_>,
        max_message_bytes: usize,
    ) -> Result<(), WireError> {
        let len = fragment.chunk.len();
        if len == 0 {
            return Err(fragment.bad_length());
        }
        if fragment.is_last() {
            if self.chunk_len.is_some_and(|chunk_len| len > chunk_len) {
                return Err(fragment.bad_length());
            }
            self.last = Some(fragment.chunk.to_vec());
        } else {
            match self.chunk_len {
                Some(chunk_len) if chunk_len != len => return Err(fragment.bad_length()),
                Some(_) => {}
                None => {
                    if self.last.as_ref().is_some_and(|last| last.len() > len) {
                        return Err(fragment.bad_length());
                    }
                    self.chunk_len = Some(len);
                }
            }
        }
        let min_total = self.min_total();
        if min_total > max_message_bytes {
            return Err(WireError::Oversize {
                len: min_total,
                max: max_message_bytes,
            });
        }
        if !fragment.is_last() {
            // Within max_message_bytes (checked just above), so neither the allocation
            // nor the offsets overflow.
            let body_len = usize::from(self.count - 1) * len;
            if self.body.len() != body_len {
                self.body = vec![0; body_len];
            }
            let start = usize::from(fragment.index) * len;
            if let Some(slot) = self.body.get_mut(start..start + len) {
                slot.copy_from_slice(fragment.chunk);
            }
        }
        let (word, mask) = Self::bit(fragment.index);
        if let Some(w) = self.received.get_mut(word) {
            *w |= mask;
        }
        self.received_count += 1;
        Ok(())
    }

    /// Whether every fragment arrived.
    fn is_complete(&self) -> bool {
        self.received_count == self.count
    }

    /// The whole frame, once complete.
    fn into_frame(self) -> Vec<u8> {
        let mut frame = self.body;
        frame.extend_from_slice(self.last.as_deref().unwrap_or_default());
        frame
    }
}

/// Reassembles fragmented frames for one session, within fixed memory bounds.
///
/// Bounds: at most [`MAX_PARTIAL_MESSAGES`] messages in progress (starting another evicts
/// the oldest), each at most `max_message_bytes`, each dropped [`PARTIAL_TIMEOUT_MS`]
/// after its first fragment (checked on every [`Reassembler::push`]).
///
/// Bad fragments are rejected with an error and never corrupt a message:
/// - [`WireError::DuplicateFragment`]: ignored, the partial message is kept as it was.
/// - [`WireError::FragmentCountMismatch`], [`WireError::FragmentLength`],
///   [`WireError::Oversize`]: the partial message is dropped (its sender is broken or
///   hostile, or reused the id).
/// - [`WireError::Truncated`], [`WireError::FragmentIndex`]: nothing is changed.
#[derive(Debug)]
pub struct Reassembler {
    /// Largest frame accepted, in bytes; bigger messages are refused as early as their
    /// first fragment shows they must be bigger.
    max_message_bytes: usize,
    /// Messages in progress, oldest first.
    partials: VecDeque<Partial>,
}

impl Reassembler {
    /// A reassembler that accepts frames of up to `max_message_bytes`.
    pub fn new(max_message_bytes: usize) -> Self {
        Reassembler {
            max_message_bytes,
            partials: VecDeque::with_capacity(MAX_PARTIAL_MESSAGES),
        }
    }

    /// Adds one fragment (the plaintext of one transport record) received at `now_ms`.
    ///
    /// Returns `Some(frame)` when it completes a message, `None` while the message is
    /// still incomplete. A single-fragment message is returned at once without
    /// buffering. See [`Reassembler`] for the errors and what each does to the partial
    /// message.
    pub fn push(&mut self, now_ms: u64, fragment: &[u8]) -> Result<Option<Vec<u8>>, WireError> {
        self.expire(now_ms);
        let fragment = Fragment::parse(fragment)?;
        let position = self
            .partials
            .iter()
            .position(|p| p.msg_id == fragment.msg_id);

        if let Some(at) = position {
            let Some(partial) = self.partials.get_mut(at) else {
                return Ok(None);
            };
            if partial.count != fragment.count {
                let expected = partial.count;
                self.partials.remove(at);
                return Err(WireError::FragmentCountMismatch {
                    msg_id: fragment.msg_id,
                    expected,
                    got: fragment.count,
                });
            }
            if partial.has(fragment.index) {
                return Err(WireError::DuplicateFragment {
                    msg_id: fragment.msg_id,
                    index: fragment.index,
                });
            }
            if let Err(err) = partial.accept(&fragment, self.max_message_bytes) {
                self.partials.remove(at);
                return Err(err);
            }
            if !partial.is_complete() {
                return Ok(None);
            }
            return Ok(self.partials.remove(at).map(Partial::into_frame));
        }

        if fragment.count == 1 {
            let len = fragment.chunk.len();
            if len > self.max_message_bytes {
                return Err(WireError::Oversize {
                    len,
                    max: self.max_message_bytes,
                });
            }
            return Ok(Some(fragment.chunk.to_vec()));
        }

        let mut partial = Partial::new(fragment.msg_id, fragment.count, now_ms);
        partial.accept(&fragment, self.max_message_bytes)?;
        if self.partials.len() >= MAX_PARTIAL_MESSAGES {
            self.partials.pop_front();
        }
        self.partials.push_back(partial);
        Ok(None)
    }

    /// Drops partial messages whose first fragment arrived more than
    /// [`PARTIAL_TIMEOUT_MS`] before `now_ms`. [`Reassembler::push`] calls it; a session
    /// may also call it from a timer to free memory sooner.
    pub fn expire(&mut self, now_ms: u64) {
        self.partials
            .retain(|p| now_ms.saturating_sub(p.started_ms) <= PARTIAL_TIMEOUT_MS);
    }

    /// How many messages are in progress, for metrics and tests.
    pub fn in_progress(&self) -> usize {
        self.partials.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::udp::MAX_DATAGRAM_BYTES;
    use proptest::collection::vec;
    use proptest::prelude::*;

    const MIB: usize = 1 << 20;

    /// A frame whose bytes differ by position, so misplaced chunks are noticed.
    fn frame_of(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 + i / 251) as u8).collect()
    }

    /// Pushes fragments in the given order; returns the frame from the last one and
    /// checks that no earlier one completed.
    fn reassemble(r: &mut Reassembler, fragments: &[Vec<u8>]) -> Option<Vec<u8>> {
        let (last, rest) = fragments.split_last()?;
        for fragment in rest {
            assert_eq!(r.push(0, fragment).expect("push"), None);
        }
        r.push(0, last).expect("push last")
    }

    fn fragment(msg_id: u32, index: u16, count: u16, chunk: &[u8]) -> Vec<u8> {
        let mut f = header(msg_id, index, count).to_vec();
        f.extend_from_slice(chunk);
        f
    }

    #[test]
    fn max_chunk_for_the_default_datagram() {
        assert_eq!(max_chunk(MAX_DATAGRAM_BYTES), 1163);
        assert_eq!(max_chunk(10), 0);
        // A full fragment sealed and wrapped is exactly one datagram.
        assert_eq!(
            TRANSPORT_HEADER_BYTES + RECORD_OVERHEAD + FRAGMENT_HEADER_BYTES + 1163,
            MAX_DATAGRAM_BYTES
        );
    }

    #[test]
    fn split_shapes() {
        let empty = split(9, &[], 10).expect("split");
        assert_eq!(empty, vec![vec![0, 0, 0, 9, 0, 0, 0, 1]]);
        let parts = split(0x0102_0304, &frame_of(25), 10).expect("split");
        assert_eq!(parts.len(), 3);
        assert_eq!(&parts[2][..8], &[1, 2, 3, 4, 0, 2, 0, 3]);
        assert_eq!(
            parts.iter().map(|p| p.len() - 8).collect::<Vec<_>>(),
            [10, 10, 5]
        );
    }

    #[test]
    fn split_refuses_too_many_fragments() {
        assert_eq!(
            split(1, &[0; 65_535], 1).map(|p| p.len()).ok(),
            Some(65_535)
        );
        assert!(matches!(
            split(1, &[0; 65_536], 1),
            Err(WireError::TooManyFragments {
                len: 65_536,
                max_chunk: 1
            })
        ));
        assert!(matches!(
            split(1, &[0], 0),
            Err(WireError::TooManyFragments { .. })
        ));
        assert_eq!(split(1, &[], 0).map(|p| p.len()).ok(), Some(1));
    }

    #[test]
    fn every_size_up_to_three_chunks_plus_one_round_trips() {
        let chunk = 7;
        for len in 0..=3 * chunk + 1 {
            let frame = frame_of(len);
            let parts = split(len as u32, &frame, chunk).expect("split");
            assert_eq!(parts.len(), len.div_ceil(chunk).max(1));
            let mut r = Reassembler::new(1000);
            assert_eq!(reassemble(&mut r, &parts), Some(frame.clone()), "len {len}");
            let mut reversed = parts.clone();
            reversed.reverse();
            assert_eq!(
                reassemble(&mut r, &reversed),
                Some(frame),
                "len {len} reversed"
            );
            assert_eq!(r.in_progress(), 0);
        }
    }

    #[test]
    fn single_fragment_messages_are_not_buffered() {
        let mut r = Reassembler::new(100);
        let parts = split(1, b"small", 100).expect("split");
        assert_eq!(r.push(0, &parts[0]).expect("push"), Some(b"small".to_vec()));
        assert_eq!(r.in_progress(), 0);
        // The same id again is a new message, not a duplicate.
        assert_eq!(r.push(0, &parts[0]).expect("push"), Some(b"small".to_vec()));
    }

    #[test]
    fn one_mib_frame_round_trips_shuffled() {
        let frame = frame_of(MIB);
        let mut parts = split(7, &frame, max_chunk(MAX_DATAGRAM_BYTES)).expect("split");
        assert_eq!(parts.len(), MIB.div_ceil(1163));
        // Deterministic shuffle (xorshift) so the last fragment is not last.
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        for i in (1..parts.len()).rev() {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            parts.swap(i, (state % (i as u64 + 1)) as usize);
        }
        let mut r = Reassembler::new(MIB);
        assert_eq!(reassemble(&mut r, &parts), Some(frame));
    }

    #[test]
    fn interleaved_messages_complete_independently() {
        let (a, b) = (frame_of(50), frame_of(33));
        let pa = split(1, &a, 10).expect("split");
        let pb = split(2, &b, 10).expect("split");
        let mut r = Reassembler::new(1000);
        let mut done = Vec::new();
        for i in 0..pa.len().max(pb.len()) {
            for parts in [&pa, &pb] {
                if let Some(p) = parts.get(i) {
                    if let Some(frame) = r.push(0, p).expect("push") {
                        done.push(frame);
                    }
                }
            }
        }
        assert_eq!(done, vec![b, a]);
        assert_eq!(r.in_progress(), 0);
    }

    #[test]
    fn oversize_count_is_rejected_from_the_first_fragment() {
        let mut r = Reassembler::new(1000);
        // Non-last first: at least 99 * 100 + 1 bytes.
        let first = fragment(1, 0, 100, &[0; 100]);
        assert!(matches!(
            r.push(0, &first),
            Err(WireError::Oversize {
                len: 9901,
                max: 1000
            })
        ));
        // Last first: at least 100 * 20 bytes, as other chunks are no shorter.
        let last = fragment(2, 99, 100, &[0; 20]);
        assert!(matches!(
            r.push(0, &last),
            Err(WireError::Oversize { len: 2000, .. })
        ));
        assert_eq!(r.in_progress(), 0);
        // Exactly at the limit is fine.
        let frame = frame_of(1000);
        assert_eq!(
            reassemble(&mut r, &split(3, &frame, 100).expect("split")),
            Some(frame)
        );
    }

    #[test]
    fn collected_bytes_over_the_limit_drop_the_message() {
        let mut r = Reassembler::new(950);
        // 9 chunks of 100 then a last one: at least 901 bytes, allowed so far.
        assert_eq!(
            r.push(0, &fragment(1, 0, 10, &[1; 100])).expect("push"),
            None
        );
        let last = fragment(1, 9, 10, &[2; 60]);
        assert!(matches!(
            r.push(0, &last),
            Err(WireError::Oversize { len: 960, max: 950 })
        ));
        assert_eq!(r.in_progress(), 0);
    }

    #[test]
    fn single_fragment_over_the_limit_is_rejected() {
        let mut r = Reassembler::new(4);
        assert!(matches!(
            r.push(0, &fragment(1, 0, 1, b"12345")),
            Err(WireError::Oversize { len: 5, max: 4 })
        ));
        assert_eq!(
            r.push(0, &fragment(1, 0, 1, b"1234")).expect("push"),
            Some(b"1234".to_vec())
        );
    }

    #[test]
    fn partial_messages_expire() {
        let frame = frame_of(30);
        let parts = split(1, &frame, 10).expect("split");
        let mut r = Reassembler::new(1000);
        assert_eq!(r.push(1000, &parts[0]).expect("push"), None);
        r.expire(1000 + PARTIAL_TIMEOUT_MS);
        assert_eq!(r.in_progress(), 1, "exactly the timeout is not older");
        // A push for another message later than the timeout drops the first.
        let other = split(2, &frame_of(20), 10).expect("split");
        assert_eq!(
            r.push(1001 + PARTIAL_TIMEOUT_MS, &other[0]).expect("push"),
            None
        );
        assert_eq!(r.in_progress(), 1);
        // The rest of message 1 starts over and cannot complete.
        assert_eq!(
            r.push(1001 + PARTIAL_TIMEOUT_MS, &parts[1]).expect("push"),
            None
        );
        assert_eq!(
            r.push(1001 + PARTIAL_TIMEOUT_MS, &parts[2]).expect("push"),
            None
        );
        assert_eq!(r.in_progress(), 2);
    }

    #[test]
    fn the_oldest_partial_is_evicted() {
        let mut r = Reassembler::new(1000);
        let messages: Vec<_> = (0..=MAX_PARTIAL_MESSAGES as u32)
            .map(|id| (frame_of(20 + id as usize), id))
            .map(|(frame, id)| (split(id, &frame, 10).expect("split"), frame))
            .collect();
        for (parts, _) in &messages {
            assert_eq!(r.push(0, &parts[0]).expect("push"), None);
        }
        assert_eq!(r.in_progress(), MAX_PARTIAL_MESSAGES);
        // Message 0 was evicted: its remaining fragments start a new partial.
        let (parts0, _) = &messages[0];
        for p in &parts0[1..] {
            assert_eq!(r.push(0, p).expect("push"), None);
        }
        // The newest message completes.
        let (parts_last, frame_last) = &messages[MAX_PARTIAL_MESSAGES];
        let mut got = None;
        for p in &parts_last[1..] {
            got = r.push(0, p).expect("push");
        }
        assert_eq!(got.as_ref(), Some(frame_last));
    }

    #[test]
    fn bad_headers_are_rejected() {
        let mut r = Reassembler::new(1000);
        for len in 0..FRAGMENT_HEADER_BYTES {
            assert!(matches!(
                r.push(0, &vec![0; len]),
                Err(WireError::Truncated {
                    what: "fragment",
                    ..
                })
            ));
        }
        assert!(matches!(
            r.push(0, &fragment(1, 3, 3, b"x")),
            Err(WireError::FragmentIndex { index: 3, count: 3 })
        ));
        assert!(matches!(
            r.push(0, &fragment(1, 0, 0, b"")),
            Err(WireError::FragmentIndex { index: 0, count: 0 })
        ));
    }

    #[test]
    fn count_mismatch_drops_the_message() {
        let mut r = Reassembler::new(1000);
        assert_eq!(r.push(0, &fragment(1, 0, 3, b"abc")).expect("push"), None);
        assert!(matches!(
            r.push(0, &fragment(1, 1, 4, b"abc")),
            Err(WireError::FragmentCountMismatch {
                msg_id: 1,
                expected: 3,
                got: 4
            })
        ));
        assert_eq!(r.in_progress(), 0);
    }

    #[test]
    fn duplicate_fragment_is_rejected_and_does_not_corrupt() {
        let frame = frame_of(30);
        let parts = split(5, &frame, 10).expect("split");
        let mut r = Reassembler::new(1000);
        assert_eq!(r.push(0, &parts[1]).expect("push"), None);
        let mut forged = parts[1].clone();
        forged[9] ^= 0xff;
        assert!(matches!(
            r.push(0, &forged),
            Err(WireError::DuplicateFragment {
                msg_id: 5,
                index: 1
            })
        ));
        assert!(matches!(
            r.push(0, &parts[1]),
            Err(WireError::DuplicateFragment { .. })
        ));
        assert_eq!(r.push(0, &parts[2]).expect("push"), None);
        assert_eq!(r.push(0, &parts[0]).expect("push"), Some(frame));
    }

    #[test]
    fn inconsistent_chunk_lengths_drop_the_message() {
        let cases: [(&[(u16, usize)], u16); 4] = [
            // A second non-last chunk of another size.
            (&[(0, 10), (1, 9)], 1),
            // A last chunk longer than the others.
            (&[(0, 10), (2, 11)], 2),
            // A last chunk first, then a shorter non-last one.
            (&[(2, 8), (0, 7)], 0),
            // An empty chunk in a multi-fragment message.
            (&[(1, 0)], 1),
        ];
        for (pushes, bad_index) in cases {
            let mut r = Reassembler::new(1000);
            let (last, rest) = pushes.split_last().expect("cases are non-empty");
            for &(index, len) in rest {
                assert_eq!(
                    r.push(0, &fragment(1, index, 3, &vec![1; len]))
                        .expect("push"),
                    None
                );
            }
            let err = r.push(0, &fragment(1, last.0, 3, &vec![1; last.1]));
            assert!(
                matches!(err, Err(WireError::FragmentLength { index, .. }) if index == bad_index),
                "{pushes:?}: {err:?}"
            );
            assert_eq!(r.in_progress(), 0);
        }
    }

    proptest! {
        #[test]
        fn shuffled_round_trip(
            (frame, chunk, order) in (vec(any::<u8>(), 0..3000), 1usize..400)
                .prop_flat_map(|(frame, chunk)| {
                    let n = frame.len().div_ceil(chunk).max(1);
                    (Just(frame), Just(chunk), Just((0..n).collect::<Vec<_>>()).prop_shuffle())
                }),
        ) {
            let parts = split(42, &frame, chunk).expect("split");
            let ordered: Vec<_> = order.iter().map(|&i| parts[i].clone()).collect();
            let mut r = Reassembler::new(frame.len());
            prop_assert_eq!(reassemble(&mut r, &ordered), Some(frame));
            prop_assert_eq!(r.in_progress(), 0);
        }

        /// Arbitrary fragments never panic, never make a frame over the limit, and never
        /// keep more than the allowed number of partial messages.
        #[test]
        fn arbitrary_fragments_stay_bounded(
            pushes in vec((0u32..4, 0u16..6, 0u16..6, vec(any::<u8>(), 0..40), 0u64..8000), 0..200),
        ) {
            let mut r = Reassembler::new(100);
            for (msg_id, index, count, chunk, now) in pushes {
                if let Ok(Some(frame)) = r.push(now, &fragment(msg_id, index, count, &chunk)) {
                    prop_assert!(frame.len() <= 100);
                }
                prop_assert!(r.in_progress() <= MAX_PARTIAL_MESSAGES);
            }
        }
    }
}

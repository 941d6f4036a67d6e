//! Large byte fields decoded without a copy.
//!
//! A field declared `#[serde(with = "crate::wire::shared")]` is a [`Bytes`]. Decoded inside
//! [`within`] from a borrowing deserializer (rmp-serde reading a slice), it becomes a
//! reference-counted slice of the buffer being decoded ([`Bytes::slice_ref`]), so a 1 MiB
//! message is not copied out of the frame that carried it. Anywhere else (another
//! deserializer, bytes that are not inside the registered buffer) it is copied, so the field
//! decodes correctly whatever the caller does. On the wire it is a MessagePack `bin`, the
//! same bytes as `serde_bytes` on a `Vec<u8>`.
//!
//! The buffer is registered in a thread-local for the duration of one decode: serde gives a
//! visitor the borrowed bytes but no way to reach the `Bytes` that owns them.
//!
//! A shared field keeps its whole buffer alive, so callers register only buffers that hold the
//! one frame and little else (a reassembled frame, not a slice of some larger receive buffer):
//! otherwise a peer's small message could pin far more memory than its length says.

use std::cell::RefCell;
use std::fmt;

use bytes::Bytes;
use serde::de::{self, Visitor};
use serde::{Deserializer, Serializer};

thread_local! {
    /// The buffer the current [`within`] call decodes from.
    static SOURCE: RefCell<Option<Bytes>> = const { RefCell::new(None) };
}

/// Runs `decode` with `source` registered as the buffer it reads from, so shared fields it
/// decodes are slices of `source`. Nested calls restore the outer buffer when they return
/// (or unwind).
pub(crate) fn within<T>(source: &Bytes, decode: impl FnOnce() -> T) -> T {
    struct Restore(Option<Bytes>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let outer = self.0.take();
            SOURCE.with(|s| *s.borrow_mut() = outer);
        }
    }
    let outer = SOURCE.with(|s| s.borrow_mut().replace(source.clone()));
    let _restore = Restore(outer);
    decode()
}

/// `bytes` as a slice of the registered buffer when it lies inside it, else a copy.
fn share_or_copy(bytes: &[u8]) -> Bytes {
    SOURCE.with(|s| match &*s.borrow() {
        Some(source) if inside(source, bytes) => source.slice_ref(bytes),
        _ => Bytes::copy_from_slice(bytes),
    })
}

fn inside(source: &[u8], part: &[u8]) -> bool {
    let start = source.as_ptr() as usize;
    let at = part.as_ptr() as usize;
    at >= start && at + part.len() <= start + source.len()
}

/// Writes the bytes as a MessagePack `bin`.
pub fn serialize<S: Serializer>(bytes: &Bytes, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_bytes(bytes)
}

/// Reads a `bin`: shared with the registered buffer when borrowed from it, copied otherwise.
pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Bytes, D::Error> {
    deserializer.deserialize_byte_buf(SharedVisitor)
}

struct SharedVisitor;

impl<'de> Visitor<'de> for SharedVisitor {
    type Value = Bytes;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("bytes")
    }

    fn visit_borrowed_bytes<E: de::Error>(self, v: &'de [u8]) -> Result<Bytes, E> {
        Ok(share_or_copy(v))
    }

    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Bytes, E> {
        Ok(Bytes::copy_from_slice(v))
    }

    fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Bytes, E> {
        Ok(Bytes::from(v))
    }
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};

    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Holder {
        name: String,
        #[serde(with = "super")]
        big: Bytes,
    }

    fn encoded() -> Bytes {
        let h = Holder {
            name: "x".into(),
            big: Bytes::from(vec![7u8; 4096]),
        };
        Bytes::from(rmp_serde::to_vec(&h).unwrap())
    }

    fn points_into(part: &Bytes, whole: &Bytes) -> bool {
        inside(whole, part) && !part.is_empty()
    }

    #[test]
    fn inside_a_registered_buffer_the_field_is_a_slice_of_it() {
        let buf = encoded();
        let h: Holder = within(&buf, || rmp_serde::from_slice(&buf).unwrap());
        assert_eq!(h.big, vec![7u8; 4096]);
        assert!(points_into(&h.big, &buf), "shared, not copied");
    }

    #[test]
    fn elsewhere_the_field_is_copied_and_decodes_the_same() {
        let buf = encoded();
        // No registered buffer.
        let a: Holder = rmp_serde::from_slice(&buf).unwrap();
        assert!(!points_into(&a.big, &buf));
        // A registered buffer that is not the one decoded.
        let other = encoded();
        let b: Holder = within(&other, || rmp_serde::from_slice(&buf).unwrap());
        assert!(!points_into(&b.big, &buf) && !points_into(&b.big, &other));
        // The same bytes in another buffer.
        let elsewhere = buf.to_vec();
        let c: Holder = within(&buf, || rmp_serde::from_slice(&elsewhere).unwrap());
        assert!(!points_into(&c.big, &buf));
        // A copying reader.
        let d: Holder = within(&buf, || {
            rmp_serde::from_read(std::io::Cursor::new(&buf[..])).unwrap()
        });
        assert!(!points_into(&d.big, &buf));
        assert_eq!(a, b);
        assert_eq!(a, c);
        assert_eq!(a, d);
    }

    #[test]
    fn the_registration_ends_with_the_call_and_nests() {
        let outer = encoded();
        let inner = encoded();
        within(&outer, || {
            within(&inner, || {});
            let h: Holder = rmp_serde::from_slice(&outer).unwrap();
            assert!(
                points_into(&h.big, &outer),
                "outer restored after the inner call"
            );
        });
        let h: Holder = rmp_serde::from_slice(&outer).unwrap();
        assert!(
            !points_into(&h.big, &outer),
            "nothing registered after the call"
        );
    }

    #[test]
    fn the_wire_form_is_a_bin_like_serde_bytes() {
        #[derive(Serialize)]
        struct Old {
            name: String,
            #[serde(with = "serde_bytes")]
            big: Vec<u8>,
        }
        let old = Old {
            name: "x".into(),
            big: vec![7u8; 4096],
        };
        assert_eq!(rmp_serde::to_vec(&old).unwrap(), encoded().to_vec());
    }
}

//! Fuzzes `Frame::decode`, the first code to touch a peer's decrypted bytes.
//!
//! Checks that decoding never panics, and that any frame it accepts survives an
//! encode -> decode round trip unchanged (with a stable canonical encoding).

#![no_main]

use libfuzzer_sys::fuzz_target;
use msgtier::wire::frame::Frame;

fuzz_target!(|data: &[u8]| {
    let Ok(frame) = Frame::decode(data) else {
        return;
    };
    let encoded = frame.encode();
    let again = Frame::decode(&encoded).expect("an accepted frame re-encodes decodably");
    assert_eq!(again, frame, "encode -> decode changed the frame");
    assert_eq!(again.encode(), encoded, "canonical encoding is not stable");
});

//! Fuzzes the UDP receive path before decryption: `Datagram::parse` (handshake, transport and
//! punch datagrams), then the fragment `Reassembler` on what follows the datagram header.
//!
//! Checks that parsing never panics, that whatever parses writes back to the same bytes
//! and parses again to the same datagram, and that the reassembler stays within its
//! bounds on any sequence of fragments.

#![no_main]

use libfuzzer_sys::fuzz_target;
use msgtier::wire::fragment::{Reassembler, MAX_PARTIAL_MESSAGES};
use msgtier::wire::frame::Frame;
use msgtier::wire::udp::Datagram;

/// Reassembly limit for the fuzzer: small, so oversize paths are reachable.
const MAX_MESSAGE_BYTES: usize = 4096;

/// Milliseconds per unit of the time byte: 255 units span the 5 s partial timeout.
const MS_PER_TICK: u64 = 50;

fuzz_target!(|data: &[u8]| {
    let Ok(datagram) = Datagram::parse(data) else {
        return;
    };
    let mut written = Vec::new();
    datagram.write(&mut written);
    assert_eq!(written, data, "parse -> write is not the identity");
    assert_eq!(written.len(), datagram.encoded_len());
    assert_eq!(Datagram::parse(&written).ok(), Some(datagram));

    let remainder = match datagram {
        Datagram::HandshakeInit { noise, .. }
        | Datagram::HandshakeResp { noise, .. }
        | Datagram::HandshakeFinal { noise, .. } => noise,
        Datagram::Transport { record, .. } => record,
        // Punch probes and cookie replies carry only a token: parse -> write covered them.
        Datagram::Punch { .. } | Datagram::PunchAck { .. } | Datagram::CookieReply { .. } => return,
    };

    // The whole remainder as one fragment.
    let mut reassembler = Reassembler::new(MAX_MESSAGE_BYTES);
    check(reassembler.push(0, remainder));

    // The remainder as a sequence of fragments: `len: u8 || ticks: u8 || len bytes`,
    // so the fuzzer can build multi-fragment messages, reorderings and timeouts.
    let mut reassembler = Reassembler::new(MAX_MESSAGE_BYTES);
    let mut now_ms = 0u64;
    let mut rest = remainder;
    while let [len, ticks, tail @ ..] = rest {
        let take = usize::from(*len).min(tail.len());
        let (fragment, tail) = tail.split_at(take);
        now_ms += u64::from(*ticks) * MS_PER_TICK;
        check(reassembler.push(now_ms, fragment));
        assert!(reassembler.in_progress() <= MAX_PARTIAL_MESSAGES);
        rest = tail;
    }
});

/// A completed frame is within the limit; decoding it must not panic either.
fn check(result: Result<Option<Vec<u8>>, msgtier::wire::WireError>) {
    if let Ok(Some(frame)) = result {
        assert!(frame.len() <= MAX_MESSAGE_BYTES);
        let _ = Frame::decode(&frame);
    }
}

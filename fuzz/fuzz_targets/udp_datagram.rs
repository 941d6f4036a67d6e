//! Fuzzes what a UDP listener does with a datagram before QUIC sees it: the split between QUIC
//! packets and our own (`quic::is_quic`), then `Datagram::parse` on ours (punch, punch ack).
//!
//! Checks that nothing panics, that a datagram taken for ours never has QUIC's fixed bit, and
//! that whatever parses writes back to the same bytes and parses again to the same datagram.

#![no_main]

use libfuzzer_sys::fuzz_target;
use msgtier::quic::is_quic;
use msgtier::wire::udp::Datagram;

fuzz_target!(|data: &[u8]| {
    if is_quic(data) {
        assert!(data[0] & 0x40 != 0);
        assert!(Datagram::parse(data).is_err(), "a QUIC packet parsed as ours");
        return;
    }
    let Ok(datagram) = Datagram::parse(data) else {
        return;
    };
    let mut written = Vec::new();
    datagram.write(&mut written);
    assert_eq!(written, data, "parse -> write is not the identity");
    assert_eq!(written.len(), datagram.encoded_len());
    assert_eq!(Datagram::parse(&written).ok(), Some(datagram));
});

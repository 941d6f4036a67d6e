//! Fuzzes the Noise handshake message parser on both sides: arbitrary bytes as the dialer's
//! first message (listener side) and as the listener's answer (dialer side). Neither may panic;
//! a finished handshake from random bytes is impossible without the peer's keys.
#![no_main]

use libfuzzer_sys::fuzz_target;
use msgtier::identity::Identity;
use msgtier::proto::handshake::Handshake;

fuzz_target!(|data: &[u8]| {
    let identity = Identity::from_private([7; 32]);
    if let Ok(mut responder) = Handshake::responder(&identity) {
        let _ = responder.read_message(data);
        assert!(!responder.is_finished());
    }
    if let Ok((mut initiator, _msg1)) = Handshake::initiator(&identity) {
        let _ = initiator.read_message(data);
        // Random bytes cannot authenticate as msg2 (it carries an AEAD-encrypted static key).
        assert!(!initiator.is_finished());
    }
});

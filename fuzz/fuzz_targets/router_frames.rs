//! Fuzzes the router with whatever frames a hostile neighbour could send after a valid
//! handshake: adverts (signed or not, MAC'd or not), punch requests, punch frames, punch
//! refusals, data envelopes, on a member link and on an upstream link, with time passing.
//!
//! The input is a sequence of `selector: u8 || len: u16 LE || len bytes`; each chunk that
//! `Frame::decode` accepts is handed to one node on one link (chosen by the selector), and the
//! simulation runs a few milliseconds. A fifth of the chunks instead get their bytes wrapped into
//! a `link_state` signed by the attacker (MAC'd with our network key or not), so the signature
//! and MAC paths are reached past the decoder. Checks that the router never panics and that `x`
//! still delivers to `b` over their direct link whatever the others sent.

#![no_main]

use libfuzzer_sys::fuzz_target;
use msgtier::proto::router::sim::Net;
use msgtier::wire::frame::{Advert, Frame, Neighbor};

fuzz_target!(|data: &[u8]| {
    let mut net = Net::new(7);
    let x = net.add("x");
    let m = net.add("m");
    let b = net.add_with("b", "sim", |s| s.hole_punching = true);
    let s = net.add_with("s", "evil", |_| {});
    let xm = net.connect(x, m, 1);
    let xs = net.connect(x, s, 1);
    let mb = net.connect(m, b, 1);
    net.connect(x, b, 2);
    net.run_for(300);
    let links = [(x, xm, m), (x, xs, s), (b, mb, m), (m, xm, x)];
    let mut rest = data;
    while let [selector, lo, hi, tail @ ..] = rest {
        let len = usize::from(u16::from_le_bytes([*lo, *hi])).min(tail.len());
        let (bytes, tail) = tail.split_at(len);
        rest = tail;
        let (at, link, sender) = links[usize::from(*selector) % links.len()];
        let frame = if selector % 5 == 4 {
            // Bytes as an advert's fields, signed by the sender's real key.
            let mut advert = net.advert_by(sender, "sim", "b", &[]);
            if let Some((first, more)) = bytes.split_first() {
                advert.origin = ["b", "x", "m", "s", "z"][usize::from(*first) % 5].into();
                advert.relay = first & 0x80 != 0;
                advert.seq = advert.seq.wrapping_add(u64::from(*first) << 40);
                advert.neighbors = more
                    .chunks(2)
                    .take(8)
                    .map(|c| Neighbor {
                        id: ["b", "x", "m", "s", "z"][usize::from(c[0]) % 5].into(),
                        cost_us: u32::from(*c.last().unwrap_or(&1)),
                    })
                    .collect();
            }
            let advert: Advert = advert;
            net.forge(sender, &advert, selector & 0x40 != 0)
        } else {
            match Frame::decode(bytes) {
                Ok(f) => f,
                Err(_) => continue,
            }
        };
        net.inject(at, link, frame);
        net.run_for(u64::from(*selector & 0x0f));
    }
    net.run_for(1_000);
    // Nothing a stranger or a member sends keeps x from reaching b over their direct link
    // (a swapped key would make b unable to open it).
    let id = net.send(x, "b", "still there", 5_000).expect("b is known");
    assert!(
        net.run_until(1_000, |n| matches!(n.outcome(x, id), Some(Ok(_)))),
        "x reaches b"
    );
});

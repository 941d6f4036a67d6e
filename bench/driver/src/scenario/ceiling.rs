//! Raw ceilings of this machine, measured in the same session as the nodes:
//!
//! - loopback TCP ping-pong of 64 bytes between two threads of the driver (`TCP_NODELAY`,
//!   blocking sockets): p50 and p99 of the round trip, the floor under any 1-hop RTT. Twice:
//!   with the threads where the scheduler puts them (as the nodes run), and both pinned to CPU
//!   0. On a VM the difference is the cost of waking an idle vCPU, which every cross-thread
//!   hand-off in a node can pay too;
//! - ChaCha20-Poly1305 as msgtier's link records use it (`ring` 0.17) sealing in place on one
//!   core, for 64 B, 1 KiB and 64 KiB buffers: MB/s and messages/s, the CPU bound under message
//!   rate and bulk throughput; and, for comparison, the `chacha20poly1305` 0.11 crate (same
//!   default build flags; the end-to-end layer's XChaCha20 comes from it) at 64 B and 64 KiB.

use std::hint::black_box;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use chacha20poly1305::{AeadInOut, ChaCha20Poly1305, Key, KeyInit, Nonce};
use ring::aead::{Aad, LessSafeKey, UnboundKey, CHACHA20_POLY1305};

use super::Ctx;
use crate::report::key;
use crate::stats::{p50_p90_p99, Results};

/// Ping-pong message size.
const PING_BYTES: usize = 64;

/// Runs both ceilings.
pub fn run(ctx: &Ctx, res: &mut Results) -> Result<()> {
    let (warmup, count) = ctx.pick((2_000, 20_000), (200, 2_000));
    for (pin, k50, k99) in [
        (false, key::TCP_P50, key::TCP_P99),
        (true, key::TCP_1CORE_P50, key::TCP_1CORE_P99),
    ] {
        let mut rtts = tcp_ping_pong(warmup, count, pin)?;
        let (p50, _, p99) = p50_p90_p99(&mut rtts);
        res.add(k50, p50);
        res.add(k99, p99);
    }

    let per_size = ctx.pick(Duration::from_millis(600), Duration::from_millis(150));
    for (size, mbs, msgs) in [
        (64, key::AEAD_64_MBS, key::AEAD_64_MSGS),
        (1024, key::AEAD_1K_MBS, key::AEAD_1K_MSGS),
        (64 * 1024, key::AEAD_64K_MBS, key::AEAD_64K_MSGS),
    ] {
        let per_sec = aead_rate(size, per_size, Impl::Ring);
        res.add(msgs, per_sec);
        res.add(mbs, per_sec * size as f64 / 1e6);
    }
    for (size, mbs) in [
        (64, key::AEAD_CRATE_64_MBS),
        (64 * 1024, key::AEAD_CRATE_64K_MBS),
    ] {
        let per_sec = aead_rate(size, per_size, Impl::Crate);
        res.add(mbs, per_sec * size as f64 / 1e6);
    }
    Ok(())
}

/// Pins the calling thread to CPU 0 (best effort).
fn pin_to_cpu0() {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; sched_setaffinity(0, ..) changes only
    // the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// Round trips of [`PING_BYTES`] over loopback TCP between two threads, in microseconds; with
/// `pin`, both threads run on CPU 0 (no cross-CPU wake-up). Both are spawned threads, so the
/// main thread's affinity is never changed.
fn tcp_ping_pong(warmup: usize, count: usize, pin: bool) -> Result<Vec<f64>> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("bind echo server")?;
    let addr = listener.local_addr()?;
    let total = warmup + count;
    let server = std::thread::spawn(move || -> std::io::Result<()> {
        if pin {
            pin_to_cpu0();
        }
        let (mut s, _) = listener.accept()?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut buf = [0u8; PING_BYTES];
        for _ in 0..total {
            s.read_exact(&mut buf)?;
            s.write_all(&buf)?;
        }
        Ok(())
    });
    let client = std::thread::spawn(move || -> std::io::Result<Vec<f64>> {
        if pin {
            pin_to_cpu0();
        }
        let mut c = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        c.set_nodelay(true)?;
        c.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut buf = [7u8; PING_BYTES];
        let mut rtts = Vec::with_capacity(count);
        for i in 0..total {
            let t0 = Instant::now();
            c.write_all(&buf)?;
            c.read_exact(&mut buf)?;
            if i >= warmup {
                rtts.push(t0.elapsed().as_secs_f64() * 1e6);
            }
        }
        Ok(rtts)
    });
    let rtts = client
        .join()
        .map_err(|_| anyhow::anyhow!("ping-pong client panicked"))??;
    server
        .join()
        .map_err(|_| anyhow::anyhow!("echo server panicked"))??;
    Ok(rtts)
}

/// Which ChaCha20-Poly1305 implementation [`aead_rate`] measures.
#[derive(Clone, Copy)]
enum Impl {
    /// `ring`'s, as the link records use it.
    Ring,
    /// The `chacha20poly1305` crate's.
    Crate,
}

/// Buffers of `size` bytes sealed per second on this thread, measured for about `time`.
fn aead_rate(size: usize, time: Duration, which: Impl) -> f64 {
    let rust_crypto = ChaCha20Poly1305::new(&Key::from([0x42u8; 32]));
    let ring_key =
        LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, &[0x42u8; 32]).expect("32-byte key"));
    let mut buf = vec![0x5au8; size];
    let mut counter = 0u64;
    let mut seal = |buf: &mut [u8]| {
        let mut nonce = [0u8; 12];
        nonce[4..].copy_from_slice(&counter.to_le_bytes());
        counter += 1;
        match which {
            Impl::Ring => {
                let nonce = ring::aead::Nonce::assume_unique_for_key(nonce);
                black_box(
                    ring_key
                        .seal_in_place_separate_tag(nonce, Aad::empty(), buf)
                        .ok(),
                );
            }
            Impl::Crate => {
                let tag = rust_crypto.encrypt_inout_detached(&Nonce::from(nonce), &[], buf.into());
                black_box(tag.ok());
            }
        }
    };
    // Warm-up, then batches until the time is used (the clock read per batch, not per message).
    let batch = (256 * 1024 / size).max(1);
    for _ in 0..batch {
        seal(&mut buf);
    }
    let start = Instant::now();
    let mut done = 0u64;
    while start.elapsed() < time {
        for _ in 0..batch {
            seal(black_box(&mut buf));
        }
        done += batch as u64;
    }
    done as f64 / start.elapsed().as_secs_f64()
}

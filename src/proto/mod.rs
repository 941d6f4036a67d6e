//! Pure protocol logic of msgtier links: no sockets, no clocks, no actors.
//!
//! The connection and peer actors call into these modules to decide what to send
//! and when; everything here is deterministic given its inputs (randomness is
//! passed in; the one exception is `e2e`, which draws its random nonces itself),
//! so it is tested directly.

pub mod backoff;
pub mod cache;
pub mod e2e;
pub mod handshake;
pub mod key_book;
pub mod link;
pub mod peer_state;
pub mod peer_table;
pub mod punch;
pub mod router;
pub mod routing;
pub mod token_bucket;
pub mod udp_session;
pub mod whitelist;

//! Pure protocol logic of msgtier: no sockets, no clocks, no actors.
//!
//! The actors call into these modules to decide what to send and when: the PeerActor drives a
//! [`link::Link`] per connection, the DiscoveryActor owns a `peer_table::PeerTable`, the
//! RelayActor drives the [`router::Router`]. Everything here is deterministic given its inputs
//! (time and randomness are passed in; the one exception is `e2e`, which draws its random
//! nonces itself, and so the router's seals), so it is tested directly, and whole networks of
//! routers run in a simulation.

pub mod advert;
pub(crate) mod backoff;
pub(crate) mod cache;
pub mod cert;
pub mod durable;
pub mod e2e;
pub mod event;
pub(crate) mod foreign_tables;
pub mod handshake;
pub mod handshake_budget;
pub(crate) mod key_book;
pub mod lan;
pub mod link;
pub mod peer_state;
pub(crate) mod peer_table;
pub mod publication;
pub(crate) mod punch;
pub mod router;
pub(crate) mod routing;
pub(crate) mod shaper;
pub(crate) mod token_bucket;
pub mod topic;
pub(crate) mod whitelist;

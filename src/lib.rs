//! msgtier: a self-hosted peer-to-peer messaging node.
//!
//! Map of the crate:
//! - [`config`]: the node's JSON/JSON5 config, validated field by field from one table of
//!   fields ([`config::FIELDS`]).
//! - [`addr`]: transport addresses (`udp://`, `tcp://`, `ws://` endpoints), parsed and printed;
//!   used by `config`, `proto` and the actors.
//! - [`wire`]: frames, sealed records, punch datagrams (pure codec).
//! - [`quic`]: the QUIC endpoint under `udp://` links and the socket it shares with punches.
//! - [`proto`]: pure protocol state machines: Noise handshake and membership proof
//!   ([`proto::handshake`]), one link's lifecycle ([`proto::link`]), the known-node table and
//!   duplicate rule (`proto::peer_table`), re-dial backoff (`proto::backoff`), and the
//!   [`proto::router`]: routing, the message path, foreign domains and punching, with its
//!   deterministic simulation ([`proto::router::sim`]).
//! - [`identity`], [`keys`]: the long-term X25519 identity and the key bundle links use.
//! - [`actors`]: one actix actor per concern (listeners, peers, discovery, relay, scripts,
//!   crypto); they move bytes and timers and call into `proto`; [`actors::messages`] holds what
//!   crosses between them.
//! - [`api`]: the HTTP API. [`node`]: the composition root. [`metrics`]: counters.

pub mod actors;
pub mod addr;
pub mod api;
pub mod config;
pub mod identity;
pub mod keys;
pub mod metrics;
pub mod node;
pub mod proto;
pub mod quic;
pub mod store;
pub mod wire;

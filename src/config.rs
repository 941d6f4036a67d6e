//! Node configuration: loading, validating and describing a node's JSON config file.
//!
//! A msgtier node is started with one config file (`msgtier node.json`). This module turns that
//! file into a validated [`Config`]: the node's identity (`id`, `secret`, `network`), the
//! endpoints it listens on and dials ([`Endpoint`], defined in [`crate::addr`]), the HTTP API
//! address, the named scripts it may run, relay policy, timing and size limits, and where it
//! keeps its data.
//!
//! The file is JSON5 (comments, trailing commas, unquoted keys are fine), which keeps it
//! compatible with MsgTier's config files. It is parsed into a [`serde_json::Value`] first and
//! then checked field by field, so that every problem is reported as exactly one one-line
//! [`ConfigError`] of the form `<file>: <field path>: <problem>`, e.g.
//! `node.json: listeners[1]: unknown scheme "quic" (expected udp, tcp or ws)`.
//! Things that are not errors (unknown fields, MsgTier fields msgtier does not use) come back as
//! warning lines in [`Loaded::warnings`] for the caller to log.
//!
//! Every top-level field is described once, in [`FIELDS`]: its name, what it is for, its
//! default, its bounds when it is an integer, whether a running node could take on a new value
//! ([`Field::reloadable`]) and whether it must never be shown ([`Field::secret`]). That table
//! decides which fields are known (anything else gets an "unknown field" warning, with a
//! suggestion when it looks like a typo), checks the booleans and integers (default, type,
//! bounds), and drives redaction. The remaining fields have their own checks in
//! `Checker::config`, in file order. For hot reload, [`Config::reloadable`] is the part of the
//! config a running node can change and [`Config::restart_needed`] names the changed fields it
//! cannot.
//!
//! Users: `main.rs` calls [`load`], logs the warnings and sets the log level; the composition
//! root (`node.rs`) keeps the [`Config`] and hands it to the actors, which read the fields they
//! need (listeners, peers, scripts, relay policy, timings, the secret for key derivation); the
//! HTTP API serves [`Config::redacted_json`] (which, like every `Debug` output here, never
//! shows the secret).
//!
//! Scripts, `/send`, the outbox and the inbox have their own limits, all optional:
//!
//! | field | default | range | meaning |
//! |---|---|---|---|
//! | `script_timeout_ms` | 30000 | 1 ..= 86400000 | a script still running after this long is killed (its whole process group) |
//! | `max_concurrent_scripts` | 4 | 1 ..= 256 | scripts running at once |
//! | `max_script_queue` | 64 | 0 ..= 10000 | scripts waiting for a slot; beyond it requests are refused |
//! | `max_script_output_bytes` | 1048576 | 1024 ..= 16777216 | bytes kept of a script's stdout, and of its stderr (each); the rest is read and dropped |
//! | `max_body_bytes` | 1048576, but at most `max_frame_bytes` - 4096 | 1 ..= `max_frame_bytes` - 4096 | largest `/send` body |
//! | `send_timeout_max_ms` | 60000 | 1000 ..= 600000 | upper bound on a `/send` `timeout` header |
//! | `default_ttl_s` | 0 | 0 ..= 2592000 | ttl of a `/send` without a `ttl` header, in seconds (0: live only) |
//! | `max_ttl_s` | 604800 | 1 ..= 2592000 | longest ttl this node accepts, in seconds |
//! | `outbox_max_messages` | 10000 | 1 ..= 1000000 | messages with a ttl not yet delivered, at most |
//! | `outbox_max_bytes` | 67108864 | 1024 ..= 1099511627776 | body bytes of messages with a ttl not yet delivered, at most |
//! | `max_incoming_bytes` | 1048576 | 0 ..= 1073741824 | largest message body this node takes from others, in bytes |
//! | `max_incoming_hops` | 16 | 1 ..= 16 | most links a message may have crossed to be taken here |
//! | `max_messages_per_sender_per_s` | 0 | 0 ..= 1000000 | messages taken from one sender per second, with a second of burst (0: no limit) |
//! | `inbox_max_messages` | 10000 | 1 ..= 10000000 | plain messages the inbox keeps, at most (oldest go first) |
//! | `inbox_max_bytes` | 67108864 | 1024 ..= 1099511627776 | body bytes the inbox keeps, at most |
//! | `inbox_max_age_s` | 2592000 | 1 ..= 315360000 | age beyond which the inbox forgets a message, in seconds |
//!
//! (A unit test checks this table against [`FIELDS`].) The script limits are read by
//! `ScriptLimits::from_config` (in `actors::script`); the `/send` limits by the HTTP API.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::{Serialize, Serializer};
use serde_json::{Map, Value};

pub use crate::addr::{Endpoint, EndpointError, Host, Transport};

/// Network name used when the config has no `network` field.
pub const DEFAULT_NETWORK: &str = "default";

/// Longest accepted `id` / `network`, in characters. Ids travel in every frame header and show
/// up in HTTP routes and log lines; 64 is plenty for a host name or a UUID (36) with a prefix.
pub const MAX_ID_CHARS: usize = 64;

/// Default interval between heartbeats (`ping`) to each peer, in milliseconds. MsgTier pings
/// every 10 s; msgtier keeps that cadence.
pub const DEFAULT_HEARTBEAT_INTERVAL_MS: u64 = 10_000;

/// Smallest accepted heartbeat interval, in milliseconds. Anything shorter would be a busy loop
/// rather than a liveness check; 10 ms still lets tests run fast.
pub const MIN_HEARTBEAT_INTERVAL_MS: u64 = 10;

/// Default time without any traffic from a peer before it is considered gone, in milliseconds:
/// three missed heartbeats at the default interval.
pub const DEFAULT_PEER_TIMEOUT_MS: u64 = 30_000;

/// Default largest frame a node sends or accepts, in bytes (1 MiB): big enough for scripts'
/// output and chat messages, small enough that a hostile peer cannot make us buffer much.
pub const DEFAULT_MAX_FRAME_BYTES: usize = 1024 * 1024;

/// Smallest accepted `max_frame_bytes`, in bytes (4 KiB): handshake and gossip frames must fit.
pub const MIN_MAX_FRAME_BYTES: usize = 4096;

/// Largest accepted `max_frame_bytes`: what the wire codec decodes at most (4 MiB), which also
/// bounds per-connection buffering.
pub const MAX_MAX_FRAME_BYTES: usize = crate::wire::MAX_FRAME_BYTES;

/// Default `script_timeout_ms` (30 s): ample for the commands configs hold (`uptime`, an
/// `echo`, a check-in script), and a hung script gives its slot back within one default
/// `peer_timeout_ms`.
pub const DEFAULT_SCRIPT_TIMEOUT_MS: u64 = 30_000;

/// Smallest accepted `script_timeout_ms` (1 ms): any positive time is meaningful, and tests use
/// very short ones.
pub const MIN_SCRIPT_TIMEOUT_MS: u64 = 1;

/// Largest accepted `script_timeout_ms` (one day, 86 400 000 ms): a longer job is a service,
/// not a script answering a message.
pub const MAX_SCRIPT_TIMEOUT_MS: u64 = 86_400_000;

/// Default `max_concurrent_scripts`: a few at once, so a burst of messages cannot fork-bomb a
/// small machine (4 is a common core count for the small hosts msgtier runs on).
pub const DEFAULT_MAX_CONCURRENT_SCRIPTS: usize = 4;

/// Smallest accepted `max_concurrent_scripts`: at least one script must be able to run.
pub const MIN_MAX_CONCURRENT_SCRIPTS: usize = 1;

/// Largest accepted `max_concurrent_scripts`: the same bound as concurrent inbound handshakes;
/// each running script holds a process and two pipe descriptors, and 256 keeps those well
/// under the usual 1024-descriptor soft limit next to the node's sockets.
pub const MAX_MAX_CONCURRENT_SCRIPTS: usize = 256;

/// Default `max_script_queue`: 16 waiting requests per default slot.
pub const DEFAULT_MAX_SCRIPT_QUEUE: usize = 64;

/// Smallest accepted `max_script_queue` (0): no waiting at all, refuse when every slot is busy.
pub const MIN_MAX_SCRIPT_QUEUE: usize = 0;

/// Largest accepted `max_script_queue`: a waiting request costs a few hundred bytes, so 10 000
/// bounds the queue to a few MB.
pub const MAX_MAX_SCRIPT_QUEUE: usize = 10_000;

/// Default `max_script_output_bytes` (1 MiB, per stream): the default `max_frame_bytes`, so
/// the default keeps what a frame could carry.
pub const DEFAULT_MAX_SCRIPT_OUTPUT_BYTES: usize = 1024 * 1024;

/// Smallest accepted `max_script_output_bytes` (1 KiB): enough for an error message.
pub const MIN_MAX_SCRIPT_OUTPUT_BYTES: usize = 1024;

/// Largest accepted `max_script_output_bytes` (16 MiB, per stream): bounds what running
/// scripts can make the node buffer (2 x 16 MiB x `max_concurrent_scripts` at worst).
pub const MAX_MAX_SCRIPT_OUTPUT_BYTES: usize = 16 * 1024 * 1024;

/// Default `max_body_bytes` (1 MiB). The effective default is capped at
/// `max_frame_bytes` - [`BODY_FRAME_RESERVE_BYTES`], so it is 1 044 480 with the default frame
/// size.
pub const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;

/// Smallest accepted `max_body_bytes` (1 byte) when set.
pub const MIN_MAX_BODY_BYTES: usize = 1;

/// Bytes of a frame kept for the message envelope around a `/send` body (ids, message id,
/// headers, encodings): a 4 KiB allowance, the size of the smallest allowed frame.
/// `max_body_bytes` is at most `max_frame_bytes` minus this.
pub const BODY_FRAME_RESERVE_BYTES: usize = 4096;

/// Default `send_timeout_max_ms` (60 s): two default script timeouts, so a script run on a
/// remote node can finish and its answer travel back.
pub const DEFAULT_SEND_TIMEOUT_MAX_MS: u64 = 60_000;

/// Smallest accepted `send_timeout_max_ms` (1 s): below that a relayed round trip plus a script
/// start cannot complete.
pub const MIN_SEND_TIMEOUT_MAX_MS: u64 = 1_000;

/// Largest accepted `send_timeout_max_ms` (10 min): HTTP clients and proxies rarely hold a
/// request open longer.
pub const MAX_SEND_TIMEOUT_MAX_MS: u64 = 600_000;

/// Shortest accepted `api_token`: 16 characters (64 bits even as hex).
pub const MIN_API_TOKEN_CHARS: usize = 16;

/// Longest accepted `api_token`: 256 characters, well inside any HTTP header limit.
pub const MAX_API_TOKEN_CHARS: usize = 256;

/// What every output of this module shows in place of the secret.
pub const REDACTED: &str = "<redacted>";

/// Every top-level field of the config file, in the order they are checked: the one place
/// where a field's name, purpose, default, bounds, reload behaviour and secrecy are written.
///
/// The loader takes from it which fields are known, and the default and bounds of every
/// [`Rule::Bool`] and [`Rule::Int`] field; [`Config::redacted_json`] hides the
/// [`Field::secret`] ones; [`Config::restart_needed`] reports the changed fields that are not
/// [`Field::reloadable`]. Adding a field means: a [`Config`] field, an entry here, and its
/// parse line in `Checker::config` (and, if it is reloadable, a [`Reloadable`] field).
pub const FIELDS: &[Field] = &[
    Field::new(
        "id",
        Rule::Required,
        "this node's id, unique within its network",
    ),
    Field::new(
        "secret",
        Rule::Required,
        "shared network secret; nodes with another secret are rejected",
    )
    .mark_secret(),
    Field::new(
        "network",
        Rule::Custom {
            default: "\"default\"",
        },
        "network name",
    ),
    Field::new(
        "listeners",
        Rule::Custom { default: "none" },
        "endpoints to bind",
    ),
    Field::new(
        "peers",
        Rule::Custom { default: "none" },
        "seed peers to dial",
    )
    .mark_reloadable(),
    Field::new(
        "web_api",
        Rule::Custom {
            default: "none (no HTTP API)",
        },
        "bind address of the HTTP API",
    ),
    Field::new(
        "api_hosts",
        Rule::Custom {
            default: "none (IP literals and localhost only)",
        },
        "extra host names the HTTP API answers to (DNS rebinding guard)",
    ),
    Field::new(
        "api_token",
        Rule::Custom {
            default: "none (no token: whoever reaches web_api may use it)",
        },
        "bearer token every HTTP API call but GET /health must carry",
    )
    .mark_secret()
    .mark_reloadable(),
    Field::new(
        "api_token_file",
        Rule::Custom { default: "none" },
        "file holding api_token (first line), instead of the config",
    )
    .mark_reloadable(),
    Field::new(
        "scripts",
        Rule::Custom { default: "none" },
        "script name -> shell command",
    )
    .mark_reloadable(),
    Field::new(
        "relay_network_whitelist",
        Rule::Custom { default: "none" },
        "foreign-network patterns allowed to relay through this node",
    )
    .mark_reloadable(),
    Field::new(
        "relay_all_peer_rpc",
        Rule::Bool { default: false },
        "admit other foreign networks for control traffic only",
    )
    .mark_reloadable(),
    Field::new(
        "foreign_relay_bps_limit",
        Rule::Int {
            default: 0,
            min: 0,
            max: None,
        },
        "relayed bytes per second per foreign network; 0 = unlimited",
    )
    .mark_reloadable(),
    Field::new(
        "hole_punching",
        Rule::Bool { default: true },
        "open direct UDP paths to members reached through a relay",
    ),
    Field::new(
        "lan_discovery",
        Rule::Bool { default: true },
        "announce this node on the LAN and dial the members heard there",
    ),
    Field::new(
        "lan_discovery_group",
        Rule::Custom {
            default: "239.255.77.1:17771 and [ff12::6d74]:17771",
        },
        "the multicast groups (IP:port, one or a list) LAN beacons go to",
    ),
    Field::new(
        "subscriptions",
        Rule::Custom { default: "none" },
        "topic filters this node subscribes to (e.g. [\"alerts.>\", \"build.*.done\"])",
    )
    .mark_reloadable(),
    Field::new(
        "publish_max_bytes",
        Rule::Int {
            default: 262_144,
            min: 1,
            max: Some(4_194_304),
        },
        "largest POST /publish body, in bytes (also bounded by max_body_bytes)",
    ),
    Field::new(
        "publish_rate_per_topic",
        Rule::Int {
            default: 100,
            min: 0,
            max: Some(1_000_000),
        },
        "publishes per second to one topic from this node, with a second of burst (0: no limit)",
    ),
    Field::new(
        "log",
        Rule::Custom {
            default: "none (info unless the command line says otherwise)",
        },
        "log level",
    )
    .mark_reloadable(),
    Field::new(
        "data_dir",
        Rule::Custom {
            default: "msgtier/<id> in the user's data directory",
        },
        "where the node keeps its identity and state",
    ),
    Field::new(
        "heartbeat_interval_ms",
        Rule::Int {
            default: DEFAULT_HEARTBEAT_INTERVAL_MS,
            min: MIN_HEARTBEAT_INTERVAL_MS,
            max: None,
        },
        "interval between heartbeats to each peer, in ms",
    ),
    Field::new(
        "peer_timeout_ms",
        // Must also be greater than heartbeat_interval_ms, checked in `Checker::config`.
        Rule::Int {
            default: DEFAULT_PEER_TIMEOUT_MS,
            min: 0,
            max: None,
        },
        "silence from a peer after which it is dropped, in ms",
    ),
    Field::new(
        "auto_connect",
        Rule::Bool { default: true },
        "dial configured and gossiped peers automatically",
    ),
    Field::new(
        "max_frame_bytes",
        Rule::Int {
            default: DEFAULT_MAX_FRAME_BYTES as u64,
            min: MIN_MAX_FRAME_BYTES as u64,
            max: Some(MAX_MAX_FRAME_BYTES as u64),
        },
        "largest frame sent or accepted, in bytes",
    ),
    Field::new(
        "metadata",
        Rule::Custom { default: "none" },
        "free-form string metadata advertised to peers",
    ),
    Field::new(
        "pinned_keys",
        Rule::Custom { default: "none" },
        "node id -> the only public key accepted for it",
    )
    .mark_reloadable(),
    Field::new(
        "network_ca",
        Rule::Custom {
            default: "none (no CA: keys are trusted on first sight)",
        },
        "the network CA's public key; members then need a certificate it signed",
    ),
    Field::new(
        "certificate",
        Rule::Custom { default: "none" },
        "this node's certificate from the network CA (msgtier ca sign)",
    ),
    Field::new(
        "script_timeout_ms",
        Rule::Int {
            default: DEFAULT_SCRIPT_TIMEOUT_MS,
            min: MIN_SCRIPT_TIMEOUT_MS,
            max: Some(MAX_SCRIPT_TIMEOUT_MS),
        },
        "a script still running after this long is killed (its whole process group)",
    )
    .mark_reloadable(),
    Field::new(
        "max_concurrent_scripts",
        Rule::Int {
            default: DEFAULT_MAX_CONCURRENT_SCRIPTS as u64,
            min: MIN_MAX_CONCURRENT_SCRIPTS as u64,
            max: Some(MAX_MAX_CONCURRENT_SCRIPTS as u64),
        },
        "scripts running at once",
    )
    .mark_reloadable(),
    Field::new(
        "max_script_queue",
        Rule::Int {
            default: DEFAULT_MAX_SCRIPT_QUEUE as u64,
            min: MIN_MAX_SCRIPT_QUEUE as u64,
            max: Some(MAX_MAX_SCRIPT_QUEUE as u64),
        },
        "scripts waiting for a slot; beyond it requests are refused",
    )
    .mark_reloadable(),
    Field::new(
        "max_script_output_bytes",
        Rule::Int {
            default: DEFAULT_MAX_SCRIPT_OUTPUT_BYTES as u64,
            min: MIN_MAX_SCRIPT_OUTPUT_BYTES as u64,
            max: Some(MAX_MAX_SCRIPT_OUTPUT_BYTES as u64),
        },
        "bytes kept of a script's stdout, and of its stderr (each); the rest is read and dropped",
    )
    .mark_reloadable(),
    Field::new(
        "max_body_bytes",
        // Its upper bound depends on max_frame_bytes: see `Checker::max_body_bytes`.
        Rule::Custom {
            default: "1048576, but at most `max_frame_bytes` - 4096",
        },
        "largest `/send` body",
    ),
    Field::new(
        "send_timeout_max_ms",
        Rule::Int {
            default: DEFAULT_SEND_TIMEOUT_MAX_MS,
            min: MIN_SEND_TIMEOUT_MAX_MS,
            max: Some(MAX_SEND_TIMEOUT_MAX_MS),
        },
        "upper bound on a `/send` `timeout` header",
    ),
    Field::new(
        "default_ttl_s",
        // At most max_ttl_s, checked in `Checker::config`.
        Rule::Int {
            default: 0,
            min: 0,
            max: Some(MAX_TTL_S),
        },
        "ttl of a `/send` without a `ttl` header, in seconds (0: live only)",
    ),
    Field::new(
        "max_ttl_s",
        Rule::Int {
            default: DEFAULT_MAX_TTL_S,
            min: 1,
            max: Some(MAX_TTL_S),
        },
        "longest ttl this node accepts, in seconds",
    ),
    Field::new(
        "outbox_max_messages",
        Rule::Int {
            default: 10_000,
            min: 1,
            max: Some(1_000_000),
        },
        "messages with a ttl not yet delivered, at most",
    ),
    Field::new(
        "outbox_max_bytes",
        Rule::Int {
            default: 64 * 1024 * 1024,
            min: 1024,
            max: Some(1 << 40),
        },
        "body bytes of messages with a ttl not yet delivered, at most",
    ),
    Field::new(
        "max_incoming_bytes",
        Rule::Int {
            default: 1 << 20,
            min: 0,
            max: Some(1 << 30),
        },
        "largest message body this node takes from others, in bytes",
    ),
    Field::new(
        "max_incoming_hops",
        Rule::Int {
            default: 16,
            min: 1,
            max: Some(16),
        },
        "most links a message may have crossed to be taken here",
    ),
    Field::new(
        "max_messages_per_sender_per_s",
        Rule::Int {
            default: 0,
            min: 0,
            max: Some(1_000_000),
        },
        "messages taken from one sender per second, with a second of burst (0: no limit)",
    ),
    Field::new(
        "carrier",
        Rule::Custom { default: "none" },
        "carry durable messages for others: {quota_bytes, per_origin_quota_bytes, max_ttl_s}",
    ),
    Field::new(
        "inbox_max_messages",
        Rule::Int {
            default: 10_000,
            min: 1,
            max: Some(10_000_000),
        },
        "plain messages the inbox keeps, at most (oldest go first)",
    ),
    Field::new(
        "inbox_max_bytes",
        Rule::Int {
            default: 64 * 1024 * 1024,
            min: 1024,
            max: Some(1 << 40),
        },
        "body bytes the inbox keeps, at most",
    ),
    Field::new(
        "inbox_max_age_s",
        Rule::Int {
            default: 30 * 24 * 3600,
            min: 1,
            max: Some(10 * 365 * 24 * 3600),
        },
        "age beyond which the inbox forgets a message, in seconds",
    ),
];

/// What a carrier keeps for others (config `carrier`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct CarrierConfig {
    /// Bytes of others' messages held at most (default 256 MiB).
    pub quota_bytes: u64,
    /// Bytes held for one origin at most (default 32 MiB).
    pub per_origin_quota_bytes: u64,
    /// Longest remaining lifetime taken, in seconds (default a week).
    pub max_ttl_s: u64,
}

impl Default for CarrierConfig {
    fn default() -> Self {
        CarrierConfig {
            quota_bytes: 256 * 1024 * 1024,
            per_origin_quota_bytes: 32 * 1024 * 1024,
            max_ttl_s: DEFAULT_MAX_TTL_S,
        }
    }
}

/// Default `max_ttl_s`: a week.
pub const DEFAULT_MAX_TTL_S: u64 = 7 * 24 * 3600;
/// Largest accepted `max_ttl_s`: 30 days (LXMF's message lifetime; an envelope's ttl is a u32 of
/// milliseconds, which holds 49 days).
pub const MAX_TTL_S: u64 = 30 * 24 * 3600;

/// The [`FIELDS`] entry named `name`, if it is a known top-level field.
pub fn field(name: &str) -> Option<&'static Field> {
    FIELDS.iter().find(|f| f.name == name)
}

/// One top-level config field, as listed in [`FIELDS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field {
    /// The key in the config file, and the field's name in [`Config`] and in
    /// [`Config::redacted_json`].
    pub name: &'static str,
    /// What an unset field becomes, and how much of the checking the table does.
    pub rule: Rule,
    /// What the field is for, one short line.
    pub doc: &'static str,
    /// A running node can take on a new value without a restart: the field is part of
    /// [`Reloadable`], and [`Config::restart_needed`] does not report it.
    pub reloadable: bool,
    /// The value is never shown: [`Config::redacted_json`] prints [`REDACTED`] instead.
    pub secret: bool,
}

impl Field {
    /// A field that needs a restart to change and may be shown.
    const fn new(name: &'static str, rule: Rule, doc: &'static str) -> Field {
        Field {
            name,
            rule,
            doc,
            reloadable: false,
            secret: false,
        }
    }

    /// The same field, marked [`Field::reloadable`].
    const fn mark_reloadable(self) -> Field {
        Field {
            reloadable: true,
            ..self
        }
    }

    /// The same field, marked [`Field::secret`].
    const fn mark_secret(self) -> Field {
        Field {
            secret: true,
            ..self
        }
    }

    /// The default as a person reads it: `required`, `true`, `30000`, `none`, ...
    pub fn default_text(&self) -> String {
        match self.rule {
            Rule::Required => "required".to_string(),
            Rule::Bool { default } => default.to_string(),
            Rule::Int { default, .. } => default.to_string(),
            Rule::Custom { default } => default.to_string(),
        }
    }
}

/// What a [`Field`] holds when unset, and whether the table checks it.
///
/// `null` in the file means "not set" for every field that is not [`Rule::Required`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// Must be present (`id`, `secret`); checked by its own code in `Checker::config`.
    Required,
    /// `true` or `false`; checked entirely from the table.
    Bool {
        /// The value when unset.
        default: bool,
    },
    /// A non-negative integer in `min ..= max`; type and bounds are checked from the table
    /// (`must be between MIN and MAX, found N`, or `must be at least MIN, found N` without a
    /// maximum). Rules between fields are checked after it in `Checker::config`.
    Int {
        /// The value when unset.
        default: u64,
        /// Smallest accepted value.
        min: u64,
        /// Largest accepted value; `None`: no bound below `u64::MAX`.
        max: Option<u64>,
    },
    /// Checked by its own code in `Checker::config`.
    Custom {
        /// What an unset field becomes, in words.
        default: &'static str,
    },
}

/// MsgTier fields that are accepted (with a warning) but not used by msgtier.
const IGNORED_MSGTIER_FIELDS: &[&str] = &["disable_encryption", "upload_dir", "hot_reload"];

/// Why a config file could not be loaded. Display is always a single line starting with the
/// file name as it was given.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read (missing, unreadable, a directory, not UTF-8).
    #[error("{file}: cannot read: {source}")]
    Io {
        /// The file as it was given.
        file: String,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The text is not valid JSON5.
    #[error("{file}: {}{message}", position_prefix(.position))]
    Syntax {
        /// The file as it was given.
        file: String,
        /// Where the parser stopped, when it could tell.
        position: Option<TextPosition>,
        /// The parser's message, e.g. `expected comma`.
        message: String,
    },
    /// The text is valid JSON5 but its top level is not an object.
    #[error("{file}: expected a JSON object at the top level")]
    NotAnObject {
        /// The file as it was given.
        file: String,
    },
    /// One field has a wrong type or value, or a required field is missing.
    #[error("{file}: {field}: {problem}")]
    Field {
        /// The file as it was given.
        file: String,
        /// Path to the field, e.g. `listeners[1]`, `scripts.chrome`, `web_api`.
        field: String,
        /// What is wrong with it, one line.
        problem: String,
    },
}

/// A 1-based line and column in the config text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TextPosition {
    /// Line number, starting at 1.
    pub line: usize,
    /// Column (in characters) within the line, starting at 1.
    pub column: usize,
}

impl fmt::Display for TextPosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {} column {}", self.line, self.column)
    }
}

fn position_prefix(position: &Option<TextPosition>) -> String {
    match position {
        Some(p) => format!("{p}: "),
        None => String::new(),
    }
}

/// A successfully loaded config plus the non-fatal findings about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loaded {
    /// The validated config.
    pub config: Config,
    /// One line per finding, prefixed with the file name, e.g.
    /// `node.json: unknown field "foo" ignored`. Meant to be logged at warn level.
    pub warnings: Vec<String>,
}

/// The shared network secret. Its `Debug` (and `Serialize`) output is always `"<redacted>"`;
/// it has no `Display`. Use [`Secret::expose`] where the actual bytes are needed (key
/// derivation).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret itself. Never log or serialize the result.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(REDACTED)
    }
}

/// A node's validated configuration.
///
/// Its `Serialize` output is [`Config::redacted_json`] without the table's redaction pass:
/// endpoints as URL strings, `log` as a lowercase level name or null, paths as strings, pinned
/// keys in hex, and the secret as [`REDACTED`] (by [`Secret`]'s own `Serialize`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Config {
    /// This node's id, unique within its network: ASCII letters, digits, `.`, `_`, `-`,
    /// 1 to [`MAX_ID_CHARS`] characters.
    pub id: String,
    /// Shared network secret; nodes with a different secret are rejected.
    pub secret: Secret,
    /// Network name (same character rule as `id`), default [`DEFAULT_NETWORK`].
    pub network: String,
    /// Endpoints to bind; hosts are IP literals, port 0 lets the OS pick.
    pub listeners: Vec<Endpoint>,
    /// Seed peers to dial; hosts are IP literals or DNS names, ports 1-65535.
    pub peers: Vec<Endpoint>,
    /// Bind address of the HTTP API; `None` means no HTTP API.
    pub web_api: Option<SocketAddr>,
    /// Host names, besides IP literals and `localhost`, that the HTTP API accepts in a `Host`
    /// header (and as the host of an `Origin`), lowercase. Anything else is refused, so a web
    /// page whose name rebinds to this machine cannot drive the node.
    pub api_hosts: Vec<String>,
    /// The bearer token of the HTTP API (from `api_token` or read from `api_token_file`):
    /// when set, every call but `GET /health` must carry `Authorization: Bearer <token>`.
    /// Shown as [`REDACTED`] (or null when unset).
    pub api_token: Option<Secret>,
    /// Where `api_token` was read from, when it came from a file (absolute).
    #[serde(serialize_with = "opt_lossy_path")]
    pub api_token_file: Option<PathBuf>,
    /// Script name -> shell command, run when a peer sends a `script` message with that name.
    pub scripts: BTreeMap<String, String>,
    /// Script name -> the only node ids that may run it (`scripts` entries given as
    /// `{"command", "allow"}`); a script not listed here may be run by every member. Shown in
    /// [`Config::redacted_json`] inside `scripts`.
    #[serde(skip)]
    pub script_allow: BTreeMap<String, Vec<String>>,
    /// Foreign-network name patterns allowed to relay through this node (`*` = any, `?`/`*`
    /// wildcards); empty = none.
    pub relay_network_whitelist: Vec<String>,
    /// Admit nodes of networks the whitelist does not name, for control traffic only (route
    /// updates, pings, punch coordination); their data is dropped and counted.
    pub relay_all_peer_rpc: bool,
    /// Relayed data per foreign network, in bytes per second (about one second of burst);
    /// 0 = unlimited.
    pub foreign_relay_bps_limit: u64,
    /// Try to open a direct UDP path (hole punching) to members reached only through a relay.
    pub hole_punching: bool,
    /// Announce this node to the LAN's multicast group and dial the members heard there
    /// (`proto::lan`).
    pub lan_discovery: bool,
    /// The multicast groups beacons go to and are heard on (IPv4 and IPv6, any number).
    pub lan_discovery_group: Vec<SocketAddr>,
    /// Topic filters this node subscribes to (checked, without duplicates, at most
    /// [`crate::proto::topic::MAX_SUBSCRIPTIONS`]).
    pub subscriptions: Vec<String>,
    /// Largest `POST /publish` body.
    pub publish_max_bytes: usize,
    /// Publishes per second to one topic (0: no limit).
    pub publish_rate_per_topic: u64,
    /// Log level from the config, if any (the command line / environment may override it).
    #[serde(serialize_with = "level_name")]
    pub log: Option<log::LevelFilter>,
    /// Where the node keeps its identity and state; always absolute when the config came from
    /// [`load`] (relative paths in the file are resolved against the file's directory).
    #[serde(serialize_with = "lossy_path")]
    pub data_dir: PathBuf,
    /// Interval between heartbeats to each peer, in milliseconds (at least
    /// [`MIN_HEARTBEAT_INTERVAL_MS`]).
    pub heartbeat_interval_ms: u64,
    /// Silence from a peer after which it is dropped, in milliseconds; greater than
    /// `heartbeat_interval_ms`.
    pub peer_timeout_ms: u64,
    /// Dial the configured peers (and gossiped ones) automatically.
    pub auto_connect: bool,
    /// Largest frame sent or accepted, in bytes
    /// ([`MIN_MAX_FRAME_BYTES`]..=[`MAX_MAX_FRAME_BYTES`]).
    pub max_frame_bytes: usize,
    /// Free-form string metadata advertised to peers.
    pub metadata: BTreeMap<String, String>,
    /// Operator-pinned identity keys: node id -> X25519 public key. A pinned key is the only
    /// one accepted for that id (on links and in routing adverts), and it overrides a key the
    /// node learned before, e.g. after a peer's identity was regenerated.
    #[serde(serialize_with = "hex_keys")]
    pub pinned_keys: BTreeMap<String, [u8; 32]>,
    /// The network CA's Ed25519 public key: when set, a member's key is taken only with a
    /// certificate the CA signed for it (on links and in adverts), and this node needs its own
    /// `certificate`.
    #[serde(serialize_with = "opt_hex_key")]
    pub network_ca: Option<[u8; 32]>,
    /// This node's certificate from the network CA (checked against `network_ca`, `network`
    /// and `id` here, and against the identity key at start).
    #[serde(serialize_with = "opt_cert_text")]
    pub certificate: Option<crate::proto::cert::Certificate>,
    /// A script still running after this long is killed with its whole process group, in
    /// milliseconds ([`MIN_SCRIPT_TIMEOUT_MS`]..=[`MAX_SCRIPT_TIMEOUT_MS`]).
    pub script_timeout_ms: u64,
    /// Scripts running at once
    /// ([`MIN_MAX_CONCURRENT_SCRIPTS`]..=[`MAX_MAX_CONCURRENT_SCRIPTS`]).
    pub max_concurrent_scripts: usize,
    /// Script requests that may wait for a free slot; further requests are refused at once
    /// ([`MIN_MAX_SCRIPT_QUEUE`]..=[`MAX_MAX_SCRIPT_QUEUE`]).
    pub max_script_queue: usize,
    /// Bytes kept of a script's stdout, and separately of its stderr; the rest is read and
    /// dropped ([`MIN_MAX_SCRIPT_OUTPUT_BYTES`]..=[`MAX_MAX_SCRIPT_OUTPUT_BYTES`]).
    pub max_script_output_bytes: usize,
    /// Largest `/send` body, in bytes: [`MIN_MAX_BODY_BYTES`] up to `max_frame_bytes` -
    /// [`BODY_FRAME_RESERVE_BYTES`]. Defaults to [`DEFAULT_MAX_BODY_BYTES`] capped at that
    /// bound, which makes it 0 (only empty bodies) when `max_frame_bytes` is the minimum 4096.
    pub max_body_bytes: usize,
    /// Upper bound on a `/send` `timeout` header, in milliseconds
    /// ([`MIN_SEND_TIMEOUT_MAX_MS`]..=[`MAX_SEND_TIMEOUT_MAX_MS`]).
    pub send_timeout_max_ms: u64,
    /// ttl of a `/send` without a `ttl` header, in seconds; 0: live only.
    pub default_ttl_s: u64,
    /// Longest ttl accepted, in seconds.
    pub max_ttl_s: u64,
    /// Messages with a ttl not yet delivered, at most.
    pub outbox_max_messages: usize,
    /// Their body bytes, at most.
    pub outbox_max_bytes: usize,
    /// Largest body taken from others, in bytes.
    pub max_incoming_bytes: usize,
    /// Most links a message may have crossed to be taken.
    pub max_incoming_hops: u8,
    /// Messages taken from one sender per second (0: no limit).
    pub max_messages_per_sender_per_s: u64,
    /// This node carries durable messages for others, within these limits; `None`: it never
    /// stores others' messages.
    pub carrier: Option<CarrierConfig>,
    /// Plain messages the inbox keeps, at most.
    pub inbox_max_messages: u64,
    /// Body bytes the inbox keeps, at most.
    pub inbox_max_bytes: u64,
    /// Age beyond which the inbox forgets a message, in seconds.
    pub inbox_max_age_s: u64,
    /// The file this config came from (as given to [`parse`]), for messages. Not a field of
    /// the file, so not in [`FIELDS`].
    #[serde(serialize_with = "lossy_path")]
    pub source: PathBuf,
    /// SHA-256 of the text this config was parsed from, hex (what `/status` shows as the
    /// loaded file's hash). Not a field of the file.
    #[serde(skip)]
    pub source_sha256: String,
}

impl Config {
    /// The effective config as JSON: every field of [`FIELDS`] plus `source`, endpoints as URL
    /// strings, `log` as a lowercase level name or null, paths as strings, pinned keys in hex,
    /// and every [`Field::secret`] field as [`REDACTED`].
    pub fn redacted_json(&self) -> Value {
        // Cannot fail: every field serializes to a string, number, boolean, null, list or
        // string-keyed map, and none of the serializers used here returns an error.
        let mut json = serde_json::to_value(self).expect("a Config always serializes to JSON");
        if let Some(Value::Object(scripts)) = json.get_mut("scripts") {
            // A script with an allow list is shown as the file gives it: an object.
            for (name, allow) in &self.script_allow {
                if let Some(command) = scripts.get(name).cloned() {
                    scripts.insert(
                        name.clone(),
                        serde_json::json!({"command": command, "allow": allow}),
                    );
                }
            }
        }
        if let Value::Object(fields) = &mut json {
            // An unset secret stays null: whether a token is set is not a secret.
            for field in FIELDS.iter().filter(|f| f.secret) {
                if fields.get(field.name).is_some_and(|v| !v.is_null()) {
                    fields.insert(field.name.to_string(), Value::from(REDACTED));
                }
            }
        }
        json
    }

    /// The part of this config a running node can take on without a restart.
    pub fn reloadable(&self) -> Reloadable {
        Reloadable {
            peers: self.peers.clone(),
            scripts: self.scripts.clone(),
            script_allow: self.script_allow.clone(),
            api_token: self.api_token.clone(),
            relay_network_whitelist: self.relay_network_whitelist.clone(),
            relay_all_peer_rpc: self.relay_all_peer_rpc,
            foreign_relay_bps_limit: self.foreign_relay_bps_limit,
            log: self.log,
            script_timeout_ms: self.script_timeout_ms,
            max_concurrent_scripts: self.max_concurrent_scripts,
            max_script_queue: self.max_script_queue,
            max_script_output_bytes: self.max_script_output_bytes,
            pinned_keys: self.pinned_keys.clone(),
            subscriptions: self.subscriptions.clone(),
        }
    }

    /// The fields, by their [`FIELDS`] name and in its order, that differ between this
    /// (running) config and `new` and that only a restart can apply. Empty when `new` can be
    /// applied at run time through [`Config::reloadable`]. `source` is not compared.
    pub fn restart_needed(&self, new: &Config) -> Vec<&'static str> {
        self.changed_fields(new, false)
    }

    /// The [`Field::reloadable`] fields, by name and in [`FIELDS`] order, that differ between
    /// this config and `new`.
    pub fn reloadable_changes(&self, new: &Config) -> Vec<&'static str> {
        self.changed_fields(new, true)
    }

    /// The fields with [`Field::reloadable`] equal to `reloadable` that differ from `new`.
    fn changed_fields(&self, new: &Config, reloadable: bool) -> Vec<&'static str> {
        // One comparison for every field: its JSON form, which is complete and canonical
        // (sorted maps, URLs, lowercase level names). Secret fields are redacted there, so
        // they are compared directly (a unit test checks that these are all of them).
        let (old_json, new_json) = (self.redacted_json(), new.redacted_json());
        FIELDS
            .iter()
            .filter(|field| field.reloadable == reloadable)
            .filter(|field| {
                if field.secret {
                    self.secret_changed(new, field.name)
                } else {
                    old_json.get(field.name) != new_json.get(field.name)
                }
            })
            .map(|field| field.name)
            .collect()
    }

    /// Whether the [`Field::secret`] field `name` differs between this config and `new`
    /// (their JSON forms are both [`REDACTED`]).
    fn secret_changed(&self, new: &Config, name: &str) -> bool {
        match name {
            "secret" => self.secret != new.secret,
            "api_token" => self.api_token != new.api_token,
            other => unreachable!("secret field {other} has no comparison"),
        }
    }
}

/// What of a [`Config`] can change while the node runs: the fields marked
/// [`Field::reloadable`] in [`FIELDS`], with the same names, types and meaning as in
/// [`Config`].
///
/// This is what a hot reload hands over (`node::Reloader`): load the file again, check that
/// [`Config::restart_needed`] is empty, and give the new `Reloadable` to the actors that read
/// these fields. Each value is meant for what comes next (new links and dials, data relayed
/// from then on, scripts started later) without cutting short what is running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reloadable {
    /// [`Config::peers`]: seed peers to dial.
    pub peers: Vec<Endpoint>,
    /// [`Config::scripts`]: script name -> shell command.
    pub scripts: BTreeMap<String, String>,
    /// [`Config::script_allow`]: who may run which script.
    pub script_allow: BTreeMap<String, Vec<String>>,
    /// [`Config::api_token`] (from the config or its file): applies to the next request.
    pub api_token: Option<Secret>,
    /// [`Config::relay_network_whitelist`]: foreign networks allowed to relay through us.
    pub relay_network_whitelist: Vec<String>,
    /// [`Config::relay_all_peer_rpc`]: admit other foreign networks for control traffic.
    pub relay_all_peer_rpc: bool,
    /// [`Config::foreign_relay_bps_limit`]: relayed bytes per second per foreign network.
    pub foreign_relay_bps_limit: u64,
    /// [`Config::log`]: the configured log level.
    pub log: Option<log::LevelFilter>,
    /// [`Config::script_timeout_ms`]: applies to scripts started after the change.
    pub script_timeout_ms: u64,
    /// [`Config::max_concurrent_scripts`]: a lower value lets running scripts finish.
    pub max_concurrent_scripts: usize,
    /// [`Config::max_script_queue`]: a lower value refuses new requests, not waiting ones.
    pub max_script_queue: usize,
    /// [`Config::max_script_output_bytes`]: applies to scripts started after the change.
    pub max_script_output_bytes: usize,
    /// [`Config::pinned_keys`]: decides keys from now on; links up keep what they proved.
    pub pinned_keys: BTreeMap<String, [u8; 32]>,
    /// [`Config::subscriptions`]: advertised at once.
    pub subscriptions: Vec<String>,
}

/// Serializes [`Config::log`] as a lowercase level name, or null.
fn level_name<S: Serializer>(
    level: &Option<log::LevelFilter>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    level
        .map(|l| l.as_str().to_ascii_lowercase())
        .serialize(serializer)
}

/// Serializes a path as a string, replacing what is not UTF-8 (so it cannot fail).
fn lossy_path<S: Serializer>(path: &Path, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&path.to_string_lossy())
}

/// Serializes an optional path as a string, or null.
fn opt_lossy_path<S: Serializer>(path: &Option<PathBuf>, serializer: S) -> Result<S::Ok, S::Error> {
    path.as_ref()
        .map(|p| p.to_string_lossy().into_owned())
        .serialize(serializer)
}

/// Serializes an optional key as lowercase hex.
fn opt_hex_key<S: Serializer>(key: &Option<[u8; 32]>, serializer: S) -> Result<S::Ok, S::Error> {
    match key {
        Some(k) => serializer.serialize_str(&hex_encode(k)),
        None => serializer.serialize_none(),
    }
}

/// Serializes the certificate in its text form.
fn opt_cert_text<S: Serializer>(
    cert: &Option<crate::proto::cert::Certificate>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match cert {
        Some(c) => serializer.serialize_str(&c.to_text()),
        None => serializer.serialize_none(),
    }
}

/// Serializes [`Config::pinned_keys`] as node id -> lowercase hex.
fn hex_keys<S: Serializer>(
    keys: &BTreeMap<String, [u8; 32]>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_map(keys.iter().map(|(id, key)| (id, hex_encode(key))))
}

/// Reads and validates the config file at `path`.
///
/// Relative paths inside the file (`data_dir`) are resolved against the file's directory,
/// made absolute. Error and warning lines name the file as `path` displays.
///
/// # Errors
/// [`ConfigError::Io`] when the file cannot be read, otherwise as [`parse`].
pub fn load(path: &Path) -> Result<Loaded, ConfigError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
        file: file.clone(),
        source,
    })?;
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let base_dir = std::path::absolute(parent).unwrap_or_else(|_| parent.to_path_buf());
    parse(&file, &text, &base_dir)
}

/// Validates config `text`. `source_name` is used in messages and stored as
/// [`Config::source`]; relative paths in the text are resolved against `base_dir`.
///
/// # Errors
/// The first problem found: [`ConfigError::Syntax`] for invalid JSON5,
/// [`ConfigError::NotAnObject`], or [`ConfigError::Field`] naming the offending field.
pub fn parse(source_name: &str, text: &str, base_dir: &Path) -> Result<Loaded, ConfigError> {
    let root = parse_json5(source_name, text)?;
    let Value::Object(root) = root else {
        return Err(ConfigError::NotAnObject {
            file: source_name.to_string(),
        });
    };
    let mut checker = Checker {
        file: source_name,
        warnings: Vec::new(),
    };
    let mut config = checker.config(&root, base_dir)?;
    config.source_sha256 = {
        use sha2::{Digest, Sha256};
        hex::encode(Sha256::digest(text.as_bytes()))
    };
    Ok(Loaded {
        config,
        warnings: checker.warnings,
    })
}

fn parse_json5(file: &str, text: &str) -> Result<Value, ConfigError> {
    json5::from_str::<StrictValue>(text)
        .map(|v| v.0)
        .map_err(|err| {
            use json5::ErrorCode as C;
            let eof = matches!(
                err.code(),
                Some(
                    C::EofParsingArray
                        | C::EofParsingBool
                        | C::EofParsingComment
                        | C::EofParsingEscapeSequence
                        | C::EofParsingIdentifier
                        | C::EofParsingNull
                        | C::EofParsingNumber
                        | C::EofParsingObject
                        | C::EofParsingString
                        | C::EofParsingValue
                )
            );
            // EOF errors carry no position (or the enclosing collection's); the end of the text
            // is where the parser actually ran out.
            let position = if eof {
                Some(json5::Position::from_offset(text.len(), text))
            } else {
                err.position()
            };
            let message = match (err.code(), err.position()) {
                (Some(code), _) => code.to_string(),
                (None, Some(pos)) => {
                    let full = err.to_string();
                    full.strip_suffix(&format!(" at {pos}"))
                        .map(str::to_string)
                        .unwrap_or(full)
                }
                (None, None) => err.to_string(),
            };
            ConfigError::Syntax {
                file: file.to_string(),
                position: position.map(|p| TextPosition {
                    line: p.line + 1,
                    column: p.column + 1,
                }),
                message,
            }
        })
}

/// A [`Value`] built from JSON5 that rejects what `serde_json::Value` would silently accept:
/// duplicate object keys (last-one-wins hides mistakes) and NaN/Infinity (which would turn
/// into null).
struct StrictValue(Value);

impl<'de> Deserialize<'de> for StrictValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(StrictVisitor).map(StrictValue)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON5 value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        serde_json::Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| E::custom("NaN and Infinity are not allowed"))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        StrictValue::deserialize(deserializer).map(|v| v.0)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(StrictValue(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if object.contains_key(&key) {
                return Err(de::Error::custom(format!(
                    "duplicate key {key:?} in the object starting here"
                )));
            }
            let StrictValue(value) = map.next_value()?;
            object.insert(key, value);
        }
        Ok(Value::Object(object))
    }
}

/// The JSON type name of a value, for "expected X, found Y" messages.
fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// `parent.key`, or `parent["key"]` when the key is not a plain word.
fn child_path(parent: &str, key: &str) -> String {
    let plain = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if plain {
        format!("{parent}.{key}")
    } else {
        format!("{parent}[{key:?}]")
    }
}

/// Lowercase hex of a key.
fn hex_encode(key: &[u8; 32]) -> String {
    key.iter().map(|b| format!("{b:02x}")).collect()
}

/// Exactly 64 hex digits -> 32 bytes.
fn hex_decode_32(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// The wall clock, unix seconds (0 before 1970).
fn unix_now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn valid_id(s: &str) -> bool {
    (1..=MAX_ID_CHARS).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// `null` means "not set" for every optional field.
fn unless_null(value: Option<&Value>) -> Option<&Value> {
    value.filter(|v| !v.is_null())
}

/// The [`FIELDS`] entry of a field the checker parses by name.
///
/// # Panics
/// When `name` is not in [`FIELDS`]: a bug in this module, not in the file. Every load looks
/// up every such name, so any test that loads a config finds it.
fn table_entry(name: &'static str) -> &'static Field {
    match field(name) {
        Some(entry) => entry,
        None => panic!("{name} is missing from config::FIELDS"),
    }
}

/// Field-by-field validation state: the file name for messages and the warnings so far.
struct Checker<'a> {
    file: &'a str,
    warnings: Vec<String>,
}

impl Checker<'_> {
    fn err(&self, field: impl Into<String>, problem: impl Into<String>) -> ConfigError {
        ConfigError::Field {
            file: self.file.to_string(),
            field: field.into(),
            problem: problem.into(),
        }
    }

    fn warn(&mut self, line: impl fmt::Display) {
        self.warnings.push(format!("{}: {line}", self.file));
    }

    fn config(
        &mut self,
        root: &Map<String, Value>,
        base_dir: &Path,
    ) -> Result<Config, ConfigError> {
        let get = |key: &str| unless_null(root.get(key));

        let id = match root.get("id") {
            None => return Err(self.err("id", "missing required field")),
            Some(v) => self.string("id", v)?,
        };
        if !valid_id(&id) {
            return Err(self.err(
                "id",
                format!(
                    "{id:?} is not a valid id (letters, digits, '.', '_', '-', 1-{MAX_ID_CHARS} characters)"
                ),
            ));
        }

        let secret = match root.get("secret") {
            None => return Err(self.err("secret", "missing required field")),
            // Only the type is named on errors: the value must never appear in a message.
            Some(v) => self.string("secret", v)?,
        };
        if secret.trim().is_empty() {
            return Err(self.err("secret", "must not be empty"));
        }

        let network = match get("network") {
            None => DEFAULT_NETWORK.to_string(),
            Some(v) => self.string("network", v)?,
        };
        if !valid_id(&network) {
            return Err(self.err(
                "network",
                format!(
                    "{network:?} is not a valid network name (letters, digits, '.', '_', '-', 1-{MAX_ID_CHARS} characters)"
                ),
            ));
        }

        let listeners = self.endpoints("listeners", get("listeners"), true)?;
        let peers = self.endpoints("peers", get("peers"), false)?;

        let web_api = match get("web_api") {
            None => None,
            Some(v) => {
                let s = self.string("web_api", v)?;
                Some(s.parse::<SocketAddr>().map_err(|_| {
                    self.err(
                        "web_api",
                        format!(
                            "{s:?} is not a valid address (expected IP:port, e.g. \"127.0.0.1:9000\" or \"[::1]:9000\")"
                        ),
                    )
                })?)
            }
        };

        let api_hosts = self.api_hosts(get("api_hosts"))?;
        let (api_token, api_token_file) =
            self.api_token(get("api_token"), get("api_token_file"), base_dir)?;
        if let Some(addr) = web_api.filter(|a| !a.ip().is_loopback()) {
            if api_token.is_none() {
                self.warn(format!(
                    "web_api: {addr} is reachable from other machines and no api_token is set: \
                     whoever reaches it can send messages and run scripts as this node"
                ));
            }
        }
        let (scripts, script_allow) = self.scripts(get("scripts"))?;
        let relay_network_whitelist = self.whitelist(get("relay_network_whitelist"))?;
        let relay_all_peer_rpc = self.flag(root, "relay_all_peer_rpc")?;
        let foreign_relay_bps_limit = self.int(root, "foreign_relay_bps_limit")?;
        let hole_punching = self.flag(root, "hole_punching")?;
        let lan_discovery = self.flag(root, "lan_discovery")?;
        let subscriptions = self.subscriptions(get("subscriptions"))?;
        let lan_discovery_group = match get("lan_discovery_group") {
            None => [
                crate::proto::lan::DEFAULT_GROUP_V4,
                crate::proto::lan::DEFAULT_GROUP_V6,
            ]
            .iter()
            .map(|g| g.parse().expect("the default groups parse"))
            .collect(),
            Some(v) => {
                let list = match v {
                    Value::Array(items) => items.clone(),
                    other => vec![other.clone()],
                };
                let mut groups = Vec::new();
                for (i, item) in list.iter().enumerate() {
                    let field = if matches!(v, Value::Array(_)) {
                        format!("lan_discovery_group[{i}]")
                    } else {
                        "lan_discovery_group".to_string()
                    };
                    let s = self.string(&field, item)?;
                    let addr: SocketAddr = s.parse().map_err(|_| {
                        self.err(
                            &field,
                            format!("{s:?} is not IP:port (e.g. \"239.255.77.1:17771\")"),
                        )
                    })?;
                    if !addr.ip().is_multicast() || addr.port() == 0 {
                        return Err(self.err(
                            &field,
                            format!("{s:?} is not a multicast group with a port"),
                        ));
                    }
                    groups.push(addr);
                }
                groups
            }
        };

        let log = match get("log") {
            None => None,
            Some(v) => {
                let s = self.string("log", v)?;
                Some(s.trim().parse::<log::LevelFilter>().map_err(|_| {
                    self.err(
                        "log",
                        format!(
                            "unknown log level {s:?} (expected trace, debug, info, warn, error or off)"
                        ),
                    )
                })?)
            }
        };

        let data_dir = match get("data_dir") {
            None => default_data_dir(&id, base_dir),
            Some(v) => {
                let s = self.string("data_dir", v)?;
                if s.trim().is_empty() {
                    return Err(self.err("data_dir", "must not be empty"));
                }
                resolve_dir(&s, base_dir)
            }
        };

        let heartbeat_interval_ms = self.int(root, "heartbeat_interval_ms")?;
        let peer_timeout_ms = self.int(root, "peer_timeout_ms")?;
        if peer_timeout_ms <= heartbeat_interval_ms {
            return Err(self.err(
                "peer_timeout_ms",
                format!("must be greater than heartbeat_interval_ms ({heartbeat_interval_ms})"),
            ));
        }

        let auto_connect = self.flag(root, "auto_connect")?;
        let max_frame_bytes = self.size(root, "max_frame_bytes")?;

        let metadata = self.string_map("metadata", get("metadata"))?;
        let pinned_keys = self
            .string_map("pinned_keys", get("pinned_keys"))?
            .into_iter()
            .map(|(id, hex)| {
                let field = child_path("pinned_keys", &id);
                if !valid_id(&id) {
                    return Err(self.err(field, format!("{id:?} is not a valid node id")));
                }
                let key = hex_decode_32(hex.trim()).ok_or_else(|| {
                    self.err(
                        &field,
                        "expected 64 hex characters (a node's public_key from /status)",
                    )
                })?;
                Ok((id, key))
            })
            .collect::<Result<BTreeMap<_, _>, ConfigError>>()?;

        let network_ca = match get("network_ca") {
            None => None,
            Some(v) => {
                let s = self.string("network_ca", v)?;
                Some(hex_decode_32(s.trim()).ok_or_else(|| {
                    self.err(
                        "network_ca",
                        "expected 64 hex characters (the key `msgtier ca init` printed)",
                    )
                })?)
            }
        };
        let certificate = match get("certificate") {
            None => None,
            Some(v) => {
                let s = self.string("certificate", v)?;
                let cert = crate::proto::cert::Certificate::from_text(&s)
                    .map_err(|e| self.err("certificate", e.to_string()))?;
                Some(cert)
            }
        };
        match (&network_ca, &certificate) {
            (Some(_), None) => self.warn(
                "network_ca: set but `certificate` is not: members that check this CA refuse \
                 this node (get one with msgtier ca sign)",
            ),
            (None, Some(_)) => {
                self.warn("certificate: ignored without `network_ca` (the CA that signed it)")
            }
            (Some(_), Some(cert)) => {
                // The CA's signature and the identity key are checked at start, once the
                // identity is loaded (`node::start`).
                if cert.network != network || cert.node_id != id {
                    return Err(self.err(
                        "certificate",
                        format!(
                            "issued for {:?} in network {:?}, not for this node ({id:?} in {network:?})",
                            cert.node_id, cert.network
                        ),
                    ));
                }
                if cert.not_after_unix_s < unix_now_s() {
                    return Err(self.err(
                        "certificate",
                        format!("expired at unix time {}", cert.not_after_unix_s),
                    ));
                }
            }
            (None, None) => {}
        }

        let script_timeout_ms = self.int(root, "script_timeout_ms")?;
        let max_concurrent_scripts = self.size(root, "max_concurrent_scripts")?;
        let max_script_queue = self.size(root, "max_script_queue")?;
        let max_script_output_bytes = self.size(root, "max_script_output_bytes")?;
        let max_body_bytes = self.max_body_bytes(get("max_body_bytes"), max_frame_bytes)?;
        let publish_max_bytes = self.int(root, "publish_max_bytes")? as usize;
        let publish_rate_per_topic = self.int(root, "publish_rate_per_topic")?;
        let send_timeout_max_ms = self.int(root, "send_timeout_max_ms")?;
        let default_ttl_s = self.int(root, "default_ttl_s")?;
        let max_ttl_s = self.int(root, "max_ttl_s")?;
        if default_ttl_s > max_ttl_s {
            return Err(self.err(
                "default_ttl_s",
                format!("must be at most max_ttl_s ({max_ttl_s}), found {default_ttl_s}"),
            ));
        }
        let outbox_max_messages = self.size(root, "outbox_max_messages")?;
        let outbox_max_bytes = self.size(root, "outbox_max_bytes")?;
        let max_incoming_bytes = self.size(root, "max_incoming_bytes")?;
        let max_incoming_hops = self.int(root, "max_incoming_hops")? as u8;
        let max_messages_per_sender_per_s = self.int(root, "max_messages_per_sender_per_s")?;
        let carrier = self.carrier(get("carrier"))?;
        let inbox_max_messages = self.int(root, "inbox_max_messages")?;
        let inbox_max_bytes = self.int(root, "inbox_max_bytes")?;
        let inbox_max_age_s = self.int(root, "inbox_max_age_s")?;

        self.unknown_fields(root);

        Ok(Config {
            id,
            secret: Secret(secret),
            network,
            listeners,
            peers,
            web_api,
            api_hosts,
            api_token,
            api_token_file,
            scripts,
            script_allow,
            relay_network_whitelist,
            relay_all_peer_rpc,
            foreign_relay_bps_limit,
            hole_punching,
            lan_discovery,
            lan_discovery_group,
            subscriptions,
            publish_max_bytes,
            publish_rate_per_topic,
            log,
            data_dir,
            heartbeat_interval_ms,
            peer_timeout_ms,
            auto_connect,
            max_frame_bytes,
            metadata,
            pinned_keys,
            network_ca,
            certificate,
            script_timeout_ms,
            max_concurrent_scripts,
            max_script_queue,
            max_script_output_bytes,
            max_body_bytes,
            send_timeout_max_ms,
            default_ttl_s,
            max_ttl_s,
            outbox_max_messages,
            outbox_max_bytes,
            max_incoming_bytes,
            max_incoming_hops,
            max_messages_per_sender_per_s,
            carrier,
            inbox_max_messages,
            inbox_max_bytes,
            inbox_max_age_s,
            source: PathBuf::from(self.file),
            source_sha256: String::new(),
        })
    }

    fn string(&self, field: &str, value: &Value) -> Result<String, ConfigError> {
        match value {
            Value::String(s) => Ok(s.clone()),
            other => Err(self.err(field, format!("expected a string, found {}", kind(other)))),
        }
    }

    fn boolean(
        &self,
        field: &str,
        value: Option<&Value>,
        default: bool,
    ) -> Result<bool, ConfigError> {
        match value {
            None => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(other) => Err(self.err(
                field,
                format!("expected true or false, found {}", kind(other)),
            )),
        }
    }

    fn integer(
        &self,
        field: &str,
        value: Option<&Value>,
        default: u64,
    ) -> Result<u64, ConfigError> {
        match value {
            None => Ok(default),
            Some(Value::Number(n)) => n.as_u64().ok_or_else(|| {
                self.err(field, format!("expected a non-negative integer, found {n}"))
            }),
            Some(other) => Err(self.err(
                field,
                format!("expected a non-negative integer, found {}", kind(other)),
            )),
        }
    }

    /// A [`Rule::Bool`] field of [`FIELDS`]: its default when unset, else `true` or `false`.
    fn flag(&self, root: &Map<String, Value>, name: &'static str) -> Result<bool, ConfigError> {
        let Rule::Bool { default } = table_entry(name).rule else {
            panic!("{name} is not a Rule::Bool field in FIELDS");
        };
        self.boolean(name, unless_null(root.get(name)), default)
    }

    /// A [`Rule::Int`] field of [`FIELDS`]: its default when unset, else a non-negative integer
    /// within the entry's bounds.
    fn int(&self, root: &Map<String, Value>, name: &'static str) -> Result<u64, ConfigError> {
        let Rule::Int { default, min, max } = table_entry(name).rule else {
            panic!("{name} is not a Rule::Int field in FIELDS");
        };
        let n = self.integer(name, unless_null(root.get(name)), default)?;
        if n >= min && max.is_none_or(|max| n <= max) {
            Ok(n)
        } else {
            Err(self.out_of_range(name, min, max, n))
        }
    }

    /// [`Checker::int`] for a count or size held as `usize`.
    fn size(&self, root: &Map<String, Value>, name: &'static str) -> Result<usize, ConfigError> {
        let n = self.int(root, name)?;
        // The bounds of every usize field in FIELDS are usize constants, so a value within
        // them fits; this only matters for an entry without a maximum on a 32-bit target.
        usize::try_from(n).map_err(|_| self.out_of_range(name, 0, Some(usize::MAX as u64), n))
    }

    /// `must be between MIN and MAX, found N`, or `must be at least MIN, found N`.
    fn out_of_range(&self, field: &str, min: u64, max: Option<u64>, n: u64) -> ConfigError {
        match max {
            Some(max) => self.err(field, format!("must be between {min} and {max}, found {n}")),
            None => self.err(field, format!("must be at least {min}, found {n}")),
        }
    }

    /// `max_body_bytes`: at most `max_frame_bytes` - [`BODY_FRAME_RESERVE_BYTES`], so a body
    /// always fits in a frame with its envelope. Unset, it is [`DEFAULT_MAX_BODY_BYTES`] capped
    /// at that bound.
    fn max_body_bytes(
        &self,
        value: Option<&Value>,
        max_frame_bytes: usize,
    ) -> Result<usize, ConfigError> {
        const FIELD: &str = "max_body_bytes";
        let bound = max_frame_bytes.saturating_sub(BODY_FRAME_RESERVE_BYTES);
        let Some(value) = value else {
            return Ok(DEFAULT_MAX_BODY_BYTES.min(bound));
        };
        let n = self.integer(FIELD, Some(value), 0)?;
        if bound < MIN_MAX_BODY_BYTES {
            return Err(self.err(
                FIELD,
                format!(
                    "max_frame_bytes ({max_frame_bytes}) leaves no room for a body: it must be greater than {BODY_FRAME_RESERVE_BYTES} to set max_body_bytes"
                ),
            ));
        }
        usize::try_from(n)
            .ok()
            .filter(|n| (MIN_MAX_BODY_BYTES..=bound).contains(n))
            .ok_or_else(|| {
                self.err(
                    FIELD,
                    format!(
                        "must be between {MIN_MAX_BODY_BYTES} and {bound} (max_frame_bytes {max_frame_bytes} minus {BODY_FRAME_RESERVE_BYTES}), found {n}"
                    ),
                )
            })
    }

    /// `listeners` / `peers`: an array of URL strings, parsed and checked for the role.
    fn endpoints(
        &self,
        field: &str,
        value: Option<&Value>,
        listener: bool,
    ) -> Result<Vec<Endpoint>, ConfigError> {
        let items = match value {
            None => return Ok(Vec::new()),
            Some(Value::Array(items)) => items,
            Some(other) => {
                return Err(self.err(
                    field,
                    format!("expected an array of URL strings, found {}", kind(other)),
                ))
            }
        };
        let mut endpoints: Vec<Endpoint> = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let path = format!("{field}[{i}]");
            let Value::String(url) = item else {
                return Err(self.err(path, format!("expected a URL string, found {}", kind(item))));
            };
            let endpoint: Endpoint = url
                .parse()
                .map_err(|e: EndpointError| self.err(&path, e.to_string()))?;
            if listener {
                if let Host::Name(name) = &endpoint.host {
                    return Err(self.err(
                        path,
                        format!(
                            "listener host must be an IP address (e.g. 0.0.0.0 or 127.0.0.1), found {name:?} in {url:?}"
                        ),
                    ));
                }
            } else if endpoint.port == 0 {
                return Err(self.err(
                    path,
                    format!("port 0 is not allowed for a peer in {url:?} (expected 1-65535)"),
                ));
            }
            for (j, earlier) in endpoints.iter().enumerate() {
                if *earlier == endpoint && (endpoint.port != 0 || !listener) {
                    return Err(self.err(
                        path,
                        format!("duplicate of {field}[{j}] ({:?})", earlier.to_string()),
                    ));
                }
                if listener
                    && endpoint.port != 0
                    && earlier.host == endpoint.host
                    && earlier.port == endpoint.port
                    && earlier.transport.uses_tcp_port()
                    && endpoint.transport.uses_tcp_port()
                {
                    return Err(self.err(
                        path,
                        format!(
                            "{url:?} conflicts with {field}[{j}] ({:?}): tcp and ws listeners both need TCP port {}",
                            earlier.to_string(),
                            endpoint.port
                        ),
                    ));
                }
            }
            endpoints.push(endpoint);
        }
        Ok(endpoints)
    }

    /// `scripts`: name -> command, each a string or `{"command": ..., "allow": [ids]}`; answers
    /// the commands and the allow lists.
    #[allow(clippy::type_complexity)]
    fn scripts(
        &self,
        value: Option<&Value>,
    ) -> Result<(BTreeMap<String, String>, BTreeMap<String, Vec<String>>), ConfigError> {
        let mut scripts = BTreeMap::new();
        let mut allow_lists = BTreeMap::new();
        let object = match value {
            None => return Ok((scripts, allow_lists)),
            Some(Value::Object(object)) => object,
            Some(other) => {
                return Err(self.err(
                    "scripts",
                    format!(
                        "expected an object of commands (strings or {{\"command\", \"allow\"}}), found {}",
                        kind(other)
                    ),
                ))
            }
        };
        for (name, v) in object {
            let path = child_path("scripts", name);
            match v {
                Value::Object(entry) => {
                    for key in entry.keys() {
                        if key != "command" && key != "allow" {
                            return Err(self.err(
                                &path,
                                format!("unknown key {key:?} (expected \"command\" and \"allow\")"),
                            ));
                        }
                    }
                    let command = match entry.get("command") {
                        Some(c) => self.string(&format!("{path}.command"), c)?,
                        None => return Err(self.err(&path, "missing \"command\"")),
                    };
                    let allow = match entry.get("allow") {
                        None => None,
                        Some(Value::Array(ids)) => {
                            let mut list = Vec::new();
                            for (i, id) in ids.iter().enumerate() {
                                let item = format!("{path}.allow[{i}]");
                                let id = self.string(&item, id)?;
                                if !crate::wire::frame::valid_id(&id) {
                                    return Err(self.err(&item, format!("{id:?} is not a node id")));
                                }
                                list.push(id);
                            }
                            Some(list)
                        }
                        Some(other) => {
                            return Err(self.err(
                                format!("{path}.allow"),
                                format!("expected an array of node ids, found {}", kind(other)),
                            ))
                        }
                    };
                    scripts.insert(name.clone(), command);
                    if let Some(list) = allow {
                        allow_lists.insert(name.clone(), list);
                    }
                }
                other => {
                    scripts.insert(name.clone(), self.string(&path, other)?);
                }
            }
        }
        for (name, command) in &scripts {
            if name.trim().is_empty() {
                return Err(self.err(
                    "scripts",
                    format!("script name must not be empty (found {name:?})"),
                ));
            }
            if command.trim().is_empty() {
                return Err(self.err(child_path("scripts", name), "command must not be empty"));
            }
        }
        Ok((scripts, allow_lists))
    }

    /// `carrier`: absent or null (not a carrier), or an object of optional limits.
    fn carrier(&self, value: Option<&Value>) -> Result<Option<CarrierConfig>, ConfigError> {
        const FIELD: &str = "carrier";
        let object = match value {
            None | Some(Value::Null) => return Ok(None),
            Some(Value::Object(o)) => o,
            Some(other) => {
                return Err(self.err(
                    FIELD,
                    format!(
                        "expected an object {{quota_bytes, per_origin_quota_bytes, max_ttl_s}} or null, found {}",
                        kind(other)
                    ),
                ))
            }
        };
        let mut c = CarrierConfig::default();
        for (key, v) in object {
            let path = child_path(FIELD, key);
            let n = match v {
                Value::Number(n) => n.as_u64(),
                _ => None,
            }
            .ok_or_else(|| {
                self.err(
                    &path,
                    format!("expected a non-negative integer, found {}", kind(v)),
                )
            })?;
            match key.as_str() {
                "quota_bytes" if n >= 1024 => c.quota_bytes = n,
                "per_origin_quota_bytes" if n >= 1024 => c.per_origin_quota_bytes = n,
                "max_ttl_s" if (1..=MAX_TTL_S).contains(&n) => c.max_ttl_s = n,
                "quota_bytes" | "per_origin_quota_bytes" => {
                    return Err(self.err(&path, format!("must be at least 1024, found {n}")))
                }
                "max_ttl_s" => {
                    return Err(self.err(&path, format!("must be between 1 and {MAX_TTL_S}, found {n}")))
                }
                other => {
                    return Err(self.err(
                        FIELD,
                        format!("unknown key {other:?} (expected quota_bytes, per_origin_quota_bytes, max_ttl_s)"),
                    ))
                }
            }
        }
        Ok(Some(c))
    }

    /// An object whose values are all strings.
    fn string_map(
        &self,
        field: &str,
        value: Option<&Value>,
    ) -> Result<BTreeMap<String, String>, ConfigError> {
        let object = match value {
            None => return Ok(BTreeMap::new()),
            Some(Value::Object(object)) => object,
            Some(other) => {
                return Err(self.err(
                    field,
                    format!("expected an object of strings, found {}", kind(other)),
                ))
            }
        };
        object
            .iter()
            .map(|(key, v)| Ok((key.clone(), self.string(&child_path(field, key), v)?)))
            .collect()
    }

    /// An array of host names (letters, digits, `.`, `-`), kept lowercase.
    fn api_hosts(&self, value: Option<&Value>) -> Result<Vec<String>, ConfigError> {
        const FIELD: &str = "api_hosts";
        let items = match value {
            None => return Ok(Vec::new()),
            Some(Value::Array(items)) => items,
            Some(other) => {
                return Err(self.err(
                    FIELD,
                    format!("expected an array of host names, found {}", kind(other)),
                ))
            }
        };
        items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                let path = format!("{FIELD}[{i}]");
                let host = self.string(&path, item)?;
                let valid = !host.is_empty()
                    && host.len() <= 253
                    && host
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-');
                if valid {
                    Ok(host.to_ascii_lowercase())
                } else {
                    Err(self.err(
                        path,
                        format!("{host:?} is not a host name (letters, digits, '.', '-')"),
                    ))
                }
            })
            .collect()
    }

    /// `api_token` or the first line of `api_token_file` (not both): 16 to 256 visible ASCII
    /// characters, so it fits an `Authorization` header and is not guessable by length alone.
    fn api_token(
        &mut self,
        inline: Option<&Value>,
        file: Option<&Value>,
        base_dir: &Path,
    ) -> Result<(Option<Secret>, Option<PathBuf>), ConfigError> {
        let check = |this: &Self, field: &str, token: &str| -> Result<Secret, ConfigError> {
            let len = token.chars().count();
            if !(MIN_API_TOKEN_CHARS..=MAX_API_TOKEN_CHARS).contains(&len) {
                return Err(this.err(
                    field,
                    format!(
                        "a token of {len} characters (expected {MIN_API_TOKEN_CHARS} to \
                         {MAX_API_TOKEN_CHARS}; e.g. openssl rand -hex 32)"
                    ),
                ));
            }
            if !token.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(this.err(
                    field,
                    "the token must be visible ASCII characters only (no spaces)",
                ));
            }
            Ok(Secret::new(token))
        };
        match (inline, file) {
            (None, None) => Ok((None, None)),
            (Some(_), Some(_)) => Err(self.err(
                "api_token_file",
                "set either api_token or api_token_file, not both",
            )),
            (Some(v), None) => {
                let s = self.string("api_token", v)?;
                Ok((Some(check(self, "api_token", &s)?), None))
            }
            (None, Some(v)) => {
                let raw = self.string("api_token_file", v)?;
                let path = resolve_dir(&raw, base_dir);
                let text = std::fs::read_to_string(&path).map_err(|e| {
                    self.err(
                        "api_token_file",
                        format!("cannot read {}: {e}", path.display()),
                    )
                })?;
                let line = text.lines().next().unwrap_or("").trim();
                let token = check(self, "api_token_file", line)?;
                #[cfg(unix)]
                {
                    use std::os::unix::fs::PermissionsExt;
                    if let Ok(meta) = std::fs::metadata(&path) {
                        if meta.permissions().mode() & 0o077 != 0 {
                            self.warn(format!(
                                "api_token_file: {} can be read by other users (chmod 600 it)",
                                path.display()
                            ));
                        }
                    }
                }
                Ok((Some(token), Some(path)))
            }
        }
    }

    /// `subscriptions`: absent, one filter, or an array of filters (NATS syntax, checked);
    /// duplicates are dropped, more than [`crate::proto::topic::MAX_SUBSCRIPTIONS`] refused.
    fn subscriptions(&self, value: Option<&Value>) -> Result<Vec<String>, ConfigError> {
        const FIELD: &str = "subscriptions";
        let max = crate::proto::topic::MAX_SUBSCRIPTIONS;
        let items: Vec<(String, &Value)> = match value {
            None | Some(Value::Null) => return Ok(Vec::new()),
            Some(v @ Value::String(_)) => vec![(FIELD.to_string(), v)],
            Some(Value::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(i, v)| (format!("{FIELD}[{i}]"), v))
                .collect(),
            Some(other) => {
                return Err(self.err(
                    FIELD,
                    format!(
                        "expected a topic filter or an array of them, found {}",
                        kind(other)
                    ),
                ))
            }
        };
        if items.len() > max {
            return Err(self.err(
                FIELD,
                format!("at most {max} filters, found {}", items.len()),
            ));
        }
        let mut filters: Vec<String> = Vec::new();
        for (path, item) in items {
            let filter = self.string(&path, item)?;
            crate::proto::topic::check_filter(&filter)
                .map_err(|e| self.err(&path, format!("topic filter {filter:?} {e}")))?;
            if !filters.contains(&filter) {
                filters.push(filter);
            }
        }
        Ok(filters)
    }

    /// `"*"`, a space-separated pattern string, or an array of patterns.
    fn whitelist(&self, value: Option<&Value>) -> Result<Vec<String>, ConfigError> {
        const FIELD: &str = "relay_network_whitelist";
        match value {
            None => Ok(Vec::new()),
            Some(Value::String(s)) => Ok(s.split_whitespace().map(str::to_string).collect()),
            Some(Value::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(i, item)| {
                    let path = format!("{FIELD}[{i}]");
                    let pattern = self.string(&path, item)?;
                    if pattern.is_empty() {
                        Err(self.err(path, "pattern must not be empty"))
                    } else if pattern.chars().any(char::is_whitespace) {
                        Err(self.err(
                            path,
                            format!("pattern {pattern:?} must not contain whitespace"),
                        ))
                    } else {
                        Ok(pattern)
                    }
                })
                .collect(),
            Some(other) => Err(self.err(
                FIELD,
                format!(
                    "expected \"*\", a space-separated string or an array of strings, found {}",
                    kind(other)
                ),
            )),
        }
    }

    /// Warnings for MsgTier fields msgtier ignores and for unknown fields.
    /// Sorted by field name, so the order does not depend on serde_json's map features.
    fn unknown_fields(&mut self, root: &Map<String, Value>) {
        let mut entries: Vec<(&String, &Value)> = root.iter().collect();
        entries.sort_by_key(|(key, _)| *key);
        for (key, value) in entries {
            if field(key).is_some() {
                continue;
            }
            match key.as_str() {
                "disable_encryption" if value == &Value::Bool(true) => self.warn(
                    "disable_encryption: encryption cannot be disabled in msgtier; field ignored",
                ),
                "disable_encryption" => {
                    self.warn("disable_encryption: ignored (encryption is always on)")
                }
                k if IGNORED_MSGTIER_FIELDS.contains(&k) => self.warn(format_args!(
                    "{k}: MsgTier field not used by msgtier; ignored"
                )),
                k => match suggestion(k) {
                    Some(known) => self.warn(format_args!(
                        "unknown field {k:?} ignored (did you mean {known:?}?)"
                    )),
                    None => self.warn(format_args!("unknown field {k:?} ignored")),
                },
            }
        }
    }
}

/// The known field closest to a misspelt one, if it is close enough to be a likely typo.
fn suggestion(unknown: &str) -> Option<&'static str> {
    let unknown = unknown.to_ascii_lowercase();
    FIELDS
        .iter()
        .map(|known| (edit_distance(&unknown, known.name), known.name))
        .filter(|(d, known)| *d <= 2.min(known.len() / 3))
        .min()
        .map(|(_, known)| known)
}

/// Levenshtein distance over chars.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (diagonal + usize::from(ca != *cb))
                .min(row[j] + 1)
                .min(above + 1);
            diagonal = above;
        }
    }
    row[b.len()]
}

/// `dirs::data_dir()/msgtier/<id>`, or `base_dir/.msgtier/<id>` where there is none.
fn default_data_dir(id: &str, base_dir: &Path) -> PathBuf {
    match dirs::data_dir() {
        Some(dir) => dir.join("msgtier").join(id),
        None => base_dir.join(".msgtier").join(id),
    }
}

/// Absolute paths as they are, `~` / `~/...` under the home directory, anything else relative
/// to `base_dir`.
fn resolve_dir(raw: &str, base_dir: &Path) -> PathBuf {
    let home_relative = if raw == "~" {
        Some("")
    } else {
        raw.strip_prefix("~/")
    };
    if let (Some(rest), Some(home)) = (home_relative, dirs::home_dir()) {
        return home.join(rest);
    }
    let path = Path::new(raw);
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        base_dir.join(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "s3cret-value-do-not-print";

    fn base() -> &'static Path {
        Path::new("/srv/msgtier")
    }

    /// A minimal valid config with `extra` fields appended (JSON5 fragment, no trailing comma).
    fn with(extra: &str) -> String {
        let sep = if extra.is_empty() { "" } else { ", " };
        format!(r#"{{"id": "n1", "secret": "{SECRET}"{sep}{extra}}}"#)
    }

    fn ok(text: &str) -> Loaded {
        match parse("node.json", text, base()) {
            Ok(loaded) => loaded,
            Err(e) => panic!("expected success, got: {e}"),
        }
    }

    fn err(text: &str) -> String {
        match parse("node.json", text, base()) {
            Ok(loaded) => panic!("expected an error, got {:?}", loaded.config),
            Err(e) => {
                let msg = e.to_string();
                assert!(!msg.contains('\n'), "multi-line error: {msg}");
                assert!(!msg.contains(SECRET), "secret leaked: {msg}");
                msg
            }
        }
    }

    // ---- the exact messages from the spec ----

    #[test]
    fn error_unknown_scheme() {
        assert_eq!(
            err(&with(
                r#""listeners": ["udp://0.0.0.0:1", "quic://0.0.0.0:2"]"#
            )),
            r#"node.json: listeners[1]: unknown scheme "quic" (expected udp, tcp or ws)"#
        );
    }

    #[test]
    fn error_missing_id() {
        assert_eq!(
            err(r#"{"secret": "x"}"#),
            "node.json: id: missing required field"
        );
    }

    #[test]
    fn error_invalid_id() {
        assert_eq!(
            err(r#"{"id": "a b", "secret": "x"}"#),
            r#"node.json: id: "a b" is not a valid id (letters, digits, '.', '_', '-', 1-64 characters)"#
        );
        err(r#"{"id": "", "secret": "x"}"#);
        err(&format!(r#"{{"id": "{}", "secret": "x"}}"#, "a".repeat(65)));
        ok(&format!(r#"{{"id": "{}", "secret": "x"}}"#, "a".repeat(64)));
        ok(r#"{"id": "Node_1.example-2", "secret": "x"}"#);
    }

    #[test]
    fn error_empty_secret() {
        assert_eq!(
            err(r#"{"id": "n1", "secret": ""}"#),
            "node.json: secret: must not be empty"
        );
        assert_eq!(
            err(r#"{"id": "n1"}"#),
            "node.json: secret: missing required field"
        );
    }

    #[test]
    fn error_peer_missing_port() {
        assert_eq!(
            err(&with(r#""peers": ["tcp://127.0.0.1"]"#)),
            r#"node.json: peers[0]: missing port in "tcp://127.0.0.1""#
        );
    }

    #[test]
    fn error_integer_field_given_a_string() {
        assert_eq!(
            err(&with(r#""heartbeat_interval_ms": "10s""#)),
            "node.json: heartbeat_interval_ms: expected a non-negative integer, found string"
        );
    }

    #[test]
    fn error_peer_timeout_not_greater_than_heartbeat() {
        assert_eq!(
            err(&with(r#""peer_timeout_ms": 5000"#)),
            "node.json: peer_timeout_ms: must be greater than heartbeat_interval_ms (10000)"
        );
        assert_eq!(
            err(&with(
                r#""heartbeat_interval_ms": 2000, "peer_timeout_ms": 2000"#
            )),
            "node.json: peer_timeout_ms: must be greater than heartbeat_interval_ms (2000)"
        );
    }

    #[test]
    fn error_missing_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("absent.json");
        let e = load(&path).unwrap_err();
        assert!(matches!(e, ConfigError::Io { .. }));
        let msg = e.to_string();
        assert!(
            msg.starts_with(&format!("{}: cannot read: ", path.display())),
            "{msg}"
        );
        assert!(!msg.contains('\n'));
    }

    #[test]
    fn error_syntax_has_line_and_column() {
        assert_eq!(
            err("{\n  \"id\": \"n1\"\n  \"secret\": \"x\"\n}"),
            "node.json: line 3 column 3: expected comma"
        );
        // Running out of text is reported at the end of the text.
        assert_eq!(
            err("{\n  \"id\": \"n1\",\n"),
            "node.json: line 3 column 1: EOF parsing object"
        );
        assert_eq!(err(""), "node.json: line 1 column 1: EOF parsing value");
        assert!(matches!(
            parse("node.json", "{,}", base()),
            Err(ConfigError::Syntax {
                position: Some(TextPosition { line: 1, column: 2 }),
                ..
            })
        ));
    }

    #[test]
    fn error_duplicate_key_and_non_finite_numbers() {
        assert_eq!(
            err(r#"{"id": "a", "secret": "x", "id": "b"}"#),
            r#"node.json: line 1 column 1: duplicate key "id" in the object starting here"#
        );
        let msg = err(&with(r#""foreign_relay_bps_limit": NaN"#));
        assert!(msg.contains("NaN and Infinity are not allowed"), "{msg}");
    }

    #[test]
    fn error_top_level_not_an_object() {
        assert_eq!(
            err("[1, 2]"),
            "node.json: expected a JSON object at the top level"
        );
        assert_eq!(
            err("\"x\""),
            "node.json: expected a JSON object at the top level"
        );
    }

    // ---- field rules: wrong types ----

    #[test]
    fn wrong_type_for_string_fields() {
        assert_eq!(
            err(r#"{"id": 5, "secret": "x"}"#),
            "node.json: id: expected a string, found number"
        );
        assert_eq!(
            err(r#"{"id": null, "secret": "x"}"#),
            "node.json: id: expected a string, found null"
        );
        assert_eq!(
            err(r#"{"id": "n1", "secret": ["x"]}"#),
            "node.json: secret: expected a string, found array"
        );
        assert_eq!(
            err(&with(r#""network": true"#)),
            "node.json: network: expected a string, found boolean"
        );
        assert_eq!(
            err(&with(r#""data_dir": {}"#)),
            "node.json: data_dir: expected a string, found object"
        );
        assert_eq!(
            err(&with(r#""data_dir": " ""#)),
            "node.json: data_dir: must not be empty"
        );
        assert_eq!(
            err(&with(r#""log": 3"#)),
            "node.json: log: expected a string, found number"
        );
    }

    #[test]
    fn invalid_network_name() {
        assert_eq!(
            err(&with(r#""network": "my net""#)),
            r#"node.json: network: "my net" is not a valid network name (letters, digits, '.', '_', '-', 1-64 characters)"#
        );
    }

    #[test]
    fn wrong_type_for_endpoint_lists() {
        assert_eq!(
            err(&with(r#""listeners": "tcp://0.0.0.0:1""#)),
            "node.json: listeners: expected an array of URL strings, found string"
        );
        assert_eq!(
            err(&with(r#""peers": {}"#)),
            "node.json: peers: expected an array of URL strings, found object"
        );
        assert_eq!(
            err(&with(r#""peers": ["tcp://1.2.3.4:5", 7]"#)),
            "node.json: peers[1]: expected a URL string, found number"
        );
    }

    #[test]
    fn api_hosts_rules() {
        assert_eq!(
            err(&with(r#""api_hosts": "node.lan""#)),
            "node.json: api_hosts: expected an array of host names, found string"
        );
        assert_eq!(
            err(&with(r#""api_hosts": ["ok.lan", "bad host"]"#)),
            r#"node.json: api_hosts[1]: "bad host" is not a host name (letters, digits, '.', '-')"#
        );
        let hosts = ok(&with(r#""api_hosts": ["Node.LAN"]"#)).config.api_hosts;
        assert_eq!(hosts, ["node.lan"]);
        assert!(ok(&with("")).config.api_hosts.is_empty());
    }

    #[test]
    fn api_token_rules() {
        let token = "s3cr3t-t0ken-0123456789";
        let config = ok(&with(&format!(r#""api_token": "{token}""#))).config;
        assert_eq!(config.api_token.as_ref().map(Secret::expose), Some(token));
        let json = config.redacted_json();
        assert_eq!(json["api_token"], REDACTED);
        assert!(!json.to_string().contains(token));
        assert!(!format!("{config:?}").contains(token));
        assert!(ok(&with("")).config.redacted_json()["api_token"].is_null());
        assert_eq!(
            err(&with(r#""api_token": "short""#)),
            "node.json: api_token: a token of 5 characters (expected 16 to 256; e.g. openssl rand -hex 32)"
        );
        assert_eq!(
            err(&with(r#""api_token": "with a space in it 0123""#)),
            "node.json: api_token: the token must be visible ASCII characters only (no spaces)"
        );
        assert_eq!(
            err(&with(
                r#""api_token": "0123456789abcdef", "api_token_file": "t""#
            )),
            "node.json: api_token_file: set either api_token or api_token_file, not both"
        );
        let missing = err(&with(r#""api_token_file": "/nonexistent/token""#));
        assert!(
            missing.starts_with("node.json: api_token_file: cannot read /nonexistent/token: "),
            "{missing}"
        );
        // From a file: the first line, trimmed; a readable-by-others file is a warning.
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), format!("{token}\nignored\n")).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(file.path(), std::fs::Permissions::from_mode(0o644)).unwrap();
        let loaded = ok(&with(&format!(
            r#""api_token_file": {:?}"#,
            file.path().display().to_string()
        )));
        assert_eq!(
            loaded.config.api_token.as_ref().map(Secret::expose),
            Some(token)
        );
        assert!(
            loaded
                .warnings
                .iter()
                .any(|w| w.contains("can be read by other users")),
            "{:?}",
            loaded.warnings
        );
        // A web API open to other machines without a token is a warning, with one it is not.
        let open = ok(&with(r#""web_api": "0.0.0.0:9000""#));
        assert!(
            open.warnings
                .iter()
                .any(|w| w.starts_with("node.json: web_api: 0.0.0.0:9000 is reachable")),
            "{:?}",
            open.warnings
        );
        let guarded = ok(&with(&format!(
            r#""web_api": "0.0.0.0:9000", "api_token": "{token}""#
        )));
        assert!(guarded.warnings.is_empty(), "{:?}", guarded.warnings);
        assert!(ok(&with(r#""web_api": "127.0.0.1:9000""#))
            .warnings
            .is_empty());
    }

    #[test]
    fn web_api_rules() {
        assert_eq!(
            err(&with(r#""web_api": 9000"#)),
            "node.json: web_api: expected a string, found number"
        );
        assert_eq!(
            err(&with(r#""web_api": "localhost:9000""#)),
            r#"node.json: web_api: "localhost:9000" is not a valid address (expected IP:port, e.g. "127.0.0.1:9000" or "[::1]:9000")"#
        );
        err(&with(r#""web_api": "::1:9000""#));
        err(&with(r#""web_api": "127.0.0.1""#));
        let v6 = ok(&with(r#""web_api": "[::1]:9000""#)).config;
        assert_eq!(v6.web_api, Some("[::1]:9000".parse().unwrap()));
        assert_eq!(ok(&with(r#""web_api": null"#)).config.web_api, None);
    }

    #[test]
    fn carrier_rules() {
        assert_eq!(ok(&with("")).config.carrier, None);
        assert_eq!(
            ok(&with(r#""carrier": {}"#)).config.carrier,
            Some(CarrierConfig::default())
        );
        let c = ok(&with(
            r#""carrier": {"quota_bytes": 4096, "max_ttl_s": 60}"#,
        ))
        .config;
        assert_eq!(c.carrier.unwrap().quota_bytes, 4096);
        assert_eq!(c.carrier.unwrap().max_ttl_s, 60);
        assert_eq!(
            err(&with(r#""carrier": {"quota_bytes": 10}"#)),
            "node.json: carrier.quota_bytes: must be at least 1024, found 10"
        );
        assert_eq!(
            err(&with(r#""carrier": {"quota": 10}"#)),
            r#"node.json: carrier: unknown key "quota" (expected quota_bytes, per_origin_quota_bytes, max_ttl_s)"#
        );
        assert_eq!(
            err(&with(r#""carrier": true"#)),
            "node.json: carrier: expected an object {quota_bytes, per_origin_quota_bytes, max_ttl_s} or null, found boolean"
        );
        assert_eq!(
            err(&with(r#""default_ttl_s": 100, "max_ttl_s": 50"#)),
            "node.json: default_ttl_s: must be at most max_ttl_s (50), found 100"
        );
    }

    #[test]
    fn scripts_rules() {
        assert_eq!(
            err(&with(r#""scripts": ["echo"]"#)),
            r#"node.json: scripts: expected an object of commands (strings or {"command", "allow"}), found array"#
        );
        assert_eq!(
            err(&with(
                r#""scripts": {"d": {"command": "x", "allow": ["ok", "not ok"]}}"#
            )),
            r#"node.json: scripts.d.allow[1]: "not ok" is not a node id"#
        );
        assert_eq!(
            err(&with(r#""scripts": {"d": {"allow": []}}"#)),
            r#"node.json: scripts.d: missing "command""#
        );
        assert_eq!(
            err(&with(r#""scripts": {"d": {"command": "x", "alow": []}}"#)),
            r#"node.json: scripts.d: unknown key "alow" (expected "command" and "allow")"#
        );
        let c = ok(&with(
            r#""scripts": {"d": {"command": "x", "allow": ["b"]}, "e": "y"}"#,
        ))
        .config;
        assert_eq!(c.scripts["d"], "x");
        assert_eq!(c.script_allow["d"], ["b"]);
        assert!(!c.script_allow.contains_key("e"));
        assert_eq!(c.redacted_json()["scripts"]["d"]["allow"][0], "b");
        assert_eq!(
            err(&with(r#""scripts": {"chrome": 1}"#)),
            "node.json: scripts.chrome: expected a string, found number"
        );
        assert_eq!(
            err(&with(r#""scripts": {"chrome": "  "}"#)),
            "node.json: scripts.chrome: command must not be empty"
        );
        assert_eq!(
            err(&with(r#""scripts": {"my script": ""}"#)),
            r#"node.json: scripts["my script"]: command must not be empty"#
        );
        assert_eq!(
            err(&with(r#""scripts": {" ": "ls"}"#)),
            r#"node.json: scripts: script name must not be empty (found " ")"#
        );
    }

    #[test]
    fn whitelist_rules() {
        assert_eq!(
            err(&with(r#""relay_network_whitelist": 1"#)),
            r#"node.json: relay_network_whitelist: expected "*", a space-separated string or an array of strings, found number"#
        );
        assert_eq!(
            err(&with(r#""relay_network_whitelist": ["a", 2]"#)),
            "node.json: relay_network_whitelist[1]: expected a string, found number"
        );
        assert_eq!(
            err(&with(r#""relay_network_whitelist": ["a", ""]"#)),
            "node.json: relay_network_whitelist[1]: pattern must not be empty"
        );
        assert_eq!(
            err(&with(r#""relay_network_whitelist": ["a b"]"#)),
            r#"node.json: relay_network_whitelist[0]: pattern "a b" must not contain whitespace"#
        );
    }

    #[test]
    fn lan_discovery_fields() {
        let c = ok(&with("")).config;
        assert!(c.lan_discovery);
        let groups: Vec<String> = c
            .lan_discovery_group
            .iter()
            .map(|g| g.to_string())
            .collect();
        assert_eq!(groups, ["239.255.77.1:17771", "[ff12::6d74]:17771"]);
        let c = ok(&with(
            r#""lan_discovery": false, "lan_discovery_group": "239.1.2.3:9""#,
        ))
        .config;
        assert!(!c.lan_discovery);
        assert_eq!(c.lan_discovery_group, ["239.1.2.3:9".parse().unwrap()]);
        assert_eq!(
            err(&with(
                r#""lan_discovery_group": ["239.1.2.3:9", "10.0.0.1:9"]"#
            )),
            r#"node.json: lan_discovery_group[1]: "10.0.0.1:9" is not a multicast group with a port"#
        );
        assert_eq!(
            err(&with(r#""lan_discovery_group": "239.1.2.3""#)),
            r#"node.json: lan_discovery_group: "239.1.2.3" is not IP:port (e.g. "239.255.77.1:17771")"#
        );
        assert_eq!(
            err(&with(r#""lan_discovery_group": 5"#)),
            "node.json: lan_discovery_group: expected a string, found number"
        );
    }

    #[test]
    fn whitelist_forms() {
        let list = |v: &str| {
            ok(&with(&format!(r#""relay_network_whitelist": {v}"#)))
                .config
                .relay_network_whitelist
        };
        assert_eq!(list(r#""*""#), vec!["*"]);
        assert_eq!(list(r#""home office-*""#), vec!["home", "office-*"]);
        assert_eq!(list(r#"["a", "b?"]"#), vec!["a", "b?"]);
        assert_eq!(list(r#""""#), Vec::<String>::new());
        assert_eq!(list("[]"), Vec::<String>::new());
        assert_eq!(list("null"), Vec::<String>::new());
    }

    #[test]
    fn boolean_rules() {
        assert_eq!(
            err(&with(r#""relay_all_peer_rpc": "yes""#)),
            "node.json: relay_all_peer_rpc: expected true or false, found string"
        );
        assert_eq!(
            err(&with(r#""auto_connect": 1"#)),
            "node.json: auto_connect: expected true or false, found number"
        );
        let c = ok(&with(
            r#""relay_all_peer_rpc": true, "auto_connect": false"#,
        ))
        .config;
        assert!(c.relay_all_peer_rpc);
        assert!(!c.auto_connect);
    }

    #[test]
    fn integer_rules() {
        assert_eq!(
            err(&with(r#""foreign_relay_bps_limit": -1"#)),
            "node.json: foreign_relay_bps_limit: expected a non-negative integer, found -1"
        );
        assert_eq!(
            err(&with(r#""foreign_relay_bps_limit": 1.5"#)),
            "node.json: foreign_relay_bps_limit: expected a non-negative integer, found 1.5"
        );
        assert_eq!(
            err(&with(r#""foreign_relay_bps_limit": "1MB""#)),
            "node.json: foreign_relay_bps_limit: expected a non-negative integer, found string"
        );
        let c = ok(&with(r#""foreign_relay_bps_limit": 1048576"#)).config;
        assert_eq!(c.foreign_relay_bps_limit, 1_048_576);
        assert_eq!(
            err(&with(r#""heartbeat_interval_ms": 9"#)),
            "node.json: heartbeat_interval_ms: must be at least 10, found 9"
        );
        assert_eq!(
            err(&with(r#""peer_timeout_ms": true"#)),
            "node.json: peer_timeout_ms: expected a non-negative integer, found boolean"
        );
        let c = ok(&with(
            r#""heartbeat_interval_ms": 10, "peer_timeout_ms": 11"#,
        ))
        .config;
        assert_eq!((c.heartbeat_interval_ms, c.peer_timeout_ms), (10, 11));
    }

    #[test]
    fn max_frame_bytes_range() {
        assert_eq!(
            err(&with(r#""max_frame_bytes": 4095"#)),
            "node.json: max_frame_bytes: must be between 4096 and 4194304, found 4095"
        );
        assert_eq!(
            err(&with(r#""max_frame_bytes": 4194305"#)),
            "node.json: max_frame_bytes: must be between 4096 and 4194304, found 4194305"
        );
        assert_eq!(
            err(&with(r#""max_frame_bytes": []"#)),
            "node.json: max_frame_bytes: expected a non-negative integer, found array"
        );
        let frame = |n: u64| {
            ok(&with(&format!(r#""max_frame_bytes": {n}"#)))
                .config
                .max_frame_bytes
        };
        assert_eq!(frame(4096), 4096);
        assert_eq!(frame(4 * 1024 * 1024), 4 * 1024 * 1024);
    }

    #[test]
    fn script_timeout_ms_range() {
        assert_eq!(
            err(&with(r#""script_timeout_ms": 0"#)),
            "node.json: script_timeout_ms: must be between 1 and 86400000, found 0"
        );
        assert_eq!(
            err(&with(r#""script_timeout_ms": 86400001"#)),
            "node.json: script_timeout_ms: must be between 1 and 86400000, found 86400001"
        );
        assert_eq!(
            err(&with(r#""script_timeout_ms": "30s""#)),
            "node.json: script_timeout_ms: expected a non-negative integer, found string"
        );
        assert_eq!(
            err(&with(r#""script_timeout_ms": -5"#)),
            "node.json: script_timeout_ms: expected a non-negative integer, found -5"
        );
        let get = |n: u64| {
            ok(&with(&format!(r#""script_timeout_ms": {n}"#)))
                .config
                .script_timeout_ms
        };
        assert_eq!(get(1), 1);
        assert_eq!(get(86_400_000), 86_400_000);
    }

    #[test]
    fn max_concurrent_scripts_range() {
        assert_eq!(
            err(&with(r#""max_concurrent_scripts": 0"#)),
            "node.json: max_concurrent_scripts: must be between 1 and 256, found 0"
        );
        assert_eq!(
            err(&with(r#""max_concurrent_scripts": 257"#)),
            "node.json: max_concurrent_scripts: must be between 1 and 256, found 257"
        );
        assert_eq!(
            err(&with(r#""max_concurrent_scripts": 2.5"#)),
            "node.json: max_concurrent_scripts: expected a non-negative integer, found 2.5"
        );
        assert_eq!(
            err(&with(r#""max_concurrent_scripts": 18446744073709551615"#)),
            "node.json: max_concurrent_scripts: must be between 1 and 256, found 18446744073709551615"
        );
        let get = |n: u64| {
            ok(&with(&format!(r#""max_concurrent_scripts": {n}"#)))
                .config
                .max_concurrent_scripts
        };
        assert_eq!(get(1), 1);
        assert_eq!(get(256), 256);
    }

    #[test]
    fn max_script_queue_range() {
        assert_eq!(
            err(&with(r#""max_script_queue": 10001"#)),
            "node.json: max_script_queue: must be between 0 and 10000, found 10001"
        );
        assert_eq!(
            err(&with(r#""max_script_queue": false"#)),
            "node.json: max_script_queue: expected a non-negative integer, found boolean"
        );
        let get = |n: u64| {
            ok(&with(&format!(r#""max_script_queue": {n}"#)))
                .config
                .max_script_queue
        };
        assert_eq!(get(0), 0);
        assert_eq!(get(10_000), 10_000);
    }

    #[test]
    fn max_script_output_bytes_range() {
        assert_eq!(
            err(&with(r#""max_script_output_bytes": 1023"#)),
            "node.json: max_script_output_bytes: must be between 1024 and 16777216, found 1023"
        );
        assert_eq!(
            err(&with(r#""max_script_output_bytes": 16777217"#)),
            "node.json: max_script_output_bytes: must be between 1024 and 16777216, found 16777217"
        );
        assert_eq!(
            err(&with(r#""max_script_output_bytes": []"#)),
            "node.json: max_script_output_bytes: expected a non-negative integer, found array"
        );
        let get = |n: u64| {
            ok(&with(&format!(r#""max_script_output_bytes": {n}"#)))
                .config
                .max_script_output_bytes
        };
        assert_eq!(get(1024), 1024);
        assert_eq!(get(16 * 1024 * 1024), 16 * 1024 * 1024);
    }

    #[test]
    fn max_body_bytes_range() {
        assert_eq!(
            err(&with(r#""max_body_bytes": 0"#)),
            "node.json: max_body_bytes: must be between 1 and 1044480 (max_frame_bytes 1048576 minus 4096), found 0"
        );
        assert_eq!(
            err(&with(r#""max_body_bytes": 1048576"#)),
            "node.json: max_body_bytes: must be between 1 and 1044480 (max_frame_bytes 1048576 minus 4096), found 1048576"
        );
        assert_eq!(
            err(&with(r#""max_frame_bytes": 8192, "max_body_bytes": 4097"#)),
            "node.json: max_body_bytes: must be between 1 and 4096 (max_frame_bytes 8192 minus 4096), found 4097"
        );
        assert_eq!(
            err(&with(r#""max_frame_bytes": 4096, "max_body_bytes": 1"#)),
            "node.json: max_body_bytes: max_frame_bytes (4096) leaves no room for a body: it must be greater than 4096 to set max_body_bytes"
        );
        assert_eq!(
            err(&with(r#""max_body_bytes": "1MiB""#)),
            "node.json: max_body_bytes: expected a non-negative integer, found string"
        );
        let get = |extra: &str| ok(&with(extra)).config.max_body_bytes;
        assert_eq!(get(r#""max_body_bytes": 1"#), 1);
        assert_eq!(get(r#""max_body_bytes": 1044480"#), 1_044_480);
        assert_eq!(
            get(r#""max_frame_bytes": 8192, "max_body_bytes": 4096"#),
            4096
        );
        // Unset: 1 MiB, capped so that it fits a frame.
        assert_eq!(get(r#""max_frame_bytes": 4194304"#), 1_048_576);
        assert_eq!(get(r#""max_frame_bytes": 8192"#), 4096);
        assert_eq!(get(r#""max_frame_bytes": 4096"#), 0);
    }

    #[test]
    fn send_timeout_max_ms_range() {
        assert_eq!(
            err(&with(r#""send_timeout_max_ms": 999"#)),
            "node.json: send_timeout_max_ms: must be between 1000 and 600000, found 999"
        );
        assert_eq!(
            err(&with(r#""send_timeout_max_ms": 600001"#)),
            "node.json: send_timeout_max_ms: must be between 1000 and 600000, found 600001"
        );
        assert_eq!(
            err(&with(r#""send_timeout_max_ms": {}"#)),
            "node.json: send_timeout_max_ms: expected a non-negative integer, found object"
        );
        let get = |n: u64| {
            ok(&with(&format!(r#""send_timeout_max_ms": {n}"#)))
                .config
                .send_timeout_max_ms
        };
        assert_eq!(get(1000), 1000);
        assert_eq!(get(600_000), 600_000);
    }

    #[test]
    fn script_and_send_limits_in_redacted_json() {
        let json = ok(&with(
            r#""script_timeout_ms": 5, "max_concurrent_scripts": 2, "max_script_queue": 0, "max_script_output_bytes": 2048, "max_body_bytes": 100, "send_timeout_max_ms": 1000"#,
        ))
        .config
        .redacted_json();
        assert_eq!(json["script_timeout_ms"], 5);
        assert_eq!(json["max_concurrent_scripts"], 2);
        assert_eq!(json["max_script_queue"], 0);
        assert_eq!(json["max_script_output_bytes"], 2048);
        assert_eq!(json["max_body_bytes"], 100);
        assert_eq!(json["send_timeout_max_ms"], 1000);
    }

    #[test]
    fn pinned_keys_rules() {
        let key = "ab".repeat(32);
        let c = ok(&with(&format!(r#""pinned_keys": {{"n2": "{key}"}}"#))).config;
        assert_eq!(c.pinned_keys["n2"], [0xab; 32]);
        assert_eq!(
            err(&with(r#""pinned_keys": {"n2": "abc"}"#)),
            "node.json: pinned_keys.n2: expected 64 hex characters (a node's public_key from /status)"
        );
        assert_eq!(
            err(&with(&format!(r#""pinned_keys": {{"a b": "{key}"}}"#))),
            r#"node.json: pinned_keys["a b"]: "a b" is not a valid node id"#
        );
        assert_eq!(
            err(&with(r#""pinned_keys": ["x"]"#)),
            "node.json: pinned_keys: expected an object of strings, found array"
        );
    }

    #[test]
    fn network_ca_and_certificate_rules() {
        let ca = crate::identity::Identity::from_private([5; 32]);
        let ca_hex = hex_encode(&ca.signing_public());
        let cert = |id: &str, network: &str, not_after: u64| {
            crate::proto::cert::Certificate::issue(&ca, network, id, [1; 32], not_after).to_text()
        };
        let later = unix_now_s() + 86_400;
        let both = |c: &str| {
            with(&format!(
                r#""network_ca": "{ca_hex}", "certificate": "{c}""#
            ))
        };
        let loaded = ok(&both(&cert("n1", DEFAULT_NETWORK, later)));
        assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
        assert_eq!(loaded.config.network_ca, Some(ca.signing_public()));
        assert_eq!(
            err(&with(r#""network_ca": "abc""#)),
            "node.json: network_ca: expected 64 hex characters (the key `msgtier ca init` printed)"
        );
        assert_eq!(
            err(&both("nonsense")),
            "node.json: certificate: not a msgtier certificate (no msgtier-cert-v1: prefix)"
        );
        assert_eq!(
            err(&both(&cert("n9", DEFAULT_NETWORK, later))),
            r#"node.json: certificate: issued for "n9" in network "default", not for this node ("n1" in "default")"#
        );
        assert!(err(&both(&cert("n1", DEFAULT_NETWORK, 5))).contains("expired at unix time 5"));
        let alone = ok(&with(&format!(r#""network_ca": "{ca_hex}""#)));
        assert!(alone.warnings[0].contains("network_ca: set but `certificate` is not"));
        // Shown in /config in their text forms.
        let shown = loaded.config.redacted_json();
        assert_eq!(shown["network_ca"], ca_hex);
        assert!(shown["certificate"]
            .as_str()
            .unwrap()
            .starts_with("msgtier-cert-v1:"));
    }

    #[test]
    fn metadata_rules() {
        assert_eq!(
            err(&with(r#""metadata": "x""#)),
            "node.json: metadata: expected an object of strings, found string"
        );
        assert_eq!(
            err(&with(r#""metadata": {"region": 1}"#)),
            "node.json: metadata.region: expected a string, found number"
        );
        let c = ok(&with(r#""metadata": {"region": "cn-north", "rack": ""}"#)).config;
        assert_eq!(c.metadata["region"], "cn-north");
        assert_eq!(c.metadata["rack"], "");
    }

    #[test]
    fn log_levels_in_any_case() {
        let level = |s: &str| ok(&with(&format!(r#""log": "{s}""#))).config.log;
        use log::LevelFilter as L;
        assert_eq!(level("Debug"), Some(L::Debug));
        assert_eq!(level("INFO"), Some(L::Info));
        assert_eq!(level("warn"), Some(L::Warn));
        assert_eq!(level("Error"), Some(L::Error));
        assert_eq!(level("trace"), Some(L::Trace));
        assert_eq!(level("Off"), Some(L::Off));
        assert_eq!(ok(&with(r#""log": null"#)).config.log, None);
        assert_eq!(
            err(&with(r#""log": "verbose""#)),
            r#"node.json: log: unknown log level "verbose" (expected trace, debug, info, warn, error or off)"#
        );
    }

    // ---- endpoints (URL parsing itself is tested in `addr`) ----

    #[test]
    fn peer_url_errors_name_the_field() {
        assert_eq!(
            err(&with(r#""peers": ["127.0.0.1:5"]"#)),
            r#"node.json: peers[0]: missing scheme in "127.0.0.1:5" (expected udp://, tcp:// or ws://)"#
        );
    }

    #[test]
    fn endpoint_port_rules() {
        assert_eq!(
            err(&with(r#""peers": ["tcp://1.2.3.4:0"]"#)),
            r#"node.json: peers[0]: port 0 is not allowed for a peer in "tcp://1.2.3.4:0" (expected 1-65535)"#
        );
        let c = ok(&with(
            r#""listeners": ["tcp://0.0.0.0:0", "udp://0.0.0.0:65535"]"#,
        ))
        .config;
        assert_eq!(c.listeners[0].port, 0);
        assert_eq!(c.listeners[1].port, 65535);
    }

    #[test]
    fn listener_hosts_must_be_ip_literals() {
        assert_eq!(
            err(&with(r#""listeners": ["tcp://localhost:6667"]"#)),
            r#"node.json: listeners[0]: listener host must be an IP address (e.g. 0.0.0.0 or 127.0.0.1), found "localhost" in "tcp://localhost:6667""#
        );
        let c = ok(&with(
            r#""peers": ["udp://Example.ORG:5", "ws://[::1]:80"]"#,
        ))
        .config;
        assert_eq!(c.peers[0].host, Host::Name("example.org".into()));
        assert_eq!(c.peers[0].socket_addr(), None);
        assert_eq!(c.peers[1].socket_addr(), Some("[::1]:80".parse().unwrap()));
    }

    #[test]
    fn duplicate_and_conflicting_endpoints() {
        assert_eq!(
            err(&with(r#""peers": ["tcp://1.2.3.4:5", "TCP://1.2.3.4:5"]"#)),
            r#"node.json: peers[1]: duplicate of peers[0] ("tcp://1.2.3.4:5")"#
        );
        assert_eq!(
            err(&with(
                r#""listeners": ["tcp://127.0.0.1:7", "ws://127.0.0.1:7"]"#
            )),
            r#"node.json: listeners[1]: "ws://127.0.0.1:7" conflicts with listeners[0] ("tcp://127.0.0.1:7"): tcp and ws listeners both need TCP port 7"#
        );
        // udp and tcp on one port, and several OS-picked ports, are fine.
        ok(&with(
            r#""listeners": ["udp://127.0.0.1:7", "tcp://127.0.0.1:7", "tcp://0.0.0.0:0", "ws://0.0.0.0:0"]"#,
        ));
    }

    // ---- whole configs ----

    #[test]
    fn defaults_applied() {
        let Loaded { config, warnings } = ok(&with(""));
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(config.id, "n1");
        assert_eq!(config.secret.expose(), SECRET);
        assert_eq!(config.network, DEFAULT_NETWORK);
        assert!(config.listeners.is_empty());
        assert!(config.peers.is_empty());
        assert_eq!(config.web_api, None);
        assert!(config.scripts.is_empty());
        assert!(config.relay_network_whitelist.is_empty());
        assert!(!config.relay_all_peer_rpc);
        assert_eq!(config.foreign_relay_bps_limit, 0);
        assert_eq!(config.log, None);
        assert_eq!(config.data_dir, default_data_dir("n1", base()));
        assert!(config.data_dir.ends_with("msgtier/n1"));
        assert_eq!(config.heartbeat_interval_ms, DEFAULT_HEARTBEAT_INTERVAL_MS);
        assert_eq!(config.peer_timeout_ms, DEFAULT_PEER_TIMEOUT_MS);
        assert!(config.auto_connect);
        assert_eq!(config.max_frame_bytes, 1_048_576);
        assert!(config.metadata.is_empty());
        assert_eq!(config.script_timeout_ms, 30_000);
        assert_eq!(config.max_concurrent_scripts, 4);
        assert_eq!(config.max_script_queue, 64);
        assert_eq!(config.max_script_output_bytes, 1_048_576);
        // 1 MiB capped at max_frame_bytes - 4096.
        assert_eq!(config.max_body_bytes, 1_044_480);
        assert_eq!(config.send_timeout_max_ms, 60_000);
        assert_eq!(config.source, PathBuf::from("node.json"));
    }

    #[test]
    fn null_means_default_for_optional_fields() {
        let nulls = FIELDS
            .iter()
            .map(|f| f.name)
            .filter(|f| !matches!(*f, "id" | "secret"))
            .map(|f| format!(r#""{f}": null"#))
            .collect::<Vec<_>>()
            .join(", ");
        // Equal but for the hash of their (different) texts.
        let (mut nulled, plain) = (ok(&with(&nulls)).config, ok(&with("")).config);
        assert_ne!(nulled.source_sha256, plain.source_sha256);
        nulled.source_sha256.clone_from(&plain.source_sha256);
        assert_eq!(nulled, plain);
    }

    #[test]
    fn msgtier_readme_sample_loads() {
        let text = r#"{
          "id": "node-1",
          "secret": "your-network-secret",
          "listeners": [
            "udp://0.0.0.0:5668",
            "tcp://0.0.0.0:5669",
            "ws://0.0.0.0:5670"
            // "quic://0.0.0.0:5671"
          ],
          "peers": [
            "udp://127.0.0.1:10101",
            "tcp://127.0.0.1:10102",
            "ws://127.0.0.1:10103"
          ],
          "web_api": "127.0.0.1:9000",
          "scripts": {
            "check_in": "./config/check_in.sh",
            "chrome": "open /Applications/Google\\ Chrome.app",
            "echo": "echo 'echo'"
          },
          "relay_network_whitelist": "*",
          "relay_all_peer_rpc": true,
          "foreign_relay_bps_limit": 1048576,
          "log": "Debug",
          "metadata": { "region": "cn-north" }
        }"#;
        let Loaded { config, warnings } = ok(text);
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(config.id, "node-1");
        let urls: Vec<String> = config.listeners.iter().map(|e| e.to_string()).collect();
        assert_eq!(
            urls,
            [
                "udp://0.0.0.0:5668",
                "tcp://0.0.0.0:5669",
                "ws://0.0.0.0:5670"
            ]
        );
        assert_eq!(config.peers.len(), 3);
        assert_eq!(config.peers[2].transport, Transport::Ws);
        assert_eq!(config.web_api, Some("127.0.0.1:9000".parse().unwrap()));
        assert_eq!(
            config.scripts["chrome"],
            "open /Applications/Google\\ Chrome.app"
        );
        assert_eq!(config.relay_network_whitelist, vec!["*"]);
        assert!(config.relay_all_peer_rpc);
        assert_eq!(config.log, Some(log::LevelFilter::Debug));
    }

    #[test]
    fn json5_comments_trailing_commas_and_unquoted_keys() {
        let text = "// leading comment\n{\n  /* block */ id: 'n1', // trailing\n  secret: \"x\",\n  peers: ['tcp://1.2.3.4:5',],\n  metadata: {a: 'b',},\n}\n";
        let c = ok(text).config;
        assert_eq!(c.id, "n1");
        assert_eq!(c.peers.len(), 1);
        assert_eq!(c.metadata["a"], "b");
    }

    #[test]
    fn unknown_and_msgtier_fields_warn() {
        let Loaded { warnings, .. } = ok(&with(
            r#""foo": 1, "listener": [], "upload_dir": "./uploads", "hot_reload": {"enable": true}, "disable_encryption": true"#,
        ));
        assert_eq!(
            warnings,
            vec![
                "node.json: disable_encryption: encryption cannot be disabled in msgtier; field ignored",
                r#"node.json: unknown field "foo" ignored"#,
                "node.json: hot_reload: MsgTier field not used by msgtier; ignored",
                r#"node.json: unknown field "listener" ignored (did you mean "listeners"?)"#,
                "node.json: upload_dir: MsgTier field not used by msgtier; ignored",
            ]
        );
        let Loaded { warnings, .. } = ok(&with(r#""disable_encryption": false"#));
        assert_eq!(
            warnings,
            vec!["node.json: disable_encryption: ignored (encryption is always on)"]
        );
    }

    #[test]
    fn secret_never_printed() {
        let loaded = ok(&with(
            r#""listeners": ["tcp://0.0.0.0:1"], "log": "info", "web_api": "127.0.0.1:9000""#,
        ));
        let json = loaded.config.redacted_json();
        let text = json.to_string();
        assert!(!text.contains(SECRET), "{text}");
        assert_eq!(json["secret"], REDACTED);
        assert_eq!(json["listeners"][0], "tcp://0.0.0.0:1");
        assert_eq!(json["log"], "info");
        assert_eq!(json["web_api"], "127.0.0.1:9000");
        assert_eq!(json["max_frame_bytes"], 1_048_576);
        assert_eq!(json["source"], "node.json");
        assert!(json["data_dir"].is_string());
        // Every stored field is present.
        for field in FIELDS.iter().map(|f| f.name).chain(["source"]) {
            assert!(json.get(field).is_some(), "missing {field}");
        }
        assert!(!format!("{loaded:?}").contains(SECRET));
        assert!(!format!("{:#?}", loaded.config).contains(SECRET));
        assert_eq!(format!("{:?}", loaded.config.secret), REDACTED);
        assert_eq!(
            serde_json::to_value(&loaded.config.secret).unwrap(),
            REDACTED
        );
        assert_eq!(ok(&with("")).config.redacted_json()["log"], Value::Null);
    }

    // ---- the field table ----

    /// The table lists every field `redacted_json` shows (plus `source`, which is not a file
    /// field), each once, and nothing else.
    #[test]
    fn table_covers_every_field_of_redacted_json() {
        let json = ok(&with("")).config.redacted_json();
        let shown: Vec<&str> = json
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        let mut listed: Vec<&str> = FIELDS.iter().map(|f| f.name).chain(["source"]).collect();
        listed.sort_unstable();
        let count = listed.len();
        listed.dedup();
        assert_eq!(listed.len(), count, "a field is listed twice in FIELDS");
        assert_eq!(shown, listed);
    }

    /// The table's defaults and bounds are what the loader applies.
    #[test]
    fn table_defaults_are_what_an_unset_field_gets() {
        let json = ok(&with("")).config.redacted_json();
        for field in FIELDS {
            match field.rule {
                Rule::Bool { default } => assert_eq!(json[field.name], default, "{}", field.name),
                Rule::Int { default, min, max } => {
                    assert_eq!(json[field.name], default, "{}", field.name);
                    assert_eq!(field.default_text(), default.to_string());
                    if min > 0 {
                        let below = with(&format!(r#""{}": {}"#, field.name, min - 1));
                        assert!(err(&below).contains("must be"), "{}", field.name);
                    }
                    if let Some(max) = max {
                        let above = with(&format!(r#""{}": {}"#, field.name, max + 1));
                        assert!(err(&above).contains("must be between"), "{}", field.name);
                    }
                }
                Rule::Required | Rule::Custom { .. } => {}
            }
        }
    }

    /// The secret is the one secret field, and neither `redacted_json` nor `Serialize` shows
    /// it; changing it still needs a restart although its JSON form never changes.
    #[test]
    fn secret_is_redacted_by_the_table() {
        let secret: Vec<&str> = FIELDS.iter().filter(|f| f.secret).map(|f| f.name).collect();
        assert_eq!(secret, ["secret", "api_token"]);
        let config = ok(&with("")).config;
        let json = config.redacted_json();
        assert_eq!(json["secret"], REDACTED);
        assert!(!json.to_string().contains(SECRET));
        let serialized = serde_json::to_string(&config).unwrap();
        assert!(!serialized.contains(SECRET), "{serialized}");
        let other = ok(r#"{"id": "n1", "secret": "another-secret"}"#).config;
        assert_eq!(other.redacted_json(), json);
        assert_eq!(config.restart_needed(&other), ["secret"]);
    }

    /// `restart_needed` names the changed fields a running node cannot take on, in table
    /// order, and ignores the ones it can.
    #[test]
    fn restart_needed_names_only_fixed_fields() {
        let running = ok(&with(r#""listeners": ["tcp://0.0.0.0:1"]"#)).config;
        assert!(running.restart_needed(&running.clone()).is_empty());
        let reloaded = ok(&with(
            r#""listeners": ["tcp://0.0.0.0:2"], "scripts": {"a": "true"}, "log": "debug", "auto_connect": false"#,
        ))
        .config;
        assert_eq!(
            running.restart_needed(&reloaded),
            ["listeners", "auto_connect"]
        );
        // Only reloadable fields changed: the new config can be applied as it is.
        let reloaded = ok(&with(
            r#""listeners": ["tcp://0.0.0.0:1"], "peers": ["udp://1.2.3.4:5"], "foreign_relay_bps_limit": 100"#,
        ))
        .config;
        assert!(running.restart_needed(&reloaded).is_empty());
        assert_ne!(running.reloadable(), reloaded.reloadable());
        // The default data_dir follows the id, so both are reported.
        let renamed = ok(&format!(
            r#"{{"id": "n2", "secret": "{SECRET}", "listeners": ["tcp://0.0.0.0:1"]}}"#
        ))
        .config;
        assert_eq!(running.restart_needed(&renamed), ["id", "data_dir"]);
        // Where the file was read from is not part of the config.
        let moved = parse(
            "elsewhere.json",
            &with(r#""listeners": ["tcp://0.0.0.0:1"]"#),
            base(),
        )
        .unwrap()
        .config;
        assert!(running.restart_needed(&moved).is_empty());
    }

    /// For every field of the table: changing it alone changes `Config::reloadable()` exactly
    /// when the table says it is reloadable, and `restart_needed` names it exactly when not.
    #[test]
    fn table_reloadable_and_restart_needed_agree() {
        // One valid value per field, different from the base config's.
        let key = "ab".repeat(32);
        let pinned = format!(r#"{{"n2": "{key}"}}"#);
        // A CA key and a certificate (each is valid alone, with a warning).
        let (ca, ca_b) = (
            crate::identity::Identity::from_private([5; 32]),
            crate::identity::Identity::from_private([6; 32]),
        );
        let cert = |issuer: &crate::identity::Identity, days: u64| {
            let c = crate::proto::cert::Certificate::issue(
                issuer,
                DEFAULT_NETWORK,
                "n1",
                [1; 32],
                unix_now_s() + days * 86_400,
            );
            format!("{:?}", c.to_text())
        };
        let ca_hex =
            |i: &crate::identity::Identity| format!("{:?}", hex_encode(&i.signing_public()));
        let ca_sample = ca_hex(&ca_b);
        let token_file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(token_file.path(), "fedcba9876543210\n").unwrap();
        let token_file_sample = format!("{:?}", token_file.path().display().to_string());
        let cert_sample = cert(&ca, 20);
        let samples: &[(&str, &str)] = &[
            ("id", r#""n2""#),
            ("secret", r#""another-secret""#),
            ("network", r#""net2""#),
            ("listeners", r#"["tcp://127.0.0.1:1"]"#),
            ("peers", r#"["tcp://127.0.0.1:2"]"#),
            ("web_api", r#""127.0.0.1:9000""#),
            ("api_hosts", r#"["node.lan"]"#),
            ("api_token", r#""0123456789abcdef""#),
            ("api_token_file", token_file_sample.as_str()),
            ("scripts", r#"{"a": "true"}"#),
            ("relay_network_whitelist", r#""*""#),
            ("relay_all_peer_rpc", "true"),
            ("foreign_relay_bps_limit", "1000"),
            ("hole_punching", "false"),
            ("lan_discovery", "false"),
            ("lan_discovery_group", r#""239.1.2.3:4000""#),
            ("subscriptions", r#"["alerts.>"]"#),
            ("publish_max_bytes", "1000"),
            ("publish_rate_per_topic", "5"),
            ("log", r#""debug""#),
            ("data_dir", r#""elsewhere""#),
            ("heartbeat_interval_ms", "5000"),
            ("peer_timeout_ms", "40000"),
            ("auto_connect", "false"),
            ("max_frame_bytes", "8192"),
            ("metadata", r#"{"a": "b"}"#),
            ("pinned_keys", pinned.as_str()),
            ("network_ca", ca_sample.as_str()),
            ("certificate", cert_sample.as_str()),
            ("script_timeout_ms", "5"),
            ("max_concurrent_scripts", "2"),
            ("max_script_queue", "0"),
            ("max_script_output_bytes", "2048"),
            ("max_body_bytes", "2000"),
            ("send_timeout_max_ms", "1000"),
            ("default_ttl_s", "60"),
            ("max_ttl_s", "3600"),
            ("outbox_max_messages", "5"),
            ("outbox_max_bytes", "2048"),
            ("max_incoming_bytes", "100"),
            ("max_incoming_hops", "3"),
            ("max_messages_per_sender_per_s", "10"),
            ("carrier", r#"{"quota_bytes": 100000}"#),
            ("inbox_max_messages", "5"),
            ("inbox_max_bytes", "2048"),
            ("inbox_max_age_s", "60"),
        ];
        // Fields whose defaults follow another field's are set, so that a sample changes one
        // field only.
        let base_fields = [
            ("id", r#""n1""#),
            ("secret", r#""x""#),
            ("data_dir", r#""d""#),
            ("max_body_bytes", "1000"),
        ];
        let text = |change: Option<(&str, &str)>| {
            let mut fields: BTreeMap<&str, &str> = base_fields.into_iter().collect();
            fields.extend(change);
            let body: Vec<String> = fields
                .iter()
                .map(|(k, v)| format!(r#""{k}": {v}"#))
                .collect();
            format!("{{{}}}", body.join(", "))
        };
        let running = ok(&text(None)).config;
        let names: Vec<&str> = samples.iter().map(|(name, _)| *name).collect();
        let table: Vec<&str> = FIELDS.iter().map(|f| f.name).collect();
        assert_eq!(
            names, table,
            "every table field needs a sample, in table order"
        );
        for (field, &(name, value)) in FIELDS.iter().zip(samples) {
            let changed = ok(&text(Some((name, value)))).config;
            assert_ne!(changed, running, "{name}: the sample changes nothing");
            let fixed = running.restart_needed(&changed);
            let reloadable_changed = running.reloadable() != changed.reloadable();
            if field.reloadable {
                assert!(
                    fixed.is_empty(),
                    "{name} is reloadable, yet {fixed:?} need a restart"
                );
                assert!(
                    reloadable_changed,
                    "{name} is reloadable but not in Reloadable"
                );
            } else {
                assert_eq!(fixed, [name], "{name} needs a restart");
                assert!(
                    !reloadable_changed,
                    "{name} is not reloadable but in Reloadable"
                );
            }
        }
    }

    /// The limits table in the module doc says what FIELDS says.
    #[test]
    fn module_doc_limits_table_matches_fields() {
        let rows: Vec<Vec<&str>> = include_str!("config.rs")
            .lines()
            .filter_map(|line| line.strip_prefix("//! | `"))
            .map(|row| row.trim_end_matches(" |").split(" | ").collect())
            .collect();
        assert_eq!(rows.len(), 16);
        for row in rows {
            let name = row[0].trim_end_matches('`');
            let entry = field(name).unwrap_or_else(|| panic!("{name} is not in FIELDS"));
            assert_eq!(row[1], entry.default_text(), "{name}: default");
            assert_eq!(row[3], entry.doc, "{name}: meaning");
            if let Rule::Int { min, max, .. } = entry.rule {
                let range = format!("{min} ..= {}", max.unwrap());
                assert_eq!(row[2], range, "{name}: range");
            }
        }
    }

    #[test]
    fn relative_data_dir_resolved_against_base_dir() {
        let dir = |s: &str| ok(&with(&format!(r#""data_dir": "{s}""#))).config.data_dir;
        assert_eq!(dir("state"), PathBuf::from("/srv/msgtier/state"));
        assert_eq!(dir("../x/y"), PathBuf::from("/srv/msgtier/../x/y"));
        assert_eq!(dir("/var/lib/msgtier"), PathBuf::from("/var/lib/msgtier"));
        if let Some(home) = dirs::home_dir() {
            assert_eq!(dir("~/state"), home.join("state"));
        }
    }

    #[test]
    fn load_reads_a_file_and_resolves_against_its_directory() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.json");
        std::fs::write(&path, with(r#""data_dir": "data", "bogus": 1"#)).unwrap();
        let Loaded { config, warnings } = load(&path).unwrap();
        assert_eq!(config.id, "n1");
        assert_eq!(config.source, path);
        assert_eq!(config.data_dir, dir.path().join("data"));
        assert_eq!(
            warnings,
            vec![format!(
                r#"{}: unknown field "bogus" ignored"#,
                path.display()
            )]
        );
    }

    #[test]
    fn public_and_home_node_examples_load_without_warnings() {
        let load = |name: &str, text: &str| match parse(name, text, Path::new("/repo/config")) {
            Ok(l) => {
                assert!(l.warnings.is_empty(), "{name}: {:?}", l.warnings);
                l.config
            }
            Err(e) => panic!("{e}"),
        };
        let public = load(
            "config/public-node.json",
            include_str!("../config/public-node.json"),
        );
        let home = load(
            "config/home-node.json",
            include_str!("../config/home-node.json"),
        );
        assert_eq!(public.network, "public");
        assert_eq!(public.relay_network_whitelist, ["home"]);
        assert_eq!(public.foreign_relay_bps_limit, 1_000_000);
        assert!(!public.relay_all_peer_rpc);
        assert_eq!(home.network, "home");
        assert!(home.hole_punching);
        // The home node dials the public node's UDP listener.
        assert_eq!(home.peers[0], public.listeners[0]);
    }

    #[test]
    fn example_configs_load_without_warnings() {
        let examples = [
            (include_str!("../config/node1.json"), "1"),
            (include_str!("../config/node2.json"), "2"),
            (include_str!("../config/node3.json"), "3"),
        ];
        let mut loaded = Vec::new();
        for (text, id) in examples {
            let name = format!("config/node{id}.json");
            let l = match parse(&name, text, Path::new("/repo/config")) {
                Ok(l) => l,
                Err(e) => panic!("{e}"),
            };
            assert!(l.warnings.is_empty(), "{:?}", l.warnings);
            let c = &l.config;
            assert_eq!(c.id, id);
            assert_eq!(c.secret.expose(), "change-me-example-secret");
            assert_eq!(c.network, "example");
            assert_eq!(
                c.data_dir,
                PathBuf::from(format!("/repo/config/../target/example-data/node{id}"))
            );
            assert_eq!(c.scripts["hello"], format!("echo hello from node {id}"));
            assert_eq!(c.scripts["uptime"], "uptime");
            assert_eq!((c.heartbeat_interval_ms, c.peer_timeout_ms), (2000, 6000));
            assert_eq!(
                c.web_api,
                Some(format!("127.0.0.1:900{id}").parse().unwrap())
            );
            loaded.push(l.config);
        }
        let urls = |e: &[Endpoint]| e.iter().map(|e| e.to_string()).collect::<Vec<_>>();
        assert_eq!(
            urls(&loaded[0].listeners),
            ["udp://127.0.0.1:6701", "tcp://127.0.0.1:6711"]
        );
        assert_eq!(urls(&loaded[0].peers), ["tcp://127.0.0.1:6712"]);
        assert_eq!(
            urls(&loaded[1].listeners),
            [
                "udp://127.0.0.1:6702",
                "tcp://127.0.0.1:6712",
                "ws://127.0.0.1:6722"
            ]
        );
        assert!(loaded[1].peers.is_empty());
        assert_eq!(
            urls(&loaded[2].listeners),
            ["udp://127.0.0.1:6703", "ws://127.0.0.1:6723"]
        );
        assert_eq!(
            urls(&loaded[2].peers),
            ["ws://127.0.0.1:6722", "udp://127.0.0.1:6702"]
        );
        // Every peer is one of node 2's listeners.
        for peer in loaded[0].peers.iter().chain(&loaded[2].peers) {
            assert!(loaded[1].listeners.contains(peer), "{peer}");
        }
    }
}

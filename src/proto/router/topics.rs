//! Topics: who subscribes to what, publishing to them, and taking a publish as a subscriber.
//!
//! - Subscriptions: ours are the config's filters plus those of open event streams
//!   (reference-counted), at most [`MAX_SUBSCRIPTIONS`] in all; they travel in our signed,
//!   MAC'd link-state advert (`topics`), so they are flooded, refreshed, superseded and expired
//!   exactly as adverts are. A change re-advertises at once. Members' filters are kept per
//!   origin from their newest advert (never a relay's: it is not a member).
//! - Publishing ([`Router::publish`]): the origin signs the publish once
//!   ([`Publication`]) and sends each subscriber its own copy, sealed end to end for it, along
//!   its shortest path (a live request, or with a ttl a durable one through the outbox, so an
//!   offline subscriber gets it later through carriers). A subscriber that is this node takes
//!   it at once.
//! - Taking one ([`Router::take_publication`]): the signature must be the origin's, a filter
//!   of ours must match the topic (a publisher with a stale view gets `not_subscribed`), and
//!   (origin, publication id) is delivered once: a `publish` event and an inbox entry with
//!   the topic.

use std::collections::{BTreeMap, HashMap};

use log::{debug, info, warn};

use crate::proto::cache::BoundedCache;
use crate::proto::durable::{InboxRecord, Op};
use crate::proto::e2e::{Outcome, Payload};
use crate::proto::publication::Publication;
use crate::proto::token_bucket::TokenBucket;
use crate::proto::topic::{self, TopicError, MAX_SUBSCRIPTIONS};

use super::{Action, Now, Router, SendError, MAX_PENDING};

/// Publications remembered per (origin, id) against duplicates.
pub const PUBLISH_SEEN: usize = 16_384;
/// Topics whose publish rate is tracked at once; beyond it the idlest buckets go.
pub const MAX_RATED_TOPICS: usize = 1024;
/// How long a live copy waits for its subscriber's answer.
pub const PUBLISH_TIMEOUT_MS: u64 = 30_000;

/// What this node may publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublishLimits {
    /// Largest body, in bytes.
    pub max_bytes: usize,
    /// Publishes per second to one topic, with a second of burst (0: no limit).
    pub per_topic_per_s: u64,
}

impl Default for PublishLimits {
    fn default() -> Self {
        PublishLimits {
            max_bytes: usize::MAX,
            per_topic_per_s: 0,
        }
    }
}

/// Why a publish was refused.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PublishError {
    /// The topic is not a valid topic name.
    #[error("topic {0:?} {1}")]
    BadTopic(String, TopicError),
    /// The body is over `publish_max_bytes`.
    #[error("this node publishes messages of at most {max} bytes; this one has {len}")]
    TooLarge {
        /// The limit.
        max: usize,
        /// The body's length.
        len: usize,
    },
    /// The topic's rate is used up.
    #[error("topic {topic:?} takes at most {rate} publishes per second from this node; retry in {retry_after_ms} ms")]
    RateLimited {
        /// The topic.
        topic: String,
        /// The limit.
        rate: u64,
        /// When the next one would be taken.
        retry_after_ms: u64,
    },
    /// Sending failed before any copy went (too much in flight, the outbox is full).
    #[error("{0}")]
    Send(SendError),
}

/// Why a subscription was refused.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SubscribeError {
    /// A filter is not valid.
    #[error("topic filter {0:?} {1}")]
    BadFilter(String, TopicError),
    /// It would take this node past [`MAX_SUBSCRIPTIONS`] filters.
    #[error("a node subscribes to at most {MAX_SUBSCRIPTIONS} filters; this would make {0}")]
    TooMany(usize),
}

/// What [`Router::publish`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// The publication's id.
    pub id: u64,
    /// Every subscriber a copy went to (this node included when it subscribes), sorted.
    pub subscribers: Vec<String>,
    /// With a ttl: each remote subscriber's outbox message id (answered through
    /// [`Action::Queued`] once on disk, or [`Action::Complete`] with an error).
    pub durable: Vec<(String, u64)>,
    /// Subscribers no copy could be sent to now (a live copy with no path or no room).
    pub failed: Vec<(String, String)>,
}

/// Counters for `/status` and `/metrics`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct TopicCounters {
    /// Publishes made here.
    pub published: u64,
    /// Copies sent to subscribers (ours excluded).
    pub copies_sent: u64,
    /// Copies a subscriber confirmed (live ones).
    pub copies_delivered: u64,
    /// Live copies that failed or got no answer.
    pub copies_failed: u64,
    /// Publications delivered here.
    pub received: u64,
    /// Copies of a publication delivered here before.
    pub duplicates: u64,
    /// Copies refused here (not subscribed, forged, limits).
    pub refused: u64,
    /// Publishes refused by this node's limits.
    pub limited: u64,
}

/// The topic state of a router.
#[derive(Debug)]
pub(super) struct Topics {
    /// From the config.
    config: Vec<String>,
    /// From open event streams: filter -> streams holding it.
    streams: BTreeMap<String, usize>,
    /// Members' filters from their newest advert, by origin (no empty lists).
    remote: HashMap<String, Vec<String>>,
    /// Publish rate per topic.
    rates: HashMap<String, TokenBucket>,
    /// (origin, publication id) delivered here.
    seen: BoundedCache<(String, u64), ()>,
    /// Live copies awaiting their answer: request id -> subscriber.
    live: HashMap<u64, String>,
    /// Counters.
    pub counters: TopicCounters,
    /// What this node may publish.
    pub limits: PublishLimits,
}

impl Topics {
    pub(super) fn new(config: Vec<String>, limits: PublishLimits) -> Topics {
        let mut config: Vec<String> = config
            .into_iter()
            .filter(|f| topic::check_filter(f).is_ok())
            .collect();
        config.sort();
        config.dedup();
        config.truncate(MAX_SUBSCRIPTIONS);
        Topics {
            config,
            streams: BTreeMap::new(),
            remote: HashMap::new(),
            rates: HashMap::new(),
            seen: BoundedCache::with_entries(PUBLISH_SEEN),
            live: HashMap::new(),
            counters: TopicCounters::default(),
            limits,
        }
    }

    /// Our filters: the config's and the streams', sorted, without duplicates.
    pub(super) fn local(&self) -> Vec<String> {
        let mut all: Vec<String> = self
            .config
            .iter()
            .cloned()
            .chain(self.streams.keys().cloned())
            .collect();
        all.sort();
        all.dedup();
        all
    }

    fn local_matches(&self, t: &str) -> bool {
        self.config
            .iter()
            .chain(self.streams.keys())
            .any(|f| topic::matches(f, t))
    }

    /// Takes an origin's filters from its newest advert.
    pub(super) fn set_remote(&mut self, origin: &str, filters: Vec<String>) {
        if filters.is_empty() {
            self.remote.remove(origin);
        } else {
            self.remote.insert(origin.to_string(), filters);
        }
    }

    /// An origin's advert expired.
    pub(super) fn forget(&mut self, origin: &str) {
        self.remote.remove(origin);
    }

    /// Origins whose filters we hold and the filters, sorted (for `/status`).
    pub(super) fn remote_report(&self) -> BTreeMap<String, Vec<String>> {
        self.remote
            .iter()
            .map(|(o, f)| (o.clone(), f.clone()))
            .collect()
    }

    /// A live copy of ours was answered (or failed): `true` if `id` was one.
    pub(super) fn copy_answered(&mut self, id: u64, delivered: bool) -> bool {
        let Some(subscriber) = self.live.remove(&id) else {
            return false;
        };
        if delivered {
            self.counters.copies_delivered += 1;
        } else {
            debug!("publish copy {id} for {subscriber} was not delivered");
            self.counters.copies_failed += 1;
        }
        true
    }
}

impl Router {
    /// The topic filters this node subscribes to now, sorted.
    pub fn subscriptions(&self) -> Vec<String> {
        self.topics.local()
    }

    /// The filters of every member we hold an advert with filters for, by node.
    pub fn remote_subscriptions(&self) -> BTreeMap<String, Vec<String>> {
        self.topics.remote_report()
    }

    /// Topic counters.
    pub fn topic_counters(&self) -> TopicCounters {
        self.topics.counters.clone()
    }

    /// Adds an event stream's filters to ours (each held once more); re-advertises if the
    /// set changed.
    pub fn subscribe(&mut self, now: Now, filters: &[String]) -> Result<(), SubscribeError> {
        for f in filters {
            topic::check_filter(f).map_err(|e| SubscribeError::BadFilter(f.clone(), e))?;
        }
        let before = self.topics.local();
        let mut after = before.clone();
        after.extend(filters.iter().cloned());
        after.sort();
        after.dedup();
        if after.len() > MAX_SUBSCRIPTIONS {
            return Err(SubscribeError::TooMany(after.len()));
        }
        for f in filters {
            *self.topics.streams.entry(f.clone()).or_default() += 1;
        }
        if after != before {
            info!("subscribed to {}", filters.join(", "));
            self.advertise(now, None);
        }
        Ok(())
    }

    /// Drops an event stream's filters (as [`Router::subscribe`] added them).
    pub fn unsubscribe(&mut self, now: Now, filters: &[String]) {
        let before = self.topics.local();
        for f in filters {
            if let Some(n) = self.topics.streams.get_mut(f) {
                *n -= 1;
                if *n == 0 {
                    self.topics.streams.remove(f);
                }
            }
        }
        if self.topics.local() != before {
            info!("unsubscribed from {}", filters.join(", "));
            self.advertise(now, None);
        }
    }

    /// A config reload changed the configured filters (re-advertised if the set changed).
    pub fn set_config_subscriptions(&mut self, now: Now, filters: Vec<String>) {
        let before = self.topics.local();
        let limits = self.topics.limits;
        let fresh = Topics::new(filters, limits);
        self.topics.config = fresh.config;
        if self.topics.local() != before {
            self.advertise(now, None);
        }
    }

    /// The members (and this node) that subscribe to `topic` and can be sealed to, sorted.
    pub fn subscribers(&self, t: &str) -> Vec<String> {
        let mut out: Vec<String> = self
            .topics
            .remote
            .iter()
            .filter(|(origin, _)| {
                self.home.keys.contains(origin) && !self.home.relay_nodes.contains(*origin)
            })
            .filter(|(_, filters)| filters.iter().any(|f| topic::matches(f, t)))
            .map(|(origin, _)| origin.clone())
            .collect();
        if self.topics.local_matches(t) {
            out.push(self.settings.node_id.clone());
        }
        out.sort();
        out
    }

    /// Publishes `body` to `topic`: one signed copy per subscriber, sealed for it (see the
    /// module docs). `ttl_ms` 0 sends live copies; otherwise each goes through the outbox
    /// with that lifetime.
    pub fn publish(
        &mut self,
        now: Now,
        t: &str,
        body: &[u8],
        ttl_ms: u64,
    ) -> Result<Published, PublishError> {
        topic::check_topic(t).map_err(|e| PublishError::BadTopic(t.to_string(), e))?;
        let limits = self.topics.limits;
        if body.len() > limits.max_bytes {
            self.topics.counters.limited += 1;
            return Err(PublishError::TooLarge {
                max: limits.max_bytes,
                len: body.len(),
            });
        }
        if limits.per_topic_per_s > 0 {
            self.take_publish_rate(now, t, limits.per_topic_per_s)?;
        }
        let subscribers = self.subscribers(t);
        let remote = subscribers.len() - usize::from(self.topics.local_matches(t));
        if ttl_ms == 0 && self.msgs.pending_count() + remote > MAX_PENDING {
            return Err(PublishError::Send(SendError::Busy));
        }
        let me = self.settings.node_id.clone();
        let id = self.random_u64();
        let publication =
            Publication::sign(&self.settings.keys.identity, &me, id, now.unix_ms, t, body);
        self.topics.counters.published += 1;
        let mut published = Published {
            id,
            subscribers: subscribers.clone(),
            durable: Vec::new(),
            failed: Vec::new(),
        };
        let plaintext = (ttl_ms == 0).then(|| {
            Payload::Publish {
                publication: publication.clone(),
                body: body.to_vec(),
            }
            .encode()
        });
        for subscriber in &subscribers {
            if *subscriber == me {
                let durable = ttl_ms > 0;
                match self.take_publication(now, &me, 0, &publication, body, durable) {
                    Ok(Some(op)) => self.actions.push_back(Action::Persist {
                        ops: vec![op],
                        durable,
                        token: None,
                    }),
                    Ok(None) => {}
                    Err((outcome, _)) => debug!("publish {id} not taken here: {outcome:?}"),
                }
                continue;
            }
            let sent = match &plaintext {
                Some(p) => self
                    .send_payload(now, subscriber, p.clone(), PUBLISH_TIMEOUT_MS)
                    .map(|copy| {
                        self.topics.live.insert(copy, subscriber.clone());
                    }),
                None => self
                    .send_durable_record(
                        now,
                        subscriber,
                        body,
                        0,
                        ttl_ms,
                        Some(publication.clone()),
                    )
                    .map(|copy| published.durable.push((subscriber.clone(), copy))),
            };
            match sent {
                Ok(()) => self.topics.counters.copies_sent += 1,
                Err(SendError::OutboxFull) if published.durable.is_empty() => {
                    return Err(PublishError::Send(SendError::OutboxFull));
                }
                Err(e) => {
                    self.topics.counters.copies_failed += 1;
                    warn!("publish {id} to {t:?}: no copy for {subscriber}: {e}");
                    published.failed.push((subscriber.clone(), e.to_string()));
                }
            }
        }
        info!(
            "published {id} to {t:?} ({} bytes): {} subscribers",
            body.len(),
            subscribers.len()
        );
        Ok(published)
    }

    fn take_publish_rate(&mut self, now: Now, t: &str, rate: u64) -> Result<(), PublishError> {
        let rates = &mut self.topics.rates;
        if !rates.contains_key(t) && rates.len() >= MAX_RATED_TOPICS {
            // Buckets that refilled carry no state worth keeping.
            rates.retain(|_, b| b.wait_us(now.us, rate) > 0);
            if rates.len() >= MAX_RATED_TOPICS {
                self.topics.counters.limited += 1;
                return Err(PublishError::RateLimited {
                    topic: t.to_string(),
                    rate,
                    retry_after_ms: 1000,
                });
            }
        }
        let bucket = rates
            .entry(t.to_string())
            .or_insert_with(|| TokenBucket::new(rate, now.us));
        if bucket.try_take(now.us, 1) {
            return Ok(());
        }
        let retry_after_ms = bucket.wait_us(now.us, 1).div_ceil(1000).max(1);
        self.topics.counters.limited += 1;
        Err(PublishError::RateLimited {
            topic: t.to_string(),
            rate,
            retry_after_ms,
        })
    }

    /// A live publish copy for us (a request; the caller answers it with what this returns).
    pub(super) fn on_publish(
        &mut self,
        now: Now,
        envelope: crate::wire::frame::Envelope,
        publication: &Publication,
        body: &[u8],
    ) {
        let outcome = match self.take_publication(
            now,
            &envelope.source,
            envelope.hops,
            publication,
            body,
            false,
        ) {
            Ok(op) => {
                if let Some(op) = op {
                    self.actions.push_back(Action::Persist {
                        ops: vec![op],
                        durable: false,
                        token: None,
                    });
                }
                Outcome::Delivered
            }
            Err((outcome, _)) => {
                self.msgs.counters.refused += 1;
                outcome
            }
        };
        self.reply(now, &envelope, outcome);
    }

    /// Takes a publication from `source` that crossed `hops` links: checks (limits, the
    /// origin's signature, our subscriptions) and delivers it unless it was delivered before.
    /// `Ok(Some(op))`: new, here is its inbox write; `Ok(None)`: a duplicate (answered as
    /// delivered); `Err((why, retry))`: refused.
    pub(super) fn take_publication(
        &mut self,
        now: Now,
        source: &str,
        hops: u8,
        publication: &Publication,
        body: &[u8],
        durable: bool,
    ) -> Result<Option<Op>, (Outcome, bool)> {
        let refuse = |code: &str, message: String| {
            Err((
                Outcome::Failed {
                    code: code.into(),
                    message,
                },
                false,
            ))
        };
        let me = self.settings.node_id.clone();
        if source != me {
            if let Err(refusal) = self.admit(now, source, body, hops, None) {
                self.topics.counters.refused += 1;
                return Err(refusal);
            }
        }
        let key = self.home.keys.get(source).copied();
        if !key.is_some_and(|k| publication.verify(source, &k, body)) {
            warn!(
                "dropping publish {} from {source}: its signature is not its origin's",
                publication.id
            );
            self.topics.counters.refused += 1;
            self.msgs.counters.forged += 1;
            return refuse(
                "forged",
                "the publication is not signed by its source".into(),
            );
        }
        if topic::check_topic(&publication.topic).is_err() {
            self.topics.counters.refused += 1;
            return refuse(
                "bad_topic",
                format!("{:?} is not a topic", publication.topic),
            );
        }
        if !self.topics.local_matches(&publication.topic) {
            debug!(
                "refusing publish {} from {source}: not subscribed to {:?}",
                publication.id, publication.topic
            );
            self.topics.counters.refused += 1;
            return refuse(
                "not_subscribed",
                format!("{me} does not subscribe to {:?}", publication.topic),
            );
        }
        let seen = (source.to_string(), publication.id);
        if self.topics.seen.contains(&seen) {
            self.topics.counters.duplicates += 1;
            self.msgs.counters.drop("duplicate");
            return Ok(None);
        }
        self.topics.seen.insert(seen, (), 0);
        info!(
            "publish {} to {:?} from {source} ({} bytes, {hops} hops)",
            publication.id,
            publication.topic,
            body.len()
        );
        self.topics.counters.received += 1;
        self.msgs.keep(
            publication.id,
            source,
            now,
            hops,
            body,
            Some(&publication.topic),
        );
        self.actions
            .push_back(Action::Event(crate::proto::event::Event::Publish {
                message_id: publication.id,
                source: source.to_string(),
                topic: publication.topic.clone(),
                hops,
                bytes: body.len(),
                body: bytes::Bytes::copy_from_slice(
                    &body[..body.len().min(crate::proto::event::EVENT_BODY_BYTES)],
                ),
                durable,
            }));
        Ok(Some(Op::Inbox(
            InboxRecord::new(publication.id, source, now.unix_ms, hops, body)
                .with_topic(&publication.topic),
        )))
    }
}

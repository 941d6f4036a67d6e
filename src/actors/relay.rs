//! RelayActor: the thin driver of the node's [`Router`] (routing, the message path, foreign
//! domains, punch coordination; all decisions live there, sans-io).
//!
//! It feeds the router what happens, with the time: links coming up, their RTT and frames
//! (from PeerActors), [`Send`] requests (from the HTTP handlers), script results, punch
//! datagrams (from the UDP listeners) and its one timer. Then it carries out the router's
//! actions: a frame to a PeerActor, a script to the ScriptActor, a dial to the DiscoveryActor,
//! a punch datagram to a ListenerActor, an answer to the waiting HTTP handler.
//!
//! Everything happens on the node's one arbiter: a message costs no thread hop between the
//! relay and the links.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use actix::dev::SendError as MailboxSendError;
use actix::prelude::*;
use bytes::Bytes;
use log::debug;
use tokio::sync::oneshot;

use crate::actors::events::Publish;
use crate::actors::messages::{
    Dial, Inbound, LinkDown, LinkRtt, LinkUp, PunchIn, SendFrame, SendPunch,
};
use crate::actors::script::{RunScript, ScriptError};
use crate::actors::store::{Persist, StoreActor, StoreFailure};
use crate::node::{unix_ms, NodeShared};
use crate::proto::durable::{Restored, Status};
use crate::proto::event::Event;
use crate::proto::router::{
    Action, CarrierLimits, DurableLimits, IncomingLimits, Now, PublishLimits, Randomness, Router,
    ScriptResult, Settings,
};

pub use crate::proto::router::{
    CancelError, Delivery, DurableReport, ForeignReport, MessageCounters, MessageReport,
    PunchReport, ReceivedMessage, RelayReport, RelayedCount, RouteReport, SendError, Topology,
};
pub use crate::proto::router::{PublishError, Published, SubscribeError, TopicCounters};

/// Inbound frames from links queued for the relay; beyond it they are dropped and counted.
pub const RELAY_MAILBOX: usize = 16_384;

/// Send `body` to `target` and wait for the outcome (from an HTTP handler).
#[derive(Message)]
#[rtype(result = "Result<Answer, SendError>")]
pub struct Send {
    /// Target node id (may be our own: loopback goes through the same seal and open).
    pub target: String,
    /// Message bytes.
    pub body: Bytes,
    /// How long to wait for the answer.
    pub timeout_ms: u64,
    /// 0: live (answered or failed within the timeout, then forgotten). Otherwise the
    /// message's lifetime in ms: it is on disk before anything else happens, and delivery goes
    /// on after the timeout until it runs out.
    pub ttl_ms: u64,
}

/// What a [`Send`] comes to.
#[derive(Debug, Clone)]
pub enum Answer {
    /// The target answered within the timeout.
    Done(Delivery),
    /// A durable message not answered within the timeout: its delivery goes on.
    Queued {
        /// Its id.
        id: u64,
        /// Where it stands.
        status: Status,
        /// When it expires (unix ms).
        expires_unix_ms: u64,
    },
}

/// Test-only: lose the next N data frames this node sends (a receipt lost on the way).
#[cfg(feature = "fault-injection")]
#[derive(Message)]
#[rtype(result = "()")]
pub struct DropData(pub u32);

/// `POST /publish`: publish `body` to `topic` (live copies with `ttl_ms` 0, else durable ones).
#[derive(Message)]
#[rtype(result = "Result<Published, PublishError>")]
pub struct PublishTopic {
    /// The topic.
    pub topic: String,
    /// The message.
    pub body: Bytes,
    /// 0: live copies; otherwise each copy's lifetime, and the answer waits until every copy
    /// is on disk.
    pub ttl_ms: u64,
}

/// An event stream subscribes this node to `filters` while it is open.
#[derive(Message)]
#[rtype(result = "Result<(), SubscribeError>")]
pub struct SubscribeTopics(pub Vec<String>);

/// An event stream with `filters` closed.
#[derive(Message)]
#[rtype(result = "()")]
pub struct UnsubscribeTopics(pub Vec<String>);

/// What `GET /messages/{id}` asks: a message this node sent with a ttl.
#[derive(Message)]
#[rtype(result = "Option<MessageReport>")]
pub struct GetMessageStatus(pub u64);

/// `DELETE /messages/{id}`.
#[derive(Message)]
#[rtype(result = "Result<MessageReport, CancelError>")]
pub struct CancelMessage(pub u64);

/// `GET /outbox`: messages not final, oldest first, after an id, at most a number.
#[derive(Message)]
#[rtype(result = "Vec<MessageReport>")]
pub struct GetOutbox {
    /// The last id of the previous page.
    pub after: Option<u64>,
    /// Page size.
    pub limit: usize,
}

/// The current route to every reachable node, and relay counters.
#[derive(Message)]
#[rtype(result = "RelayReport")]
pub struct GetRoutes;

/// The link-state graph of every network we route in (`GET /topology`).
#[derive(Message)]
#[rtype(result = "Topology")]
pub struct GetTopology;

/// The plain messages this node received most recently (newest last).
#[derive(Message)]
#[rtype(result = "Vec<ReceivedMessage>")]
pub struct GetMessages;

/// A UDP listener socket punch datagrams can leave from.
#[derive(Clone)]
pub struct PunchSocket {
    /// Its bound address.
    pub local: std::net::SocketAddr,
    /// Its ListenerActor.
    pub send: Recipient<SendPunch>,
}

/// The actors the relay hands work to.
pub struct RelayPeers {
    /// Runs scripts.
    pub script: Recipient<RunScript>,
    /// Dials punched paths.
    pub dial: Recipient<Dial>,
    /// UDP listener sockets, for punch datagrams.
    pub udp: Vec<PunchSocket>,
    /// The message store.
    pub store: Addr<StoreActor>,
    /// The event stream.
    pub events: Recipient<Publish>,
}

/// See the module docs.
pub struct RelayActor {
    /// Clock origin and config.
    node: Arc<NodeShared>,
    /// All the decisions.
    router: Router,
    /// Where each Active link's frames go.
    links: HashMap<u64, Recipient<SendFrame>>,
    /// HTTP handlers waiting for their request's outcome, by message id.
    waiting: HashMap<u64, oneshot::Sender<Result<Answer, SendError>>>,
    /// The actors actions go to.
    peers: RelayPeers,
    /// The armed timer and its deadline (monotonic ms).
    timer: Option<(u64, SpawnHandle)>,
    /// Test-only: data frames still to lose.
    #[cfg(feature = "fault-injection")]
    drop_data: u32,
}

impl RelayActor {
    /// A relay for this node, picking up the durable state of its last run.
    pub fn new(node: Arc<NodeShared>, peers: RelayPeers, restored: Restored) -> RelayActor {
        let config = &node.config;
        let settings = Settings {
            node_id: node.local.node_id.clone(),
            network: node.local.network.clone(),
            keys: node.keys.clone(),
            listen_addrs: node.local.listen_addrs.clone(),
            scripts: config.scripts.keys().cloned().collect(),
            max_frame_bytes: config.max_frame_bytes,
            hole_punching: config.hole_punching,
            relay_network_whitelist: config.relay_network_whitelist.clone(),
            foreign_relay_bps_limit: config.foreign_relay_bps_limit,
            pinned_keys: config.pinned_keys.clone(),
            seq_base: unix_ms() * 1000,
            random: Randomness::Os,
            network_ca: config.network_ca,
            certificate: node.local.certificate.clone(),
            carrier: config.carrier.map(|c| CarrierLimits {
                quota_bytes: c.quota_bytes as usize,
                per_origin_quota_bytes: c.per_origin_quota_bytes as usize,
                max_ttl_ms: c.max_ttl_s * 1000,
            }),
            incoming: IncomingLimits {
                max_bytes: config.max_incoming_bytes,
                max_hops: config.max_incoming_hops,
                per_sender_per_s: config.max_messages_per_sender_per_s,
            },
            script_allow: config
                .script_allow
                .iter()
                .map(|(name, ids)| (name.clone(), ids.iter().cloned().collect()))
                .collect(),
            subscriptions: config.subscriptions.clone(),
            publish: PublishLimits {
                max_bytes: config.publish_max_bytes.min(config.max_body_bytes),
                per_topic_per_s: config.publish_rate_per_topic,
            },
            durable: DurableLimits {
                outbox_max_messages: config.outbox_max_messages,
                outbox_max_bytes: config.outbox_max_bytes,
                max_ttl_ms: config.max_ttl_s.saturating_mul(1000),
            },
        };
        let now = now(&node);
        let mut router = Router::new(settings, now);
        router.restore(now, restored);
        RelayActor {
            router,
            node,
            links: HashMap::new(),
            waiting: HashMap::new(),
            peers,
            timer: None,
            #[cfg(feature = "fault-injection")]
            drop_data: 0,
        }
    }

    /// Carries out what the router asked for, then re-arms the timer. The writes it asked for
    /// go to the store as one request (one transaction), in order.
    fn drive(&mut self, ctx: &mut Context<Self>) {
        let mut writes: Vec<crate::proto::durable::Op> = Vec::new();
        let mut durable_write = false;
        let mut tokens: Vec<u64> = Vec::new();
        while let Some(action) = self.router.poll_action() {
            match action {
                Action::Send { link, frame } => {
                    #[cfg(feature = "fault-injection")]
                    if self.drop_data > 0 && matches!(frame, crate::wire::frame::Frame::Data(_)) {
                        self.drop_data -= 1;
                        log::warn!("fault injection: a data frame is lost");
                        continue;
                    }
                    let refused = match self.links.get(&link) {
                        Some(peer) => match peer.try_send(SendFrame { frame }) {
                            Ok(()) => None,
                            Err(MailboxSendError::Full(m) | MailboxSendError::Closed(m)) => {
                                Some(m.frame)
                            }
                        },
                        None => Some(frame),
                    };
                    if let Some(frame) = refused {
                        self.node.metrics.frames_dropped.inc();
                        self.router.frame_refused(link, frame);
                    }
                }
                Action::Event(e) => self.peers.events.do_send(Publish(e)),
                Action::RunScript {
                    job,
                    name,
                    source,
                    message_id,
                } => {
                    let run = RunScript {
                        name: name.clone(),
                        source: source.clone(),
                        message_id,
                    };
                    let started = std::time::Instant::now();
                    ctx.spawn(self.peers.script.send(run).into_actor(self).map(
                        move |res, act, ctx| {
                            count_script_run(&act.node.metrics, started, &res);
                            let event = script_event(name, source, message_id, started, &res);
                            act.peers.events.do_send(Publish(event));
                            let result = match res {
                                Ok(Ok(out)) => ScriptResult::Ran {
                                    exit_code: out.exit_code,
                                    truncated: out.stdout_truncated || out.stderr_truncated,
                                    stdout: out.stdout,
                                    stderr: out.stderr,
                                    timed_out: out.timed_out,
                                },
                                Ok(Err(ScriptError::Busy)) => ScriptResult::Busy,
                                Ok(Err(e)) => ScriptResult::Failed(e.to_string()),
                                Err(e) => ScriptResult::Failed(e.to_string()),
                            };
                            act.router.script_done(now(&act.node), job, result);
                            act.drive(ctx);
                        },
                    ));
                }
                Action::Dial(target) => self.peers.dial.do_send(Dial { target }),
                Action::Punch {
                    from,
                    to,
                    token,
                    ack,
                } => {
                    let udp = &self.peers.udp;
                    let socket = udp
                        .iter()
                        .find(|u| Some(u.local) == from)
                        .or_else(|| udp.iter().find(|u| u.local.is_ipv4() == to.is_ipv4()));
                    match socket {
                        Some(u) => u.send.do_send(SendPunch { to, token, ack }),
                        None => debug!("no UDP socket to punch toward {to} from"),
                    }
                }
                Action::Complete { id, result } => {
                    if let Some(done) = self.waiting.remove(&id) {
                        let _ = done.send(result.map(Answer::Done));
                    }
                }
                Action::Queued {
                    id,
                    status,
                    expires_unix_ms,
                } => {
                    if let Some(done) = self.waiting.remove(&id) {
                        let _ = done.send(Ok(Answer::Queued {
                            id,
                            status,
                            expires_unix_ms,
                        }));
                    }
                }
                Action::Persist {
                    ops,
                    durable,
                    token,
                } => {
                    writes.extend(ops);
                    durable_write |= durable;
                    tokens.extend(token);
                }
            }
        }
        if !writes.is_empty() {
            let write = self.peers.store.send(Persist {
                ops: writes,
                durable: durable_write,
            });
            ctx.spawn(write.into_actor(self).map(move |res, act, ctx| {
                let result = match failure(res) {
                    None => Ok(()),
                    Some(e) => Err(e),
                };
                if let (Err(e), true) = (&result, tokens.is_empty()) {
                    debug!("a write-behind of the message store failed: {e}");
                }
                if !tokens.is_empty() {
                    let now = now(&act.node);
                    for token in tokens {
                        act.router.persisted(now, token, result.clone());
                    }
                    act.drive(ctx);
                }
            }));
        }
        self.arm_timer(ctx);
    }

    /// Keeps one timer armed for the router's next deadline.
    fn arm_timer(&mut self, ctx: &mut Context<Self>) {
        let next = self.router.next_timeout();
        if let (Some(deadline), Some((current, _))) = (next, &self.timer) {
            if *current == deadline {
                return;
            }
        }
        if let Some((_, handle)) = self.timer.take() {
            ctx.cancel_future(handle);
        }
        if let Some(deadline) = next {
            let wait = deadline.saturating_sub(self.node.now_ms());
            let handle = ctx.run_later(Duration::from_millis(wait), |act, ctx| {
                act.timer = None;
                act.router.handle_timeout(now(&act.node));
                act.drive(ctx);
            });
            self.timer = Some((deadline, handle));
        }
    }
}

/// The error of a store write, if it failed (also when the store actor is gone).
fn failure(res: Result<Result<(), StoreFailure>, actix::MailboxError>) -> Option<String> {
    match res {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(e.to_string()),
        Err(e) => Some(e.to_string()),
    }
}

/// Counts a run the ScriptActor answered by outcome, and its duration when it ran.
fn count_script_run(
    metrics: &crate::metrics::Metrics,
    started: std::time::Instant,
    res: &Result<Result<crate::actors::script::ScriptOutput, ScriptError>, actix::MailboxError>,
) {
    let runs = &metrics.script_runs;
    match res {
        Ok(Ok(out)) => {
            metrics.script_duration.observe(started.elapsed());
            if out.timed_out {
                runs.timed_out.inc();
            } else if out.exit_code == Some(0) {
                runs.success.inc();
            } else {
                runs.failure.inc();
            }
        }
        _ => runs.error.inc(),
    }
}

/// The `script` event of a run the ScriptActor answered.
fn script_event(
    name: String,
    source: String,
    message_id: u64,
    started: std::time::Instant,
    res: &Result<Result<crate::actors::script::ScriptOutput, ScriptError>, actix::MailboxError>,
) -> Event {
    let (exit_code, timed_out, error) = match res {
        Ok(Ok(out)) => (out.exit_code, out.timed_out, None),
        Ok(Err(e)) => (None, false, Some(e.to_string())),
        Err(e) => (None, false, Some(e.to_string())),
    };
    Event::Script {
        name,
        source,
        message_id,
        exit_code,
        timed_out,
        duration_ms: started.elapsed().as_millis() as u64,
        error,
    }
}

/// The router's clock: the node's monotonic clock and the wall clock.
fn now(node: &NodeShared) -> Now {
    Now {
        us: node.now_us(),
        unix_ms: unix_ms(),
    }
}

impl Actor for RelayActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(RELAY_MAILBOX);
        self.arm_timer(ctx);
    }
}

impl Handler<Send> for RelayActor {
    type Result = ResponseFuture<Result<Answer, SendError>>;

    fn handle(&mut self, msg: Send, ctx: &mut Self::Context) -> Self::Result {
        let (target, timeout_ms) = (msg.target, msg.timeout_ms);
        let now = now(&self.node);
        let started = if msg.ttl_ms > 0 {
            self.router
                .send_durable(now, &target, &msg.body, timeout_ms, msg.ttl_ms)
        } else {
            self.router.send(now, &target, &msg.body, timeout_ms)
        };
        let started = started.map(|id| {
            let (tx, rx) = oneshot::channel();
            self.waiting.insert(id, tx);
            rx
        });
        self.drive(ctx);
        Box::pin(async move {
            match started {
                Err(e) => Err(e),
                Ok(rx) => rx
                    .await
                    .unwrap_or(Err(SendError::Timeout(target, timeout_ms))),
            }
        })
    }
}

impl Handler<PublishTopic> for RelayActor {
    type Result = ResponseFuture<Result<Published, PublishError>>;

    fn handle(&mut self, msg: PublishTopic, ctx: &mut Self::Context) -> Self::Result {
        let now = now(&self.node);
        let published = self.router.publish(now, &msg.topic, &msg.body, msg.ttl_ms);
        // With a ttl, answer once every copy is on disk (each is answered as queued then).
        let mut copies = Vec::new();
        if let Ok(p) = &published {
            for (_, id) in &p.durable {
                let (tx, rx) = oneshot::channel();
                self.waiting.insert(*id, tx);
                copies.push(rx);
            }
        }
        self.drive(ctx);
        Box::pin(async move {
            let mut published = published?;
            let mut stored = Vec::new();
            for ((node, id), rx) in std::mem::take(&mut published.durable)
                .into_iter()
                .zip(copies)
            {
                match rx.await {
                    Ok(Err(e)) => published.failed.push((node, e.to_string())),
                    Err(_) => published
                        .failed
                        .push((node, "the node is shutting down".to_string())),
                    Ok(Ok(_)) => stored.push((node, id)),
                }
            }
            published.durable = stored;
            Ok(published)
        })
    }
}

impl Handler<SubscribeTopics> for RelayActor {
    type Result = Result<(), SubscribeError>;

    fn handle(&mut self, msg: SubscribeTopics, ctx: &mut Self::Context) -> Self::Result {
        let result = self.router.subscribe(now(&self.node), &msg.0);
        self.drive(ctx);
        result
    }
}

impl Handler<UnsubscribeTopics> for RelayActor {
    type Result = ();

    fn handle(&mut self, msg: UnsubscribeTopics, ctx: &mut Self::Context) {
        self.router.unsubscribe(now(&self.node), &msg.0);
        self.drive(ctx);
    }
}

impl Handler<Inbound> for RelayActor {
    type Result = ();

    fn handle(&mut self, msg: Inbound, ctx: &mut Self::Context) {
        self.router
            .handle_frame(now(&self.node), msg.link_id, msg.frame);
        self.drive(ctx);
    }
}

impl Handler<LinkUp> for RelayActor {
    type Result = ();

    fn handle(&mut self, msg: LinkUp, ctx: &mut Self::Context) {
        self.links.insert(msg.link_id, msg.send);
        self.router.link_up(now(&self.node), msg.link_id, msg.info);
        // Only a link the router took (and so will report down) is announced.
        if let Some(info) = self.router.link_info(msg.link_id) {
            self.peers.events.do_send(Publish(Event::PeerUp {
                node: info.node_id.clone(),
                transport: info.transport,
                link_id: msg.link_id,
                kind: info.kind.name(),
            }));
        }
        self.drive(ctx);
    }
}

impl Handler<LinkRtt> for RelayActor {
    type Result = ();

    fn handle(&mut self, msg: LinkRtt, _: &mut Self::Context) {
        self.router.link_rtt(msg.link_id, msg.avg_us);
    }
}

impl Handler<LinkDown> for RelayActor {
    type Result = ();

    fn handle(&mut self, msg: LinkDown, ctx: &mut Self::Context) {
        if self.links.remove(&msg.link_id).is_some() {
            if let Some(info) = self.router.link_info(msg.link_id) {
                self.peers.events.do_send(Publish(Event::PeerDown {
                    node: info.node_id.clone(),
                    transport: info.transport,
                    link_id: msg.link_id,
                    reason: msg.reason,
                }));
            }
            self.router.link_down(now(&self.node), msg.link_id);
            self.drive(ctx);
        }
    }
}

impl Handler<PunchIn> for RelayActor {
    type Result = ();

    fn handle(&mut self, msg: PunchIn, ctx: &mut Self::Context) {
        self.router
            .punch_datagram(msg.local, msg.from, msg.token, msg.ack);
        self.drive(ctx);
    }
}

#[cfg(feature = "fault-injection")]
impl Handler<DropData> for RelayActor {
    type Result = ();

    fn handle(&mut self, msg: DropData, _: &mut Self::Context) {
        self.drop_data = msg.0;
    }
}

impl Handler<GetMessageStatus> for RelayActor {
    type Result = MessageResult<GetMessageStatus>;

    fn handle(&mut self, msg: GetMessageStatus, _: &mut Self::Context) -> Self::Result {
        MessageResult(self.router.message_status(msg.0))
    }
}

impl Handler<CancelMessage> for RelayActor {
    type Result = MessageResult<CancelMessage>;

    fn handle(&mut self, msg: CancelMessage, ctx: &mut Self::Context) -> Self::Result {
        let result = self.router.cancel(now(&self.node), msg.0);
        self.drive(ctx);
        MessageResult(result)
    }
}

impl Handler<GetOutbox> for RelayActor {
    type Result = MessageResult<GetOutbox>;

    fn handle(&mut self, msg: GetOutbox, _: &mut Self::Context) -> Self::Result {
        MessageResult(self.router.outbox_page(msg.after, msg.limit))
    }
}

impl Handler<GetMessages> for RelayActor {
    type Result = MessageResult<GetMessages>;

    fn handle(&mut self, _: GetMessages, _: &mut Self::Context) -> Self::Result {
        MessageResult(self.router.inbox())
    }
}

/// A config reload: what the router takes on (see `Router::reconfigure`).
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct Reconfigure(pub crate::config::Reloadable);

impl Handler<Reconfigure> for RelayActor {
    type Result = ();

    fn handle(&mut self, Reconfigure(r): Reconfigure, ctx: &mut Self::Context) {
        self.router.reconfigure(
            now(&self.node),
            r.scripts.keys().cloned().collect(),
            r.script_allow
                .iter()
                .map(|(name, ids)| (name.clone(), ids.iter().cloned().collect()))
                .collect(),
            r.relay_network_whitelist,
            r.foreign_relay_bps_limit,
            r.pinned_keys,
        );
        self.router
            .set_config_subscriptions(now(&self.node), r.subscriptions);
        self.drive(ctx);
    }
}

impl Handler<GetTopology> for RelayActor {
    type Result = MessageResult<GetTopology>;

    fn handle(&mut self, _: GetTopology, _: &mut Self::Context) -> Self::Result {
        MessageResult(self.router.topology())
    }
}

impl Handler<GetRoutes> for RelayActor {
    type Result = MessageResult<GetRoutes>;

    fn handle(&mut self, _: GetRoutes, _: &mut Self::Context) -> Self::Result {
        MessageResult(self.router.report())
    }
}

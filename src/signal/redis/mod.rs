//! Multi-node signaling over Redis (`--redis URL`): any number of nodes
//! share rooms, and two peers on two nodes talk as if on one.
//!
//! Room membership lives in Redis (`scripts` has the keys and the Lua
//! scripts that apply the room rules atomically: a join's room size limit
//! and already-joined check stay there); deliveries to another node's
//! members go over pub/sub on that node's channel.
//!
//! Relays are routed without asking Redis: each node keeps, in its room
//! core (`rooms::Rooms`), a copy of the members on other nodes of every room
//! that has a member here, and publishes an offer/answer/candidate straight
//! to the target's node (`batch`: plain pipelined PUBLISHes, one per node
//! per batch). The receiving node delivers it only to its own member of that
//! room, and otherwise sends the refusal back on the sender node's channel,
//! where it reaches the sender as a strike (`LocalDelivery::refuse`). How the
//! copy stays right enough, race by race:
//! - *a member joins on another node*: its `joined` reaches every node with
//!   a member in the room (the join script publishes it in the same atomic
//!   step as the write, naming the joiner's node), and the reader copies it
//!   before it hands the `joined` on, so a member here can relay to the
//!   joiner as soon as it hears of it; the joiner's node learns the others
//!   from the room it read. A target the copy does not have is refused here
//!   at once, without asking Redis: a client learns ids only from
//!   `created`/`joined`, which this node copies before handing on, so such a
//!   target left already or was never in the room (asking Redis would cost a
//!   round trip per such relay, and a client sending to made-up ids would
//!   make Redis pay for it);
//! - *a joiner is written in Redis but its node has not had the script's
//!   answer yet* (the joiner may already hear `created`, others `joined`,
//!   and either relay): the node counts the join from just before the write
//!   (`Rooms::begin_join`) and undoes it if the write was not applied;
//! - *a member left but its `exit` is not seen here yet*: the relay is
//!   routed to its old node, which refuses it (the member is not its member
//!   of that room any more) and the sender hears `not_in_room` a moment
//!   later, as from any late refusal;
//! - *Redis restarts (or is emptied) or the subscription drops*: `joined`/
//!   `exit` published meanwhile are lost, so the re-assertion after a
//!   reconnect reads back every member Redis lists in this node's rooms
//!   (what other nodes re-asserted) into the copies, and applies the
//!   departures it is told about; entries it cannot know are stale (a member
//!   who left while this node was cut off) cost at most a refusal from that
//!   member's node, never a wrong delivery;
//! - *a node dies*: relays to its members are published to a channel no one
//!   listens on, and the sender is told so (`internal`, as before); once the
//!   node is reaped its members' `exit`s take them out of the copies.
//!
//! Order of membership news: a join's `created` and every `joined` it causes,
//! this node's members' included, are published by the join's script, and a
//! leave's `exit`s by the leave's script; each node reads its channel in
//! order, so every member hears of joins and leaves in the order Redis
//! applied them, wherever the joiners are (before, this node's members were
//! told by the joining task after the script returned, so two joins could
//! cross on their way to a member, and a `joined` from another node could
//! overtake the joiner's own `created`). Only while Redis (or this node's
//! subscription) is away does a node tell its own members directly: leaves
//! then, and a join that found its own channel unsubscribed. Joins of one
//! room on one node take turns, so a join's optimistic write races only
//! other nodes' joins.
//!
//! Redis can go away and come back (empty, after a restart) without costing
//! a live member its room:
//! - every connection reconnects with backoff (`link`); while Redis is away,
//!   members of the same node keep talking, and joins or messages to other
//!   nodes fail at once with `internal` and a message that says so;
//! - each node is the source of truth for its own members: after a
//!   reconnect it re-asserts its presence and every member it has (in
//!   joining order) before serving requests again, and leaves that happened
//!   meanwhile are written then (with a short-lived tombstone, so nodes that
//!   re-assert later still tell their members `exit`);
//! - a node is declared dead only by evidence that survives an outage: its
//!   presence key (a Redis expiry it renews every heartbeat) is gone, as seen
//!   by a node that has itself been connected for a whole `--node-ttl`
//!   (enough for every live node to have re-asserted). Stale heartbeats while
//!   Redis was down are never evidence.

mod batch;
mod link;
mod scripts;

use std::borrow::Cow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use futures::StreamExt;
use redis::aio::MultiplexedConnection;
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, mpsc};

use crate::error::UsageError;
use crate::signal::protocol::{
    ClientMessage, ErrorCode, IceServer, MessageKind, PeerId, Refusal, RoomId, ServerMessage,
};
use crate::signal::rooms::{Delivery, Effect, LocalDelivery, Member, Place, Rooms};

use batch::Publish;
use link::{Backoff, Link, StoreError};
use scripts::{NODESET, TOMBSTONE_SECS, alive_key, channel, members_key, room_key};

/// One envelope on a node's channel, as read: a delivery (`msg`, kept as
/// JSON text, which a `/ws` client gets as it is, never parsed into a
/// message and written again), or a refusal sent back to a sender (`refused`).
/// A relay also names its sender, room and the sender's node (for the
/// membership check and a refusal); a `joined` names the joiner's node
/// (for this node's copy of the room).
#[derive(Debug, Deserialize)]
struct Envelope<'a> {
    #[serde(borrow)]
    to: Cow<'a, str>,
    #[serde(borrow, default)]
    msg: Option<&'a serde_json::value::RawValue>,
    #[serde(borrow, default)]
    node: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    from: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    room: Option<Cow<'a, str>>,
    #[serde(default)]
    refused: Option<WireRefusal>,
}

/// A refusal on its way back to the sender's node.
#[derive(Debug, Serialize, Deserialize)]
struct WireRefusal {
    code: ErrorCode,
    message: String,
}

/// The deliveries in one message on a node's channel: one envelope, or an
/// array of them (`batch`).
fn envelopes(payload: &[u8]) -> serde_json::Result<Vec<Envelope<'_>>> {
    if payload.first() == Some(&b'[') {
        serde_json::from_slice(payload)
    } else {
        serde_json::from_slice(payload).map(|e| vec![e])
    }
}

/// [`Envelope`] as written.
#[derive(Serialize)]
struct EnvelopeRef<'a> {
    to: &'a PeerId,
    #[serde(skip_serializing_if = "Option::is_none")]
    node: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    from: Option<&'a PeerId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    room: Option<&'a RoomId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    msg: Option<&'a ServerMessage>,
    #[serde(skip_serializing_if = "Option::is_none")]
    refused: Option<&'a WireRefusal>,
}

impl<'a> EnvelopeRef<'a> {
    fn delivery(d: &'a Delivery) -> Self {
        EnvelopeRef { to: &d.to, node: None, from: None, room: None, msg: Some(&d.msg), refused: None }
    }

    fn encode(&self) -> Result<String, Refusal> {
        serde_json::to_string(self)
            .map_err(|e| Refusal::new(ErrorCode::Internal, format!("encoding a delivery for Redis: {e}")))
    }
}

/// A `joined` (or any delivery) from this node's `node`.
fn envelope_from(d: &Delivery, node: &str) -> Result<String, Refusal> {
    EnvelopeRef { node: Some(node), ..EnvelopeRef::delivery(d) }.encode()
}

/// What a `joined` or `exit` says (parsed only for this node's copy of the room).
#[derive(Deserialize)]
struct Membership<'a> {
    #[serde(borrow, alias = "from")]
    id: Cow<'a, str>,
    #[serde(borrow)]
    room: Cow<'a, str>,
}

/// A join re-reads the room and decides again when the room changed between
/// its read and its write (another join or leave at the same moment); after
/// this many tries it gives up with `internal`. Joins of one room on one node
/// take turns ([`JOIN_STRIPES`]), so a join only races other nodes' (and
/// leaves): with k nodes joining at once, each try is won by one of them.
const JOIN_ATTEMPTS: usize = 32;

/// Joins on this node whose rooms hash alike take turns: without it, many
/// joins of one room at once on one node mostly fail each other's check
/// and retry (14 at once ran out of 8 tries in a test).
const JOIN_STRIPES: usize = 64;

/// Presence timing.
#[derive(Debug, Clone, Copy)]
pub struct Presence {
    /// How often a node renews its presence.
    pub heartbeat: Duration,
    /// A node whose presence is gone this long is dead; its members leave their rooms.
    pub node_ttl: Duration,
}

impl Default for Presence {
    fn default() -> Self {
        Presence { heartbeat: Duration::from_secs(1), node_ttl: Duration::from_secs(5) }
    }
}

impl Presence {
    /// Lifetime of the presence key: expired `heartbeat` before `node_ttl`,
    /// so that the reaper, which looks every `heartbeat`, acts within `node_ttl`.
    fn key_lifetime(&self) -> Duration {
        self.node_ttl.saturating_sub(self.heartbeat).max(self.heartbeat * 2)
    }
}

/// A leave Redis has not heard of yet.
#[derive(Debug, Clone)]
struct PendingLeave {
    peer: PeerId,
    room: RoomId,
    notice: String,
}

struct Scripts {
    join: redis::Script,
    leave: redis::Script,
    heartbeat: redis::Script,
    reassert: redis::Script,
    reap: redis::Script,
}

pub struct Backplane {
    node: String,
    url: String,
    link: Link,
    presence: Presence,
    /// The room rules and this node's members: the truth it re-asserts after an outage.
    core: Mutex<Rooms>,
    /// Leaves not yet written to Redis (it was away); written after reconnecting.
    pending_leaves: Mutex<Vec<PendingLeave>>,
    /// Whether this node's channel subscription is up.
    subscribed: AtomicBool,
    /// Wakes the supervisor when the subscription ends.
    sub_lost: Notify,
    /// `exit`s for this node's members about departures it learnt while
    /// re-asserting; the supervisor hands them to the hub.
    late_exits: Mutex<Vec<Delivery>>,
    /// Cross-node relays and refusals sent back, published in batches (`batch`).
    relay_queue: mpsc::Sender<Publish>,
    /// The queue's other end, until `start` hands it to the writer.
    relay_rx: Mutex<Option<mpsc::Receiver<Publish>>>,
    scripts: Scripts,
    /// Turns for joins on this node, per stripe of rooms (`JOIN_STRIPES`).
    join_turns: Vec<tokio::sync::Mutex<()>>,
}

fn stripe(room: &RoomId) -> usize {
    use std::hash::{BuildHasher, BuildHasherDefault};
    let h = BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default().hash_one(room);
    (h % JOIN_STRIPES as u64) as usize
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Backplane {
    /// Connects; a bad URL or an unreachable server is the user's to fix.
    pub async fn connect(url: &str, max_room: usize, presence: Presence) -> Result<Self, UsageError> {
        let client = redis::Client::open(url)
            .map_err(|e| UsageError::new(format!("bad --redis URL '{url}': {e} (expected redis://HOST:PORT/)")))?;
        let link = Link::new(client);
        let con = tokio::time::timeout(Duration::from_secs(5), link.connect())
            .await
            .map_err(|_| {
                UsageError::new(format!("--redis {url}: no answer within 5 s; is redis-server running there?"))
            })?
            .map_err(|e| UsageError::new(format!("--redis {url}: {e}; is redis-server running there?")))?;
        link.install(con);
        let (relay_queue, relay_rx) = mpsc::channel(batch::QUEUE);
        Ok(Backplane {
            node: PeerId::random().0,
            url: url.to_string(),
            link,
            presence,
            core: Mutex::new(Rooms::clustered(max_room)),
            pending_leaves: Mutex::new(Vec::new()),
            subscribed: AtomicBool::new(false),
            sub_lost: Notify::new(),
            late_exits: Mutex::new(Vec::new()),
            relay_queue,
            relay_rx: Mutex::new(Some(relay_rx)),
            scripts: Scripts {
                join: redis::Script::new(scripts::JOIN),
                leave: redis::Script::new(scripts::LEAVE),
                heartbeat: redis::Script::new(scripts::HEARTBEAT),
                reassert: redis::Script::new(scripts::REASSERT),
                reap: redis::Script::new(scripts::REAP),
            },
            join_turns: (0..JOIN_STRIPES).map(|_| tokio::sync::Mutex::new(())).collect(),
        })
    }

    pub fn node_id(&self) -> &str {
        &self.node
    }

    /// Rooms with a member on this node.
    pub fn local_room_count(&self) -> usize {
        lock(&self.core).room_count()
    }

    /// What a client is told when Redis is not there for a cross-node operation.
    fn unreachable(&self, what: &str, e: StoreError) -> Refusal {
        if let StoreError::Redis(e) = &e {
            tracing::warn!("redis {}: {what} failed: {e}", self.url);
        }
        Refusal::new(
            ErrorCode::Internal,
            format!(
                "{what} needs the room store (Redis), which is not reachable right now; \
                 members on this node can still talk to each other; try again in a few seconds"
            ),
        )
    }

    /// Subscribes to this node's channel, writes its presence, and starts the
    /// supervisor (heartbeat, reconnects, re-assertion, reaping). Both stop
    /// when the hub is dropped.
    pub async fn start<H: LocalDelivery + 'static>(self: &Arc<Self>, hub: Weak<H>) -> Result<(), UsageError> {
        let pubsub = self
            .subscribe()
            .await
            .map_err(|e| UsageError::new(format!("--redis {}: cannot subscribe: {e}", self.url)))?;
        self.spawn_reader(pubsub, hub.clone());
        let con = self.link.get().map_err(|e| UsageError::new(format!("--redis {}: {e}", self.url)))?;
        self.reassert(&con).await.map_err(|e| UsageError::new(format!("--redis {}: {e}", self.url)))?;
        if let Some(rx) = lock(&self.relay_rx).take() {
            tokio::spawn(batch::write_batches(Arc::downgrade(self), rx, hub.clone()));
        }
        tokio::spawn(supervise(Arc::downgrade(self), hub));
        Ok(())
    }

    async fn subscribe(&self) -> redis::RedisResult<redis::aio::PubSub> {
        let connect = self.link.client().get_async_pubsub();
        let mut p = match tokio::time::timeout(link::CONNECT_TIMEOUT, connect).await {
            Ok(r) => r?,
            Err(_) => return Err(std::io::Error::from(std::io::ErrorKind::TimedOut).into()),
        };
        p.subscribe(channel(&self.node)).await?;
        Ok(p)
    }

    /// Hands what arrives on this node's channel to the hub, until the
    /// subscription ends (then the supervisor subscribes again).
    fn spawn_reader<H: LocalDelivery + 'static>(self: &Arc<Self>, pubsub: redis::aio::PubSub, hub: Weak<H>) {
        self.subscribed.store(true, Ordering::SeqCst);
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut stream = pubsub.into_on_message();
            while let Some(msg) = stream.next().await {
                let (Some(hub), Some(b)) = (hub.upgrade(), me.upgrade()) else { return };
                match envelopes(msg.get_payload_bytes()) {
                    Ok(envs) => {
                        for env in envs {
                            b.receive(&*hub, env);
                        }
                    }
                    Err(e) => tracing::warn!("dropping a malformed delivery from redis: {e}"),
                }
            }
            if let Some(b) = me.upgrade() {
                tracing::warn!("redis {}: subscription lost; subscribing again", b.url);
                b.subscribed.store(false, Ordering::SeqCst);
                b.sub_lost.notify_one();
            }
        });
    }

    /// One envelope from this node's channel: a refusal for a sender here,
    /// or a delivery for a member here. A relay is delivered only if its
    /// target is this node's member of the relay's room (else refused back
    /// to the sender's node); a `joined` or `exit` updates this node's copy
    /// of the room before the member hears of it, so a reply to it routes.
    fn receive<H: LocalDelivery>(&self, hub: &H, env: Envelope<'_>) {
        if let Some(r) = env.refused {
            hub.refuse(&PeerId(env.to.into_owned()), Refusal::new(r.code, r.message));
            return;
        }
        let Some(msg) = env.msg else {
            tracing::warn!("dropping an envelope from redis with neither msg nor refused");
            return;
        };
        let json = msg.get();
        let Some(kind) = MessageKind::of_json(json) else {
            tracing::warn!("dropping a delivery from redis with no known type");
            return;
        };
        match kind {
            MessageKind::Offer | MessageKind::Answer | MessageKind::Candidate => {
                let Some(room) = env.room.as_deref() else {
                    tracing::warn!("dropping a relay from redis that names no room");
                    return;
                };
                if !lock(&self.core).accepts(&env.to, room) {
                    self.refuse_back(&env, room);
                    return;
                }
            }
            MessageKind::Joined | MessageKind::Exit => match serde_json::from_str::<Membership>(json) {
                Ok(m) => {
                    let (room, peer) = (RoomId(m.room.into_owned()), PeerId(m.id.into_owned()));
                    let mut core = lock(&self.core);
                    match (kind, env.node.as_deref()) {
                        (MessageKind::Joined, Some(node)) => core.seen_joined(&room, &peer, node),
                        (MessageKind::Joined, None) => tracing::warn!("a joined from redis names no node"),
                        _ => core.seen_exit(&room, &peer),
                    }
                }
                Err(e) => tracing::warn!("a {} from redis without id and room: {e}", kind.as_str()),
            },
            _ => {}
        }
        hub.deliver_json(&env.to, kind, json);
    }

    /// A relay for someone who is not this node's member of `room` (left,
    /// or never was): the refusal goes back to the sender's node, which
    /// hands it to the sender as a strike (`batch`).
    fn refuse_back(&self, env: &Envelope<'_>, room: &str) {
        let (Some(from), Some(node)) = (env.from.as_deref(), env.node.as_deref()) else {
            tracing::warn!("dropping a relay from redis for a non-member that names no sender");
            return;
        };
        let r = Rooms::not_in_room(&PeerId(env.to.to_string()), &RoomId(room.to_string()));
        let wire = WireRefusal { code: r.code, message: r.message };
        let from = PeerId(from.to_string());
        let envelope = EnvelopeRef { to: &from, node: None, from: None, room: None, msg: None, refused: Some(&wire) };
        let Ok(payload) = envelope.encode() else { return };
        if self.relay_queue.try_send(Publish { node: node.to_string(), payload, relay: None }).is_err() {
            tracing::warn!("relay queue full: a refusal for {from} on node {node} was dropped");
        }
    }

    /// Writes presence and every local member (in joining order) on `con`;
    /// tells local members who left their rooms on other nodes meanwhile.
    async fn reassert(&self, con: &MultiplexedConnection) -> redis::RedisResult<usize> {
        let members = lock(&self.core).local_members();
        let mut inv = self.scripts.reassert.prepare_invoke();
        inv.key(members_key(&self.node))
            .key(alive_key(&self.node))
            .key(NODESET)
            .arg(&self.node)
            .arg(self.presence.key_lifetime().as_millis() as u64)
            .arg(TOMBSTONE_SECS);
        for (peer, room) in &members {
            inv.arg(peer.as_str()).arg(room.as_str());
        }
        let (told, listed): (Vec<String>, Vec<String>) = inv.invoke_async(&mut con.clone()).await?;
        let mut core = lock(&self.core);
        // What Redis now lists in this node's rooms: members other nodes
        // re-asserted, or joined while this node's news of them was lost
        // (Redis restarted, the subscription dropped). Added to the copies;
        // a stale entry costs at most a refusal from that member's node.
        for t in listed.chunks_exact(3) {
            if t[2] != self.node {
                core.seen_joined(&RoomId(t[0].clone()), &PeerId(t[1].clone()), &t[2]);
            }
        }
        for t in told.chunks_exact(3) {
            let (to, from, room) = (PeerId(t[0].clone()), PeerId(t[1].clone()), RoomId(t[2].clone()));
            tracing::info!(peer = %to, left = %from, %room, "telling a member who left while Redis was away");
            core.seen_exit(&room, &from);
            lock(&self.late_exits).push(Delivery { to, msg: ServerMessage::Exit { from, room } });
        }
        Ok(members.len())
    }

    async fn heartbeat(&self, con: &MultiplexedConnection) -> redis::RedisResult<bool> {
        let existed: i64 = self
            .scripts
            .heartbeat
            .key(alive_key(&self.node))
            .key(NODESET)
            .arg(&self.node)
            .arg(self.presence.key_lifetime().as_millis() as u64)
            .invoke_async(&mut con.clone())
            .await?;
        Ok(existed == 1)
    }

    /// Removes the members of nodes whose presence key has expired.
    async fn reap_dead(&self, con: &MultiplexedConnection) -> redis::RedisResult<()> {
        let mut con = con.clone();
        let nodes: Vec<String> = redis::cmd("SMEMBERS").arg(NODESET).query_async(&mut con).await?;
        for node in nodes.into_iter().filter(|n| *n != self.node) {
            let n: i64 = self
                .scripts
                .reap
                .key(NODESET)
                .key(members_key(&node))
                .key(alive_key(&node))
                .arg(&node)
                .arg("other")
                .invoke_async(&mut con)
                .await?;
            if n > 0 {
                tracing::info!(node = %node, members = n, "reaped a dead node: its members left their rooms");
            }
        }
        Ok(())
    }

    /// Writes the leaves that happened while Redis was away.
    async fn flush_pending_leaves(&self, con: &MultiplexedConnection) -> redis::RedisResult<()> {
        let pending = std::mem::take(&mut *lock(&self.pending_leaves));
        for (i, leave) in pending.iter().enumerate() {
            let r = self.write_leave(con, leave, TOMBSTONE_SECS, false).await;
            if let Err(e) = r {
                lock(&self.pending_leaves).extend(pending[i..].iter().cloned());
                return Err(e);
            }
            tracing::info!(peer = %leave.peer, room = %leave.room, "wrote a leave from while Redis was away");
        }
        Ok(())
    }

    async fn write_leave(
        &self,
        con: &MultiplexedConnection,
        leave: &PendingLeave,
        tombstone_secs: u64,
        tell_own: bool,
    ) -> redis::RedisResult<i64> {
        self.scripts
            .leave
            .key(room_key(leave.room.as_str()))
            .key(members_key(&self.node))
            .arg(leave.peer.as_str())
            .arg(leave.room.as_str())
            .arg(&self.node)
            .arg(tombstone_secs)
            .arg(&leave.notice)
            .arg(if tell_own { "all" } else { "others" })
            .invoke_async::<i64>(&mut con.clone())
            .await
    }

    /// On shutdown: this node's members leave their rooms now rather than at expiry.
    pub async fn retire(&self) {
        let Ok(mut con) = self.link.get() else {
            tracing::warn!("redis {}: not connected; this node's members leave at --node-ttl", self.url);
            return;
        };
        let r: redis::RedisResult<i64> = self
            .scripts
            .reap
            .key(NODESET)
            .key(members_key(&self.node))
            .key(alive_key(&self.node))
            .arg(&self.node)
            .arg("self")
            .invoke_async(&mut con)
            .await;
        if let Err(e) = r {
            tracing::warn!("redis {}: could not remove this node's members: {e}", self.url);
        }
    }

    /// Join and relay: the room core decides, this carries out its effects
    /// (same-node relays skip Redis).
    pub async fn handle(&self, from: &PeerId, msg: ClientMessage, ice: &[IceServer]) -> Result<Vec<Delivery>, Refusal> {
        match msg {
            ClientMessage::Join { room } => self.join(from, &room, ice).await,
            ClientMessage::Leave => Err(Refusal::new(ErrorCode::BadMessage, "leave goes through Backplane::leave")),
            relay => {
                let effect = lock(&self.core).relay(from, relay)?;
                match effect {
                    Effect::Deliver(d) => Ok(vec![d]),
                    Effect::Route { node, room, delivery } => {
                        self.route(from, node, room, delivery).await.map(|()| vec![])
                    }
                    other => {
                        tracing::error!("the room core answered a relay with {other:?}; dropped");
                        Ok(vec![])
                    }
                }
            }
        }
    }

    /// A join: read the room, let the core decide, write it if the room is
    /// still as read (else read again). The deliveries for this node.
    async fn join(&self, from: &PeerId, room: &RoomId, ice: &[IceServer]) -> Result<Vec<Delivery>, Refusal> {
        lock(&self.core).check_join(from, room)?;
        let _turn = self.join_turns[stripe(room)].lock().await;
        let mut con = self.link.get().map_err(|e| self.unreachable("join", e))?;
        for _ in 0..JOIN_ATTEMPTS {
            let flat: Vec<String> = redis::cmd("HGETALL")
                .arg(room_key(room.as_str()))
                .query_async(&mut con)
                .await
                .map_err(|e| self.unreachable("join", self.link.failed(e)))?;
            let before: Vec<Member> = flat
                .chunks_exact(2)
                .map(|kv| Member {
                    peer: PeerId(kv[0].clone()),
                    place: if kv[1] == self.node { Place::Here } else { Place::Node(kv[1].clone()) },
                })
                .collect();
            let effects = lock(&self.core).join(from, room, &before, ice)?;
            let mut inv = self.scripts.join.prepare_invoke();
            inv.key(room_key(room.as_str()))
                .key(members_key(&self.node))
                .arg(from.as_str())
                .arg(&self.node)
                .arg(room.as_str())
                .arg(flat.len());
            for v in &flat {
                inv.arg(v);
            }
            // Every delivery goes through Redis, this node's too (`created`
            // first): members hear of joins in the order Redis applied them,
            // whichever node they and the joiners are on.
            let mut local = vec![];
            for e in effects {
                match e {
                    Effect::Forward { node, delivery } => {
                        inv.arg(node).arg(envelope_from(&delivery, &self.node)?);
                    }
                    Effect::Deliver(d) => {
                        inv.arg(&self.node).arg(envelope_from(&d, &self.node)?);
                        local.push(d);
                    }
                    Effect::Add { .. } => {}
                    other => tracing::error!("the room core answered a join with {other:?}; dropped"),
                }
            }
            // Counted here before the write: once written, the joiner hears
            // `created` and others `joined`, and either may relay at once.
            lock(&self.core).begin_join(from, room, &before);
            let applied = inv.invoke_async::<i64>(&mut con).await;
            lock(&self.core).end_join(from, matches!(applied, Ok(n) if n != 0));
            match applied.map_err(|e| self.unreachable("join", self.link.failed(e)))? {
                0 => continue,
                1 => {
                    tracing::info!(peer = %from, %room, others = before.len(), "joined");
                    return Ok(vec![]);
                }
                _ => {
                    // Our subscription is being renewed: what Redis published
                    // to this node is lost, so hand our members theirs here.
                    tracing::warn!(peer = %from, %room, "joined while this node's channel was unsubscribed");
                    return Ok(local);
                }
            }
        }
        Err(Refusal::new(
            ErrorCode::Internal,
            format!("room \"{room}\" kept changing during {JOIN_ATTEMPTS} join attempts; try again"),
        ))
    }

    /// Delivers to a member of `room` on `node`, through its channel. Queued
    /// for the batch writer without waiting for Redis: a refusal (the target
    /// is not that node's member of the room, the node is not listening,
    /// Redis failing) reaches `from` later (`batch`). Refused at once only
    /// when Redis is known to be away.
    async fn route(&self, from: &PeerId, node: String, room: RoomId, delivery: Delivery) -> Result<(), Refusal> {
        if !self.link.is_up() {
            let what = format!("a message to \"{}\" (not on this node)", delivery.to);
            return Err(self.unreachable(&what, StoreError::Down));
        }
        let payload = EnvelopeRef {
            node: Some(&self.node),
            from: Some(from),
            room: Some(&room),
            ..EnvelopeRef::delivery(&delivery)
        }
        .encode()?;
        let request = Publish { node, payload, relay: Some((from.clone(), delivery.to)) };
        if let Err(e) = self.relay_queue.send(request).await {
            let to = e.0.relay.map(|(_, to)| to.0).unwrap_or_default();
            let what = format!("a message to \"{to}\" (not on this node)");
            return Err(self.unreachable(&what, StoreError::Down));
        }
        Ok(())
    }

    /// Takes a local peer out of its room: `exit` to the members on this
    /// node is returned (from the core's own knowledge, so it works while
    /// Redis is away); the other nodes' members hear it through Redis, at
    /// once or, if Redis is away, once it is back.
    pub async fn leave(&self, peer: &PeerId) -> Option<(RoomId, Vec<Delivery>)> {
        let (room, effects) = lock(&self.core).leave(peer)?;
        let mut out = vec![];
        for e in effects {
            match e {
                Effect::Deliver(d) => out.push(d),
                Effect::Remove { room, peer, notice } => {
                    let leave = PendingLeave { peer, room, notice: notice.to_json() };
                    let written = match self.link.get() {
                        Ok(con) => self.write_leave(&con, &leave, 0, true).await.map_err(|e| self.link.failed(e)),
                        Err(e) => Err(e),
                    };
                    // Written: this node's members hear the `exit` through
                    // Redis too, after any `joined` published before it.
                    // (Not written: they are told here, at once.)
                    if let Ok(1) = written {
                        out.clear();
                    }
                    if let Err(e) = written {
                        tracing::warn!(
                            "redis {}: leave of {} from {} not written yet ({e}); will be after reconnecting",
                            self.url,
                            leave.peer,
                            leave.room
                        );
                        lock(&self.pending_leaves).push(leave);
                    }
                }
                other => tracing::error!("the room core answered a leave with {other:?}; dropped"),
            }
        }
        Some((room, out))
    }
}

/// The node's connection keeper: heartbeats; on a lost connection or
/// subscription, reconnects with backoff, re-asserts presence and members,
/// then serves again; writes leaves from the outage; reaps dead nodes once
/// it has been connected for a whole `--node-ttl`.
async fn supervise<H: LocalDelivery + 'static>(me: Weak<Backplane>, hub: Weak<H>) {
    let mut backoff = Backoff::new();
    // Connected since: start() connected and re-asserted just before.
    let mut up_since = Some(Instant::now());
    let mut reported_down = false;
    loop {
        let Some(b) = me.upgrade() else { return };
        if hub.strong_count() == 0 {
            return;
        }
        if !b.subscribed.load(Ordering::SeqCst) {
            // Deliveries for this node are lost while unsubscribed: serve no
            // cross-node request until the subscription is back.
            b.link.take_down();
            up_since = None;
            match b.subscribe().await {
                Ok(p) => b.spawn_reader(p, hub.clone()),
                Err(e) => {
                    if !reported_down {
                        tracing::warn!("redis {}: cannot subscribe ({e}); retrying with backoff", b.url);
                        reported_down = true;
                    }
                    let d = backoff.next_delay();
                    drop(b);
                    tokio::time::sleep(d).await;
                    continue;
                }
            }
        }
        if !b.link.is_up() {
            up_since = None;
            // Re-assert and write the outage's leaves before any request can
            // use the connection: a join must see the room with this node's
            // members, and a late leave must not land after a newer join.
            let r = async {
                let con = b.link.connect().await?;
                let n = b.reassert(&con).await?;
                b.flush_pending_leaves(&con).await?;
                Ok::<_, redis::RedisError>((con, n))
            }
            .await;
            match r {
                Ok((con, n)) => {
                    b.link.install(con);
                    up_since = Some(Instant::now());
                    reported_down = false;
                    tracing::info!("redis {}: connected again; re-asserted this node and its {n} members", b.url);
                }
                Err(e) => {
                    if !reported_down {
                        tracing::warn!("redis {}: cannot reconnect ({e}); retrying with backoff", b.url);
                        reported_down = true;
                    }
                    let d = backoff.next_delay();
                    drop(b);
                    tokio::time::sleep(d).await;
                    continue;
                }
            }
        }
        backoff.reset();
        let step = async {
            let con = b.link.get()?;
            if !b.heartbeat(&con).await.map_err(|e| b.link.failed(e))? {
                // Our presence was gone (Redis lost it, or we were cut off long
                // enough to be reaped): stop requests and go through the
                // reconnect path, which re-asserts before serving again.
                tracing::warn!("redis {}: this node's presence had expired; re-asserting its members", b.url);
                b.link.take_down();
                return Err(StoreError::Down);
            }
            b.flush_pending_leaves(&con).await.map_err(|e| b.link.failed(e))?;
            if up_since.is_some_and(|t| t.elapsed() >= b.presence.node_ttl) {
                b.reap_dead(&con).await.map_err(|e| b.link.failed(e))?;
            }
            Ok::<(), StoreError>(())
        };
        let result = step.await;
        let late = std::mem::take(&mut *lock(&b.late_exits));
        if let Some(h) = hub.upgrade() {
            for d in late {
                h.deliver(d);
            }
        }
        if let Err(e) = result {
            tracing::debug!("redis {}: heartbeat step failed: {e}", b.url);
            if !b.link.is_up() {
                continue; // reconnect now, with backoff
            }
        }
        let period = b.presence.heartbeat;
        let lost = async {
            tokio::select! {
                _ = b.link.broken.notified() => {}
                _ = b.sub_lost.notified() => {}
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(period) => {}
            _ = lost => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deliveries_from_redis_keep_the_message_text_as_written() {
        let offer = ClientMessage::offer("b".into(), "v=0 \u{e9}\n").relayed("a".into(), "r".into()).unwrap();
        let d = Delivery { to: "b".into(), msg: offer.clone() };
        let one = EnvelopeRef::delivery(&d).encode().unwrap();
        let envs = envelopes(one.as_bytes()).unwrap();
        assert_eq!(envs.len(), 1);
        assert_eq!(envs[0].to, "b");
        assert_eq!(envs[0].msg.map(|m| m.get()), Some(offer.to_json().as_str()));
        // A batch is a JSON array of the same envelopes (`batch`).
        let batch = format!("[{one},{one}]");
        let envs = envelopes(batch.as_bytes()).unwrap();
        assert_eq!(envs.iter().map(|e| e.msg.unwrap().get()).collect::<Vec<_>>(), vec![offer.to_json(); 2]);
        assert!(envelopes(b"{\"msg\":{}}").is_err(), "no addressee");
        assert!(envelopes(b"[{\"to\":\"b\",\"msg\":{]").is_err());
    }

    #[test]
    fn a_relay_names_its_sender_room_and_node_and_a_refusal_goes_back_to_the_sender() {
        let offer = ClientMessage::offer("b".into(), "v=0").relayed("a".into(), "r".into()).unwrap();
        let d = Delivery { to: "b".into(), msg: offer };
        let (from, room) = (PeerId::from("a"), RoomId::from("r"));
        let relay = EnvelopeRef { node: Some("n1"), from: Some(&from), room: Some(&room), ..EnvelopeRef::delivery(&d) }
            .encode()
            .unwrap();
        let env = &envelopes(relay.as_bytes()).unwrap()[0];
        assert_eq!(
            (env.to.as_ref(), env.from.as_deref(), env.room.as_deref(), env.node.as_deref()),
            ("b", Some("a"), Some("r"), Some("n1"))
        );
        let wire = WireRefusal { code: ErrorCode::NotInRoom, message: "no member".into() };
        let back = EnvelopeRef { to: &from, node: None, from: None, room: None, msg: None, refused: Some(&wire) }
            .encode()
            .unwrap();
        let env = &envelopes(back.as_bytes()).unwrap()[0];
        assert!(env.msg.is_none());
        assert_eq!(env.refused.as_ref().map(|r| r.code), Some(ErrorCode::NotInRoom));
        // A `joined` says which node the joiner is on; an `exit` from a script names none.
        let joined = Delivery { to: "b".into(), msg: ServerMessage::Joined { id: "c".into(), room: "r".into() } };
        let env_text = envelope_from(&joined, "n3").unwrap();
        let env = &envelopes(env_text.as_bytes()).unwrap()[0];
        let m: Membership = serde_json::from_str(env.msg.unwrap().get()).unwrap();
        assert_eq!((m.id.as_ref(), m.room.as_ref(), env.node.as_deref()), ("c", "r", Some("n3")));
        let exit = ServerMessage::Exit { from: "c".into(), room: "r".into() }.to_json();
        let m: Membership = serde_json::from_str(&exit).unwrap();
        assert_eq!((m.id.as_ref(), m.room.as_ref()), ("c", "r"));
    }
}

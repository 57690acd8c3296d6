//! The hub: hands each connection's messages to the room registry and
//! delivers what comes out to the connections' outboxes. Both front doors
//! (`/ws` and socket.io) go through it, so they share rooms.
//!
//! The room rules are the core's (`rooms::Rooms`); a backplane carries out
//! what it decides: `signal::memory` for one node, `signal::redis` (rooms in
//! Redis, deliveries to other nodes over pub/sub) with `--redis`. The
//! dependency runs one way: backplanes hand deliveries back through
//! `rooms::LocalDelivery`, which the hub implements. Outboxes are bounded: a
//! client that stops reading is disconnected rather than allowed to grow the
//! server's memory.
//!
//! A `/ws` connection's outbox is its socket (`ws_out`): a delivery is framed
//! and written there by the delivering task, with no hop through the
//! recipient's task. socket.io connections keep a channel to their writer task.
//!
//! A refusal can also come after the fact: a relay to a member on another
//! node is handed to Redis without waiting (`redis::batch`), and if that
//! node has no such member (or cannot be reached) the refusal comes back
//! later through [`Hub::refuse`], to the sender's connection, which counts it
//! as a strike like any other refusal.

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::mpsc;

use crate::signal::memory;
use crate::signal::metrics::Metrics;
use crate::signal::protocol::{ClientMessage, IceServer, MessageKind, PeerId, Refusal, RoomId, ServerMessage};
use crate::signal::redis::Backplane;
use crate::signal::rooms::{Delivery, LocalDelivery, Rooms};
use crate::signal::ws_out::{JsonFrame, Pushed, WsOut, text_frame};

/// Messages queued for one client before it counts as not reading.
pub const OUTBOX_CAPACITY: usize = 512;

/// Where the rooms live.
// One per server, inside the hub: boxing the one-node rooms would add a
// pointer hop to every message for nothing.
#[allow(clippy::large_enum_variant)]
pub enum Backend {
    Memory(Mutex<Rooms>),
    Redis(Arc<Backplane>),
}

/// What a socket.io connection's writer task is handed.
#[derive(Debug)]
// Nearly every item is a message: boxing it would cost an allocation per delivery to spare the rare refusal.
#[allow(clippy::large_enum_variant)]
pub enum Outgoing {
    Message(ServerMessage),
    /// A refusal of something the client sent earlier, to count as a strike and answer.
    Refused(Refusal),
}

/// One message on its way to a connection: built here, or JSON text from another node.
// Lives on the stack for one delivery; boxing the message would allocate for nothing.
#[allow(clippy::large_enum_variant)]
enum Payload<'a> {
    Message(ServerMessage),
    Json(&'a str),
}

impl Payload<'_> {
    /// The `/ws` text frame.
    fn frame(&self) -> Frame {
        match self {
            Payload::Message(m) => match JsonFrame::new(m) {
                Ok(f) => Frame::InPlace(f),
                Err(_) => Frame::Copied(text_frame(m.to_json().as_bytes())),
            },
            Payload::Json(j) => Frame::Copied(text_frame(j.as_bytes())),
        }
    }

    /// The message itself, for a socket.io connection (which writes events, not frames).
    fn into_message(self) -> Option<ServerMessage> {
        match self {
            Payload::Message(m) => Some(m),
            Payload::Json(j) => serde_json::from_str(j)
                .map_err(|e| tracing::warn!("dropping a delivery from another node that is not a message: {e}"))
                .ok(),
        }
    }
}

enum Frame {
    InPlace(JsonFrame),
    Copied(Vec<u8>),
}

impl Frame {
    fn as_bytes(&self) -> &[u8] {
        match self {
            Frame::InPlace(f) => f.as_bytes(),
            Frame::Copied(v) => v,
        }
    }
}

/// Where a connection's messages go.
enum Outbox {
    /// To the connection's own task (socket.io).
    Queue(mpsc::Sender<Outgoing>),
    /// Straight into its WebSocket (`/ws`).
    Direct(Arc<WsOut>),
}

pub struct Hub {
    outboxes: Mutex<HashMap<PeerId, Outbox>>,
    backend: Backend,
    pub metrics: Arc<Metrics>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves plain data behind; keep serving.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Hub {
    pub fn new(backend: Backend, metrics: Arc<Metrics>) -> Self {
        Hub { outboxes: Mutex::new(HashMap::new()), backend, metrics }
    }

    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    /// Registers a connection; the receiver yields what it must send.
    pub fn attach(&self, peer: &PeerId) -> mpsc::Receiver<Outgoing> {
        let (tx, rx) = mpsc::channel(OUTBOX_CAPACITY);
        lock(&self.outboxes).insert(peer.clone(), Outbox::Queue(tx));
        rx
    }

    /// Registers a `/ws` connection whose messages are written straight into its socket.
    pub fn attach_direct(&self, peer: &PeerId, out: Arc<WsOut>) {
        lock(&self.outboxes).insert(peer.clone(), Outbox::Direct(out));
    }

    /// Handles one accepted message from `from`.
    pub async fn handle(&self, from: &PeerId, msg: ClientMessage, ice: &[IceServer]) -> Result<(), Refusal> {
        self.metrics.received(msg.kind());
        match msg {
            ClientMessage::Leave => {
                let Some(room) = self.leave_room(from).await else {
                    return Err(Rooms::not_joined(MessageKind::Leave));
                };
                tracing::info!(peer = %from, %room, "left");
            }
            msg => {
                let membership = matches!(msg, ClientMessage::Join { .. });
                let deliveries = match &self.backend {
                    Backend::Memory(rooms) => {
                        let mut rooms = lock(rooms);
                        let out = memory::handle(&mut rooms, from, msg, ice)?;
                        self.metrics.rooms.store(rooms.room_count() as i64, Relaxed);
                        if membership {
                            // Written before the next join or leave is decided, so every member hears of
                            // them in the order they happened (a write never waits: see `deliver`).
                            log_join(from, &out);
                            self.deliver_all(out);
                            return Ok(());
                        }
                        out
                    }
                    Backend::Redis(b) => {
                        let out = b.handle(from, msg, ice).await?;
                        self.metrics.rooms.store(b.local_room_count() as i64, Relaxed);
                        out
                    }
                };
                log_join(from, &deliveries);
                self.deliver_all(deliveries);
            }
        }
        Ok(())
    }

    /// Takes `peer` out of its room and tells the others (`exit`); the room it left.
    async fn leave_room(&self, peer: &PeerId) -> Option<RoomId> {
        match &self.backend {
            Backend::Memory(rooms) => {
                let mut rooms = lock(rooms);
                let (room, out) = memory::leave(&mut rooms, peer)?;
                self.metrics.rooms.store(rooms.room_count() as i64, Relaxed);
                // Under the lock, as a join's deliveries are: an `exit` never overtakes the `joined` before it.
                self.deliver_all(out);
                Some(room)
            }
            Backend::Redis(b) => {
                let left = b.leave(peer).await;
                self.metrics.rooms.store(b.local_room_count() as i64, Relaxed);
                let (room, out) = left?;
                self.deliver_all(out);
                Some(room)
            }
        }
    }

    /// A connection ended for any reason: leave its room, drop its outbox.
    pub async fn disconnect(&self, peer: &PeerId) {
        lock(&self.outboxes).remove(peer);
        if let Some(room) = self.leave_room(peer).await {
            tracing::info!(peer = %peer, %room, "left (disconnected)");
        }
    }

    pub fn deliver_all(&self, deliveries: Vec<Delivery>) {
        for d in deliveries {
            self.deliver(d);
        }
    }

    /// Queues one message for a local connection; a full outbox disconnects it.
    pub fn deliver(&self, d: Delivery) -> bool {
        let kind = d.msg.kind();
        self.deliver_payload(&d.to.0, kind, Payload::Message(d.msg))
    }

    /// [`Hub::deliver`] of a message that is already JSON text (from another
    /// node): a `/ws` client gets the text as it is, parsed and written
    /// again by no one.
    pub fn deliver_json(&self, to: &str, kind: MessageKind, json: &str) -> bool {
        self.deliver_payload(to, kind, Payload::Json(json))
    }

    fn deliver_payload(&self, to: &str, kind: MessageKind, payload: Payload<'_>) -> bool {
        let direct = {
            let mut outboxes = lock(&self.outboxes);
            match outboxes.get(to) {
                None => return false,
                Some(Outbox::Direct(out)) => out.clone(),
                Some(Outbox::Queue(tx)) => {
                    let Some(msg) = payload.into_message() else { return false };
                    return match tx.try_send(Outgoing::Message(msg)) {
                        Ok(()) => {
                            self.metrics.sent(kind);
                            true
                        }
                        Err(mpsc::error::TrySendError::Full(_)) => {
                            // Dropping the only sender ends the connection's writer, which closes it.
                            self.slow(to);
                            outboxes.remove(to);
                            false
                        }
                        Err(mpsc::error::TrySendError::Closed(_)) => false,
                    };
                }
            }
        };
        // Framed and written outside the lock: other deliveries go on meanwhile.
        match direct.push(payload.frame().as_bytes()) {
            Pushed::Written | Pushed::Queued => {
                self.metrics.sent(kind);
                true
            }
            Pushed::Full => {
                // The connection's task sees it closed and ends it.
                self.slow(to);
                let mut outboxes = lock(&self.outboxes);
                if matches!(outboxes.get(to), Some(Outbox::Direct(o)) if Arc::ptr_eq(o, &direct)) {
                    outboxes.remove(to);
                }
                false
            }
            Pushed::Closed => false,
        }
    }

    /// Hands `peer`'s connection a refusal of something it sent earlier
    /// (decided after the fact, see the module doc); false when it is gone.
    pub fn refuse(&self, peer: &PeerId, r: Refusal) -> bool {
        let direct = match lock(&self.outboxes).get(peer) {
            None => return false,
            Some(Outbox::Direct(out)) => out.clone(),
            // A full outbox already means the connection is on its way out.
            Some(Outbox::Queue(tx)) => return tx.try_send(Outgoing::Refused(r)).is_ok(),
        };
        direct.refuse(r)
    }

    fn slow(&self, peer: &str) {
        tracing::warn!(peer = %peer, "client is not reading its messages; disconnecting it");
        self.metrics.dropped_slow.fetch_add(1, Relaxed);
    }

    pub fn is_local(&self, peer: &PeerId) -> bool {
        lock(&self.outboxes).contains_key(peer)
    }
}

impl LocalDelivery for Hub {
    fn deliver(&self, d: Delivery) -> bool {
        Hub::deliver(self, d)
    }

    fn refuse(&self, to: &PeerId, r: Refusal) -> bool {
        Hub::refuse(self, to, r)
    }

    fn deliver_json(&self, to: &str, kind: MessageKind, json: &str) -> bool {
        Hub::deliver_json(self, to, kind, json)
    }
}

/// Logs a join from its `created` (the first delivery of a join's result).
fn log_join(from: &PeerId, deliveries: &[Delivery]) {
    if let Some(Delivery { msg: ServerMessage::Created { room, peers, .. }, .. }) = deliveries.first() {
        tracing::info!(peer = %from, %room, others = peers.len(), "joined");
    }
}

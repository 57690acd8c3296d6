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

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::mpsc;

use crate::signal::memory;
use crate::signal::metrics::Metrics;
use crate::signal::protocol::{ClientMessage, IceServer, MessageKind, PeerId, Refusal, RoomId, ServerMessage};
use crate::signal::redis::Backplane;
use crate::signal::rooms::{Delivery, LocalDelivery, Rooms};
use crate::signal::ws_out::{Pushed, WsOut, text_frame};

/// Messages queued for one client before it counts as not reading.
pub const OUTBOX_CAPACITY: usize = 512;

/// Where the rooms live.
pub enum Backend {
    Memory(Mutex<Rooms>),
    Redis(Arc<Backplane>),
}

/// Where a connection's messages go.
enum Outbox {
    /// To the connection's own task (socket.io).
    Queue(mpsc::Sender<ServerMessage>),
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
    pub fn attach(&self, peer: &PeerId) -> mpsc::Receiver<ServerMessage> {
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
                let Some((room, out)) = self.leave_room(from).await else {
                    return Err(Rooms::not_joined(MessageKind::Leave));
                };
                tracing::info!(peer = %from, %room, "left");
                self.deliver_all(out);
            }
            msg => {
                let deliveries = match &self.backend {
                    Backend::Memory(rooms) => {
                        let mut rooms = lock(rooms);
                        let out = memory::handle(&mut rooms, from, msg, ice)?;
                        self.metrics.rooms.store(rooms.room_count() as i64, Relaxed);
                        out
                    }
                    Backend::Redis(b) => {
                        let out = b.handle(from, msg, ice).await?;
                        self.metrics.rooms.store(b.local_room_count() as i64, Relaxed);
                        out
                    }
                };
                if let Some(Delivery { msg: ServerMessage::Created { room, peers, .. }, .. }) = deliveries.first() {
                    tracing::info!(peer = %from, %room, others = peers.len(), "joined");
                }
                self.deliver_all(deliveries);
            }
        }
        Ok(())
    }

    /// Takes `peer` out of its room; the `exit` deliveries for the others.
    async fn leave_room(&self, peer: &PeerId) -> Option<(RoomId, Vec<Delivery>)> {
        match &self.backend {
            Backend::Memory(rooms) => {
                let mut rooms = lock(rooms);
                let left = memory::leave(&mut rooms, peer);
                self.metrics.rooms.store(rooms.room_count() as i64, Relaxed);
                left
            }
            Backend::Redis(b) => {
                let left = b.leave(peer).await;
                self.metrics.rooms.store(b.local_room_count() as i64, Relaxed);
                left
            }
        }
    }

    /// A connection ended for any reason: leave its room, drop its outbox.
    pub async fn disconnect(&self, peer: &PeerId) {
        lock(&self.outboxes).remove(peer);
        if let Some((room, out)) = self.leave_room(peer).await {
            tracing::info!(peer = %peer, %room, "left (disconnected)");
            self.deliver_all(out);
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
        let direct = {
            let mut outboxes = lock(&self.outboxes);
            match outboxes.get(&d.to) {
                None => return false,
                Some(Outbox::Direct(out)) => out.clone(),
                Some(Outbox::Queue(tx)) => {
                    return match tx.try_send(d.msg) {
                        Ok(()) => {
                            self.metrics.sent(kind);
                            true
                        }
                        Err(mpsc::error::TrySendError::Full(_)) => {
                            // Dropping the only sender ends the connection's writer, which closes it.
                            self.slow(&d.to);
                            outboxes.remove(&d.to);
                            false
                        }
                        Err(mpsc::error::TrySendError::Closed(_)) => false,
                    };
                }
            }
        };
        // Framed and written outside the lock: other deliveries go on meanwhile.
        match direct.push(&text_frame(d.msg.to_json().as_bytes())) {
            Pushed::Written | Pushed::Queued => {
                self.metrics.sent(kind);
                true
            }
            Pushed::Full => {
                // The connection's task sees it closed and ends it.
                self.slow(&d.to);
                let mut outboxes = lock(&self.outboxes);
                if matches!(outboxes.get(&d.to), Some(Outbox::Direct(o)) if Arc::ptr_eq(o, &direct)) {
                    outboxes.remove(&d.to);
                }
                false
            }
            Pushed::Closed => false,
        }
    }

    fn slow(&self, peer: &PeerId) {
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
}

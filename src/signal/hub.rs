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

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::mpsc;

use crate::signal::memory;
use crate::signal::metrics::Metrics;
use crate::signal::protocol::{ClientMessage, IceServer, MessageKind, PeerId, Refusal, RoomId, ServerMessage};
use crate::signal::redis::Backplane;
use crate::signal::rooms::{Delivery, LocalDelivery, Rooms};

/// Messages queued for one client before it counts as not reading.
pub const OUTBOX_CAPACITY: usize = 512;

/// Where the rooms live.
pub enum Backend {
    Memory(Mutex<Rooms>),
    Redis(Arc<Backplane>),
}

pub struct Hub {
    outboxes: Mutex<HashMap<PeerId, mpsc::Sender<ServerMessage>>>,
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
        lock(&self.outboxes).insert(peer.clone(), tx);
        rx
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
        let mut outboxes = lock(&self.outboxes);
        let Some(tx) = outboxes.get(&d.to) else { return false };
        let kind = d.msg.kind();
        match tx.try_send(d.msg) {
            Ok(()) => {
                self.metrics.sent(kind);
                true
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                // Dropping the only sender ends the connection's writer, which closes it.
                tracing::warn!(peer = %d.to, "client is not reading its messages; disconnecting it");
                self.metrics.dropped_slow.fetch_add(1, Relaxed);
                outboxes.remove(&d.to);
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
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

//! Cross-node relays in batches: every offer, answer and candidate for a
//! member on another node goes into one queue; one writer takes whatever has
//! gathered (up to [`MAX_BATCH`]) and sends it as one script call, which
//! checks each target's membership and makes one PUBLISH per destination
//! node (a JSON array of deliveries). Under load that is one Redis round trip
//! and one pub/sub message per node per batch instead of one per relay; with
//! a single relay in flight it is the same single call as before.
//!
//! The sender does not wait for the outcome: its connection reads its next
//! frame as soon as the relay is queued, so a cross-node message costs no
//! Redis round trip on the sender's connection. A relay Redis refuses (the
//! target is not in the room, its node is not listening, Redis failed) comes
//! back to the sender later through [`LocalDelivery::refuse`], and counts as a
//! strike there exactly as a refusal decided at once does.
//!
//! Order: one batch is in flight at a time and deliveries keep queue order
//! within a node's array, so one sender's messages arrive in order. (Several
//! batches in flight on the multiplexed connection would keep that order
//! too, but not through a script reload after a Redis restart; and at the
//! bench's load the writer is not the limit: it batches what gathers.)

use std::sync::Weak;

use tokio::sync::mpsc;

use super::{Backplane, StoreError};
use crate::signal::protocol::{ErrorCode, PeerId, Refusal, RoomId};
use crate::signal::rooms::{LocalDelivery, Rooms};

/// Relays sent in one script call at most.
pub const MAX_BATCH: usize = 256;
/// Relays waiting for the writer before senders wait for room in the queue.
pub const QUEUE: usize = 4096;

/// What became of one relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Routed {
    /// Published; this many subscribers (nodes) got it (0: its node is not listening).
    Published(i64),
    /// The target is not a member of the room.
    NotMember,
    /// Redis is not reachable (the link is down or the call failed).
    Unreachable,
}

/// One relay waiting for the writer.
pub struct RouteRequest {
    /// The sender (on this node): told if the relay is refused.
    pub from: PeerId,
    pub room: RoomId,
    pub to: PeerId,
    /// The delivery envelope, JSON.
    pub payload: String,
}

impl RouteRequest {
    /// The refusal the sender gets for `routed`, if any.
    fn refusal(&self, routed: Routed, b: &Backplane) -> Option<Refusal> {
        match routed {
            Routed::Published(n) if n > 0 => None,
            Routed::Published(_) => Some(Refusal::new(
                ErrorCode::Internal,
                format!("the node of \"{}\" is not listening on Redis right now (reconnecting?); try again", self.to),
            )),
            Routed::NotMember => Some(Rooms::not_in_room(&self.to, &self.room)),
            Routed::Unreachable => {
                Some(b.unreachable(&format!("a message to \"{}\" (not on this node)", self.to), StoreError::Down))
            }
        }
    }
}

/// KEYS: none. ARGV: triples room key, target peer, payload. For each relay:
/// -1 when the target is not in the room, else the subscriber count of the
/// PUBLISH that carried it. One PUBLISH per destination node: the payload
/// alone for one delivery, a JSON array for several.
pub const RELAY_BATCH: &str = r#"
local per, order, where = {}, {}, {}
local n = #ARGV / 3
for i = 0, n - 1 do
  local node = redis.call('HGET', ARGV[3*i+1], ARGV[3*i+2])
  if node then
    if not per[node] then per[node] = {}; table.insert(order, node) end
    table.insert(per[node], ARGV[3*i+3])
    where[i+1] = node
  else
    where[i+1] = false
  end
end
local got = {}
for _, node in ipairs(order) do
  local p = per[node]
  local msg = p[1]
  if #p > 1 then msg = '[' .. table.concat(p, ',') .. ']' end
  got[node] = redis.call('PUBLISH', 'natkit:to:' .. node, msg)
end
local out = {}
for i = 1, n do
  if where[i] then out[i] = got[where[i]] else out[i] = -1 end
end
return out
"#;

/// The writer: runs until the backplane (and so every sender) is gone.
/// Refusals go to the senders through `hub`.
pub async fn write_batches<H: LocalDelivery + 'static>(
    me: Weak<Backplane>,
    mut queue: mpsc::Receiver<RouteRequest>,
    hub: Weak<H>,
) {
    let script = redis::Script::new(RELAY_BATCH);
    let mut batch: Vec<RouteRequest> = Vec::with_capacity(MAX_BATCH);
    loop {
        if queue.recv_many(&mut batch, MAX_BATCH).await == 0 {
            return;
        }
        let Some(b) = me.upgrade() else { return };
        let results = match b.link.get() {
            Err(_) => None,
            Ok(mut con) => {
                let mut inv = script.prepare_invoke();
                for r in &batch {
                    inv.arg(super::scripts::room_key(r.room.as_str())).arg(r.to.as_str()).arg(&r.payload);
                }
                match inv.invoke_async::<Vec<i64>>(&mut con).await {
                    Ok(v) if v.len() == batch.len() => Some(v),
                    Ok(v) => {
                        tracing::error!("redis: relay batch of {} got {} results; dropped", batch.len(), v.len());
                        None
                    }
                    Err(e) => {
                        b.link.failed(e);
                        None
                    }
                }
            }
        };
        let hub = hub.upgrade();
        for (i, r) in batch.drain(..).enumerate() {
            let routed = match results.as_ref().map(|v| v[i]) {
                None => Routed::Unreachable,
                Some(-1) => Routed::NotMember,
                Some(n) => Routed::Published(n),
            };
            if let (Some(refusal), Some(hub)) = (r.refusal(routed, &b), hub.as_ref()) {
                // The sender may have gone (its connection closed): nothing to tell.
                hub.refuse(&r.from, refusal);
            }
        }
    }
}

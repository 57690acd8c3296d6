//! Multi-node signaling over Redis (`--redis URL`): any number of nodes
//! share rooms, and two peers on two nodes talk as if on one.
//!
//! Layout (all keys under `natkit:`):
//! - `natkit:room:{room}`: hash peer → node, the room's members on every node;
//! - `natkit:node:{node}:members`: hash peer → room, what a node must clean up;
//! - `natkit:nodes`: sorted set node → last heartbeat (unix ms), the presence;
//! - channel `natkit:to:{node}`: deliveries `{"to":peer,"msg":{...}}` for that node.
//!
//! The room rules of `rooms::Rooms` are applied atomically by Lua scripts
//! (room size on join, "target in the sender's room" on relay), and the
//! scripts publish `joined`/`exit` to the members' nodes in the same step, so
//! a member always sees `joined` before the newcomer's `offer`. Every node
//! heartbeats; a node silent for `node_ttl` is reaped by whichever node
//! notices first (ZREM decides which): its members leave their rooms and
//! the remaining members get `exit`, as if the connections had closed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use redis::aio::MultiplexedConnection;
use serde::{Deserialize, Serialize};

use crate::error::UsageError;
use crate::signal::hub::Hub;
use crate::signal::protocol::{ClientMessage, ErrorCode, IceServer, PeerId, Refusal, RoomId, ServerMessage};
use crate::signal::rooms::Delivery;

const NODES: &str = "natkit:nodes";

fn room_key(room: &RoomId) -> String {
    format!("natkit:room:{room}")
}

fn members_key(node: &str) -> String {
    format!("natkit:node:{node}:members")
}

fn channel(node: &str) -> String {
    format!("natkit:to:{node}")
}

/// KEYS: room, node members. ARGV: peer, node, max room, room name.
/// Returns the members before the join (flat peer, node, ...) or -1 when full.
/// Members on other nodes are told `joined` here; the caller tells its own
/// (directly, so they hear `joined` before any same-node `offer`).
const JOIN: &str = r#"
local n = redis.call('HLEN', KEYS[1])
if n >= tonumber(ARGV[3]) then return -1 end
local before = redis.call('HGETALL', KEYS[1])
local joined = cjson.encode({type='joined', id=ARGV[1], room=ARGV[4]})
for i = 1, #before, 2 do
  if before[i+1] ~= ARGV[2] then redis.call('PUBLISH', 'natkit:to:' .. before[i+1], '{"to":' .. cjson.encode(before[i]) .. ',"msg":' .. joined .. '}') end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[4])
return before
"#;

/// KEYS: room. ARGV: target peer, payload. 1 when delivered, 0 when the target is not in the room.
const RELAY: &str = r#"
local node = redis.call('HGET', KEYS[1], ARGV[1])
if not node then return 0 end
redis.call('PUBLISH', 'natkit:to:' .. node, ARGV[2])
return 1
"#;

/// Removes one member and tells the rest on other nodes; returns the rest
/// (flat peer, node, ...) so the caller tells its own. KEYS: room, node
/// members. ARGV: peer, room name, node.
const LEAVE: &str = r#"
if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 then return -1 end
redis.call('HDEL', KEYS[2], ARGV[1])
local rest = redis.call('HGETALL', KEYS[1])
local exit = cjson.encode({type='exit', from=ARGV[1], room=ARGV[2]})
for i = 1, #rest, 2 do
  if rest[i+1] ~= ARGV[3] then
    redis.call('PUBLISH', 'natkit:to:' .. rest[i+1], '{"to":' .. cjson.encode(rest[i]) .. ',"msg":' .. exit .. '}')
  end
end
return rest
"#;

/// Removes every member of a dead node (once: ZREM picks the reaper).
/// KEYS: nodes zset, the node's members hash. ARGV: node. Returns members removed.
const REAP: &str = r#"
if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 and ARGV[2] ~= 'self' then return 0 end
local members = redis.call('HGETALL', KEYS[2])
redis.call('DEL', KEYS[2])
for i = 1, #members, 2 do
  local peer, room = members[i], members[i+1]
  local rk = 'natkit:room:' .. room
  redis.call('HDEL', rk, peer)
  local rest = redis.call('HGETALL', rk)
  local exit = cjson.encode({type='exit', from=peer, room=room})
  for j = 1, #rest, 2 do
    redis.call('PUBLISH', 'natkit:to:' .. rest[j+1], '{"to":' .. cjson.encode(rest[j]) .. ',"msg":' .. exit .. '}')
  end
end
return #members / 2
"#;

/// One delivery on a node's channel.
#[derive(Debug, Serialize, Deserialize)]
struct Envelope {
    to: PeerId,
    msg: ServerMessage,
}

/// Presence timing.
#[derive(Debug, Clone, Copy)]
pub struct Presence {
    /// How often a node says it is alive.
    pub heartbeat: Duration,
    /// A node silent this long is dead; its members leave their rooms.
    pub node_ttl: Duration,
}

impl Default for Presence {
    fn default() -> Self {
        Presence { heartbeat: Duration::from_secs(1), node_ttl: Duration::from_secs(5) }
    }
}

pub struct Backplane {
    node: String,
    url: String,
    client: redis::Client,
    con: MultiplexedConnection,
    max_room: usize,
    presence: Presence,
    /// Rooms of this node's own connections.
    local_rooms: Mutex<HashMap<PeerId, RoomId>>,
    join: redis::Script,
    relay: redis::Script,
    leave: redis::Script,
    reap: redis::Script,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64
}

fn internal(url: &str, e: redis::RedisError) -> Refusal {
    tracing::warn!("redis {url}: {e}");
    Refusal::new(ErrorCode::Internal, "the room store (Redis) is not answering; try again")
}

async fn resubscribe(client: &redis::Client, chan: &str) -> redis::RedisResult<redis::aio::PubSub> {
    let mut p = client.get_async_pubsub().await?;
    p.subscribe(chan).await?;
    Ok(p)
}

impl Backplane {
    /// Connects; a bad URL or an unreachable server is the user's to fix.
    pub async fn connect(url: &str, max_room: usize, presence: Presence) -> Result<Self, UsageError> {
        let client = redis::Client::open(url)
            .map_err(|e| UsageError::new(format!("bad --redis URL '{url}': {e} (expected redis://HOST:PORT/)")))?;
        let con = tokio::time::timeout(Duration::from_secs(5), client.get_multiplexed_async_connection())
            .await
            .map_err(|_| {
                UsageError::new(format!("--redis {url}: no answer within 5 s; is redis-server running there?"))
            })?
            .map_err(|e| UsageError::new(format!("--redis {url}: {e}; is redis-server running there?")))?;
        Ok(Backplane {
            node: PeerId::random().0,
            url: url.to_string(),
            client,
            con,
            max_room: max_room.max(1),
            presence,
            local_rooms: Mutex::new(HashMap::new()),
            join: redis::Script::new(JOIN),
            relay: redis::Script::new(RELAY),
            leave: redis::Script::new(LEAVE),
            reap: redis::Script::new(REAP),
        })
    }

    pub fn node_id(&self) -> &str {
        &self.node
    }

    /// Rooms with a member on this node.
    pub fn local_room_count(&self) -> usize {
        let rooms = lock(&self.local_rooms);
        let mut v: Vec<&RoomId> = rooms.values().collect();
        v.sort();
        v.dedup();
        v.len()
    }

    /// Subscribes to this node's channel and starts the heartbeat/reaper.
    /// Both stop when the hub is dropped.
    pub async fn start(self: &Arc<Self>, hub: Weak<Hub>) -> Result<(), UsageError> {
        let mut pubsub = self
            .client
            .get_async_pubsub()
            .await
            .map_err(|e| UsageError::new(format!("--redis {}: cannot subscribe: {e}", self.url)))?;
        pubsub
            .subscribe(channel(&self.node))
            .await
            .map_err(|e| UsageError::new(format!("--redis {}: cannot subscribe: {e}", self.url)))?;
        self.heartbeat().await.map_err(|e| UsageError::new(format!("--redis {}: {e}", self.url)))?;
        let sub_hub = hub.clone();
        let url = self.url.clone();
        let client = self.client.clone();
        let chan = channel(&self.node);
        tokio::spawn(async move {
            let mut next = Some(pubsub);
            loop {
                let pubsub = match next.take() {
                    Some(p) => p,
                    None => match resubscribe(&client, &chan).await {
                        Ok(p) => {
                            tracing::info!("redis {url}: subscribed again");
                            p
                        }
                        Err(e) => {
                            tracing::warn!("redis {url}: cannot subscribe again: {e}; retrying");
                            tokio::time::sleep(Duration::from_secs(1)).await;
                            continue;
                        }
                    },
                };
                let mut stream = pubsub.into_on_message();
                while let Some(msg) = stream.next().await {
                    let Some(hub) = sub_hub.upgrade() else { return };
                    let Ok(payload) = msg.get_payload::<String>() else { continue };
                    match serde_json::from_str::<Envelope>(&payload) {
                        Ok(env) => {
                            hub.deliver(Delivery { to: env.to, msg: env.msg });
                        }
                        Err(e) => tracing::warn!("dropping a malformed delivery from redis: {e}"),
                    }
                }
                if sub_hub.strong_count() == 0 {
                    return;
                }
                // Deliveries published meanwhile are lost; members may need to rejoin.
                tracing::error!("redis {url}: subscription lost; subscribing again");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        });
        let me = Arc::downgrade(self);
        let period = self.presence.heartbeat;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            loop {
                tick.tick().await;
                let (Some(b), true) = (me.upgrade(), hub.strong_count() > 0) else { break };
                if let Err(e) = b.heartbeat().await {
                    tracing::warn!("redis {}: heartbeat failed: {e}", b.url);
                }
                if let Err(e) = b.reap_dead().await {
                    tracing::warn!("redis {}: reaping dead nodes failed: {e}", b.url);
                }
            }
        });
        Ok(())
    }

    async fn heartbeat(&self) -> redis::RedisResult<()> {
        let mut con = self.con.clone();
        redis::cmd("ZADD").arg(NODES).arg(now_ms()).arg(&self.node).query_async::<()>(&mut con).await
    }

    async fn reap_dead(&self) -> redis::RedisResult<()> {
        let mut con = self.con.clone();
        let cutoff = now_ms().saturating_sub(self.presence.node_ttl.as_millis() as u64);
        let dead: Vec<String> =
            redis::cmd("ZRANGEBYSCORE").arg(NODES).arg("-inf").arg(cutoff).query_async(&mut con).await?;
        for node in dead.into_iter().filter(|n| *n != self.node) {
            let n: i64 =
                self.reap.key(NODES).key(members_key(&node)).arg(&node).arg("other").invoke_async(&mut con).await?;
            if n > 0 {
                tracing::info!(node = %node, members = n, "reaped a dead node: its members left their rooms");
            }
        }
        Ok(())
    }

    /// On shutdown: this node's members leave their rooms now rather than at expiry.
    pub async fn retire(&self) {
        let mut con = self.con.clone();
        let r: redis::RedisResult<i64> =
            self.reap.key(NODES).key(members_key(&self.node)).arg(&self.node).arg("self").invoke_async(&mut con).await;
        if let Err(e) = r {
            tracing::warn!("redis {}: could not remove this node's members: {e}", self.url);
        }
    }

    /// Join and relay (the room rules, applied in Redis). `is_local` says
    /// whether a peer is connected to this node (same-node relays skip Redis).
    pub async fn handle(
        &self,
        from: &PeerId,
        msg: ClientMessage,
        ice: &[IceServer],
        is_local: impl Fn(&PeerId) -> bool,
    ) -> Result<Vec<Delivery>, Refusal> {
        let mut con = self.con.clone();
        match msg {
            ClientMessage::Join { room } => {
                if let Some(problem) = room.problem() {
                    return Err(Refusal::new(ErrorCode::BadMessage, problem));
                }
                if let Some(current) = lock(&self.local_rooms).get(from) {
                    return Err(Refusal::new(
                        ErrorCode::AlreadyJoined,
                        format!("already in room \"{current}\"; send leave first"),
                    ));
                }
                let r: redis::Value = self
                    .join
                    .key(room_key(&room))
                    .key(members_key(&self.node))
                    .arg(from.as_str())
                    .arg(&self.node)
                    .arg(self.max_room)
                    .arg(room.as_str())
                    .invoke_async(&mut con)
                    .await
                    .map_err(|e| internal(&self.url, e))?;
                let before: Vec<String> = match r {
                    redis::Value::Int(_) => {
                        return Err(Refusal::new(
                            ErrorCode::RoomFull,
                            format!("room \"{room}\" is full (the limit is {})", self.max_room),
                        ));
                    }
                    other => redis::from_redis_value(&other).map_err(|e| internal(&self.url, e))?,
                };
                let peers: Vec<PeerId> = before.chunks(2).map(|kv| PeerId(kv[0].clone())).collect();
                lock(&self.local_rooms).insert(from.clone(), room.clone());
                let mut out = vec![Delivery {
                    to: from.clone(),
                    msg: ServerMessage::Created {
                        id: from.clone(),
                        room: room.clone(),
                        peers,
                        ice_servers: ice.to_vec(),
                    },
                }];
                for kv in before.chunks(2).filter(|kv| kv.get(1) == Some(&self.node)) {
                    out.push(Delivery {
                        to: PeerId(kv[0].clone()),
                        msg: ServerMessage::Joined { id: from.clone(), room: room.clone() },
                    });
                }
                Ok(out)
            }
            ClientMessage::Leave => Err(Refusal::new(ErrorCode::BadMessage, "leave goes through Backplane::leave")),
            relay => {
                let Some(room) = lock(&self.local_rooms).get(from).cloned() else {
                    return Err(Refusal::new(
                        ErrorCode::NotJoined,
                        format!("{} before join: not in a room", relay.kind().as_str()),
                    ));
                };
                let to = relay
                    .target()
                    .cloned()
                    .ok_or_else(|| Refusal::new(ErrorCode::BadMessage, "not a message to relay"))?;
                let not_in_room =
                    || Refusal::new(ErrorCode::NotInRoom, format!("no member \"{to}\" in room \"{room}\""));
                if &to == from {
                    return Err(not_in_room());
                }
                let msg = relay
                    .relayed(from.clone(), room.clone())
                    .ok_or_else(|| Refusal::new(ErrorCode::BadMessage, "not a message to relay"))?;
                if is_local(&to) && lock(&self.local_rooms).get(&to) == Some(&room) {
                    return Ok(vec![Delivery { to, msg }]);
                }
                let payload = serde_json::to_string(&Envelope { to: to.clone(), msg })
                    .map_err(|e| Refusal::new(ErrorCode::Internal, format!("encoding: {e}")))?;
                let delivered: i64 = self
                    .relay
                    .key(room_key(&room))
                    .arg(to.as_str())
                    .arg(payload)
                    .invoke_async(&mut con)
                    .await
                    .map_err(|e| internal(&self.url, e))?;
                if delivered == 0 {
                    return Err(not_in_room());
                }
                Ok(vec![])
            }
        }
    }

    /// Takes a local peer out of its room: `exit` to the members on this
    /// node is returned, the other nodes' members hear it through Redis.
    pub async fn leave(&self, peer: &PeerId) -> Option<(RoomId, Vec<Delivery>)> {
        let room = lock(&self.local_rooms).remove(peer)?;
        let mut con = self.con.clone();
        let r: redis::RedisResult<redis::Value> = self
            .leave
            .key(room_key(&room))
            .key(members_key(&self.node))
            .arg(peer.as_str())
            .arg(room.as_str())
            .arg(&self.node)
            .invoke_async(&mut con)
            .await;
        let rest: Vec<String> = match r {
            Ok(redis::Value::Int(_)) => vec![],
            Ok(v) => redis::from_redis_value(&v).unwrap_or_default(),
            Err(e) => {
                tracing::warn!("redis {}: leave of {peer} from {room} failed: {e}", self.url);
                vec![]
            }
        };
        let out = rest
            .chunks(2)
            .filter(|kv| kv.get(1) == Some(&self.node))
            .map(|kv| Delivery {
                to: PeerId(kv[0].clone()),
                msg: ServerMessage::Exit { from: peer.clone(), room: room.clone() },
            })
            .collect();
        Some((room, out))
    }
}

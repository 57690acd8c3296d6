//! The Lua scripts of the Redis backplane. Each runs atomically in Redis, so
//! a room's size limit and its membership hold across nodes, and the
//! `joined`/`exit` a script publishes cannot interleave with another change.
//!
//! Keys (all under `natkit:`):
//! - `room:{room}`: hash peer → node, the room's members on every node;
//! - `node:{node}:members`: hash peer → room, what a node must clean up;
//! - `node:{node}:alive`: a node's presence, a key with a Redis expiry that a
//!   live node renews every heartbeat (`super::Presence`); its absence, seen by
//!   a node that has been connected for a whole `--node-ttl`, is the only
//!   evidence that a node is dead;
//! - `nodeset`: set of nodes that may have members to reap;
//! - `gone:{room}`: hash peer → node, departures written while Redis was away
//!   (kept a minute), so a node that re-asserts its members after an outage
//!   can tell them who left meanwhile;
//! - channel `to:{node}`: deliveries `{"to":peer,"msg":{...}}` for that node,
//!   or a JSON array of them (relays, `super::batch`).

/// The set of nodes that may have members.
pub const NODESET: &str = "natkit:nodeset";

/// How long a departure written after an outage is kept for nodes still re-asserting.
pub const TOMBSTONE_SECS: u64 = 60;

pub fn room_key(room: &str) -> String {
    format!("natkit:room:{room}")
}

pub fn members_key(node: &str) -> String {
    format!("natkit:node:{node}:members")
}

pub fn alive_key(node: &str) -> String {
    format!("natkit:node:{node}:alive")
}

pub fn channel(node: &str) -> String {
    format!("natkit:to:{node}")
}

/// Applies a join the room core decided on a snapshot of the room, if the
/// room is still as read (else 0, and the node reads and decides again).
/// KEYS: room, node members. ARGV: peer, node, room name, 2n, the snapshot
/// (n pairs peer, node), then pairs node, delivery: the `created` for the
/// joiner and the `joined` for every other member, this node's included,
/// published in the same step as the join so that every member hears of
/// joins in the order Redis applied them, on any node, and none can miss
/// one. Returns 1 when applied, 2 when applied but this node's own channel
/// had no subscriber (its subscription is being renewed: the node then
/// hands its members their deliveries itself).
pub const JOIN: &str = r#"
local n = tonumber(ARGV[4])
if redis.call('HLEN', KEYS[1]) * 2 ~= n then return 0 end
for i = 5, 4 + n, 2 do
  if redis.call('HGET', KEYS[1], ARGV[i]) ~= ARGV[i+1] then return 0 end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
local heard = 1
for i = 5 + n, #ARGV, 2 do
  local got = redis.call('PUBLISH', 'natkit:to:' .. ARGV[i], ARGV[i+1])
  if got == 0 and ARGV[i] == ARGV[2] then heard = 2 end
end
return heard
"#;

/// Removes one member and tells the rest the core's notice. KEYS: room,
/// node members. ARGV: peer, room name, node, tombstone seconds (0: none; a
/// departure written late, after an outage, leaves one for nodes that have
/// not re-asserted their members yet), the notice (`exit` JSON), and `all`
/// (this node's members too, over its own channel, so that an `exit` keeps
/// its place after the `joined`s Redis published before it) or `others`
/// (this node told its own already: a leave written after an outage).
/// Returns 1, or 0 when this node's own channel had no subscriber (the node
/// then tells its members itself).
pub const LEAVE: &str = r#"
redis.call('HDEL', KEYS[1], ARGV[1])
if redis.call('HGET', KEYS[2], ARGV[1]) == ARGV[2] then redis.call('HDEL', KEYS[2], ARGV[1]) end
if tonumber(ARGV[4]) > 0 then
  local gk = 'natkit:gone:' .. ARGV[2]
  redis.call('HSET', gk, ARGV[1], ARGV[3])
  redis.call('EXPIRE', gk, ARGV[4])
end
local rest = redis.call('HGETALL', KEYS[1])
local exit = ARGV[5]
local heard = 1
for i = 1, #rest, 2 do
  if rest[i+1] ~= ARGV[3] or ARGV[6] == 'all' then
    local got = redis.call('PUBLISH', 'natkit:to:' .. rest[i+1], '{"to":' .. cjson.encode(rest[i]) .. ',"msg":' .. exit .. '}')
    if got == 0 and rest[i+1] == ARGV[3] then heard = 0 end
  end
end
return heard
"#;

/// A node's heartbeat: renews its presence key. KEYS: alive, nodeset.
/// ARGV: node, presence lifetime (ms). Returns 1 when the key was still
/// there, 0 when it was gone (Redis restarted empty, or the node was cut off
/// long enough to be reaped): the node then re-asserts its members.
pub const HEARTBEAT: &str = r#"
local existed = redis.call('EXISTS', KEYS[1])
redis.call('SET', KEYS[1], '1', 'PX', ARGV[2])
redis.call('SADD', KEYS[2], ARGV[1])
return existed
"#;

/// After a (re)connect: writes this node's presence and every member it has,
/// in joining order, into their rooms, and takes out the members Redis still
/// lists for this node that it no longer has (they left while it was cut
/// off; the rest of their room on other nodes is told `exit`).
/// KEYS: node members, alive, nodeset. ARGV: node, presence lifetime (ms),
/// tombstone seconds, then pairs peer, room.
/// Returns two flat lists: (member, departed peer, room) triples, departures
/// other nodes wrote while this node was away, for this node to tell its
/// members; and (room, peer, node) triples, every member now listed in this
/// node's rooms, from which the node rebuilds its copies of them
/// (`rooms::Rooms::seen_joined`).
pub const REASSERT: &str = r#"
local node = ARGV[1]
redis.call('SET', KEYS[2], '1', 'PX', ARGV[2])
redis.call('SADD', KEYS[3], node)
local live = {}
for i = 4, #ARGV, 2 do live[ARGV[i]] = ARGV[i+1] end
local listed = redis.call('HGETALL', KEYS[1])
for i = 1, #listed, 2 do
  local peer, room = listed[i], listed[i+1]
  if live[peer] ~= room then
    redis.call('HDEL', KEYS[1], peer)
    local rk = 'natkit:room:' .. room
    redis.call('HDEL', rk, peer)
    local gk = 'natkit:gone:' .. room
    redis.call('HSET', gk, peer, node)
    redis.call('EXPIRE', gk, ARGV[3])
    local rest = redis.call('HGETALL', rk)
    local exit = cjson.encode({type='exit', from=peer, room=room})
    for j = 1, #rest, 2 do
      if rest[j+1] ~= node then
        redis.call('PUBLISH', 'natkit:to:' .. rest[j+1], '{"to":' .. cjson.encode(rest[j]) .. ',"msg":' .. exit .. '}')
      end
    end
  end
end
local told = {}
local seen, rooms = {}, {}
for i = 4, #ARGV, 2 do
  local peer, room = ARGV[i], ARGV[i+1]
  redis.call('HSET', KEYS[1], peer, room)
  redis.call('HSET', 'natkit:room:' .. room, peer, node)
  if not seen[room] then seen[room] = true; table.insert(rooms, room) end
  local gone = redis.call('HGETALL', 'natkit:gone:' .. room)
  for j = 1, #gone, 2 do
    if gone[j+1] ~= node then
      table.insert(told, peer)
      table.insert(told, gone[j])
      table.insert(told, room)
    end
  end
end
local listed = {}
for _, room in ipairs(rooms) do
  local all = redis.call('HGETALL', 'natkit:room:' .. room)
  for j = 1, #all, 2 do
    table.insert(listed, room)
    table.insert(listed, all[j])
    table.insert(listed, all[j+1])
  end
end
return {told, listed}
"#;

/// Removes every member of a node (its members leave their rooms, `exit` to
/// the rest). KEYS: nodeset, the node's members, its alive key. ARGV: node,
/// `self` (a node retiring on shutdown) or `other` (reaping: only when the
/// presence key has expired, checked here so a node that came back in the
/// meantime is never reaped). Returns members removed, -1 when alive.
pub const REAP: &str = r#"
if ARGV[2] ~= 'self' and redis.call('EXISTS', KEYS[3]) == 1 then return -1 end
redis.call('DEL', KEYS[3])
redis.call('SREM', KEYS[1], ARGV[1])
local members = redis.call('HGETALL', KEYS[2])
redis.call('DEL', KEYS[2])
for i = 1, #members, 2 do
  local peer, room = members[i], members[i+1]
  local rk = 'natkit:room:' .. room
  redis.call('HDEL', rk, peer)
  local rest = redis.call('HGETALL', rk)
  local exit = cjson.encode({type='exit', from=peer, room=room})
  for j = 1, #rest, 2 do
    if rest[j+1] ~= ARGV[1] then
      redis.call('PUBLISH', 'natkit:to:' .. rest[j+1], '{"to":' .. cjson.encode(rest[j]) .. ',"msg":' .. exit .. '}')
    end
  end
end
return #members / 2
"#;

//! The room core: who may join which room, who gets what when someone joins,
//! relays or leaves. One set of rules for one node and for many nodes over
//! Redis. Sans-IO in the quinn-proto shape: it holds this node's members,
//! decides, and returns [`Effect`]s (deliver here, forward to another node,
//! route through the backplane, add a member, take one out); the backplanes
//! (`signal::memory`, `signal::redis`) only carry them out. No sockets, no
//! locks, no clock.
//!
//! Rules (the `/ws` contract, see `protocol` and README "The `/ws` protocol"):
//! - a connection is in at most one room; `join` while in one is refused;
//! - `join` answers `created` (with the members already there, in joining
//!   order) to the joiner and `joined` to every other member; a room with
//!   `max_room` members refuses;
//! - `offer`/`answer`/`candidate` reach only their `to`, and only when `to`
//!   is in the sender's room (rooms are isolated from each other);
//! - `leave` or a disconnect sends `exit` to the rest of that room only; an
//!   empty room is removed.
//!
//! A join is decided on a [`Member`] snapshot the backplane read (and applies
//! only if the room is still as read). With a backplane, the core also keeps a
//! copy of the members on other nodes of each room that has a member here
//! (from the join's snapshot, then every `joined`/`exit` the backplane sees,
//! and what it reads back when re-asserting after an outage): a relay to one
//! of them becomes [`Effect::Route`] to that member's node, and a relay to a
//! peer the copy does not have is refused here ([`Rooms::not_in_room`]). The
//! copy may be late (an `exit` not seen yet), never the last word: the node a
//! relay is routed to delivers it only if the target is its member of that
//! room ([`Rooms::accepts`]), because each node owns the truth for its own
//! members. `signal::redis` says how each race is handled.

use std::collections::HashMap;

use crate::signal::protocol::{
    ClientMessage, ErrorCode, IceServer, MessageKind, PeerId, Refusal, RoomId, ServerMessage,
};

/// One message for one connection.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    pub to: PeerId,
    pub msg: ServerMessage,
}

/// Where a room member is connected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Place {
    /// This node.
    Here,
    /// Another node (its id in the backplane).
    Node(String),
}

/// One member of a room as a backplane reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub peer: PeerId,
    pub place: Place,
}

/// What the core asks its backplane to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Send to a connection of this node.
    Deliver(Delivery),
    /// Send to a member connected to another node.
    Forward { node: String, delivery: Delivery },
    /// Send a relay to `delivery.to` on `node` (from this node's copy of the
    /// room); that node delivers it only if `to` is its member of `room`.
    Route { node: String, room: RoomId, delivery: Delivery },
    /// `peer` (of this node) is now a member of `room`, after the members in the snapshot.
    Add { room: RoomId, peer: PeerId },
    /// `peer` (of this node) left `room`: take it out and tell the members on
    /// other nodes `notice` (this node's members are told by `Deliver`s).
    Remove { room: RoomId, peer: PeerId, notice: ServerMessage },
}

/// Something that hands deliveries to this node's connections (the hub).
pub trait LocalDelivery: Send + Sync {
    /// Queues `d` for its connection; false when that connection is gone.
    fn deliver(&self, d: Delivery) -> bool;
    /// [`LocalDelivery::deliver`] of a message that is already JSON text
    /// (from another node), handed on without parsing it again.
    fn deliver_json(&self, to: &str, kind: MessageKind, json: &str) -> bool;
    /// Tells `to`'s connection that something it sent earlier was refused
    /// (decided after the fact, e.g. by Redis); it counts as a strike there.
    fn refuse(&self, to: &PeerId, r: Refusal) -> bool;
}

#[derive(Debug, Clone)]
struct LocalMember {
    room: RoomId,
}

/// A member of a room on another node, as this node last heard of it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RemoteMember {
    peer: PeerId,
    node: String,
}

/// This node's members and the room rules.
#[derive(Debug, Default)]
pub struct Rooms {
    local: HashMap<PeerId, LocalMember>,
    /// This node's members of each room, in joining order.
    rooms: HashMap<RoomId, Vec<PeerId>>,
    /// The members on other nodes of each room in `rooms` (clustered only).
    remote: HashMap<RoomId, Vec<RemoteMember>>,
    /// Joins of this node's peers that the backplane is applying: between
    /// the store's write and [`Rooms::commit_join`], others may already
    /// have been told `joined` and relay to the joiner.
    joining: HashMap<PeerId, RoomId>,
    max_room: usize,
    /// Whether rooms can have members on other nodes (with Redis): a peer
    /// not on this node may still be in the room, so relays to it are routed.
    clustered: bool,
}

impl Rooms {
    /// One node: every member of every room is here.
    pub fn new(max_room: usize) -> Self {
        Rooms { max_room: max_room.max(1), ..Default::default() }
    }

    /// One of many nodes sharing rooms through a backplane.
    pub fn clustered(max_room: usize) -> Self {
        Rooms { clustered: true, ..Rooms::new(max_room) }
    }

    pub fn max_room(&self) -> usize {
        self.max_room
    }

    /// Rooms with a member on this node.
    pub fn room_count(&self) -> usize {
        self.rooms.len()
    }

    /// Members on this node.
    pub fn member_count(&self) -> usize {
        self.local.len()
    }

    pub fn room_of(&self, peer: &PeerId) -> Option<&RoomId> {
        self.local.get(peer).map(|m| &m.room)
    }

    /// This node's members of `room`, in joining order.
    pub fn members(&self, room: &RoomId) -> &[PeerId] {
        self.rooms.get(room).map(Vec::as_slice).unwrap_or(&[])
    }

    /// This node's members of `room` as a snapshot (all of them, for one node).
    pub fn snapshot_here(&self, room: &RoomId) -> Vec<Member> {
        self.members(room).iter().map(|p| Member { peer: p.clone(), place: Place::Here }).collect()
    }

    /// Every member of this node with its room, rooms and members in joining order
    /// (what a backplane re-asserts after losing its store).
    pub fn local_members(&self) -> Vec<(PeerId, RoomId)> {
        let mut rooms: Vec<(&RoomId, &Vec<PeerId>)> = self.rooms.iter().collect();
        rooms.sort_by(|a, b| a.0.cmp(b.0));
        rooms
            .into_iter()
            .flat_map(|(r, ps)| ps.iter().map(move |p| (p.clone(), r.clone())))
            .filter(|(p, _)| !self.joining.contains_key(p))
            .collect()
    }

    /// Decides a `join` of `from` into `room`, whose members are `before`
    /// (a snapshot, in joining order). `ice_servers` go into `created` (per
    /// connection: TURN REST credentials are per client). Pure: the join
    /// happens when the backplane has applied the effects and called
    /// [`Rooms::commit_join`].
    pub fn join(
        &self,
        from: &PeerId,
        room: &RoomId,
        before: &[Member],
        ice_servers: &[IceServer],
    ) -> Result<Vec<Effect>, Refusal> {
        self.check_join(from, room)?;
        if before.len() >= self.max_room {
            return Err(Refusal::new(
                ErrorCode::RoomFull,
                format!("room \"{room}\" is full ({} members, the limit is {})", before.len(), self.max_room),
            ));
        }
        let mut out = Vec::with_capacity(before.len() + 2);
        out.push(Effect::Deliver(Delivery {
            to: from.clone(),
            msg: ServerMessage::Created {
                id: from.clone(),
                room: room.clone(),
                peers: before.iter().map(|m| m.peer.clone()).collect(),
                ice_servers: ice_servers.to_vec(),
            },
        }));
        for m in before {
            let delivery =
                Delivery { to: m.peer.clone(), msg: ServerMessage::Joined { id: from.clone(), room: room.clone() } };
            out.push(match &m.place {
                Place::Here => Effect::Deliver(delivery),
                Place::Node(node) => Effect::Forward { node: node.clone(), delivery },
            });
        }
        out.push(Effect::Add { room: room.clone(), peer: from.clone() });
        Ok(out)
    }

    /// The refusals of a `join` that need no snapshot (a backplane asks
    /// before reading one, so they come first even while its store is away).
    pub fn check_join(&self, from: &PeerId, room: &RoomId) -> Result<(), Refusal> {
        if let Some(problem) = room.problem() {
            return Err(Refusal::new(ErrorCode::BadMessage, problem));
        }
        if let Some(current) = self.room_of(from) {
            return Err(Refusal::new(
                ErrorCode::AlreadyJoined,
                format!("already in room \"{current}\"; send leave first"),
            ));
        }
        Ok(())
    }

    /// Records a join the backplane has applied.
    pub fn commit_join(&mut self, peer: &PeerId, room: &RoomId) {
        if self.local.insert(peer.clone(), LocalMember { room: room.clone() }).is_none() {
            self.rooms.entry(room.clone()).or_default().push(peer.clone());
        }
    }

    /// Records a join the backplane has applied on the snapshot `before`
    /// (the members on other nodes go into the room's copy).
    pub fn commit_join_after(&mut self, peer: &PeerId, room: &RoomId, before: &[Member]) {
        self.commit_join(peer, room);
        for m in before {
            if let Place::Node(node) = &m.place {
                self.seen_joined(room, &m.peer, node);
            }
        }
    }

    /// Another node's `peer` is in `room` (a `joined` from it, or what Redis
    /// listed after an outage). Kept only while `room` has a member here: a
    /// room no one here is in needs no routes.
    pub fn seen_joined(&mut self, room: &RoomId, peer: &PeerId, node: &str) {
        if !self.clustered || !self.rooms.contains_key(room) || self.local.contains_key(peer) {
            return;
        }
        let others = self.remote.entry(room.clone()).or_default();
        match others.iter_mut().find(|m| &m.peer == peer) {
            // Ids are random per connection, so a peer is on one node; a
            // re-assertion after an outage may still say it again.
            Some(m) => node.clone_into(&mut m.node),
            None => others.push(RemoteMember { peer: peer.clone(), node: node.to_string() }),
        }
    }

    /// Another node's `peer` left `room` (an `exit` for a member here).
    pub fn seen_exit(&mut self, room: &RoomId, peer: &PeerId) {
        if let Some(others) = self.remote.get_mut(room) {
            others.retain(|m| &m.peer != peer);
            if others.is_empty() {
                self.remote.remove(room);
            }
        }
    }

    /// The node this node would route a relay to `peer` in `room` to.
    pub fn route_of(&self, room: &RoomId, peer: &PeerId) -> Option<&str> {
        self.remote.get(room)?.iter().find(|m| &m.peer == peer).map(|m| m.node.as_str())
    }

    /// Whether a relay another node routed here for `to` in `room` may be
    /// delivered: `to` is this node's member of that room, or joining it
    /// (this node owns the truth for its own members; the sender's copy may
    /// be late).
    pub fn accepts(&self, to: &str, room: &str) -> bool {
        self.local.get(to).is_some_and(|m| m.room.as_str() == room)
    }

    /// The backplane is about to write `peer`'s join of `room` (decided on
    /// the snapshot `before`) to its store: the join counts here from now on
    /// (once written, others may be told `joined` and relay to the joiner,
    /// and the joiner may hear `created` and relay before the backplane has
    /// the store's answer), until [`Rooms::end_join`] keeps or undoes it.
    /// Not re-asserted after an outage while pending.
    pub fn begin_join(&mut self, peer: &PeerId, room: &RoomId, before: &[Member]) {
        self.commit_join_after(peer, room, before);
        self.joining.insert(peer.clone(), room.clone());
    }

    /// The store applied the join begun with [`Rooms::begin_join`] (`applied`),
    /// or did not: then it is undone, with no `exit` (no one was told `joined`).
    pub fn end_join(&mut self, peer: &PeerId, applied: bool) {
        if self.joining.remove(peer).is_some() && !applied {
            self.forget(peer);
        }
    }

    /// Takes `peer` out of its room here: the room and the members left here.
    /// The room's copy of other nodes' members goes with its last member here.
    fn forget(&mut self, peer: &PeerId) -> Option<(RoomId, Vec<PeerId>)> {
        let room = self.local.remove(peer)?.room;
        let mut rest = vec![];
        if let Some(members) = self.rooms.get_mut(&room) {
            members.retain(|p| p != peer);
            rest.clone_from(members);
            if members.is_empty() {
                self.rooms.remove(&room);
                // No member here any more: no relays to route from this room.
                self.remote.remove(&room);
            }
        }
        Some((room, rest))
    }

    /// Decides a relay (`offer`, `answer`, `candidate`) from `from`.
    pub fn relay(&self, from: &PeerId, msg: ClientMessage) -> Result<Effect, Refusal> {
        let Some(room) = self.room_of(from) else {
            return Err(Self::not_joined(msg.kind()));
        };
        let Some(to) = msg.target().cloned() else {
            return Err(Refusal::new(ErrorCode::BadMessage, "not a message to relay"));
        };
        if &to == from {
            return Err(Self::not_in_room(&to, room));
        }
        let node = match self.room_of(&to) {
            Some(r) if r == room => None,
            Some(_) => return Err(Self::not_in_room(&to, room)),
            None => match self.route_of(room, &to) {
                Some(node) => Some(node.to_string()),
                // Not a member anywhere this node knows of. A client learns
                // ids only from `created`/`joined`, which this node reads
                // (and copies) before handing them on, so this is a member
                // who left or an id that never was in the room.
                None => return Err(Self::not_in_room(&to, room)),
            },
        };
        let room = room.clone();
        let msg = msg
            .relayed(from.clone(), room.clone())
            .ok_or_else(|| Refusal::new(ErrorCode::BadMessage, "not a message to relay"))?;
        let delivery = Delivery { to, msg };
        Ok(match node {
            None => Effect::Deliver(delivery),
            Some(node) => Effect::Route { node, room, delivery },
        })
    }

    /// Takes `peer` out of its room (on `leave` or disconnect): `exit` to the
    /// rest of that room here, and [`Effect::Remove`] for the backplane.
    /// `None` when it was in no room.
    pub fn leave(&mut self, peer: &PeerId) -> Option<(RoomId, Vec<Effect>)> {
        let (room, members) = self.forget(peer)?;
        let exit = ServerMessage::Exit { from: peer.clone(), room: room.clone() };
        let mut out: Vec<Effect> =
            members.into_iter().map(|p| Effect::Deliver(Delivery { to: p, msg: exit.clone() })).collect();
        out.push(Effect::Remove { room: room.clone(), peer: peer.clone(), notice: exit });
        Some((room, out))
    }

    /// The refusal of a relay to someone not in the sender's room.
    pub fn not_in_room(to: &PeerId, room: &RoomId) -> Refusal {
        Refusal::new(ErrorCode::NotInRoom, format!("no member \"{to}\" in room \"{room}\""))
    }

    /// The refusal of a message that needs a room before `join`.
    pub fn not_joined(kind: MessageKind) -> Refusal {
        Refusal::new(ErrorCode::NotJoined, format!("{} before join: not in a room", kind.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> PeerId {
        PeerId::from(s)
    }

    fn here(s: &str) -> Member {
        Member { peer: p(s), place: Place::Here }
    }

    fn there(s: &str, node: &str) -> Member {
        Member { peer: p(s), place: Place::Node(node.into()) }
    }

    fn deliver(to: &str, msg: ServerMessage) -> Effect {
        Effect::Deliver(Delivery { to: p(to), msg })
    }

    fn code<T: std::fmt::Debug>(r: Result<T, Refusal>) -> ErrorCode {
        r.expect_err("expected a refusal").code
    }

    #[test]
    fn join_tells_local_members_directly_and_forwards_to_other_nodes() {
        let rooms = Rooms::clustered(4);
        let fx = rooms.join(&p("c"), &"r".into(), &[there("a", "n2"), here("b")], &[]).unwrap();
        let joined = ServerMessage::Joined { id: p("c"), room: "r".into() };
        assert_eq!(
            fx,
            vec![
                deliver(
                    "c",
                    ServerMessage::Created {
                        id: p("c"),
                        room: "r".into(),
                        peers: vec![p("a"), p("b")],
                        ice_servers: vec![]
                    }
                ),
                Effect::Forward { node: "n2".into(), delivery: Delivery { to: p("a"), msg: joined.clone() } },
                deliver("b", joined),
                Effect::Add { room: "r".into(), peer: p("c") },
            ]
        );
        // Deciding changes nothing: the join counts once the backplane commits it.
        assert_eq!(rooms.room_of(&p("c")), None);
    }

    #[test]
    fn a_full_snapshot_refuses_whichever_node_its_members_are_on() {
        let rooms = Rooms::clustered(2);
        let r = rooms.join(&p("c"), &"r".into(), &[there("a", "n2"), here("b")], &[]);
        let refusal = r.expect_err("full");
        assert_eq!(refusal.code, ErrorCode::RoomFull);
        assert_eq!(refusal.message, "room \"r\" is full (2 members, the limit is 2)");
    }

    #[test]
    fn second_join_and_bad_room_names_are_refused_before_any_io() {
        let mut rooms = Rooms::new(4);
        rooms.commit_join(&p("a"), &"r".into());
        assert_eq!(code(rooms.join(&p("a"), &"s".into(), &[], &[])), ErrorCode::AlreadyJoined);
        assert_eq!(code(rooms.join(&p("b"), &"".into(), &[], &[])), ErrorCode::BadMessage);
    }

    #[test]
    fn relay_to_a_peer_here_is_delivered_and_elsewhere_is_routed_only_when_clustered() {
        let mut single = Rooms::new(4);
        single.commit_join(&p("a"), &"r".into());
        single.commit_join(&p("b"), &"r".into());
        let fx = single.relay(&p("a"), ClientMessage::offer(p("b"), "v=0")).unwrap();
        let offer = ClientMessage::offer(p("b"), "v=0").relayed(p("a"), "r".into()).unwrap();
        assert_eq!(fx, deliver("b", offer));
        assert_eq!(code(single.relay(&p("a"), ClientMessage::offer(p("z"), "v=0"))), ErrorCode::NotInRoom);

        let mut clustered = Rooms::clustered(4);
        clustered.commit_join(&p("a"), &"r".into());
        // Unknown to this node: refused here, no trip to another node.
        assert_eq!(code(clustered.relay(&p("a"), ClientMessage::answer(p("z"), "v=0"))), ErrorCode::NotInRoom);
        clustered.seen_joined(&"r".into(), &p("z"), "n2");
        let fx = clustered.relay(&p("a"), ClientMessage::answer(p("z"), "v=0")).unwrap();
        let answer = ClientMessage::answer(p("z"), "v=0").relayed(p("a"), "r".into()).unwrap();
        assert_eq!(
            fx,
            Effect::Route { node: "n2".into(), room: "r".into(), delivery: Delivery { to: p("z"), msg: answer } }
        );
    }

    fn routed_to(rooms: &Rooms, from: &str, to: &str) -> Result<Option<String>, ErrorCode> {
        match rooms.relay(&p(from), ClientMessage::offer(p(to), "v=0")) {
            Ok(Effect::Route { node, .. }) => Ok(Some(node)),
            Ok(Effect::Deliver(_)) => Ok(None),
            Ok(other) => panic!("a relay became {other:?}"),
            Err(r) => Err(r.code),
        }
    }

    #[test]
    fn the_join_snapshot_gives_routes_to_the_members_on_other_nodes() {
        let mut rooms = Rooms::clustered(4);
        let before = [there("x", "n2"), there("y", "n3")];
        rooms.commit_join_after(&p("a"), &"r".into(), &before);
        assert_eq!(routed_to(&rooms, "a", "x"), Ok(Some("n2".into())));
        assert_eq!(routed_to(&rooms, "a", "y"), Ok(Some("n3".into())));
        assert_eq!(routed_to(&rooms, "a", "z"), Err(ErrorCode::NotInRoom));
    }

    #[test]
    fn joined_and_exit_seen_from_other_nodes_add_and_remove_routes() {
        let mut rooms = Rooms::clustered(4);
        rooms.commit_join(&p("a"), &"r".into());
        rooms.seen_joined(&"r".into(), &p("x"), "n2");
        assert_eq!(routed_to(&rooms, "a", "x"), Ok(Some("n2".into())));
        // A member seen again (a re-assertion after an outage) is not doubled.
        rooms.seen_joined(&"r".into(), &p("x"), "n2");
        rooms.seen_exit(&"r".into(), &p("x"));
        assert_eq!(routed_to(&rooms, "a", "x"), Err(ErrorCode::NotInRoom));
        // News of a room with no member here is not kept (no one here can relay into it).
        rooms.seen_joined(&"elsewhere".into(), &p("w"), "n2");
        assert_eq!(rooms.route_of(&"elsewhere".into(), &p("w")), None);
        // An exit of someone unknown changes nothing.
        rooms.seen_exit(&"r".into(), &p("nobody"));
        assert_eq!(rooms.members(&"r".into()), &[p("a")]);
    }

    #[test]
    fn routes_are_per_room_and_go_with_the_last_local_member() {
        let mut rooms = Rooms::clustered(4);
        rooms.commit_join(&p("a"), &"r".into());
        rooms.commit_join(&p("b"), &"s".into());
        rooms.seen_joined(&"r".into(), &p("x"), "n2");
        // b (room s) cannot reach x (room r) through r's copy.
        assert_eq!(routed_to(&rooms, "b", "x"), Err(ErrorCode::NotInRoom));
        rooms.leave(&p("a"));
        assert_eq!(rooms.route_of(&"r".into(), &p("x")), None, "the copy goes with the room's last member here");
        // Joining again starts from the new snapshot, not from stale news.
        rooms.commit_join_after(&p("c"), &"r".into(), &[]);
        assert_eq!(routed_to(&rooms, "c", "x"), Err(ErrorCode::NotInRoom));
    }

    #[test]
    fn the_receiving_node_accepts_only_its_own_members_of_that_room() {
        let mut rooms = Rooms::clustered(4);
        rooms.commit_join(&p("b"), &"r".into());
        assert!(rooms.accepts("b", "r"));
        assert!(!rooms.accepts("b", "s"), "a member of another room");
        assert!(!rooms.accepts("z", "r"), "not a member here");
        rooms.leave(&p("b"));
        assert!(!rooms.accepts("b", "r"), "left before the sender's node saw its exit");
        // Being written to the store: others may already have been told `joined`.
        rooms.begin_join(&p("j"), &"r".into(), &[there("x", "n2")]);
        assert!(rooms.accepts("j", "r"));
        assert!(!rooms.accepts("j", "s"));
        assert_eq!(rooms.local_members(), vec![], "a pending join is not re-asserted");
        rooms.end_join(&p("j"), false);
        assert!(!rooms.accepts("j", "r"), "a join given up");
        assert_eq!(rooms.room_count(), 0);
        assert_eq!(rooms.route_of(&"r".into(), &p("x")), None);
        rooms.begin_join(&p("k"), &"r".into(), &[]);
        rooms.end_join(&p("k"), true);
        assert_eq!(rooms.local_members(), vec![(p("k"), "r".into())]);
    }

    #[test]
    fn a_re_assertion_after_an_outage_rebuilds_routes_without_doubling() {
        // After Redis comes back (empty), the node re-asserts its members and
        // reads back their rooms: what other nodes re-asserted is seen again.
        let mut rooms = Rooms::clustered(4);
        rooms.commit_join_after(&p("a"), &"r".into(), &[there("x", "n2")]);
        for (room, peer, node) in [("r", "x", "n2"), ("r", "y", "n3"), ("r", "a", "n1"), ("q", "w", "n2")] {
            rooms.seen_joined(&room.into(), &p(peer), node);
        }
        assert_eq!(routed_to(&rooms, "a", "x"), Ok(Some("n2".into())));
        assert_eq!(routed_to(&rooms, "a", "y"), Ok(Some("n3".into())));
        assert_eq!(routed_to(&rooms, "a", "a"), Err(ErrorCode::NotInRoom), "itself, listed as on a node");
        assert_eq!(rooms.remote.get(&RoomId::from("r")).map(Vec::len), Some(2));
        assert_eq!(rooms.route_of(&"q".into(), &p("w")), None);
    }

    #[test]
    fn relay_refusals_same_on_every_backplane() {
        for mut rooms in [Rooms::new(4), Rooms::clustered(4)] {
            assert_eq!(code(rooms.relay(&p("a"), ClientMessage::offer(p("b"), "x"))), ErrorCode::NotJoined);
            rooms.commit_join(&p("a"), &"r1".into());
            rooms.commit_join(&p("b"), &"r2".into());
            assert_eq!(code(rooms.relay(&p("a"), ClientMessage::offer(p("a"), "x"))), ErrorCode::NotInRoom);
            // b is here but in another room: isolated even when clustered.
            assert_eq!(code(rooms.relay(&p("a"), ClientMessage::offer(p("b"), "x"))), ErrorCode::NotInRoom);
        }
    }

    #[test]
    fn leave_tells_local_members_and_asks_the_backplane_to_tell_the_rest() {
        let mut rooms = Rooms::clustered(4);
        rooms.commit_join(&p("a"), &"r".into());
        rooms.commit_join(&p("b"), &"r".into());
        rooms.commit_join(&p("c"), &"s".into());
        let exit = ServerMessage::Exit { from: p("a"), room: "r".into() };
        let (room, fx) = rooms.leave(&p("a")).unwrap();
        assert_eq!(room, RoomId::from("r"));
        assert_eq!(
            fx,
            vec![deliver("b", exit.clone()), Effect::Remove { room: "r".into(), peer: p("a"), notice: exit }]
        );
        assert!(rooms.leave(&p("a")).is_none());
        let (_, fx) = rooms.leave(&p("b")).unwrap();
        assert_eq!(fx.len(), 1, "no one left here to tell: {fx:?}");
        assert_eq!(rooms.room_count(), 1);
        assert_eq!(rooms.local_members(), vec![(p("c"), "s".into())]);
    }

    #[test]
    fn local_members_come_in_joining_order_per_room() {
        let mut rooms = Rooms::clustered(8);
        for (who, room) in [("z", "r"), ("a", "r"), ("m", "q"), ("b", "r")] {
            rooms.commit_join(&p(who), &room.into());
        }
        assert_eq!(
            rooms.local_members(),
            vec![(p("m"), "q".into()), (p("z"), "r".into()), (p("a"), "r".into()), (p("b"), "r".into())]
        );
    }
}

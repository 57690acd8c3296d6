//! The room registry: who is in which room, and who gets what when someone
//! joins, relays or leaves. A sans-IO core: no sockets, no locks, no clock;
//! the server feeds it messages and sends the deliveries it returns.
//!
//! Rules (the `/ws` contract, see `protocol`):
//! - a connection is in at most one room; `join` while in one is refused;
//! - `join` answers `created` (with the members already there) to the joiner
//!   and `joined` to every other member; a full room refuses;
//! - `offer`/`answer`/`candidate` reach only their `to`, and only when `to`
//!   is in the sender's room (rooms are isolated from each other);
//! - `leave` or a disconnect sends `exit` to the rest of that room only; an
//!   empty room is removed.

use std::collections::HashMap;

use crate::signal::protocol::{ClientMessage, ErrorCode, IceServer, PeerId, Refusal, RoomId, ServerMessage};

/// One message for one connection.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    pub to: PeerId,
    pub msg: ServerMessage,
}

/// What `leave` did, for logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Departure {
    pub room: RoomId,
    /// Members still there (who were told `exit`).
    pub remaining: usize,
}

/// All rooms of one node.
#[derive(Debug, Default)]
pub struct Rooms {
    /// Members in joining order.
    rooms: HashMap<RoomId, Vec<PeerId>>,
    room_of: HashMap<PeerId, RoomId>,
    max_room: usize,
}

impl Rooms {
    pub fn new(max_room: usize) -> Self {
        Rooms { rooms: HashMap::new(), room_of: HashMap::new(), max_room: max_room.max(1) }
    }

    pub fn room_count(&self) -> usize {
        self.rooms.len()
    }

    pub fn member_count(&self) -> usize {
        self.room_of.len()
    }

    pub fn room_of(&self, peer: &PeerId) -> Option<&RoomId> {
        self.room_of.get(peer)
    }

    pub fn members(&self, room: &RoomId) -> &[PeerId] {
        self.rooms.get(room).map(Vec::as_slice).unwrap_or(&[])
    }

    /// Handles one message from `from`. `ice_servers` go into `created`
    /// (per connection, since TURN REST credentials are per client).
    pub fn handle(
        &mut self,
        from: &PeerId,
        msg: ClientMessage,
        ice_servers: &[IceServer],
    ) -> Result<Vec<Delivery>, Refusal> {
        match msg {
            ClientMessage::Join { room } => self.join(from, room, ice_servers),
            ClientMessage::Leave => match self.leave(from) {
                Some((_, out)) => Ok(out),
                None => Err(Refusal::new(ErrorCode::NotJoined, "leave before join: not in a room")),
            },
            relay => self.relay(from, relay).map(|d| vec![d]),
        }
    }

    fn join(&mut self, from: &PeerId, room: RoomId, ice_servers: &[IceServer]) -> Result<Vec<Delivery>, Refusal> {
        if let Some(problem) = room.problem() {
            return Err(Refusal::new(ErrorCode::BadMessage, problem));
        }
        if let Some(current) = self.room_of.get(from) {
            return Err(Refusal::new(
                ErrorCode::AlreadyJoined,
                format!("already in room \"{current}\"; send leave first"),
            ));
        }
        let members = self.rooms.get(&room).map(Vec::as_slice).unwrap_or(&[]);
        if members.len() >= self.max_room {
            return Err(Refusal::new(
                ErrorCode::RoomFull,
                format!("room \"{room}\" is full ({} members, the limit is {})", members.len(), self.max_room),
            ));
        }
        let peers = members.to_vec();
        let mut out = Vec::with_capacity(peers.len() + 1);
        out.push(Delivery {
            to: from.clone(),
            msg: ServerMessage::Created {
                id: from.clone(),
                room: room.clone(),
                peers: peers.clone(),
                ice_servers: ice_servers.to_vec(),
            },
        });
        for p in &peers {
            out.push(Delivery { to: p.clone(), msg: ServerMessage::Joined { id: from.clone(), room: room.clone() } });
        }
        self.rooms.entry(room.clone()).or_default().push(from.clone());
        self.room_of.insert(from.clone(), room);
        Ok(out)
    }

    fn relay(&self, from: &PeerId, msg: ClientMessage) -> Result<Delivery, Refusal> {
        let Some(room) = self.room_of.get(from) else {
            return Err(Refusal::new(
                ErrorCode::NotJoined,
                format!("{} before join: not in a room", msg.kind().as_str()),
            ));
        };
        let Some(to) = msg.target().cloned() else {
            return Err(Refusal::new(ErrorCode::BadMessage, "not a message to relay"));
        };
        if &to == from || !self.members(room).contains(&to) {
            return Err(Refusal::new(ErrorCode::NotInRoom, format!("no member \"{to}\" in room \"{room}\"")));
        }
        let msg = msg
            .relayed(from.clone(), room.clone())
            .ok_or_else(|| Refusal::new(ErrorCode::BadMessage, "not a message to relay"))?;
        Ok(Delivery { to, msg })
    }

    /// Takes `peer` out of its room (on `leave` or disconnect): `exit` to
    /// the rest of that room. `None` when it was in no room.
    pub fn leave(&mut self, peer: &PeerId) -> Option<(Departure, Vec<Delivery>)> {
        let room = self.room_of.remove(peer)?;
        let members = self.rooms.get_mut(&room)?;
        members.retain(|p| p != peer);
        let out: Vec<Delivery> = members
            .iter()
            .map(|p| Delivery { to: p.clone(), msg: ServerMessage::Exit { from: peer.clone(), room: room.clone() } })
            .collect();
        let remaining = members.len();
        if remaining == 0 {
            self.rooms.remove(&room);
        }
        Some((Departure { room, remaining }, out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> PeerId {
        PeerId::from(s)
    }

    fn join(rooms: &mut Rooms, who: &str, room: &str) -> Vec<Delivery> {
        rooms.handle(&p(who), ClientMessage::Join { room: room.into() }, &[]).unwrap()
    }

    fn refusal(r: Result<Vec<Delivery>, Refusal>) -> ErrorCode {
        r.expect_err("expected a refusal").code
    }

    #[test]
    fn first_joiner_gets_created_with_no_peers_and_ice_servers() {
        let mut rooms = Rooms::new(4);
        let ice = vec![IceServer { urls: vec!["stun:127.0.0.1".into()], username: None, credential: None }];
        let out = rooms.handle(&p("a"), ClientMessage::Join { room: "r".into() }, &ice).unwrap();
        assert_eq!(
            out,
            vec![Delivery {
                to: p("a"),
                msg: ServerMessage::Created { id: p("a"), room: "r".into(), peers: vec![], ice_servers: ice }
            }]
        );
    }

    #[test]
    fn later_joiner_learns_peers_and_others_get_joined() {
        let mut rooms = Rooms::new(4);
        join(&mut rooms, "a", "r");
        join(&mut rooms, "b", "r");
        let out = join(&mut rooms, "c", "r");
        assert_eq!(
            out[0].msg,
            ServerMessage::Created { id: p("c"), room: "r".into(), peers: vec![p("a"), p("b")], ice_servers: vec![] }
        );
        let told: Vec<_> = out[1..].iter().map(|d| (d.to.clone(), d.msg.clone())).collect();
        assert_eq!(
            told,
            vec![
                (p("a"), ServerMessage::Joined { id: p("c"), room: "r".into() }),
                (p("b"), ServerMessage::Joined { id: p("c"), room: "r".into() }),
            ]
        );
    }

    #[test]
    fn full_room_refuses_and_stays_unchanged() {
        let mut rooms = Rooms::new(2);
        join(&mut rooms, "a", "r");
        join(&mut rooms, "b", "r");
        assert_eq!(refusal(rooms.handle(&p("c"), ClientMessage::Join { room: "r".into() }, &[])), ErrorCode::RoomFull);
        assert_eq!(rooms.members(&"r".into()), &[p("a"), p("b")]);
        assert_eq!(rooms.room_of(&p("c")), None);
    }

    #[test]
    fn second_join_is_refused() {
        let mut rooms = Rooms::new(4);
        join(&mut rooms, "a", "r");
        assert_eq!(
            refusal(rooms.handle(&p("a"), ClientMessage::Join { room: "s".into() }, &[])),
            ErrorCode::AlreadyJoined
        );
    }

    #[test]
    fn bad_room_name_is_refused() {
        let mut rooms = Rooms::new(4);
        assert_eq!(refusal(rooms.handle(&p("a"), ClientMessage::Join { room: "".into() }, &[])), ErrorCode::BadMessage);
    }

    #[test]
    fn offer_reaches_only_its_target_with_from_and_room() {
        let mut rooms = Rooms::new(4);
        join(&mut rooms, "a", "r");
        join(&mut rooms, "b", "r");
        join(&mut rooms, "c", "r");
        let out = rooms.handle(&p("a"), ClientMessage::offer(p("b"), "v=0"), &[]).unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].to, p("b"));
        assert_eq!(
            out[0].msg,
            ServerMessage::Offer {
                from: p("a"),
                to: p("b"),
                room: "r".into(),
                sdp: "v=0".into(),
                extra: Default::default()
            }
        );
    }

    #[test]
    fn rooms_are_isolated() {
        let mut rooms = Rooms::new(4);
        join(&mut rooms, "a", "r1");
        join(&mut rooms, "b", "r2");
        assert_eq!(refusal(rooms.handle(&p("a"), ClientMessage::answer(p("b"), "x"), &[])), ErrorCode::NotInRoom);
        // Joining r2 does not tell r1's members anything.
        let out = join(&mut rooms, "c", "r2");
        assert!(out.iter().all(|d| d.to != p("a")));
    }

    #[test]
    fn relay_before_join_and_to_self_are_refused() {
        let mut rooms = Rooms::new(4);
        assert_eq!(refusal(rooms.handle(&p("a"), ClientMessage::offer(p("b"), "x"), &[])), ErrorCode::NotJoined);
        join(&mut rooms, "a", "r");
        assert_eq!(refusal(rooms.handle(&p("a"), ClientMessage::offer(p("a"), "x"), &[])), ErrorCode::NotInRoom);
        assert_eq!(refusal(rooms.handle(&p("z"), ClientMessage::Leave, &[])), ErrorCode::NotJoined);
    }

    #[test]
    fn leave_tells_only_that_room_and_removes_empty_rooms() {
        let mut rooms = Rooms::new(4);
        join(&mut rooms, "a", "r1");
        join(&mut rooms, "b", "r1");
        join(&mut rooms, "c", "r2");
        let out = rooms.handle(&p("a"), ClientMessage::Leave, &[]).unwrap();
        assert_eq!(out, vec![Delivery { to: p("b"), msg: ServerMessage::Exit { from: p("a"), room: "r1".into() } }]);
        let (dep, out) = rooms.leave(&p("b")).unwrap();
        assert_eq!(dep, Departure { room: "r1".into(), remaining: 0 });
        assert!(out.is_empty());
        assert_eq!(rooms.room_count(), 1);
        assert_eq!(rooms.member_count(), 1);
        assert!(rooms.leave(&p("b")).is_none());
        // After leaving, joining another room works.
        join(&mut rooms, "a", "r2");
        assert_eq!(rooms.members(&"r2".into()), &[p("c"), p("a")]);
    }
}

//! The one-node backplane: rooms in this process's memory. Carries out the
//! room core's effects (`rooms::Effect`): every member is here, so a join's
//! snapshot is the core's own members, and every effect is a delivery to a
//! local connection or a change the core records itself.

use crate::signal::protocol::{ClientMessage, IceServer, PeerId, Refusal, RoomId};
use crate::signal::rooms::{Delivery, Effect, Rooms};

/// Handles `join`, `offer`, `answer`, `candidate` from `from`; the deliveries
/// for local connections. (`leave` goes through [`leave`].)
pub fn handle(
    rooms: &mut Rooms,
    from: &PeerId,
    msg: ClientMessage,
    ice: &[IceServer],
) -> Result<Vec<Delivery>, Refusal> {
    match msg {
        ClientMessage::Join { room } => {
            let before = rooms.snapshot_here(&room);
            let effects = rooms.join(from, &room, &before, ice)?;
            Ok(apply(rooms, effects))
        }
        ClientMessage::Leave => match leave(rooms, from) {
            Some((_, out)) => Ok(out),
            None => Err(Rooms::not_joined(msg.kind())),
        },
        relay => {
            let effect = rooms.relay(from, relay)?;
            Ok(apply(rooms, vec![effect]))
        }
    }
}

/// Takes `peer` out of its room: the `exit`s for the rest of it.
pub fn leave(rooms: &mut Rooms, peer: &PeerId) -> Option<(RoomId, Vec<Delivery>)> {
    let (room, effects) = rooms.leave(peer)?;
    Some((room, apply(rooms, effects)))
}

fn apply(rooms: &mut Rooms, effects: Vec<Effect>) -> Vec<Delivery> {
    let mut out = Vec::with_capacity(effects.len());
    for e in effects {
        match e {
            Effect::Deliver(d) => out.push(d),
            Effect::Add { room, peer } => rooms.commit_join(&peer, &room),
            // The core already forgot the member; nobody elsewhere to tell.
            Effect::Remove { .. } => {}
            // One node: the core never forwards or routes (every member is here).
            Effect::Forward { delivery, .. } | Effect::Route { delivery, .. } => {
                tracing::error!(to = %delivery.to, "one-node rooms asked to reach another node; dropped");
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    //! The room rules end to end on one node (what `/ws` clients see).
    use super::*;
    use crate::signal::protocol::{ErrorCode, ServerMessage};

    fn p(s: &str) -> PeerId {
        PeerId::from(s)
    }

    fn join(rooms: &mut Rooms, who: &str, room: &str) -> Vec<Delivery> {
        handle(rooms, &p(who), ClientMessage::Join { room: room.into() }, &[]).unwrap()
    }

    fn refusal(r: Result<Vec<Delivery>, Refusal>) -> ErrorCode {
        r.expect_err("expected a refusal").code
    }

    #[test]
    fn first_joiner_gets_created_with_no_peers_and_ice_servers() {
        let mut rooms = Rooms::new(4);
        let ice = vec![IceServer { urls: vec!["stun:127.0.0.1".into()], username: None, credential: None }];
        let out = handle(&mut rooms, &p("a"), ClientMessage::Join { room: "r".into() }, &ice).unwrap();
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
        assert_eq!(
            refusal(handle(&mut rooms, &p("c"), ClientMessage::Join { room: "r".into() }, &[])),
            ErrorCode::RoomFull
        );
        assert_eq!(rooms.members(&"r".into()), &[p("a"), p("b")]);
        assert_eq!(rooms.room_of(&p("c")), None);
    }

    #[test]
    fn offer_reaches_only_its_target_with_from_and_room() {
        let mut rooms = Rooms::new(4);
        join(&mut rooms, "a", "r");
        join(&mut rooms, "b", "r");
        join(&mut rooms, "c", "r");
        let out = handle(&mut rooms, &p("a"), ClientMessage::offer(p("b"), "v=0"), &[]).unwrap();
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
        assert_eq!(refusal(handle(&mut rooms, &p("a"), ClientMessage::answer(p("b"), "x"), &[])), ErrorCode::NotInRoom);
        let out = join(&mut rooms, "c", "r2");
        assert!(out.iter().all(|d| d.to != p("a")));
    }

    #[test]
    fn leave_before_join_is_refused() {
        let mut rooms = Rooms::new(4);
        assert_eq!(refusal(handle(&mut rooms, &p("z"), ClientMessage::Leave, &[])), ErrorCode::NotJoined);
    }

    #[test]
    fn leave_tells_only_that_room_and_removes_empty_rooms() {
        let mut rooms = Rooms::new(4);
        join(&mut rooms, "a", "r1");
        join(&mut rooms, "b", "r1");
        join(&mut rooms, "c", "r2");
        let out = handle(&mut rooms, &p("a"), ClientMessage::Leave, &[]).unwrap();
        assert_eq!(out, vec![Delivery { to: p("b"), msg: ServerMessage::Exit { from: p("a"), room: "r1".into() } }]);
        let (room, out) = leave(&mut rooms, &p("b")).unwrap();
        assert_eq!(room, RoomId::from("r1"));
        assert!(out.is_empty());
        assert_eq!(rooms.room_count(), 1);
        assert_eq!(rooms.member_count(), 1);
        assert!(leave(&mut rooms, &p("b")).is_none());
        join(&mut rooms, "a", "r2");
        assert_eq!(rooms.members(&"r2".into()), &[p("c"), p("a")]);
    }
}

//! Two `natkit signal` nodes sharing rooms through a real `redis-server`
//! (127.0.0.1 only): members on different nodes talk as if on one, and a
//! killed node's members leave their rooms.

mod common;

use common::redis::Redis;
use common::signal::{SignalServer, WAIT, join, recv, rt};
use natkit::signal::client::{ClientError, ClientOptions, SignalClient};
use natkit::signal::protocol::{ClientMessage, ErrorCode, IceCandidate, ServerMessage};

#[test]
fn members_on_two_nodes_exchange_offer_answer_and_candidates() {
    let redis = Redis::start();
    let url = redis.url();
    let n1 = SignalServer::start(&["--redis", &url, "--max-room", "3"]);
    let n2 = SignalServer::start(&["--redis", &url, "--max-room", "3"]);
    rt().block_on(async {
        let (mut a, ma) = join(&n1, "x").await;
        let (mut b, mb) = join(&n2, "x").await;
        assert_eq!(mb.peers, vec![ma.id.clone()], "node 2 sees node 1's member");
        assert_eq!(recv(&mut a).await, ServerMessage::Joined { id: mb.id.clone(), room: "x".into() });

        b.send(&ClientMessage::offer(ma.id.clone(), "v=0 b")).await.expect("send");
        assert_eq!(
            recv(&mut a).await,
            ClientMessage::offer(ma.id.clone(), "v=0 b").relayed(mb.id.clone(), "x".into()).unwrap()
        );
        a.send(&ClientMessage::answer(mb.id.clone(), "v=0 a")).await.expect("send");
        assert_eq!(
            recv(&mut b).await,
            ClientMessage::answer(mb.id.clone(), "v=0 a").relayed(ma.id.clone(), "x".into()).unwrap()
        );
        let cand = IceCandidate::new("candidate:1 1 udp 1 127.0.0.1 9 typ host", Some("0".into()), Some(0));
        a.send(&ClientMessage::candidate(mb.id.clone(), cand.clone())).await.expect("send");
        assert_eq!(
            recv(&mut b).await,
            ClientMessage::candidate(mb.id.clone(), cand).relayed(ma.id.clone(), "x".into()).unwrap()
        );

        // Isolation across nodes: a member of another room cannot reach a.
        let (mut c, _mc) = join(&n2, "y").await;
        c.send(&ClientMessage::offer(ma.id.clone(), "nope")).await.expect("send");
        assert!(matches!(recv(&mut c).await, ServerMessage::Error { code: ErrorCode::NotInRoom, .. }));

        // A same-node member (c2 on node 1) and the room limit, counted over both nodes.
        let (_d, md) = join(&n1, "x").await;
        assert_eq!(md.peers.len(), 2);
        assert_eq!(recv(&mut a).await, ServerMessage::Joined { id: md.id.clone(), room: "x".into() });
        assert_eq!(recv(&mut b).await, ServerMessage::Joined { id: md.id.clone(), room: "x".into() });
        let mut e = SignalClient::connect(&n2.ws_url(), &ClientOptions::default()).await.expect("connect");
        match e.join(&"x".into(), WAIT).await {
            Err(ClientError::Server { code, .. }) => assert_eq!(code, ErrorCode::RoomFull),
            other => panic!("expected room_full across nodes, got {other:?}"),
        }

        // A closed connection on node 2 → exit on node 1, for that room only.
        b.close().await;
        assert_eq!(recv(&mut a).await, ServerMessage::Exit { from: mb.id.clone(), room: "x".into() });
    });
}

#[test]
fn killing_a_node_makes_its_members_exits_arrive() {
    let redis = Redis::start();
    let url = redis.url();
    let n1 = SignalServer::start(&["--redis", &url, "--node-ttl", "2"]);
    let mut n2 = SignalServer::start(&["--redis", &url, "--node-ttl", "2"]);
    rt().block_on(async {
        let (mut a, _ma) = join(&n1, "k").await;
        let (_b, mb) = join(&n2, "k").await;
        let (_c, mc) = join(&n2, "k").await;
        recv(&mut a).await;
        recv(&mut a).await;
        n2.kill(); // SIGKILL: node 2 tells nobody.
        let mut gone = vec![];
        for _ in 0..2 {
            match recv(&mut a).await {
                ServerMessage::Exit { from, room } => {
                    assert_eq!(room.as_str(), "k");
                    gone.push(from);
                }
                other => panic!("expected exit, got {other:?}"),
            }
        }
        gone.sort();
        let mut want = vec![mb.id, mc.id];
        want.sort();
        assert_eq!(gone, want);
        // The room is usable again: a newcomer on node 1 sees only a.
        let (_d, md) = join(&n1, "k").await;
        assert_eq!(md.peers.len(), 1);
    });
}

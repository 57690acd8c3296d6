//! Cross-node relays routed from each node's copy of room membership
//! (`src/signal/rooms.rs`, `src/signal/redis/`): the sender's node publishes
//! straight to the target's node, and the receiving node, which owns the
//! truth for its members, delivers only to its member of that room. A relay
//! that reaches a node for someone who is not its member there (a member who
//! left before the sender's node saw the `exit`, or a forged envelope) is not
//! delivered; the refusal goes back to the sender as a strike.

mod common;

use common::redis::Redis;
use common::signal::{SignalServer, join, recv, rt};
use natkit::signal::protocol::{ClientMessage, ErrorCode, ServerMessage};

/// `redis-cli -p PORT ARGS...`, its output trimmed.
fn redis_cli(port: u16, args: &[&str]) -> String {
    let cli = common::tools::require("redis-cli", "redis-tools");
    let out =
        std::process::Command::new(cli).args(["-p", &port.to_string()]).args(args).output().expect("running redis-cli");
    assert!(out.status.success(), "redis-cli {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The node id Redis lists for `peer` in `room`.
fn node_of(port: u16, room: &str, peer: &str) -> String {
    let node = redis_cli(port, &["HGET", &format!("natkit:room:{room}"), peer]);
    assert!(!node.is_empty(), "{peer} is not listed in room {room}");
    node
}

#[test]
fn a_relay_routed_to_a_node_for_someone_not_its_member_there_is_refused_back_to_the_sender() {
    let redis = Redis::start();
    let url = redis.url();
    let n1 = SignalServer::start(&["--redis", &url]);
    let n2 = SignalServer::start(&["--redis", &url]);
    rt().block_on(async {
        let (mut a, ma) = join(&n1, "r").await;
        let (mut b, mb) = join(&n2, "r").await;
        assert_eq!(recv(&mut a).await, ServerMessage::Joined { id: mb.id.clone(), room: "r".into() });
        // c is on the same node as b, in another room.
        let (mut c, mc) = join(&n2, "other").await;
        let (node1, node2) = (node_of(redis.port, "r", ma.id.as_str()), node_of(redis.port, "r", mb.id.as_str()));
        assert_ne!(node1, node2, "the pair is split across the nodes");

        // An envelope as node 1 would route it, but for c, who is not node 2's member of room r
        // (what a relay to a member who left looks like before the sender's node saw the exit).
        let offer = ClientMessage::offer(mc.id.clone(), "v=0 forged").relayed(ma.id.clone(), "r".into()).unwrap();
        let envelope = serde_json::json!({
            "to": mc.id.as_str(), "from": ma.id.as_str(), "room": "r", "node": node1,
            "msg": serde_json::from_str::<serde_json::Value>(&offer.to_json()).unwrap(),
        });
        let got = redis_cli(redis.port, &["PUBLISH", &format!("natkit:to:{node2}"), &envelope.to_string()]);
        assert_eq!(got, "1", "node 2 is subscribed to its channel");

        // The sender hears the refusal from node 2, naming the target and the room.
        match recv(&mut a).await {
            ServerMessage::Error { code: ErrorCode::NotInRoom, message } => {
                assert!(
                    message.contains(mc.id.as_str()) && message.contains("\"r\""),
                    "names target and room: {message}"
                )
            }
            other => panic!("expected not_in_room from the receiving node, got {other:?}"),
        }
        // c got nothing: the next thing it hears is a joiner of its own room.
        let (_d, md) = join(&n1, "other").await;
        assert_eq!(recv(&mut c).await, ServerMessage::Joined { id: md.id.clone(), room: "other".into() });

        // The real pair still talks both ways, routed from each node's copy of the room.
        a.send(&ClientMessage::offer(mb.id.clone(), "v=0 a")).await.expect("send");
        assert_eq!(
            recv(&mut b).await,
            ClientMessage::offer(mb.id.clone(), "v=0 a").relayed(ma.id.clone(), "r".into()).unwrap()
        );
        b.send(&ClientMessage::answer(ma.id.clone(), "v=0 b")).await.expect("send");
        assert_eq!(
            recv(&mut a).await,
            ClientMessage::answer(ma.id.clone(), "v=0 b").relayed(mb.id.clone(), "r".into()).unwrap()
        );
    });
}

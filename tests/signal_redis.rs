//! Two `natkit signal` nodes sharing rooms through a real `redis-server`
//! (127.0.0.1 only): members on different nodes talk as if on one, and a
//! killed node's members leave their rooms, and Redis can go away and come
//! back (empty) without evicting anyone who is still connected.

mod common;
#[path = "common/redis_outage.rs"]
mod redis_outage;

use std::time::Duration;

use common::redis::Redis;
use common::signal::{SignalServer, WAIT, assert_joins_heard_in_order, join, join_all_at_once, recv, rt};
use natkit::signal::client::{ClientError, ClientOptions, SignalClient};
use natkit::signal::protocol::{ClientMessage, ErrorCode, IceCandidate, PeerId, RoomId, ServerMessage};
use redis_outage::OutageRedis;

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

/// Polls after Redis is back: this many tries, `RETRY_GAP` apart, is the
/// "within about 2 s" goal expressed as a count rather than a clock.
const RECOVERY_TRIES: usize = 20;
const RETRY_GAP: Duration = Duration::from_millis(100);
/// How long a message that should NOT come is waited for.
const QUIET: Duration = Duration::from_millis(300);

/// The next message within `QUIET`, if any.
async fn maybe_recv(c: &mut SignalClient) -> Option<ServerMessage> {
    tokio::time::timeout(QUIET, c.recv()).await.ok().map(|r| r.expect("connection still open"))
}

/// A fresh connection joins `room` on `node`, once per try until it works; the number of tries used.
async fn join_until_it_works(node: &SignalServer, room: &str) -> (SignalClient, usize) {
    let mut last = String::new();
    for attempt in 1..=RECOVERY_TRIES {
        let mut c = SignalClient::connect(&node.ws_url(), &ClientOptions::default()).await.expect("connect");
        match c.join(&RoomId::from(room), WAIT).await {
            Ok(_) => return (c, attempt),
            Err(e) => last = e.to_string(),
        }
        c.close().await;
        tokio::time::sleep(RETRY_GAP).await;
    }
    panic!("join {room} still failing after {RECOVERY_TRIES} tries: {last}\nnode log:\n{}", node.log_text());
}

/// `from` offers to `to` (on another node) once per try until `to` receives
/// it; the number of tries used, and what else `to` received meanwhile.
async fn offer_until_delivered(
    from: &mut SignalClient,
    from_id: &PeerId,
    to: &mut SignalClient,
    to_id: &PeerId,
    room: &str,
) -> (usize, Vec<ServerMessage>) {
    let mut last = String::new();
    let mut others = vec![];
    for attempt in 1..=RECOVERY_TRIES {
        let sdp = format!("v=0 try {attempt}");
        from.send(&ClientMessage::offer(to_id.clone(), sdp.clone())).await.expect("send");
        let want = ClientMessage::offer(to_id.clone(), sdp).relayed(from_id.clone(), room.into()).unwrap();
        loop {
            tokio::select! {
                m = recv(to) => {
                    if m == want {
                        return (attempt, others);
                    }
                    assert!(!matches!(m, ServerMessage::Offer { .. }), "an offer arrives once: {m:?}");
                    others.push(m);
                }
                m = recv(from) => match m {
                    ServerMessage::Error { code: ErrorCode::Internal, message } => {
                        last = message;
                        break;
                    }
                    other => panic!("expected the offer to go through or fail with internal, got {other:?}"),
                },
            }
        }
        tokio::time::sleep(RETRY_GAP).await;
    }
    panic!("cross-node offer still failing after {RECOVERY_TRIES} tries: {last}");
}

#[test]
fn redis_outage_evicts_no_live_member_applies_leaves_and_recovers() {
    let mut redis = OutageRedis::start();
    let url = redis.url();
    // A short --node-ttl: an 8 s outage is four times it, so a node that took
    // stale heartbeats as death would evict everyone.
    let n1 = SignalServer::start(&["--redis", &url, "--node-ttl", "2"]);
    let mut n2 = SignalServer::start(&["--redis", &url, "--node-ttl", "2"]);
    rt().block_on(async {
        // Room x across the nodes (a on 1; b and l on 2), room y on node 1 only.
        let (mut a, ma) = join(&n1, "x").await;
        let (mut b, mb) = join(&n2, "x").await;
        let (mut l, ml) = join(&n2, "x").await;
        assert_eq!(recv(&mut a).await, ServerMessage::Joined { id: mb.id.clone(), room: "x".into() });
        assert_eq!(recv(&mut a).await, ServerMessage::Joined { id: ml.id.clone(), room: "x".into() });
        assert_eq!(recv(&mut b).await, ServerMessage::Joined { id: ml.id.clone(), room: "x".into() });
        let (mut c, mc) = join(&n1, "y").await;
        let (mut d, md) = join(&n1, "y").await;
        assert_eq!(recv(&mut c).await, ServerMessage::Joined { id: md.id.clone(), room: "y".into() });

        redis.stop();

        // Same-node rooms keep working.
        c.send(&ClientMessage::offer(md.id.clone(), "v=0 same node")).await.expect("send");
        assert_eq!(
            recv(&mut d).await,
            ClientMessage::offer(md.id.clone(), "v=0 same node").relayed(mc.id.clone(), "y".into()).unwrap()
        );
        // Cross-node operations fail with a clear error.
        a.send(&ClientMessage::offer(mb.id.clone(), "v=0 during outage")).await.expect("send");
        match recv(&mut a).await {
            ServerMessage::Error { code: ErrorCode::Internal, message } => {
                assert!(message.contains("Redis"), "the error names Redis: {message}")
            }
            other => panic!("expected internal for a cross-node offer during the outage, got {other:?}"),
        }
        let mut e = SignalClient::connect(&n1.ws_url(), &ClientOptions::default()).await.expect("connect");
        match e.join(&"x".into(), WAIT).await {
            Err(ClientError::Server { code, .. }) => assert_eq!(code, ErrorCode::Internal),
            other => panic!("expected internal for a join during the outage, got {other:?}"),
        }
        // A leave during the outage: its own node's members hear it at once.
        l.leave().await.expect("leave");
        assert_eq!(recv(&mut b).await, ServerMessage::Exit { from: ml.id.clone(), room: "x".into() });

        tokio::time::sleep(Duration::from_secs(8)).await;
        redis.restart();

        // Back: joins and cross-node offers work again within RECOVERY_TRIES.
        let (_f, tries) = join_until_it_works(&n2, "z").await;
        eprintln!("join worked at try {tries} after Redis came back");
        let (tries, mut seen) = offer_until_delivered(&mut b, &mb.id, &mut a, &ma.id, "x").await;
        eprintln!("cross-node offer delivered at try {tries} after Redis came back");
        // The leave during the outage reached the other node (before or after that offer), once.
        if seen.is_empty() {
            seen.push(recv(&mut a).await);
        }
        assert_eq!(seen, vec![ServerMessage::Exit { from: ml.id.clone(), room: "x".into() }]);

        // A node started after the outage evicts nobody, even after several --node-ttl.
        let n3 = SignalServer::start(&["--redis", &url, "--node-ttl", "2"]);
        tokio::time::sleep(Duration::from_secs(5)).await;
        for (who, cl) in [("a", &mut a), ("b", &mut b), ("c", &mut c), ("d", &mut d)] {
            assert_eq!(maybe_recv(cl).await, None, "{who} got a message nobody sent (an eviction?)");
        }
        let (_g, mg) = join(&n3, "x").await;
        let mut peers = mg.peers.clone();
        peers.sort();
        let mut want = vec![ma.id.clone(), mb.id.clone()];
        want.sort();
        assert_eq!(peers, want, "room x after the outage: a and b, not l");
        for cl in [&mut a, &mut b] {
            assert_eq!(recv(cl).await, ServerMessage::Joined { id: mg.id.clone(), room: "x".into() });
        }
        let (_h, mh) = join(&n3, "y").await;
        assert_eq!(mh.peers, vec![mc.id.clone(), md.id.clone()], "room y kept its same-node members");
        for cl in [&mut c, &mut d] {
            assert_eq!(recv(cl).await, ServerMessage::Joined { id: mh.id.clone(), room: "y".into() });
        }
        a.send(&ClientMessage::answer(mb.id.clone(), "v=0 after")).await.expect("send");
        assert_eq!(
            recv(&mut b).await,
            ClientMessage::answer(mb.id.clone(), "v=0 after").relayed(ma.id.clone(), "x".into()).unwrap()
        );
        d.send(&ClientMessage::answer(mc.id.clone(), "v=0 y")).await.expect("send");
        assert_eq!(
            recv(&mut c).await,
            ClientMessage::answer(mc.id.clone(), "v=0 y").relayed(md.id.clone(), "y".into()).unwrap()
        );

        // And a node killed after the outage is still noticed: b leaves x.
        n2.kill();
        assert_eq!(recv(&mut a).await, ServerMessage::Exit { from: mb.id.clone(), room: "x".into() });
    });
}

#[test]
fn concurrent_joins_across_nodes_never_overfill_a_room() {
    let redis = Redis::start();
    let url = redis.url();
    let n1 = SignalServer::start(&["--redis", &url, "--max-room", "3"]);
    let n2 = SignalServer::start(&["--redis", &url, "--max-room", "3"]);
    rt().block_on(async {
        let mut clients = vec![];
        for i in 0..10 {
            let node = if i % 2 == 0 { &n1 } else { &n2 };
            clients.push(SignalClient::connect(&node.ws_url(), &ClientOptions::default()).await.expect("connect"));
        }
        // All ten joins in flight at once, half on each node.
        let room = RoomId::from("race");
        let results = futures::future::join_all(clients.iter_mut().map(|c| c.join(&room, WAIT))).await;
        let mut joined = 0;
        for r in results {
            match r {
                Ok(m) => {
                    joined += 1;
                    assert!(m.peers.len() < 3, "created with {} peers in a room of 3", m.peers.len());
                }
                Err(ClientError::Server { code: ErrorCode::RoomFull, .. }) => {}
                Err(e) => panic!("expected created or room_full, got {e}"),
            }
        }
        assert_eq!(joined, 3, "exactly --max-room joins succeed");
    });
}

#[test]
fn concurrent_cross_node_relays_arrive_complete_and_in_order() {
    // Many senders at once fill the relay batches (several deliveries per
    // pub/sub message); every receiver still gets each of its messages once, in order.
    const PAIRS: usize = 20;
    const MESSAGES: usize = 25;
    let redis = Redis::start();
    let url = redis.url();
    let n1 = SignalServer::start(&["--redis", &url, "--max-rate", "100000"]);
    let n2 = SignalServer::start(&["--redis", &url, "--max-rate", "100000"]);
    rt().block_on(async {
        let mut pairs = vec![];
        for i in 0..PAIRS {
            let room = format!("order{i}");
            let (mut a, ma) = join(&n1, &room).await;
            let (b, mb) = join(&n2, &room).await;
            assert_eq!(recv(&mut a).await, ServerMessage::Joined { id: mb.id.clone(), room: room.as_str().into() });
            pairs.push((a, ma, b, mb, room));
        }
        let runs = pairs.into_iter().map(|(mut a, ma, mut b, mb, room)| async move {
            let send = async {
                for k in 0..MESSAGES {
                    a.send(&ClientMessage::offer(mb.id.clone(), format!("v=0 {k}"))).await.expect("send");
                }
            };
            let receive = async {
                for k in 0..MESSAGES {
                    let want = ClientMessage::offer(mb.id.clone(), format!("v=0 {k}"))
                        .relayed(ma.id.clone(), room.as_str().into())
                        .unwrap();
                    assert_eq!(recv(&mut b).await, want, "message {k} of room {room}");
                }
            };
            futures::join!(send, receive);
        });
        futures::future::join_all(runs).await;
    });
}

/// `redis-cli -p PORT ARGS...`, its output trimmed.
fn redis_cli(port: u16, args: &[&str]) -> String {
    let cli = common::tools::require("redis-cli", "redis-tools");
    let out = std::process::Command::new(cli)
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .expect("running redis-cli");
    assert!(out.status.success(), "redis-cli {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn redis_emptied_under_connected_nodes_gets_every_member_back() {
    // FLUSHALL (or a failover to an empty replica) with the connections still
    // up: the nodes notice their presence is gone and re-assert their members.
    let redis = Redis::start();
    let url = redis.url();
    let n1 = SignalServer::start(&["--redis", &url, "--node-ttl", "2"]);
    let n2 = SignalServer::start(&["--redis", &url, "--node-ttl", "2"]);
    rt().block_on(async {
        let (mut a, ma) = join(&n1, "w").await;
        let (mut b, mb) = join(&n2, "w").await;
        assert_eq!(recv(&mut a).await, ServerMessage::Joined { id: mb.id.clone(), room: "w".into() });
        assert_eq!(redis_cli(redis.port, &["FLUSHALL"]), "OK");
        let mut tries = 0;
        while redis_cli(redis.port, &["HLEN", "natkit:room:w"]) != "2" {
            tries += 1;
            assert!(tries <= 50, "room w not re-asserted after {tries} looks 100 ms apart");
            tokio::time::sleep(RETRY_GAP).await;
        }
        let (_c, mc) = join(&n1, "w").await;
        let mut peers = mc.peers.clone();
        peers.sort();
        let mut want = vec![ma.id.clone(), mb.id.clone()];
        want.sort();
        assert_eq!(peers, want);
        // Nobody was told anyone left; both hear the newcomer.
        assert_eq!(recv(&mut a).await, ServerMessage::Joined { id: mc.id.clone(), room: "w".into() });
        assert_eq!(recv(&mut b).await, ServerMessage::Joined { id: mc.id.clone(), room: "w".into() });
        b.send(&ClientMessage::offer(ma.id.clone(), "v=0 after flush")).await.expect("send");
        assert_eq!(
            recv(&mut a).await,
            ClientMessage::offer(ma.id.clone(), "v=0 after flush").relayed(mb.id.clone(), "w".into()).unwrap()
        );
    });
}

/// Members hear of joiners in the order Redis let them in, on the joiners'
/// node and on the other one, even when the joins arrive at once on both
/// nodes: the `joined` a member gets before X's are exactly the peers X was
/// told of in `created` (the one-node test in tests/signal.rs, over Redis).
/// Before, a same-node member was told by the joining task after the join's
/// script returned, and other nodes' members over pub/sub, so two joins
/// could cross on their way to the same member.
#[test]
fn concurrent_joins_on_two_nodes_reach_every_member_in_the_order_they_were_let_in() {
    const JOINERS: usize = 14;
    let redis = Redis::start();
    let url = redis.url();
    let n1 = SignalServer::start(&["--redis", &url, "--max-room", "16"]);
    let n2 = SignalServer::start(&["--redis", &url, "--max-room", "16"]);
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    runtime.block_on(async {
        for round in 0..15 {
            let room = format!("order-{round}");
            let (mut first, m_first) = join(&n1, &room).await;
            let (mut second, m_second) = join(&n2, &room).await;
            assert_eq!(
                recv(&mut first).await,
                ServerMessage::Joined { id: m_second.id.clone(), room: room.as_str().into() }
            );
            // Half on each node: the joins race across both.
            let urls: Vec<String> = (0..JOINERS).map(|i| if i % 2 == 0 { n1.ws_url() } else { n2.ws_url() }).collect();
            let (told, _joiners) = join_all_at_once(&urls, &room).await;
            for (who, member) in [("first (node 1)", &mut first), ("second (node 2)", &mut second)] {
                let heard = vec![m_first.id.clone(), m_second.id.clone()];
                assert_joins_heard_in_order(member, &told, heard, &format!("round {round}, the {who} member")).await;
            }
        }
    });
}

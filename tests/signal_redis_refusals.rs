//! Refusals Redis decides after the sender's frame was handled: a relay to a
//! member on another node is handed to Redis without waiting (so the sender's
//! connection reads on), and a target that is not there comes back later as
//! an `error` that counts as a strike, exactly as a refusal decided at once.

mod common;

use common::redis::Redis;
use common::signal::{SignalServer, WAIT, join, metric_settles, recv, rt};
use natkit::signal::protocol::{ClientMessage, ErrorCode, ServerMessage};

/// How long a counter may take to reach what a test expects.
const SETTLE: std::time::Duration = std::time::Duration::from_secs(5);

#[test]
fn relays_to_a_member_who_left_another_node_are_refused_later_and_close_the_sender_as_strikes() {
    let redis = Redis::start();
    let url = redis.url();
    let m1 = format!("127.0.0.1:{}", common::free_port());
    let n1 = SignalServer::start(&["--redis", &url, "--metrics", &m1]);
    let n2 = SignalServer::start(&["--redis", &url]);
    rt().block_on(async {
        let (mut a, _ma) = join(&n1, "gone").await;
        let (b, mb) = join(&n2, "gone").await;
        assert_eq!(recv(&mut a).await, ServerMessage::Joined { id: mb.id.clone(), room: "gone".into() });
        b.close().await;
        assert_eq!(recv(&mut a).await, ServerMessage::Exit { from: mb.id.clone(), room: "gone".into() });

        // One relay to the member who left: the refusal arrives although `a` sends nothing more.
        a.send(&ClientMessage::offer(mb.id.clone(), "v=0 late")).await.expect("send");
        match recv(&mut a).await {
            ServerMessage::Error { code: ErrorCode::NotInRoom, message } => {
                assert!(message.contains(mb.id.as_str()), "names the target: {message}")
            }
            other => panic!("expected not_in_room for a member who left, got {other:?}"),
        }
        assert_eq!(metric_settles(&m1, "natkit_signal_errors_total{code=\"not_in_room\"}", 1, SETTLE).await, 1);

        // 19 more, sent back to back: the 20th refusal within 10 s closes the connection.
        let (mut tx, mut rx) = a.split();
        for k in 0..19 {
            if tx.send(&ClientMessage::offer(mb.id.clone(), format!("v=0 {k}"))).await.is_err() {
                break;
            }
        }
        let mut refused = 1;
        let mut closed = false;
        for _ in 0..40 {
            match tokio::time::timeout(WAIT, rx.recv()).await.expect("an answer or the close in time") {
                Ok(ServerMessage::Error { code: ErrorCode::NotInRoom, .. }) => refused += 1,
                Ok(other) => panic!("unexpected {other:?}"),
                Err(_) => {
                    closed = true;
                    break;
                }
            }
        }
        assert!(closed, "20 refusals within 10 s must close the connection (got {refused})");
        assert_eq!(refused, 20, "every late refusal is answered, the last one before the close");
        assert_eq!(metric_settles(&m1, "natkit_signal_errors_total{code=\"not_in_room\"}", 20, SETTLE).await, 20);
        assert_eq!(
            metric_settles(&m1, "natkit_signal_connections_dropped_total{reason=\"abuse\"}", 1, SETTLE).await,
            1
        );

        // Others are unaffected: a new pair across the nodes still talks.
        let (mut c, mc) = join(&n1, "fresh").await;
        let (mut d, md) = join(&n2, "fresh").await;
        assert_eq!(recv(&mut c).await, ServerMessage::Joined { id: md.id.clone(), room: "fresh".into() });
        d.send(&ClientMessage::offer(mc.id.clone(), "v=0 d")).await.expect("send");
        assert_eq!(
            recv(&mut c).await,
            ClientMessage::offer(mc.id.clone(), "v=0 d").relayed(md.id.clone(), "fresh".into()).unwrap()
        );
    });
}

//! Cross-node publishes in batches: every relay (offer, answer, candidate)
//! for a member on another node, and every refusal sent back to a sender's
//! node, goes into one queue; one writer takes whatever has gathered (up to
//! [`MAX_BATCH`]) and sends it as one pipeline of plain PUBLISHes, one per
//! destination node (a JSON array of envelopes when there are several).
//! Under load that is one Redis round trip and one pub/sub message per node
//! per batch; no script runs per relay: the sender's node routes from its
//! copy of the room (`rooms::Rooms::route_of`) and the receiving node checks
//! membership (`rooms::Rooms::accepts`).
//!
//! The sender does not wait for the outcome: its connection reads its next
//! frame as soon as the relay is queued. A relay that cannot be published
//! (its node is not listening, Redis failed) comes back to the sender through
//! [`LocalDelivery::refuse`], as does one the receiving node refuses (its
//! refusal arrives on this node's channel); either counts as a strike there
//! exactly as a refusal decided at once does.
//!
//! Order: one batch is in flight at a time and envelopes keep queue order
//! within a node's array, so one sender's messages arrive in order. (Several
//! batches in flight on the multiplexed connection would keep that order
//! too, but not across a reconnect; and at the bench's load the writer is
//! not the limit: it batches what gathers.)

use std::sync::Weak;

use tokio::sync::mpsc;

use super::scripts::channel;
use super::{Backplane, StoreError};
use crate::signal::protocol::{ErrorCode, PeerId, Refusal};
use crate::signal::rooms::LocalDelivery;

/// Envelopes sent in one pipeline at most.
pub const MAX_BATCH: usize = 256;
/// Envelopes waiting for the writer before senders wait for room in the queue.
pub const QUEUE: usize = 4096;

/// One envelope waiting for the writer.
pub struct Publish {
    /// The node whose channel it goes to.
    pub node: String,
    /// The envelope, JSON.
    pub payload: String,
    /// For a relay, its sender (on this node) and target: the sender is told
    /// if it cannot be published. None for a refusal sent back (nobody to tell).
    pub relay: Option<(PeerId, PeerId)>,
}

/// What became of one batch's PUBLISH to one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Published {
    /// This many subscribers (nodes) got it (0: that node is not listening).
    To(i64),
    /// Redis is not reachable (the link is down or the call failed).
    Unreachable,
}

fn refusal(to: &PeerId, outcome: Published, b: &Backplane) -> Option<Refusal> {
    match outcome {
        Published::To(n) if n > 0 => None,
        Published::To(_) => Some(Refusal::new(
            ErrorCode::Internal,
            format!("the node of \"{to}\" is not listening on Redis right now (reconnecting?); try again"),
        )),
        Published::Unreachable => {
            Some(b.unreachable(&format!("a message to \"{to}\" (not on this node)"), StoreError::Down))
        }
    }
}

/// Groups a batch by destination node, in order of first appearance: per
/// node, the indexes of its envelopes (queue order) and the one message.
fn per_node(batch: &[Publish]) -> Vec<(&str, Vec<usize>, String)> {
    let mut out: Vec<(&str, Vec<usize>, String)> = Vec::new();
    for (i, p) in batch.iter().enumerate() {
        match out.iter_mut().find(|(n, _, _)| *n == p.node) {
            Some((_, idx, _)) => idx.push(i),
            None => out.push((&p.node, vec![i], String::new())),
        }
    }
    for (_, idx, msg) in &mut out {
        if let [one] = idx.as_slice() {
            msg.push_str(&batch[*one].payload);
            continue;
        }
        msg.reserve(idx.iter().map(|&i| batch[i].payload.len() + 1).sum::<usize>() + 1);
        msg.push('[');
        for (k, &i) in idx.iter().enumerate() {
            if k > 0 {
                msg.push(',');
            }
            msg.push_str(&batch[i].payload);
        }
        msg.push(']');
    }
    out
}

/// The writer: runs until the backplane (and so every sender) is gone.
/// Refusals go to the senders through `hub`.
pub async fn write_batches<H: LocalDelivery + 'static>(
    me: Weak<Backplane>,
    mut queue: mpsc::Receiver<Publish>,
    hub: Weak<H>,
) {
    let mut batch: Vec<Publish> = Vec::with_capacity(MAX_BATCH);
    loop {
        if queue.recv_many(&mut batch, MAX_BATCH).await == 0 {
            return;
        }
        let Some(b) = me.upgrade() else { return };
        let groups = per_node(&batch);
        let results = match b.link.get() {
            Err(_) => None,
            Ok(mut con) => {
                let mut pipe = redis::pipe();
                for (node, _, msg) in &groups {
                    pipe.cmd("PUBLISH").arg(channel(node)).arg(msg);
                }
                match pipe.query_async::<Vec<i64>>(&mut con).await {
                    Ok(v) if v.len() == groups.len() => Some(v),
                    Ok(v) => {
                        tracing::error!("redis: {} publishes got {} results; dropped", groups.len(), v.len());
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
        for (g, (_, idx, _)) in groups.iter().enumerate() {
            let outcome = results.as_ref().map_or(Published::Unreachable, |v| Published::To(v[g]));
            for &i in idx {
                let (Some((from, to)), Some(hub)) = (&batch[i].relay, hub.as_ref()) else { continue };
                if let Some(r) = refusal(to, outcome, &b) {
                    // The sender may have gone (its connection closed): nothing to tell.
                    hub.refuse(from, r);
                }
            }
        }
        drop(groups);
        batch.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn publish(node: &str, payload: &str) -> Publish {
        Publish { node: node.into(), payload: payload.into(), relay: None }
    }

    #[test]
    fn a_batch_is_one_message_per_node_in_queue_order() {
        let batch = [publish("n2", "{1}"), publish("n3", "{2}"), publish("n2", "{3}"), publish("n2", "{4}")];
        let groups = per_node(&batch);
        assert_eq!(
            groups,
            vec![("n2", vec![0, 2, 3], "[{1},{3},{4}]".to_string()), ("n3", vec![1], "{2}".to_string())]
        );
    }
}

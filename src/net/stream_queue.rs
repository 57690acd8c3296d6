//! The outgoing queue of one TCP or TLS client of the relay (RFC 8656 §12.5:
//! a stream carries the answers to the client's requests and the data its
//! peers send), bounded in bytes as well as in messages.
//!
//! Why bytes: a client that never reads lets its queue fill. Counted in
//! messages alone (1,024), a queue of Data indications around 64 KB
//! datagrams held 64 MB per connection, and one source address may hold a
//! hundred connections. Relayed data that does not fit is dropped (a
//! datagram relay may drop; the sender's congestion control copes), answers
//! to the client's own requests wait for room instead (the client that does
//! not read stalls only itself).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::mpsc;

/// Bytes a client's queue holds by default (`--stream-queue-bytes`).
pub const DEFAULT_QUEUE_BYTES: usize = 256 * 1024;
/// Messages a client's queue holds, whatever their size.
pub const MAX_FRAMES: usize = 1024;

/// The sending side, shared by the connection's reader and the relay's data path.
#[derive(Debug, Clone)]
pub struct QueueTx {
    tx: mpsc::Sender<Vec<u8>>,
    queued: Arc<AtomicUsize>,
    cap: usize,
}

/// The connection's writer side.
#[derive(Debug)]
pub struct QueueRx {
    rx: mpsc::Receiver<Vec<u8>>,
    queued: Arc<AtomicUsize>,
}

/// A queue of at most `cap` bytes (and [`MAX_FRAMES`] messages).
pub fn queue(cap: usize) -> (QueueTx, QueueRx) {
    let (tx, rx) = mpsc::channel(MAX_FRAMES);
    let queued = Arc::new(AtomicUsize::new(0));
    (QueueTx { tx, queued: queued.clone(), cap }, QueueRx { rx, queued })
}

impl QueueTx {
    /// Relayed data: queued when it fits, dropped otherwise (false). A frame
    /// always fits an empty queue, so a cap below the largest frame still
    /// passes every frame to a client that reads.
    pub fn try_push(&self, frame: &[u8]) -> bool {
        let len = frame.len();
        let before = self.queued.fetch_add(len, Ordering::Relaxed);
        if before > 0 && before + len > self.cap {
            self.queued.fetch_sub(len, Ordering::Relaxed);
            return false;
        }
        if self.tx.try_send(frame.to_vec()).is_err() {
            self.queued.fetch_sub(len, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// An answer to the client's own request: waits for room in messages and
    /// is never dropped (its bytes count against relayed data). Err when the
    /// connection's writer is gone.
    pub async fn send(&self, frame: Vec<u8>) -> Result<(), ()> {
        let len = frame.len();
        self.queued.fetch_add(len, Ordering::Relaxed);
        self.tx.send(frame).await.map_err(|_| {
            self.queued.fetch_sub(len, Ordering::Relaxed);
        })
    }
}

impl QueueRx {
    /// The next message to write; its bytes leave the count (the writer holds one at most).
    pub async fn recv(&mut self) -> Option<Vec<u8>> {
        let frame = self.rx.recv().await?;
        self.queued.fetch_sub(frame.len(), Ordering::Relaxed);
        Some(frame)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn relayed_data_past_the_byte_cap_is_dropped_until_the_writer_takes_some() {
        let (tx, mut rx) = queue(100);
        assert!(tx.try_push(&[1; 60]));
        assert!(tx.try_push(&[2; 40]), "exactly at the cap");
        assert!(!tx.try_push(&[3; 1]), "one byte past it");
        assert_eq!(rx.recv().await, Some(vec![1; 60]));
        assert!(tx.try_push(&[4; 60]), "room again once written");
        assert!(!tx.try_push(&[5; 1]));
    }

    #[tokio::test]
    async fn an_empty_queue_takes_a_frame_larger_than_the_cap_and_answers_are_never_dropped() {
        let (tx, mut rx) = queue(10);
        assert!(tx.try_push(&[1; 50]), "a client that reads gets every frame");
        tx.send(vec![2; 20]).await.expect("an answer waits for room, never dropped");
        assert!(!tx.try_push(&[3; 1]));
        assert_eq!(rx.recv().await.map(|f| f.len()), Some(50));
        assert_eq!(rx.recv().await.map(|f| f.len()), Some(20));
        assert!(tx.try_push(&[3; 1]));
    }

    #[tokio::test]
    async fn the_message_cap_holds_for_small_frames() {
        let (tx, _rx) = queue(usize::MAX);
        assert!((0..MAX_FRAMES).all(|_| tx.try_push(&[0; 4])));
        assert!(!tx.try_push(&[0; 4]));
    }
}

//! The write side of one `/ws` connection, shared with whoever delivers to it.
//!
//! A relayed message used to cross to the recipient's task over a channel,
//! wake it, and be framed and written there: a task wake-up (often on the
//! other worker thread) per message. Here the task that produced the message
//! (the sender's connection, or the Redis subscriber) frames it (RFC 6455
//! §5.2: FIN, opcode text, no mask from a server, §5.1) and writes it straight
//! into the recipient's socket. Only what the socket does not take at once
//! waits in `pending`; the owner's task writes that out when it is woken
//! (`wanted`), with the connection's send timeout.
//!
//! Order is kept: a frame is written only when nothing is pending, so frames
//! reach the client in the order they were pushed, each one whole.
//! The bound is the old outbox's, `cap` frames, and a bound in bytes: more
//! waiting than either means the client is not reading, and the connection is
//! closed. Frames alone let a member that stops reading hold 512 of the
//! largest messages (32 MiB at the default `--max-frame`, 128 MiB at 256 KiB)
//! for the whole send timeout, on every connection an attacker holds.
//!
//! The WebSocket layer (tungstenite, reading and answering control frames)
//! writes through the same path ([`SharedWriter`]), so its pongs and close
//! frames never interleave with a relayed frame.
//!
//! Refusals that are decided after the sender's frame was handled (a
//! cross-node relay Redis found no target for, `signal::redis::batch`) wait
//! here too ([`WsOut::refuse`]), for the owner to count as strikes and answer
//! exactly as it answers the refusals it decides itself.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;

use crate::signal::protocol::Refusal;

type Sink = Pin<Box<dyn AsyncWrite + Send>>;

/// What became of a pushed frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// In the socket (or its TLS session) now.
    Written,
    /// Waiting behind earlier bytes; the owner writes it out.
    Queued,
    /// Too many frames waiting: the client is not reading, the connection is being closed.
    Full,
    /// The connection is gone.
    Closed,
}

struct State {
    sink: Sink,
    pending: Vec<u8>,
    /// Frames (whole or in part) in `pending`.
    pending_frames: usize,
    /// A TLS session may hold written bytes until flushed.
    needs_flush: bool,
    closed: bool,
    /// Refusals decided after the fact, for the owner to count and answer.
    late: Vec<Refusal>,
}

/// The shared write side; see the module doc.
pub struct WsOut {
    state: Mutex<State>,
    /// Wakes the owner's task: something is pending, or the connection was closed.
    wanted: Notify,
    cap: usize,
    /// Bytes allowed to wait (beyond what the socket took).
    byte_cap: usize,
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A server-to-client text frame (RFC 6455 §5.2): FIN, opcode 1, unmasked, the shortest length form.
pub fn text_frame(payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(payload.len() + 10);
    f.push(0x81);
    match payload.len() {
        n if n < 126 => f.push(n as u8),
        n if n <= u16::MAX as usize => {
            f.push(126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(payload);
    f
}

/// The longest text frame header (RFC 6455 §5.2: 2 bytes, then a 64-bit length).
const MAX_HEADER: usize = 10;

/// A server-to-client text frame whose payload is serialised in place, with
/// room for the header kept in front: no second buffer and no copy of the
/// payload (as [`text_frame`] would make of a `String`).
pub struct JsonFrame {
    buf: Vec<u8>,
    start: usize,
}

impl JsonFrame {
    /// `value` as JSON text in a frame; what serde_json cannot write (never,
    /// for the protocol's messages: strings, numbers, maps with string keys) is `Err`.
    pub fn new<T: serde::Serialize>(value: &T) -> serde_json::Result<Self> {
        let mut buf = Vec::with_capacity(256);
        buf.extend_from_slice(&[0; MAX_HEADER]);
        serde_json::to_writer(&mut buf, value)?;
        let len = buf.len() - MAX_HEADER;
        let mut header = [0u8; MAX_HEADER];
        header[0] = 0x81;
        let h = match len {
            n if n < 126 => {
                header[1] = n as u8;
                2
            }
            n if n <= u16::MAX as usize => {
                header[1] = 126;
                header[2..4].copy_from_slice(&(n as u16).to_be_bytes());
                4
            }
            n => {
                header[1] = 127;
                header[2..10].copy_from_slice(&(n as u64).to_be_bytes());
                10
            }
        };
        let start = MAX_HEADER - h;
        buf[start..MAX_HEADER].copy_from_slice(&header[..h]);
        Ok(JsonFrame { buf, start })
    }

    /// The whole frame, header and payload.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[self.start..]
    }
}

impl WsOut {
    /// `cap` frames or `byte_cap` bytes may wait before the client counts as
    /// not reading (a frame always may when nothing waits).
    pub fn new(sink: impl AsyncWrite + Send + 'static, cap: usize, byte_cap: usize) -> Arc<Self> {
        Arc::new(WsOut {
            state: Mutex::new(State {
                sink: Box::pin(sink),
                pending: Vec::new(),
                pending_frames: 0,
                needs_flush: false,
                closed: false,
                late: Vec::new(),
            }),
            wanted: Notify::new(),
            cap,
            byte_cap,
        })
    }

    /// Writes one whole frame now if the socket takes it, else queues it for the owner.
    pub fn push(&self, frame: &[u8]) -> Pushed {
        let mut s = lock(&self.state);
        if s.closed {
            return Pushed::Closed;
        }
        if !s.pending.is_empty() {
            if s.pending_frames >= self.cap || s.pending.len() + frame.len() > self.byte_cap {
                s.closed = true;
                drop(s);
                self.wanted.notify_one();
                return Pushed::Full;
            }
            s.pending.extend_from_slice(frame);
            s.pending_frames += 1;
            return Pushed::Queued;
        }
        // Nobody waits on this attempt: a socket that would block is the owner's to wait for.
        let mut cx = Context::from_waker(Waker::noop());
        let mut at = 0;
        while at < frame.len() {
            match s.sink.as_mut().poll_write(&mut cx, &frame[at..]) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => {
                    s.closed = true;
                    drop(s);
                    self.wanted.notify_one();
                    return Pushed::Closed;
                }
                Poll::Ready(Ok(n)) => at += n,
                Poll::Pending => break,
            }
        }
        let queued = at < frame.len();
        if queued {
            s.pending.extend_from_slice(&frame[at..]);
            s.pending_frames = 1;
        } else {
            match s.sink.as_mut().poll_flush(&mut cx) {
                Poll::Ready(Ok(())) => return Pushed::Written,
                Poll::Ready(Err(_)) => {
                    s.closed = true;
                    drop(s);
                    self.wanted.notify_one();
                    return Pushed::Closed;
                }
                Poll::Pending => s.needs_flush = true,
            }
        }
        drop(s);
        self.wanted.notify_one();
        if queued { Pushed::Queued } else { Pushed::Written }
    }

    /// Hands the owner a refusal of something its client sent earlier. False
    /// when the connection is closed, or when `cap` refusals already wait (the
    /// owner counts each as a strike, so it closes the connection long before).
    pub fn refuse(&self, r: Refusal) -> bool {
        let mut s = lock(&self.state);
        if s.closed || s.late.len() >= self.cap {
            return false;
        }
        s.late.push(r);
        drop(s);
        self.wanted.notify_one();
        true
    }

    /// The refusals waiting for the owner (see [`WsOut::refuse`]).
    pub fn take_refusals(&self) -> Vec<Refusal> {
        std::mem::take(&mut lock(&self.state).late)
    }

    /// Completes when the owner has something to do (call [`WsOut::poll_drain`] then).
    pub async fn wanted(&self) {
        self.wanted.notified().await
    }

    /// Writes out what is pending. Ready(Ok) when nothing is left, Ready(Err)
    /// when the connection is closed or was found not reading.
    pub fn poll_drain(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut s = lock(&self.state);
        if s.closed {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        while !s.pending.is_empty() {
            let st = &mut *s;
            match st.sink.as_mut().poll_write(cx, &st.pending) {
                Poll::Ready(Ok(0)) => {
                    s.closed = true;
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                Poll::Ready(Ok(n)) => {
                    st.pending.drain(..n);
                }
                Poll::Ready(Err(e)) => {
                    s.closed = true;
                    return Poll::Ready(Err(e));
                }
                Poll::Pending => return Poll::Pending,
            }
        }
        s.pending_frames = 0;
        s.needs_flush = false;
        match s.sink.as_mut().poll_flush(cx) {
            Poll::Ready(Err(e)) => {
                s.closed = true;
                Poll::Ready(Err(e))
            }
            Poll::Ready(Ok(())) => Poll::Ready(Ok(())),
            Poll::Pending => {
                s.needs_flush = true;
                Poll::Pending
            }
        }
    }

    /// Closes the write side (the owner is done): later pushes are refused.
    pub fn close(&self) {
        lock(&self.state).closed = true;
    }
}

/// The write half the WebSocket layer gets: every write lands whole in the
/// shared path (so control frames keep their place among relayed frames); a
/// flush waits until everything pending is out.
pub struct SharedWriter(pub Arc<WsOut>);

impl AsyncWrite for SharedWriter {
    fn poll_write(self: Pin<&mut Self>, _cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        // Whole frames: tungstenite hands over its out-buffer, and it is taken all at once
        // (written now if the socket takes it, else queued behind what is pending).
        match self.0.push(buf) {
            Pushed::Written | Pushed::Queued => Poll::Ready(Ok(buf.len())),
            Pushed::Full | Pushed::Closed => Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.0.poll_drain(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Poll::Ready(Err(e)) = self.0.poll_drain(cx) {
            return Poll::Ready(Err(e));
        }
        let mut s = lock(&self.0.state);
        if !s.pending.is_empty() {
            return Poll::Pending;
        }
        s.sink.as_mut().poll_shutdown(cx)
    }
}

/// The connection as the WebSocket layer sees it: reads from the socket's
/// read half, writes into the shared path.
pub struct Duplex<R> {
    pub read: R,
    pub write: SharedWriter,
}

impl<R: AsyncRead + Unpin> AsyncRead for Duplex<R> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.read).poll_read(cx, buf)
    }
}

impl<R: Unpin> AsyncWrite for Duplex<R> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.write).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.write).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.write).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;

    fn tungstenite_frame(text: &str) -> Vec<u8> {
        let mut out = Vec::new();
        Frame::message(
            text.as_bytes().to_vec(),
            tokio_tungstenite::tungstenite::protocol::frame::coding::OpCode::Data(
                tokio_tungstenite::tungstenite::protocol::frame::coding::Data::Text,
            ),
            true,
        )
        .format(&mut out)
        .unwrap();
        out
    }

    #[test]
    fn text_frames_are_byte_for_byte_what_tungstenite_writes() {
        for len in [0, 1, 125, 126, 127, 65535, 65536, 100_000] {
            let text = "x".repeat(len);
            assert_eq!(text_frame(text.as_bytes()), tungstenite_frame(&text), "length {len}");
        }
    }

    #[test]
    fn frames_serialised_in_place_are_what_text_frame_makes_of_the_same_json() {
        for len in [0, 100, 125, 126, 65535, 65536, 100_000] {
            let value = "x".repeat(len);
            let json = serde_json::to_string(&value).unwrap();
            assert_eq!(JsonFrame::new(&value).unwrap().as_bytes(), text_frame(json.as_bytes()), "length {len}");
        }
    }

    #[tokio::test]
    async fn frames_that_do_not_fit_wait_in_order_and_a_reader_that_stops_is_cut_off() {
        // A pipe of 64 bytes: the first frame fits, the next ones wait.
        let (a, mut b) = tokio::io::duplex(64);
        let out = WsOut::new(a, 3, usize::MAX);
        let frames: Vec<Vec<u8>> = (0..4).map(|i| text_frame(format!("{i}{}", "y".repeat(40)).as_bytes())).collect();
        assert_eq!(out.push(&frames[0]), Pushed::Written);
        assert_eq!(out.push(&frames[1]), Pushed::Queued);
        assert_eq!(out.push(&frames[2]), Pushed::Queued);
        assert_eq!(out.push(&frames[3]), Pushed::Queued);
        // The reader takes everything while the owner drains: order and bytes intact.
        let want: Vec<u8> = frames.concat();
        let reader = tokio::spawn(async move {
            let mut got = vec![0u8; want.len()];
            b.read_exact(&mut got).await.unwrap();
            assert_eq!(got, want);
            b
        });
        std::future::poll_fn(|cx| out.poll_drain(cx)).await.unwrap();
        let _b = reader.await.unwrap();
        // Now nobody reads: the socket fills, then `cap` frames wait, then the next one is refused.
        let mut results = Vec::new();
        for _ in 0..10 {
            results.push(out.push(&frames[0]));
        }
        assert_eq!(results.iter().filter(|r| **r == Pushed::Full).count(), 1, "{results:?}");
        assert_eq!(results.last(), Some(&Pushed::Closed));
        assert!(std::future::poll_fn(|cx| out.poll_drain(cx)).await.is_err());
    }

    #[tokio::test]
    async fn a_reader_that_stops_is_cut_off_at_the_byte_bound_before_the_frame_bound() {
        let (a, _b) = tokio::io::duplex(64);
        // 100 frames may wait, but only 300 bytes: the fourth 100-byte frame behind the first is refused.
        let out = WsOut::new(a, 100, 300);
        let frame = text_frame(&[b'z'; 98]);
        assert_eq!(frame.len(), 100);
        assert_eq!(out.push(&frame), Pushed::Queued, "36 bytes wait behind the 64 the pipe took");
        assert_eq!(out.push(&frame), Pushed::Queued);
        assert_eq!(out.push(&frame), Pushed::Queued);
        assert_eq!(out.push(&frame), Pushed::Full, "236 + 100 bytes is past the bound");
        assert_eq!(out.push(&frame), Pushed::Closed);
    }

    #[tokio::test]
    async fn a_closed_peer_is_reported_closed() {
        let (a, b) = tokio::io::duplex(64);
        drop(b);
        let out = WsOut::new(a, 8, usize::MAX);
        assert_eq!(out.push(&text_frame(b"hello")), Pushed::Closed);
        assert_eq!(out.push(&text_frame(b"again")), Pushed::Closed);
    }
}

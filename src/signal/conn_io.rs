//! One accepted TCP connection of the signaling server, as the HTTP layer
//! and (after an upgrade) the WebSocket layer see it: the socket, the
//! connection slot it was given at accept ([`ConnPermit`], freed when the
//! connection ends, whichever layer owns it by then), and an idle timeout on
//! reads.
//!
//! The idle timeout closes a connection from which nothing has arrived for
//! `idle` (a stalled request body, a half-open socket): the read fails with
//! `TimedOut` and hyper or the WebSocket layer ends the connection. Live
//! WebSocket clients always answer the server's pings (RFC 6455 §5.5.2), so
//! they are never idle for longer than the ping interval.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use crate::net::conn_limit::ConnPermit;

/// A connection holding its slot, with a read idle timeout.
pub struct ConnIo<T> {
    inner: T,
    _permit: ConnPermit,
    idle: Duration,
    last_read: Instant,
    /// Armed lazily and only moved when it fires early: a read does not touch the timer wheel.
    timer: Option<Pin<Box<Sleep>>>,
}

impl<T> ConnIo<T> {
    pub fn new(inner: T, permit: ConnPermit, idle: Duration) -> Self {
        ConnIo { inner, _permit: permit, idle, last_read: Instant::now(), timer: None }
    }

    pub fn get_ref(&self) -> &T {
        &self.inner
    }

    /// Ready(Err) once nothing was read for `idle`.
    fn poll_idle(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        loop {
            let deadline = self.last_read + self.idle;
            let timer = self.timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
            match timer.as_mut().poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(()) if Instant::now() >= deadline => {
                    return Poll::Ready(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("nothing received for {} s (idle timeout)", self.idle.as_secs()),
                    ));
                }
                // Something was read since it was armed: wait for the new deadline.
                Poll::Ready(()) => timer.as_mut().reset(deadline),
            }
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for ConnIo<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    self.last_read = Instant::now();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => match self.poll_idle(cx) {
                Poll::Ready(e) => Poll::Ready(Err(e)),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for ConnIo<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::conn_limit::ConnLimiter;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn a_silent_peer_times_out_and_a_talking_one_does_not_and_the_slot_is_freed() {
        let limiter = ConnLimiter::new(4, 4);
        let (a, mut b) = tokio::io::duplex(64);
        let permit = limiter.try_acquire("203.0.113.1".parse().unwrap()).unwrap();
        let mut io = ConnIo::new(a, permit, Duration::from_secs(1));
        let mut buf = [0u8; 8];
        // A byte every 20 ms for twice the idle limit keeps it open.
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(20)).await;
            b.write_all(b"x").await.unwrap();
            assert_eq!(io.read(&mut buf).await.unwrap(), 1);
        }
        // Then silence: the read fails with TimedOut (bounded wait).
        let err = tokio::time::timeout(Duration::from_secs(30), io.read(&mut buf)).await.unwrap().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(limiter.open(), 1);
        drop(io);
        assert_eq!(limiter.open(), 0);
    }
}

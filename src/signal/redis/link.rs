//! One Redis command connection that can be lost and got back: requests take
//! the current connection or fail at once with [`StoreError::Down`] (never
//! wait for a reconnect); a connection-level error marks the link broken and
//! wakes the node's supervisor, which reconnects with backoff
//! ([`Backoff`]) and installs the new connection only after the node has
//! re-asserted its presence and members (`super::Backplane`).
//!
//! Why not the `redis` crate's `ConnectionManager`: it reconnects on its own,
//! so the node could not re-assert its state *before* the first request on the
//! new connection, and a join could see a room that still lacks this node's
//! members.

use std::sync::Mutex;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use tokio::sync::Notify;

/// How long one connection attempt may take (an unreachable host, a stalled server).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long one command may wait for its answer before the link counts as broken.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a room-store operation did not happen.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No connection right now (Redis away, or back but this node not re-asserted yet).
    #[error("not connected")]
    Down,
    #[error("{0}")]
    Redis(#[from] redis::RedisError),
}

/// A connection-level failure (the link must be replaced), as opposed to an
/// error answer from a working server.
pub fn breaks_link(e: &redis::RedisError) -> bool {
    e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_unrecoverable_error()
}

pub struct Link {
    client: redis::Client,
    con: Mutex<Option<MultiplexedConnection>>,
    /// Wakes the supervisor when a request finds the link broken.
    pub broken: Notify,
}

impl Link {
    pub fn new(client: redis::Client) -> Self {
        Link { client, con: Mutex::new(None), broken: Notify::new() }
    }

    pub fn client(&self) -> &redis::Client {
        &self.client
    }

    /// Opens a new command connection (not installed: see [`Link::install`]).
    pub async fn connect(&self) -> redis::RedisResult<MultiplexedConnection> {
        let cfg = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(CONNECT_TIMEOUT)
            .set_response_timeout(RESPONSE_TIMEOUT);
        self.client.get_multiplexed_async_connection_with_config(&cfg).await
    }

    /// Makes `con` the connection requests use.
    pub fn install(&self, con: MultiplexedConnection) {
        *self.con.lock().unwrap_or_else(|p| p.into_inner()) = Some(con);
    }

    pub fn is_up(&self) -> bool {
        self.con.lock().unwrap_or_else(|p| p.into_inner()).is_some()
    }

    /// The current connection, or `Down` at once.
    pub fn get(&self) -> Result<MultiplexedConnection, StoreError> {
        self.con.lock().unwrap_or_else(|p| p.into_inner()).clone().ok_or(StoreError::Down)
    }

    /// Records a failed request: a connection-level error takes the link down
    /// (once; later requests fail fast) and wakes the supervisor.
    pub fn failed(&self, e: redis::RedisError) -> StoreError {
        if breaks_link(&e) {
            let was_up = self.con.lock().unwrap_or_else(|p| p.into_inner()).take().is_some();
            if was_up {
                tracing::warn!("redis: connection lost ({e}); reconnecting");
            }
            self.broken.notify_one();
        }
        StoreError::Redis(e)
    }

    /// Takes the link down (the supervisor saw it fail).
    pub fn take_down(&self) {
        self.con.lock().unwrap_or_else(|p| p.into_inner()).take();
    }
}

/// Reconnect delays: 50 ms doubling to 500 ms, so a Redis that comes back is
/// noticed within half a second, and a Redis that stays away costs two
/// connection attempts a second.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
}

impl Backoff {
    pub const FIRST: Duration = Duration::from_millis(50);
    pub const MAX: Duration = Duration::from_millis(500);

    pub fn new() -> Self {
        Backoff { next: Self::FIRST }
    }

    /// The delay before the next attempt; each call doubles the following one up to `MAX`.
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        d
    }

    pub fn reset(&mut self) {
        self.next = Self::FIRST;
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_its_cap_and_resets() {
        let mut b = Backoff::new();
        let delays: Vec<u64> = (0..6).map(|_| b.next_delay().as_millis() as u64).collect();
        assert_eq!(delays, vec![50, 100, 200, 400, 500, 500]);
        b.reset();
        assert_eq!(b.next_delay(), Backoff::FIRST);
    }
}

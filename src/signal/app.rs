//! What every connection of the signaling server shares, whichever front
//! door it came through (`/ws` in `server`, socket.io in `socketio`): the hub
//! with its rooms, the limits, the ICE servers to hand out and the Origin
//! policy, and the socket.io session caps. Its own module so that both front
//! doors depend on it and not on each other.

use std::sync::Arc;
use std::time::Duration;

use crate::net::conn_limit::ConnLimiter;
use crate::signal::hub::Hub;
use crate::signal::ice::IceConfig;
use crate::signal::limits::Limits;
use crate::signal::origin::OriginPolicy;

/// Shared by every connection.
pub struct App {
    pub hub: Arc<Hub>,
    pub limits: Limits,
    pub ice: IceConfig,
    pub ping_interval: Duration,
    pub origins: OriginPolicy,
    /// Served over TLS: the page's own origin is https.
    pub tls: bool,
    /// socket.io sessions open, per address and in total (`--max-conns-per-ip`,
    /// `--max-conns`): a polling session outlives its TCP connections, so the
    /// caps taken at accept do not hold it (`socketio::session_slot`).
    pub sessions: ConnLimiter,
}

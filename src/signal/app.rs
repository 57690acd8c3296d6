//! What every connection of the signaling server shares, whichever front
//! door it came through (`/ws` in `server`, socket.io in `socketio`): the hub
//! with its rooms, the limits, the ICE servers to hand out and the Origin
//! policy. Its own module so that both front doors depend on it and not on
//! each other.

use std::sync::Arc;
use std::time::Duration;

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
}

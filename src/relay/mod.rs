//! The relay's edges that are neither protocol nor sockets, kept out of the
//! sans-IO core in `turn::server` (which only takes bytes and `now`):
//! reading a coturn `turnserver.conf` into natkit's settings (used by the
//! command when it builds its arguments) and rendering the core's and the
//! driver's counters as Prometheus text (used by the driver's `--metrics`
//! endpoint). Neither touches a socket, so neither belongs in `net/`, and
//! neither is TURN, so neither belongs in `turn/`.

pub mod coturn_conf;
pub mod metrics_text;

//! The relay's edges that are neither protocol nor sockets, kept out of the
//! sans-IO core in `turn::server` (which only takes bytes and `now`):
//! reading a coturn `turnserver.conf` into natkit's settings (used by the
//! command when it builds its arguments) and rendering the core's and the
//! driver's counters as Prometheus text (used by the driver's `--metrics`
//! endpoint), and the log file coturn's `log-file` names, reopened on SIGHUP
//! (`log_file`), and the Redis client of the shared user database
//! (`userdb_redis`, the driver's side of the core's lookups). None but the
//! last touches a socket, so none belongs in `net/`, and
//! none is TURN, so none belongs in `turn/`.

pub mod coturn_conf;
pub mod log_file;
pub mod metrics_text;
pub mod userdb_redis;

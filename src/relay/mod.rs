//! The relay's edges that are not the protocol, kept out of the sans-IO
//! core in `turn::server` (which only takes bytes and `now`): reading a
//! coturn `turnserver.conf` into natkit's settings (`coturn_conf`, used by
//! the command when it builds its arguments), rendering the core's and the
//! driver's counters as Prometheus text (`metrics_text`, for the driver's
//! `--metrics` endpoint), the log file coturn's `log-file` names, reopened
//! on SIGHUP (`log_file`), and the client of coturn's Redis user database
//! (`userdb_redis`, which carries out the core's lookups for the driver).
//! None is TURN, so none belongs in `turn/`.

pub mod coturn_conf;
pub mod log_file;
pub mod metrics_text;
pub mod userdb_redis;

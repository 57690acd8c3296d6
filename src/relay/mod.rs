//! The relay's edges that are not the protocol, kept out of the sans-IO
//! core in `turn::server` (which only takes bytes and `now`):
//! - `options` turns flags and a coturn `turnserver.conf` (`coturn_conf`)
//!   into the core's and the driver's validated settings; `listeners` is the
//!   part that says where it listens and relays from;
//! - `serve` is the start-up sequence (descriptor limit and `descriptors`,
//!   signals, bind, pidfile, start line) around the driver's run;
//! - `report` is the summary printed when it stops;
//! - `metrics_text` renders the core's and the driver's counters as
//!   Prometheus text (the driver's `--metrics` endpoint);
//! - `log_file` is coturn's `log-file`, reopened on SIGHUP;
//! - `userdb_redis` is the client of coturn's Redis user database, which
//!   carries out the core's lookups for the driver.
//!
//! None is TURN, so none belongs in `turn/`.

pub mod coturn_conf;
pub mod descriptors;
pub mod listeners;
pub mod log_file;
pub mod metrics_text;
pub mod options;
pub mod report;
pub mod serve;
pub mod userdb_redis;

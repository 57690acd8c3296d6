//! natkit: shows, layer by layer, how two hosts behind NATs reach each other.
//!
//! The crate is split the way the data flows:
//! - protocol cores (`stun`, `nat`, `turn`, `ice`, `signal`) are sans-IO state machines:
//!   bytes and `now` in, bytes to send and the next wake-up out;
//! - `net` holds the thin drivers that own sockets and timers;
//! - `relay` holds the relay's coturn config reader and Prometheus text, outside its core;
//! - `commands` wires a core to a driver and builds a typed report;
//! - `output` renders any report as a table or as JSON.

pub mod call;
pub mod cli;
pub mod commands;
pub mod error;
pub mod ice;
pub mod media;
pub mod nat;
pub mod net;
pub mod output;
pub mod portmap;
pub mod punch;
pub mod relay;
pub mod signal;
pub mod stun;
pub mod turn;

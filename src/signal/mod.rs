//! Signaling (`natkit signal`): the `/ws` protocol types, a client for it,
//! the room core and its backplanes (memory, Redis), and the server that serves the video-chat page.

pub mod app;
pub mod client;
pub mod conn_io;
pub mod hub;
pub mod ice;
pub mod limits;
pub mod memory;
pub mod metrics;
pub mod origin;
pub mod protocol;
pub mod redis;
pub mod rooms;
pub mod server;
pub mod socketio;
pub mod stun_udp;
pub mod ws_out;

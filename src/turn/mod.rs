//! TURN (RFC 8656): ChannelData framing and the client core, plus credentials
//! shared by the server (`relay`), the clients (`turn-alloc`, `punch`,
//! `call`) and the signaling server (`--turn-secret`); `audit` is `turn-alloc`'s
//! scenario, quality figures and blackbox probe.

pub mod audit;
pub mod channel_data;
pub mod client;
pub mod credentials;
pub mod rfc6062;
pub mod server;

//! TURN (RFC 8656): credentials shared by the server (`relay`), the client
//! (`turn-alloc`, `punch`, `call`) and the signaling server (`--turn-secret`).

pub mod credentials;

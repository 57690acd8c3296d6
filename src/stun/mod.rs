//! STUN (RFC 8489): message glue over stun-rs and the client transaction core.

pub mod message;
pub mod transaction;

//! STUN (RFC 8489): message glue over stun-rs and the client transaction core; the probes of
//! `stun-probe`, what their answers mean together (`summary`), and its report.

pub mod error_code;
pub mod message;
pub mod probe;
pub mod report;
pub mod summary;
pub mod transaction;

//! ICE (RFC 8445) pieces natkit owns. The check list itself (pairs,
//! priorities, pacing, triggered checks, nomination, peer-reflexive
//! candidates) is str0m's sans-IO agent, the `is` crate; natkit gathers the
//! candidates, describes them to the peer, and records what the checks did.

pub mod candidate_type;
pub mod checks;
pub mod description;
pub mod gather;
pub mod role;
pub mod server_candidates;
pub mod server_list;

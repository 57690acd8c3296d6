//! `natkit call`: a WebRTC peer in the terminal. The session core ([`peer`]) wraps str0m's
//! sans-IO `Rtc` with our media sources and sinks and counts what happened; [`driver`] owns
//! the UDP socket, the signaling connection and the clock; [`report`] is the JSON contract.

pub mod driver;
pub mod peer;
pub mod report;
pub mod sink;
pub mod source;

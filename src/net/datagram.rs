//! The contract between the multi-socket sans-IO cores and the one UDP driver that runs them
//! ([`crate::net::udp::drive`]): the RFC 5780 discovery, the §4.5 lifetime search, the
//! birthday method and STUN transaction sets all speak it. Like quinn-proto's `Transmit` and str0m's `Output`: a core
//! says what to send from which of its sockets and when to wake; the driver owns the sockets,
//! the clock and the kernel's ICMP reports, and feeds them back in.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::time::Instant;

/// A datagram a core wants sent: from its socket `socket` (an index into the driver's sockets)
/// to `destination`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    pub socket: usize,
    pub destination: SocketAddr,
    pub payload: Vec<u8>,
}

/// An ICMP error the kernel reported for one destination (IP_RECVERR), or a send that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unreachable {
    Port,
    Host,
    Network,
    Other(i32),
}

impl fmt::Display for Unreachable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unreachable::Port => f.write_str("port unreachable (ICMP)"),
            Unreachable::Host => f.write_str("host unreachable (ICMP)"),
            Unreachable::Network => f.write_str("network unreachable"),
            Unreachable::Other(e) => write!(f, "{}", io::Error::from_raw_os_error(*e)),
        }
    }
}

/// In JSON, the sentence (`"error": "port unreachable (ICMP)"`).
impl serde::Serialize for Unreachable {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl Unreachable {
    /// The errno an ICMP error or a failed send carries.
    pub fn from_errno(e: i32) -> Self {
        match e {
            libc::ECONNREFUSED => Unreachable::Port,
            libc::EHOSTUNREACH => Unreachable::Host,
            libc::ENETUNREACH => Unreachable::Network,
            other => Unreachable::Other(other),
        }
    }
}

/// A datagram another reader of a shared socket set aside for a core (punch's mux reads the
/// session's one socket and hands the birthday method its probes): see `udp::drive_diverted`.
pub trait Diverted {
    /// Where it came from.
    fn source(&self) -> SocketAddr;
    fn payload(&self) -> &[u8];
}

/// A sans-IO core that talks over several UDP sockets at once. Responses are told apart by the
/// socket they arrive on, which is what NAT behaviour tests need. Every call takes `now`; the
/// core never reads a clock of its own, so its tests run on a fake one.
pub trait MultiSocketCore {
    /// The next datagram due now.
    fn poll_transmit(&mut self, now: Instant) -> Option<Transmit>;
    /// When to call [`handle_timeout`](Self::handle_timeout) next.
    fn poll_timeout(&self) -> Option<Instant>;
    fn handle_timeout(&mut self, now: Instant);
    /// A datagram arrived on socket `socket` from `from`.
    fn handle_input(&mut self, socket: usize, from: SocketAddr, bytes: &[u8], now: Instant);
    /// The kernel reported an ICMP error (or a send failed) for `destination`.
    fn handle_unreachable(&mut self, socket: usize, destination: SocketAddr, why: Unreachable, now: Instant);
    /// Sending the datagram just polled from socket `socket` to `destination` failed locally
    /// (not an ICMP report). By default that counts as unreachable, with the send's errno.
    fn handle_send_failed(&mut self, socket: usize, destination: SocketAddr, error: &io::Error, now: Instant) {
        let why = Unreachable::Other(error.raw_os_error().unwrap_or(libc::EIO));
        self.handle_unreachable(socket, destination, why, now)
    }
    fn is_done(&self) -> bool;
}

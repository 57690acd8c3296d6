//! The sentences of `turn-alloc`: what a failed step means and what to check, per
//! RFC 8489 §14.8 / RFC 8656 §18 error code, I/O error or lost datagram. Kept apart
//! from the scenario so the step sequencing reads as a sequence, and so every
//! sentence a user sees is in one place.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use super::report::StepName;
use crate::net::address_class::AddressClass;
use crate::net::tls::CertVerdict;
use crate::net::transport::Transport;
use crate::stun::error_code::ErrorCode;
use crate::turn::client::{DataPath, Failure, Success};

/// How the run presents itself to the server: what a 401 can be blamed on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CredentialSource {
    None,
    /// `--user` and `--password`.
    LongTerm,
    /// `--secret`: TURN REST credentials made from a shared secret.
    RestSecret,
}

/// What the sentences need to know about the run.
#[derive(Debug, Clone)]
pub struct Context<'a> {
    pub transport: Transport,
    /// The server's address, once resolved.
    pub address: Option<SocketAddr>,
    /// The port we talk to (the address's, or the one the spec implies).
    pub port: u16,
    pub credentials: &'a CredentialSource,
    pub expected_realm: Option<&'a str>,
    pub timeout: Duration,
    /// `--peer`: an external UDP echo peer stands in for the second allocation.
    pub external_peer: bool,
}

impl Context<'_> {
    /// An I/O error on the connection to the server.
    pub fn io_error(&self, e: &io::Error) -> String {
        let addr = self.address.map(|a| a.to_string()).unwrap_or_default();
        match e.kind() {
            io::ErrorKind::ConnectionRefused => format!(
                "port unreachable (ICMP): nothing listens on {addr} over {}; check the server's port",
                self.transport.name()
            ),
            io::ErrorKind::UnexpectedEof => format!("{addr} closed the {} connection", self.transport.name()),
            _ => format!("{} I/O with {addr} failed: {e}", self.transport.name()),
        }
    }

    /// A sentence for a failed request: what happened and what to check.
    pub fn failure(&self, step: StepName, f: &Failure) -> String {
        match f {
            Failure::TimedOut { sends, elapsed } => {
                let mut s = format!(
                    "no response over {} after {sends} tries in {:.1} s",
                    self.transport.name(),
                    elapsed.as_secs_f64()
                );
                if step == StepName::Binding && self.transport == Transport::Udp {
                    s.push_str(&format!(": is port {}/udp open? (try --transport tcp)", self.port));
                }
                s
            }
            Failure::Error { code: ErrorCode::Unauthenticated, reason }
                if step != StepName::AllocateUnauthenticated =>
            {
                match (self.credentials, self.expected_realm) {
                    (CredentialSource::RestSecret, _) => format!(
                        "401 {reason} after sending REST credentials: the shared secret differs from the server's, or the clocks disagree"
                    ),
                    (_, Some(r)) => {
                        format!("401 {reason} after sending credentials: wrong password, or the realm is not '{r}'")
                    }
                    (_, None) => format!("401 {reason} after sending credentials: wrong user or password"),
                }
            }
            Failure::Error { code: ErrorCode::AllocationQuotaReached, reason } => {
                format!("refused with 486 {reason}: allocation quota reached for this user")
            }
            Failure::Error { code: ErrorCode::InsufficientCapacity, reason } => {
                format!("refused with 508 {reason}: the server has no relay ports left")
            }
            Failure::Error { code: ErrorCode::AllocationMismatch, reason } => {
                format!("437 {reason}: an allocation already exists for this 5-tuple, or none does")
            }
            Failure::Error { code: ErrorCode::AddressFamilyNotSupported, reason } => {
                format!("440 {reason}: the server cannot relay this address family")
            }
            Failure::Error { code: ErrorCode::UnsupportedTransportProtocol, reason } => {
                format!("442 {reason}: the server does not relay UDP")
            }
            Failure::Error { code: ErrorCode::Forbidden, reason } => {
                format!("403 {reason}: refused by the server's policy")
            }
            other => other.to_string(),
        }
    }

    /// A failed request about `peer` (CreatePermission, ChannelBind).
    pub fn peer_failure(&self, step: StepName, f: &Failure, peer: SocketAddr) -> String {
        match f {
            Failure::Error { code: ErrorCode::Forbidden, reason } => {
                let class = AddressClass::of_canonical(peer.ip());
                let kind = if class.is_public() { "a refused" } else { class.with_article() };
                format!(
                    "403 {reason}: the server's policy refuses peer {peer} ({kind} address){}",
                    if class == AddressClass::Loopback {
                        "; that is the safe default — coturn relays to loopback only with --allow-loopback-peers, natkit relay with --allow-loopback-peers"
                    } else {
                        ""
                    }
                )
            }
            Failure::Error { code: ErrorCode::PeerAddressFamilyMismatch, reason } => {
                format!("443 {reason}: peer {peer} is not of the relayed address's family")
            }
            other => self.failure(step, other),
        }
    }

    /// Why data did not make the round trip through the relay.
    pub fn round_trip(&self, e: &RoundTripError, channel: Option<u16>) -> String {
        match e {
            RoundTripError::Io(e) => self.io_error(e),
            RoundTripError::PeerGotWrongSource { from, relayed } => {
                format!("the peer got the data from {from}, not from our relayed address {relayed}")
            }
            RoundTripError::PeerGotWrongPath(path) => {
                format!("the peer got the data as {path:?}, expected {}", path_name(channel))
            }
            RoundTripError::PeerGotOther { from } => format!("the peer got unexpected data from {from}"),
            RoundTripError::NotAtPeer => format!(
                "{} from us did not reach the peer allocation within {:.1} s: the server did not relay it toward the peer",
                sent_name(channel),
                self.timeout.as_secs_f64()
            ),
            RoundTripError::Unexpected { from, len, path } => {
                format!("unexpected data from {from} ({len} bytes, {path:?})")
            }
            RoundTripError::NothingBack => format!(
                "no data came back through the relay within {:.1} s (expected as {}){}",
                self.timeout.as_secs_f64(),
                path_name(channel),
                if self.external_peer { ": does the --peer echo UDP?" } else { "" }
            ),
        }
    }
}

/// What went wrong with data sent through the relay and back.
#[derive(Debug)]
pub enum RoundTripError {
    Io(io::Error),
    /// Our second allocation got the data, but not from our relayed address.
    PeerGotWrongSource {
        from: SocketAddr,
        relayed: SocketAddr,
    },
    /// Our second allocation got the data on the other data path.
    PeerGotWrongPath(DataPath),
    /// Our second allocation got something else.
    PeerGotOther {
        from: SocketAddr,
    },
    /// Our second allocation got nothing in time.
    NotAtPeer,
    /// Something other than the echo came back.
    Unexpected {
        from: SocketAddr,
        len: usize,
        path: DataPath,
    },
    NothingBack,
}

/// How we send on that path: a Send indication (RFC 8656 §11.2) or ChannelData (§12.4).
fn sent_name(channel: Option<u16>) -> String {
    match channel {
        Some(c) => format!("ChannelData on channel {c:#06x}"),
        None => "a Send indication".into(),
    }
}

fn path_name(channel: Option<u16>) -> &'static str {
    if channel.is_some() { "ChannelData" } else { "a Data indication" }
}

/// The allocate step's detail.
pub fn allocation(s: &Success, auth_retries: u8) -> String {
    format!(
        "relayed {}, mapped {}, lifetime {} s{}",
        crate::output::cell(&s.relayed),
        crate::output::cell(&s.mapped),
        s.lifetime.map(|l| l.to_string()).unwrap_or_else(|| "?".into()),
        if auth_retries > 0 { " (after the 401 challenge)" } else { "" }
    )
}

/// The connect step's detail and, for a certificate accepted only with `--insecure`, a warning.
pub fn connection(
    transport: Transport,
    local: SocketAddr,
    server: SocketAddr,
    cert: Option<&CertVerdict>,
    host: &str,
) -> (String, Option<String>) {
    let mut d = format!("{} {local} → {server}", transport.name());
    let mut warning = None;
    match cert {
        Some(CertVerdict::Valid) => d.push_str(", certificate valid"),
        Some(CertVerdict::Invalid(why)) => {
            d.push_str(&format!(", certificate {why} (accepted: --insecure)"));
            warning = Some(format!(
                "the TLS certificate for {host} is {why}: clients that check certificates (browsers) will refuse turns:"
            ));
        }
        None => {}
    }
    (d, warning)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(credentials: &CredentialSource) -> Context<'_> {
        Context {
            transport: Transport::Udp,
            address: Some("198.51.100.1:3478".parse().expect("addr")),
            port: 3478,
            credentials,
            expected_realm: None,
            timeout: Duration::from_secs(2),
            external_peer: false,
        }
    }

    #[test]
    fn a_401_after_credentials_blames_what_was_sent() {
        let err = Failure::Error { code: ErrorCode::Unauthenticated, reason: "Unauthorized".into() };
        let rest = ctx(&CredentialSource::RestSecret).failure(StepName::Allocate, &err);
        assert!(rest.contains("shared secret differs"), "{rest}");
        let lt = ctx(&CredentialSource::LongTerm).failure(StepName::Allocate, &err);
        assert!(lt.contains("wrong user or password"), "{lt}");
    }

    #[test]
    fn a_udp_binding_timeout_names_the_port_and_tcp() {
        let f = Failure::TimedOut { sends: 7, elapsed: Duration::from_millis(39_500) };
        let s = ctx(&CredentialSource::None).failure(StepName::Binding, &f);
        assert_eq!(s, "no response over UDP after 7 tries in 39.5 s: is port 3478/udp open? (try --transport tcp)");
    }

    #[test]
    fn a_refused_loopback_peer_is_called_the_safe_default() {
        let f = Failure::Error { code: ErrorCode::Forbidden, reason: "Forbidden".into() };
        let peer: SocketAddr = "127.0.0.1:9".parse().expect("addr");
        let s = ctx(&CredentialSource::None).peer_failure(StepName::CreatePermission, &f, peer);
        assert!(s.starts_with("403 Forbidden: the server's policy refuses peer 127.0.0.1:9"), "{s}");
        assert!(s.contains("safe default"), "{s}");
    }
}

//! What a punch peer tells the other through the room: ICE credentials,
//! candidates (in SDP `candidate:` syntax, RFC 8839 §5.1), the QUIC
//! certificate fingerprint, and what it knows of its own NAT. It travels as
//! JSON in the `sdp` field of the signal server's offer/answer messages.

use serde::{Deserialize, Serialize};

pub const VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Description {
    /// Always [`VERSION`]; lets a peer refuse what it does not understand.
    pub natkit: u32,
    pub ufrag: String,
    pub pwd: String,
    /// `sha-256 AB:CD:…` of the peer's QUIC certificate.
    pub fingerprint: String,
    pub candidates: Vec<String>,
    /// The peer's mapped address changed with the destination (hard NAT).
    #[serde(default)]
    pub mapping_varies: Option<bool>,
    /// A relayed candidate is on its way (trickled in a `candidate` message when the TURN
    /// allocation is made).
    #[serde(default)]
    pub relay: bool,
    /// The candidate that is a router's port mapping of the peer's socket (reachable from
    /// anyone, offered as `srflx`); absent from older peers.
    #[serde(default)]
    pub port_mapped: Option<std::net::SocketAddr>,
}

impl Description {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Parses a peer's description; the error says what was wrong with it.
    pub fn parse(s: &str) -> Result<Self, String> {
        let d: Description =
            serde_json::from_str(s).map_err(|e| format!("the peer's description is not natkit punch JSON: {e}"))?;
        if d.natkit != VERSION {
            return Err(format!("the peer speaks natkit punch version {}, we speak {VERSION}", d.natkit));
        }
        if d.ufrag.is_empty() || d.pwd.is_empty() || !d.fingerprint.starts_with("sha-256 ") {
            return Err("the peer's description lacks ICE credentials or a sha-256 fingerprint".into());
        }
        Ok(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_bad_input() {
        let d = Description {
            natkit: VERSION,
            ufrag: "abcd".into(),
            pwd: "p".repeat(22),
            fingerprint: "sha-256 AA:BB".into(),
            candidates: vec!["candidate:1 1 udp 2130706431 10.0.0.2 5000 typ host".into()],
            mapping_varies: Some(false),
            relay: true,
            port_mapped: Some("203.0.113.11:5000".parse().unwrap()),
        };
        assert_eq!(Description::parse(&d.to_json()), Ok(d.clone()));
        assert!(Description::parse("v=0\r\no=- 1 1 IN IP4 0.0.0.0").is_err());
        let mut old = d;
        old.natkit = 99;
        assert!(Description::parse(&old.to_json()).unwrap_err().contains("version"));
    }
}

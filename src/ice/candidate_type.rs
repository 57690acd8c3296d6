//! The candidate type as SDP names it (RFC 8445 §5.1.1, RFC 8839 §5.1): one type for the reports
//! of `call` and `punch`, serialised as `host`, `srflx`, `prflx`, `relay`.

use serde::Serialize;
use str0m::CandidateKind;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CandidateType {
    Host,
    Srflx,
    Prflx,
    Relay,
}

impl From<CandidateKind> for CandidateType {
    fn from(k: CandidateKind) -> Self {
        match k {
            CandidateKind::Host => CandidateType::Host,
            CandidateKind::ServerReflexive => CandidateType::Srflx,
            CandidateKind::PeerReflexive => CandidateType::Prflx,
            CandidateKind::Relayed => CandidateType::Relay,
        }
    }
}

impl std::fmt::Display for CandidateType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CandidateType::Host => "host",
            CandidateType::Srflx => "srflx",
            CandidateType::Prflx => "prflx",
            CandidateType::Relay => "relay",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_and_text_use_the_sdp_names() {
        for (t, name) in [
            (CandidateType::Host, "host"),
            (CandidateType::Srflx, "srflx"),
            (CandidateType::Prflx, "prflx"),
            (CandidateType::Relay, "relay"),
        ] {
            assert_eq!(serde_json::to_string(&t).unwrap(), format!("\"{name}\""));
            assert_eq!(t.to_string(), name);
        }
        assert_eq!(CandidateType::from(CandidateKind::ServerReflexive), CandidateType::Srflx);
    }
}

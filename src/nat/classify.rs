//! From observed behaviour to a name: RFC 4787 mapping and filtering kinds,
//! and the classic RFC 3489 names people know (full cone … symmetric).
//!
//! The classic name derives from mapping and filtering (RFC 5780 §1 explains
//! why the old names are imprecise; they stay useful shorthand):
//!
//! | NAT? | mapping                      | filtering                    | name                     |
//! |------|------------------------------|------------------------------|--------------------------|
//! | no   | –                            | endpoint-independent         | `open-internet`          |
//! | no   | –                            | address(-and-port)-dependent | `symmetric-udp-firewall` |
//! | yes  | endpoint-independent         | endpoint-independent         | `full-cone`              |
//! | yes  | endpoint-independent         | address-dependent            | `restricted-cone`        |
//! | yes  | endpoint-independent         | address-and-port-dependent   | `port-restricted-cone`   |
//! | yes  | address(-and-port)-dependent | any                          | `symmetric`              |
//! | –    | no answer over UDP at all    |                              | `udp-blocked`            |

use serde::Serialize;

/// RFC 4787 §4.1: what decides the public address a NAT gives an internal endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mapping {
    /// One mapping for every destination: the address a server sees is the one peers can use.
    EndpointIndependent,
    /// A new mapping per destination IP.
    AddressDependent,
    /// A new mapping per destination IP and port.
    AddressAndPortDependent,
}

/// RFC 4787 §5: which inbound packets reach a mapped address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Filtering {
    /// Anyone can send to the mapped address.
    EndpointIndependent,
    /// Only IPs the client has sent to.
    AddressDependent,
    /// Only exact IP:port pairs the client has sent to.
    AddressAndPortDependent,
}

/// The classic name (RFC 3489 §5, plus the firewall and blocked cases).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum NatType {
    OpenInternet,
    FullCone,
    RestrictedCone,
    PortRestrictedCone,
    Symmetric,
    SymmetricUdpFirewall,
    UdpBlocked,
}

impl NatType {
    pub fn as_str(self) -> &'static str {
        match self {
            NatType::OpenInternet => "open-internet",
            NatType::FullCone => "full-cone",
            NatType::RestrictedCone => "restricted-cone",
            NatType::PortRestrictedCone => "port-restricted-cone",
            NatType::Symmetric => "symmetric",
            NatType::SymmetricUdpFirewall => "symmetric-udp-firewall",
            NatType::UdpBlocked => "udp-blocked",
        }
    }

    /// What this means for peer-to-peer connections, in one plain sentence.
    pub fn meaning(self) -> &'static str {
        match self {
            NatType::OpenInternet => {
                "No NAT and no filter: any peer can reach you directly, and you can accept incoming connections."
            }
            NatType::FullCone => {
                "Direct connections work with every peer, even symmetric ones: anyone can reach your mapped address."
            }
            NatType::RestrictedCone => {
                "Direct connections work with most peers after hole punching; symmetric peers usually work too, since only their IP is checked."
            }
            NatType::PortRestrictedCone => {
                "Direct connections work with most peers after hole punching; a symmetric peer needs port prediction (birthday probing) or a relay."
            }
            NatType::Symmetric => {
                "Direct connections work with cone NATs (with port prediction for port-restricted ones); a symmetric peer needs a relay (TURN)."
            }
            NatType::SymmetricUdpFirewall => {
                "Public address but a stateful firewall: direct connections work after hole punching, as behind a cone NAT; symmetric peers may need a relay."
            }
            NatType::UdpBlocked => {
                "No UDP gets through: peer-to-peer over UDP is impossible; use a TURN relay over TCP or TLS."
            }
        }
    }
}

impl std::fmt::Display for NatType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::fmt::Display for Mapping {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mapping::EndpointIndependent => "endpoint-independent",
            Mapping::AddressDependent => "address-dependent",
            Mapping::AddressAndPortDependent => "address-and-port-dependent",
        })
    }
}

impl std::fmt::Display for Filtering {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Filtering::EndpointIndependent => "endpoint-independent",
            Filtering::AddressDependent => "address-dependent",
            Filtering::AddressAndPortDependent => "address-and-port-dependent",
        })
    }
}

/// Whether a NAT sits between the client and the server (mapped ≠ local).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Translation {
    None,
    Nat,
}

/// The classic name, when what was learned is enough to give one.
/// `translation` None means no UDP answer came back at all.
pub fn classify(
    translation: Option<Translation>,
    mapping: Option<Mapping>,
    filtering: Option<Filtering>,
) -> Option<NatType> {
    let Some(translation) = translation else { return Some(NatType::UdpBlocked) };
    match (translation, mapping, filtering) {
        (Translation::None, _, Some(Filtering::EndpointIndependent)) => Some(NatType::OpenInternet),
        (Translation::None, _, Some(_)) => Some(NatType::SymmetricUdpFirewall),
        (Translation::None, _, None) => None,
        (Translation::Nat, Some(Mapping::AddressDependent | Mapping::AddressAndPortDependent), _) => {
            Some(NatType::Symmetric)
        }
        (Translation::Nat, Some(Mapping::EndpointIndependent), Some(f)) => Some(match f {
            Filtering::EndpointIndependent => NatType::FullCone,
            Filtering::AddressDependent => NatType::RestrictedCone,
            Filtering::AddressAndPortDependent => NatType::PortRestrictedCone,
        }),
        (Translation::Nat, _, _) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Filtering as F;
    use Mapping as M;

    #[test]
    fn classic_names_follow_mapping_and_filtering() {
        let nat = Some(Translation::Nat);
        let ei = Some(M::EndpointIndependent);
        assert_eq!(classify(nat, ei, Some(F::EndpointIndependent)), Some(NatType::FullCone));
        assert_eq!(classify(nat, ei, Some(F::AddressDependent)), Some(NatType::RestrictedCone));
        assert_eq!(classify(nat, ei, Some(F::AddressAndPortDependent)), Some(NatType::PortRestrictedCone));
        for m in [M::AddressDependent, M::AddressAndPortDependent] {
            assert_eq!(classify(nat, Some(m), None), Some(NatType::Symmetric));
            assert_eq!(classify(nat, Some(m), Some(F::AddressAndPortDependent)), Some(NatType::Symmetric));
        }
        assert_eq!(classify(nat, ei, None), None, "which cone needs the filtering tests");
    }

    #[test]
    fn no_translation_is_open_or_a_firewall() {
        let none = Some(Translation::None);
        let ei = Some(M::EndpointIndependent);
        assert_eq!(classify(none, ei, Some(F::EndpointIndependent)), Some(NatType::OpenInternet));
        assert_eq!(classify(none, ei, Some(F::AddressDependent)), Some(NatType::SymmetricUdpFirewall));
        assert_eq!(classify(none, ei, Some(F::AddressAndPortDependent)), Some(NatType::SymmetricUdpFirewall));
        assert_eq!(classify(None, None, None), Some(NatType::UdpBlocked));
    }

    #[test]
    fn names_serialise_kebab_case() {
        let json = serde_json::to_string(&NatType::PortRestrictedCone).expect("json");
        assert_eq!(json, "\"port-restricted-cone\"");
        assert_eq!(serde_json::to_string(&M::AddressAndPortDependent).expect("json"), "\"address-and-port-dependent\"");
        assert_eq!(NatType::SymmetricUdpFirewall.to_string(), "symmetric-udp-firewall");
    }
}

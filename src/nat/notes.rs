//! Why a behaviour test was skipped and why a finding is unknown (RFC 5780 §4.3, §4.4), as
//! types: the discovery core ([`crate::nat::behavior`]) decides, and the sentences a person reads
//! (the report's `notes` and an exchange's `reason`) are written here and nowhere else.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use serde::{Serialize, Serializer};

use crate::net::udp::Unreachable;

/// Why a test was not run: another test's answer made it moot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipReason {
    /// The primary server has no alternate address, so the CHANGE-REQUEST tests mean nothing.
    NoOtherAddress,
    /// Without mapping-1's answer, nothing the others learn would mean anything.
    PrimaryUnanswered,
    /// mapping-2 came back with mapping-1's address: mapping-3 would say nothing more.
    MappingIIMatched,
    /// filtering-2 was answered: filtering-3 would say nothing more.
    FilteringIIAnswered,
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SkipReason::NoOtherAddress => "the primary server sent no OTHER-ADDRESS: it does not support RFC 5780",
            SkipReason::PrimaryUnanswered => "mapping-1 to the primary server got no answer",
            SkipReason::MappingIIMatched => "mapping-2 matched mapping-1: endpoint-independent mapping",
            SkipReason::FilteringIIAnswered => "filtering-2 was answered: endpoint-independent filtering",
        })
    }
}

/// In JSON, the sentence (`"reason": "..."`).
impl Serialize for SkipReason {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Which filtering test a note speaks of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FilteringTest {
    /// filtering-2: CHANGE-REQUEST with change-ip and change-port.
    II,
    /// filtering-3: CHANGE-REQUEST with change-port only.
    III,
}

impl FilteringTest {
    fn name(self) -> &'static str {
        match self {
            FilteringTest::II => "filtering-2",
            FilteringTest::III => "filtering-3",
        }
    }

    fn change(self) -> &'static str {
        match self {
            FilteringTest::II => "change-ip-and-port",
            FilteringTest::III => "change-port",
        }
    }
}

/// Something the discovery learned that a verdict cannot carry: why a finding is unknown, or
/// how the server was used. `primary` is the primary server (None only without servers).
#[derive(Debug, Clone, PartialEq)]
pub enum Note {
    /// The primary server gave an RFC 3489 CHANGED-ADDRESS and no OTHER-ADDRESS.
    ClassicServer {
        primary: Option<SocketAddr>,
        changed: SocketAddr,
    },
    /// The primary server was silent but another server answered.
    PrimarySilentOthersAnswered {
        primary: Option<SocketAddr>,
    },
    MappingIIUnanswered,
    MappingIIIUnanswered,
    /// The primary server does not support RFC 5780, so filtering cannot be tested.
    NoFilteringWithoutRfc5780 {
        primary: Option<SocketAddr>,
    },
    /// The primary server's address answered with an ICMP error.
    PrimaryUnreachable {
        primary: Option<SocketAddr>,
        error: Unreachable,
    },
    /// The primary server answered the Binding request with an error response.
    BindingRefused {
        code: u16,
        reason: String,
    },
    /// No answer over UDP at all within the run's timeout.
    UdpSilent {
        primary: Option<SocketAddr>,
        waited: Duration,
    },
    /// Without RFC 5780 only one server answered: the public address and nothing more.
    OneServerOnly,
    /// Without RFC 5780, servers at different IPs saw different mapped addresses.
    MappingVariesByAddress,
    FilteringIUnanswered,
    /// The server answered a CHANGE-REQUEST test from the address it was asked not to use.
    ChangeRequestIgnored {
        test: FilteringTest,
        from: SocketAddr,
    },
    /// A filtering test ended in neither an answer nor silence; `outcome` is how it ended.
    FilteringEndedUnexpectedly {
        test: FilteringTest,
        outcome: String,
    },
}

/// The primary server as the sentences name it.
struct Primary(Option<SocketAddr>);

impl fmt::Display for Primary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(p) => write!(f, "{p}"),
            None => Ok(()),
        }
    }
}

impl fmt::Display for Note {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Note::ClassicServer { primary, changed } => write!(
                f,
                "{} gave CHANGED-ADDRESS {changed} (RFC 3489) but no OTHER-ADDRESS (RFC 5780): a classic server \
                 such as stund; it was used as the alternate address for the mapping and filtering tests",
                Primary(*primary)
            ),
            Note::PrimarySilentOthersAnswered { primary } => write!(
                f,
                "the primary server {} did not answer, others did: only the mapping comparison could run",
                Primary(*primary)
            ),
            Note::MappingIIUnanswered => {
                f.write_str("mapping-2 (to the alternate address) got no answer: mapping is unknown")
            }
            Note::MappingIIIUnanswered => {
                f.write_str("mapping-3 (to the alternate port) got no answer: mapping varies with the address at least")
            }
            Note::NoFilteringWithoutRfc5780 { primary } => write!(
                f,
                "{} does not support RFC 5780 (no OTHER-ADDRESS in its answer), so the filtering tests cannot run: \
                 filtering is unknown. Use an RFC 5780 server (coturn with two --listening-ip and --alt-listening-port) \
                 for the full picture",
                Primary(*primary)
            ),
            Note::PrimaryUnreachable { primary, error } => write!(
                f,
                "{} answered with an ICMP error ({error}): UDP reaches it but nothing listens there; check the port",
                Primary(*primary)
            ),
            Note::BindingRefused { code, reason } => {
                write!(f, "the server answered the Binding request with error {code} {reason}")
            }
            Note::UdpSilent { primary, waited } => write!(
                f,
                "no answer over UDP from {} within {:.1} s: UDP is blocked on the way, or the server is down",
                Primary(*primary),
                waited.as_secs_f64()
            ),
            Note::OneServerOnly => f.write_str(
                "only one server answered and it does not support RFC 5780: learned the public address only. \
                 Give a second --server (a different IP) to learn the mapping, or an RFC 5780 server for everything",
            ),
            Note::MappingVariesByAddress => f.write_str(
                "the mapped address differs between servers at different IPs: mapping depends on the address at least \
                 (telling address-dependent from address-and-port-dependent needs two ports of one IP)",
            ),
            Note::FilteringIUnanswered => {
                f.write_str("filtering-1 got no answer (loss?): filtering is unknown; run again")
            }
            Note::ChangeRequestIgnored { test, from } => write!(
                f,
                "the server ignored CHANGE-REQUEST (the {} answer came from {from}): filtering is unknown",
                test.change()
            ),
            Note::FilteringEndedUnexpectedly { test, outcome } => {
                write!(f, "{} ended unexpectedly ({outcome}): filtering is unknown", test.name())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skip_reasons_serialise_as_their_sentence() {
        let json = serde_json::to_string(&SkipReason::MappingIIMatched).unwrap();
        assert_eq!(json, "\"mapping-2 matched mapping-1: endpoint-independent mapping\"");
    }

    #[test]
    fn notes_name_the_server_and_the_test() {
        let primary = Some("203.0.113.1:3478".parse().unwrap());
        let n = Note::UdpSilent { primary, waited: Duration::from_millis(2500) };
        assert_eq!(
            n.to_string(),
            "no answer over UDP from 203.0.113.1:3478 within 2.5 s: UDP is blocked on the way, or the server is down"
        );
        let n = Note::ChangeRequestIgnored { test: FilteringTest::III, from: "203.0.113.1:3478".parse().unwrap() };
        assert_eq!(
            n.to_string(),
            "the server ignored CHANGE-REQUEST (the change-port answer came from 203.0.113.1:3478): filtering is unknown"
        );
        let n = Note::PrimaryUnreachable { primary, error: Unreachable::Port };
        assert!(n.to_string().starts_with("203.0.113.1:3478 answered with an ICMP error (port unreachable (ICMP))"));
    }
}

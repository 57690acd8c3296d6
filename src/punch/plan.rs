//! When punch tries what. Direct ICE pairs (host and server-reflexive) first; the birthday
//! method when exactly one side's NAT varies its mapping by destination and the direct pairs
//! have had a moment; the TURN relay last: after the birthday method gives up, after a short
//! window of direct checks otherwise, at once when both NATs are hard (no direct path can
//! exist) or with `--relay-only`. A router port mapping on either side (see `punch::port_mapping`)
//! makes every pair an easy one: direct checks first, no birthday method. Relayed candidates
//! wait for their phase so that a relay pair that answers first never wins over a direct one that was about to (RFC 8445 §7.2.5.3 lets
//! the controlling agent nominate any valid pair; holding the relay back makes "direct when
//! possible" a property rather than a race).
//!
//! Pure: the session asks with `now` and acts on the answers.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::punch::birthday::Side;

/// Direct checks get this long before the birthday method starts.
pub const BIRTHDAY_GRACE: Duration = Duration::from_millis(1000);
/// Without a birthday attempt, direct checks get this long before relayed pairs join.
pub const DIRECT_WINDOW: Duration = Duration::from_millis(3000);
/// Mappings the opener makes (sockets it binds).
pub const OPENER_SOCKETS: usize = 256;

/// What both ends know when the checks start.
#[derive(Debug, Clone)]
pub struct Knowledge {
    /// Our mapping changed with the STUN server (None: fewer than two server IPs answered).
    pub ours_varies: Option<bool>,
    pub theirs_varies: Option<bool>,
    /// The peer's server-reflexive address (its stable public address when its mapping holds).
    pub their_srflx: Option<SocketAddr>,
    /// Either side has a relayed candidate.
    pub relay_available: bool,
    /// We have a TURN relay of our own (an allocation asked for; the peer can be let in through it).
    pub relay_ours: bool,
    pub relay_only: bool,
    pub birthday_allowed: bool,
    /// Either side offers a router's port mapping (reachable from anyone): plain ICE checks
    /// toward it work whatever the NATs' mapping, so neither the birthday method nor an early
    /// relay is needed.
    pub port_mapped: bool,
    /// Both sides offer an IPv6 candidate: a v6 path often needs no NAT traversal at all (only
    /// simultaneous open through stateful firewalls), so two hard v4 NATs no longer mean that no
    /// direct path can exist.
    pub both_v6: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Which end of the birthday method we are, and when it starts.
    pub birthday: Option<(Side, Instant)>,
    /// When relayed candidates join the checks.
    pub relay_at: Option<Instant>,
}

impl Plan {
    pub fn new(k: &Knowledge, start: Instant) -> Plan {
        let both_hard = k.ours_varies == Some(true) && k.theirs_varies == Some(true) && !k.port_mapped && !k.both_v6;
        let birthday = if k.relay_only || !k.birthday_allowed || k.port_mapped {
            None
        } else {
            match (k.ours_varies, k.theirs_varies, k.their_srflx) {
                (Some(false), Some(true), Some(peer)) => Some(Side::Prober { peer_ip: peer.ip() }),
                (Some(true), Some(false), Some(peer)) => Some(Side::Opener { peer, sockets: OPENER_SOCKETS }),
                _ => None,
            }
        };
        let relay_at = match (k.relay_available, k.relay_only || both_hard, &birthday) {
            (false, _, _) => None,
            (true, true, _) => Some(start),
            // The birthday attempt ends with a verdict; the relay waits for it.
            (true, false, Some(_)) => None,
            (true, false, None) => Some(start + DIRECT_WINDOW),
        };
        Plan { birthday: birthday.map(|side| (side, start + BIRTHDAY_GRACE)), relay_at }
    }

    /// The birthday method found nothing: the relay's turn.
    pub fn birthday_gave_up(&mut self, k: &Knowledge, now: Instant) {
        if k.relay_available {
            self.relay_at = Some(self.relay_at.map_or(now, |t| t.min(now)));
        }
    }
}

#[cfg(test)]
impl Knowledge {
    /// What the lab's NAT pairs know (a relay on both sides, the peer's srflx 203.0.113.20:41000,
    /// nothing else), for the plan's and the race's tests.
    pub(crate) fn lab(ours: Option<bool>, theirs: Option<bool>) -> Knowledge {
        Knowledge {
            ours_varies: ours,
            theirs_varies: theirs,
            their_srflx: Some(SocketAddr::from(([203, 0, 113, 20], 41000))),
            relay_available: true,
            relay_ours: true,
            relay_only: false,
            birthday_allowed: true,
            port_mapped: false,
            both_v6: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(ours: Option<bool>, theirs: Option<bool>) -> Knowledge {
        Knowledge::lab(ours, theirs)
    }

    #[test]
    fn easy_pairs_check_directly_then_relay() {
        let t0 = Instant::now();
        for (o, t) in [(Some(false), Some(false)), (None, Some(true)), (Some(true), None), (None, None)] {
            let p = Plan::new(&k(o, t), t0);
            assert_eq!(p, Plan { birthday: None, relay_at: Some(t0 + DIRECT_WINDOW) }, "{o:?} {t:?}");
        }
        let p = Plan::new(&Knowledge { relay_available: false, ..k(Some(false), Some(false)) }, t0);
        assert_eq!(p, Plan { birthday: None, relay_at: None });
    }

    #[test]
    fn one_hard_side_runs_the_birthday_method_and_the_relay_waits_for_its_verdict() {
        let t0 = Instant::now();
        let mut easy = Plan::new(&k(Some(false), Some(true)), t0);
        assert_eq!(
            easy.birthday,
            Some((Side::Prober { peer_ip: "203.0.113.20".parse().unwrap() }, t0 + BIRTHDAY_GRACE))
        );
        assert_eq!(easy.relay_at, None);
        let hard = Plan::new(&k(Some(true), Some(false)), t0);
        assert_eq!(
            hard.birthday,
            Some((
                Side::Opener { peer: "203.0.113.20:41000".parse().unwrap(), sockets: OPENER_SOCKETS },
                t0 + BIRTHDAY_GRACE
            ))
        );
        let later = t0 + Duration::from_secs(9);
        easy.birthday_gave_up(&k(Some(false), Some(true)), later);
        assert_eq!(easy.relay_at, Some(later));
    }

    #[test]
    fn both_hard_or_relay_only_go_to_the_relay_at_once() {
        let t0 = Instant::now();
        assert_eq!(Plan::new(&k(Some(true), Some(true)), t0), Plan { birthday: None, relay_at: Some(t0) });
        let only = Knowledge { relay_only: true, ..k(Some(false), Some(true)) };
        assert_eq!(Plan::new(&only, t0), Plan { birthday: None, relay_at: Some(t0) });
        let no_birthday = Knowledge { birthday_allowed: false, ..k(Some(false), Some(true)) };
        assert_eq!(Plan::new(&no_birthday, t0).relay_at, Some(t0 + DIRECT_WINDOW));
    }

    #[test]
    fn both_hard_v4_nats_with_ipv6_on_both_sides_check_directly_first() {
        let t0 = Instant::now();
        let p = Plan::new(&Knowledge { both_v6: true, ..k(Some(true), Some(true)) }, t0);
        assert_eq!(p, Plan { birthday: None, relay_at: Some(t0 + DIRECT_WINDOW) });
    }

    #[test]
    fn a_port_mapping_on_either_side_makes_hard_pairs_check_directly_first() {
        let t0 = Instant::now();
        for (o, t) in [(Some(true), Some(true)), (Some(false), Some(true)), (Some(true), Some(false))] {
            let p = Plan::new(&Knowledge { port_mapped: true, ..k(o, t) }, t0);
            assert_eq!(p, Plan { birthday: None, relay_at: Some(t0 + DIRECT_WINDOW) }, "{o:?} {t:?}");
        }
    }
}

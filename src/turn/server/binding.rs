//! The STUN Binding responder: RFC 8489 §7.3 (XOR-MAPPED-ADDRESS), the
//! RFC 5780 §6 behaviour-discovery responder (OTHER-ADDRESS,
//! RESPONSE-ORIGIN, CHANGE-REQUEST answered from another socket,
//! RESPONSE-PORT of §7.5 answered to another port of the client's IP) and
//! RFC 3489 §11.2.1 classic clients (no magic cookie; answered the way
//! coturn answers them, see [`super::classic`]).
//!
//! RESPONSE-PORT sends an unsigned answer to a port the request names,
//! which is a reflection tool if left open. It is honoured the way coturn
//! 4.6 honours it (`handle_turn_binding`): only over UDP, only when the RFC
//! 5780 responder is on (an alternate address is configured; otherwise the
//! attribute is ignored and the answer goes to the source, which tells the
//! client "not supported"), never together with PADDING, and only ever to
//! the source's own IP. coturn has no floor on the port; natkit follows it
//! (a NAT maps to any port, and the lifetime test needs its mapped port)
//! except port 0, which no socket can send to (400). The answer counts
//! against the source IP's unauthenticated budget like every unsigned answer
//! ([`super::unauth_limit`]), and the source IP is the destination IP, so a
//! spoofer reaches nothing it could not already reach by spoofing.

use std::net::SocketAddr;
use std::time::Instant;

use stun_rs::attributes::discovery::{ChangeRequestFlags, OtherAddress, ResponseOrigin};
use stun_rs::attributes::stun::{UnknownAttributes, XorMappedAddress};
use stun_rs::methods::BINDING;
use stun_rs::{StunAttribute, StunMessage};

use super::{ErrorCode, FiveTuple, Server, Target, Transmit, classic};
use crate::net::transport::Transport;

impl Server {
    /// An RFC 3489 Binding request (no magic cookie): answered in the classic format.
    pub(super) fn classic_binding<'a>(
        &'a mut self,
        from: FiveTuple,
        packet: &'a [u8],
        now: Instant,
    ) -> Option<Transmit<'a>> {
        self.stats.requests += 1;
        self.stats.binding_requests += 1;
        self.stats.classic_binding_requests += 1;
        let rfc5780 = if from.transport == Transport::Udp { self.cfg.rfc5780 } else { None };
        let (n, origin) = match classic::answer(packet, from.remote, from.local, rfc5780, &mut self.scratch) {
            Ok(v) => v,
            Err(why) => {
                self.stats.dropped_unexpected += 1;
                tracing::debug!(client = %from.remote, ?why, "RFC 3489 Binding request not answered");
                return None;
            }
        };
        if from.transport == Transport::Udp && !self.unauth.allow(from.remote.ip(), n, now) {
            self.stats.unauth_rate_limited += 1;
            return None;
        }
        Some(Transmit { target: Target::Client(FiveTuple { local: origin, ..from }), payload: &self.scratch[..n] })
    }

    pub(super) fn binding(&mut self, from: FiveTuple, msg: &StunMessage) -> Option<usize> {
        self.stats.binding_requests += 1;
        let change = msg.attributes().iter().find_map(|a| a.as_change_request().ok()).map(|c| {
            (c.flags().contains(ChangeRequestFlags::ChangeIp), c.flags().contains(ChangeRequestFlags::ChangePort))
        });
        let response_port = msg.attributes().iter().find_map(|a| a.as_response_port().ok()).map(|p| p.as_u16());
        if response_port.is_some() {
            let txid = *msg.transaction_id().as_bytes();
            // coturn answers 400 to both cases; RFC 5780 §7.5 and §7.6 forbid the pair.
            let why = if from.transport != Transport::Udp {
                Some("RESPONSE-PORT applies only to UDP")
            } else if msg.attributes().iter().any(|a| a.is_padding()) {
                Some("RESPONSE-PORT and PADDING cannot be used together")
            } else if response_port == Some(0) {
                Some("RESPONSE-PORT 0 is not a port")
            } else {
                None
            };
            if let Some(why) = why {
                return self.error_with_reason(1, txid, ErrorCode::BadRequest, why, None, vec![]);
            }
        }
        let mut attrs: Vec<StunAttribute> = vec![XorMappedAddress::from(from.remote).into()];
        match (self.cfg.rfc5780, from.transport) {
            (Some(r), Transport::Udp) => {
                if let Some((i, j)) = r.position(from.local) {
                    let (ci, cp) = change.unwrap_or((false, false));
                    let (si, sj) = (if ci { 1 - i } else { i }, if cp { 1 - j } else { j });
                    let origin = SocketAddr::new(r.ips[si], r.ports[sj]);
                    attrs.push(OtherAddress::from(SocketAddr::new(r.ips[1 - i], r.ports[1 - j])).into());
                    attrs.push(ResponseOrigin::from(origin).into());
                    // §7.5: the answer goes to the source IP at the port asked for.
                    let remote = match response_port {
                        Some(port) => {
                            self.stats.binding_response_port += 1;
                            SocketAddr::new(from.remote.ip(), port)
                        }
                        None => from.remote,
                    };
                    self.reply_target = Some(Target::Client(FiveTuple { local: origin, remote, ..from }));
                } else {
                    attrs.push(ResponseOrigin::from(from.local).into());
                }
            }
            (Some(_), _) | (None, _) => {
                if matches!(change, Some((ci, cp)) if ci || cp) {
                    // RFC 5780 §6.1: a server that cannot change address answers 420.
                    let mut unknown = UnknownAttributes::default();
                    unknown.add(0x0003);
                    return self.error(
                        1,
                        *msg.transaction_id().as_bytes(),
                        ErrorCode::UnknownAttribute,
                        None,
                        vec![unknown.into()],
                    );
                }
                if !from.local.ip().is_unspecified() {
                    attrs.push(ResponseOrigin::from(from.local).into());
                }
            }
        }
        self.success(BINDING, *msg.transaction_id().as_bytes(), attrs, None)
    }
}

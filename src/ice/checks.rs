//! A record of the connectivity checks (RFC 8445 §7.2) for the report: it
//! watches the STUN Binding requests the agent sends and the responses that
//! come back, per candidate pair. Pure bookkeeping; the agent decides.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Instant;

use serde::Serialize;

use crate::stun::message::transaction_id;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CheckOutcome {
    Succeeded,
    /// Requests sent, no response (yet).
    NoResponse,
}

impl std::fmt::Display for CheckOutcome {
    /// The same words as the JSON (`succeeded`, `no-response`).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CheckOutcome::Succeeded => "succeeded",
            CheckOutcome::NoResponse => "no-response",
        })
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct CheckRecord {
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub requests: u32,
    pub responses: u32,
    pub outcome: CheckOutcome,
    pub nominated: bool,
    pub rtt_ms: Option<f64>,
}

#[derive(Debug, Default)]
pub struct CheckLog {
    pairs: Vec<CheckRecord>,
    sent: HashMap<[u8; 12], (usize, Instant)>,
}

const BINDING_REQUEST: u16 = 0x0001;
const BINDING_SUCCESS: u16 = 0x0101;

fn msg_type(bytes: &[u8]) -> Option<u16> {
    transaction_id(bytes)?;
    Some(u16::from_be_bytes([bytes[0], bytes[1]]))
}

impl CheckLog {
    fn pair(&mut self, local: SocketAddr, remote: SocketAddr) -> usize {
        if let Some(i) = self.pairs.iter().position(|p| p.local == local && p.remote == remote) {
            return i;
        }
        self.pairs.push(CheckRecord {
            local,
            remote,
            requests: 0,
            responses: 0,
            outcome: CheckOutcome::NoResponse,
            nominated: false,
            rtt_ms: None,
        });
        self.pairs.len() - 1
    }

    /// A datagram the agent sends from `local` to `remote`.
    pub fn on_send(&mut self, local: SocketAddr, remote: SocketAddr, bytes: &[u8], now: Instant) {
        if msg_type(bytes) == Some(BINDING_REQUEST) {
            let i = self.pair(local, remote);
            self.pairs[i].requests += 1;
            if let Some(id) = transaction_id(bytes) {
                self.sent.insert(id, (i, now));
            }
        }
    }

    /// A datagram received; a success response completes its pair's check.
    pub fn on_recv(&mut self, bytes: &[u8], now: Instant) {
        if msg_type(bytes) != Some(BINDING_SUCCESS) {
            return;
        }
        let Some((i, sent)) = transaction_id(bytes).and_then(|id| self.sent.remove(&id)) else { return };
        let p = &mut self.pairs[i];
        p.responses += 1;
        p.outcome = CheckOutcome::Succeeded;
        let rtt = now.saturating_duration_since(sent).as_secs_f64() * 1000.0;
        p.rtt_ms = Some(p.rtt_ms.map_or(rtt, |r| r.min(rtt)));
    }

    pub fn nominate(&mut self, local: SocketAddr, remote: SocketAddr) {
        let i = self.pair(local, remote);
        self.pairs[i].nominated = true;
    }

    pub fn records(&self) -> Vec<CheckRecord> {
        self.pairs.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stun::message::{binding_request, new_transaction_id};
    use std::time::Duration;

    #[test]
    fn request_and_response_make_a_succeeded_pair() {
        let t0 = Instant::now();
        let mut log = CheckLog::default();
        let (l, r): (SocketAddr, SocketAddr) = ("10.0.0.2:5000".parse().unwrap(), "203.0.113.9:6000".parse().unwrap());
        let id = new_transaction_id();
        let req = binding_request(id);
        log.on_send(l, r, &req, t0);
        log.on_send(l, r, &req, t0);
        let mut resp = req.clone();
        resp[0] = 0x01;
        resp[1] = 0x01;
        log.on_recv(&resp, t0 + Duration::from_millis(12));
        log.on_send(l, "198.51.100.1:1".parse().unwrap(), &binding_request(new_transaction_id()), t0);
        log.nominate(l, r);
        let recs = log.records();
        assert_eq!(recs.len(), 2);
        assert_eq!(
            (recs[0].requests, recs[0].responses, recs[0].outcome, recs[0].nominated),
            (2, 1, CheckOutcome::Succeeded, true)
        );
        assert_eq!(recs[0].rtt_ms, Some(12.0));
        assert_eq!(recs[1].outcome, CheckOutcome::NoResponse);
    }
}

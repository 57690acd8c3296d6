//! Counters the core keeps; the driver serves them as Prometheus text and
//! logs them at shutdown.

use serde::Serialize;

use super::ErrorCode;
use super::auth::AuthFailure;
use super::peer_policy::Refusal;
use super::throttle::Offender;

#[derive(Debug, Clone, Default, Serialize)]
pub struct Stats {
    pub requests: u64,
    pub binding_requests: u64,
    /// Of which RFC 3489 (no magic cookie).
    pub classic_binding_requests: u64,
    /// Of which answered to another port of the client's IP (RFC 5780 §7.5 RESPONSE-PORT).
    pub binding_response_port: u64,
    pub allocations_created: u64,
    pub allocations_deleted: u64,
    pub allocations_expired: u64,
    pub refreshes: u64,
    pub permissions_created: u64,
    pub channels_bound: u64,
    pub packets_to_peers: u64,
    pub bytes_to_peers: u64,
    pub packets_from_peers: u64,
    pub bytes_from_peers: u64,
    /// Between two allocations of this relay, delivered inside the process.
    pub packets_internal: u64,
    pub bytes_internal: u64,
    pub auth_challenges: u64,
    pub stale_nonces: u64,
    /// 401 answers not sent because the source failed too often.
    pub rate_limited: u64,
    /// Requests refused unchecked by the password-guessing throttle, indexed by [`Offender::index`].
    pub auth_throttled: [u64; Offender::ALL.len()],
    /// Unsigned answers over UDP not sent: the source used up its byte budget (amplification).
    pub unauth_rate_limited: u64,
    /// Allocate refused (486) because the client's address holds `source_quota` allocations.
    pub source_quota_reached: u64,
    pub dropped_malformed: u64,
    /// STUN messages whose FINGERPRINT was present and wrong (RFC 8489 §14.7).
    pub dropped_bad_fingerprint: u64,
    pub dropped_unexpected: u64,
    pub dropped_no_allocation: u64,
    pub dropped_no_permission: u64,
    pub dropped_no_channel: u64,
    /// Send indications on an RFC 6062 TCP allocation (it relays only over Connect/ConnectionBind).
    pub dropped_tcp_allocation: u64,
    /// Indexed by [`Refusal::index`].
    pub refusals: [u64; Refusal::ALL.len()],
    /// Indexed by [`AuthFailure::index`].
    pub auth_failures: [u64; AuthFailure::ALL.len()],
    /// Indexed by [`ErrorCode::index`].
    pub errors_sent: [u64; ErrorCode::ALL.len()],
}

impl Stats {
    pub fn refusals_total(&self) -> u64 {
        self.refusals.iter().sum()
    }

    pub fn auth_failures_total(&self) -> u64 {
        self.auth_failures.iter().sum()
    }

    pub fn dropped_total(&self) -> u64 {
        self.dropped_malformed
            + self.dropped_bad_fingerprint
            + self.dropped_unexpected
            + self.dropped_no_allocation
            + self.dropped_no_permission
            + self.dropped_no_channel
            + self.dropped_tcp_allocation
    }
}

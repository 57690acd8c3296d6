//! What the server core is told at start: realm and users, the limits (each
//! a `natkit relay` flag, RFC 8656 §7.2 quotas and capacity), the peer
//! policy (RFC 8656 §21.1 / §9 of RFC 8656 on forbidden peers) and the
//! RFC 5780 §4 address layout of the behaviour-discovery responder.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use super::allocation::MAX_LIFETIME;
use super::peer_policy::PeerPolicyConfig;
use super::tcp_relay::TcpRelayConfig;
use super::throttle::ThrottleConfig;
use super::unauth_limit::UnauthLimitConfig;
use super::userdb::UserDbConfig;

/// The RFC 5780 responder: two IPs and two ports; a request that arrives on
/// (ip i, port j) names (ip 1-i, port 1-j) in OTHER-ADDRESS, and CHANGE-REQUEST
/// flips i and/or j for the socket the answer leaves from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rfc5780 {
    pub ips: [IpAddr; 2],
    pub ports: [u16; 2],
}

impl Rfc5780 {
    pub(super) fn position(&self, local: SocketAddr) -> Option<(usize, usize)> {
        let i = self.ips.iter().position(|ip| *ip == local.ip())?;
        let j = self.ports.iter().position(|p| *p == local.port())?;
        Some((i, j))
    }

    /// Every address the responder must listen on.
    pub fn addresses(&self) -> Vec<SocketAddr> {
        let mut v = Vec::new();
        for ip in self.ips {
            for port in self.ports {
                let a = SocketAddr::new(ip, port);
                if !v.contains(&a) {
                    v.push(a);
                }
            }
        }
        v
    }
}

/// Everything the core is told at start.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub realm: String,
    pub users: HashMap<String, String>,
    pub secret: Option<String>,
    pub policy: PeerPolicyConfig,
    pub max_allocations: usize,
    pub user_quota: u32,
    /// Allocations per client IP address (0: no limit), so per-client REST credentials
    /// cannot be multiplied by one host.
    pub source_quota: u32,
    pub max_permissions: usize,
    pub max_channels: usize,
    pub max_lifetime: Duration,
    pub nonce_lifetime: Duration,
    pub nonce_key: [u8; 32],
    pub rfc5780: Option<Rfc5780>,
    /// Advertised in XOR-RELAYED-ADDRESS instead of the bound IP (1:1 NAT in front).
    pub external_ip: Option<IpAddr>,
    pub software: String,
    /// 401 answers to failed credentials per source IP: burst, then per second.
    pub auth_fail_burst: u32,
    pub auth_fail_per_sec: f64,
    /// While draining, new Allocates are sent here (300 Try Alternate, RFC 8489 §10) instead of 508.
    pub alternate_server: Option<SocketAddr>,
    /// Password-guessing throttle per source IP and per username.
    pub throttle: ThrottleConfig,
    /// Bytes of unauthenticated answers per source IP over UDP (amplification).
    pub unauth: UnauthLimitConfig,
    /// Users and REST secrets from a shared database (`--userdb`), looked up through the driver.
    pub userdb: Option<UserDbConfig>,
    /// TCP allocations (RFC 6062): connections per allocation, ConnectionBind timeout.
    pub tcp: TcpRelayConfig,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            realm: "natkit".into(),
            users: HashMap::new(),
            secret: None,
            policy: PeerPolicyConfig::default(),
            max_allocations: 10_000,
            user_quota: 1_000,
            source_quota: 100,
            max_permissions: 128,
            max_channels: 128,
            max_lifetime: MAX_LIFETIME,
            nonce_lifetime: Duration::from_secs(600),
            nonce_key: rand::random(),
            rfc5780: None,
            external_ip: None,
            software: format!("natkit {}", env!("CARGO_PKG_VERSION")),
            auth_fail_burst: 10,
            auth_fail_per_sec: 2.0,
            alternate_server: None,
            throttle: ThrottleConfig::default(),
            unauth: UnauthLimitConfig::default(),
            userdb: None,
            tcp: TcpRelayConfig::default(),
        }
    }
}

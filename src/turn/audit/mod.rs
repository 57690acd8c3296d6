//! `natkit turn-alloc`'s audit of a TURN server (RFC 8656): proves, one named step at a
//! time, that it relays end to end, and audits what an attacker with credentials could
//! do with it. The command validates the arguments into an [`AuditConfig`] and calls
//! [`run`]; everything else is here, one job per file:
//!
//! - [`scenario`]: the steps as a sans-IO script over the TURN client core (what to ask
//!   next, given the last answer and `now`), which records the [`report`].
//! - [`driver`]: carries out the scenario's actions over UDP, TCP or TLS.
//! - [`peers`]: the peer audit (permissions a relay must refuse).
//! - [`quality`]: loss, RTT and RFC 3550 jitter of the relayed path.
//! - [`explain`]: the sentences that say what a failure means; [`render`]: the table.
//! - [`tcp_relay`]: the RFC 6062 TCP relaying step (`--peer-transport tcp`).
//! - [`probe`]: `--every`, the audit as a blackbox probe with Prometheus metrics.
//!
//! By default the data test needs no outside peer: a second allocation on the same
//! server is the peer of the first, so data goes client → relay A → relay B → client
//! and back. The data round trip runs with Send/Data indications (§11) before the
//! channel is bound, since a bound channel makes the server switch to ChannelData
//! (§12), then with ChannelData.

pub mod driver;
pub mod explain;
pub mod peers;
pub mod probe;
pub mod quality;
pub mod render;
pub mod report;
pub mod scenario;
pub mod tcp_relay;

pub use driver::run;
pub use report::{StepName, TurnAllocReport};

use crate::net::server_spec::Family as ResolveFamily;
use crate::net::tls::TlsOptions;
use crate::turn::credentials::Credentials;

/// Validated arguments of one audit.
#[derive(Debug, Clone)]
pub struct AuditConfig {
    /// The scenario's settings.
    pub plan: scenario::Plan,
    pub credentials: CredentialSpec,
    /// Which of the server's addresses to use.
    pub resolve_family: ResolveFamily,
    /// TLS settings (a client is made per run, so its certificate verdict is that run's).
    pub tls: TlsOptions,
    pub quality: QualityPlan,
}

/// Where the credentials come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CredentialSpec {
    None,
    /// `--user` and `--password` (RFC 8489 §9.2 long-term credentials).
    LongTerm(Credentials),
    /// `--secret` (and the name part of the username from `--user`): TURN REST credentials.
    Rest {
        secret: String,
        name: Option<String>,
    },
}

impl CredentialSpec {
    /// What a 401 can be blamed on.
    pub fn source(&self) -> explain::CredentialSource {
        match self {
            CredentialSpec::None => explain::CredentialSource::None,
            CredentialSpec::LongTerm(_) => explain::CredentialSource::LongTerm,
            CredentialSpec::Rest { .. } => explain::CredentialSource::RestSecret,
        }
    }
}

/// The quality test: `--packets` of `--size` bytes at `--rate` per second.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QualityPlan {
    pub packets: u32,
    pub rate: u32,
    pub size: usize,
}

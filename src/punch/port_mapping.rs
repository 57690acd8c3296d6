//! Port-mapped candidates for punch: the router on the way to our servers is asked (PCP, RFC 6887;
//! NAT-PMP, RFC 6886; UPnP-IGD) to map the punch socket's UDP port, and the mapped address is
//! offered as a candidate. A mapping accepts packets from anyone, so a peer reaches us through it
//! even when our NAT maps per destination (symmetric): symmetric↔symmetric goes direct when either
//! router maps.
//!
//! The candidate is offered as SDP type `srflx`: like a STUN-learned address it is our public
//! address as the outside sees it, with the socket's address as its base (RFC 8445 §5.1.1), so any
//! ICE agent pairs it correctly. Our description names it (`port_mapped`), so the peer's report can
//! say the path came through a router mapping; ours says so when the peer saw us at that address.
//!
//! Only the router on the route to the given server is asked (`portmap::gateway_towards`): a server
//! on loopback or on-link has no router in between and nothing is sent. The mapping is renewed at
//! half its lifetime while the session lives ([`renew_after`]), and [`Mappings::release`] deletes
//! it on every way out: the end, an error, Ctrl-C.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::portmap::{Lease, Leases, PortMapError, PortMapper, Protocol, gateway_towards};
use crate::punch::report::PortMappingUse;

/// Lifetime asked for the mapping (miniupnpd grants at least 120 s; it is renewed at half).
pub const LIFETIME_S: u32 = 120;
/// Bound on the whole mapping attempt (PCP, NAT-PMP, then UPnP's discovery and SOAP calls).
pub const MAP_WAIT: Duration = Duration::from_secs(5);
/// How long the session waits for the mapping once the STUN servers have answered: a router
/// that answers at once (PCP, NAT-PMP) makes it into the offer; a slower one (UPnP) is trickled.
pub const MAP_GRACE: Duration = Duration::from_millis(200);
/// Bound on deleting every mapping at the end.
pub const RELEASE_WAIT: Duration = Duration::from_secs(3);

/// When to renew a mapping granted for `lifetime_s`: at half its lifetime (RFC 6887 §11.2.1
/// suggests renewing between 1/2 and 5/8), at least 1 s from now.
pub fn renew_after(lifetime_s: u32) -> Duration {
    Duration::from_secs(u64::from(lifetime_s / 2).max(1))
}

#[derive(Debug, Default)]
struct Inner {
    leases: Leases,
    mapper: Mutex<Option<PortMapper>>,
    renewals: AtomicU32,
    /// PCP and NAT-PMP both failed: only UPnP (slow to give up) is left.
    fast_failed: std::sync::atomic::AtomicBool,
    fast_failed_notify: tokio::sync::Notify,
}

/// The mappings a punch session made, shared with whoever deletes them at the end.
#[derive(Debug, Clone, Default)]
pub struct Mappings(Arc<Inner>);

impl Mappings {
    /// [`Self::map`] as a task of its own (aborted when the handle is dropped), so the session
    /// goes on while a slow router answers.
    pub fn spawn_map(&self, towards: SocketAddr, port: u16) -> MapTask {
        let this = self.clone();
        AbortOnDrop(tokio::spawn(async move { this.map(towards, port).await }))
    }

    /// Asks the router on the way to `towards` to map UDP `port` of this host: PCP first, then
    /// NAT-PMP, then UPnP-IGD (discovered at the same time as the PCP request, so a router without
    /// PCP costs no extra round). Bounded by [`MAP_WAIT`].
    pub async fn map(&self, towards: SocketAddr, port: u16) -> (PortMappingUse, Option<Lease>) {
        let mut report = PortMappingUse::default();
        let mapper = match towards.ip() {
            IpAddr::V4(v4) => gateway_towards(v4).ok_or(PortMapError::NoRouterTowards(towards)),
            IpAddr::V6(_) => Err(PortMapError::NoRouterTowards(towards)),
        }
        .and_then(PortMapper::new);
        let mapper = match mapper {
            Ok(m) => m,
            Err(e) => {
                report.error = Some(e.to_string());
                return (report, None);
            }
        };
        report.gateway = Some(mapper.gateway);
        if let Ok(mut m) = self.0.mapper.lock() {
            *m = Some(mapper.clone());
        }
        let attempt = async {
            let leases = &self.0.leases;
            // SSDP waits out its whole schedule on a router without UPnP: it runs beside PCP.
            let mut discovery = {
                let m = mapper.clone();
                AbortOnDrop(tokio::spawn(async move { m.upnp_discover().await }))
            };
            let pcp = mapper.map(Protocol::Pcp, port, LIFETIME_S, None, leases).await;
            let mut errors = Vec::new();
            match pcp {
                Ok(l) => return (Some(l), errors),
                Err(e) => errors.push(e.to_string()),
            }
            match mapper.map(Protocol::NatPmp, port, LIFETIME_S, None, leases).await {
                Ok(l) => return (Some(l), errors),
                Err(e) => errors.push(e.to_string()),
            }
            self.0.fast_failed.store(true, Ordering::SeqCst);
            self.0.fast_failed_notify.notify_waiters();
            let upnp = match (&mut discovery.0).await {
                Ok(r) => r,
                Err(e) => Err(PortMapError::Io(Protocol::Upnp, format!("discovery task: {e}"))),
            };
            match upnp {
                Ok(svc) => match mapper.map(Protocol::Upnp, port, LIFETIME_S, Some(&svc), leases).await {
                    Ok(l) => return (Some(l), errors),
                    Err(e) => errors.push(e.to_string()),
                },
                Err(e) => errors.push(e.to_string()),
            }
            (None, errors)
        };
        let (lease, errors) = match tokio::time::timeout(MAP_WAIT, attempt).await {
            Ok(r) => r,
            // A request still out may have made a mapping: it is in the leases, deleted at the end.
            Err(_) => (None, vec![format!("the router {} did not map within {MAP_WAIT:?}", mapper.gateway)]),
        };
        match &lease {
            Some(l) => {
                report.protocol = Some(l.protocol);
                report.external = l.external;
                report.lifetime_s = Some(l.lifetime_s);
            }
            None => report.error = Some(errors.join("; ")),
        }
        (report, lease.filter(|l| l.external.is_some()))
    }

    /// Renews `lease` at half its lifetime until the returned task is aborted (see [`Renewal`]).
    pub fn keep_renewed(&self, lease: Lease) -> Renewal {
        let this = self.clone();
        let task = tokio::spawn(async move {
            let mut lease = lease;
            loop {
                tokio::time::sleep(renew_after(lease.lifetime_s)).await;
                let Some(mapper) = this.0.mapper.lock().ok().and_then(|m| m.clone()) else { return };
                match mapper.renew(&lease, &this.0.leases).await {
                    Ok(l) => {
                        tracing::debug!(protocol = %l.protocol, external = ?l.external, "port mapping renewed");
                        this.0.renewals.fetch_add(1, Ordering::Relaxed);
                        lease = l;
                    }
                    // Tried again at the next half-lifetime (the old mapping still runs until then).
                    Err(e) => tracing::warn!("renewing the port mapping: {e}"),
                }
            }
        });
        AbortOnDrop(task)
    }

    /// Resolves once PCP and NAT-PMP have both failed (the session then stops waiting for a mapping
    /// that could only come from UPnP, whose discovery takes its whole schedule to give up).
    pub async fn fast_protocols_failed(&self) {
        loop {
            let notified = self.0.fast_failed_notify.notified();
            if self.0.fast_failed.load(Ordering::SeqCst) {
                return;
            }
            notified.await;
        }
    }

    /// How many times the mapping was renewed.
    pub fn renewals(&self) -> u32 {
        self.0.renewals.load(Ordering::Relaxed)
    }

    /// Deletes every mapping still on the router, bounded by [`RELEASE_WAIT`]. Returns None when
    /// none was made, else whether all went; failures are logged with what to do.
    pub async fn release(&self) -> Option<bool> {
        let mapper = self.0.mapper.lock().ok().and_then(|m| m.clone())?;
        if self.0.leases.outstanding().is_empty() {
            return Some(true);
        }
        match tokio::time::timeout(RELEASE_WAIT, self.0.leases.delete_all(&mapper)).await {
            Ok(errors) if errors.is_empty() => Some(true),
            Ok(errors) => {
                for e in errors {
                    tracing::warn!(
                        "deleting the port mapping on {}: {e} (it expires by itself within {LIFETIME_S} s)",
                        mapper.gateway
                    );
                }
                Some(false)
            }
            Err(_) => {
                tracing::warn!(
                    "the router {} did not confirm deleting the port mapping within {RELEASE_WAIT:?} \
                     (it expires by itself within {LIFETIME_S} s)",
                    mapper.gateway
                );
                Some(false)
            }
        }
    }
}

/// A task that ends when its handle is dropped.
#[derive(Debug)]
pub struct AbortOnDrop<T>(pub tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A mapping attempt running beside the session ([`Mappings::spawn_map`]).
pub type MapTask = AbortOnDrop<(PortMappingUse, Option<Lease>)>;
/// The renewal task ([`Mappings::keep_renewed`]); dropping it stops renewing.
pub type Renewal = AbortOnDrop<()>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mapping_is_renewed_at_half_its_lifetime_never_in_a_tight_loop() {
        assert_eq!(renew_after(120), Duration::from_secs(60));
        assert_eq!(renew_after(7200), Duration::from_secs(3600));
        assert_eq!(renew_after(1), Duration::from_secs(1));
        assert_eq!(renew_after(0), Duration::from_secs(1));
    }

    #[tokio::test]
    async fn a_server_on_loopback_has_no_router_to_ask_and_nothing_is_sent() {
        let m = Mappings::default();
        let (rep, lease) = m.map("127.0.0.1:3478".parse().unwrap(), 40000).await;
        assert!(lease.is_none());
        assert_eq!(rep.gateway, None);
        assert!(rep.error.as_deref().unwrap_or("").contains("no IPv4 router on the path"), "{rep:?}");
        assert_eq!(m.release().await, None, "nothing made, nothing to delete");
    }
}

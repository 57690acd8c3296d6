//! Fitting the relay's caps to the file-descriptor limit (issue #13): at
//! start natkit raises RLIMIT_NOFILE to the hard limit, then lowers
//! `--max-allocations` and `--max-connections` to what that many descriptors
//! can hold, so running out is a 508 or a refused connection, never an accept
//! loop on EMFILE or a UDP client refused because of a TCP flood.

use crate::relay::options::RelayOptions;

/// Descriptors kept for everything but connections and relayed sockets:
/// listeners, epoll sets, wakers, the metrics endpoint, log files.
const RESERVED_FDS: u64 = 64;

/// The descriptor limit in force and, when it is too low for the configured
/// caps, the warning that says what it lowered.
pub struct Descriptors {
    pub limit: u64,
    pub warning: Option<String>,
}

/// Lowers the connection and allocation caps to what `nofile` descriptors can
/// hold, so running out of descriptors is a refused connection or a 508,
/// never a stuck accept loop or a UDP client refused because of a TCP flood.
/// Every connection, every peer connection of a TCP allocation (RFC 6062)
/// and every relayed socket takes one descriptor; beyond the listeners'
/// share, a third of the rest at most goes to connections, as much to peer
/// connections (their cap is `--max-connections` too) and the remaining third
/// (at least) to allocations. Before peer connections had a share, one user's
/// TCP allocations could hold so many that a UDP Allocate found no descriptor
/// for its relayed socket (508) below the allocation cap.
pub fn fit_descriptors(plan: &mut RelayOptions, nofile: u64) -> Descriptors {
    let listeners = (plan.driver.listen.len() + plan.driver.listen_udp_only.len()) * plan.driver.workers
        + plan.driver.listen.len()
        + plan.driver.tls_listen.len();
    let budget = nofile.saturating_sub(RESERVED_FDS + listeners as u64).max(2);
    let conns = (plan.driver.limits.max_connections as u64).min(budget / 3).max(1);
    let allocs = (plan.core.max_allocations as u64).min(budget.saturating_sub(2 * conns)).max(1);
    let (was_allocs, was_conns) = (plan.core.max_allocations as u64, plan.driver.limits.max_connections as u64);
    // A cap trimmed by a few descriptors (the defaults under a 20,000 limit) is not worth a
    // warning; one cut to less than nine tenths of what was configured is.
    let noticeably = |now: u64, was: u64| now.saturating_mul(10) < was.saturating_mul(9);
    let mut lowered = Vec::new();
    if allocs < plan.core.max_allocations as u64 {
        let was = match plan.core.max_allocations {
            usize::MAX => "unlimited".to_string(),
            n => n.to_string(),
        };
        lowered.push(format!("--max-allocations {was} to {allocs}"));
        plan.core.max_allocations = allocs as usize;
    }
    if conns < plan.driver.limits.max_connections as u64 {
        lowered.push(format!("--max-connections {} to {conns}", plan.driver.limits.max_connections));
        plan.driver.limits.max_connections = conns as usize;
    }
    let worth_saying = noticeably(allocs, was_allocs) || noticeably(conns, was_conns);
    let warning = (!lowered.is_empty() && worth_saying).then(|| {
        format!(
            "the file-descriptor limit ({nofile}, the hard limit could not be raised further) caps {}: raise it \
             (systemd LimitNOFILE=65536, or `ulimit -Hn` before starting) to serve more",
            lowered.join(" and ")
        )
    });
    Descriptors { limit: nofile, warning }
}

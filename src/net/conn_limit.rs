//! What a server facing the internet needs around `accept()`, shared by
//! `relay` (TCP/TLS) and `signal` (HTTP/WebSocket):
//!
//! - [`raise_nofile_limit`]: lift RLIMIT_NOFILE's soft limit to the hard one
//!   at start (systemd and most shells give 1,024, far below what a server
//!   with thousands of clients needs);
//! - [`ConnLimiter`]: caps on concurrent connections, in total and per source
//!   IP, taken at accept — before any byte is read — and released when the
//!   connection's [`ConnPermit`] is dropped;
//! - [`accept_with_backoff`]: `accept()` that treats running out of file
//!   descriptors (EMFILE/ENFILE) or kernel memory as "wait and retry" with a
//!   growing pause instead of a busy loop, logging once per episode.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

/// Raises the soft RLIMIT_NOFILE to the hard limit and returns the soft limit
/// now in force (unchanged when raising fails, e.g. in a restricted sandbox).
// rlim_t is u64 here but u32 on 32-bit targets: the cast is needed there.
#[allow(clippy::unnecessary_cast)]
pub fn raise_nofile_limit() -> u64 {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        if lim.rlim_cur < lim.rlim_max {
            let wanted = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &wanted) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
    }
    #[allow(clippy::unnecessary_cast)] // rlim_t is u64 on Linux, not on every target
    let soft = lim.rlim_cur as u64;
    soft
}

/// Why a connection was refused at accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnRefusal {
    /// The server holds its `total` cap of connections.
    Total,
    /// This source IP holds its `per_ip` cap.
    PerIp,
}

impl ConnRefusal {
    /// Label value for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            ConnRefusal::Total => "total",
            ConnRefusal::PerIp => "per_ip",
        }
    }
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

/// Concurrent-connection caps, total and per source IP. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ConnLimiter {
    total_cap: usize,
    per_ip_cap: usize,
    counts: Arc<Mutex<Counts>>,
}

impl ConnLimiter {
    pub fn new(total_cap: usize, per_ip_cap: usize) -> Self {
        ConnLimiter { total_cap, per_ip_cap, counts: Arc::new(Mutex::new(Counts::default())) }
    }

    /// Takes a slot for a connection from `ip`, or says which cap refuses it.
    pub fn try_acquire(&self, ip: IpAddr) -> Result<ConnPermit, ConnRefusal> {
        let ip = crate::net::address_class::canonical(ip);
        let mut c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if c.total >= self.total_cap {
            return Err(ConnRefusal::Total);
        }
        let n = c.per_ip.entry(ip).or_insert(0);
        if *n >= self.per_ip_cap {
            return Err(ConnRefusal::PerIp);
        }
        *n += 1;
        c.total += 1;
        Ok(ConnPermit { ip, counts: self.counts.clone() })
    }

    /// Connections holding a slot now.
    pub fn open(&self) -> usize {
        self.counts.lock().map(|c| c.total).unwrap_or(0)
    }
}

/// A held connection slot; dropping it frees the slot.
#[derive(Debug)]
pub struct ConnPermit {
    ip: IpAddr,
    counts: Arc<Mutex<Counts>>,
}

impl Drop for ConnPermit {
    fn drop(&mut self) {
        let mut c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        c.total = c.total.saturating_sub(1);
        if let Some(n) = c.per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                c.per_ip.remove(&self.ip);
            }
        }
    }
}

/// True for accept errors that mean "out of a resource": retrying at once
/// would spin (the pending connection stays in the backlog).
fn is_resource_exhaustion(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM))
}

/// Accepts the next connection. Errors that concern only the one pending
/// connection (ECONNABORTED and the like) are skipped; running out of file
/// descriptors pauses accepting with a backoff from 10 ms to 1 s, increments
/// `exhausted` once per pause and logs a warning once per episode, so a
/// descriptor flood costs neither a CPU nor the log.
pub async fn accept_with_backoff(listener: &TcpListener, exhausted: &AtomicU64) -> (TcpStream, SocketAddr) {
    let mut pause = Duration::from_millis(10);
    let mut warned = false;
    loop {
        match listener.accept().await {
            Ok(conn) => return conn,
            Err(e) if is_resource_exhaustion(&e) => {
                exhausted.fetch_add(1, Ordering::Relaxed);
                if !warned {
                    let local = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
                    tracing::warn!(%local, "accept: {e}; pausing new connections (raise the file-descriptor limit or lower the connection caps)");
                    warned = true;
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(1));
            }
            Err(e) => tracing::debug!("accept: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_ip_cap_refuses_the_extra_connection_and_frees_on_drop() {
        let l = ConnLimiter::new(10, 2);
        let a: IpAddr = "203.0.113.5".parse().unwrap();
        let b: IpAddr = "203.0.113.6".parse().unwrap();
        let p1 = l.try_acquire(a).unwrap();
        let _p2 = l.try_acquire(a).unwrap();
        assert_eq!(l.try_acquire(a).unwrap_err(), ConnRefusal::PerIp);
        let _p3 = l.try_acquire(b).unwrap();
        drop(p1);
        assert!(l.try_acquire(a).is_ok());
    }

    #[test]
    fn total_cap_refuses_any_address_once_full() {
        let l = ConnLimiter::new(2, 5);
        let _a = l.try_acquire("203.0.113.1".parse().unwrap()).unwrap();
        let _b = l.try_acquire("203.0.113.2".parse().unwrap()).unwrap();
        assert_eq!(l.try_acquire("203.0.113.3".parse().unwrap()).unwrap_err(), ConnRefusal::Total);
        assert_eq!(l.open(), 2);
    }

    #[test]
    fn ipv4_mapped_ipv6_counts_as_the_ipv4_address() {
        let l = ConnLimiter::new(10, 1);
        let _a = l.try_acquire("203.0.113.1".parse().unwrap()).unwrap();
        assert_eq!(l.try_acquire("::ffff:203.0.113.1".parse().unwrap()).unwrap_err(), ConnRefusal::PerIp);
    }

    #[test]
    fn raising_the_descriptor_limit_reports_a_usable_number() {
        assert!(raise_nofile_limit() >= 64);
    }
}

//! Starts the sans-IO [`Birthday`] core on [`udp::drive`](crate::net::udp::drive), the one UDP
//! driver loop: the prober on the session's own socket (its birthday datagrams diverted by the
//! mux, [`udp::drive_diverted`]), the opener on many fresh sockets of its own. The result says
//! which socket found the path, so the opener can move QUIC onto it.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};

use crate::net::datagram::Diverted;
use crate::net::udp;
use crate::punch::birthday::{Birthday, Outcome, Side};
use crate::punch::mux::StunDatagram;

/// How an attempt ended.
#[derive(Debug)]
pub enum BirthdayResult {
    /// A path to `remote`; `socket` is the opener's winning socket (the prober's is the
    /// session's own, `None`).
    Found {
        socket: Option<Arc<UdpSocket>>,
        remote: SocketAddr,
        probes: u32,
    },
    GaveUp {
        probes: u32,
    },
}

impl Diverted for StunDatagram {
    fn source(&self) -> SocketAddr {
        self.from
    }
    fn payload(&self) -> &[u8] {
        &self.bytes
    }
}

/// Starts the attempt. The prober sends from `main` and reads `diverted` (what the mux set
/// aside for it); the opener binds its own sockets (as many as its [`Side`] says). The attempt
/// stops at once when the receiver is dropped (the session has its path, or ended).
pub async fn spawn(
    mut core: Birthday,
    side: &Side,
    main: Arc<UdpSocket>,
    mut diverted: mpsc::UnboundedReceiver<StunDatagram>,
) -> std::io::Result<oneshot::Receiver<BirthdayResult>> {
    let (mut done, rx) = oneshot::channel();
    match side {
        Side::Prober { .. } => {
            tokio::spawn(async move {
                let sockets = [main];
                tokio::select! {
                    _ = udp::drive_diverted(&sockets, &mut diverted, &mut core) => {
                        if let Some(r) = result(&core, None) {
                            let _ = done.send(r);
                        }
                    }
                    _ = done.closed() => {}
                }
            });
        }
        Side::Opener { sockets: n, .. } => {
            let mut sockets = Vec::with_capacity(*n);
            for _ in 0..*n {
                sockets.push(Arc::new(UdpSocket::bind(SocketAddr::from(([0, 0, 0, 0], 0))).await?));
            }
            tokio::spawn(async move {
                tokio::select! {
                    // The driver stops reading when the core is done, before QUIC takes the
                    // winning socket over.
                    _ = udp::drive(&sockets, &mut core) => {
                        if let Some(r) = result(&core, Some(&sockets)) {
                            let _ = done.send(r);
                        }
                    }
                    _ = done.closed() => {}
                }
            });
        }
    }
    Ok(rx)
}

/// The verdict of a finished attempt; `own` are the opener's sockets. None: the driver stopped
/// without one (the mux closed the prober's inbox: the session is ending).
fn result(core: &Birthday, own: Option<&[Arc<UdpSocket>]>) -> Option<BirthdayResult> {
    Some(match core.outcome()? {
        Outcome::Found { socket, remote, probes } => BirthdayResult::Found {
            socket: own.and_then(|s| s.get(*socket).cloned()),
            remote: *remote,
            probes: *probes,
        },
        Outcome::GaveUp { probes } => BirthdayResult::GaveUp { probes: *probes },
    })
}

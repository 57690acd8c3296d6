//! Runs the sans-IO [`Birthday`] core on real sockets: the prober on the session's own socket
//! (its birthday datagrams diverted by the mux), the opener on many fresh sockets of its own.
//! The result says which socket found the path, so the opener can move QUIC onto it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

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

type Inbox = mpsc::UnboundedReceiver<(usize, SocketAddr, Vec<u8>)>;

/// Starts the attempt. The prober sends from `main` and reads `diverted` (what the mux set
/// aside for it); the opener binds its own sockets (as many as its [`Side`] says).
pub async fn spawn(
    core: Birthday,
    side: &Side,
    main: Arc<UdpSocket>,
    mut diverted: mpsc::UnboundedReceiver<StunDatagram>,
) -> std::io::Result<oneshot::Receiver<BirthdayResult>> {
    let (tx, rx) = oneshot::channel();
    match side {
        Side::Prober { .. } => {
            let (in_tx, inbox) = mpsc::unbounded_channel();
            let forward = tokio::spawn(async move {
                while let Some(d) = diverted.recv().await {
                    if in_tx.send((0, d.from, d.bytes)).is_err() {
                        break;
                    }
                }
            });
            tokio::spawn(drive(core, vec![main], inbox, vec![forward], false, tx));
        }
        Side::Opener { sockets, .. } => {
            let (in_tx, inbox) = mpsc::unbounded_channel();
            let mut socks = Vec::with_capacity(*sockets);
            let mut readers = Vec::with_capacity(*sockets);
            for i in 0..*sockets {
                let s = Arc::new(UdpSocket::bind(SocketAddr::from(([0, 0, 0, 0], 0))).await?);
                let (r, in_tx) = (s.clone(), in_tx.clone());
                readers.push(tokio::spawn(async move {
                    let mut buf = vec![0u8; 2048];
                    loop {
                        match r.recv_from(&mut buf).await {
                            Ok((n, from)) => {
                                if in_tx.send((i, from, buf[..n].to_vec())).is_err() {
                                    break;
                                }
                            }
                            // An ICMP error for an earlier datagram; the socket is still good.
                            Err(_) => continue,
                        }
                    }
                }));
                socks.push(s);
            }
            tokio::spawn(drive(core, socks, inbox, readers, true, tx));
        }
    }
    Ok(rx)
}

async fn drive(
    mut core: Birthday,
    sockets: Vec<Arc<UdpSocket>>,
    mut inbox: Inbox,
    readers: Vec<JoinHandle<()>>,
    own_sockets: bool,
    mut done: oneshot::Sender<BirthdayResult>,
) {
    loop {
        let now = Instant::now();
        while let Some(t) = core.poll_transmit(now) {
            if let Some(s) = sockets.get(t.socket) {
                // Never wait on a full buffer: a dropped probe is one more of thousands.
                let _ = s.try_send_to(&t.payload, t.destination);
            }
        }
        if let Some(outcome) = core.outcome().cloned() {
            // Stop reading before QUIC takes the winning socket over.
            for r in &readers {
                r.abort();
            }
            let result = match outcome {
                Outcome::Found { socket, remote, probes } => BirthdayResult::Found {
                    socket: if own_sockets { sockets.get(socket).cloned() } else { None },
                    remote,
                    probes,
                },
                Outcome::GaveUp { probes } => BirthdayResult::GaveUp { probes },
            };
            let _ = done.send(result);
            return;
        }
        let wake = core.poll_timeout().unwrap_or(now);
        tokio::select! {
            // The session has its path (or ended): stop probing at once.
            _ = done.closed() => {
                for r in &readers {
                    r.abort();
                }
                return;
            },
            d = inbox.recv() => match d {
                Some((i, from, bytes)) => {
                    core.handle_input(i, from, &bytes, Instant::now());
                }
                None => return,
            },
            _ = tokio::time::sleep_until(wake.into()) => core.handle_timeout(Instant::now()),
        }
    }
}

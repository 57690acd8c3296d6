//! STUN over TCP and TLS (RFC 8489 §6.2.2): connecting, framing, and a
//! transaction driver. Frames are STUN messages, or TURN ChannelData
//! messages padded to four bytes (RFC 8656 §12.5).

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpSocket;

use crate::net::server_spec::Host;
use crate::net::tls::TlsClient;
use crate::stun::message::{HEADER_LEN, framed_len};
use crate::stun::transaction::{ClientTransaction, Outcome};

pub trait ByteStream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> ByteStream for T {}

/// A connected TCP or TLS stream to a STUN/TURN server.
pub struct StreamConn {
    io: Box<dyn ByteStream>,
    /// Bytes read but not yet returned as a frame: keeps `recv_frame` cancel-safe in `select!`.
    pending: Vec<u8>,
    pub local: SocketAddr,
    pub peer: SocketAddr,
}

/// Why a stream could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("TCP connection to {addr} refused: nothing listens there")]
    Refused { addr: SocketAddr },
    #[error("TCP connection to {addr} timed out after {secs:.1} s")]
    TimedOut { addr: SocketAddr, secs: f64 },
    #[error("TCP connection to {addr} failed: {source}")]
    Io { addr: SocketAddr, source: io::Error },
    #[error("TLS handshake with {addr} failed: {why}")]
    Tls { addr: SocketAddr, why: String },
}

/// Connects over TCP, and over TLS when `tls` is given.
pub async fn connect(
    addr: SocketAddr,
    local: Option<SocketAddr>,
    host: &Host,
    tls: Option<&TlsClient>,
    timeout: Duration,
) -> Result<StreamConn, ConnectError> {
    let started = Instant::now();
    let sock = if addr.is_ipv4() { TcpSocket::new_v4() } else { TcpSocket::new_v6() }
        .map_err(|source| ConnectError::Io { addr, source })?;
    if let Some(l) = local {
        sock.bind(l).map_err(|source| ConnectError::Io { addr, source })?;
    }
    let tcp = match tokio::time::timeout(timeout, sock.connect(addr)).await {
        Err(_) => return Err(ConnectError::TimedOut { addr, secs: timeout.as_secs_f64() }),
        Ok(Err(e)) if e.kind() == io::ErrorKind::ConnectionRefused => return Err(ConnectError::Refused { addr }),
        Ok(Err(source)) => return Err(ConnectError::Io { addr, source }),
        Ok(Ok(s)) => s,
    };
    let _ = tcp.set_nodelay(true);
    let local = tcp.local_addr().map_err(|source| ConnectError::Io { addr, source })?;
    let io: Box<dyn ByteStream> = match tls {
        None => Box::new(tcp),
        Some(client) => {
            let name =
                crate::net::tls::server_name(host).map_err(|e| ConnectError::Tls { addr, why: e.to_string() })?;
            let connector = tokio_rustls::TlsConnector::from(client.config.clone());
            let left = timeout.saturating_sub(started.elapsed());
            match tokio::time::timeout(left, connector.connect(name, tcp)).await {
                Err(_) => {
                    return Err(ConnectError::Tls {
                        addr,
                        why: format!("no handshake within {:.1} s", timeout.as_secs_f64()),
                    });
                }
                Ok(Err(e)) => {
                    let why = match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
                        Some(te) => format!(
                            "certificate {} (use --ca FILE, or --insecure to accept it)",
                            crate::net::tls::describe_cert_error(te)
                        ),
                        None => e.to_string(),
                    };
                    return Err(ConnectError::Tls { addr, why });
                }
                Ok(Ok(s)) => Box::new(s),
            }
        }
    };
    Ok(StreamConn { io, pending: Vec::new(), local, peer: addr })
}

impl StreamConn {
    pub fn from_parts(io: Box<dyn ByteStream>, local: SocketAddr, peer: SocketAddr) -> Self {
        StreamConn { io, pending: Vec::new(), local, peer }
    }

    pub async fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.io.write_all(bytes).await?;
        self.io.flush().await
    }

    /// Reads one frame: a STUN message or a padded ChannelData message.
    /// Cancel-safe: bytes of a partly received frame stay buffered.
    pub async fn recv_frame(&mut self) -> io::Result<Vec<u8>> {
        let mut chunk = [0u8; 16 * 1024];
        loop {
            if let Some(frame) = take_frame(&mut self.pending)? {
                return Ok(frame);
            }
            let n = self.io.read(&mut chunk).await?;
            if n == 0 {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed"));
            }
            self.pending.extend_from_slice(&chunk[..n]);
        }
    }

    pub fn into_inner(self) -> Box<dyn ByteStream> {
        self.io
    }
}

/// Splits one complete frame off the front of `buf`, if there is one. The
/// caller keeps `buf` across reads, so a read cut short by a timeout loses
/// nothing (used by the client and by the relay's connections).
pub(crate) fn take_frame(buf: &mut Vec<u8>) -> io::Result<Option<Vec<u8>>> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = u16::from_be_bytes([buf[2], buf[3]]) as usize;
    let (wire, keep) = match buf[0] >> 6 {
        0 => (HEADER_LEN + len, HEADER_LEN + len),
        1 => (4 + len.div_ceil(4) * 4, 4 + len),
        _ => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("bytes that are neither STUN nor ChannelData (first byte {:#04x})", buf[0]),
            ));
        }
    };
    if buf.len() < wire {
        return Ok(None);
    }
    let mut frame: Vec<u8> = buf.drain(..wire).collect();
    frame.truncate(keep);
    Ok(Some(frame))
}

/// Reads one STUN or ChannelData frame from a stream.
pub async fn read_frame<R: AsyncRead + Unpin + ?Sized>(r: &mut R) -> io::Result<Vec<u8>> {
    let mut head = [0u8; 4];
    r.read_exact(&mut head).await?;
    match head[0] >> 6 {
        0 => {
            let mut header = [0u8; HEADER_LEN];
            header[..4].copy_from_slice(&head);
            r.read_exact(&mut header[4..]).await?;
            let total = framed_len(&header);
            let mut msg = Vec::with_capacity(total);
            msg.extend_from_slice(&header);
            msg.resize(total, 0);
            r.read_exact(&mut msg[HEADER_LEN..]).await?;
            Ok(msg)
        }
        1 => {
            let len = u16::from_be_bytes([head[2], head[3]]) as usize;
            let padded = len.div_ceil(4) * 4;
            let mut msg = vec![0u8; 4 + padded];
            msg[..4].copy_from_slice(&head);
            r.read_exact(&mut msg[4..]).await?;
            msg.truncate(4 + len);
            Ok(msg)
        }
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("the server sent bytes that are neither STUN nor ChannelData (first byte {:#04x})", head[0]),
        )),
    }
}

/// How a transaction over a stream ended.
#[derive(Debug)]
pub enum StreamEnd {
    Response(Outcome),
    TimedOut {
        elapsed: Duration,
    },
    /// The connection broke or carried something unreadable.
    Broken(String),
}

/// Sends the request once and waits for the frame with its transaction id.
pub async fn run_transaction(conn: &mut StreamConn, mut tx: ClientTransaction) -> StreamEnd {
    loop {
        let now = Instant::now();
        while let Some(bytes) = tx.poll_transmit(now) {
            let bytes = bytes.to_vec();
            if let Err(e) = conn.send(&bytes).await {
                return StreamEnd::Broken(format!("sending to {}: {e}", conn.peer));
            }
        }
        tx.handle_timeout(now);
        if let Some(o) = tx.take_outcome() {
            return match o {
                Outcome::TimedOut { elapsed, .. } => StreamEnd::TimedOut { elapsed },
                r => StreamEnd::Response(r),
            };
        }
        let Some(wake) = tx.poll_timeout() else { continue };
        tokio::select! {
            f = conn.recv_frame() => match f {
                Ok(frame) => {
                    if tx.handle_response(&frame, Instant::now())
                        && let Some(o) = tx.take_outcome()
                    {
                        return StreamEnd::Response(o);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    return StreamEnd::Broken(format!("{} closed the connection without answering", conn.peer));
                }
                Err(e) => return StreamEnd::Broken(format!("reading from {}: {e}", conn.peer)),
            },
            _ = tokio::time::sleep_until(wake.into()) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_stun_and_padded_channel_data() {
        let id = crate::stun::message::new_transaction_id();
        let stun = crate::stun::message::binding_request(id);
        let mut bytes = stun.clone();
        bytes.extend_from_slice(&[0x40, 0x00, 0x00, 0x05, 1, 2, 3, 4, 5, 0, 0, 0]);
        let mut r = &bytes[..];
        assert_eq!(read_frame(&mut r).await.expect("stun"), stun);
        assert_eq!(read_frame(&mut r).await.expect("channel data"), vec![0x40, 0, 0, 5, 1, 2, 3, 4, 5]);
        assert!(read_frame(&mut r).await.is_err());
    }

    #[test]
    fn buffered_framing_waits_for_whole_frames() {
        let id = crate::stun::message::new_transaction_id();
        let stun = crate::stun::message::binding_request(id);
        let mut wire = stun.clone();
        wire.extend_from_slice(&[0x40, 0x01, 0x00, 0x02, 9, 9, 0, 0]);
        let mut buf = Vec::new();
        let mut frames = Vec::new();
        for b in wire {
            buf.push(b);
            while let Some(f) = take_frame(&mut buf).expect("valid") {
                frames.push(f);
            }
        }
        assert_eq!(frames, vec![stun, vec![0x40, 0x01, 0x00, 0x02, 9, 9]]);
        assert!(buf.is_empty());
        assert!(take_frame(&mut vec![0xC0, 0, 0, 0]).is_err());
    }

    #[tokio::test]
    async fn junk_is_an_error_not_a_panic() {
        let mut r = &[0xFFu8, 0, 0, 0, 1, 2][..];
        assert!(read_frame(&mut r).await.is_err());
    }
}

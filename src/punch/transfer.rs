//! What runs over the punched QUIC connection: a file with its size and
//! SHA-256 checked end to end, or stdin/stdout piped both ways.
//!
//! File protocol on one bidirectional stream: the sender writes a JSON header
//! line `{"name":…,"size":N}`, then N bytes, then finishes; the receiver
//! answers with `{"bytes":N,"sha256":"…"}` and the sender compares it with
//! its own digest.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Debug, Serialize, Deserialize)]
struct Header {
    name: String,
    size: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct Receipt {
    bytes: u64,
    sha256: String,
}

/// What moved and how fast.
#[derive(Debug, Clone)]
pub struct Moved {
    pub bytes: u64,
    pub sha256: Option<String>,
    pub elapsed: Duration,
}

/// Read and write size on both ends: large enough that a file read or write (each a hop to
/// tokio's blocking pool) is rare next to the QUIC packets it fills, small enough to stay in cache.
const CHUNK: usize = 512 * 1024;
const MAX_HEADER: usize = 4096;

async fn read_line(recv: &mut quinn::RecvStream) -> anyhow::Result<String> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        let n = recv.read(&mut byte).await?.unwrap_or(0);
        if n == 0 {
            bail!("the peer closed the stream before a full line");
        }
        if byte[0] == b'\n' {
            return Ok(String::from_utf8_lossy(&line).into_owned());
        }
        line.push(byte[0]);
        if line.len() > MAX_HEADER {
            bail!("the peer sent a header line over {MAX_HEADER} bytes");
        }
    }
}

/// Sends `path`; returns once the receiver confirmed the same SHA-256.
pub async fn send_file(
    conn: &quinn::Connection,
    path: &Path,
    progress: &indicatif::ProgressBar,
) -> anyhow::Result<Moved> {
    let mut file = tokio::fs::File::open(path).await.with_context(|| format!("opening {}", path.display()))?;
    let size = file.metadata().await?.len();
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let (mut send, mut recv) = conn.open_bi().await.context("opening a QUIC stream")?;
    let started = Instant::now();
    let mut header = serde_json::to_vec(&Header { name, size })?;
    header.push(b'\n');
    send.write_all(&header).await?;
    progress.set_length(size);
    let mut hash = Sha256::new();
    let mut sent = 0u64;
    loop {
        // A fresh buffer per chunk, handed to quinn as it is (no copy into its send buffer).
        let mut buf = Vec::with_capacity(CHUNK);
        let n = file.read_buf(&mut buf).await?;
        if n == 0 {
            break;
        }
        hash.update(&buf);
        send.write_chunk(buf.into()).await?;
        sent += n as u64;
        progress.set_position(sent);
    }
    if sent != size {
        bail!("{} changed size while sending ({size} → {sent} bytes)", path.display());
    }
    send.finish()?;
    let ours = hex(&hash.finalize());
    let receipt: Receipt =
        serde_json::from_str(&read_line(&mut recv).await.context("waiting for the receiver's receipt")?)
            .context("the receiver's receipt is not JSON")?;
    let elapsed = started.elapsed();
    if receipt.bytes != size || receipt.sha256 != ours {
        bail!("the receiver got {} bytes with SHA-256 {}, we sent {size} with {ours}", receipt.bytes, receipt.sha256);
    }
    Ok(Moved { bytes: size, sha256: Some(ours), elapsed })
}

/// Receives one file into `path` and answers with its SHA-256.
pub async fn recv_file(
    conn: &quinn::Connection,
    path: &Path,
    progress: &indicatif::ProgressBar,
) -> anyhow::Result<Moved> {
    let (mut send, mut recv) = conn.accept_bi().await.context("waiting for the sender's stream")?;
    let started = Instant::now();
    let header: Header =
        serde_json::from_str(&read_line(&mut recv).await?).context("the sender's header is not natkit punch JSON")?;
    progress.set_length(header.size);
    let file = tokio::fs::File::create(path).await.with_context(|| format!("creating {}", path.display()))?;
    // quinn hands over what has arrived, often a few packets' worth: collect it into large writes.
    let mut file = tokio::io::BufWriter::with_capacity(CHUNK, file);
    let mut hash = Sha256::new();
    let mut got = 0u64;
    while got < header.size {
        let want = (header.size - got).min(CHUNK as u64) as usize;
        // What quinn holds, without a copy out of it.
        let Some(chunk) = recv.read_chunk(want, true).await? else {
            bail!("the sender stopped after {got} of {} bytes", header.size);
        };
        let data = &chunk.bytes;
        hash.update(data);
        file.write_all(data).await?;
        got += data.len() as u64;
        progress.set_position(got);
    }
    file.flush().await?;
    let digest = hex(&hash.finalize());
    let mut receipt = serde_json::to_vec(&Receipt { bytes: got, sha256: digest.clone() })?;
    receipt.push(b'\n');
    send.write_all(&receipt).await?;
    send.finish()?;
    // Wait until the sender has read the receipt and closed the connection.
    let _ = tokio::time::timeout(Duration::from_secs(10), conn.closed()).await;
    Ok(Moved { bytes: got, sha256: Some(digest), elapsed: started.elapsed() })
}

/// Pipes stdin to the peer and the peer to stdout until both sides end.
pub async fn stdio(conn: &quinn::Connection, opener: bool) -> anyhow::Result<Moved> {
    let (mut send, mut recv) = if opener { conn.open_bi().await? } else { conn.accept_bi().await? };
    let started = Instant::now();
    let up = async {
        let mut stdin = tokio::io::stdin();
        let n = tokio::io::copy(&mut stdin, &mut send).await?;
        send.finish()?;
        // Closing the connection before the peer has read everything would cut it off.
        send.stopped().await?;
        anyhow::Ok(n)
    };
    let down = async {
        let mut stdout = tokio::io::stdout();
        let n = tokio::io::copy(&mut recv, &mut stdout).await?;
        stdout.flush().await?;
        anyhow::Ok(n)
    };
    let (a, b) = tokio::join!(up, down);
    Ok(Moved { bytes: a? + b?, sha256: None, elapsed: started.elapsed() })
}

fn hex(d: &[u8]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

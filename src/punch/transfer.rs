//! What runs over the punched QUIC connection: a file with its size and
//! SHA-256 checked end to end, or stdin/stdout piped both ways.
//!
//! File protocol on one bidirectional stream: the sender writes a JSON header
//! line `{"name":…,"size":N}`, then N bytes, then finishes; the receiver
//! answers with `{"bytes":N,"sha256":"…"}` and the sender compares it with
//! its own digest.

use std::io::{self, IoSlice, Read, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::punch::leased_file::{self, LeaseBreaks, LeasedFile, Mapping, NoLease};

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
///
/// The file is mapped under a read lease when it can be (`leased_file`: no copy of its bytes
/// on the way to quinn), else read in chunks. Either way a file that changes while it is sent
/// ends the transfer with an error that says so.
pub async fn send_file(
    conn: &quinn::Connection,
    path: &Path,
    progress: &indicatif::ProgressBar,
) -> anyhow::Result<Moved> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let source = Source::of(file, path);
    let size = match &source {
        Source::Leased(l, _) => l.len(),
        Source::Read(f) => f.metadata().with_context(|| format!("reading the size of {}", path.display()))?.len(),
    };
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let (mut send, mut recv) = conn.open_bi().await.context("opening a QUIC stream")?;
    let started = Instant::now();
    // The lease (with its break notifications) stays until the receipt: quinn may resend any
    // part of the file until then.
    let (mut chunks, reader, mut lease) = match source {
        Source::Leased(leased, breaks) => {
            let (chunks, hasher) = spawn_hasher(leased.mapping());
            (chunks, hasher, Some((leased, breaks)))
        }
        Source::Read(file) => {
            let (chunks, reader) = spawn_reader(file);
            (chunks, reader, None)
        }
    };
    let sending = async {
        let mut header = serde_json::to_vec(&Header { name, size })?;
        header.push(b'\n');
        send.write_all(&header).await?;
        progress.set_length(size);
        let mut sent = 0u64;
        let mut window = SendWindow::default();
        while let Some(chunk) = chunks.recv().await {
            window.fit(conn);
            let n = chunk.len() as u64;
            // Handed to quinn as it is (no copy into its send buffer).
            send.write_chunk(chunk).await?;
            sent += n;
            progress.set_position(sent);
        }
        let ours =
            reader.await.context("the file reader stopped")?.with_context(|| format!("reading {}", path.display()))?;
        if sent != size {
            bail!("{} changed size while sending ({size} → {sent} bytes)", path.display());
        }
        send.finish()?;
        let receipt: Receipt =
            serde_json::from_str(&read_line(&mut recv).await.context("waiting for the receiver's receipt")?)
                .context("the receiver's receipt is not JSON")?;
        anyhow::Ok((ours, receipt))
    };
    let (ours, receipt) = match lease.as_mut() {
        Some((leased, breaks)) => {
            tokio::select! {
                r = sending => r?,
                () = leased.broken(breaks) => {
                    // Zero pages in place of the file before the other process may shrink it.
                    leased.let_go().with_context(|| format!("letting go of {}", path.display()))?;
                    let _ = send.reset(0u32.into());
                    bail!(
                        "{} changed while sending: another process opened it for writing or truncated it",
                        path.display()
                    );
                }
            }
        }
        None => sending.await?,
    };
    let elapsed = started.elapsed();
    if receipt.bytes != size || receipt.sha256 != ours {
        bail!("the receiver got {} bytes with SHA-256 {}, we sent {size} with {ours}", receipt.bytes, receipt.sha256);
    }
    Ok(Moved { bytes: size, sha256: Some(ours), elapsed })
}

/// Where the sent bytes come from.
enum Source {
    /// Mapped under a read lease; the notifications say when another process wants the file.
    Leased(LeasedFile, LeaseBreaks),
    Read(std::fs::File),
}

impl Source {
    /// The lease and the mapping when they can be had, else the file to read with copies
    /// (`-vv` says why).
    fn of(file: std::fs::File, path: &Path) -> Source {
        let breaks = match LeaseBreaks::new() {
            Ok(breaks) => breaks,
            Err(e) => {
                tracing::debug!("{}: read with copies, {}", path.display(), NoLease::Signal(e));
                return Source::Read(file);
            }
        };
        match LeasedFile::new(file, &breaks) {
            Ok(leased) => {
                tracing::debug!("{}: mapped under a read lease", path.display());
                Source::Leased(leased, breaks)
            }
            Err((file, why)) => {
                tracing::debug!("{}: read with copies, no read lease: {why}", path.display());
                Source::Read(file)
            }
        }
    }
}

/// quinn's send buffer (unacknowledged plus queued stream data) sized to the path: twice the
/// congestion window (what may be in flight, and as much again queued so the window never waits
/// on the file), at least [`MIN_SEND_WINDOW`], at most the configured one (`quic::transport`, for
/// a long fat path). A fixed 16 MiB holds the file's chunks for tens of milliseconds on a fast
/// short path, long enough to leave the cache between the hash and AES-GCM: with 2 MiB the
/// sender's CPU per byte fell 4–12 % in bench-punch A/B (docs/BENCHMARKS.md).
#[derive(Default)]
struct SendWindow(u64);

const MIN_SEND_WINDOW: u64 = 2 * 1024 * 1024;

impl SendWindow {
    fn for_cwnd(cwnd: u64) -> u64 {
        cwnd.saturating_mul(2).clamp(MIN_SEND_WINDOW, crate::punch::quic::SEND_WINDOW)
    }

    fn fit(&mut self, conn: &quinn::Connection) {
        let want = Self::for_cwnd(conn.stats().path.cwnd);
        if want != self.0 {
            self.0 = want;
            conn.set_send_window(want);
        }
    }
}

/// Chunks in flight between the file thread and the QUIC task: enough that neither waits on
/// the other, few enough that memory stays at a few MiB.
const QUEUED_CHUNKS: usize = 4;

/// Reads `file` on a blocking thread in [`CHUNK`]-sized owned buffers (each read straight into the
/// buffer that quinn then sends: no copy through tokio's file buffer) and hashes them there, off
/// the task that feeds quinn. The handle gives the SHA-256 once the file is read.
fn spawn_reader(mut file: std::fs::File) -> (mpsc::Receiver<Bytes>, JoinHandle<io::Result<String>>) {
    let (tx, rx) = mpsc::channel(QUEUED_CHUNKS);
    let reader = tokio::task::spawn_blocking(move || {
        let mut hash = Sha256::new();
        loop {
            // Read into spare capacity: no zeroing of the buffer first.
            let mut buf = Vec::with_capacity(CHUNK);
            let filled = (&mut file).take(CHUNK as u64).read_to_end(&mut buf)?;
            if filled == 0 {
                break;
            }
            hash.update(&buf);
            // The QUIC side stopped (its error is the one reported).
            if tx.blocking_send(buf.into()).is_err() {
                break;
            }
        }
        Ok(hex(&hash.finalize()))
    });
    (rx, reader)
}

/// The mapped file's [`CHUNK`]s, each hashed on a blocking thread (which also takes the page
/// faults) just before it goes to quinn as a slice of the mapping, still in cache for AES-GCM.
fn spawn_hasher(map: Arc<Mapping>) -> (mpsc::Receiver<Bytes>, JoinHandle<io::Result<String>>) {
    let (tx, rx) = mpsc::channel(QUEUED_CHUNKS);
    let hasher = tokio::task::spawn_blocking(move || {
        let mut hash = Sha256::new();
        let len = map.as_slice().len();
        let mut at = 0;
        while at < len {
            let end = (at + CHUNK).min(len);
            hash.update(&map.as_slice()[at..end]);
            if tx.blocking_send(leased_file::slice(&map, at..end)).is_err() {
                break;
            }
            at = end;
        }
        Ok(hex(&hash.finalize()))
    });
    (rx, hasher)
}

/// Bytes written to the file and their SHA-256.
type Written = (u64, String);

/// Writes what arrives on a blocking thread: each batch of quinn's chunks in vectored writes
/// (no copy into a user-space buffer first; tokio's file would make two), hashed there too. The
/// handle gives the bytes written and their SHA-256 once the sending side is dropped.
fn spawn_writer<B: AsRef<[u8]> + Send + 'static>(
    mut file: std::fs::File,
) -> (mpsc::Sender<Vec<B>>, JoinHandle<io::Result<Written>>) {
    let (tx, mut rx) = mpsc::channel::<Vec<B>>(QUEUED_CHUNKS);
    let writer = tokio::task::spawn_blocking(move || {
        let mut hash = Sha256::new();
        let mut written = 0u64;
        while let Some(batch) = rx.blocking_recv() {
            for b in &batch {
                hash.update(b.as_ref());
                written += b.as_ref().len() as u64;
            }
            // The kernel takes at most IOV_MAX (1024) slices per call.
            for group in batch.chunks(1024) {
                let mut slices: Vec<IoSlice<'_>> = group.iter().map(|b| IoSlice::new(b.as_ref())).collect();
                write_all_vectored(&mut file, &mut slices)?;
            }
        }
        file.flush()?;
        Ok((written, hex(&hash.finalize())))
    });
    (tx, writer)
}

/// `Write::write_all_vectored` (not stable yet): writes every slice, whatever the kernel takes per call.
fn write_all_vectored(w: &mut impl Write, mut slices: &mut [IoSlice<'_>]) -> io::Result<()> {
    while !slices.is_empty() {
        match w.write_vectored(slices) {
            Ok(0) => return Err(io::Error::new(io::ErrorKind::WriteZero, "the file took no more bytes")),
            Ok(n) => IoSlice::advance_slices(&mut slices, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
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
    let file = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let (writer_tx, writer) = spawn_writer(file);
    let mut got = 0u64;
    // quinn hands over what has arrived, a packet's worth per chunk: up to this many chunks per call
    // (one lock of the connection), gathered into batches of about CHUNK bytes per file write.
    let mut slots: [_; 32] = Default::default();
    let mut batch = Vec::new();
    let mut batched = 0usize;
    let mut failed = None;
    while got < header.size {
        let Some(n) = recv.read_chunks(&mut slots).await? else {
            failed = Some(format!("the sender stopped after {got} of {} bytes", header.size));
            break;
        };
        for chunk in slots[..n].iter_mut() {
            let chunk = std::mem::take(chunk);
            got += chunk.len() as u64;
            batched += chunk.len();
            batch.push(chunk);
        }
        if got > header.size {
            failed = Some(format!("the sender sent more than the {} bytes it announced", header.size));
            break;
        }
        progress.set_position(got);
        if batched >= CHUNK || got == header.size {
            batched = 0;
            // A closed channel: the writer failed; its error is reported below.
            if writer_tx.send(std::mem::take(&mut batch)).await.is_err() {
                break;
            }
        }
    }
    drop(writer_tx);
    let (written, digest) =
        writer.await.context("the file writer stopped")?.with_context(|| format!("writing {}", path.display()))?;
    if let Some(why) = failed {
        bail!(why);
    }
    if written != header.size {
        bail!("wrote {written} of {} bytes to {}", header.size, path.display());
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::punch::quic;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// A QUIC connection over loopback, both ends in this process: (sender's, receiver's).
    async fn pair() -> (quinn::Connection, quinn::Connection, quinn::Endpoint, quinn::Endpoint) {
        let (a, b) = (quic::Identity::generate().expect("a"), quic::Identity::generate().expect("b"));
        let any = "127.0.0.1:0".parse().expect("addr");
        let server = quinn::Endpoint::server(quic::server_config(&b, &a.fingerprint).expect("server config"), any)
            .expect("server");
        let mut client = quinn::Endpoint::client(any).expect("client");
        client.set_default_client_config(quic::client_config(&a, &b.fingerprint).expect("client config"));
        let at = server.local_addr().expect("server addr");
        let (sender, receiver) = tokio::join!(
            async { client.connect(at, quic::SERVER_NAME).expect("connect").await.expect("handshake") },
            async { server.accept().await.expect("incoming").await.expect("accept") },
        );
        (sender, receiver, client, server)
    }

    fn random_file(path: &Path, len: usize) {
        let mut bytes = vec![0u8; len];
        rand::Rng::fill(&mut rand::rng(), &mut bytes[..]);
        std::fs::write(path, bytes).expect("write");
    }

    async fn send_and_receive(from: &Path, to: &Path) -> (anyhow::Result<Moved>, anyhow::Result<Moved>) {
        let (s, r, _ce, _se) = pair().await;
        let hidden = indicatif::ProgressBar::hidden();
        tokio::join!(
            async {
                let sent = send_file(&s, from, &hidden).await;
                s.close(0u32.into(), b"done");
                sent
            },
            recv_file(&r, to, &hidden)
        )
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_mapped_file_arrives_whole_with_its_sha256() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (from, to) = (dir.path().join("from"), dir.path().join("to"));
        random_file(&from, 3 * CHUNK + 12_345);
        let (sent, got) = send_and_receive(&from, &to).await;
        let (sent, got) = (sent.expect("sent"), got.expect("received"));
        assert_eq!(sent.sha256, got.sha256);
        assert_eq!(std::fs::read(&from).expect("from"), std::fs::read(&to).expect("to"));
        // The lease is gone: the file can be written again at once.
        std::fs::OpenOptions::new().write(true).open(&from).expect("writable after the transfer");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_file_open_for_writing_elsewhere_is_read_instead_and_arrives_whole() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (from, to) = (dir.path().join("from"), dir.path().join("to"));
        random_file(&from, 2 * CHUNK + 7);
        let _writer = std::fs::OpenOptions::new().append(true).open(&from).expect("writer");
        let (sent, got) = send_and_receive(&from, &to).await;
        assert_eq!(sent.expect("sent").sha256, got.expect("received").sha256);
        assert_eq!(std::fs::read(&from).expect("from"), std::fs::read(&to).expect("to"));
    }

    /// The receiver stops reading after 1 MiB, so the sender is mid-file (quinn holding slices of
    /// the mapping) when another process truncates it: the truncate waits for the lease, the
    /// sender stops with a clear error, and nothing touches a page past the new end (SIGBUS).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn truncating_the_file_mid_send_is_a_clear_error_and_no_crash() {
        let dir = tempfile::tempdir().expect("tempdir");
        let from = dir.path().join("from");
        random_file(&from, 32 << 20);
        let (s, r, _ce, _se) = pair().await;
        let hidden = indicatif::ProgressBar::hidden();
        let truncated = Arc::new(AtomicBool::new(false));
        let receiver = async {
            let (_send, mut recv) = r.accept_bi().await.expect("stream");
            read_line(&mut recv).await.expect("header");
            let mut first = vec![0u8; 1 << 20];
            recv.read_exact(&mut first).await.expect("first MiB");
            let truncator = std::thread::spawn({
                let (from, truncated) = (from.clone(), truncated.clone());
                move || {
                    let f = std::fs::OpenOptions::new().write(true).open(&from).expect("open for writing");
                    truncated.store(true, Ordering::SeqCst);
                    f.set_len(0).expect("truncate");
                }
            });
            // Hold the stream without reading until the sender gave up.
            (truncator, _send, recv)
        };
        let (sent, (truncator, _send, _recv)) = tokio::join!(send_file(&s, &from, &hidden), receiver);
        let err = format!("{:#}", sent.expect_err("the sender must stop"));
        assert!(err.contains("changed while sending"), "{err}");
        truncator.join().expect("the truncate went through once the lease was let go");
        assert!(truncated.load(Ordering::SeqCst));
        assert_eq!(std::fs::metadata(&from).expect("size").len(), 0);
    }

    #[test]
    fn the_send_window_is_twice_the_congestion_window_between_2_and_16_mib() {
        const MIB: u64 = 1024 * 1024;
        // A new connection's window (about 14 KB), a fast short path, a long fat one, beyond.
        assert_eq!(SendWindow::for_cwnd(14_720), 2 * MIB);
        assert_eq!(SendWindow::for_cwnd(3 * MIB / 2), 3 * MIB);
        assert_eq!(SendWindow::for_cwnd(6 * MIB), 12 * MIB);
        assert_eq!(SendWindow::for_cwnd(u64::MAX), crate::punch::quic::SEND_WINDOW);
        assert_eq!(crate::punch::quic::SEND_WINDOW, 16 * MIB);
    }
}

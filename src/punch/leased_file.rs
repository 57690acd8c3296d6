//! The file `punch --send` sends, mapped into memory under a read lease (Linux `fcntl(2)`
//! `F_SETLEASE`), so quinn sends slices of the page cache instead of copies read into buffers.
//!
//! Why: reading the file copied every byte once more (`copy_page_to_iter`, ~10 % of the sender's
//! CPU in the same-LAN profile, docs/BENCHMARKS.md). The hazard of a mapping: when another process
//! truncates the file, the next access past the new end raises SIGBUS and kills natkit, where the
//! read path says "changed size while sending". A read lease closes that: the kernel makes any
//! `open` for writing and any `truncate(2)` of the file wait (up to `/proc/sys/fs/lease-break-time`,
//! 45 s by default) until the holder lets go, and tells the holder with SIGIO. On that signal
//! [`LeasedFile::let_go`] first replaces the mapping with anonymous zero pages (`mmap` with
//! `MAP_FIXED`: one step for every other thread, so quinn, which may still hold slices for
//! retransmission, reads zeros and never a hole), and only then releases the lease; the transfer
//! stops with a clear error. Nobody can change the file's bytes while we hold the lease, so the
//! hash taken from the mapping is the file's.
//!
//! A file that cannot be leased (open for writing somewhere, empty, not ours and no CAP_LEASE,
//! NFS/FUSE, `fs.leases-enable = 0`) is read with copies as before ([`NoLease`] says why).
//! What the lease cannot cover: a process stopped (SIGSTOP, a debugger) longer than the break time,
//! after which the kernel breaks the lease by itself.

use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::signal::unix::{Signal, SignalKind, signal};

/// Why a file is read with copies instead of mapped.
#[derive(Debug, thiserror::Error)]
pub enum NoLease {
    #[error("the file is empty")]
    Empty,
    #[error("the file is too large to map on this platform")]
    TooLarge,
    #[error("another process has it open for writing")]
    OpenForWriting,
    #[error("not its owner and no CAP_LEASE")]
    NotOwner,
    #[error("no SIGIO handler for lease breaks: {0}")]
    Signal(io::Error),
    #[error("the file system or kernel gives no lease: {0}")]
    Unsupported(io::Error),
    #[error("mapping it failed: {0}")]
    Map(io::Error),
}

/// Lease-break notifications: SIGIO, on which the holder checks its own lease (several transfers in
/// one process all wake; each asks the kernel about its own file). Make one before taking a lease:
/// from then on SIGIO no longer has its default action (ending the process).
pub struct LeaseBreaks(Signal);

impl LeaseBreaks {
    /// Needs a tokio runtime.
    pub fn new() -> io::Result<Self> {
        signal(SignalKind::io()).map(LeaseBreaks)
    }
}

/// A read-only shared mapping of a whole file, or the anonymous zero pages that replaced it.
/// The address range stays mapped (file or zeros) until the last owner drops it.
pub struct Mapping {
    ptr: *mut u8,
    len: usize,
    /// Still the file's pages; the lock orders a replacement against other replacements.
    file_backed: Mutex<bool>,
}

// SAFETY: the mapping is read-only memory that stays mapped for the life of `Mapping`; reads from
// any thread are sound (replacing it is one atomic step for other threads, see `detach`).
unsafe impl Send for Mapping {}
unsafe impl Sync for Mapping {}

impl Mapping {
    fn of(file: &File, len: usize) -> io::Result<Self> {
        // SAFETY: a fresh mapping chosen by the kernel; checked for failure below.
        let ptr =
            unsafe { libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ, libc::MAP_SHARED, file.as_raw_fd(), 0) };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        // Read ahead of the hash and keep read-ahead large: the file is read once, front to back.
        // SAFETY: advice on our own mapping; failure only loses the hint.
        unsafe { libc::madvise(ptr, len, libc::MADV_SEQUENTIAL) };
        Ok(Mapping { ptr: ptr.cast(), len, file_backed: Mutex::new(true) })
    }

    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `len` readable bytes at `ptr` for as long as `self` lives: the file's pages, which
        // cannot shrink under the lease, or the zero pages that replace them before the lease goes.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }

    /// Replaces the file's pages with anonymous zero pages at the same address, so that no access
    /// can fault once the file may shrink. Idempotent.
    fn detach(&self) -> io::Result<()> {
        let mut file_backed = self.file_backed.lock().unwrap_or_else(|e| e.into_inner());
        if !*file_backed {
            return Ok(());
        }
        // SAFETY: MAP_FIXED over exactly our own mapping (still mapped: `self` is alive), which the
        // kernel swaps under its mm lock, so a concurrent reader sees the old page or a zero page.
        let ptr = unsafe {
            libc::mmap(
                self.ptr.cast(),
                self.len,
                libc::PROT_READ,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        *file_backed = false;
        Ok(())
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: our mapping; no slice of it outlives `self` (they hold an `Arc`).
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// A slice of the mapping that keeps it alive: what `Bytes::from_owner` hands to quinn.
struct MappedSlice {
    map: Arc<Mapping>,
    range: Range<usize>,
}

impl AsRef<[u8]> for MappedSlice {
    fn as_ref(&self) -> &[u8] {
        &self.map.as_slice()[self.range.clone()]
    }
}

/// `bytes` `range` of the mapping as `Bytes`, without a copy.
pub fn slice(map: &Arc<Mapping>, range: Range<usize>) -> Bytes {
    Bytes::from_owner(MappedSlice { map: map.clone(), range })
}

/// A file held under a read lease and mapped whole. Dropping it lets go of the lease (zero pages
/// first, see [`LeasedFile::let_go`]).
pub struct LeasedFile {
    file: File,
    map: Arc<Mapping>,
    released: AtomicBool,
}

impl LeasedFile {
    /// Takes a read lease on `file` (opened read-only) and maps it. `_breaks` must exist first, so a
    /// break can never end the process. Gives the file back with the reason when it cannot.
    pub fn new(file: File, _breaks: &LeaseBreaks) -> Result<Self, (File, NoLease)> {
        if let Err(e) = set_lease(&file, libc::F_RDLCK) {
            let why = match e.raw_os_error() {
                Some(libc::EAGAIN) => NoLease::OpenForWriting,
                Some(libc::EACCES) | Some(libc::EPERM) => NoLease::NotOwner,
                _ => NoLease::Unsupported(e),
            };
            return Err((file, why));
        }
        // The size under the lease: it cannot change from here on without a break.
        let len = match file.metadata().map(|m| m.len()) {
            Ok(0) => return Err(unlease(file, NoLease::Empty)),
            Ok(n) => match usize::try_from(n) {
                Ok(n) => n,
                Err(_) => return Err(unlease(file, NoLease::TooLarge)),
            },
            Err(e) => return Err(unlease(file, NoLease::Map(e))),
        };
        match Mapping::of(&file, len) {
            Ok(map) => Ok(LeasedFile { file, map: Arc::new(map), released: AtomicBool::new(false) }),
            Err(e) => Err(unlease(file, NoLease::Map(e))),
        }
    }

    pub fn len(&self) -> u64 {
        self.map.len as u64
    }

    pub fn is_empty(&self) -> bool {
        self.map.len == 0
    }

    pub fn mapping(&self) -> Arc<Mapping> {
        self.map.clone()
    }

    /// Returns once another process asks for the file (an open for writing or a truncate, now
    /// waiting on us), or once the kernel took the lease away. Call [`Self::let_go`] then.
    pub async fn broken(&self, breaks: &mut LeaseBreaks) {
        loop {
            if self.break_pending() {
                return;
            }
            if breaks.0.recv().await.is_none() {
                // No more signals can come: wait forever rather than spin (the lease still holds).
                std::future::pending::<()>().await;
            }
        }
    }

    /// During a break the kernel reports the type the lease must fall to (`F_UNLCK` for a writer);
    /// with no lease at all, `F_UNLCK` too.
    fn break_pending(&self) -> bool {
        // SAFETY: fcntl on our own open file.
        let t = unsafe { libc::fcntl(self.file.as_raw_fd(), libc::F_GETLEASE) };
        t != libc::F_RDLCK
    }

    /// Stops using the file: zero pages over the mapping, then the lease released so the waiting
    /// writer or truncate goes on. Idempotent. If the pages cannot be replaced the lease is kept
    /// (the other process waits for the break time, then the kernel breaks it).
    pub fn let_go(&self) -> io::Result<()> {
        if self.released.load(Ordering::Acquire) {
            return Ok(());
        }
        self.map.detach()?;
        self.released.store(true, Ordering::Release);
        set_lease(&self.file, libc::F_UNLCK)
    }
}

impl Drop for LeasedFile {
    fn drop(&mut self) {
        if let Err(e) = self.let_go() {
            tracing::warn!("releasing the read lease on the sent file: {e}");
        }
    }
}

fn set_lease(file: &File, kind: libc::c_int) -> io::Result<()> {
    // SAFETY: fcntl on our own open file.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETLEASE, kind) } == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn unlease(file: File, why: NoLease) -> (File, NoLease) {
    let _ = set_lease(&file, libc::F_UNLCK);
    (file, why)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::time::Duration;

    fn file_of(len: usize, byte: u8) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f");
        let mut f = File::create(&path).expect("create");
        f.write_all(&vec![byte; len]).expect("write");
        (dir, path)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_truncate_waits_for_the_lease_and_the_mapping_then_reads_zeros_instead_of_faulting() {
        let (_dir, path) = file_of(1 << 20, 0xab);
        let mut breaks = LeaseBreaks::new().expect("SIGIO");
        let leased = LeasedFile::new(File::open(&path).expect("open"), &breaks).map_err(|(_, e)| e).expect("lease");
        let map = leased.mapping();
        assert_eq!(leased.len(), 1 << 20);
        assert!(map.as_slice().iter().all(|&b| b == 0xab));
        let truncated = Arc::new(AtomicBool::new(false));
        let truncator = std::thread::spawn({
            let truncated = truncated.clone();
            move || {
                // Blocks in the kernel until the lease is let go.
                let r = std::fs::OpenOptions::new().write(true).truncate(true).open(&path);
                truncated.store(true, Ordering::SeqCst);
                r.map(|f| f.metadata().map(|m| m.len()))
            }
        });
        tokio::time::timeout(Duration::from_secs(20), leased.broken(&mut breaks))
            .await
            .expect("the truncate is announced as a lease break");
        assert!(!truncated.load(Ordering::SeqCst), "the truncate went ahead before we let go");
        leased.let_go().expect("let go");
        let len = truncator.join().expect("truncator").expect("open").expect("size");
        assert_eq!(len, 0);
        // Past the file's new end: a file mapping would raise SIGBUS here.
        assert!(map.as_slice().iter().all(|&b| b == 0));
        drop(leased);
        assert_eq!(map.as_slice().len(), 1 << 20);
    }

    #[tokio::test]
    async fn a_file_open_for_writing_elsewhere_gets_no_lease_and_is_given_back() {
        let (_dir, path) = file_of(4096, 1);
        let breaks = LeaseBreaks::new().expect("SIGIO");
        let writer = std::fs::OpenOptions::new().write(true).open(&path).expect("writer");
        let (file, why) = match LeasedFile::new(File::open(&path).expect("open"), &breaks) {
            Ok(_) => panic!("leased a file open for writing"),
            Err(e) => e,
        };
        assert!(matches!(why, NoLease::OpenForWriting), "{why}");
        assert_eq!(file.metadata().expect("size").len(), 4096);
        drop(writer);
        // Once the writer is gone the lease can be had.
        assert!(LeasedFile::new(file, &breaks).is_ok());
    }

    #[tokio::test]
    async fn an_empty_file_is_not_mapped() {
        let (_dir, path) = file_of(0, 0);
        let breaks = LeaseBreaks::new().expect("SIGIO");
        let why = LeasedFile::new(File::open(&path).expect("open"), &breaks).err().map(|(_, e)| e);
        assert!(matches!(why, Some(NoLease::Empty)));
        // The lease taken for the size check was released: a writer gets in at once.
        std::fs::OpenOptions::new().write(true).open(&path).expect("writer");
    }
}

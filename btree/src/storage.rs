//! The one trait between the tree and the outside world: a file that can be written at an
//! offset, synced, resized and mapped for reading. `FileStorage` is the real thing (pwrite,
//! fdatasync, memmap2); `SimStorage` keeps "written" and "durable" bytes apart so crash tests can
//! cut the write + sync sequence anywhere and tear unsynced writes.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// A read-only view of the file's bytes. Bytes of pages the writer rewrites may change while a
/// view is held; the tree never reads such pages through an older view (see `db.rs`).
pub trait Mapping: Send + Sync {
    fn bytes(&self) -> &[u8];
}

/// Page I/O. Implementations must be safe to call from the single writer while readers use
/// mappings on other threads.
#[allow(clippy::len_without_is_empty)] // a page file is never empty once opened
pub trait Storage: Send + Sync + 'static {
    fn len(&self) -> io::Result<u64>;
    fn set_len(&self, len: u64) -> io::Result<()>;
    fn write_at(&self, buf: &[u8], off: u64) -> io::Result<()>;
    /// Reads exactly `buf.len()` bytes at `off` (what a mapping made now would show there).
    fn read_at(&self, buf: &mut [u8], off: u64) -> io::Result<()>;
    fn sync_data(&self) -> io::Result<()>;
    /// A view of the whole file as it is now. Must cover at least `len()` bytes.
    fn map(&self) -> io::Result<Arc<dyn Mapping>>;
    /// Changes whenever the current map's pages may have been unmapped from this process (a
    /// new map, or a release of its resident pages): reads through the map may fault again.
    fn map_epoch(&self) -> u64 {
        0
    }
}

/// A real file: pwrite + fdatasync for writes, one shared memory map for reads.
pub struct FileStorage {
    file: File,
    /// The file's length: read once at open, then kept by `set_len` (this process's writer is
    /// the only one changing it), so `len` and `map`, called on every commit, cost no
    /// `statx`.
    len_bytes: AtomicU64,
    map: Mutex<Option<(u64, Arc<FileMap>)>>,
    /// Bytes written since the map's resident pages were last released.
    written_since_release: AtomicU64,
    /// New maps and releases so far (`Storage::map_epoch`).
    epoch: AtomicU64,
}

/// After this many bytes of page writes the map's resident pages are released
/// (`MADV_DONTNEED`): the writer reads each page it copies through the map, and every such read
/// maps up to 16 neighbouring pages (the kernel's fault-around), so without a release the
/// process's RSS grows towards the whole live file between two growths of the map. The pages
/// stay in the kernel's page cache; the next read through the map takes a minor fault. With
/// 4 MiB the mapped set stays within ~64 MiB (1,024 copied pages x 64 KiB of fault-around).
pub const MAP_RELEASE_WRITTEN_BYTES: u64 = 4 << 20;

struct FileMap(memmap2::Mmap);

impl Mapping for FileMap {
    fn bytes(&self) -> &[u8] {
        &self.0
    }
}

impl FileStorage {
    pub fn open(path: &Path) -> io::Result<FileStorage> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        let len_bytes = AtomicU64::new(file.metadata()?.len());
        Ok(FileStorage {
            file,
            len_bytes,
            map: Mutex::new(None),
            written_since_release: AtomicU64::new(0),
            epoch: AtomicU64::new(0),
        })
    }
}

impl FileStorage {
    /// Grows (fallocate) or sets the file's length from `cur` to `len`.
    fn set_len_uncached(&self, cur: u64, len: u64) -> io::Result<()> {
        if len > cur && std::env::var_os("FERRITE_BTREE_SPARSE").is_none() {
            // Allocate the blocks now (fallocate), so that the first write of each new page
            // does not allocate them and the commit's fdatasync has no block mapping to add.
            use std::os::fd::AsRawFd;
            let (off, add) = (
                libc::off_t::try_from(cur).map_err(io::Error::other)?,
                libc::off_t::try_from(len - cur).map_err(io::Error::other)?,
            );
            // SAFETY: plain syscall on an open file descriptor owned by `self.file`; no memory
            // is passed.
            let rc = unsafe { libc::fallocate(self.file.as_raw_fd(), 0, off, add) };
            if rc == 0 {
                return Ok(());
            }
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EOPNOTSUPP) {
                return Err(e);
            }
        }
        self.file.set_len(len)
    }
}

impl Storage for FileStorage {
    fn len(&self) -> io::Result<u64> {
        Ok(self.len_bytes.load(Ordering::Acquire))
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        let cur = self.len()?;
        self.set_len_uncached(cur, len)?;
        self.len_bytes.store(len, Ordering::Release);
        debug_assert_eq!(self.file.metadata().map(|m| m.len()).ok(), Some(len));
        Ok(())
    }
    fn write_at(&self, buf: &[u8], off: u64) -> io::Result<()> {
        self.file.write_all_at(buf, off)?;
        let written = self
            .written_since_release
            .fetch_add(buf.len() as u64, Ordering::Relaxed)
            + buf.len() as u64;
        if written >= MAP_RELEASE_WRITTEN_BYTES {
            self.written_since_release.store(0, Ordering::Relaxed);
            self.release_mapped_pages();
        }
        Ok(())
    }
    fn read_at(&self, buf: &mut [u8], off: u64) -> io::Result<()> {
        self.file.read_exact_at(buf, off)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.file.sync_data()
    }
    fn map(&self) -> io::Result<Arc<dyn Mapping>> {
        let len = self.len()?;
        let mut cached = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((mapped_len, m)) = cached.as_ref() {
            if *mapped_len == len {
                return Ok(m.clone());
            }
        }
        // SAFETY: the file is private to this process (one `Db` per path). Writes go through
        // pwrite on the same file, which the kernel keeps coherent with MAP_SHARED mappings. The
        // tree only rewrites pages that no live snapshot can reach, so no reader ever observes a
        // page changing under it; the file is only truncated below pages that no snapshot can
        // reach, so no access through an older (longer) mapping touches the truncated range.
        let m = unsafe { memmap2::Mmap::map(&self.file)? };
        let m = Arc::new(FileMap(m));
        *cached = Some((len, m.clone()));
        self.epoch.fetch_add(1, Ordering::Relaxed);
        Ok(m)
    }
    fn map_epoch(&self) -> u64 {
        self.epoch.load(Ordering::Relaxed)
    }
}

impl FileStorage {
    /// Drops the current map's resident pages from this process (they stay in the page
    /// cache). Best effort: a failure only means the pages stay mapped.
    fn release_mapped_pages(&self) {
        let cached = self.map.lock().unwrap_or_else(|e| e.into_inner());
        self.epoch.fetch_add(1, Ordering::Relaxed);
        if let Some((_, m)) = cached.as_ref() {
            // SAFETY: `MADV_DONTNEED` on a read-only MAP_SHARED file mapping only unmaps its
            // pages from this process: the next access through any view re-reads the same
            // bytes from the page cache (the file's contents), so no reader can observe a
            // change it would not see without the advice. (It zero-fills only private
            // anonymous or copy-on-write mappings, which this is not.)
            // A failure (not expected for a valid mapping) only leaves the pages mapped.
            let _ = unsafe { m.0.unchecked_advise(memmap2::UncheckedAdvice::DontNeed) };
        }
    }
}

/// An in-memory file for crash tests. Every `write_at`, `sync_data` and `set_len` is one
/// operation; after `fail_after_ops` operations every call fails (the "crash"), and
/// `crash_image` returns what a disk might hold afterwards: all synced bytes, plus each unsynced
/// write kept, dropped or torn at a 512-byte sector boundary, chosen by a seed.
pub struct SimStorage {
    state: Mutex<SimState>,
}

struct SimState {
    written: Vec<u8>,
    durable: Vec<u8>,
    unsynced: Vec<(u64, Vec<u8>)>,
    ops_left: Option<u64>,
    ops_done: u64,
}

struct VecMap(Vec<u8>);
impl Mapping for VecMap {
    fn bytes(&self) -> &[u8] {
        &self.0
    }
}

/// Bytes a torn write keeps whole.
pub const SIM_SECTOR_BYTES: usize = 512;

impl SimStorage {
    pub fn new(image: Vec<u8>) -> SimStorage {
        SimStorage {
            state: Mutex::new(SimState {
                written: image.clone(),
                durable: image,
                unsynced: Vec::new(),
                ops_left: None,
                ops_done: 0,
            }),
        }
    }
    /// After `n` more operations, every operation fails.
    pub fn fail_after_ops(&self, n: Option<u64>) {
        self.lock().ops_left = n;
    }
    pub fn ops_done(&self) -> u64 {
        self.lock().ops_done
    }
    fn lock(&self) -> std::sync::MutexGuard<'_, SimState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
    fn step(&self) -> io::Result<std::sync::MutexGuard<'_, SimState>> {
        let mut s = self.lock();
        match s.ops_left {
            Some(0) => return Err(io::Error::other("simulated crash")),
            Some(n) => s.ops_left = Some(n - 1),
            None => {}
        }
        s.ops_done += 1;
        Ok(s)
    }
    /// The disk after a crash: synced bytes plus a seeded choice for each unsynced write.
    pub fn crash_image(&self, seed: u64) -> Vec<u8> {
        let s = self.lock();
        let mut img = s.durable.clone();
        let mut rng = seed ^ 0x9E37_79B9_7F4A_7C15;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        for (off, buf) in &s.unsynced {
            let keep = match next() % 3 {
                0 => 0,
                1 => buf.len(),
                _ => {
                    let sectors = buf.len().div_ceil(SIM_SECTOR_BYTES);
                    ((next() as usize) % (sectors + 1) * SIM_SECTOR_BYTES).min(buf.len())
                }
            };
            let off = *off as usize;
            if img.len() < off + keep {
                img.resize(off + keep, 0);
            }
            img[off..off + keep].copy_from_slice(&buf[..keep]);
        }
        img
    }
    /// The bytes as written so far (what a reader of the page cache sees).
    pub fn written_image(&self) -> Vec<u8> {
        self.lock().written.clone()
    }
}

impl Storage for SimStorage {
    fn len(&self) -> io::Result<u64> {
        Ok(self.lock().written.len() as u64)
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut s = self.step()?;
        s.written.resize(len as usize, 0);
        Ok(())
    }
    fn write_at(&self, buf: &[u8], off: u64) -> io::Result<()> {
        let mut s = self.step()?;
        let end = off as usize + buf.len();
        if s.written.len() < end {
            s.written.resize(end, 0);
        }
        s.written[off as usize..end].copy_from_slice(buf);
        s.unsynced.push((off, buf.to_vec()));
        Ok(())
    }
    fn read_at(&self, buf: &mut [u8], off: u64) -> io::Result<()> {
        let s = self.lock();
        let src = usize::try_from(off)
            .ok()
            .and_then(|o| s.written.get(o..o.checked_add(buf.len())?))
            .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
        buf.copy_from_slice(src);
        Ok(())
    }
    fn sync_data(&self) -> io::Result<()> {
        let mut s = self.step()?;
        s.durable = s.written.clone();
        s.unsynced.clear();
        Ok(())
    }
    fn map(&self) -> io::Result<Arc<dyn Mapping>> {
        Ok(Arc::new(VecMap(self.lock().written.clone())))
    }
}

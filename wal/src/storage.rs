//! The small I/O trait the WAL core is written against, and its real-file implementation.
//!
//! What the core assumes of the media (the simulated disk in `sim.rs` models exactly this):
//! - bytes written with `write_all_at` are visible to reads at once but may be lost, wholly
//!   or in 512-byte pieces, by a crash until `sync_data` returns Ok;
//! - after `sync_data` returns Ok every byte written before it survives a crash;
//! - a failed `sync_data` leaves the unsynced bytes in an unknown state (the core stops
//!   writing: see `WalError::Poisoned`);
//! - `prepare` (create + fill + sync + rename + directory sync) and `remove` (unlink +
//!   directory sync) are atomic and durable once they return Ok.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;

/// One open segment file.
pub trait StorageFile: Send {
    fn len_bytes(&mut self) -> io::Result<u64>;
    fn read_exact_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    fn write_all_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// fdatasync: every byte written so far is durable once this returns Ok.
    fn sync_data(&mut self) -> io::Result<()>;
}

/// The directory of segment files.
pub trait Storage: Send + 'static {
    type File: StorageFile;
    /// Names (not paths) of every file in the directory.
    fn list(&mut self) -> io::Result<Vec<String>>;
    fn open(&mut self, name: &str) -> io::Result<Self::File>;
    /// Starts preparing file `name`: `header`, then zeros up to `len_bytes`, made durable,
    /// and renamed into place from `tmp_name` atomically. At most one preparation is in
    /// flight; it runs off the caller's path where the implementation can.
    fn begin_prepare(&mut self, name: &str, tmp_name: &str, header: Vec<u8>, len_bytes: u64);
    /// Waits for the preparation begun last and returns its outcome.
    fn finish_prepare(&mut self) -> io::Result<()>;
    /// Removes `name` durably.
    fn remove(&mut self, name: &str) -> io::Result<()>;
    /// How errors name a file (the full path for real files).
    fn describe(&self, name: &str) -> String;
}

/// Real files in one directory, with std's positional I/O (pwrite / fdatasync). The
/// preparation of the next segment runs on its own thread.
pub struct FileStorage {
    dir: PathBuf,
    preparing: Option<io::Result<JoinHandle<io::Result<()>>>>,
    /// `LOCK` in the directory, held with an exclusive `flock` while this storage lives,
    /// so two logs never write one directory. Released after the preparation thread is
    /// joined in `drop`.
    _lock: File,
}

/// Name of the lock file in a log directory.
pub const LOCK_FILE_NAME: &str = "LOCK";

/// Zero-fill chunk used while preparing a segment (written, then synced, one at a time).
const PREPARE_CHUNK_BYTES: usize = 1024 * 1024;

impl FileStorage {
    /// Opens (creating if needed) the directory `dir`.
    pub fn open_dir(dir: impl AsRef<Path>) -> io::Result<FileStorage> {
        let dir = dir.as_ref().to_path_buf();
        fs::create_dir_all(&dir)?;
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(LOCK_FILE_NAME))?;
        // SAFETY: flock takes a file descriptor we own (kept open in `lock`) and flags; it
        // touches no memory of ours.
        let rc = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(
                e.kind(),
                format!(
                    "log directory {} is in use by another log ({e})",
                    dir.display()
                ),
            ));
        }
        sync_dir(&dir)?;
        Ok(FileStorage {
            dir,
            preparing: None,
            _lock: lock,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn prepare_file(
    dir: &Path,
    name: &str,
    tmp_name: &str,
    header: &[u8],
    len_bytes: u64,
) -> io::Result<()> {
    let tmp = dir.join(tmp_name);
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)?;
    assert!(header.len() as u64 <= len_bytes);
    f.write_all(header)?;
    let zeros = vec![0u8; PREPARE_CHUNK_BYTES];
    let mut at = header.len() as u64;
    while at < len_bytes {
        let n = (len_bytes - at).min(PREPARE_CHUNK_BYTES as u64) as usize;
        f.write_all(&zeros[..n])?;
        at += n as u64;
        // Sync chunk by chunk: a whole segment of dirty pages written back at once would
        // queue tens of MiB ahead of the log's own fdatasyncs on the same disk.
        f.sync_data()?;
    }
    f.sync_all()?;
    drop(f);
    fs::rename(&tmp, dir.join(name))?;
    sync_dir(dir)
}

impl Storage for FileStorage {
    type File = RealFile;

    fn list(&mut self) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for e in fs::read_dir(&self.dir)? {
            let e = e?;
            if let Some(n) = e.file_name().to_str() {
                names.push(n.to_string());
            }
        }
        Ok(names)
    }

    fn open(&mut self, name: &str) -> io::Result<RealFile> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(self.dir.join(name))?;
        Ok(RealFile { file })
    }

    fn begin_prepare(&mut self, name: &str, tmp_name: &str, header: Vec<u8>, len_bytes: u64) {
        assert!(
            self.preparing.is_none(),
            "one segment preparation at a time"
        );
        let (dir, name, tmp_name) = (self.dir.clone(), name.to_string(), tmp_name.to_string());
        let spawned = std::thread::Builder::new()
            .name("wal-prepare".into())
            .spawn(move || prepare_file(&dir, &name, &tmp_name, &header, len_bytes));
        self.preparing = Some(spawned);
    }

    fn finish_prepare(&mut self) -> io::Result<()> {
        let h = self
            .preparing
            .take()
            .expect("finish_prepare without begin_prepare")?;
        h.join()
            .unwrap_or_else(|_| Err(io::Error::other("segment preparation thread panicked")))
    }

    fn remove(&mut self, name: &str) -> io::Result<()> {
        fs::remove_file(self.dir.join(name))?;
        sync_dir(&self.dir)
    }

    fn describe(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }
}

impl Drop for FileStorage {
    fn drop(&mut self) {
        // Never leave a preparation thread writing into a directory a later open reads.
        if let Some(Ok(h)) = self.preparing.take() {
            let _ = h.join();
        }
    }
}

pub struct RealFile {
    file: File,
}

impl StorageFile for RealFile {
    fn len_bytes(&mut self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }
    fn read_exact_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }
    fn write_all_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.file.write_all_at(buf, offset)
    }
    fn sync_data(&mut self) -> io::Result<()> {
        self.file.sync_data()
    }
}

//! A simulated disk for tests: written and synced bytes are kept apart, a crash can be
//! cut before any I/O operation, unsynced bytes are dropped or torn in 512-byte sectors on
//! a crash, and any operation can be made to fail with EIO or ENOSPC.
//!
//! Operations counted (each is one "boundary" a crash test can cut at): every
//! `write_all_at`, every `sync_data`, every finished segment preparation, every `remove`.
//! Preparation and removal are modelled as atomic and durable (the real implementation
//! makes them so with a temporary file, rename and directory fsync).

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::storage::{Storage, StorageFile};

/// Sector size of the simulated device: the unit a crash keeps or drops.
pub const SIM_SECTOR_BYTES: usize = 512;

/// A fault to inject at one operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    Eio,
    Enospc,
}

#[derive(Debug, Clone, Default)]
struct SimFile {
    /// What a crash would keep for sure.
    durable: Vec<u8>,
    /// What reads see (durable plus unsynced writes).
    current: Vec<u8>,
    /// Sectors written since the last sync.
    dirty: BTreeSet<usize>,
}

#[derive(Debug, Default)]
struct DiskState {
    files: BTreeMap<String, SimFile>,
    ops: u64,
    crash_at_op: Option<u64>,
    crashed: bool,
    faults: BTreeMap<u64, Fault>,
}

/// A simulated disk, shared between the WAL (through [`SimStorage`]) and the test.
#[derive(Debug, Clone, Default)]
pub struct SimDisk {
    inner: Arc<Mutex<DiskState>>,
}

/// Deterministic PRNG (splitmix64) so every failure replays from its seed.
#[derive(Debug, Clone)]
pub struct SimRng(u64);

impl SimRng {
    pub fn new(seed: u64) -> SimRng {
        SimRng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0);
        self.next_u64() % n
    }
}

fn crashed_error() -> io::Error {
    io::Error::other("simulated crash: the disk is gone")
}

fn fault_error(f: Fault) -> io::Error {
    match f {
        Fault::Eio => io::Error::from_raw_os_error(libc::EIO),
        Fault::Enospc => io::Error::from_raw_os_error(libc::ENOSPC),
    }
}

impl DiskState {
    /// Counts one operation; returns the error it must fail with, if any.
    fn op(&mut self) -> io::Result<()> {
        if self.crashed {
            return Err(crashed_error());
        }
        let n = self.ops;
        self.ops += 1;
        if self.crash_at_op == Some(n) {
            self.crashed = true;
            return Err(crashed_error());
        }
        if let Some(f) = self.faults.remove(&n) {
            return Err(fault_error(f));
        }
        Ok(())
    }
}

impl SimDisk {
    pub fn new() -> SimDisk {
        SimDisk::default()
    }

    fn lock(&self) -> MutexGuard<'_, DiskState> {
        self.inner.lock().expect("sim disk lock poisoned")
    }

    /// A storage handle on this disk for the WAL.
    pub fn storage(&self) -> SimStorage {
        SimStorage {
            disk: self.clone(),
            pending_prepare: None,
        }
    }

    /// Operations performed so far.
    pub fn ops(&self) -> u64 {
        self.lock().ops
    }

    /// Operation number `op` (0-based, counted from the disk's creation) and every one
    /// after it fail, as if the machine lost power just before it.
    pub fn crash_at_op(&self, op: u64) {
        self.lock().crash_at_op = Some(op);
    }

    pub fn crash_now(&self) {
        self.lock().crashed = true;
    }

    /// Operation number `op` fails once with `fault`, without effect.
    pub fn inject(&self, op: u64, fault: Fault) {
        self.lock().faults.insert(op, fault);
    }

    /// The disk as it is found after power returns: every file's durable bytes plus, for
    /// each sector written since its last sync, the new contents or the old, chosen by
    /// `rng` (so a write can be torn, dropped, or kept).
    pub fn after_crash(&self, rng: &mut SimRng) -> SimDisk {
        let state = self.lock();
        let mut files = BTreeMap::new();
        for (name, f) in &state.files {
            let mut bytes = f.durable.clone();
            for &s in &f.dirty {
                if rng.below(2) == 0 {
                    continue;
                }
                let lo = s * SIM_SECTOR_BYTES;
                let hi = ((s + 1) * SIM_SECTOR_BYTES).min(f.current.len());
                if bytes.len() < hi {
                    bytes.resize(hi, 0);
                }
                bytes[lo..hi].copy_from_slice(&f.current[lo..hi]);
            }
            files.insert(
                name.clone(),
                SimFile {
                    durable: bytes.clone(),
                    current: bytes,
                    dirty: BTreeSet::new(),
                },
            );
        }
        SimDisk {
            inner: Arc::new(Mutex::new(DiskState {
                files,
                ..DiskState::default()
            })),
        }
    }

    /// Names of the files on the disk.
    pub fn file_names(&self) -> Vec<String> {
        self.lock().files.keys().cloned().collect()
    }

    /// The current bytes of a file.
    pub fn file_bytes(&self, name: &str) -> Option<Vec<u8>> {
        self.lock().files.get(name).map(|f| f.current.clone())
    }

    /// Flips bit `bit` of byte `offset` of file `name`, durably (bit rot).
    pub fn flip_bit(&self, name: &str, offset: usize, bit: u8) {
        let mut st = self.lock();
        let f = st.files.get_mut(name).expect("no such file");
        f.current[offset] ^= 1 << bit;
        f.durable[offset] ^= 1 << bit;
    }
}

/// The WAL's handle on a [`SimDisk`].
#[derive(Debug, Clone)]
pub struct SimStorage {
    disk: SimDisk,
    pending_prepare: Option<(String, Vec<u8>, u64)>,
}

impl Storage for SimStorage {
    type File = SimFileHandle;

    fn list(&mut self) -> io::Result<Vec<String>> {
        let st = self.disk.lock();
        if st.crashed {
            return Err(crashed_error());
        }
        Ok(st.files.keys().cloned().collect())
    }

    fn open(&mut self, name: &str) -> io::Result<SimFileHandle> {
        let st = self.disk.lock();
        if st.crashed {
            return Err(crashed_error());
        }
        if !st.files.contains_key(name) {
            return Err(io::Error::from(io::ErrorKind::NotFound));
        }
        Ok(SimFileHandle {
            disk: self.disk.clone(),
            name: name.to_string(),
        })
    }

    fn begin_prepare(&mut self, name: &str, _tmp_name: &str, header: Vec<u8>, len_bytes: u64) {
        assert!(
            self.pending_prepare.is_none(),
            "one segment preparation at a time"
        );
        self.pending_prepare = Some((name.to_string(), header, len_bytes));
    }

    fn finish_prepare(&mut self) -> io::Result<()> {
        let (name, header, len) = self.pending_prepare.take().expect("finish without begin");
        let mut st = self.disk.lock();
        st.op()?;
        let mut bytes = vec![0u8; len as usize];
        bytes[..header.len()].copy_from_slice(&header);
        st.files.insert(
            name,
            SimFile {
                durable: bytes.clone(),
                current: bytes,
                dirty: BTreeSet::new(),
            },
        );
        Ok(())
    }

    fn remove(&mut self, name: &str) -> io::Result<()> {
        let mut st = self.disk.lock();
        st.op()?;
        st.files
            .remove(name)
            .map(|_| ())
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))
    }

    fn describe(&self, name: &str) -> String {
        format!("sim:{name}")
    }
}

/// An open file on a [`SimDisk`].
#[derive(Debug)]
pub struct SimFileHandle {
    disk: SimDisk,
    name: String,
}

impl SimFileHandle {
    fn with<R>(&self, f: impl FnOnce(&mut DiskState) -> io::Result<R>) -> io::Result<R> {
        let mut st = self.disk.lock();
        f(&mut st)
    }
}

impl StorageFile for SimFileHandle {
    fn len_bytes(&mut self) -> io::Result<u64> {
        let name = self.name.clone();
        self.with(|st| {
            if st.crashed {
                return Err(crashed_error());
            }
            Ok(st
                .files
                .get(&name)
                .ok_or(io::ErrorKind::NotFound)?
                .current
                .len() as u64)
        })
    }

    fn read_exact_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let name = self.name.clone();
        self.with(|st| {
            if st.crashed {
                return Err(crashed_error());
            }
            let f = st.files.get(&name).ok_or(io::ErrorKind::NotFound)?;
            let lo = offset as usize;
            let hi = lo + buf.len();
            if hi > f.current.len() {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            buf.copy_from_slice(&f.current[lo..hi]);
            Ok(())
        })
    }

    fn write_all_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        let name = self.name.clone();
        self.with(|st| {
            st.op()?;
            let f = st.files.get_mut(&name).ok_or(io::ErrorKind::NotFound)?;
            let lo = offset as usize;
            let hi = lo + buf.len();
            if f.current.len() < hi {
                f.current.resize(hi, 0);
            }
            f.current[lo..hi].copy_from_slice(buf);
            if !buf.is_empty() {
                for s in lo / SIM_SECTOR_BYTES..=(hi - 1) / SIM_SECTOR_BYTES {
                    f.dirty.insert(s);
                }
            }
            Ok(())
        })
    }

    fn sync_data(&mut self) -> io::Result<()> {
        let name = self.name.clone();
        self.with(|st| {
            st.op()?;
            let f = st.files.get_mut(&name).ok_or(io::ErrorKind::NotFound)?;
            if f.durable.len() < f.current.len() {
                f.durable.resize(f.current.len(), 0);
            }
            for s in std::mem::take(&mut f.dirty) {
                let lo = s * SIM_SECTOR_BYTES;
                let hi = ((s + 1) * SIM_SECTOR_BYTES).min(f.current.len());
                f.durable[lo..hi].copy_from_slice(&f.current[lo..hi]);
            }
            Ok(())
        })
    }
}

//! The copy-on-write B+tree: snapshots for readers, one writer, commits, the free list.
//!
//! Invariants (asserted where cheap):
//! - A page reachable from the last durable meta page or from any live snapshot is never
//!   written. The writer only writes pages it allocated since its last commit.
//! - A page freed by commit `F` (reachable from tree `F-1`, not from tree `F`) becomes reusable
//!   once every live snapshot has `txn >= F` and a durable commit `D >= F` has landed (so the
//!   durable tree cannot reach it either).
//! - A non-durable commit writes its pages but not a meta page; the file's durable state stays
//!   the last durable commit, whose pages are intact.
//! - A durable commit writes its pages, free list, commit record (the id and crc32c of every
//!   page written since the previous durable commit that the new tree or free list reaches) and
//!   meta page, then syncs once. Open trusts the newer meta only if every recorded page holds
//!   its recorded crc32c; else it opens the other meta (the previous durable commit: none of its
//!   pages, free-list pages or record pages is written before a newer commit is durable).

use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use arc_swap::ArcSwap;

use crate::error::StoreError;
use crate::free::FreePages;
use crate::page::*;
use crate::storage::{FileStorage, Mapping, Storage};

/// Tunables of the page layer.
#[derive(Clone, Debug)]
pub struct DbOptions {
    /// Verify each page's crc32c on every read (on by default).
    pub verify_checksums: bool,
    /// A non-durable commit becomes durable once pages freed since the last durable commit
    /// (which cannot be reused before one) exceed this many bytes: bounds file growth.
    pub unsynced_freed_bytes_max: u64,
    /// The file grows by at least this many bytes (and at least 1/8 of its size) at a time.
    pub grow_bytes_min: u64,
    /// Past `unsynced_freed_bytes_max`, do not sync inside `commit(false)`: report it through
    /// `DbWriter::wants_durable` and let the caller run a durable commit whose fdatasync it
    /// runs off its own thread (`commit_durable_start`). Past `UNSYNCED_FREED_DEFERRED_FACTOR_MAX`
    /// (4) times the limit, or while such a sync is in flight and a durable commit is asked
    /// for, the commit syncs inline.
    pub defer_forced_sync: bool,
    /// How the writer reads the committed pages it copies (`DbWriter::read_through_map`);
    /// `FERRITE_BTREE_READS=map|pread` overrides the default `Auto` (for A/B runs).
    pub reads: PageReads,
}

/// See `DbOptions::reads`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageReads {
    /// pread a page when the map would fault for it alone, else copy it from the map.
    Auto,
    Map,
    Pread,
}

impl PageReads {
    fn from_env() -> PageReads {
        match std::env::var("FERRITE_BTREE_READS").as_deref() {
            Ok("map") => PageReads::Map,
            Ok("pread") => PageReads::Pread,
            _ => PageReads::Auto,
        }
    }
}

impl Default for DbOptions {
    fn default() -> Self {
        DbOptions {
            verify_checksums: true,
            unsynced_freed_bytes_max: 64 << 20,
            grow_bytes_min: 1 << 20,
            defer_forced_sync: false,
            reads: PageReads::from_env(),
        }
    }
}

/// A durable commit whose pages, free list, commit record and meta page are written but not
/// yet synced (`DbWriter::commit_durable_start`). Until `sync` returns and the writer is told
/// (`commit_durable_finish`), the previous durable commit stays the one a crash falls back
/// to, and no page it reaches is reused.
#[must_use = "a started durable commit needs its sync and commit_durable_finish"]
pub struct PendingSync {
    txn: u64,
    storage: Arc<dyn Storage>,
}

impl PendingSync {
    /// The commit's one fdatasync; blocking, safe on any thread (the writer keeps committing
    /// non-durably meanwhile).
    pub fn sync(self) -> std::io::Result<SyncedCommit> {
        self.storage.sync_data()?;
        Ok(SyncedCommit { txn: self.txn })
    }
}

/// Proof that a started durable commit's sync returned: hand it to `commit_durable_finish`.
#[derive(Debug)]
pub struct SyncedCommit {
    txn: u64,
}

/// Bytes written by one pwrite at most when coalescing consecutive dirty pages.
const WRITE_BATCH_BYTES_MAX: usize = 1 << 20;

/// A committed tree, pinned for as long as it is held. Reads never block and never copy pages.
pub struct Snapshot {
    txn: u64,
    root: PageId,
    page_count: u64,
    app: [u64; META_APP_WORDS],
    map: Arc<dyn Mapping>,
    verify: bool,
}

/// A node seen through a snapshot (a page in the map) or through the writer (maybe dirty).
#[derive(Clone, Copy)]
pub enum NodeRef<'a> {
    Page(PageRef<'a>),
    Mem(&'a Node),
}

impl<'a> NodeRef<'a> {
    pub fn is_leaf(&self) -> bool {
        match self {
            NodeRef::Page(p) => p.is_leaf(),
            NodeRef::Mem(n) => matches!(n, Node::Leaf { .. }),
        }
    }
    pub fn len(&self) -> usize {
        match self {
            NodeRef::Page(p) => p.len(),
            NodeRef::Mem(Node::Leaf { ents, .. }) => ents.len(),
            NodeRef::Mem(Node::Branch { keys, .. }) => keys.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn key(&self, i: usize) -> &'a [u8] {
        match self {
            NodeRef::Page(p) => p.key(i),
            NodeRef::Mem(Node::Leaf { ents, heap }) => heap_key(heap, ents[i].off()),
            NodeRef::Mem(Node::Branch { keys, .. }) => &keys[i],
        }
    }
    pub fn child(&self, i: usize) -> PageId {
        match self {
            NodeRef::Page(p) => p.child(i),
            NodeRef::Mem(Node::Branch { children, .. }) => children[i],
            NodeRef::Mem(Node::Leaf { .. }) => unreachable!("child of a leaf"),
        }
    }
    pub fn value(&self, i: usize) -> ValRef<'a> {
        match self {
            NodeRef::Page(p) => p.value(i),
            NodeRef::Mem(Node::Leaf { ents, heap }) => heap_value(heap, ents[i].off()),
            NodeRef::Mem(Node::Branch { .. }) => unreachable!("value of a branch"),
        }
    }
    /// Index of the child that may hold `key`.
    fn child_index(&self, key: &[u8]) -> usize {
        // First key > `key`: children[i] holds keys in [keys[i-1], keys[i]).
        let (mut lo, mut hi) = (0, self.len());
        while lo < hi {
            let mid = (lo + hi) / 2;
            if self.key(mid) <= key {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo
    }
    /// First index with key >= `key`.
    fn lower_bound(&self, key: &[u8]) -> usize {
        let (mut lo, mut hi) = (0, self.len());
        while lo < hi {
            let mid = (lo + hi) / 2;
            if self.key(mid) < key {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo
    }
}

/// Where a cursor reads nodes from.
pub trait PageSource {
    fn root(&self) -> PageId;
    fn node(&self, id: PageId) -> Result<NodeRef<'_>, StoreError>;
    /// The raw bytes of an overflow page (validated by the caller).
    fn raw_page(&self, id: PageId) -> Result<&[u8], StoreError>;
}

impl Snapshot {
    pub fn txn(&self) -> u64 {
        self.txn
    }
    /// The application words committed with this tree.
    pub fn app(&self) -> [u64; META_APP_WORDS] {
        self.app
    }
    fn bytes_of(&self, id: PageId) -> Result<&[u8], StoreError> {
        if id < 2 || id >= self.page_count {
            return Err(StoreError::Corrupt {
                page: id,
                reason: format!("page id outside the tree's {} pages", self.page_count),
            });
        }
        let off = id as usize * PAGE_SIZE;
        self.map
            .bytes()
            .get(off..off + PAGE_SIZE)
            .ok_or_else(|| StoreError::Corrupt {
                page: id,
                reason: "page lies past the end of the file".into(),
            })
    }
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        get_in(self, key)
    }
    pub fn cursor(&self) -> Cursor<'_, Snapshot> {
        Cursor::new(self)
    }
}

impl PageSource for Snapshot {
    fn root(&self) -> PageId {
        self.root
    }
    fn node(&self, id: PageId) -> Result<NodeRef<'_>, StoreError> {
        Ok(NodeRef::Page(PageRef::parse(
            self.bytes_of(id)?,
            id,
            self.verify,
        )?))
    }
    fn raw_page(&self, id: PageId) -> Result<&[u8], StoreError> {
        self.bytes_of(id)
    }
}

fn get_in<S: PageSource>(src: &S, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
    let mut c = Cursor::new(src);
    c.seek(key)?;
    match c.current() {
        Some((k, v)) if k == key => Ok(Some(read_value(src, v)?.into_owned())),
        _ => Ok(None),
    }
}

/// Reads a leaf value, following its overflow chain if it has one.
pub fn read_value<'a, S: PageSource>(
    src: &'a S,
    v: ValRef<'a>,
) -> Result<Cow<'a, [u8]>, StoreError> {
    match v {
        ValRef::Inline(b) => Ok(Cow::Borrowed(b)),
        ValRef::Overflow { first, len } => {
            let len = len as usize;
            let mut out = Vec::with_capacity(len);
            let mut id = first;
            let pages_max = len.div_ceil(OVERFLOW_DATA_BYTES);
            for _ in 0..pages_max {
                let b = src.raw_page(id)?;
                check_header(b, id, &[KIND_OVERFLOW], true)?;
                let n = rd_u32(b, OVERFLOW_OFF_LEN) as usize;
                if n > OVERFLOW_DATA_BYTES || out.len() + n > len {
                    return Err(StoreError::Corrupt {
                        page: id,
                        reason: format!("overflow chunk of {n} bytes does not fit the value"),
                    });
                }
                out.extend_from_slice(&b[OVERFLOW_OFF_DATA..OVERFLOW_OFF_DATA + n]);
                id = rd_u64(b, OVERFLOW_OFF_NEXT);
                if out.len() == len {
                    return Ok(Cow::Owned(out));
                }
                if id == 0 {
                    break;
                }
            }
            Err(StoreError::Corrupt {
                page: first,
                reason: format!("overflow chain holds {} of {len} bytes", out.len()),
            })
        }
    }
}

/// An ordered cursor over a tree. `seek` is cheap when the target lies in the current leaf.
pub struct Cursor<'a, S: PageSource> {
    src: &'a S,
    stack: Vec<(NodeRef<'a>, usize)>,
}

impl<'a, S: PageSource> Cursor<'a, S> {
    pub fn new(src: &'a S) -> Self {
        Cursor {
            src,
            stack: Vec::with_capacity(8),
        }
    }

    /// Positions at the first entry with key >= `key`.
    pub fn seek(&mut self, key: &[u8]) -> Result<(), StoreError> {
        if let Some((leaf, idx)) = self.stack.last_mut() {
            let n = leaf.len();
            if n > 0 && leaf.key(0) <= key && key <= leaf.key(n - 1) {
                *idx = leaf.lower_bound(key);
                return Ok(());
            }
        }
        self.stack.clear();
        let mut id = self.src.root();
        if id == 0 {
            return Ok(());
        }
        for depth in 0.. {
            if depth > 64 {
                return Err(StoreError::Corrupt {
                    page: id,
                    reason: "tree deeper than 64 levels (cycle?)".into(),
                });
            }
            let node = self.src.node(id)?;
            if node.is_leaf() {
                let i = node.lower_bound(key);
                self.stack.push((node, i));
                break;
            }
            let i = node.child_index(key);
            self.stack.push((node, i));
            id = node.child(i);
        }
        if let Some((leaf, idx)) = self.stack.last() {
            if *idx >= leaf.len() {
                self.next_leaf()?;
            }
        }
        Ok(())
    }

    pub fn seek_first(&mut self) -> Result<(), StoreError> {
        self.stack.clear();
        self.seek(&[])
    }

    pub fn current(&self) -> Option<(&'a [u8], ValRef<'a>)> {
        let (leaf, i) = self.stack.last()?;
        if *i < leaf.len() {
            Some((leaf.key(*i), leaf.value(*i)))
        } else {
            None
        }
    }

    #[allow(clippy::should_implement_trait)] // fallible, and positions rather than yields
    pub fn next(&mut self) -> Result<(), StoreError> {
        if let Some((leaf, i)) = self.stack.last_mut() {
            *i += 1;
            if *i >= leaf.len() {
                self.next_leaf()?;
            }
        }
        Ok(())
    }

    /// Moves to the first entry of the next non-empty leaf, or to the end (empty stack).
    fn next_leaf(&mut self) -> Result<(), StoreError> {
        loop {
            self.stack.pop();
            let Some((parent, i)) = self.stack.last_mut() else {
                return Ok(());
            };
            *i += 1;
            if *i > parent.len() {
                continue;
            }
            let mut id = parent.child(*i);
            loop {
                if self.stack.len() > 64 {
                    return Err(StoreError::Corrupt {
                        page: id,
                        reason: "tree deeper than 64 levels (cycle?)".into(),
                    });
                }
                let node = self.src.node(id)?;
                self.stack.push((node, 0));
                if node.is_leaf() {
                    break;
                }
                id = node.child(0);
            }
            if let Some((leaf, _)) = self.stack.last() {
                if !leaf.is_empty() {
                    return Ok(());
                }
            }
        }
    }

    pub fn value(&self, v: ValRef<'a>) -> Result<Cow<'a, [u8]>, StoreError> {
        read_value(self.src, v)
    }
}

struct Shared {
    storage: Arc<dyn Storage>,
    current: ArcSwap<Snapshot>,
    in_use_bytes: AtomicU64,
    file_bytes: AtomicU64,
}

enum Dirty {
    /// A decoded node and its encoded size if known (`SIZE_UNKNOWN`: compute it).
    Node(Node, usize),
    Raw(Box<[u8]>),
}

const SIZE_UNKNOWN: usize = usize::MAX;

/// The single writer. All changes since the last `commit` are private to it.
pub struct DbWriter {
    shared: Arc<Shared>,
    opts: DbOptions,
    base: Arc<Snapshot>,
    root: PageId,
    page_count: u64,
    file_len: u64,
    app: [u64; META_APP_WORDS],
    /// Pages changed or allocated since the last commit, under placeholder ids (see
    /// `VIRTUAL_BASE`) until `commit` gives them real ones.
    dirty: PageMap<Dirty>,
    /// The buffer pages are encoded into for their pwrite (kept: one commit fills up to
    /// `WRITE_BATCH_BYTES_MAX` of it).
    write_buf: Vec<u8>,
    /// The tree pages the last commit wrote, as written, if it wrote at most
    /// `RECENT_PAGES_MAX` (a light commit): the next commit's `make_dirty` of those pages (the
    /// root, the branches above the changed leaves, an append-only keyspace's last leaf)
    /// takes the bytes from here instead of a pread or a first fault on a page the map never
    /// showed. Every entry equals the page on disk: only `write_pages` writes tree pages, and
    /// it replaces this set.
    recent: PageMap<Vec<u8>>,
    /// The next placeholder id (`VIRTUAL_BASE + virtual_next`).
    virtual_next: u64,
    /// Give this commit's pages the lowest free ids (defragmentation moves pages down).
    alloc_low: bool,
    free: FreePages,
    pending: VecDeque<(u64, Vec<PageId>)>,
    pending_count: u64,
    freed_now: Vec<PageId>,
    txn: u64,
    last_durable_txn: u64,
    durable_meta_slot: u64,
    freelist_pages: Vec<PageId>,
    /// The commit-record pages of the last durable commit (free once the next one lands).
    record_pages: Vec<PageId>,
    /// Pages written since the last durable commit and not freed since, with the crc32c in
    /// their header: the next durable commit's record.
    written_live: PageMap<u32>,
    open_report: OpenReport,
    /// Buffers of nodes written out, for the next decodes.
    pool: NodePool,
    readers: Vec<(u64, Weak<Snapshot>)>,
    unsynced_freed_pages: u64,
    /// The txn of a durable commit written but not yet known synced (`commit_durable_start`).
    sync_in_flight: Option<u64>,
    poisoned: bool,
    /// Pages whose bytes in the file this writer wrote itself or verified (crc32c) since open;
    /// it reads them without recomputing the checksum (header and bounds are still checked).
    /// Every other page the writer reads is verified first. See `Trusted`.
    trusted: Trusted,
    /// Per window of `MAP_WINDOW_PAGES` pages: pages `make_dirty` read in it since `map_epoch`
    /// (saturating).
    map_windows: Vec<u8>,
    map_epoch: u64,
}

/// A map keyed by page id, hashed by one multiplication (ids are not attacker-chosen, and the
/// default SipHash was ~3% of a large commit's CPU: the writer looks up its dirty pages on
/// every step of every insert).
type PageMap<V> = HashMap<PageId, V, std::hash::BuildHasherDefault<PageIdHasher>>;

/// See `PageMap`.
#[derive(Default)]
struct PageIdHasher(u64);

impl std::hash::Hasher for PageIdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0.rotate_left(5) ^ u64::from(*b)).wrapping_mul(PAGE_ID_HASH_MUL);
        }
    }
    fn write_u64(&mut self, id: u64) {
        // Odd multiplier: distinct low bits (hashbrown's bucket index) for consecutive ids,
        // and every bit of the id reaches the top bits (its control byte).
        self.0 = (id ^ (id >> 32)).wrapping_mul(PAGE_ID_HASH_MUL);
    }
}

/// Multiplier of `PageIdHasher` (the 64-bit golden ratio, odd).
const PAGE_ID_HASH_MUL: u64 = 0x9E37_79B9_7F4A_7C15;

/// Pages the kernel maps around a faulting page of a file mapping (fault-around: 64 KiB).
const MAP_WINDOW_PAGES: u64 = 16;
/// A commit that writes at most this many pages keeps them for the next commit's
/// `make_dirty` (`DbWriter::recent`): 256 KiB of copies at most, against a pread or a page
/// fault (~10 µs each on the test VM) per page the next commit changes again.
const RECENT_PAGES_MAX: usize = 64;
/// Reads in a window that `make_dirty` does with pread before it reads through the map.
const MAP_WINDOW_READS_PREAD: u8 = 2;

/// One bit per page id: set once the page's bytes in the file are known to be what this
/// writer wrote, or were read and verified (crc32c) by it, since open. The file changes only
/// through the writer's own writes, and every write sets the bits of the pages it covers, so a
/// set bit stays true until the process ends; a reopen starts with none set (only the pages
/// open's commit-record check verified). Readers (`Snapshot`) do not use it: they verify
/// every page they read.
#[derive(Default)]
struct Trusted {
    words: Vec<std::cell::Cell<u64>>,
}

impl Trusted {
    fn get(&self, id: PageId) -> bool {
        self.words
            .get((id / 64) as usize)
            .is_some_and(|w| w.get() & (1 << (id % 64)) != 0)
    }
    /// Sets the bit of `id` (ids past the bitmap are left untrusted until `cover` grows it).
    fn set(&self, id: PageId) {
        if let Some(w) = self.words.get((id / 64) as usize) {
            w.set(w.get() | 1 << (id % 64));
        }
    }
    /// Makes room for ids below `page_count`; drops the bits of ids at or past it (pages cut
    /// off the file's end come back later as fresh pages).
    fn cover(&mut self, page_count: u64) {
        let words = page_count.div_ceil(64) as usize;
        self.words.resize_with(words, Default::default);
        if !page_count.is_multiple_of(64) {
            let last = &self.words[words - 1];
            last.set(last.get() & ((1u64 << (page_count % 64)) - 1));
        }
    }
}

/// Pages allocated since the last commit get placeholder ids from here up; `commit` assigns
/// all of them real ids at once, from one run of free pages when it can, so the commit's pages
/// are consecutive in the file and go out in a few large writes (`DbWriter::take_pages`).
const VIRTUAL_BASE: PageId = 1 << 62;

/// A commit that finds no free run long enough takes scattered free pages (longest runs
/// first) once `1 / FREE_SHARE_REUSE_DIVISOR` of the file is free, else grows the file: a
/// half trades file size (at most ~2x the live pages plus the pages freed by the last commits)
/// for commits written in few runs (a commit frees the pages it copies, scattered over the
/// file, so the fuller the file the shorter its free runs: with a quarter, a 10k-key commit
/// took ~900 pwrites and a 100-key one ~46; with a half, ~140 and ~16, for 5–10% less CPU).
const FREE_SHARE_REUSE_DIVISOR: u64 = 2;

fn is_virtual(id: PageId) -> bool {
    id >= VIRTUAL_BASE
}

/// `DbWriter::spread_leaf` spreads two leaves' entries over two pages while they average at
/// most this many bytes, else over three (each then about two thirds full).
const SPREAD_TWO_BYTES_MAX: usize = PAGE_SIZE * 7 / 8;

/// With `DbOptions::defer_forced_sync`, a non-durable commit still syncs inline once the pages
/// freed since the last durable commit exceed this many times `unsynced_freed_bytes_max`
/// (the caller's deferred durable commit is late: bounds the file's growth).
const UNSYNCED_FREED_DEFERRED_FACTOR_MAX: u64 = 4;

/// Which durable commit `Db::open` chose, and why.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OpenReport {
    /// The txn id of the commit opened and its meta slot (0 or 1).
    pub txn: u64,
    pub slot: u64,
    /// Pages the commit record listed, each checked against its recorded crc32c.
    pub verified_pages: u64,
    /// A newer meta page that was passed over: its txn id and why its commit record did not
    /// verify (a durable commit cut by a crash before its fdatasync returned: never
    /// acknowledged, so not an error).
    pub discarded: Option<(u64, String)>,
}

/// Checks the commit record of `m` against the file: every listed page must hold the crc32c
/// the record names (in its header, and computed). Returns the record's pages and the pages it
/// lists (each checked). Cost: one read + crc32c of each page written since the previous
/// durable commit.
fn verify_record(file: &[u8], m: &Meta) -> Result<(Vec<PageId>, Vec<PageId>), StoreError> {
    if m.record == 0 {
        return Ok((Vec::new(), Vec::new()));
    }
    let page = |id: PageId| -> Result<&[u8], StoreError> {
        if id < 2 || id >= m.page_count {
            return Err(StoreError::Corrupt {
                page: id,
                reason: format!(
                    "commit record of txn {} names a page outside its {} pages",
                    m.txn, m.page_count
                ),
            });
        }
        let off = id as usize * PAGE_SIZE;
        file.get(off..off + PAGE_SIZE)
            .ok_or_else(|| StoreError::Corrupt {
                page: id,
                reason: format!(
                    "page of txn {}'s commit lies past the end of the file",
                    m.txn
                ),
            })
    };
    let mut pages = Vec::new();
    let mut crc = 0u32;
    let mut checked = 0u64;
    let mut listed = Vec::new();
    let mut id = m.record;
    while id != 0 {
        if pages.len() as u64 >= m.page_count {
            return Err(StoreError::Corrupt {
                page: id,
                reason: "commit record longer than the file (cycle?)".into(),
            });
        }
        let (next, entries) = decode_record_page(page(id)?, id, &mut crc)?;
        for (pid, want) in entries {
            checked += 1;
            if checked > m.record_entries {
                return Err(StoreError::Corrupt {
                    page: id,
                    reason: format!(
                        "commit record holds more than the meta's {} entries",
                        m.record_entries
                    ),
                });
            }
            let b = page(pid)?;
            let stored = rd_u32(b, OFF_CRC);
            if stored != want || crc32c::crc32c(&b[4..]) != want {
                return Err(StoreError::Corrupt {
                    page: pid,
                    reason: format!(
                        "page does not hold what txn {}'s commit wrote (recorded crc32c \
                         {want:#010x}, header {stored:#010x})",
                        m.txn
                    ),
                });
            }
            listed.push(pid);
        }
        pages.push(id);
        id = next;
    }
    if checked != m.record_entries || crc != m.record_crc {
        return Err(StoreError::Corrupt {
            page: m.record,
            reason: format!(
                "commit record of txn {} holds {checked} entries with crc32c {crc:#010x}, \
                 the meta page says {} with {:#010x}",
                m.txn, m.record_entries, m.record_crc
            ),
        });
    }
    Ok((pages, listed))
}

/// A cheap, cloneable handle that pins the latest committed tree without locks.
#[derive(Clone)]
pub struct DbReader(Arc<Shared>);

impl DbReader {
    pub fn read(&self) -> Arc<Snapshot> {
        self.0.current.load_full()
    }
    /// Bytes of the file (including preallocated space).
    pub fn file_bytes(&self) -> u64 {
        self.0.file_bytes.load(Ordering::Relaxed)
    }
    /// Bytes of pages that a committed tree or a pending reader still uses.
    pub fn in_use_bytes(&self) -> u64 {
        self.0.in_use_bytes.load(Ordering::Relaxed)
    }
}

/// The page layer as one object: readers call `read`, the writer locks `writer`.
pub struct Db {
    shared: Arc<Shared>,
    writer: Mutex<DbWriter>,
}

impl Db {
    pub fn open(path: &Path, opts: DbOptions) -> Result<Db, StoreError> {
        Db::open_storage(Arc::new(FileStorage::open(path)?), opts)
    }
    pub fn open_storage(storage: Arc<dyn Storage>, opts: DbOptions) -> Result<Db, StoreError> {
        let w = DbWriter::open(storage, opts)?;
        Ok(Db {
            shared: w.shared.clone(),
            writer: Mutex::new(w),
        })
    }
    /// Pins the latest committed tree.
    pub fn read(&self) -> Arc<Snapshot> {
        self.shared.current.load_full()
    }
    /// Gives up the `Db` wrapper for its writer (readers come from `DbWriter::reader`).
    pub fn into_writer(self) -> DbWriter {
        self.writer.into_inner().unwrap_or_else(|e| e.into_inner())
    }
    pub fn writer(&self) -> MutexGuard<'_, DbWriter> {
        self.writer.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl PageSource for DbWriter {
    fn root(&self) -> PageId {
        self.root
    }
    fn node(&self, id: PageId) -> Result<NodeRef<'_>, StoreError> {
        match self.dirty.get(&id) {
            Some(Dirty::Node(n, _)) => Ok(NodeRef::Mem(n)),
            Some(Dirty::Raw(_)) => Err(StoreError::Corrupt {
                page: id,
                reason: "tree node points at an overflow page".into(),
            }),
            None => self.base_node(id),
        }
    }
    fn raw_page(&self, id: PageId) -> Result<&[u8], StoreError> {
        match self.dirty.get(&id) {
            Some(Dirty::Raw(b)) => Ok(b),
            Some(Dirty::Node(..)) => Err(StoreError::Corrupt {
                page: id,
                reason: "overflow chain points at a tree node".into(),
            }),
            None => self.base.raw_page(id),
        }
    }
}

/// Builds a value from the entry after the new key (its key and whole value), if that entry
/// starts with the caller's prefix; `None` when no entry with that prefix follows.
pub type NextFn<'a> = dyn FnMut(Option<(&[u8], &[u8])>) -> Result<Vec<u8>, StoreError> + 'a;

/// What `insert_rec` puts at the leaf.
enum Ins<'v, 'f> {
    /// A value ready to store.
    Val(ValRef<'v>),
    /// A value built from the entry after the key (`insert_from_next`); `inserted` says
    /// whether it was built. `hi_in_prefix`: the subtree's upper bound (the separator after it)
    /// starts with `key[..prefix_bytes]`, so an entry with that prefix may lie beyond it.
    FromNext {
        make: &'f mut NextFn<'f>,
        prefix_bytes: usize,
        hi_in_prefix: bool,
        inserted: &'f mut bool,
    },
}

/// The shortest key `s` with `left < s <= right` (a branch separator).
fn separator(left: &[u8], right: &[u8]) -> NodeKey {
    debug_assert!(left < right);
    let common = left.iter().zip(right).take_while(|(a, b)| a == b).count();
    NodeKey::from_slice(&right[..(common + 1).min(right.len())])
}

impl DbWriter {
    fn open(storage: Arc<dyn Storage>, opts: DbOptions) -> Result<DbWriter, StoreError> {
        let mut file_len = storage.len()?;
        let mut report = OpenReport::default();
        let mut verified_at_open = Vec::new();
        let (meta, slot, record_pages) = if file_len == 0 {
            let meta = Meta {
                txn: 0,
                root: 0,
                freelist: 0,
                page_count: 2,
                app: [0; META_APP_WORDS],
                record: 0,
                record_entries: 0,
                record_crc: 0,
            };
            let init_len = 2 * PAGE_SIZE as u64;
            storage.set_len(init_len)?;
            storage.write_at(&meta.encode(0), 0)?;
            storage.sync_data()?;
            file_len = init_len;
            (meta, 0, Vec::new())
        } else {
            let map = storage.map()?;
            let b = map.bytes();
            let m0 = b.get(..PAGE_SIZE).map(|p| Meta::decode(p, 0));
            let m1 = b.get(PAGE_SIZE..2 * PAGE_SIZE).map(|p| Meta::decode(p, 1));
            let mut candidates: Vec<(Meta, u64)> = Vec::with_capacity(2);
            match (m0, m1) {
                (Some(Ok(a)), Some(Ok(b))) => {
                    if a.txn >= b.txn {
                        candidates.extend([(a, 0), (b, 1)]);
                    } else {
                        candidates.extend([(b, 1), (a, 0)]);
                    }
                }
                (Some(Ok(a)), _) => candidates.push((a, 0)),
                (_, Some(Ok(b))) => candidates.push((b, 1)),
                (Some(Err(e)), _) => return Err(e),
                (None, _) => {
                    return Err(StoreError::Corrupt {
                        page: 0,
                        reason: format!("file is {file_len} bytes, shorter than two meta pages"),
                    })
                }
            }
            // The newest meta whose commit record verifies: a durable commit is one pwrite
            // burst and one fdatasync, so a crash may leave its meta page on disk without all
            // of its pages. That commit was never acknowledged; the previous one is intact.
            let mut chosen = None;
            let mut failures = Vec::new();
            for (m, slot) in candidates {
                match verify_record(b, &m) {
                    Ok((pages, listed)) => {
                        chosen = Some((m, slot, pages));
                        report.verified_pages = listed.len() as u64;
                        verified_at_open = listed;
                        break;
                    }
                    Err(e) => failures.push((m.txn, e)),
                }
            }
            match chosen {
                Some((m, slot, pages)) => {
                    report.discarded = failures
                        .into_iter()
                        .next()
                        .map(|(txn, e)| (txn, e.to_string()));
                    (m, slot, pages)
                }
                None => {
                    // Both metas fail: report the older one (the newer may be a torn commit).
                    let (txn, e) = failures.pop().expect("at least one candidate");
                    return Err(match e {
                        StoreError::Corrupt { page, reason } => StoreError::Corrupt {
                            page,
                            reason: format!(
                                "{reason} (byte offset {}; commit record of txn {txn}, and no \
                                 other meta page's commit verifies)",
                                page * PAGE_SIZE as u64
                            ),
                        },
                        e => e,
                    });
                }
            }
        };
        report.txn = meta.txn;
        report.slot = slot;
        let map = storage.map()?;
        let verify = opts.verify_checksums;
        let base = Arc::new(Snapshot {
            txn: meta.txn,
            root: meta.root,
            page_count: meta.page_count,
            app: meta.app,
            map,
            verify,
        });
        // Load the free list.
        let mut free = FreePages::default();
        let mut freelist_pages = Vec::new();
        let mut id = meta.freelist;
        while id != 0 {
            if freelist_pages.len() as u64 > meta.page_count {
                return Err(StoreError::Corrupt {
                    page: id,
                    reason: "free list longer than the file (cycle?)".into(),
                });
            }
            let b = base.bytes_of(id)?;
            let n = check_header(b, id, &[KIND_FREELIST], true)? as usize;
            if n > FREELIST_IDS_MAX {
                return Err(StoreError::Corrupt {
                    page: id,
                    reason: format!("free-list page claims {n} ids"),
                });
            }
            for i in 0..n {
                let p = rd_u64(b, FREELIST_OFF_IDS + 8 * i);
                if p < 2 || p >= meta.page_count || !free.insert(p) {
                    return Err(StoreError::Corrupt {
                        page: id,
                        reason: format!("free-list entry {i} ({p}) out of range or repeated"),
                    });
                }
            }
            freelist_pages.push(id);
            id = rd_u64(b, FREELIST_OFF_NEXT);
        }
        let in_use = meta.page_count - free.len() as u64;
        let mut trusted = Trusted::default();
        trusted.cover(meta.page_count);
        for id in verified_at_open {
            trusted.set(id);
        }
        let shared = Arc::new(Shared {
            storage,
            current: ArcSwap::new(base.clone()),
            in_use_bytes: AtomicU64::new(in_use * PAGE_SIZE as u64),
            file_bytes: AtomicU64::new(file_len),
        });
        Ok(DbWriter {
            shared,
            opts,
            base,
            root: meta.root,
            page_count: meta.page_count,
            file_len,
            app: meta.app,
            dirty: PageMap::default(),
            write_buf: Vec::new(),
            recent: PageMap::default(),
            virtual_next: 0,
            alloc_low: false,
            free,
            pending: VecDeque::new(),
            pending_count: 0,
            freed_now: Vec::new(),
            txn: meta.txn + 1,
            last_durable_txn: meta.txn,
            durable_meta_slot: slot,
            freelist_pages,
            record_pages,
            written_live: PageMap::default(),
            open_report: report,
            pool: NodePool::default(),
            readers: Vec::new(),
            unsynced_freed_pages: 0,
            sync_in_flight: None,
            poisoned: false,
            trusted,
            map_windows: Vec::new(),
            map_epoch: u64::MAX,
        })
    }

    pub fn app(&self) -> [u64; META_APP_WORDS] {
        self.app
    }
    /// Which durable commit open chose (and any newer, torn one it passed over).
    pub fn open_report(&self) -> &OpenReport {
        &self.open_report
    }
    pub fn reader(&self) -> DbReader {
        DbReader(self.shared.clone())
    }
    pub fn set_app(&mut self, app: [u64; META_APP_WORDS]) {
        self.app = app;
    }
    /// The latest published snapshot (what new readers see).
    pub fn published(&self) -> Arc<Snapshot> {
        self.base.clone()
    }
    pub fn has_changes(&self) -> bool {
        !self.dirty.is_empty() || self.root != self.base.root || self.app != self.base.app
    }
    pub fn file_bytes(&self) -> u64 {
        self.file_len
    }
    pub fn in_use_bytes(&self) -> u64 {
        self.shared.in_use_bytes.load(Ordering::Relaxed)
    }

    /// A node of the committed tree `base`; its checksum is verified unless this writer wrote
    /// or verified the page since open (see `Trusted`).
    fn base_node(&self, id: PageId) -> Result<NodeRef<'_>, StoreError> {
        let verify = self.base.verify && !self.trusted.get(id);
        let p = PageRef::parse(self.base.bytes_of(id)?, id, verify)?;
        if verify {
            self.trusted.set(id);
        }
        Ok(NodeRef::Page(p))
    }

    /// Whether `make_dirty` copies page `id` from the map rather than pread it. A read through
    /// the map faults unless the page's window is mapped, and the fault maps the whole window
    /// (the kernel's fault-around): worth it where the writer reads several pages of a window
    /// (a big batch over a small tree), not where it reads one page per window (puts spread
    /// over a big tree: a fault per page, and the map's resident set to release). So: pread
    /// the first `MAP_WINDOW_READS_PREAD` pages read in a window since the map was last
    /// (re)made or released, the map from then on.
    fn read_through_map(&mut self, id: PageId) -> bool {
        match self.opts.reads {
            PageReads::Map => return true,
            PageReads::Pread => return false,
            PageReads::Auto => {}
        }
        let epoch = self.shared.storage.map_epoch();
        if epoch != self.map_epoch {
            self.map_epoch = epoch;
            self.map_windows.fill(0);
        }
        let w = (id / MAP_WINDOW_PAGES) as usize;
        if w >= self.map_windows.len() {
            self.map_windows.resize(w + 1, 0);
        }
        let seen = self.map_windows[w];
        self.map_windows[w] = seen.saturating_add(1);
        seen >= MAP_WINDOW_READS_PREAD
    }

    /// A placeholder id for a new page (`commit` assigns the real one).
    fn alloc(&mut self) -> PageId {
        let id = VIRTUAL_BASE + self.virtual_next;
        self.virtual_next += 1;
        id
    }

    fn free_page(&mut self, id: PageId) {
        if is_virtual(id) {
            // Allocated since the last commit: nobody else has seen it, and it has no page yet.
            assert!(
                self.dirty.remove(&id).is_some(),
                "freeing unknown new page {id:#x}"
            );
            return;
        }
        assert!(
            id >= 2 && id < self.page_count,
            "freeing page {id} outside the file"
        );
        debug_assert!(
            !self.dirty.contains_key(&id),
            "committed page {id} is dirty"
        );
        // The next durable tree does not reach it: its content need not be verified.
        self.written_live.remove(&id);
        self.freed_now.push(id);
    }

    /// `n` free page ids for one commit, ascending. A durable commit takes them in few runs
    /// so that it goes out as a few large writes and its fdatasync flushes a few extents: the
    /// shortest free run that holds all `n` if there is one; else, once half of the file is
    /// free (`FREE_SHARE_REUSE_DIVISOR`, which bounds the file's growth), the longest free
    /// runs; then the end of the file. A non-durable commit has no sync to save: it takes the lowest free pages (the
    /// pages it rewrites most, so the ones most likely cached), as does defragmentation
    /// (`alloc_low`), which moves pages down.
    fn take_pages(&mut self, n: u64, durable: bool) -> Vec<PageId> {
        if n == 0 {
            return Vec::new();
        }
        let free = self.free.len() as u64;
        let mut ids = if self.alloc_low || !durable {
            self.free.take_lowest(n)
        } else if let Some(start) = self.free.take_run(n) {
            (start..start + n).collect()
        } else if free * FREE_SHARE_REUSE_DIVISOR >= self.page_count {
            let mut ids: Vec<PageId> = self
                .free
                .take_longest(n, 1)
                .into_iter()
                .flat_map(|(s, l)| s..s + l)
                .collect();
            ids.sort_unstable();
            ids
        } else {
            Vec::new()
        };
        while (ids.len() as u64) < n {
            ids.push(self.page_count);
            self.page_count += 1;
        }
        ids
    }

    /// Gives the pages allocated since the last commit (all of `dirty`, which this empties)
    /// the real ids `ids`, rewriting every pointer to them (children, overflow heads, overflow
    /// chains, the root). Returns the pages under their real ids, ascending.
    fn assign_pages(&mut self, ids: &[PageId]) -> Vec<(PageId, Dirty)> {
        let mut pages: Vec<(PageId, Dirty)> = self.dirty.drain().collect();
        assert_eq!(pages.len(), ids.len(), "one id per new page");
        pages.sort_unstable_by_key(|(id, _)| *id);
        let mut map = vec![0 as PageId; self.virtual_next as usize];
        for ((v, _), real) in pages.iter().zip(ids) {
            assert!(
                is_virtual(*v),
                "page {v} dirty before the commit assigns ids"
            );
            map[(*v - VIRTUAL_BASE) as usize] = *real;
        }
        let remap = |id: &mut PageId| {
            if is_virtual(*id) {
                let real = map[(*id - VIRTUAL_BASE) as usize];
                assert!(real != 0, "pointer to freed new page {:#x}", *id);
                *id = real;
            }
        };
        for ((_, d), real) in pages.iter_mut().zip(ids) {
            match d {
                Dirty::Node(Node::Branch { children, .. }, _) => {
                    children.iter_mut().for_each(remap)
                }
                Dirty::Node(Node::Leaf { ents, heap }, _) => {
                    for e in ents.iter().map(|e| e.off()) {
                        if let LeafVal::Inline { .. } = heap_stored(heap, e) {
                            continue;
                        }
                        // The overflow head sits right after the key.
                        let at = e as usize + LEAF_ENTRY_HEADER_BYTES + heap_key(heap, e).len();
                        let mut first = rd_u64(heap, at);
                        remap(&mut first);
                        wr_u64(heap, at, first);
                    }
                }
                Dirty::Raw(p) => {
                    assert_eq!(p[OFF_KIND], KIND_OVERFLOW, "new raw page is not overflow");
                    let mut next = rd_u64(p, OVERFLOW_OFF_NEXT);
                    remap(&mut next);
                    wr_u64(p, OVERFLOW_OFF_NEXT, next);
                    seal(p, KIND_OVERFLOW, 0, *real);
                }
            }
        }
        remap(&mut self.root);
        self.virtual_next = 0;
        self.alloc_low = false;
        pages
            .into_iter()
            .zip(ids)
            .map(|((_, d), real)| (*real, d))
            .collect()
    }

    /// Makes `id` writable, copying it to a new page if it is committed. Returns the new id.
    fn make_dirty(&mut self, id: PageId) -> Result<PageId, StoreError> {
        if matches!(self.dirty.get(&id), Some(Dirty::Node(..))) {
            return Ok(id);
        }
        if self.dirty.contains_key(&id) {
            return Err(StoreError::Corrupt {
                page: id,
                reason: "tree node points at an overflow page".into(),
            });
        }
        // The committed page goes into the buffer the node keeps: copied from the map, or read
        // with one pread where the map would fault for this page alone (`read_through_map`).
        self.base.bytes_of(id)?;
        let buf = if let Some(buf) = self.recent.remove(&id) {
            debug_assert!({
                let mut disk = vec![0u8; PAGE_SIZE];
                self.shared
                    .storage
                    .read_at(&mut disk, id * PAGE_SIZE as u64)?;
                disk == buf
            });
            buf
        } else {
            let mut buf = self.pool.take_page_buf();
            if self.read_through_map(id) {
                buf.copy_from_slice(self.base.bytes_of(id)?);
            } else {
                self.shared
                    .storage
                    .read_at(&mut buf, id * PAGE_SIZE as u64)?;
            }
            buf
        };
        let verify = self.base.verify && !self.trusted.get(id);
        let (node, size) = Node::from_page_buf(buf, id, verify, &mut self.pool)?;
        if verify {
            self.trusted.set(id);
        }
        self.free_page(id);
        let new = self.alloc();
        self.dirty.insert(new, Dirty::Node(node, size));
        Ok(new)
    }

    /// A dirty node to change in any way (its cached size is dropped).
    fn node_mut(&mut self, id: PageId) -> &mut Node {
        match self.dirty.get_mut(&id) {
            Some(Dirty::Node(n, size)) => {
                *size = SIZE_UNKNOWN;
                n
            }
            _ => panic!("page {id} is not a dirty node"),
        }
    }

    /// A dirty node and its encoded size, which the caller keeps exact across its changes.
    fn node_sized(&mut self, id: PageId) -> (&mut Node, &mut usize) {
        match self.dirty.get_mut(&id) {
            Some(Dirty::Node(n, size)) => {
                if *size == SIZE_UNKNOWN {
                    *size = n.encoded_bytes();
                }
                (n, size)
            }
            _ => panic!("page {id} is not a dirty node"),
        }
    }

    fn write_overflow(&mut self, value: &[u8]) -> LeafVal {
        let chunks: Vec<&[u8]> = value.chunks(OVERFLOW_DATA_BYTES).collect();
        let ids: Vec<PageId> = (0..chunks.len()).map(|_| self.alloc()).collect();
        for (i, chunk) in chunks.iter().enumerate() {
            let mut p = vec![0u8; PAGE_SIZE].into_boxed_slice();
            let next = ids.get(i + 1).copied().unwrap_or(0);
            wr_u64(&mut p, OVERFLOW_OFF_NEXT, next);
            wr_u32(&mut p, OVERFLOW_OFF_LEN, chunk.len() as u32);
            p[OVERFLOW_OFF_DATA..OVERFLOW_OFF_DATA + chunk.len()].copy_from_slice(chunk);
            seal(&mut p, KIND_OVERFLOW, 0, ids[i]);
            self.dirty.insert(ids[i], Dirty::Raw(p));
        }
        LeafVal::Overflow {
            first: ids[0],
            len: value.len() as u32,
        }
    }

    fn free_value(&mut self, v: &LeafVal) -> Result<(), StoreError> {
        if let LeafVal::Overflow { first, len } = v {
            let mut id = *first;
            let pages = (*len as usize).div_ceil(OVERFLOW_DATA_BYTES);
            for _ in 0..pages {
                let b = self.raw_page(id)?;
                check_header(b, id, &[KIND_OVERFLOW], true)?;
                let next = rd_u64(b, OVERFLOW_OFF_NEXT);
                self.free_page(id);
                if next == 0 {
                    break;
                }
                id = next;
            }
        }
        Ok(())
    }

    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        get_in(self, key)
    }
    /// A cursor over the writer's view (its uncommitted changes included).
    pub fn cursor(&self) -> Cursor<'_, DbWriter> {
        Cursor::new(self)
    }

    pub fn check_limits(key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        if key.len() > KEY_BYTES_MAX {
            return Err(StoreError::Invalid(format!(
                "key of {} bytes exceeds key_bytes_max {KEY_BYTES_MAX}",
                key.len()
            )));
        }
        if value.len() > VALUE_BYTES_MAX {
            return Err(StoreError::Invalid(format!(
                "value of {} bytes exceeds value_bytes_max {VALUE_BYTES_MAX}",
                value.len()
            )));
        }
        Ok(())
    }

    /// Inserts or replaces `key`.
    pub fn insert(&mut self, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        Self::check_limits(key, value)?;
        if self.poisoned {
            return Err(StoreError::Poisoned);
        }
        let val = if value_is_inline(key.len(), value.len()) {
            ValRef::Inline(value)
        } else {
            match self.write_overflow(value) {
                LeafVal::Overflow { first, len } => ValRef::Overflow { first, len },
                LeafVal::Inline { .. } => unreachable!("write_overflow returns a chain"),
            }
        };
        if self.root == 0 {
            let id = self.alloc();
            let mut heap = Vec::new();
            let e = heap_push(&mut heap, key, val);
            self.dirty.insert(
                id,
                Dirty::Node(
                    Node::Leaf {
                        ents: vec![LeafEnt::new(e, key)],
                        heap,
                    },
                    SIZE_UNKNOWN,
                ),
            );
            self.root = id;
            return Ok(());
        }
        let (root, split) = self.insert_rec(self.root, key, Ins::Val(val), false)?;
        self.set_root(root, split);
        Ok(())
    }

    /// Installs the root an insert returned; a root split gets a new branch above both halves.
    fn set_root(&mut self, root: PageId, split: Option<(NodeKey, PageId)>) {
        self.root = root;
        if let Some((sep, right)) = split {
            let id = self.alloc();
            self.dirty.insert(
                id,
                Dirty::Node(
                    Node::Branch {
                        keys: vec![sep],
                        children: vec![root, right],
                    },
                    SIZE_UNKNOWN,
                ),
            );
            self.root = id;
        }
    }

    /// Inserts `key`, which must be absent, with a value that `make` builds from the entry
    /// sorting right after `key`, in one descent: `make` gets that entry (its key and whole
    /// value) when it is in the leaf `key` goes to, or `None` when `key` would be the leaf's last
    /// entry and the separator after the leaf shows that no entry starting with
    /// `key[..prefix_bytes]` follows. When neither holds (the next entry with that prefix may
    /// start the next leaf, `key` is already present, or the tree is empty), nothing is inserted
    /// and this returns false; the caller then looks the next entry up with a cursor and calls
    /// `insert`.
    pub fn insert_from_next<'f>(
        &mut self,
        key: &[u8],
        prefix_bytes: usize,
        make: &'f mut NextFn<'f>,
    ) -> Result<bool, StoreError> {
        assert!(prefix_bytes <= key.len(), "prefix longer than the key");
        if key.len() > KEY_BYTES_MAX {
            return Err(StoreError::Invalid(format!(
                "key of {} bytes exceeds key_bytes_max {KEY_BYTES_MAX}",
                key.len()
            )));
        }
        if self.poisoned {
            return Err(StoreError::Poisoned);
        }
        if self.root == 0 {
            return Ok(false);
        }
        let mut inserted = false;
        let (root, split) = self.insert_rec(
            self.root,
            key,
            Ins::FromNext {
                make,
                prefix_bytes,
                // No separator after the root: nothing lies beyond the rightmost leaf.
                hi_in_prefix: false,
                inserted: &mut inserted,
            },
            false,
        )?;
        self.set_root(root, split);
        Ok(inserted)
    }

    /// The leaf step of `insert_from_next`: builds the value from the entry after `key` in
    /// leaf `id` (dirty), or returns `None` when that entry is not in this leaf.
    fn value_from_next(
        &mut self,
        id: PageId,
        key: &[u8],
        hi_in_prefix: bool,
        make: &mut NextFn<'_>,
    ) -> Result<Option<u32>, StoreError> {
        let value = {
            let Some(NodeRef::Mem(Node::Leaf { ents, heap })) = self.node(id).ok() else {
                unreachable!("value_from_next: page {id} is not a dirty leaf");
            };
            let prefix = key_prefix(key);
            match ents.binary_search_by(|&e| e.cmp_key(heap, key, prefix)) {
                Err(i) if i < ents.len() => {
                    let next = read_value(self, heap_value(heap, ents[i].off()))?;
                    make(Some((heap_key(heap, ents[i].off()), &next)))?
                }
                Err(_) if !hi_in_prefix => make(None)?,
                _ => return Ok(None),
            }
        };
        Self::check_limits(key, &value)?;
        let val = if value_is_inline(key.len(), value.len()) {
            ValRef::Inline(&value)
        } else {
            match self.write_overflow(&value) {
                LeafVal::Overflow { first, len } => ValRef::Overflow { first, len },
                LeafVal::Inline { .. } => unreachable!("write_overflow returns a chain"),
            }
        };
        Ok(Some(match &mut *self.node_mut_sized_ref(id) {
            Node::Leaf { heap, .. } => heap_push(heap, key, val),
            Node::Branch { .. } => unreachable!("leaf"),
        }))
    }

    /// A dirty node, its cached size kept (for reads and for pushing value bytes to a leaf's
    /// heap, which does not change the encoded size).
    fn node_mut_sized_ref(&mut self, id: PageId) -> &mut Node {
        match self.dirty.get_mut(&id) {
            Some(Dirty::Node(n, _)) => n,
            _ => panic!("page {id} is not a dirty node"),
        }
    }

    /// Inserts into the subtree at `page`; returns its new id and, if it split, the separator
    /// and the new right sibling. Under a parent (`in_branch`), a leaf that overflows from an
    /// insert inside it is returned overfull, unsplit: the parent spreads it over a sibling
    /// (`spread_leaf`).
    #[allow(clippy::type_complexity)]
    fn insert_rec(
        &mut self,
        page: PageId,
        key: &[u8],
        mut ins: Ins<'_, '_>,
        in_branch: bool,
    ) -> Result<(PageId, Option<(NodeKey, PageId)>), StoreError> {
        let id = self.make_dirty(page)?;
        let mut appended = false;
        let mut old = None;
        let mut from_next = None;
        if let Ins::FromNext {
            make,
            hi_in_prefix,
            inserted,
            ..
        } = &mut ins
        {
            if matches!(self.dirty.get(&id), Some(Dirty::Node(Node::Leaf { .. }, _))) {
                match self.value_from_next(id, key, *hi_in_prefix, *make)? {
                    Some(v) => {
                        **inserted = true;
                        from_next = Some(v);
                    }
                    None => return Ok((id, None)),
                }
            }
        }
        let (node, size) = self.node_sized(id);
        let child = match node {
            Node::Leaf { ents, heap } => {
                let prefix = key_prefix(key);
                let found = ents.binary_search_by(|&e| e.cmp_key(heap, key, prefix));
                let e = match (from_next, &ins) {
                    (Some(e), _) => e,
                    (None, Ins::Val(val)) => heap_push(heap, key, *val),
                    (None, Ins::FromNext { .. }) => unreachable!("leaf value built above"),
                };
                let entry = SLOT_BYTES + heap_entry_len(heap, e);
                let e = LeafEnt::new(e, key);
                match found {
                    Ok(i) => {
                        let was = ents[i].off();
                        *size = *size + entry - SLOT_BYTES - heap_entry_len(heap, was);
                        old = Some(heap_stored(heap, was));
                        ents[i] = e;
                    }
                    Err(i) => {
                        appended = i == ents.len();
                        *size += entry;
                        ents.insert(i, e);
                    }
                }
                if heap.len() > LEAF_HEAP_BYTES_MAX {
                    *heap = compact_heap(ents, heap);
                }
                None
            }
            Node::Branch { keys, children } => {
                let idx = keys.partition_point(|k| k.as_slice() <= key);
                if let Ins::FromNext {
                    prefix_bytes,
                    hi_in_prefix,
                    ..
                } = &mut ins
                {
                    if let Some(hi) = keys.get(idx) {
                        *hi_in_prefix = hi.as_slice().starts_with(&key[..*prefix_bytes]);
                    }
                }
                Some((idx, children[idx]))
            }
        };
        if let Some(v) = old {
            self.free_value(&v)?;
        }
        if let Some((idx, child)) = child {
            let (new_child, split) = self.insert_rec(child, key, ins, true)?;
            let (node, size) = self.node_sized(id);
            let mut spill = false;
            if let Node::Branch { keys, children } = node {
                children[idx] = new_child;
                if let Some((sep, right)) = split {
                    appended = idx == keys.len();
                    *size += branch_entry_bytes(sep.len());
                    keys.insert(idx, sep);
                    children.insert(idx + 1, right);
                } else {
                    spill = true;
                }
            }
            if spill && *self.node_sized(new_child).1 > PAGE_SIZE {
                appended = self.spread_leaf(id, idx)?;
            }
        } else if in_branch && !appended {
            // An overfull leaf goes back to the parent, which spreads it over a sibling.
            return Ok((id, None));
        }
        let split = self.split_if_needed(id, appended);
        Ok((id, split))
    }

    /// Evens out dirty sibling leaves `lid` and `rid` (children `l` and `l + 1` of dirty branch
    /// `id`) by moving entries across their boundary, when both then fit and together they
    /// average at most `SPREAD_TWO_BYTES_MAX`; updates the separator. Returns whether it did.
    fn shift_leaves(&mut self, id: PageId, l: usize, lid: PageId, rid: PageId) -> bool {
        let (ls, rs) = (*self.node_sized(lid).1, *self.node_sized(rid).1);
        if ls + rs - LEAF_OFF_SLOTS > 2 * SPREAD_TWO_BYTES_MAX {
            return false;
        }
        let Some(Dirty::Node(mut right, _)) = self.dirty.remove(&rid) else {
            unreachable!("shift_leaves: {rid} is a dirty node");
        };
        let (Node::Leaf { ents: re, heap: rh }, (Node::Leaf { ents: le, heap: lh }, lsize)) =
            (&mut right, self.node_sized(lid))
        else {
            unreachable!("shift_leaves: two leaves");
        };
        let size_of = |heap: &[u8], e: LeafEnt| SLOT_BYTES + heap_entry_len(heap, e.off());
        // How many entries to move, and which way: while a move lowers the larger size.
        let (mut a, mut b) = (ls, rs);
        let mut moved = 0;
        if ls > rs {
            while moved + 1 < le.len() {
                let n = size_of(lh, le[le.len() - 1 - moved]);
                if b + n >= a {
                    break;
                }
                (a, b, moved) = (a - n, b + n, moved + 1);
            }
        } else {
            while moved + 1 < re.len() {
                let n = size_of(rh, re[moved]);
                if a + n >= b {
                    break;
                }
                (a, b, moved) = (a + n, b - n, moved + 1);
            }
        }
        let ok = moved > 0 && a <= PAGE_SIZE && b <= PAGE_SIZE;
        if ok {
            if ls > rs {
                let from = le.len() - moved;
                let mut offs = Vec::with_capacity(moved);
                for &e in &le[from..] {
                    offs.push(e.at(rh.len() as u32));
                    let (o, n) = (e.off() as usize, heap_entry_len(lh, e.off()));
                    rh.extend_from_slice(&lh[o..o + n]);
                }
                le.truncate(from);
                re.splice(0..0, offs);
            } else {
                for &e in &re[..moved] {
                    le.push(e.at(lh.len() as u32));
                    let (o, n) = (e.off() as usize, heap_entry_len(rh, e.off()));
                    lh.extend_from_slice(&rh[o..o + n]);
                }
                re.drain(..moved);
            }
            *lsize = a;
            if lh.len() > LEAF_HEAP_BYTES_MAX {
                *lh = compact_heap(le, lh);
            }
            if rh.len() > LEAF_HEAP_BYTES_MAX {
                *rh = compact_heap(re, rh);
            }
        }
        let sep = ok.then(|| {
            separator(
                heap_key(lh, le.last().expect("left keeps an entry").off()),
                heap_key(rh, re[0].off()),
            )
        });
        self.dirty
            .insert(rid, Dirty::Node(right, if ok { b } else { rs }));
        let Some(sep) = sep else {
            return false;
        };
        let (node, size) = self.node_sized(id);
        if let Node::Branch { keys, .. } = node {
            *size = *size + sep.len() - keys[l].len();
            keys[l] = sep;
        }
        true
    }

    /// Child `idx` of dirty branch `id` is a dirty leaf over a page. Spreads its entries and a
    /// neighbour's (made dirty) evenly over two leaves, or over three when two would be more
    /// than `SPREAD_TWO_BYTES_MAX` full on average: leaves end up fuller than with halving
    /// splits (fewer leaves, so fewer pages a batch of random inserts rewrites). Returns
    /// whether a separator was added at the end of `id` (for its own split point).
    fn spread_leaf(&mut self, id: PageId, idx: usize) -> Result<bool, StoreError> {
        let (lo, child, hi) = match self.node_mut_sized_ref(id) {
            Node::Branch { children, .. } => (
                idx.checked_sub(1).map(|i| children[i]),
                children[idx],
                children.get(idx + 1).copied(),
            ),
            Node::Leaf { .. } => unreachable!("spread_leaf under a leaf"),
        };
        // Only over a neighbour this commit rewrites anyway: spreading over a clean one would
        // write one more page now (small batches would pay it on most splits).
        let dirty_leaf = |id: Option<PageId>| {
            matches!(
                id.and_then(|i| self.dirty.get(&i)),
                Some(Dirty::Node(Node::Leaf { .. }, _))
            )
        };
        let l = if dirty_leaf(hi) {
            idx
        } else if dirty_leaf(lo) {
            idx - 1
        } else {
            return Ok(self.split_child_alone(id, idx, child));
        };
        let (lid, rid) = match self.node_mut_sized_ref(id) {
            Node::Branch { children, .. } => (children[l], children[l + 1]),
            Node::Leaf { .. } => unreachable!(),
        };
        if self.shift_leaves(id, l, lid, rid) {
            return Ok(false);
        }
        let (
            Some(Dirty::Node(Node::Leaf { ents: le, heap: lh }, _)),
            Some(Dirty::Node(Node::Leaf { ents: re, heap: rh }, _)),
        ) = (self.dirty.get(&lid), self.dirty.get(&rid))
        else {
            return Err(StoreError::Corrupt {
                page: rid,
                reason: "a leaf's sibling is not a leaf".into(),
            });
        };
        // Entries of both, in key order: (from the right leaf, heap offset, encoded bytes).
        let all: Vec<(bool, LeafEnt, usize)> = le
            .iter()
            .map(|&e| (false, e, SLOT_BYTES + heap_entry_len(lh, e.off())))
            .chain(
                re.iter()
                    .map(|&e| (true, e, SLOT_BYTES + heap_entry_len(rh, e.off()))),
            )
            .collect();
        let total: usize = all.iter().map(|a| a.2).sum();
        let parts = if total <= 2 * SPREAD_TWO_BYTES_MAX {
            2
        } else {
            3
        };
        // Cut points: the first entry of each part after the first, each part as close to
        // total / parts as entry boundaries allow.
        let mut cuts = Vec::with_capacity(parts - 1);
        let mut acc = 0;
        for (i, a) in all.iter().enumerate() {
            let goal = total * (cuts.len() + 1) / parts;
            if cuts.len() + 1 < parts
                && acc + a.2 / 2 >= goal
                && i > cuts.last().copied().unwrap_or(0)
            {
                cuts.push(i);
            }
            acc += a.2;
        }
        let bounds: Vec<usize> = std::iter::once(0)
            .chain(cuts.iter().copied())
            .chain(std::iter::once(all.len()))
            .collect();
        let fits = cuts.len() + 1 == parts
            && bounds.windows(2).all(|w| {
                w[0] < w[1]
                    && LEAF_OFF_SLOTS + all[w[0]..w[1]].iter().map(|a| a.2).sum::<usize>()
                        <= PAGE_SIZE
            });
        if !fits {
            // Odd entry sizes: split the overfull leaf by itself (`shift_leaves` moved
            // nothing, so it is still child `idx`).
            return Ok(self.split_child_alone(id, idx, child));
        }
        let mut nodes = Vec::with_capacity(parts);
        let mut seps: Vec<NodeKey> = Vec::with_capacity(parts - 1);
        for w in bounds.windows(2) {
            let mut heap = self.pool.take_heap();
            let mut ents = Vec::with_capacity(w[1] - w[0] + 8);
            let mut bytes = LEAF_OFF_SLOTS;
            for &(right, e, n) in &all[w[0]..w[1]] {
                let src: &[u8] = if right { rh } else { lh };
                let (o, len) = (e.off() as usize, n - SLOT_BYTES);
                ents.push(e.at(heap.len() as u32));
                heap.extend_from_slice(&src[o..o + len]);
                bytes += n;
            }
            if w[0] > 0 {
                let (pr, pe, _) = all[w[0] - 1];
                let (nr, ne, _) = all[w[0]];
                seps.push(separator(
                    heap_key(if pr { rh } else { lh }, pe.off()),
                    heap_key(if nr { rh } else { lh }, ne.off()),
                ));
            }
            nodes.push((Node::Leaf { ents, heap }, bytes));
        }
        let mut nodes = nodes.into_iter();
        let (n0, b0) = nodes.next().expect("left part");
        let (n1, b1) = nodes.next().expect("right part");
        for (nid, n, b) in [(lid, n0, b0), (rid, n1, b1)] {
            if let Some(Dirty::Node(old, _)) = self.dirty.insert(nid, Dirty::Node(n, b)) {
                self.pool.put(old);
            }
        }
        let third = nodes.next().map(|(n, b)| {
            let nid = self.alloc();
            self.dirty.insert(nid, Dirty::Node(n, b));
            nid
        });
        let mut seps = seps.into_iter();
        let mut at_end = false;
        if let Node::Branch { keys, children } = self.node_mut(id) {
            children[l] = lid;
            children[l + 1] = rid;
            keys[l] = seps.next().expect("separator");
            if let Some(nid) = third {
                at_end = l + 1 == keys.len();
                keys.insert(l + 1, seps.next().expect("second separator"));
                children.insert(l + 2, nid);
            }
        }
        Ok(at_end)
    }

    /// Splits the overfull leaf `child` (child `idx` of dirty branch `id`) by itself and
    /// inserts its separator and right half into `id`. Returns whether the separator went at
    /// the end of `id` (for its own split point).
    fn split_child_alone(&mut self, id: PageId, idx: usize, child: PageId) -> bool {
        let (sep, right) = self
            .split_if_needed(child, false)
            .expect("overfull leaf splits");
        let (node, size) = self.node_sized(id);
        let mut at_end = false;
        if let Node::Branch { keys, children } = node {
            debug_assert_eq!(children[idx], child);
            at_end = idx == keys.len();
            *size += branch_entry_bytes(sep.len());
            keys.insert(idx, sep);
            children.insert(idx + 1, right);
        }
        at_end
    }

    fn split_if_needed(&mut self, id: PageId, appended: bool) -> Option<(NodeKey, PageId)> {
        let size = *self.node_sized(id).1;
        debug_assert_eq!(
            Some(size),
            self.node_bytes(id).ok(),
            "size cache of page {id}"
        );
        if size <= PAGE_SIZE {
            return None;
        }
        let (node, size) = self.node_sized(id);
        let (sep, right, left_bytes, right_bytes) = match node {
            Node::Leaf { ents, heap } => {
                let sizes: Vec<usize> = ents
                    .iter()
                    .map(|&e| SLOT_BYTES + heap_entry_len(heap, e.off()))
                    .collect();
                let s = split_point(&sizes, LEAF_OFF_SLOTS, appended, 1);
                let left_bytes = LEAF_OFF_SLOTS + sizes[..s].iter().sum::<usize>();
                let right_bytes = LEAF_OFF_SLOTS + sizes[s..].iter().sum::<usize>();
                let mut re = ents.split_off(s);
                let sep = separator(
                    heap_key(heap, ents.last().expect("left half").off()),
                    heap_key(heap, re[0].off()),
                );
                // The right half gets a compact heap; the left keeps its heap (the right
                // half's entries stay in it as garbage until it is compacted).
                let rheap = compact_heap(&mut re, heap);
                if heap.len() > LEAF_HEAP_BYTES_MAX {
                    *heap = compact_heap(ents, heap);
                }
                (
                    sep,
                    Node::Leaf {
                        ents: re,
                        heap: rheap,
                    },
                    left_bytes,
                    right_bytes,
                )
            }
            Node::Branch { keys, children } => {
                let sizes: Vec<usize> = keys.iter().map(|k| branch_entry_bytes(k.len())).collect();
                // Key `m` moves up; left keeps keys[..m], right keys[m+1..].
                let m = split_point(&sizes, BRANCH_OFF_SLOTS, appended, 1).min(keys.len() - 2);
                let left_bytes = BRANCH_OFF_SLOTS + sizes[..m].iter().sum::<usize>();
                let right_bytes = BRANCH_OFF_SLOTS + sizes[m + 1..].iter().sum::<usize>();
                let rk = keys.split_off(m + 1);
                let sep = keys.pop().expect("separator");
                let rc = children.split_off(m + 1);
                (
                    sep,
                    Node::Branch {
                        keys: rk,
                        children: rc,
                    },
                    left_bytes,
                    right_bytes,
                )
            }
        };
        assert!(left_bytes <= PAGE_SIZE, "left half of split overflows");
        assert!(right_bytes <= PAGE_SIZE, "right half of split overflows");
        *size = left_bytes;
        debug_assert_eq!(Some(left_bytes), self.node_bytes(id).ok());
        debug_assert_eq!(right_bytes, right.encoded_bytes());
        let rid = self.alloc();
        self.dirty.insert(rid, Dirty::Node(right, right_bytes));
        Some((sep, rid))
    }

    /// Removes `key`. Returns whether it was present.
    pub fn remove(&mut self, key: &[u8]) -> Result<bool, StoreError> {
        if self.poisoned {
            return Err(StoreError::Poisoned);
        }
        if self.root == 0 {
            return Ok(false);
        }
        let Some(root) = self.remove_rec(self.root, key)? else {
            return Ok(false);
        };
        self.root = root;
        self.collapse_root()?;
        Ok(true)
    }

    /// Replaces a root branch with no keys by its only child, and an empty root leaf by nothing.
    fn collapse_root(&mut self) -> Result<(), StoreError> {
        if self.root == 0 || !matches!(self.dirty.get(&self.root), Some(Dirty::Node(..))) {
            return Ok(());
        }
        loop {
            let collapse = match self.node_mut(self.root) {
                Node::Leaf { ents, .. } if ents.is_empty() => Some(0),
                Node::Branch { keys, children } if keys.is_empty() => Some(children[0]),
                _ => None,
            };
            match collapse {
                None => break,
                Some(next) => {
                    let old = self.root;
                    self.free_page(old);
                    if next == 0 {
                        self.root = 0;
                        break;
                    }
                    self.root = self.make_dirty(next)?;
                }
            }
        }
        Ok(())
    }

    fn remove_rec(&mut self, page: PageId, key: &[u8]) -> Result<Option<PageId>, StoreError> {
        let node = self.node(page)?;
        if node.is_leaf() {
            let i = node.lower_bound(key);
            if i >= node.len() || node.key(i) != key {
                return Ok(None);
            }
            let id = self.make_dirty(page)?;
            let v = match self.node_mut(id) {
                Node::Leaf { ents, heap } => heap_stored(heap, ents.remove(i).off()),
                Node::Branch { .. } => unreachable!(),
            };
            self.free_value(&v)?;
            return Ok(Some(id));
        }
        let idx = node.child_index(key);
        let child = node.child(idx);
        let Some(new_child) = self.remove_rec(child, key)? else {
            return Ok(None);
        };
        let id = self.make_dirty(page)?;
        if let Node::Branch { children, .. } = self.node_mut(id) {
            children[idx] = new_child;
        }
        self.rebalance(id, idx)?;
        Ok(Some(id))
    }

    /// Merges child `idx` of branch `id` with a sibling when it is under a quarter full and
    /// the two fit in one page.
    fn rebalance(&mut self, id: PageId, idx: usize) -> Result<(), StoreError> {
        let (child, nchildren) = match self.node_mut(id) {
            Node::Branch { children, .. } => (children[idx], children.len()),
            Node::Leaf { .. } => unreachable!(),
        };
        let child_bytes = match self.node(child)? {
            NodeRef::Mem(n) => n.encoded_bytes(),
            NodeRef::Page(_) => return Ok(()),
        };
        if child_bytes >= PAGE_SIZE / 4 || nchildren < 2 {
            return Ok(());
        }
        let (l, _r) = if idx + 1 < nchildren {
            (idx, idx + 1)
        } else {
            (idx - 1, idx)
        };
        self.merge_pair(id, l, PAGE_SIZE)?;
        Ok(())
    }

    /// Merges children `l` and `l + 1` of dirty branch `id` into one page if the result takes
    /// at most `bytes_max`. Returns whether it merged.
    fn merge_pair(&mut self, id: PageId, l: usize, bytes_max: usize) -> Result<bool, StoreError> {
        let r = l + 1;
        let (lid, rid, sep) = match self.node_mut(id) {
            Node::Branch { keys, children } => (children[l], children[r], keys[l].clone()),
            Node::Leaf { .. } => unreachable!(),
        };
        let lb = self.node_bytes(lid)?;
        let rb = self.node_bytes(rid)?;
        let is_leaf = self.node(lid)?.is_leaf();
        let merged = if is_leaf {
            lb + rb - LEAF_OFF_SLOTS
        } else {
            lb + rb - BRANCH_OFF_SLOTS + branch_entry_bytes(sep.len())
        };
        if merged > bytes_max {
            return Ok(false);
        }
        let lid = self.make_dirty(lid)?;
        let right = match self.node(rid)? {
            NodeRef::Mem(n) => n.clone(),
            NodeRef::Page(p) => Node::from_page(&p),
        };
        self.free_page(rid);
        match (self.node_mut(lid), right) {
            (
                Node::Leaf { ents, heap },
                Node::Leaf {
                    ents: re,
                    heap: rheap,
                },
            ) => {
                let base = heap.len() as u32;
                heap.extend_from_slice(&rheap);
                ents.extend(re.into_iter().map(|e| e.at(e.off() + base)));
            }
            (
                Node::Branch { keys, children },
                Node::Branch {
                    keys: rk,
                    children: rc,
                },
            ) => {
                keys.push(sep);
                keys.extend(rk);
                children.extend(rc);
            }
            _ => {
                return Err(StoreError::Corrupt {
                    page: rid,
                    reason: "siblings at different levels".into(),
                })
            }
        }
        if let Node::Branch { keys, children } = self.node_mut(id) {
            keys.remove(l);
            children.remove(r);
            children[l] = lid;
        }
        Ok(true)
    }

    fn node_bytes(&self, id: PageId) -> Result<usize, StoreError> {
        Ok(match self.node(id)? {
            NodeRef::Mem(n) => n.encoded_bytes(),
            NodeRef::Page(p) => p.encoded_bytes(),
        })
    }

    /// One bounded slice of defragmentation over the keys from `from` on: relocates pages at or
    /// above `cutoff` to lower free pages and merges neighbours that fit in one page, at most
    /// `pages_max` changes and `visits_max` pages read. Returns the changes made and where the
    /// next slice resumes (`None`: this slice reached the end of the tree). Call `commit` after.
    pub fn relocate_above(
        &mut self,
        cutoff: PageId,
        pages_max: usize,
        from: &[u8],
        visits_max: usize,
    ) -> Result<(usize, Option<Vec<u8>>), StoreError> {
        if self.root == 0 {
            return Ok((0, None));
        }
        // The pages this slice moves must land below the cutoff.
        self.alloc_low = true;
        let mut w = Walk {
            cutoff,
            budget: pages_max,
            visits: visits_max.max(1),
            from: from.to_vec(),
            last: None,
        };
        let root = self.relocate_rec(self.root, &mut w, 0)?;
        self.root = root;
        self.collapse_root()?;
        let stopped = w.budget == 0 || w.visits == 0;
        let resume = if stopped {
            Some(w.last.unwrap_or(w.from))
        } else {
            None
        };
        Ok((pages_max - w.budget, resume))
    }

    fn relocate_rec(
        &mut self,
        page: PageId,
        w: &mut Walk,
        depth: usize,
    ) -> Result<PageId, StoreError> {
        if depth > 64 {
            return Err(StoreError::Corrupt {
                page,
                reason: "tree deeper than 64 levels".into(),
            });
        }
        if w.visits == 0 {
            return Ok(page);
        }
        w.visits -= 1;
        let cutoff = w.cutoff;
        let budget = &mut w.budget;
        let mut id = page;
        let node = self.node(page)?;
        if node.is_leaf() {
            if !node.is_empty() {
                w.last = Some(node.key(node.len() - 1).to_vec());
            }
            let budget = &mut w.budget;
            let mut moves = Vec::new();
            for i in 0..node.len() {
                if let ValRef::Overflow { first, len } = node.value(i) {
                    if *budget > 0 && self.chain_reaches(first, len, cutoff)? {
                        moves.push(i);
                        *budget = budget.saturating_sub(1);
                    }
                }
            }
            if !moves.is_empty() {
                id = self.make_dirty(id)?;
                for i in moves {
                    let v = match self.node_mut(id) {
                        Node::Leaf { ents, heap } => heap_stored(heap, ents[i].off()),
                        Node::Branch { .. } => unreachable!(),
                    };
                    // Only overflow values were picked (same index in the copied node).
                    let LeafVal::Overflow { first, len } = v else {
                        continue;
                    };
                    let bytes = read_value(self, ValRef::Overflow { first, len })?.into_owned();
                    self.free_value(&v)?;
                    let nv = self.write_overflow(&bytes);
                    if let Node::Leaf { ents, heap } = self.node_mut(id) {
                        ents[i] = ents[i].at(heap_push_overflow_for(heap, ents[i].off(), nv));
                    }
                }
            }
        } else {
            // Merge runs of underfull children (compaction leaves them) into fuller pages.
            let start = node.child_index(&w.from);
            let mut i = start;
            while *budget > 0 && i < self.node(id)?.len() {
                let n = self.node(id)?;
                let (a, b) = (n.child(i), n.child(i + 1));
                let fit = self.node_bytes(a)? + self.node_bytes(b)? <= PAGE_SIZE * 7 / 8;
                if fit {
                    id = self.make_dirty(id)?;
                    if self.merge_pair(id, i, PAGE_SIZE * 7 / 8)? {
                        *budget -= 1;
                        continue;
                    }
                }
                i += 1;
            }
            let n = self.node(id)?.len();
            for i in start..=n {
                if w.budget == 0 || w.visits == 0 {
                    break;
                }
                let child = self.node(id)?.child(i);
                let nc = self.relocate_rec(child, w, depth + 1)?;
                if nc != child {
                    id = self.make_dirty(id)?;
                    if let Node::Branch { children, .. } = self.node_mut(id) {
                        children[i] = nc;
                    }
                }
            }
        }
        if id >= cutoff && w.budget > 0 && !self.dirty.contains_key(&id) {
            w.budget -= 1;
            id = self.make_dirty(id)?;
        }
        Ok(id)
    }

    fn chain_reaches(&self, first: PageId, len: u32, cutoff: PageId) -> Result<bool, StoreError> {
        let mut id = first;
        for _ in 0..(len as usize).div_ceil(OVERFLOW_DATA_BYTES) {
            if id >= cutoff && !is_virtual(id) {
                return Ok(true);
            }
            let b = self.raw_page(id)?;
            id = rd_u64(b, OVERFLOW_OFF_NEXT);
            if id == 0 {
                break;
            }
        }
        Ok(false)
    }

    /// Full consistency check of the published tree and the page accounting (tests, tools):
    /// keys ordered within and across pages, no page reachable twice, and every page of the
    /// file exactly once in the tree, the free set, the pending lists or the free list's pages.
    /// Call right after a commit.
    pub fn check(&self) -> Result<(), String> {
        if !self.dirty.is_empty() || !self.freed_now.is_empty() {
            return Err("check() must run right after a commit".into());
        }
        let snap = &self.base;
        let mut seen: BTreeSet<PageId> = BTreeSet::new();
        // (page, lower bound, upper bound, depth)
        type Item = (PageId, Option<Vec<u8>>, Option<Vec<u8>>, usize);
        let mut stack: Vec<Item> = Vec::new();
        if snap.root != 0 {
            stack.push((snap.root, None, None, 0));
        }
        let mut leaf_depth = None;
        while let Some((id, lo, hi, depth)) = stack.pop() {
            if !seen.insert(id) {
                return Err(format!("page {id} reachable twice"));
            }
            let p = PageRef::parse(snap.bytes_of(id).map_err(|e| e.to_string())?, id, true)
                .map_err(|e| e.to_string())?;
            p.check_order().map_err(|e| e.to_string())?;
            for i in 0..p.len() {
                let k = p.key(i);
                if lo.as_deref().is_some_and(|lo| k < lo) || hi.as_deref().is_some_and(|hi| k >= hi)
                {
                    return Err(format!("page {id} key {i} outside its parent's bounds"));
                }
            }
            if p.is_leaf() {
                if *leaf_depth.get_or_insert(depth) != depth {
                    return Err(format!(
                        "leaf {id} at depth {depth}, others at {leaf_depth:?}"
                    ));
                }
                for i in 0..p.len() {
                    if let ValRef::Overflow { first, len } = p.value(i) {
                        let mut o = first;
                        for _ in 0..(len as usize).div_ceil(OVERFLOW_DATA_BYTES) {
                            if !seen.insert(o) {
                                return Err(format!("overflow page {o} reachable twice"));
                            }
                            let b = snap.bytes_of(o).map_err(|e| e.to_string())?;
                            o = rd_u64(b, OVERFLOW_OFF_NEXT);
                            if o == 0 {
                                break;
                            }
                        }
                    }
                }
            } else {
                for i in 0..=p.len() {
                    let clo = if i == 0 {
                        lo.clone()
                    } else {
                        Some(p.key(i - 1).to_vec())
                    };
                    let chi = if i == p.len() {
                        hi.clone()
                    } else {
                        Some(p.key(i).to_vec())
                    };
                    stack.push((p.child(i), clo, chi, depth + 1));
                }
            }
        }
        let mut accounted = seen.len() as u64;
        for id in self
            .free
            .iter()
            .chain(self.pending.iter().flat_map(|(_, v)| v.iter().copied()))
            .chain(self.freelist_pages.iter().copied())
            .chain(self.record_pages.iter().copied())
        {
            if id < 2 || id >= self.page_count {
                return Err(format!("free page {id} outside the file"));
            }
            if !seen.insert(id) {
                return Err(format!("page {id} both in use and free (or free twice)"));
            }
            accounted += 1;
        }
        if accounted != self.page_count - 2 {
            return Err(format!(
                "{} pages accounted for, file has {} (leak)",
                accounted,
                self.page_count - 2
            ));
        }
        Ok(())
    }

    /// Reusable free pages below `cutoff` (where defragmentation can move pages to).
    pub fn free_below(&self, cutoff: PageId) -> usize {
        self.free.count_below(cutoff)
    }

    /// Pages in use, free, and the file's page count (for defragmentation decisions).
    pub fn page_stats(&self) -> (u64, u64, u64) {
        let free = self.free.len() as u64 + self.pending_count + self.freed_now.len() as u64;
        (self.page_count - free, free, self.page_count)
    }

    /// Publishes every change since the last commit to new readers. `durable` also makes it
    /// survive a crash (pages, free list, commit record and meta page written, then one
    /// fdatasync; see `verify_record` for how open tells a torn commit).
    pub fn commit(&mut self, durable: bool) -> Result<(), StoreError> {
        self.commit_checked(durable, false).map(|_| ())
    }

    /// A durable commit without its fdatasync: pages, free list, commit record and meta page
    /// are written and the commit is published to readers, but it becomes the crash-safe
    /// one only once the returned `PendingSync::sync` has returned (on any thread) and
    /// `commit_durable_finish` is called. Meanwhile non-durable commits go on; pages freed
    /// since the previous durable commit stay unused. A durable commit in flight is synced
    /// inline first (at most one is in flight).
    pub fn commit_durable_start(&mut self) -> Result<PendingSync, StoreError> {
        let txn = self.commit_checked(true, true)?;
        Ok(PendingSync {
            txn,
            storage: self.shared.storage.clone(),
        })
    }

    /// Records that a started durable commit is on disk: the pages it no longer reaches may be
    /// reused. A commit already completed inline (a later durable commit synced it) is a no-op.
    pub fn commit_durable_finish(&mut self, done: SyncedCommit) -> Result<(), StoreError> {
        if self.sync_in_flight != Some(done.txn) {
            assert!(
                done.txn <= self.last_durable_txn,
                "unknown durable commit {done:?}"
            );
            return Ok(());
        }
        let r = self.after_sync(done.txn);
        if r.is_err() {
            self.poisoned = true;
        }
        self.reclaim();
        r
    }

    /// With `DbOptions::defer_forced_sync`: pages freed since the last durable commit exceed
    /// `unsynced_freed_bytes_max` and no durable commit is in flight, so it is time for
    /// `commit_durable_start`.
    pub fn wants_durable(&self) -> bool {
        self.sync_in_flight.is_none()
            && self.unsynced_freed_bytes() > self.opts.unsynced_freed_bytes_max
    }

    fn unsynced_freed_bytes(&self) -> u64 {
        (self.unsynced_freed_pages + self.freed_now.len() as u64) * PAGE_SIZE as u64
    }

    /// Returns the txn id of the commit made.
    fn commit_checked(&mut self, durable: bool, defer_sync: bool) -> Result<u64, StoreError> {
        if self.poisoned {
            return Err(StoreError::Poisoned);
        }
        let txn = self.txn;
        let r = self.commit_inner(durable, defer_sync);
        if r.is_err() {
            // The in-memory state may no longer match the file: refuse further writes.
            self.poisoned = true;
        }
        r.map(|_| txn)
    }

    /// After the sync of durable commit `txn`: it is the one a crash reopens, so what it no
    /// longer reaches may be reused; the file may shrink.
    fn after_sync(&mut self, txn: u64) -> Result<(), StoreError> {
        assert_eq!(self.sync_in_flight, Some(txn));
        self.sync_in_flight = None;
        self.last_durable_txn = txn;
        let file_target = self.page_count * PAGE_SIZE as u64;
        if self.file_len > file_target + 2 * self.opts.grow_bytes_min {
            self.shared.storage.set_len(file_target)?;
            self.file_len = file_target;
            self.shared
                .file_bytes
                .store(self.file_len, Ordering::Relaxed);
        }
        Ok(())
    }

    fn commit_inner(&mut self, durable: bool, defer_sync: bool) -> Result<(), StoreError> {
        let unsynced = self.unsynced_freed_bytes();
        let max = self.opts.unsynced_freed_bytes_max;
        let durable = durable
            || (unsynced > max && !self.opts.defer_forced_sync)
            || unsynced > max.saturating_mul(UNSYNCED_FREED_DEFERRED_FACTOR_MAX);
        if durable {
            // At most one durable commit in flight: its meta slot is the one this commit
            // would overwrite next but one, and the crash fallback must stay intact.
            if let Some(t) = self.sync_in_flight {
                self.shared.storage.sync_data()?;
                self.after_sync(t)?;
            }
        }
        if !durable && !self.has_changes() {
            return Ok(());
        }
        let txn = self.txn;
        let mut new_freelist = Vec::new();
        let mut freelist_head = 0;
        let mut new_records = Vec::new();
        let new_pages = self.dirty.len();
        let mut writes;
        if !durable {
            let ids = self.take_pages(new_pages as u64, false);
            writes = self.assign_pages(&ids);
        } else {
            self.trim_tail();
            // Pages the new durable tree does not reach: all of them are free after a reopen.
            let old_lists = std::mem::take(&mut self.freelist_pages);
            let old_records = std::mem::take(&mut self.record_pages);
            // Allocate the free list's and the record's pages first (upper bounds of both), so
            // neither lists them; surplus pages are written empty.
            let ids_max = self.free.len()
                + self.pending_count as usize
                + self.freed_now.len()
                + old_lists.len()
                + old_records.len();
            let list_pages = ids_max.div_ceil(FREELIST_IDS_MAX);
            let entries_max = self.written_live.len() + new_pages + list_pages;
            let record_pages = entries_max.div_ceil(RECORD_ENTRIES_MAX);
            // One run for the whole commit: free list, record, then the tree's pages.
            let mut ids = self.take_pages((list_pages + record_pages + new_pages) as u64, true);
            let data = ids.split_off(list_pages + record_pages);
            new_records = ids.split_off(list_pages);
            new_freelist = ids;
            writes = self.assign_pages(&data);
            let mut ids: Vec<PageId> = self.free.iter().collect();
            ids.extend(self.pending.iter().flat_map(|(_, v)| v.iter().copied()));
            ids.extend(self.freed_now.iter().copied());
            ids.extend(old_lists.iter().copied());
            ids.extend(old_records.iter().copied());
            self.freed_now.extend(old_lists);
            self.freed_now.extend(old_records);
            assert!(ids.len() <= list_pages * FREELIST_IDS_MAX);
            ids.sort_unstable();
            let mut chunks = ids.chunks(FREELIST_IDS_MAX);
            for (i, pid) in new_freelist.iter().enumerate() {
                let chunk = chunks.next().unwrap_or(&[]);
                let mut p = vec![0u8; PAGE_SIZE].into_boxed_slice();
                wr_u64(
                    &mut p,
                    FREELIST_OFF_NEXT,
                    new_freelist.get(i + 1).copied().unwrap_or(0),
                );
                for (j, id) in chunk.iter().enumerate() {
                    wr_u64(&mut p, FREELIST_OFF_IDS + 8 * j, *id);
                }
                seal(&mut p, KIND_FREELIST, chunk.len() as u16, *pid);
                writes.push((*pid, Dirty::Raw(p)));
            }
            freelist_head = new_freelist.first().copied().unwrap_or(0);
        }
        self.trusted.cover(self.page_count);
        // Grow the file.
        let need = self.page_count * PAGE_SIZE as u64;
        if need > self.file_len {
            let grow = (self.file_len / 8).max(self.opts.grow_bytes_min);
            let new_len =
                need.max(self.file_len + grow).div_ceil(PAGE_SIZE as u64) * PAGE_SIZE as u64;
            self.shared.storage.set_len(new_len)?;
            self.file_len = new_len;
        }
        writes.sort_unstable_by_key(|(id, _)| *id);
        self.write_pages(writes)?;
        let storage = self.shared.storage.clone();
        if durable {
            // The commit record: every page written since the last durable commit that the new
            // tree or free list reaches, with its crc32c. Open checks them before trusting this
            // meta page, so data, free list, record and meta go out together under ONE sync.
            let mut entries: Vec<(PageId, u32)> =
                self.written_live.iter().map(|(k, v)| (*k, *v)).collect();
            entries.sort_unstable();
            assert!(entries.len() <= new_records.len() * RECORD_ENTRIES_MAX);
            let mut record_crc = 0u32;
            let mut chunks = entries.chunks(RECORD_ENTRIES_MAX);
            for (i, pid) in new_records.iter().enumerate() {
                let chunk = chunks.next().unwrap_or(&[]);
                let next = new_records.get(i + 1).copied().unwrap_or(0);
                let p = encode_record_page(*pid, next, chunk);
                record_crc = crc32c::crc32c_append(
                    record_crc,
                    &p[RECORD_OFF_ENTRIES..RECORD_OFF_ENTRIES + chunk.len() * RECORD_ENTRY_BYTES],
                );
                storage.write_at(&p, *pid * PAGE_SIZE as u64)?;
                self.trusted.set(*pid);
            }
            let slot = 1 - self.durable_meta_slot;
            let meta = Meta {
                txn,
                root: self.root,
                freelist: freelist_head,
                page_count: self.page_count,
                app: self.app,
                record: new_records.first().copied().unwrap_or(0),
                record_entries: entries.len() as u64,
                record_crc,
            };
            storage.write_at(&meta.encode(slot), slot * PAGE_SIZE as u64)?;
            self.durable_meta_slot = slot;
            self.freelist_pages = new_freelist;
            self.record_pages = new_records;
            self.written_live.clear();
            self.unsynced_freed_pages = 0;
            self.sync_in_flight = Some(txn);
            if !defer_sync {
                storage.sync_data()?;
                self.after_sync(txn)?;
            }
        } else {
            self.unsynced_freed_pages += self.freed_now.len() as u64;
        }
        // Publish.
        let snap = Arc::new(Snapshot {
            txn,
            root: self.root,
            page_count: self.page_count,
            app: self.app,
            map: storage.map()?,
            verify: self.opts.verify_checksums,
        });
        let old = self.shared.current.swap(snap.clone());
        self.readers.push((old.txn, Arc::downgrade(&old)));
        drop(old);
        self.base = snap;
        if !self.freed_now.is_empty() {
            self.pending_count += self.freed_now.len() as u64;
            self.pending
                .push_back((txn, std::mem::take(&mut self.freed_now)));
        }
        self.txn += 1;
        self.reclaim();
        let in_use = self.page_count - self.free.len() as u64 - self.pending_count;
        self.shared
            .in_use_bytes
            .store(in_use * PAGE_SIZE as u64, Ordering::Relaxed);
        self.shared
            .file_bytes
            .store(self.file_len, Ordering::Relaxed);
        Ok(())
    }

    /// Moves pending pages that no live snapshot and no durable meta can reach to the free set.
    fn reclaim(&mut self) {
        self.readers.retain(|(_, w)| w.strong_count() > 0);
        let oldest_live = self
            .readers
            .iter()
            .map(|(t, _)| *t)
            .min()
            .unwrap_or(self.base.txn);
        while let Some((freed_txn, _)) = self.pending.front() {
            if *freed_txn > oldest_live || *freed_txn > self.last_durable_txn {
                break;
            }
            let (_, mut ids) = self.pending.pop_front().expect("front");
            self.pending_count -= ids.len() as u64;
            // A commit's pages are mostly one run of the file: added a run at a time.
            assert!(
                self.free.insert_all(&mut ids),
                "a page freed twice in {ids:?}"
            );
        }
    }

    /// Drops free pages at the end of the file from the free set (the file shrinks at the next
    /// durable commit).
    fn trim_tail(&mut self) {
        while self.page_count > 2 && self.free.last() == Some(self.page_count - 1) {
            self.free.pop_last();
            self.page_count -= 1;
        }
        self.trusted.cover(self.page_count);
    }

    /// Encodes and writes `pages` (ascending ids), consecutive ids in one pwrite each (up to
    /// `WRITE_BATCH_BYTES_MAX`).
    fn write_pages(&mut self, pages: Vec<(PageId, Dirty)>) -> Result<(), StoreError> {
        let r = self.write_pages_inner(pages);
        if r.is_err() {
            // Some kept pages may not have reached the file.
            self.recent.clear();
        }
        r
    }

    fn write_pages_inner(&mut self, pages: Vec<(PageId, Dirty)>) -> Result<(), StoreError> {
        let written = pages.len();
        for (_, b) in self.recent.drain() {
            self.pool.put_heap(b);
        }
        let keep_recent = written <= RECENT_PAGES_MAX;
        // `buf[..used]` is the next pwrite; the bytes past it are old pages (not zeroed again:
        // each page is encoded or copied over in full).
        let mut buf = std::mem::take(&mut self.write_buf);
        let mut used = 0;
        let mut start: Option<PageId> = None;
        let mut next_id = 0;
        let storage = self.shared.storage.clone();
        for (id, d) in pages {
            assert!(
                id >= 2 && id < self.page_count,
                "dirty page {id} outside the tree"
            );
            assert!(start.is_none() || id >= next_id, "pages out of order");
            if start.is_some() && (id != next_id || used >= WRITE_BATCH_BYTES_MAX) {
                let s = start.expect("start");
                storage.write_at(&buf[..used], s * PAGE_SIZE as u64)?;
                (s..next_id).for_each(|w| self.trusted.set(w));
                used = 0;
                start = None;
            }
            if start.is_none() {
                start = Some(id);
            }
            let at = used;
            used += PAGE_SIZE;
            if buf.len() < used {
                buf.resize(used, 0);
            }
            let page = &mut buf[at..used];
            match d {
                Dirty::Node(n, _) => {
                    n.encode(id, page);
                    self.pool.put(n);
                    if keep_recent {
                        let mut b = self.pool.take_page_buf();
                        b.copy_from_slice(page);
                        self.recent.insert(id, b);
                    }
                }
                Dirty::Raw(b) => page.copy_from_slice(&b),
            }
            self.written_live.insert(id, rd_u32(page, OFF_CRC));
            next_id = id + 1;
        }
        if let Some(s) = start {
            storage.write_at(&buf[..used], s * PAGE_SIZE as u64)?;
            (s..next_id).for_each(|w| self.trusted.set(w));
        }
        if buf.capacity() <= WRITE_BATCH_BYTES_MAX + PAGE_SIZE {
            self.write_buf = buf;
        }
        // Buffers for the next commit: about as many as this one decoded (a pool of 1,024
        // made a 10k-key commit allocate and free ~4,000 leaf buffers, ~7% of its CPU).
        self.pool.trim(written);
        Ok(())
    }
}

/// State of one defragmentation slice's walk.
struct Walk {
    cutoff: PageId,
    budget: usize,
    visits: usize,
    from: Vec<u8>,
    last: Option<Vec<u8>>,
}

/// Chooses where to split entries of the given encoded sizes: the split index `s` (left keeps
/// `..s`) that minimises the larger half, or, for appends, the largest left half that fits.
fn split_point(sizes: &[usize], header: usize, appended: bool, min_each: usize) -> usize {
    let n = sizes.len();
    assert!(n >= 2 * min_each, "cannot split {n} entries");
    let total: usize = sizes.iter().sum();
    let mut left = 0;
    let mut best = (usize::MAX, min_each);
    for s in 1..n {
        left += sizes[s - 1];
        if s < min_each || n - s < min_each {
            continue;
        }
        let right = total - left;
        if appended {
            if header + left <= PAGE_SIZE * 15 / 16 {
                best = (0, s);
            }
        } else {
            let worst = left.max(right);
            if worst < best.0 {
                best = (worst, s);
            }
        }
    }
    best.1
}

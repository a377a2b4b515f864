//! The page format, byte by byte (mirrored in docs/format.md, "B+tree pages").
//!
//! Every page is `PAGE_SIZE` bytes and opens with the same 16-byte header:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 4 | crc32c (Castagnoli) of bytes `4..PAGE_SIZE` |
//! | 4 | 1 | kind: 1 branch, 2 leaf, 3 overflow, 4 free list, 5 meta |
//! | 5 | 1 | reserved, 0 |
//! | 6 | 2 | count (entries in a leaf, keys in a branch, ids in a free-list page) |
//! | 8 | 8 | the page's own id (catches misdirected writes) |
//!
//! Decoding never trusts a byte: every offset and length is checked against the page before
//! use, and a violation is a `StoreError::Corrupt` naming the page id.

use crate::error::StoreError;

/// Bytes per page. The meta page records it; opening a file with another size is an error.
pub const PAGE_SIZE: usize = 4096;
/// Header common to all pages.
pub const HEADER_BYTES: usize = 16;
pub const OFF_CRC: usize = 0;
pub const OFF_KIND: usize = 4;
pub const OFF_COUNT: usize = 6;
pub const OFF_PAGE_ID: usize = 8;

pub const KIND_BRANCH: u8 = 1;
pub const KIND_LEAF: u8 = 2;
pub const KIND_OVERFLOW: u8 = 3;
pub const KIND_FREELIST: u8 = 4;
pub const KIND_META: u8 = 5;
pub const KIND_RECORD: u8 = 6;

/// Branch: child 0 at 16, then `count` u16 slot offsets, then entries
/// `key_len u16 | child u64 | key`.
pub const BRANCH_OFF_CHILD0: usize = HEADER_BYTES;
pub const BRANCH_OFF_SLOTS: usize = BRANCH_OFF_CHILD0 + 8;
pub const BRANCH_ENTRY_HEADER_BYTES: usize = 2 + 8;
/// Leaf: `count` u16 slot offsets at 16, then entries
/// `key_len u16 | flags u8 | value_len u32 | key | value (inline) or first overflow page u64`.
pub const LEAF_OFF_SLOTS: usize = HEADER_BYTES;
pub const LEAF_ENTRY_HEADER_BYTES: usize = 2 + 1 + 4;
pub const LEAF_FLAG_OVERFLOW: u8 = 1;
pub const SLOT_BYTES: usize = 2;
/// Overflow: `next u64 | chunk_len u32 | chunk`.
pub const OVERFLOW_OFF_NEXT: usize = HEADER_BYTES;
pub const OVERFLOW_OFF_LEN: usize = OVERFLOW_OFF_NEXT + 8;
pub const OVERFLOW_OFF_DATA: usize = OVERFLOW_OFF_LEN + 4;
pub const OVERFLOW_DATA_BYTES: usize = PAGE_SIZE - OVERFLOW_OFF_DATA;
/// Free list: `next u64`, then `count` u64 page ids.
pub const FREELIST_OFF_NEXT: usize = HEADER_BYTES;
pub const FREELIST_OFF_IDS: usize = FREELIST_OFF_NEXT + 8;
pub const FREELIST_IDS_MAX: usize = (PAGE_SIZE - FREELIST_OFF_IDS) / 8;

/// Largest key the tree stores (the MVCC layer's encoded key).
pub const KEY_BYTES_MAX: usize = 1800;
/// A leaf entry whose header + key + value fit in this many bytes keeps its value inline;
/// larger values go to an overflow chain.
pub const ENTRY_INLINE_BYTES_MAX: usize = 1900;
/// Largest value (1.5 MiB is etcd's default request limit; this allows larger).
pub const VALUE_BYTES_MAX: usize = 64 << 20;
/// Payload bytes of a page after the header.
pub const PAGE_BODY_BYTES: usize = PAGE_SIZE - HEADER_BYTES;

// Two maximal entries must fit in one leaf, two maximal keys in one branch.
const _: () = assert!(2 * (SLOT_BYTES + ENTRY_INLINE_BYTES_MAX) <= PAGE_SIZE - LEAF_OFF_SLOTS);
const _: () = assert!(
    2 * (SLOT_BYTES + LEAF_ENTRY_HEADER_BYTES + KEY_BYTES_MAX + 8) <= PAGE_SIZE - LEAF_OFF_SLOTS
);
const _: () = assert!(
    2 * (SLOT_BYTES + BRANCH_ENTRY_HEADER_BYTES + KEY_BYTES_MAX) <= PAGE_SIZE - BRANCH_OFF_SLOTS
);
const _: () = assert!(PAGE_SIZE <= u16::MAX as usize);

/// Meta page layout (pages 0 and 1), after the common header.
pub const META_OFF_MAGIC: usize = 16;
pub const META_OFF_VERSION: usize = 20;
pub const META_OFF_PAGE_SIZE: usize = 24;
pub const META_OFF_TXN: usize = 32;
pub const META_OFF_ROOT: usize = 40;
pub const META_OFF_FREELIST: usize = 48;
pub const META_OFF_PAGE_COUNT: usize = 56;
pub const META_OFF_APP: usize = 64;
pub const META_APP_WORDS: usize = 4;
/// Commit record (see `RECORD_*`): first page (0: none), entry count, crc32c of the entries.
/// Files written before the record existed hold zeros here: "nothing to verify".
pub const META_OFF_RECORD: usize = META_OFF_APP + 8 * META_APP_WORDS;
pub const META_OFF_RECORD_ENTRIES: usize = META_OFF_RECORD + 8;
pub const META_OFF_RECORD_CRC: usize = META_OFF_RECORD_ENTRIES + 8;
pub const META_END: usize = META_OFF_RECORD_CRC + 4;

/// Commit-record page layout (kind 6): the pages a durable commit wrote since the previous
/// durable commit, each with the crc32c its header must hold, checked at open.
pub const RECORD_OFF_NEXT: usize = HEADER_BYTES;
pub const RECORD_OFF_ENTRIES: usize = RECORD_OFF_NEXT + 8;
/// `page id u64` + `crc32c u32`.
pub const RECORD_ENTRY_BYTES: usize = 12;
pub const RECORD_ENTRIES_MAX: usize = (PAGE_SIZE - RECORD_OFF_ENTRIES) / RECORD_ENTRY_BYTES;
const _: () = assert!(META_END <= PAGE_SIZE);
const _: () = assert!(RECORD_ENTRIES_MAX <= u16::MAX as usize);
pub const META_MAGIC: u32 = u32::from_le_bytes(*b"FeBT");
pub const FORMAT_VERSION: u32 = 1;

pub type PageId = u64;

pub fn rd_u16(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes([b[off], b[off + 1]])
}
pub fn rd_u32(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().expect("4 bytes"))
}
pub fn rd_u64(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().expect("8 bytes"))
}
pub fn wr_u16(b: &mut [u8], off: usize, v: u16) {
    b[off..off + 2].copy_from_slice(&v.to_le_bytes());
}
pub fn wr_u32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_le_bytes());
}
pub fn wr_u64(b: &mut [u8], off: usize, v: u64) {
    b[off..off + 8].copy_from_slice(&v.to_le_bytes());
}

/// Fills in kind, count, page id and finally the checksum of a page being written.
pub fn seal(page: &mut [u8], kind: u8, count: u16, id: PageId) {
    assert_eq!(page.len(), PAGE_SIZE);
    page[OFF_KIND] = kind;
    page[OFF_KIND + 1] = 0;
    wr_u16(page, OFF_COUNT, count);
    wr_u64(page, OFF_PAGE_ID, id);
    let crc = crc32c::crc32c(&page[4..]);
    wr_u32(page, OFF_CRC, crc);
}

fn corrupt(page: PageId, reason: impl Into<String>) -> StoreError {
    StoreError::Corrupt {
        page,
        reason: reason.into(),
    }
}

/// Checks length, checksum, page id and kind. Returns the count field.
pub fn check_header(
    bytes: &[u8],
    id: PageId,
    kinds: &[u8],
    verify_crc: bool,
) -> Result<u16, StoreError> {
    if bytes.len() != PAGE_SIZE {
        return Err(corrupt(
            id,
            format!("page is {} bytes, not {PAGE_SIZE}", bytes.len()),
        ));
    }
    if verify_crc {
        let want = rd_u32(bytes, OFF_CRC);
        let got = crc32c::crc32c(&bytes[4..]);
        if want != got {
            return Err(corrupt(
                id,
                format!("checksum mismatch (stored {want:#010x}, computed {got:#010x})"),
            ));
        }
    }
    let stored_id = rd_u64(bytes, OFF_PAGE_ID);
    if stored_id != id {
        return Err(corrupt(id, format!("page header names page {stored_id}")));
    }
    let kind = bytes[OFF_KIND];
    if !kinds.contains(&kind) {
        return Err(corrupt(
            id,
            format!("unexpected page kind {kind}, wanted one of {kinds:?}"),
        ));
    }
    Ok(rd_u16(bytes, OFF_COUNT))
}

/// A validated view of a branch or leaf page inside the map (or any byte buffer).
#[derive(Clone, Copy)]
pub struct PageRef<'a> {
    pub id: PageId,
    bytes: &'a [u8],
    leaf: bool,
    count: usize,
    /// Bytes the node's content takes (`encoded_bytes`), summed while parsing.
    content_bytes: usize,
}

/// A leaf value as stored: inline bytes or the head of an overflow chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ValRef<'a> {
    Inline(&'a [u8]),
    Overflow { first: PageId, len: u32 },
}

impl<'a> PageRef<'a> {
    /// Validates every slot and entry so that the accessors below cannot go out of bounds.
    pub fn parse(bytes: &'a [u8], id: PageId, verify_crc: bool) -> Result<Self, StoreError> {
        let count = check_header(bytes, id, &[KIND_BRANCH, KIND_LEAF], verify_crc)? as usize;
        let leaf = bytes[OFF_KIND] == KIND_LEAF;
        let slots = if leaf {
            LEAF_OFF_SLOTS
        } else {
            BRANCH_OFF_SLOTS
        };
        let entries_start = slots + count * SLOT_BYTES;
        if entries_start > PAGE_SIZE {
            return Err(corrupt(id, format!("count {count} overflows the page")));
        }
        // A branch may have no keys (one child) after merges below it.
        let mut prev_end = entries_start;
        let mut content_bytes = slots;
        for i in 0..count {
            let off = rd_u16(bytes, slots + i * SLOT_BYTES) as usize;
            if off < prev_end {
                return Err(corrupt(
                    id,
                    format!("slot {i} offset {off} overlaps earlier data"),
                ));
            }
            let hdr = if leaf {
                LEAF_ENTRY_HEADER_BYTES
            } else {
                BRANCH_ENTRY_HEADER_BYTES
            };
            if off + hdr > PAGE_SIZE {
                return Err(corrupt(
                    id,
                    format!("slot {i} offset {off} past the page end"),
                ));
            }
            let klen = rd_u16(bytes, off) as usize;
            let end = if leaf {
                let flags = bytes[off + 2];
                let vlen = rd_u32(bytes, off + 3) as usize;
                let vstored = match flags {
                    0 => vlen,
                    LEAF_FLAG_OVERFLOW => 8,
                    f => return Err(corrupt(id, format!("slot {i} has unknown flags {f}"))),
                };
                off + hdr + klen + vstored
            } else {
                off + hdr + klen
            };
            if end > PAGE_SIZE {
                return Err(corrupt(id, format!("slot {i} entry ends past the page")));
            }
            content_bytes += SLOT_BYTES + (end - off);
            prev_end = end;
        }
        // Key order is not re-checked here (the checksum covers it, and out-of-order keys can
        // only give wrong answers, never out-of-bounds access); `check_order` does it in tests.
        Ok(PageRef {
            id,
            bytes,
            leaf,
            count,
            content_bytes,
        })
    }

    pub fn is_leaf(&self) -> bool {
        self.leaf
    }
    /// Bytes the node's content takes (as `Node::encoded_bytes` of the node decoded from it).
    pub fn encoded_bytes(&self) -> usize {
        self.content_bytes
    }
    /// Checks that keys are strictly ascending.
    pub fn check_order(&self) -> Result<(), StoreError> {
        for i in 1..self.count {
            if self.key(i - 1) >= self.key(i) {
                return Err(corrupt(
                    self.id,
                    format!("keys {} and {i} out of order", i - 1),
                ));
            }
        }
        Ok(())
    }
    /// Entries in a leaf; keys in a branch (children = len + 1).
    pub fn len(&self) -> usize {
        self.count
    }
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
    pub fn slot(&self, i: usize) -> usize {
        let base = if self.leaf {
            LEAF_OFF_SLOTS
        } else {
            BRANCH_OFF_SLOTS
        };
        rd_u16(self.bytes, base + i * SLOT_BYTES) as usize
    }
    pub fn key(&self, i: usize) -> &'a [u8] {
        let off = self.slot(i);
        let klen = rd_u16(self.bytes, off) as usize;
        let hdr = if self.leaf {
            LEAF_ENTRY_HEADER_BYTES
        } else {
            BRANCH_ENTRY_HEADER_BYTES
        };
        &self.bytes[off + hdr..off + hdr + klen]
    }
    /// Child `i` of a branch, `0..=len`.
    pub fn child(&self, i: usize) -> PageId {
        debug_assert!(!self.leaf);
        if i == 0 {
            rd_u64(self.bytes, BRANCH_OFF_CHILD0)
        } else {
            rd_u64(self.bytes, self.slot(i - 1) + 2)
        }
    }
    pub fn value(&self, i: usize) -> ValRef<'a> {
        debug_assert!(self.leaf);
        let off = self.slot(i);
        let klen = rd_u16(self.bytes, off) as usize;
        let flags = self.bytes[off + 2];
        let vlen = rd_u32(self.bytes, off + 3);
        let start = off + LEAF_ENTRY_HEADER_BYTES + klen;
        if flags == LEAF_FLAG_OVERFLOW {
            ValRef::Overflow {
                first: rd_u64(self.bytes, start),
                len: vlen,
            }
        } else {
            ValRef::Inline(&self.bytes[start..start + vlen as usize])
        }
    }
}

pub fn branch_entry_bytes(key_len: usize) -> usize {
    SLOT_BYTES + BRANCH_ENTRY_HEADER_BYTES + key_len
}
/// Whether a value of this size is stored inline next to a key of `key_len` bytes.
pub fn value_is_inline(key_len: usize, value_len: usize) -> bool {
    LEAF_ENTRY_HEADER_BYTES + key_len + value_len <= ENTRY_INLINE_BYTES_MAX
}

/// A leaf value as a dirty leaf stores it: inline bytes at `heap[off..off + len]` of its node,
/// or the head of an overflow chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeafVal {
    Inline { off: u32, len: u32 },
    Overflow { first: PageId, len: u32 },
}

// A dirty leaf keeps its entries in its `heap` exactly as a leaf page stores them (`key_len
// u16 | flags u8 | value_len u32 | key | value or first overflow page u64`) and only their
// offsets in `ents`, in key order: decoding a leaf page is one copy of the page (the page is
// the heap, offsets unchanged), inserting an entry appends it to the heap and shifts 4-byte
// offsets, and encoding copies each entry as one block. Entries the leaf no longer uses stay
// in the heap as garbage until it is compacted.

/// A dirty leaf's entry: its offset in the leaf's heap and the first 4 bytes of its key
/// (`key_prefix`), so that a search decides most comparisons without reading the heap (in a
/// large commit most dirty leaves are out of the CPU's caches, and each probe of the heap was
/// a cache miss).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeafEnt(u64);

impl LeafEnt {
    /// The entry at `off` whose key is `key`.
    pub fn new(off: u32, key: &[u8]) -> LeafEnt {
        LeafEnt(u64::from(key_prefix(key)) << 32 | u64::from(off))
    }
    /// Where the entry starts in its leaf's heap.
    pub fn off(self) -> u32 {
        self.0 as u32
    }
    /// The same entry at another heap offset (moved or compacted).
    pub fn at(self, off: u32) -> LeafEnt {
        LeafEnt(self.0 & !u64::from(u32::MAX) | u64::from(off))
    }
    /// Orders this entry of `heap` against `key`, whose `key_prefix` is `prefix`: by the
    /// prefixes, and by the whole keys only when those are equal.
    pub fn cmp_key(self, heap: &[u8], key: &[u8], prefix: u32) -> std::cmp::Ordering {
        match ((self.0 >> 32) as u32).cmp(&prefix) {
            std::cmp::Ordering::Equal => heap_key(heap, self.off()).cmp(key),
            o => o,
        }
    }
}

/// The first 4 bytes of `key`, big-endian, zero-padded: `key_prefix(a) < key_prefix(b)`
/// implies `a < b`, so equal prefixes are the only case that needs the keys.
pub fn key_prefix(key: &[u8]) -> u32 {
    let mut b = [0u8; 4];
    let n = key.len().min(4);
    b[..n].copy_from_slice(&key[..n]);
    u32::from_be_bytes(b)
}

/// Bytes of the entry at `off` in a leaf heap (slot excluded).
pub fn heap_entry_len(heap: &[u8], off: u32) -> usize {
    let off = off as usize;
    let klen = rd_u16(heap, off) as usize;
    let stored = if heap[off + 2] == LEAF_FLAG_OVERFLOW {
        8
    } else {
        rd_u32(heap, off + 3) as usize
    };
    LEAF_ENTRY_HEADER_BYTES + klen + stored
}
/// The key of the entry at `off` in a leaf heap.
pub fn heap_key(heap: &[u8], off: u32) -> &[u8] {
    let off = off as usize;
    let klen = rd_u16(heap, off) as usize;
    &heap[off + LEAF_ENTRY_HEADER_BYTES..off + LEAF_ENTRY_HEADER_BYTES + klen]
}
/// The value of the entry at `off` in a leaf heap.
pub fn heap_value(heap: &[u8], off: u32) -> ValRef<'_> {
    match heap_stored(heap, off) {
        LeafVal::Inline { off, len } => {
            ValRef::Inline(&heap[off as usize..off as usize + len as usize])
        }
        LeafVal::Overflow { first, len } => ValRef::Overflow { first, len },
    }
}
/// Where the value of the entry at `off` in a leaf heap is.
pub fn heap_stored(heap: &[u8], off: u32) -> LeafVal {
    let o = off as usize;
    let klen = rd_u16(heap, o) as usize;
    let vlen = rd_u32(heap, o + 3);
    let start = o + LEAF_ENTRY_HEADER_BYTES + klen;
    if heap[o + 2] == LEAF_FLAG_OVERFLOW {
        LeafVal::Overflow {
            first: rd_u64(heap, start),
            len: vlen,
        }
    } else {
        LeafVal::Inline {
            off: start as u32,
            len: vlen,
        }
    }
}
/// Appends an entry for `key` and `val` to a leaf heap; returns its offset.
pub fn heap_push(heap: &mut Vec<u8>, key: &[u8], val: ValRef<'_>) -> u32 {
    let off = heap.len();
    let (flags, vlen) = match val {
        ValRef::Inline(v) => (0u8, v.len() as u32),
        ValRef::Overflow { len, .. } => (LEAF_FLAG_OVERFLOW, len),
    };
    heap.extend_from_slice(&(key.len() as u16).to_le_bytes());
    heap.push(flags);
    heap.extend_from_slice(&vlen.to_le_bytes());
    heap.extend_from_slice(key);
    match val {
        ValRef::Inline(v) => heap.extend_from_slice(v),
        ValRef::Overflow { first, .. } => heap.extend_from_slice(&first.to_le_bytes()),
    }
    u32::try_from(off).expect("leaf heap under 4 GiB")
}
/// Appends an entry with the key of the entry at `old` and the overflow value `val`; returns
/// its offset.
pub fn heap_push_overflow_for(heap: &mut Vec<u8>, old: u32, val: LeafVal) -> u32 {
    let LeafVal::Overflow { first, len } = val else {
        panic!("heap_push_overflow_for takes an overflow value");
    };
    let o = old as usize;
    let klen = rd_u16(heap, o) as usize;
    let off = heap.len();
    heap.extend_from_within(o..o + 2);
    heap.push(LEAF_FLAG_OVERFLOW);
    heap.extend_from_slice(&len.to_le_bytes());
    heap.extend_from_within(o + LEAF_ENTRY_HEADER_BYTES..o + LEAF_ENTRY_HEADER_BYTES + klen);
    heap.extend_from_slice(&first.to_le_bytes());
    u32::try_from(off).expect("leaf heap under 4 GiB")
}
/// A leaf heap holding only the entries `ents` use (their offsets rewritten).
pub fn compact_heap(ents: &mut [LeafEnt], heap: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(PAGE_SIZE);
    for e in ents.iter_mut() {
        let (o, n) = (e.off() as usize, heap_entry_len(heap, e.off()));
        *e = e.at(out.len() as u32);
        out.extend_from_slice(&heap[o..o + n]);
    }
    out
}

/// A dirty leaf's heap is compacted once it exceeds this (replaced entries leave garbage).
pub const LEAF_HEAP_BYTES_MAX: usize = 4 * PAGE_SIZE;

/// Bytes of a key kept inline in a decoded branch (no heap allocation): covers MVCC keys of
/// user keys up to ~45 bytes, revision keys, most branch separators and the side-by-side
/// benchmark's 8–64-byte keys.
pub const NODE_KEY_INLINE_BYTES: usize = 64;

/// A branch key in a decoded node: inline up to `NODE_KEY_INLINE_BYTES`, on the heap beyond.
pub type NodeKey = smallvec::SmallVec<[u8; NODE_KEY_INLINE_BYTES]>;

/// Writer-side decoded nodes.
#[derive(Clone, Debug)]
pub enum Node {
    Leaf {
        /// The entries (heap offsets and key prefixes), in key order (see `heap_push`).
        ents: Vec<LeafEnt>,
        /// The entries' bytes, page layout (a decoded leaf's heap is its page).
        heap: Vec<u8>,
    },
    Branch {
        keys: Vec<NodeKey>,
        children: Vec<PageId>,
    },
}

/// Buffers of dropped nodes, reused when pages are decoded: the writer decodes and drops one
/// node per page it changes, and allocation dominated that.
#[derive(Default)]
pub struct NodePool {
    keys: Vec<Vec<NodeKey>>,
    ents: Vec<Vec<LeafEnt>>,
    heaps: Vec<Vec<u8>>,
    children: Vec<Vec<PageId>>,
}

/// Buffers of each kind a `NodePool` keeps at most (a leaf's heap is 8 KiB: up to ~64 MiB of
/// heaps, reached only after commits that rewrite that many leaves; see `NodePool::trim`).
pub const NODE_POOL_MAX: usize = 8192;
/// Buffers of each kind `NodePool::trim` always leaves.
pub const NODE_POOL_KEEP_MIN: usize = 1024;

impl NodePool {
    /// Frees buffers beyond `keep` (at least `NODE_POOL_KEEP_MIN`) of each kind: the writer
    /// keeps about as many as its last commit used, for the next one.
    pub fn trim(&mut self, keep: usize) {
        let keep = keep.max(NODE_POOL_KEEP_MIN);
        self.keys.truncate(keep);
        self.ents.truncate(keep);
        self.heaps.truncate(keep);
        self.children.truncate(keep);
    }

    /// Keeps `n`'s buffers (emptied) for reuse.
    pub fn put(&mut self, n: Node) {
        fn keep<T>(list: &mut Vec<Vec<T>>, mut v: Vec<T>) {
            if list.len() < NODE_POOL_MAX {
                v.clear();
                list.push(v);
            }
        }
        match n {
            Node::Leaf { ents, heap } => {
                keep(&mut self.ents, ents);
                self.put_heap(heap);
            }
            Node::Branch { keys, children } => {
                keep(&mut self.keys, keys);
                keep(&mut self.children, children);
            }
        }
    }
}

impl NodePool {
    /// An empty heap buffer with room for a page and a few appended entries.
    pub fn take_heap(&mut self) -> Vec<u8> {
        let mut h = self.heaps.pop().unwrap_or_default();
        h.clear();
        h.reserve(LEAF_HEAP_BYTES_INITIAL);
        h
    }
    /// A buffer of `PAGE_SIZE` bytes to read a page into (its old bytes, if it is a reused
    /// buffer: the read overwrites them all), with room to append entries.
    pub fn take_page_buf(&mut self) -> Vec<u8> {
        let mut h = self.heaps.pop().unwrap_or_default();
        if h.len() >= PAGE_SIZE {
            h.truncate(PAGE_SIZE);
        } else {
            h.clear();
            h.reserve(LEAF_HEAP_BYTES_INITIAL);
            h.resize(PAGE_SIZE, 0);
        }
        h
    }
    /// Keeps a heap buffer for reuse (bytes left in place: `take_heap` empties it).
    pub fn put_heap(&mut self, heap: Vec<u8>) {
        if self.heaps.len() < NODE_POOL_MAX {
            self.heaps.push(heap);
        }
    }
}

/// Capacity a decoded leaf's heap starts with: its page and room to append entries.
pub const LEAF_HEAP_BYTES_INITIAL: usize = 2 * PAGE_SIZE;

fn take<T>(list: &mut Vec<Vec<T>>, cap: usize) -> Vec<T> {
    match list.pop() {
        Some(mut v) => {
            v.reserve(cap);
            v
        }
        None => Vec::with_capacity(cap),
    }
}

impl Node {
    pub fn from_page(p: &PageRef<'_>) -> Node {
        Node::from_page_in(p, &mut NodePool::default())
    }

    /// Decodes `p`, reusing buffers from `pool`.
    pub fn from_page_in(p: &PageRef<'_>, pool: &mut NodePool) -> Node {
        if p.is_leaf() {
            // The page itself is the heap: entries keep their offsets, one copy in all
            // (`PageRef::parse` checked every entry lies inside the page).
            let mut heap = pool.take_heap();
            heap.extend_from_slice(p.bytes);
            let mut ents = take(&mut pool.ents, p.len() + 8);
            ents.extend((0..p.len()).map(|i| LeafEnt::new(p.slot(i) as u32, p.key(i))));
            Node::Leaf { ents, heap }
        } else {
            let mut keys = take(&mut pool.keys, p.len());
            keys.extend((0..p.len()).map(|i| NodeKey::from_slice(p.key(i))));
            let mut children = take(&mut pool.children, p.len() + 1);
            children.extend((0..=p.len()).map(|i| p.child(i)));
            Node::Branch { keys, children }
        }
    }

    /// Decodes the page whose bytes `page` holds (read by the caller into a pooled buffer:
    /// a leaf keeps it as its heap, no further copy). Returns the node and its encoded size.
    pub fn from_page_buf(
        page: Vec<u8>,
        id: PageId,
        verify_crc: bool,
        pool: &mut NodePool,
    ) -> Result<(Node, usize), StoreError> {
        let p = PageRef::parse(&page, id, verify_crc)?;
        let size = p.encoded_bytes();
        if p.is_leaf() {
            let mut ents = take(&mut pool.ents, p.len() + 8);
            ents.extend((0..p.len()).map(|i| LeafEnt::new(p.slot(i) as u32, p.key(i))));
            Ok((Node::Leaf { ents, heap: page }, size))
        } else {
            let node = Node::from_page_in(&p, pool);
            pool.put_heap(page);
            Ok((node, size))
        }
    }

    /// Bytes this node needs in a page.
    pub fn encoded_bytes(&self) -> usize {
        match self {
            Node::Leaf { ents, heap } => {
                LEAF_OFF_SLOTS
                    + ents
                        .iter()
                        .map(|&e| SLOT_BYTES + heap_entry_len(heap, e.off()))
                        .sum::<usize>()
            }
            Node::Branch { keys, .. } => {
                BRANCH_OFF_SLOTS
                    + keys
                        .iter()
                        .map(|k| branch_entry_bytes(k.len()))
                        .sum::<usize>()
            }
        }
    }

    pub fn encode(&self, id: PageId, page: &mut [u8]) {
        assert_eq!(page.len(), PAGE_SIZE);
        match self {
            Node::Leaf { ents, heap } => {
                let mut off = LEAF_OFF_SLOTS + ents.len() * SLOT_BYTES;
                for (i, &e) in ents.iter().enumerate() {
                    let e = e.off();
                    wr_u16(page, LEAF_OFF_SLOTS + i * SLOT_BYTES, off as u16);
                    let n = heap_entry_len(heap, e);
                    assert!(off + n <= PAGE_SIZE, "node {id} overflows its page");
                    page[off..off + n].copy_from_slice(&heap[e as usize..e as usize + n]);
                    off += n;
                }
                page[off..].fill(0);
                seal(page, KIND_LEAF, ents.len() as u16, id);
            }
            Node::Branch { keys, children } => {
                assert_eq!(children.len(), keys.len() + 1);
                assert!(
                    self.encoded_bytes() <= PAGE_SIZE,
                    "node {id} overflows its page"
                );
                wr_u64(page, BRANCH_OFF_CHILD0, children[0]);
                let mut off = BRANCH_OFF_SLOTS + keys.len() * SLOT_BYTES;
                for (i, k) in keys.iter().enumerate() {
                    wr_u16(page, BRANCH_OFF_SLOTS + i * SLOT_BYTES, off as u16);
                    wr_u16(page, off, k.len() as u16);
                    wr_u64(page, off + 2, children[i + 1]);
                    off += BRANCH_ENTRY_HEADER_BYTES;
                    page[off..off + k.len()].copy_from_slice(k);
                    off += k.len();
                }
                page[off..].fill(0);
                seal(page, KIND_BRANCH, keys.len() as u16, id);
            }
        }
    }
}

/// Decoded meta page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Meta {
    pub txn: u64,
    pub root: PageId,
    pub freelist: PageId,
    pub page_count: u64,
    pub app: [u64; META_APP_WORDS],
    /// First commit-record page (0: no record, nothing to verify at open).
    pub record: PageId,
    pub record_entries: u64,
    /// crc32c over the record's entries in order (`id u64 LE ‖ crc u32 LE` each).
    pub record_crc: u32,
}

impl Meta {
    pub fn encode(&self, slot: PageId) -> Vec<u8> {
        let mut p = vec![0u8; PAGE_SIZE];
        wr_u32(&mut p, META_OFF_MAGIC, META_MAGIC);
        wr_u32(&mut p, META_OFF_VERSION, FORMAT_VERSION);
        wr_u32(&mut p, META_OFF_PAGE_SIZE, PAGE_SIZE as u32);
        wr_u64(&mut p, META_OFF_TXN, self.txn);
        wr_u64(&mut p, META_OFF_ROOT, self.root);
        wr_u64(&mut p, META_OFF_FREELIST, self.freelist);
        wr_u64(&mut p, META_OFF_PAGE_COUNT, self.page_count);
        for (i, w) in self.app.iter().enumerate() {
            wr_u64(&mut p, META_OFF_APP + 8 * i, *w);
        }
        wr_u64(&mut p, META_OFF_RECORD, self.record);
        wr_u64(&mut p, META_OFF_RECORD_ENTRIES, self.record_entries);
        wr_u32(&mut p, META_OFF_RECORD_CRC, self.record_crc);
        seal(&mut p, KIND_META, 0, slot);
        p
    }

    pub fn decode(bytes: &[u8], slot: PageId) -> Result<Meta, StoreError> {
        check_header(bytes, slot, &[KIND_META], true)?;
        let magic = rd_u32(bytes, META_OFF_MAGIC);
        if magic != META_MAGIC {
            return Err(corrupt(slot, format!("bad magic {magic:#010x}")));
        }
        let version = rd_u32(bytes, META_OFF_VERSION);
        if version != FORMAT_VERSION {
            return Err(corrupt(
                slot,
                format!("unsupported format version {version}"),
            ));
        }
        let ps = rd_u32(bytes, META_OFF_PAGE_SIZE);
        if ps as usize != PAGE_SIZE {
            return Err(corrupt(
                slot,
                format!("page size {ps}, this build uses {PAGE_SIZE}"),
            ));
        }
        let m = Meta {
            txn: rd_u64(bytes, META_OFF_TXN),
            root: rd_u64(bytes, META_OFF_ROOT),
            freelist: rd_u64(bytes, META_OFF_FREELIST),
            page_count: rd_u64(bytes, META_OFF_PAGE_COUNT),
            app: std::array::from_fn(|i| rd_u64(bytes, META_OFF_APP + 8 * i)),
            record: rd_u64(bytes, META_OFF_RECORD),
            record_entries: rd_u64(bytes, META_OFF_RECORD_ENTRIES),
            record_crc: rd_u32(bytes, META_OFF_RECORD_CRC),
        };
        if m.page_count < 2
            || (m.root != 0 && (m.root < 2 || m.root >= m.page_count))
            || (m.freelist != 0 && (m.freelist < 2 || m.freelist >= m.page_count))
            || (m.record != 0 && (m.record < 2 || m.record >= m.page_count))
            || (m.record == 0 && (m.record_entries != 0 || m.record_crc != 0))
            || m.record_entries > m.page_count
        {
            return Err(corrupt(slot, format!("meta fields out of range: {m:?}")));
        }
        Ok(m)
    }
}

/// One commit-record page: the next page of the chain (0: last) and its entries.
pub fn encode_record_page(id: PageId, next: PageId, entries: &[(PageId, u32)]) -> Box<[u8]> {
    assert!(entries.len() <= RECORD_ENTRIES_MAX);
    let mut p = vec![0u8; PAGE_SIZE].into_boxed_slice();
    wr_u64(&mut p, RECORD_OFF_NEXT, next);
    for (j, (pid, crc)) in entries.iter().enumerate() {
        let at = RECORD_OFF_ENTRIES + RECORD_ENTRY_BYTES * j;
        wr_u64(&mut p, at, *pid);
        wr_u32(&mut p, at + 8, *crc);
    }
    seal(&mut p, KIND_RECORD, entries.len() as u16, id);
    p
}

/// Decodes a commit-record page (header, checksum, count checked). Returns the next page and
/// the entries; `crc` is extended over the entries' bytes in order.
pub fn decode_record_page(
    bytes: &[u8],
    id: PageId,
    crc: &mut u32,
) -> Result<(PageId, Vec<(PageId, u32)>), StoreError> {
    let n = check_header(bytes, id, &[KIND_RECORD], true)? as usize;
    if n > RECORD_ENTRIES_MAX {
        return Err(corrupt(
            id,
            format!("commit-record page claims {n} entries"),
        ));
    }
    let body = &bytes[RECORD_OFF_ENTRIES..RECORD_OFF_ENTRIES + n * RECORD_ENTRY_BYTES];
    *crc = crc32c::crc32c_append(*crc, body);
    let entries = body
        .chunks_exact(RECORD_ENTRY_BYTES)
        .map(|e| (rd_u64(e, 0), rd_u32(e, 8)))
        .collect();
    Ok((rd_u64(bytes, RECORD_OFF_NEXT), entries))
}

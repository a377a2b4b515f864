//! etcd's MVCC on the copy-on-write tree (layout in docs/format.md, "MVCC keys and values").
//!
//! Keyspaces of the one tree (first byte):
//! - `k` | escaped user key | `00 01` | `!main` u64 BE | `!sub` u64 BE  → record
//!   (newest revision first, so "the version visible at revision R" is one seek);
//! - `r` | main u64 BE | sub u64 BE → user key (the revision log: watch history, hash,
//!   compaction);
//! - `m` | key → the server's metadata.
//!
//! The meta page's application words hold: 0 current revision, 1 compact revision,
//! 2 the compaction that physical removal works towards, 3 the `r` revision it resumes at.
//!
//! Semantics follow etcd 3.4's `mvcc/kvstore_txn.go` and `etcdserver/apply.go` (range with
//! limit / count / more, min/max filters applied after counting).

use std::io::{Read, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::db::{Cursor, DbOptions, DbReader, DbWriter, PageSource, Snapshot};
use crate::error::StoreError;
use crate::page::{PageId, ValRef, PAGE_SIZE};
use crate::storage::{FileStorage, Storage};

/// Largest user key (the encoded key must fit `page::KEY_BYTES_MAX` even if every byte is 0).
/// The server rejects larger keys before they reach the store.
pub const KEY_BYTES_MAX: usize = 768;
/// Largest value; etcd's default request limit is 1.5 MiB.
pub const VALUE_BYTES_MAX: usize = crate::page::VALUE_BYTES_MAX;
const _: () = assert!(1 + 2 * KEY_BYTES_MAX + 2 + 16 <= crate::page::KEY_BYTES_MAX);

const KS_KEY: u8 = b'k';
const KS_REV: u8 = b'r';
const KS_META: u8 = b'm';
const REC_PUT: u8 = 0;
const REC_TOMBSTONE: u8 = 1;
/// Record: kind u8 | create_revision i64 | version i64 | lease i64 | value.
const REC_HEADER_BYTES: usize = 1 + 8 + 8 + 8;

const APP_REV: usize = 0;
const APP_COMPACT: usize = 1;
const APP_PHYS_TARGET: usize = 2;
const APP_PHYS_RESUME: usize = 3;

/// etcd's mvccpb.KeyValue.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyValue {
    pub key: Vec<u8>,
    pub create_revision: i64,
    pub mod_revision: i64,
    pub version: i64,
    pub value: Vec<u8>,
    pub lease: i64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    Put,
    Delete,
}

/// One change. A delete's `kv` carries the key and the delete's `mod_revision` only.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub kind: EventKind,
    pub kv: KeyValue,
    pub prev_kv: Option<KeyValue>,
}

/// etcd's RangeRequest fields that the store evaluates. Sorting is the caller's.
#[derive(Clone, Debug, Default)]
pub struct RangeOptions {
    pub key: Vec<u8>,
    /// Empty: the single key. `[0]`: every key >= `key`. Otherwise `[key, range_end)`.
    pub range_end: Vec<u8>,
    /// 0 (or negative): the view's current revision.
    pub revision: i64,
    /// 0: no limit.
    pub limit: i64,
    pub count_only: bool,
    pub keys_only: bool,
    pub min_mod_revision: i64,
    pub max_mod_revision: i64,
    pub min_create_revision: i64,
    pub max_create_revision: i64,
    /// Stop at `limit` instead of counting every key to the end of the range: `count` is then
    /// only the keys visited. Not an etcd option; for the server's own scans in pages.
    pub stop_at_limit: bool,
}

/// `count` counts every live key in the range at the revision (before the min/max filters, as
/// etcd does); `more` says the filtered result was cut by `limit`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RangeResult {
    pub kvs: Vec<KeyValue>,
    pub count: i64,
    pub more: bool,
}

#[derive(Debug)]
pub enum MvccError {
    Compacted,
    FutureRevision,
    Store(StoreError),
}

impl std::fmt::Display for MvccError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MvccError::Compacted => f.write_str("mvcc: required revision has been compacted"),
            MvccError::FutureRevision => {
                f.write_str("mvcc: required revision is a future revision")
            }
            MvccError::Store(e) => write!(f, "{e}"),
        }
    }
}
impl std::error::Error for MvccError {}
impl From<StoreError> for MvccError {
    fn from(e: StoreError) -> Self {
        MvccError::Store(e)
    }
}

#[derive(Clone, Debug)]
pub struct StoreOptions {
    pub db: DbOptions,
    /// Revision-log entries physical compaction examines per `Writer::commit` (bounded slice).
    pub compaction_entries_per_commit: usize,
    /// Pages defragmentation relocates per slice.
    pub defrag_pages_per_slice: usize,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            db: DbOptions::default(),
            compaction_entries_per_commit: 2_000,
            defrag_pages_per_slice: 256,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxnOutcome {
    /// The revision the txn wrote at, or the current revision for a txn without writes.
    pub revision: i64,
    pub events: Vec<Event>,
}

struct WState {
    db: DbWriter,
    defrag: DefragCursor,
    /// An error inside a `Txn` (which has no error channel); returned by the next commit.
    deferred: Option<StoreError>,
}

struct Inner {
    reader: DbReader,
    w: Mutex<WState>,
    /// Highest compaction recorded (visible to readers before the next commit).
    compact_floor: AtomicI64,
    defrag_requested: AtomicBool,
    opts: StoreOptions,
}

/// The MVCC store. `Send + Sync`; share it in an `Arc`.
pub struct MvccStore {
    inner: Arc<Inner>,
}

/// A pinned snapshot: consistent reads, never blocks the writer.
pub struct ReadView {
    snap: Arc<Snapshot>,
    compact_floor: i64,
}

/// The single writer's handle.
pub struct Writer {
    inner: Arc<Inner>,
}

/// One etcd revision in progress. Dropping it without `end` ends it all the same.
pub struct Txn<'a> {
    w: MutexGuard<'a, WState>,
    begin_rev: i64,
    events: Vec<Event>,
    ended: bool,
}

// ---------------------------------------------------------------- key encoding

fn enc_prefix(out: &mut Vec<u8>, key: &[u8]) {
    out.push(KS_KEY);
    for &b in key {
        out.push(b);
        if b == 0 {
            out.push(0xFF);
        }
    }
    out.extend_from_slice(&[0, 1]);
}

fn enc_key(key: &[u8], main: i64, sub: i64) -> Vec<u8> {
    let mut out = Vec::with_capacity(key.len() + 19);
    enc_prefix(&mut out, key);
    out.extend_from_slice(&(!(main as u64)).to_be_bytes());
    out.extend_from_slice(&(!(sub as u64)).to_be_bytes());
    out
}

/// Splits an encoded `k` key into (prefix, main, sub).
fn split_key(k: &[u8]) -> Result<(&[u8], i64, i64), StoreError> {
    if k.len() < 19 || k[0] != KS_KEY {
        return Err(bad_record(k, "malformed key entry"));
    }
    let n = k.len() - 16;
    let main = !u64::from_be_bytes(k[n..n + 8].try_into().expect("8")) as i64;
    let sub = !u64::from_be_bytes(k[n + 8..].try_into().expect("8")) as i64;
    Ok((&k[..n], main, sub))
}

fn dec_user_key(prefix: &[u8]) -> Result<Vec<u8>, StoreError> {
    let body = &prefix[1..prefix.len() - 2];
    let mut out = Vec::with_capacity(body.len());
    let mut i = 0;
    while i < body.len() {
        out.push(body[i]);
        if body[i] == 0 {
            if body.get(i + 1) != Some(&0xFF) {
                return Err(bad_record(prefix, "bad key escape"));
            }
            i += 1;
        }
        i += 1;
    }
    Ok(out)
}

fn rev_key(main: i64, sub: i64) -> [u8; 17] {
    let mut k = [0u8; 17];
    k[0] = KS_REV;
    k[1..9].copy_from_slice(&(main as u64).to_be_bytes());
    k[9..].copy_from_slice(&(sub as u64).to_be_bytes());
    k
}

fn bad_record(k: &[u8], what: &str) -> StoreError {
    StoreError::Corrupt {
        page: 0,
        reason: format!("mvcc: {what} (entry key {:02x?})", &k[..k.len().min(32)]),
    }
}

struct Record<'a> {
    tombstone: bool,
    create: i64,
    version: i64,
    lease: i64,
    value: ValRef<'a>,
}

fn rd_i64(b: &[u8], off: usize) -> i64 {
    i64::from_le_bytes(b[off..off + 8].try_into().expect("8"))
}

/// Decodes a record header. Records are small enough to stay inline unless the value is big,
/// in which case the header is read from the value.
fn encode_record(tombstone: bool, create: i64, version: i64, lease: i64, value: &[u8]) -> Vec<u8> {
    let mut r = Vec::with_capacity(REC_HEADER_BYTES + value.len());
    r.push(if tombstone { REC_TOMBSTONE } else { REC_PUT });
    r.extend_from_slice(&create.to_le_bytes());
    r.extend_from_slice(&version.to_le_bytes());
    r.extend_from_slice(&lease.to_le_bytes());
    r.extend_from_slice(value);
    r
}

fn decode_record<'a, S: PageSource>(
    src: &'a S,
    k: &[u8],
    v: ValRef<'a>,
) -> Result<(Record<'a>, Option<Vec<u8>>), StoreError> {
    // Inline: parse in place. Overflow: read the whole value once.
    let (hdr, owned): (std::borrow::Cow<'a, [u8]>, bool) = match v {
        ValRef::Inline(b) => (std::borrow::Cow::Borrowed(b), false),
        ValRef::Overflow { .. } => (crate::db::read_value(src, v)?, true),
    };
    if hdr.len() < REC_HEADER_BYTES || hdr[0] > REC_TOMBSTONE {
        return Err(bad_record(k, "malformed record"));
    }
    let rec_tomb = hdr[0] == REC_TOMBSTONE;
    let create = rd_i64(&hdr, 1);
    let version = rd_i64(&hdr, 9);
    let lease = rd_i64(&hdr, 17);
    match hdr {
        std::borrow::Cow::Borrowed(b) => Ok((
            Record {
                tombstone: rec_tomb,
                create,
                version,
                lease,
                value: ValRef::Inline(&b[REC_HEADER_BYTES..]),
            },
            None,
        )),
        std::borrow::Cow::Owned(b) => {
            debug_assert!(owned);
            Ok((
                Record {
                    tombstone: rec_tomb,
                    create,
                    version,
                    lease,
                    value: ValRef::Inline(&[]),
                },
                Some(b[REC_HEADER_BYTES..].to_vec()),
            ))
        }
    }
}

fn record_kv<S: PageSource>(
    src: &S,
    k: &[u8],
    v: ValRef<'_>,
    with_value: bool,
) -> Result<Option<KeyValue>, StoreError> {
    let (prefix, main, _) = split_key(k)?;
    let (rec, owned) = decode_record(src, k, v)?;
    if rec.tombstone {
        return Ok(None);
    }
    let value = if !with_value {
        Vec::new()
    } else if let Some(o) = owned {
        o
    } else {
        match rec.value {
            ValRef::Inline(b) => b.to_vec(),
            ValRef::Overflow { .. } => unreachable!("inline after decode"),
        }
    };
    Ok(Some(KeyValue {
        key: dec_user_key(prefix)?,
        create_revision: rec.create,
        mod_revision: main,
        version: rec.version,
        value,
        lease: rec.lease,
    }))
}

/// The live version `next` (the entry after the new `k` entry `new_k`, its whole value
/// `next_v`) if it is a version of the same key, as `latest` would return it.
fn latest_from_next(
    new_k: &[u8],
    next_k: &[u8],
    next_v: &[u8],
) -> Result<Option<KeyValue>, StoreError> {
    let prefix_bytes = new_k.len() - 16;
    if next_k.len() != new_k.len() || next_k[..prefix_bytes] != new_k[..prefix_bytes] {
        return Ok(None);
    }
    let (prefix, main, _) = split_key(next_k)?;
    if next_v.len() < REC_HEADER_BYTES || next_v[0] > REC_TOMBSTONE {
        return Err(bad_record(next_k, "malformed record"));
    }
    if next_v[0] == REC_TOMBSTONE {
        return Ok(None);
    }
    Ok(Some(KeyValue {
        key: dec_user_key(prefix)?,
        create_revision: rd_i64(next_v, 1),
        mod_revision: main,
        version: rd_i64(next_v, 9),
        value: next_v[REC_HEADER_BYTES..].to_vec(),
        lease: rd_i64(next_v, 17),
    }))
}

// ---------------------------------------------------------------- reads shared by views and txns

/// The newest version of `key` at or below `rev` (any kind), as (encoded key, value).
fn seek_version<'a, S: PageSource>(
    c: &mut Cursor<'a, S>,
    key: &[u8],
    rev: i64,
) -> Result<Option<(&'a [u8], ValRef<'a>)>, StoreError> {
    let target = enc_key(key, rev, i64::MAX);
    c.seek(&target)?;
    Ok(match c.current() {
        Some((k, v))
            if k.len() == target.len() && k[..k.len() - 16] == target[..target.len() - 16] =>
        {
            Some((k, v))
        }
        _ => None,
    })
}

fn range_in<S: PageSource>(
    src: &S,
    cur_rev: i64,
    compact_rev: i64,
    o: &RangeOptions,
) -> Result<RangeResult, MvccError> {
    if o.revision > cur_rev {
        return Err(MvccError::FutureRevision);
    }
    let rev = if o.revision <= 0 { cur_rev } else { o.revision };
    if rev < compact_rev {
        return Err(MvccError::Compacted);
    }
    let mut res = RangeResult::default();
    let limit = if o.limit > 0 {
        o.limit as usize
    } else {
        usize::MAX
    };
    let mut matched = 0usize;
    let mut visit =
        |src: &S, k: &[u8], v: ValRef<'_>, res: &mut RangeResult| -> Result<(), StoreError> {
            // `k`/`v` is the visible version of one key; tombstones were filtered by the caller.
            res.count += 1;
            if o.count_only {
                return Ok(());
            }
            let (_, main, _) = split_key(k)?;
            if (o.max_mod_revision != 0 && main > o.max_mod_revision)
                || (o.min_mod_revision != 0 && main < o.min_mod_revision)
            {
                return Ok(());
            }
            if o.max_create_revision != 0 || o.min_create_revision != 0 {
                let (rec, _) = decode_record(src, k, v)?;
                if (o.max_create_revision != 0 && rec.create > o.max_create_revision)
                    || (o.min_create_revision != 0 && rec.create < o.min_create_revision)
                {
                    return Ok(());
                }
            }
            matched += 1;
            if matched <= limit {
                if let Some(kv) = record_kv(src, k, v, !o.keys_only)? {
                    res.kvs.push(kv);
                }
            } else {
                res.more = true;
            }
            Ok(())
        };
    let mut c = Cursor::new(src);
    if o.range_end.is_empty() {
        if let Some((k, v)) = seek_version(&mut c, &o.key, rev)? {
            let (rec, _) = decode_record(src, k, v)?;
            if !rec.tombstone {
                visit(src, k, v, &mut res)?;
            }
        }
        return Ok(res);
    }
    let end: Vec<u8> = if o.range_end == [0] {
        vec![KS_KEY + 1]
    } else {
        let mut e = Vec::new();
        enc_prefix(&mut e, &o.range_end);
        e
    };
    let mut start = Vec::new();
    enc_prefix(&mut start, &o.key);
    let mut target = start.clone();
    target.extend_from_slice(&(!(rev as u64)).to_be_bytes());
    target.extend_from_slice(&[0; 8]);
    c.seek(&target)?;
    while let Some((k, v)) = c.current() {
        if k >= end.as_slice() {
            break;
        }
        let (prefix, main, _) = split_key(k)?;
        if main <= rev {
            let (rec, _) = decode_record(src, k, v)?;
            if !rec.tombstone {
                visit(src, k, v, &mut res)?;
                if res.more && o.stop_at_limit {
                    break;
                }
            }
            // Skip the rest of this key's history.
            let mut skip = prefix.to_vec();
            skip.extend_from_slice(&[0xFF; 17]);
            c.seek(&skip)?;
        } else {
            let mut t = prefix.to_vec();
            t.extend_from_slice(&(!(rev as u64)).to_be_bytes());
            t.extend_from_slice(&[0; 8]);
            c.seek(&t)?;
        }
    }
    Ok(res)
}

fn in_range(key: &[u8], start: &[u8], end: &[u8]) -> bool {
    if end.is_empty() {
        key == start
    } else if end == [0] {
        key >= start
    } else {
        key >= start && key < end
    }
}

fn prev_kv_of<S: PageSource>(
    src: &S,
    key: &[u8],
    main: i64,
    sub: i64,
    compact_rev: i64,
) -> Result<Option<KeyValue>, StoreError> {
    // The entry just after (key, main, sub) in `k` order is the next older version. Below the
    // compaction it is gone (or about to be) unless it is the newest version at or below it.
    if main <= compact_rev {
        return Ok(None);
    }
    let mut c = Cursor::new(src);
    let mut t = enc_key(key, main, sub);
    t.push(0);
    c.seek(&t)?;
    match c.current() {
        Some((k, v)) if k.len() == t.len() - 1 && k[..k.len() - 16] == t[..t.len() - 17] => {
            record_kv(src, k, v, true)
        }
        _ => Ok(None),
    }
}

fn events_in<S: PageSource>(
    src: &S,
    from_rev: i64,
    key: &[u8],
    range_end: &[u8],
    max_events: usize,
    compact_rev: i64,
) -> Result<Vec<Event>, StoreError> {
    let mut out = Vec::new();
    let mut c = Cursor::new(src);
    c.seek(&rev_key(from_rev.max(0), 0))?;
    let mut last_main = -1;
    while let Some((rk, rv)) = c.current() {
        if rk.len() != 17 || rk[0] != KS_REV {
            break;
        }
        let main = u64::from_be_bytes(rk[1..9].try_into().expect("8")) as i64;
        let sub = u64::from_be_bytes(rk[9..17].try_into().expect("8")) as i64;
        if max_events > 0 && out.len() >= max_events && main != last_main {
            break;
        }
        let ukey = c.value(rv)?;
        if in_range(&ukey, key, range_end)
            && (main > compact_rev || is_keeper(src, &ukey, main, sub, compact_rev)?)
        {
            let mut kc = Cursor::new(src);
            let ek = enc_key(&ukey, main, sub);
            kc.seek(&ek)?;
            let Some((k, v)) = kc.current().filter(|(k, _)| *k == ek.as_slice()) else {
                return Err(bad_record(rk, "revision log entry without its key entry"));
            };
            let prev = prev_kv_of(src, &ukey, main, sub, compact_rev)?;
            match record_kv(src, k, v, true)? {
                Some(kv) => out.push(Event {
                    kind: EventKind::Put,
                    kv,
                    prev_kv: prev,
                }),
                None => out.push(Event {
                    kind: EventKind::Delete,
                    kv: KeyValue {
                        key: ukey.into_owned(),
                        mod_revision: main,
                        ..KeyValue::default()
                    },
                    prev_kv: prev,
                }),
            }
            last_main = main;
        }
        c.next()?;
    }
    Ok(out)
}

/// Whether compaction at `compact_rev` keeps version (main, sub) of `key`: it is the newest
/// version at or below the compaction and not a tombstone.
fn is_keeper<S: PageSource>(
    src: &S,
    key: &[u8],
    main: i64,
    sub: i64,
    compact_rev: i64,
) -> Result<bool, StoreError> {
    let mut kc = Cursor::new(src);
    Ok(match seek_version(&mut kc, key, compact_rev)? {
        Some((k, v)) => {
            let (_, m, s) = split_key(k)?;
            let (rec, _) = decode_record(src, k, v)?;
            m == main && s == sub && !rec.tombstone
        }
        None => false,
    })
}

// etcd's mvccpb.KeyValue protobuf encoding, for a HashKV in etcd's spirit.
fn pb_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}
fn pb_kv(kv: &KeyValue) -> Vec<u8> {
    let mut o = Vec::with_capacity(kv.key.len() + kv.value.len() + 32);
    if !kv.key.is_empty() {
        o.push(0x0A);
        pb_varint(&mut o, kv.key.len() as u64);
        o.extend_from_slice(&kv.key);
    }
    for (tag, v) in [
        (0x10, kv.create_revision),
        (0x18, kv.mod_revision),
        (0x20, kv.version),
    ] {
        if v != 0 {
            o.push(tag);
            pb_varint(&mut o, v as u64);
        }
    }
    if !kv.value.is_empty() {
        o.push(0x2A);
        pb_varint(&mut o, kv.value.len() as u64);
        o.extend_from_slice(&kv.value);
    }
    if kv.lease != 0 {
        o.push(0x30);
        pb_varint(&mut o, kv.lease as u64);
    }
    o
}

fn hash_in<S: PageSource>(src: &S, rev: i64, compact_rev: i64) -> Result<u32, StoreError> {
    let mut h = crc32c::crc32c(b"key");
    let mut c = Cursor::new(src);
    c.seek(&rev_key(0, 0))?;
    while let Some((rk, rv)) = c.current() {
        if rk.len() != 17 || rk[0] != KS_REV {
            break;
        }
        let main = u64::from_be_bytes(rk[1..9].try_into().expect("8")) as i64;
        let sub = u64::from_be_bytes(rk[9..17].try_into().expect("8")) as i64;
        if main > rev {
            break;
        }
        let ukey = c.value(rv)?;
        let mut kc = Cursor::new(src);
        // Only what compaction keeps, so the hash does not depend on its progress.
        if main <= compact_rev && !is_keeper(src, &ukey, main, sub, compact_rev)? {
            c.next()?;
            continue;
        }
        let ek = enc_key(&ukey, main, sub);
        kc.seek(&ek)?;
        let Some((k, v)) = kc.current().filter(|(k, _)| *k == ek.as_slice()) else {
            return Err(bad_record(rk, "revision log entry without its key entry"));
        };
        // etcd's key: main BE | '_' | sub BE, plus 't' for a tombstone.
        let mut rb = Vec::with_capacity(18);
        rb.extend_from_slice(&(main as u64).to_be_bytes());
        rb.push(b'_');
        rb.extend_from_slice(&(sub as u64).to_be_bytes());
        let kv = match record_kv(src, k, v, true)? {
            Some(kv) => kv,
            None => {
                rb.push(b't');
                KeyValue {
                    key: ukey.into_owned(),
                    ..KeyValue::default()
                }
            }
        };
        h = crc32c::crc32c_append(h, &rb);
        h = crc32c::crc32c_append(h, &pb_kv(&kv));
        c.next()?;
    }
    Ok(h)
}

// ---------------------------------------------------------------- the store

/// The revision of a fresh, empty store: etcd's (so its first write is revision 2).
pub const FIRST_REVISION: i64 = 1;

impl MvccStore {
    pub fn open(path: &Path, opts: StoreOptions) -> Result<MvccStore, StoreError> {
        Self::open_storage(Arc::new(FileStorage::open(path)?), opts)
    }

    /// Opens over any `Storage` (crash tests use `SimStorage`).
    pub fn open_storage(
        storage: Arc<dyn Storage>,
        opts: StoreOptions,
    ) -> Result<MvccStore, StoreError> {
        let db = crate::db::Db::open_storage(storage, opts.db.clone())?;
        let mut w = db.into_writer();
        let mut app = w.app();
        if app[APP_REV] == 0 {
            // A fresh store starts at revision 1, as etcd's does (its first write is revision 2).
            app[APP_REV] = FIRST_REVISION as u64;
            w.set_app(app);
            w.commit(true)?;
        }
        assert!(app[APP_REV] >= FIRST_REVISION as u64);
        Ok(MvccStore {
            inner: Arc::new(Inner {
                reader: w.reader(),
                w: Mutex::new(WState {
                    db: w,
                    defrag: DefragCursor::default(),
                    deferred: None,
                }),
                compact_floor: AtomicI64::new(app[APP_COMPACT] as i64),
                defrag_requested: AtomicBool::new(false),
                opts,
            }),
        })
    }

    pub fn read(&self) -> ReadView {
        ReadView {
            snap: self.inner.reader.read(),
            compact_floor: self.inner.compact_floor.load(Ordering::Acquire),
        }
    }

    pub fn writer(&self) -> Writer {
        Writer {
            inner: self.inner.clone(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, WState> {
        self.inner.w.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a compaction at `revision` (etcd's errors for compacted and future revisions).
    /// Reads below it fail from now on; superseded versions are removed in bounded slices by
    /// later commits. If the writer has no uncommitted changes the record is committed now
    /// (without sync); otherwise it is published by the writer's next commit.
    pub fn compact(&self, revision: i64) -> Result<(), MvccError> {
        let mut w = self.lock();
        if w.deferred.is_some() {
            return Err(MvccError::Store(StoreError::Poisoned));
        }
        let mut app = w.db.app();
        let cur = app[APP_REV] as i64;
        let compacted = app[APP_COMPACT] as i64;
        if revision <= compacted {
            return Err(MvccError::Compacted);
        }
        if revision > cur {
            return Err(MvccError::FutureRevision);
        }
        let was_clean = !w.db.has_changes();
        app[APP_COMPACT] = revision as u64;
        w.db.set_app(app);
        self.inner
            .compact_floor
            .fetch_max(revision, Ordering::AcqRel);
        if was_clean {
            let entries = self.inner.opts.compaction_entries_per_commit;
            let r = compaction_slice(&mut w.db, entries).and_then(|_| w.db.commit(false));
            poison_on_err(&mut w, r)?;
        }
        Ok(())
    }

    /// Runs physical compaction to completion now, in bounded slices each committed (only when
    /// the writer has no uncommitted changes; otherwise commits do it gradually).
    pub fn finish_compaction(&self) -> Result<(), StoreError> {
        loop {
            let mut w = self.lock();
            if w.deferred.is_some() {
                return Err(StoreError::Poisoned);
            }
            if w.db.has_changes() {
                return Ok(());
            }
            let entries = self.inner.opts.compaction_entries_per_commit;
            let r = compaction_slice(&mut w.db, entries)
                .and_then(|more| w.db.commit(false).map(|_| more));
            if !poison_on_err(&mut w, r)? {
                return Ok(());
            }
        }
    }

    /// etcd's HashKV: crc32c over the revision log entries up to `revision` (0 = current) that
    /// compaction keeps, each as etcd's revision key and mvccpb.KeyValue bytes. Returns the hash
    /// and the compact revision.
    pub fn hash_kv(&self, revision: i64) -> Result<(u32, i64), MvccError> {
        let view = self.read();
        let compact = view.compact_revision();
        let cur = view.revision();
        if revision > 0 && revision <= compact {
            return Err(MvccError::Compacted);
        }
        if revision > cur {
            return Err(MvccError::FutureRevision);
        }
        let rev = if revision <= 0 { cur } else { revision };
        Ok((hash_in(&*view.snap, rev, compact)?, compact))
    }

    /// Incremental defragmentation: moves pages from the end of the file into free pages near
    /// its start, `defrag_pages_per_slice` at a time, each slice its own durable commit, taking
    /// the writer lock only for one slice. Stops when the file is compact or when the writer
    /// has uncommitted changes (then the writer's commits continue it).
    pub fn defragment(&self) -> Result<(), StoreError> {
        self.inner.defrag_requested.store(true, Ordering::Release);
        let pages = self.size_bytes() / PAGE_SIZE as u64;
        let slices_max = 2 * pages / self.inner.opts.defrag_pages_per_slice.max(1) as u64 + 8;
        for _ in 0..slices_max {
            let mut w = self.lock();
            if w.deferred.is_some() {
                return Err(StoreError::Poisoned);
            }
            if w.db.has_changes() {
                return Ok(());
            }
            let pages = self.inner.opts.defrag_pages_per_slice;
            let ws = &mut *w;
            let r = defrag_slice(&mut ws.db, &mut ws.defrag, pages)
                .and_then(|more| ws.db.commit(true).map(|_| more));
            if !poison_on_err(&mut w, r)? {
                self.inner.defrag_requested.store(false, Ordering::Release);
                // One more durable commit lets the freed tail be trimmed.
                drop(w);
                let mut w = self.lock();
                if !w.db.has_changes() {
                    w.db.commit(true)?;
                }
                return Ok(());
            }
        }
        Ok(())
    }

    /// Full consistency check of the tree and page accounting (see `DbWriter::check`); only
    /// meaningful when the writer has no uncommitted changes.
    pub fn check(&self) -> Result<(), String> {
        self.lock().db.check()
    }

    /// Which durable commit open chose (and a newer, torn one it passed over, if any).
    pub fn open_report(&self) -> crate::db::OpenReport {
        self.lock().db.open_report().clone()
    }

    pub fn size_bytes(&self) -> u64 {
        self.inner.reader.file_bytes()
    }
    pub fn size_in_use_bytes(&self) -> u64 {
        self.inner.reader.in_use_bytes()
    }

    /// Writes the latest committed state: magic, entries (u32 key len, u32 value len, key,
    /// value), an end marker, the application words, and a crc32c of everything before it.
    pub fn write_snapshot(&self, out: &mut impl Write) -> Result<(), StoreError> {
        let snap = self.inner.reader.read();
        let mut crc = 0u32;
        let mut put = |out: &mut dyn Write, b: &[u8]| -> Result<(), StoreError> {
            crc = crc32c::crc32c_append(crc, b);
            out.write_all(b)?;
            Ok(())
        };
        put(out, SNAPSHOT_MAGIC)?;
        let mut c = snap.cursor();
        c.seek_first()?;
        while let Some((k, v)) = c.current() {
            let v = c.value(v)?;
            put(out, &(k.len() as u32).to_le_bytes())?;
            put(out, &(v.len() as u32).to_le_bytes())?;
            put(out, k)?;
            put(out, &v)?;
            c.next()?;
        }
        put(out, &u32::MAX.to_le_bytes())?;
        for w in snap.app() {
            put(out, &w.to_le_bytes())?;
        }
        out.write_all(&crc.to_le_bytes())?;
        Ok(())
    }

    /// Creates a store at `path` (which must not exist or be empty) from `write_snapshot` bytes.
    pub fn restore(
        path: &Path,
        input: &mut impl Read,
        opts: StoreOptions,
    ) -> Result<MvccStore, StoreError> {
        if std::fs::metadata(path)
            .map(|m| m.len() > 0)
            .unwrap_or(false)
        {
            return Err(StoreError::Invalid(format!(
                "restore target {} is not empty",
                path.display()
            )));
        }
        let store = MvccStore::open(path, opts)?;
        {
            let mut w = store.lock();
            let mut crc = 0u32;
            let mut get = |input: &mut dyn Read, n: usize| -> Result<Vec<u8>, StoreError> {
                let mut b = vec![0u8; n];
                input.read_exact(&mut b)?;
                crc = crc32c::crc32c_append(crc, &b);
                Ok(b)
            };
            if get(input, SNAPSHOT_MAGIC.len())? != SNAPSHOT_MAGIC {
                return Err(StoreError::Invalid("not a ferrite-btree snapshot".into()));
            }
            let mut n = 0u64;
            loop {
                let kl = u32::from_le_bytes(get(input, 4)?.try_into().expect("4"));
                if kl == u32::MAX {
                    break;
                }
                let vl = u32::from_le_bytes(get(input, 4)?.try_into().expect("4"));
                if kl as usize > crate::page::KEY_BYTES_MAX || vl as usize > VALUE_BYTES_MAX {
                    return Err(StoreError::Invalid(format!("snapshot entry {n} too large")));
                }
                let k = get(input, kl as usize)?;
                let v = get(input, vl as usize)?;
                w.db.insert(&k, &v)?;
                n += 1;
                if n.is_multiple_of(50_000) {
                    w.db.commit(false)?;
                }
            }
            let mut app = [0u64; 4];
            for a in app.iter_mut() {
                *a = u64::from_le_bytes(get(input, 8)?.try_into().expect("8"));
            }
            let mut cb = [0u8; 4];
            input.read_exact(&mut cb)?;
            if u32::from_le_bytes(cb) != crc {
                return Err(StoreError::Invalid("snapshot checksum mismatch".into()));
            }
            w.db.set_app(app);
            w.db.commit(true)?;
            store
                .inner
                .compact_floor
                .store(app[APP_COMPACT] as i64, Ordering::Release);
        }
        Ok(store)
    }
}

const SNAPSHOT_MAGIC: &[u8] = b"FeSNAP01";

/// An error recorded inside a txn since the last commit: the txns are incomplete, so nothing
/// may be published (the writer stays poisoned).
fn take_deferred(w: &mut WState) -> Result<(), StoreError> {
    match w.deferred.take() {
        Some(e) => {
            w.deferred = Some(StoreError::Poisoned);
            Err(e)
        }
        None => Ok(()),
    }
}

/// A failure half-way through maintenance leaves uncommitted changes that must never be
/// published: refuse every later commit.
fn poison_on_err<T>(w: &mut WState, r: Result<T, StoreError>) -> Result<T, StoreError> {
    if r.is_err() {
        w.deferred = Some(StoreError::Poisoned);
    }
    r
}

/// One bounded slice of physical compaction. Returns whether work remains.
fn compaction_slice(db: &mut DbWriter, entries_max: usize) -> Result<bool, StoreError> {
    let mut app = db.app();
    let compact = app[APP_COMPACT] as i64;
    if (app[APP_PHYS_TARGET] as i64) < compact {
        app[APP_PHYS_TARGET] = compact as u64;
        app[APP_PHYS_RESUME] = 0;
    }
    let target = app[APP_PHYS_TARGET] as i64;
    let resume = app[APP_PHYS_RESUME] as i64;
    if resume > target || entries_max == 0 {
        db.set_app(app);
        return Ok(false);
    }
    let mut doomed: Vec<(i64, i64, Vec<u8>)> = Vec::new();
    let mut next_resume = target + 1;
    {
        let mut c = db.cursor();
        c.seek(&rev_key(resume, 0))?;
        let mut seen = 0;
        while let Some((rk, rv)) = c.current() {
            if rk.len() != 17 || rk[0] != KS_REV {
                break;
            }
            let main = u64::from_be_bytes(rk[1..9].try_into().expect("8")) as i64;
            let sub = u64::from_be_bytes(rk[9..17].try_into().expect("8")) as i64;
            if main > target {
                break;
            }
            if seen >= entries_max {
                next_resume = main;
                // Never split a main revision across slices: resume at its start.
                break;
            }
            seen += 1;
            let ukey = c.value(rv)?.into_owned();
            if !is_keeper(&*db, &ukey, main, sub, target)? {
                doomed.push((main, sub, ukey));
            }
            c.next()?;
        }
    }
    for (main, sub, ukey) in &doomed {
        let a = db.remove(&enc_key(ukey, *main, *sub))?;
        let b = db.remove(&rev_key(*main, *sub))?;
        assert!(a && b, "compaction lost track of revision {main}/{sub}");
    }
    app[APP_PHYS_RESUME] = next_resume as u64;
    db.set_app(app);
    Ok(next_resume <= target)
}

/// Pages one defragmentation slice reads at most (bounds how long it holds the writer lock).
const DEFRAG_VISITS_PER_SLICE: usize = 4096;

/// Where defragmentation resumes, and whether the current pass over the tree changed anything.
#[derive(Default)]
struct DefragCursor {
    from: Vec<u8>,
    changed_this_pass: usize,
}

/// One bounded slice of defragmentation. Returns whether work remains.
fn defrag_slice(
    db: &mut DbWriter,
    cur: &mut DefragCursor,
    pages_max: usize,
) -> Result<bool, StoreError> {
    let (in_use, _free, total) = db.page_stats();
    // Aim for the live pages plus 1/16 slack to sit below the cutoff; only move pages when
    // there is room below it (pages pinned by readers or waiting for a durable commit become
    // room later). Without room only merges of underfull neighbours happen.
    let cutoff = (in_use + in_use / 16 + 2).max(2);
    let room = db.free_below(cutoff);
    let cutoff = if cutoff >= total || room == 0 {
        PageId::MAX
    } else {
        cutoff
    };
    let (changed, resume) = db.relocate_above(
        cutoff,
        pages_max.min(room.max(1)),
        &cur.from,
        DEFRAG_VISITS_PER_SLICE,
    )?;
    cur.changed_this_pass += changed;
    match resume {
        Some(k) => {
            cur.from = k;
            Ok(true)
        }
        None => {
            let again = cur.changed_this_pass > 0;
            *cur = DefragCursor::default();
            Ok(again)
        }
    }
}

impl ReadView {
    /// The main revision of this snapshot.
    pub fn revision(&self) -> i64 {
        self.snap.app()[APP_REV] as i64
    }
    pub fn compact_revision(&self) -> i64 {
        (self.snap.app()[APP_COMPACT] as i64).max(self.compact_floor)
    }
    pub fn range(&self, o: &RangeOptions) -> Result<RangeResult, MvccError> {
        range_in(&*self.snap, self.revision(), self.compact_revision(), o)
    }
    /// The changes with main revision >= `from_revision` to keys in `[key, range_end)` (etcd's
    /// range_end rules), in (main, sub) order. With `max_events > 0` it stops after that many,
    /// but never inside a revision (so it may return a few more). `Err(Compacted)` if
    /// `from_revision` is below the compaction.
    pub fn events(
        &self,
        from_revision: i64,
        key: &[u8],
        range_end: &[u8],
        max_events: usize,
    ) -> Result<Vec<Event>, MvccError> {
        if from_revision < self.compact_revision() {
            return Err(MvccError::Compacted);
        }
        Ok(events_in(
            &*self.snap,
            from_revision,
            key,
            range_end,
            max_events,
            self.compact_revision(),
        )?)
    }
    pub fn get_meta(&self, key: &[u8]) -> Option<Vec<u8>> {
        let mut k = vec![KS_META];
        k.extend_from_slice(key);
        self.snap.get(&k).ok().flatten()
    }
    /// As `get_meta`, reporting corruption.
    pub fn try_get_meta(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let mut k = vec![KS_META];
        k.extend_from_slice(key);
        self.snap.get(&k)
    }
}

impl Writer {
    fn lock(&self) -> MutexGuard<'_, WState> {
        self.inner.w.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts one etcd revision. Holds the writer lock until it ends.
    pub fn txn(&mut self) -> Txn<'_> {
        let w = self.lock();
        let begin_rev = w.db.app()[APP_REV] as i64;
        Txn {
            w,
            begin_rev,
            events: Vec::new(),
            ended: false,
        }
    }

    pub fn put_meta(&mut self, key: &[u8], value: &[u8]) {
        let mut w = self.lock();
        let mut k = vec![KS_META];
        k.extend_from_slice(key);
        if let Err(e) = w.db.insert(&k, value) {
            w.deferred.get_or_insert(e);
        }
    }

    pub fn delete_meta(&mut self, key: &[u8]) {
        let mut w = self.lock();
        let mut k = vec![KS_META];
        k.extend_from_slice(key);
        if let Err(e) = w.db.remove(&k) {
            w.deferred.get_or_insert(e);
        }
    }

    /// The writer's view of the metadata (its uncommitted changes included).
    pub fn get_meta(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let w = self.lock();
        let mut k = vec![KS_META];
        k.extend_from_slice(key);
        w.db.get(&k)
    }

    /// The writer's current revision (uncommitted txns included).
    pub fn revision(&self) -> i64 {
        self.lock().db.app()[APP_REV] as i64
    }

    /// Publishes every txn and metadata change since the last commit, atomically; `durable`
    /// also syncs. Does a bounded slice of pending compaction / defragmentation first. An error
    /// recorded inside a txn (corrupt page, oversized key) is returned here and poisons the
    /// writer.
    pub fn commit(&mut self, durable: bool) -> Result<(), StoreError> {
        let mut w = self.lock();
        take_deferred(&mut w)?;
        let opts = &self.inner.opts;
        let defrag = self.inner.defrag_requested.load(Ordering::Acquire);
        let ws = &mut *w;
        let r = compaction_slice(&mut ws.db, opts.compaction_entries_per_commit).and_then(|_| {
            if defrag && !defrag_slice(&mut ws.db, &mut ws.defrag, opts.defrag_pages_per_slice)? {
                self.inner.defrag_requested.store(false, Ordering::Release);
            }
            ws.db.commit(durable)
        });
        poison_on_err(&mut w, r)
    }

    /// `commit(true)` without its fdatasync, which the caller runs off this thread
    /// (`DbWriter::commit_durable_start`): the server's forced durable commits, so the Raft
    /// core never blocks on writeback. Publishes like `commit`.
    pub fn commit_durable_start(&mut self) -> Result<crate::db::PendingSync, StoreError> {
        let mut w = self.lock();
        take_deferred(&mut w)?;
        let r = w.db.commit_durable_start();
        poison_on_err(&mut w, r)
    }

    /// Records that a started durable commit's sync returned.
    pub fn commit_durable_finish(
        &mut self,
        done: crate::db::SyncedCommit,
    ) -> Result<(), StoreError> {
        let mut w = self.lock();
        let r = w.db.commit_durable_finish(done);
        poison_on_err(&mut w, r)
    }

    /// Time for `commit_durable_start` (see `DbWriter::wants_durable`).
    pub fn wants_durable(&self) -> bool {
        self.lock().db.wants_durable()
    }
}

impl Txn<'_> {
    fn rev_for_reads(&self) -> i64 {
        self.begin_rev + i64::from(!self.events.is_empty())
    }

    /// A range that sees this txn's earlier writes.
    pub fn range(&self, o: &RangeOptions) -> Result<RangeResult, MvccError> {
        let compact = self.w.db.app()[APP_COMPACT] as i64;
        range_in(&self.w.db, self.rev_for_reads(), compact, o)
    }

    fn latest(&self, key: &[u8]) -> Result<Option<KeyValue>, StoreError> {
        let mut c = self.w.db.cursor();
        match seek_version(&mut c, key, i64::MAX)? {
            Some((k, v)) => record_kv(&self.w.db, k, v, true),
            None => Ok(None),
        }
    }

    fn record(&mut self, r: Result<(), StoreError>) {
        if let Err(e) = r {
            self.w.deferred.get_or_insert(e);
        }
    }

    /// Puts `key` at this txn's revision. Returns the previous kv, if the key was live.
    pub fn put(&mut self, key: &[u8], value: &[u8], lease: i64) -> Option<KeyValue> {
        if key.len() > KEY_BYTES_MAX {
            self.record(Err(StoreError::Invalid(format!(
                "key of {} bytes exceeds KEY_BYTES_MAX {KEY_BYTES_MAX}",
                key.len()
            ))));
            return None;
        }
        let rev = self.begin_rev + 1;
        let sub = self.events.len() as i64;
        let k = enc_key(key, rev, sub);
        // create_revision and version of the new version, from the key's latest live one.
        let create_version = |prev: &Option<KeyValue>| match prev {
            Some(p) => (p.create_revision, p.version + 1),
            None => (rev, 1),
        };
        let record_for = |prev: &Option<KeyValue>| {
            let (create, version) = create_version(prev);
            encode_record(false, create, version, lease, value)
        };
        // The key's latest version (if any) is the entry right after `k`, in the leaf `k` goes
        // to or, if `k` ends its leaf, starting the next one: the separator after the leaf
        // tells whether the next entry can be a version of the key. So one descent usually
        // finds it and inserts (`insert_from_next`); otherwise a cursor looks it up and a
        // second descent inserts.
        let mut prev = None;
        let r = self.w.db.insert_from_next(&k, k.len() - 16, &mut |next| {
            prev = match next {
                Some((next_k, next_v)) => latest_from_next(&k, next_k, next_v)?,
                None => None,
            };
            Ok(record_for(&prev))
        });
        let r = match r {
            Ok(true) => Ok(()),
            Ok(false) => match self.latest(key) {
                Ok(p) => {
                    prev = p;
                    self.w.db.insert(&k, &record_for(&prev))
                }
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        };
        if let Err(e) = r {
            self.record(Err(e));
            return None;
        }
        let r = self.w.db.insert(&rev_key(rev, sub), key);
        self.record(r);
        let (create, version) = create_version(&prev);
        self.events.push(Event {
            kind: EventKind::Put,
            kv: KeyValue {
                key: key.to_vec(),
                create_revision: create,
                mod_revision: rev,
                version,
                value: value.to_vec(),
                lease,
            },
            prev_kv: prev.clone(),
        });
        prev
    }

    /// Deletes every live key in `[key, range_end)` (etcd's rules). Returns the deleted kvs.
    pub fn delete_range(&mut self, key: &[u8], range_end: &[u8]) -> Vec<KeyValue> {
        let o = RangeOptions {
            key: key.to_vec(),
            range_end: range_end.to_vec(),
            ..RangeOptions::default()
        };
        let found = match range_in(&self.w.db, self.rev_for_reads(), 0, &o) {
            Ok(r) => r.kvs,
            Err(MvccError::Store(e)) => {
                self.record(Err(e));
                return Vec::new();
            }
            Err(e) => unreachable!("range at the current revision failed: {e}"),
        };
        let rev = self.begin_rev + 1;
        for kv in &found {
            let sub = self.events.len() as i64;
            let rec = encode_record(true, 0, 0, 0, &[]);
            let r = self
                .w
                .db
                .insert(&enc_key(&kv.key, rev, sub), &rec)
                .and_then(|_| self.w.db.insert(&rev_key(rev, sub), &kv.key));
            self.record(r);
            self.events.push(Event {
                kind: EventKind::Delete,
                kv: KeyValue {
                    key: kv.key.clone(),
                    mod_revision: rev,
                    ..KeyValue::default()
                },
                prev_kv: Some(kv.clone()),
            });
        }
        found
    }

    fn finish(&mut self) -> i64 {
        if self.ended {
            return self.begin_rev + i64::from(!self.events.is_empty());
        }
        self.ended = true;
        if self.events.is_empty() {
            return self.begin_rev;
        }
        let mut app = self.w.db.app();
        assert_eq!(
            app[APP_REV] as i64, self.begin_rev,
            "revision moved under a txn"
        );
        app[APP_REV] = (self.begin_rev + 1) as u64;
        self.w.db.set_app(app);
        self.begin_rev + 1
    }

    /// Ends the txn: its revision (or the current one if it wrote nothing) and its events.
    pub fn end(mut self) -> TxnOutcome {
        let revision = self.finish();
        TxnOutcome {
            revision,
            events: std::mem::take(&mut self.events),
        }
    }
}

impl Drop for Txn<'_> {
    fn drop(&mut self) {
        self.finish();
    }
}

/// Page size, for callers sizing things in pages.
pub const STORE_PAGE_BYTES: usize = PAGE_SIZE;

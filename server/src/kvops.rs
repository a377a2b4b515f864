//! etcd's KV semantics on top of the MVCC layer: request validation (v3rpc/key.go), Range with
//! etcd 3.4's sort/limit/filter rules, compares, Put/DeleteRange/Txn application
//! (etcdserver/apply.go). Pure functions over a `RangeSource`, shared by serializable reads on
//! every core (a `ReadView`) and the apply loop on the Raft core (a write `Txn`).

use std::collections::{BTreeMap, HashSet};

use ferrite_btree::mvcc::{KeyValue, MvccError, RangeOptions, RangeResult};
use ferrite_net::pb::etcdserverpb::{
    compare, range_request, request_op, response_op, Compare, DeleteRangeRequest,
    DeleteRangeResponse, PutRequest, PutResponse, RangeRequest, RangeResponse, RequestOp,
    ResponseHeader, ResponseOp, TxnRequest, TxnResponse,
};
use ferrite_net::pb::mvccpb;

use crate::errors::EtcdError;

/// Anything ranges can be read from: a committed snapshot or the writer's open txn.
pub trait RangeSource {
    fn range_raw(&mut self, opts: &RangeOptions) -> Result<RangeResult, MvccError>;
    /// The current main revision as seen by this source; for a write txn, its begin revision
    /// plus one once it has written (etcd's `storeTxnWrite` rule).
    fn current_revision(&self) -> i64;
    fn compact_revision(&self) -> i64;
}

pub fn mvcc_err(e: MvccError) -> EtcdError {
    match e {
        MvccError::Compacted => EtcdError::Compacted,
        MvccError::FutureRevision => EtcdError::FutureRev,
        #[allow(unreachable_patterns)]
        other => EtcdError::Internal(format!("etcdserver: {other}")),
    }
}

pub fn to_pb_kv(kv: KeyValue) -> mvccpb::KeyValue {
    mvccpb::KeyValue {
        key: kv.key.into(),
        create_revision: kv.create_revision,
        mod_revision: kv.mod_revision,
        version: kv.version,
        value: kv.value.into(),
        lease: kv.lease,
    }
}

/// etcd's `mkGteRange`: a range end of a single `\0` means "from key on".
fn gte_range(range_end: &[u8]) -> Vec<u8> {
    range_end.to_vec()
}

fn plain_range(key: &[u8], range_end: &[u8]) -> RangeOptions {
    RangeOptions {
        key: key.to_vec(),
        range_end: gte_range(range_end),
        ..Default::default()
    }
}

// ---------------------------------------------------------------------------------------------
// Validation (before proposing), etcd's v3rpc/key.go.

pub fn check_range(r: &RangeRequest) -> Result<(), EtcdError> {
    if r.key.is_empty() {
        return Err(EtcdError::EmptyKey);
    }
    Ok(())
}

pub fn check_put(r: &PutRequest) -> Result<(), EtcdError> {
    if r.key.is_empty() {
        return Err(EtcdError::EmptyKey);
    }
    if r.ignore_value && !r.value.is_empty() {
        return Err(EtcdError::ValueProvided);
    }
    if r.ignore_lease && r.lease != 0 {
        return Err(EtcdError::LeaseProvided);
    }
    Ok(())
}

pub fn check_delete(r: &DeleteRangeRequest) -> Result<(), EtcdError> {
    if r.key.is_empty() {
        return Err(EtcdError::EmptyKey);
    }
    Ok(())
}

pub fn check_txn(r: &TxnRequest, max_txn_ops: usize) -> Result<(), EtcdError> {
    check_txn_ops(r, max_txn_ops)?;
    check_intervals(&r.success)?;
    check_intervals(&r.failure)?;
    Ok(())
}

fn check_txn_ops(r: &TxnRequest, max_txn_ops: usize) -> Result<(), EtcdError> {
    let opc = r.compare.len().max(r.success.len()).max(r.failure.len());
    if opc > max_txn_ops {
        return Err(EtcdError::TooManyOps);
    }
    if r.compare.iter().any(|c| c.key.is_empty()) {
        return Err(EtcdError::EmptyKey);
    }
    for op in r.success.iter().chain(r.failure.iter()) {
        check_request_op(op, max_txn_ops - opc)?;
    }
    Ok(())
}

fn check_request_op(op: &RequestOp, max_txn_ops: usize) -> Result<(), EtcdError> {
    match &op.request {
        Some(request_op::Request::RequestRange(r)) => check_range(r),
        Some(request_op::Request::RequestPut(r)) => check_put(r),
        Some(request_op::Request::RequestDeleteRange(r)) => check_delete(r),
        Some(request_op::Request::RequestTxn(r)) => check_txn_ops(r, max_txn_ops),
        None => Err(EtcdError::KeyNotFound),
    }
}

/// A set of deleted intervals, `[start, end)`; an empty end means a single key.
///
/// etcd 3.4 compares these as plain byte strings (adt's affine intervals treat only an
/// *empty* end as +infinity), so a from-key delete (end `\0`) is an empty interval there and
/// never conflicts with a put in the same branch. We keep that observable behaviour.
#[derive(Default, Clone)]
struct Dels(Vec<(Vec<u8>, Vec<u8>)>);

impl Dels {
    fn contains(&self, k: &[u8]) -> bool {
        self.0.iter().any(|(s, e)| {
            if e.is_empty() {
                s.as_slice() == k
            } else {
                k >= s.as_slice() && k < e.as_slice()
            }
        })
    }
}

/// etcd's `checkIntervals`: within one branch of a txn (including nested txns), no key may be
/// put twice, nor put and deleted. Returns the puts and deletes of the branch.
fn check_intervals(reqs: &[RequestOp]) -> Result<(HashSet<Vec<u8>>, Dels), EtcdError> {
    let mut dels = Dels::default();
    for req in reqs {
        if let Some(request_op::Request::RequestDeleteRange(d)) = &req.request {
            dels.0.push((d.key.to_vec(), d.range_end.to_vec()));
        }
    }
    let mut puts: HashSet<Vec<u8>> = HashSet::new();
    for req in reqs {
        let Some(request_op::Request::RequestTxn(t)) = &req.request else {
            continue;
        };
        let (puts_then, dels_then) = check_intervals(&t.success)?;
        let (puts_else, dels_else) = check_intervals(&t.failure)?;
        for k in &puts_then {
            if puts.contains(k) || dels.contains(k) {
                return Err(EtcdError::DuplicateKey);
            }
            puts.insert(k.clone());
        }
        for k in &puts_else {
            if puts.contains(k) && !puts_then.contains(k) {
                return Err(EtcdError::DuplicateKey);
            }
            if dels.contains(k) {
                return Err(EtcdError::DuplicateKey);
            }
            puts.insert(k.clone());
        }
        dels.0.extend(dels_then.0);
        dels.0.extend(dels_else.0);
    }
    for req in reqs {
        let Some(request_op::Request::RequestPut(p)) = &req.request else {
            continue;
        };
        if puts.contains(p.key.as_ref()) || dels.contains(&p.key) {
            return Err(EtcdError::DuplicateKey);
        }
        puts.insert(p.key.to_vec());
    }
    Ok((puts, dels))
}

pub fn txn_is_read_only(r: &TxnRequest) -> bool {
    r.success
        .iter()
        .chain(r.failure.iter())
        .all(|op| match &op.request {
            Some(request_op::Request::RequestRange(_)) | None => true,
            Some(request_op::Request::RequestTxn(t)) => txn_is_read_only(t),
            _ => false,
        })
}

/// True if the txn, whichever branch runs, may put a key (etcd's quota cost > 0).
pub fn txn_has_put(r: &TxnRequest) -> bool {
    r.success
        .iter()
        .chain(r.failure.iter())
        .any(|op| match &op.request {
            Some(request_op::Request::RequestPut(_)) => true,
            Some(request_op::Request::RequestTxn(t)) => txn_has_put(t),
            _ => false,
        })
}

// ---------------------------------------------------------------------------------------------
// Range, etcd 3.4's applierV3backend.Range.

pub fn range<S: RangeSource + ?Sized>(
    src: &mut S,
    r: &RangeRequest,
) -> Result<RangeResponse, EtcdError> {
    let sort_order =
        range_request::SortOrder::try_from(r.sort_order).unwrap_or(range_request::SortOrder::None);
    let sort_target = range_request::SortTarget::try_from(r.sort_target)
        .unwrap_or(range_request::SortTarget::Key);
    let mut limit = r.limit;
    if sort_order != range_request::SortOrder::None
        || r.min_mod_revision != 0
        || r.max_mod_revision != 0
        || r.min_create_revision != 0
        || r.max_create_revision != 0
    {
        limit = 0;
    }
    if limit > 0 {
        limit += 1;
    }
    let opts = RangeOptions {
        key: r.key.to_vec(),
        range_end: gte_range(&r.range_end),
        revision: r.revision,
        limit,
        count_only: r.count_only,
        // etcd sorts on the real values and only then drops them for keys_only.
        keys_only: r.keys_only && sort_target != range_request::SortTarget::Value,
        ..Default::default()
    };
    let rr = src.range_raw(&opts).map_err(mvcc_err)?;
    let mut kvs = rr.kvs;
    if r.max_mod_revision != 0 {
        kvs.retain(|kv| kv.mod_revision <= r.max_mod_revision);
    }
    if r.min_mod_revision != 0 {
        kvs.retain(|kv| kv.mod_revision >= r.min_mod_revision);
    }
    if r.max_create_revision != 0 {
        kvs.retain(|kv| kv.create_revision <= r.max_create_revision);
    }
    if r.min_create_revision != 0 {
        kvs.retain(|kv| kv.create_revision >= r.min_create_revision);
    }
    let mut order = sort_order;
    if sort_target != range_request::SortTarget::Key && order == range_request::SortOrder::None {
        order = range_request::SortOrder::Ascend;
    }
    if order != range_request::SortOrder::None {
        use range_request::SortTarget as T;
        let cmp = |a: &KeyValue, b: &KeyValue| match sort_target {
            T::Key => a.key.cmp(&b.key),
            T::Version => a.version.cmp(&b.version),
            T::Create => a.create_revision.cmp(&b.create_revision),
            T::Mod => a.mod_revision.cmp(&b.mod_revision),
            T::Value => a.value.cmp(&b.value),
        };
        if order == range_request::SortOrder::Descend {
            kvs.sort_by(|a, b| cmp(b, a));
        } else {
            kvs.sort_by(cmp);
        }
    }
    let mut more = false;
    if r.limit > 0 && kvs.len() > r.limit as usize {
        kvs.truncate(r.limit as usize);
        more = true;
    }
    let kvs = kvs
        .into_iter()
        .map(|mut kv| {
            if r.keys_only {
                kv.value = Vec::new();
            }
            to_pb_kv(kv)
        })
        .collect();
    let revision = src.current_revision();
    Ok(RangeResponse {
        header: Some(ResponseHeader {
            revision,
            ..Default::default()
        }),
        kvs,
        more,
        count: rr.count,
    })
}

// ---------------------------------------------------------------------------------------------
// Compares.

fn compare_one<S: RangeSource + ?Sized>(src: &mut S, c: &Compare) -> bool {
    let rr = match src.range_raw(&plain_range(&c.key, &c.range_end)) {
        Ok(rr) => rr,
        Err(_) => return false,
    };
    let target =
        compare::CompareTarget::try_from(c.target).unwrap_or(compare::CompareTarget::Version);
    if rr.kvs.is_empty() {
        if target == compare::CompareTarget::Value {
            return false;
        }
        return compare_kv(c, target, &KeyValue::default());
    }
    rr.kvs.iter().all(|kv| compare_kv(c, target, kv))
}

fn compare_kv(c: &Compare, target: compare::CompareTarget, kv: &KeyValue) -> bool {
    use compare::{CompareTarget as T, TargetUnion as U};
    let ord = match target {
        T::Value => {
            let v: &[u8] = match &c.target_union {
                Some(U::Value(v)) => v,
                _ => &[],
            };
            kv.value.as_slice().cmp(v)
        }
        T::Create => kv.create_revision.cmp(&match c.target_union {
            Some(U::CreateRevision(r)) => r,
            _ => 0,
        }),
        T::Mod => kv.mod_revision.cmp(&match c.target_union {
            Some(U::ModRevision(r)) => r,
            _ => 0,
        }),
        T::Version => kv.version.cmp(&match c.target_union {
            Some(U::Version(r)) => r,
            _ => 0,
        }),
        T::Lease => kv.lease.cmp(&match c.target_union {
            Some(U::Lease(r)) => r,
            _ => 0,
        }),
    };
    use std::cmp::Ordering::*;
    match compare::CompareResult::try_from(c.result) {
        Ok(compare::CompareResult::Equal) => ord == Equal,
        Ok(compare::CompareResult::NotEqual) => ord != Equal,
        Ok(compare::CompareResult::Greater) => ord == Greater,
        Ok(compare::CompareResult::Less) => ord == Less,
        Err(_) => true,
    }
}

/// etcd's `compareToPath`: the branch taken by the txn and each nested txn, depth first.
fn compare_to_path<S: RangeSource + ?Sized>(src: &mut S, t: &TxnRequest, path: &mut Vec<bool>) {
    let ok = t.compare.iter().all(|c| compare_one(src, c));
    path.push(ok);
    let ops = if ok { &t.success } else { &t.failure };
    for op in ops {
        if let Some(request_op::Request::RequestTxn(nt)) = &op.request {
            compare_to_path(src, nt, path);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Writes (on the Raft core's apply loop).

/// The write side of a txn as the apply loop sees it (implemented over `ferrite_btree`'s
/// `Txn`, with the lessor's attach/detach bookkeeping).
pub trait WriteTxn: RangeSource {
    /// Put; returns the previous kv of the key if any.
    fn put(&mut self, key: &[u8], value: &[u8], lease: i64) -> Option<KeyValue>;
    /// Delete `[key, range_end)` (etcd range-end rules); returns the deleted kvs.
    fn delete_range(&mut self, key: &[u8], range_end: &[u8]) -> Vec<KeyValue>;
    fn lease_exists(&self, id: i64) -> bool;
}

pub fn apply_put<T: WriteTxn + ?Sized>(
    txn: &mut T,
    p: &PutRequest,
) -> Result<PutResponse, EtcdError> {
    // etcd checks a plain Put's lease before its key (a txn's pre-check,
    // `check_put_preconditions`, does the opposite: key first); inside a txn both already
    // passed. The key check is the range below, done once.
    if p.lease != 0 && !txn.lease_exists(p.lease) {
        return Err(EtcdError::LeaseNotFound);
    }
    let (mut value, mut lease) = (p.value.clone(), p.lease);
    if p.ignore_value || p.ignore_lease {
        let rr = txn.range_raw(&plain_range(&p.key, &[])).map_err(mvcc_err)?;
        let prev = rr.kvs.into_iter().next().ok_or(EtcdError::KeyNotFound)?;
        if p.ignore_value {
            value = prev.value.into();
        }
        if p.ignore_lease {
            lease = prev.lease;
        }
    }
    let prev = txn.put(&p.key, &value, lease);
    Ok(PutResponse {
        header: Some(ResponseHeader {
            revision: txn.current_revision(),
            ..Default::default()
        }),
        prev_kv: if p.prev_kv { prev.map(to_pb_kv) } else { None },
    })
}

fn check_put_preconditions<T: WriteTxn + ?Sized>(
    txn: &mut T,
    p: &PutRequest,
) -> Result<(), EtcdError> {
    if p.ignore_value || p.ignore_lease {
        let rr = txn.range_raw(&plain_range(&p.key, &[])).map_err(mvcc_err)?;
        if rr.kvs.is_empty() {
            return Err(EtcdError::KeyNotFound);
        }
    }
    if p.lease != 0 && !txn.lease_exists(p.lease) {
        return Err(EtcdError::LeaseNotFound);
    }
    Ok(())
}

pub fn apply_delete<T: WriteTxn + ?Sized>(
    txn: &mut T,
    d: &DeleteRangeRequest,
) -> DeleteRangeResponse {
    let deleted = txn.delete_range(&d.key, &d.range_end);
    let revision = txn.current_revision();
    DeleteRangeResponse {
        header: Some(ResponseHeader {
            revision,
            ..Default::default()
        }),
        deleted: deleted.len() as i64,
        prev_kvs: if d.prev_kv {
            deleted.into_iter().map(to_pb_kv).collect()
        } else {
            Vec::new()
        },
    }
}

/// etcd's Txn apply: evaluate all compares first (the path), check preconditions of the
/// chosen branches (puts need their lease / previous key; ranges a valid revision), then run
/// the operations in order. Every op of one txn shares one revision.
pub fn apply_txn<T: WriteTxn + ?Sized>(
    txn: &mut T,
    t: &TxnRequest,
) -> Result<TxnResponse, EtcdError> {
    let mut path = Vec::new();
    compare_to_path(txn, t, &mut path);
    // Preconditions over the chosen path, before any write.
    let mut i = 0;
    check_path(txn, t, &path, &mut i)?;
    let mut i = 0;
    let mut resp = run_path(txn, t, &path, &mut i)?;
    let revision = txn.current_revision();
    resp.header = Some(ResponseHeader {
        revision,
        ..Default::default()
    });
    Ok(resp)
}

fn check_path<T: WriteTxn + ?Sized>(
    txn: &mut T,
    t: &TxnRequest,
    path: &[bool],
    i: &mut usize,
) -> Result<(), EtcdError> {
    let ok = path[*i];
    *i += 1;
    let ops = if ok { &t.success } else { &t.failure };
    for op in ops {
        match &op.request {
            Some(request_op::Request::RequestPut(p)) => check_put_preconditions(txn, p)?,
            Some(request_op::Request::RequestRange(r)) if r.revision > 0 => {
                if r.revision > txn.current_revision() {
                    return Err(EtcdError::FutureRev);
                }
                if r.revision < txn.compact_revision() {
                    return Err(EtcdError::Compacted);
                }
            }
            Some(request_op::Request::RequestTxn(nt)) => check_path(txn, nt, path, i)?,
            _ => {}
        }
    }
    Ok(())
}

fn run_path<T: WriteTxn + ?Sized>(
    txn: &mut T,
    t: &TxnRequest,
    path: &[bool],
    i: &mut usize,
) -> Result<TxnResponse, EtcdError> {
    let ok = path[*i];
    *i += 1;
    let ops = if ok { &t.success } else { &t.failure };
    let mut responses = Vec::with_capacity(ops.len());
    for op in ops {
        let r = match &op.request {
            Some(request_op::Request::RequestRange(r)) => {
                Some(response_op::Response::ResponseRange(range(txn, r)?))
            }
            Some(request_op::Request::RequestPut(p)) => {
                Some(response_op::Response::ResponsePut(apply_put(txn, p)?))
            }
            Some(request_op::Request::RequestDeleteRange(d)) => Some(
                response_op::Response::ResponseDeleteRange(apply_delete(txn, d)),
            ),
            Some(request_op::Request::RequestTxn(nt)) => {
                // etcd leaves nested txn headers empty.
                let mut nr = run_path(txn, nt, path, i)?;
                nr.header = Some(ResponseHeader::default());
                Some(response_op::Response::ResponseTxn(nr))
            }
            None => None,
        };
        responses.push(ResponseOp { response: r });
    }
    Ok(TxnResponse {
        header: None,
        succeeded: ok,
        responses,
    })
}

/// Keys each lease holds, derived from a kv scan (used to rebuild the lessor on restart).
pub fn leases_of(kvs: &[KeyValue]) -> BTreeMap<i64, Vec<Vec<u8>>> {
    let mut m: BTreeMap<i64, Vec<Vec<u8>>> = BTreeMap::new();
    for kv in kvs {
        if kv.lease != 0 {
            m.entry(kv.lease).or_default().push(kv.key.clone());
        }
    }
    m
}

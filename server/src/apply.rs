//! Applying committed requests to the MVCC store on the Raft core (etcd's applierV3backend).
//! Deterministic: the same entries applied to the same state give the same state, which is what
//! makes WAL replay after `applied_index` on restart correct.

use std::time::Instant;

use ferrite_btree::{Event, MvccError, RangeOptions, RangeResult, Txn, Writer};
use ferrite_net::pb::etcdserverpb::{
    alarm_request, AlarmMember, AlarmRequest, AlarmResponse, AlarmType, CompactionRequest,
    CompactionResponse, LeaseGrantRequest, LeaseGrantResponse, LeaseRevokeRequest,
    LeaseRevokeResponse, ResponseHeader,
};

use crate::errors::EtcdError;
use crate::internal::Op;
use crate::kvops::{self, RangeSource, WriteTxn};
use crate::lessor::Lessor;
use crate::state::ApplyResult;

/// One MVCC txn (one etcd revision) with the lessor's bookkeeping.
pub struct ApplyTxn<'w, 'l> {
    txn: Txn<'w>,
    begin_rev: i64,
    compact_rev: i64,
    wrote: bool,
    lessor: &'l mut Lessor,
}

impl RangeSource for ApplyTxn<'_, '_> {
    fn range_raw(&mut self, opts: &RangeOptions) -> Result<RangeResult, MvccError> {
        self.txn.range(opts)
    }
    fn current_revision(&self) -> i64 {
        self.begin_rev + i64::from(self.wrote)
    }
    fn compact_revision(&self) -> i64 {
        self.compact_rev
    }
}

impl WriteTxn for ApplyTxn<'_, '_> {
    fn put(&mut self, key: &[u8], value: &[u8], lease: i64) -> Option<ferrite_btree::KeyValue> {
        let prev = self.txn.put(key, value, lease);
        self.wrote = true;
        if let Some(p) = &prev {
            if p.lease != 0 && p.lease != lease {
                self.lessor.detach(p.lease, key);
            }
        }
        if lease != 0 {
            self.lessor.attach(lease, key);
        }
        prev
    }
    fn delete_range(&mut self, key: &[u8], range_end: &[u8]) -> Vec<ferrite_btree::KeyValue> {
        let deleted = self.txn.delete_range(key, range_end);
        if !deleted.is_empty() {
            self.wrote = true;
        }
        for kv in &deleted {
            if kv.lease != 0 {
                self.lessor.detach(kv.lease, &kv.key);
            }
        }
        deleted
    }
    fn lease_exists(&self, id: i64) -> bool {
        self.lessor.exists(id)
    }
}

/// What the apply loop needs besides the writer.
pub struct ApplyCtx<'a> {
    pub lessor: &'a mut Lessor,
    pub compact_rev: i64,
    pub member_id: u64,
    pub alarms: &'a mut Vec<AlarmMember>,
    pub now: Instant,
    /// Set when the lease set changed (the metadata must be rewritten).
    pub leases_dirty: bool,
    pub alarms_dirty: bool,
    /// Revisions to compact once the current batch is committed.
    pub compactions: Vec<i64>,
}

impl ApplyCtx<'_> {
    fn nospace(&self) -> bool {
        self.alarms
            .iter()
            .any(|a| a.alarm == AlarmType::Nospace as i32)
    }
}

fn begin<'w, 'l>(writer: &'w mut Writer, ctx: &'l mut ApplyCtx<'_>) -> ApplyTxn<'w, 'l> {
    let begin_rev = writer.revision();
    ApplyTxn {
        txn: writer.txn(),
        begin_rev,
        compact_rev: ctx.compact_rev,
        wrote: false,
        lessor: ctx.lessor,
    }
}

/// Applies one request. Returns its result and the events it produced.
pub fn apply_op(
    writer: &mut Writer,
    ctx: &mut ApplyCtx<'_>,
    op: &Op,
) -> (Result<ApplyResult, EtcdError>, Vec<Event>) {
    let (res, events) = apply_op_inner(writer, ctx, op);
    if let Ok(r) = &res {
        crate::metrics::metrics().record_apply(r, &events);
    }
    (res, events)
}

fn apply_op_inner(
    writer: &mut Writer,
    ctx: &mut ApplyCtx<'_>,
    op: &Op,
) -> (Result<ApplyResult, EtcdError>, Vec<Event>) {
    match op {
        Op::Put(p) => {
            if ctx.nospace() {
                return (Err(EtcdError::NoSpace), Vec::new());
            }
            let mut t = begin(writer, ctx);
            let r = kvops::apply_put(&mut t, p);
            let out = t.txn.end();
            (r.map(ApplyResult::Put), out.events)
        }
        Op::DeleteRange(d) => {
            let mut t = begin(writer, ctx);
            let r = kvops::apply_delete(&mut t, d);
            let out = t.txn.end();
            (Ok(ApplyResult::DeleteRange(r)), out.events)
        }
        Op::Txn(tr) => {
            if ctx.nospace() && kvops::txn_has_put(tr) {
                return (Err(EtcdError::NoSpace), Vec::new());
            }
            let mut t = begin(writer, ctx);
            let r = kvops::apply_txn(&mut t, tr);
            let out = t.txn.end();
            (r.map(ApplyResult::Txn), out.events)
        }
        Op::Compaction(c) => (apply_compaction(writer, ctx, c), Vec::new()),
        Op::LeaseGrant(g) => (apply_lease_grant(writer, ctx, g), Vec::new()),
        Op::LeaseRevoke(r) => apply_lease_revoke(writer, ctx, r),
        Op::Alarm(a) => (Ok(ApplyResult::Alarm(apply_alarm(ctx, a))), Vec::new()),
    }
}

fn apply_compaction(
    writer: &mut Writer,
    ctx: &mut ApplyCtx<'_>,
    c: &CompactionRequest,
) -> Result<ApplyResult, EtcdError> {
    let current = writer.revision();
    let floor = ctx
        .compactions
        .last()
        .copied()
        .unwrap_or(ctx.compact_rev)
        .max(ctx.compact_rev);
    if c.revision <= floor {
        return Err(EtcdError::Compacted);
    }
    if c.revision > current {
        return Err(EtcdError::FutureRev);
    }
    ctx.compactions.push(c.revision);
    Ok(ApplyResult::Compaction(CompactionResponse {
        header: Some(ResponseHeader {
            revision: current,
            ..Default::default()
        }),
    }))
}

fn apply_lease_grant(
    writer: &mut Writer,
    ctx: &mut ApplyCtx<'_>,
    g: &LeaseGrantRequest,
) -> Result<ApplyResult, EtcdError> {
    if ctx.nospace() {
        return Err(EtcdError::NoSpace);
    }
    let ttl = ctx.lessor.grant(g.id, g.ttl, ctx.now)?;
    ctx.leases_dirty = true;
    Ok(ApplyResult::LeaseGrant(LeaseGrantResponse {
        header: Some(ResponseHeader {
            revision: writer.revision(),
            ..Default::default()
        }),
        id: g.id,
        ttl,
        error: String::new(),
    }))
}

fn apply_lease_revoke(
    writer: &mut Writer,
    ctx: &mut ApplyCtx<'_>,
    r: &LeaseRevokeRequest,
) -> (Result<ApplyResult, EtcdError>, Vec<Event>) {
    let keys = match ctx.lessor.keys_of(r.id) {
        Some(k) => k,
        None => return (Err(EtcdError::LeaseNotFound), Vec::new()),
    };
    // Delete every attached key in one revision, then drop the lease.
    let mut t = begin(writer, ctx);
    for k in &keys {
        WriteTxn::delete_range(&mut t, k, &[]);
    }
    let out = t.txn.end();
    let removed = ctx.lessor.revoke(r.id);
    assert!(removed.is_ok(), "lease {} vanished during its revoke", r.id);
    ctx.leases_dirty = true;
    (
        Ok(ApplyResult::LeaseRevoke(LeaseRevokeResponse {
            header: Some(ResponseHeader {
                revision: out.revision,
                ..Default::default()
            }),
        })),
        out.events,
    )
}

fn apply_alarm(ctx: &mut ApplyCtx<'_>, a: &AlarmRequest) -> AlarmResponse {
    let mut resp = AlarmResponse::default();
    match alarm_request::AlarmAction::try_from(a.action) {
        Ok(alarm_request::AlarmAction::Get) => {
            resp.alarms = ctx
                .alarms
                .iter()
                .filter(|m| a.alarm == AlarmType::None as i32 || m.alarm == a.alarm)
                .cloned()
                .collect();
        }
        Ok(alarm_request::AlarmAction::Activate) => {
            if a.alarm == AlarmType::None as i32 {
                return resp;
            }
            let m = AlarmMember {
                member_id: a.member_id,
                alarm: a.alarm,
            };
            if !ctx.alarms.contains(&m) {
                ctx.alarms.push(m);
                ctx.alarms_dirty = true;
            }
            resp.alarms.push(m);
        }
        Ok(alarm_request::AlarmAction::Deactivate) => {
            let m = AlarmMember {
                member_id: a.member_id,
                alarm: a.alarm,
            };
            if let Some(pos) = ctx.alarms.iter().position(|x| *x == m) {
                ctx.alarms.remove(pos);
                ctx.alarms_dirty = true;
                resp.alarms.push(m);
            }
        }
        Err(_) => {}
    }
    let _ = ctx.member_id;
    resp
}

/// Encodes alarms for the metadata: 12 bytes each (member id u64 LE, alarm i32 LE).
pub fn encode_alarms(alarms: &[AlarmMember]) -> Vec<u8> {
    let mut out = Vec::with_capacity(alarms.len() * 12);
    for a in alarms {
        out.extend_from_slice(&a.member_id.to_le_bytes());
        out.extend_from_slice(&a.alarm.to_le_bytes());
    }
    out
}

pub fn decode_alarms(b: &[u8]) -> Result<Vec<AlarmMember>, String> {
    if !b.len().is_multiple_of(12) {
        return Err(format!(
            "alarm metadata of {} bytes is not a multiple of 12",
            b.len()
        ));
    }
    Ok(b.chunks_exact(12)
        .map(|c| AlarmMember {
            member_id: u64::from_le_bytes(c[..8].try_into().expect("8 bytes")),
            alarm: i32::from_le_bytes(c[8..].try_into().expect("4 bytes")),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::ViewSource;
    use ferrite_btree::{MvccStore, StoreOptions};
    use ferrite_net::pb::etcdserverpb::{
        compare, range_request, request_op, response_op, Compare, PutRequest, RangeRequest,
        RequestOp, TxnRequest,
    };

    fn put_op(k: &str, v: &str) -> Op {
        Op::Put(PutRequest {
            key: k.as_bytes().to_vec().into(),
            value: v.as_bytes().to_vec().into(),
            ..Default::default()
        })
    }

    fn apply_all(
        store: &MvccStore,
        lessor: &mut Lessor,
        ops: &[Op],
    ) -> Vec<Result<ApplyResult, EtcdError>> {
        let mut w = store.writer();
        let mut alarms = Vec::new();
        let mut ctx = ApplyCtx {
            lessor,
            compact_rev: 0,
            member_id: 1,
            alarms: &mut alarms,
            now: Instant::now(),
            leases_dirty: false,
            alarms_dirty: false,
            compactions: Vec::new(),
        };
        let out = ops
            .iter()
            .map(|op| apply_op(&mut w, &mut ctx, op).0)
            .collect();
        w.commit(false).unwrap();
        out
    }

    /// Range sort/limit follow etcd 3.4 (sort then limit, `more`, count before limit), and a
    /// txn's compares, nested txn and revisions follow applierV3backend.Txn.
    #[test]
    fn range_sort_limit_and_txn_on_a_real_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = MvccStore::open(&dir.path().join("db"), StoreOptions::default()).unwrap();
        let mut lessor = Lessor::new(2);
        let r = apply_all(
            &store,
            &mut lessor,
            &[put_op("a", "3"), put_op("b", "1"), put_op("c", "2")],
        );
        assert!(r.iter().all(|x| x.is_ok()));
        let mut src = ViewSource(store.read());
        let resp = kvops::range(
            &mut src,
            &RangeRequest {
                key: "a".into(),
                range_end: "z".into(),
                limit: 2,
                sort_order: range_request::SortOrder::Descend as i32,
                sort_target: range_request::SortTarget::Value as i32,
                ..Default::default()
            },
        )
        .unwrap();
        let keys: Vec<&[u8]> = resp.kvs.iter().map(|kv| kv.key.as_ref()).collect();
        assert_eq!(keys, vec![b"a".as_ref(), b"c".as_ref()]);
        assert!(resp.more);
        assert_eq!(resp.count, 3);

        // Txn: compare value("a") == "3" → success branch: put a, nested txn that fails.
        let txn = TxnRequest {
            compare: vec![Compare {
                result: compare::CompareResult::Equal as i32,
                target: compare::CompareTarget::Value as i32,
                key: "a".into(),
                target_union: Some(compare::TargetUnion::Value("3".into())),
                ..Default::default()
            }],
            success: vec![
                RequestOp {
                    request: Some(request_op::Request::RequestPut(PutRequest {
                        key: "a".into(),
                        value: "4".into(),
                        prev_kv: true,
                        ..Default::default()
                    })),
                },
                RequestOp {
                    request: Some(request_op::Request::RequestTxn(TxnRequest {
                        compare: vec![Compare {
                            result: compare::CompareResult::Greater as i32,
                            target: compare::CompareTarget::Version as i32,
                            key: "zz".into(),
                            target_union: Some(compare::TargetUnion::Version(0)),
                            ..Default::default()
                        }],
                        failure: vec![RequestOp {
                            request: Some(request_op::Request::RequestRange(RangeRequest {
                                key: "a".into(),
                                ..Default::default()
                            })),
                        }],
                        ..Default::default()
                    })),
                },
            ],
            ..Default::default()
        };
        kvops::check_txn(&txn, 128).unwrap();
        let before = store.read().revision();
        let r = apply_all(&store, &mut lessor, &[Op::Txn(txn)]);
        let Ok(ApplyResult::Txn(t)) = &r[0] else {
            panic!("txn failed: {r:?}")
        };
        assert!(t.succeeded);
        assert_eq!(t.header.unwrap().revision, before + 1);
        let Some(response_op::Response::ResponsePut(p)) = &t.responses[0].response else {
            panic!()
        };
        assert_eq!(p.prev_kv.as_ref().unwrap().value.as_ref(), b"3");
        let Some(response_op::Response::ResponseTxn(nested)) = &t.responses[1].response else {
            panic!()
        };
        assert!(!nested.succeeded);
        let Some(response_op::Response::ResponseRange(rr)) = &nested.responses[0].response else {
            panic!()
        };
        // The nested range sees the outer txn's put.
        assert_eq!(rr.kvs[0].value.as_ref(), b"4");
    }

    #[test]
    fn duplicate_keys_and_missing_leases_are_refused() {
        let put = |k: &str| RequestOp {
            request: Some(request_op::Request::RequestPut(PutRequest {
                key: k.as_bytes().to_vec().into(),
                ..Default::default()
            })),
        };
        let t = TxnRequest {
            success: vec![put("a"), put("a")],
            ..Default::default()
        };
        assert_eq!(kvops::check_txn(&t, 128), Err(EtcdError::DuplicateKey));
        let t = TxnRequest {
            success: vec![put("a")],
            failure: vec![put("a")],
            ..Default::default()
        };
        assert_eq!(kvops::check_txn(&t, 128), Ok(()));
        let many = TxnRequest {
            success: (0..129).map(|i| put(&format!("k{i}"))).collect(),
            ..Default::default()
        };
        assert_eq!(kvops::check_txn(&many, 128), Err(EtcdError::TooManyOps));

        let dir = tempfile::tempdir().unwrap();
        let store = MvccStore::open(&dir.path().join("db"), StoreOptions::default()).unwrap();
        let mut lessor = Lessor::new(2);
        let r = apply_all(
            &store,
            &mut lessor,
            &[Op::Put(PutRequest {
                key: "k".into(),
                lease: 77,
                ..Default::default()
            })],
        );
        assert_eq!(r[0].as_ref().unwrap_err(), &EtcdError::LeaseNotFound);
        assert_eq!(
            store.read().revision(),
            ferrite_btree::mvcc::FIRST_REVISION,
            "a refused put writes nothing"
        );
    }
}

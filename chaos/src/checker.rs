//! Checks a recorded [`History`] against etcd's semantics.
//!
//! 1. **Per-key linearizability** (Wing & Gong / Lowe, as in Porcupine): the operations on each
//!    register key (puts, deletes, compare-and-set txns, linearizable single-key and prefix reads
//!    projected on the key) must have a linearization consistent with a register whose state is
//!    (value, mod_revision). Operations with an unknown outcome complete at +infinity, so they may
//!    take effect at any time after their invocation, or never. The search is bounded
//!    ([`Limits`]): when the bound is hit the key is reported *unknown*, never ok.
//! 2. **Revisions**: acknowledged writes have distinct revisions; revision order respects real
//!    time (a write invoked after another completed has a larger revision; a linearizable read
//!    invoked after a write completed has a header revision at least the write's).
//! 3. **Snapshot reads**: every read (also serializable) at header revision R returning key k at
//!    mod_revision m: m ≤ R, the value was written by the operation acknowledged at m (or by an
//!    indeterminate one), and no acknowledged write of k has a revision in (m, R].
//! 4. **Leases**: keep-alive of an acknowledged, unrevoked lease succeeds; keys of leases whose
//!    revoke was acknowledged are gone from the final read, keys of never-revoked leases remain.
//! 5. **Watches**: the full history (read back at the end) holds every acknowledged write at its
//!    revision, every revision 2..=final once, no value twice, nothing nobody wrote; every watch
//!    segment is exactly the full history from its start revision (a prefix of it), segments of one
//!    watcher leave no gap, and watchers that finished reached the final revision.

use crate::history::{Call, Cond, Event, EventKind, History, Kv, Op, Ret, NEVER_NS};
use std::collections::{BTreeMap, HashMap, HashSet};

/// Client id of the end-of-run read of everything (checked for leases and lost writes).
pub const FINAL_CLIENT: u32 = u32::MAX;

/// Bounds of the per-key linearizability search.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Search steps per key before giving up ("unknown").
    pub steps_max: u64,
    /// Memoised (linearized set, state) pairs per key before giving up ("unknown").
    pub cache_entries_max: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            steps_max: 5_000_000,
            cache_entries_max: 1_000_000,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Ok,
    /// A bound was hit somewhere and nothing was violated: not proven either way.
    Unknown,
    Violation,
}

#[derive(Clone, Debug, Default)]
pub struct CheckReport {
    pub violations: Vec<String>,
    pub unknown: Vec<String>,
    pub keys_checked: usize,
    pub ops_checked: usize,
    pub search_steps: u64,
}

impl CheckReport {
    pub fn verdict(&self) -> Verdict {
        if !self.violations.is_empty() {
            Verdict::Violation
        } else if !self.unknown.is_empty() {
            Verdict::Unknown
        } else {
            Verdict::Ok
        }
    }

    pub fn summary(&self) -> String {
        let mut s = format!(
            "{:?}: {} ops on {} keys, {} search steps",
            self.verdict(),
            self.ops_checked,
            self.keys_checked,
            self.search_steps
        );
        for v in self.violations.iter().take(20) {
            s.push_str("\n  violation: ");
            s.push_str(v);
        }
        if self.violations.len() > 20 {
            s.push_str(&format!("\n  ... {} more", self.violations.len() - 20));
        }
        for u in &self.unknown {
            s.push_str("\n  unknown: ");
            s.push_str(u);
        }
        s
    }
}

/// Runs every check. `register_keys` are the keys of the per-key linearizability check (the
/// workload's plain keys); every other key is checked by the revision, snapshot, lease and watch
/// checks only.
pub fn check(h: &History, register_keys: &[String], limits: Limits) -> CheckReport {
    let mut r = CheckReport {
        ops_checked: h.ops.len(),
        ..CheckReport::default()
    };
    for key in register_keys {
        r.keys_checked += 1;
        match check_key(h, key, limits) {
            KeyResult::Ok { steps } => r.search_steps += steps,
            KeyResult::Violation(v) => r.violations.push(v),
            KeyResult::Unknown(u) => r.unknown.push(u),
        }
    }
    check_revisions(h, &mut r.violations);
    check_snapshots(h, register_keys, &mut r.violations);
    check_leases(h, &mut r.violations);
    if h.final_rev > 0 {
        check_watches(h, &mut r.violations);
    }
    r
}

fn describe(h: &History, i: usize) -> String {
    let o = &h.ops[i];
    let done = if o.complete_ns == NEVER_NS {
        "never".to_string()
    } else {
        format!("{:.3}s", o.complete_ns as f64 / 1e9)
    };
    format!(
        "op #{i} client {} via {} [{:.3}s..{done}] {:?} -> {:?}",
        o.client,
        o.endpoint,
        o.invoke_ns as f64 / 1e9,
        o.call,
        o.ret
    )
}

// ---------------------------------------------------------------------------------------------
// 1. Per-key linearizability.

#[derive(Clone, Copy, Debug)]
enum KCond {
    ModRev(i64),
    Value(u32),
}

#[derive(Clone, Copy, Debug)]
enum CasRes {
    Unknown,
    Applied(i64),
    NotApplied { rev: i64, seen: Option<(u32, i64)> },
}

#[derive(Clone, Copy, Debug)]
enum KOp {
    Put {
        v: u32,
        rev: Option<i64>,
    },
    Del {
        rev: Option<i64>,
        deleted: Option<bool>,
    },
    Cas {
        cond: KCond,
        v: u32,
        res: CasRes,
    },
    Read {
        rev: i64,
        seen: Option<(u32, i64)>,
    },
}

/// The register: value (interned), mod_revision (None: written by an operation whose revision is
/// unknown, larger than `floor`), and `floor`, the largest revision known to have touched the key.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct KState {
    value: Option<u32>,
    mod_rev: Option<i64>,
    floor: i64,
}

impl KState {
    fn absent(floor: i64) -> KState {
        KState {
            value: None,
            mod_rev: Some(0),
            floor,
        }
    }

    fn written(v: u32, rev: Option<i64>, floor: i64) -> KState {
        KState {
            value: Some(v),
            mod_rev: rev,
            floor,
        }
    }

    /// The state refined by a read that saw `seen`, or None when it cannot have.
    fn observe(&self, seen: Option<(u32, i64)>) -> Option<KState> {
        match seen {
            None => self.value.is_none().then(|| self.clone()),
            Some((v, m)) => {
                let rev_ok = match self.mod_rev {
                    Some(r) => r == m,
                    None => m > self.floor,
                };
                (self.value == Some(v) && rev_ok).then(|| KState {
                    value: Some(v),
                    mod_rev: Some(m),
                    floor: self.floor.max(m),
                })
            }
        }
    }

    /// Whether `cond` holds; None when it depends on an unknown revision.
    fn holds(&self, cond: KCond) -> Option<bool> {
        match cond {
            KCond::Value(x) => Some(self.value == Some(x)),
            KCond::ModRev(m) => {
                if self.value.is_none() {
                    Some(m == 0)
                } else {
                    match self.mod_rev {
                        Some(r) => Some(r == m),
                        None if m > self.floor => None,
                        None => Some(false),
                    }
                }
            }
        }
    }

    /// Every state the register can be in after `op` took effect on `self` (empty: impossible).
    fn step(&self, op: &KOp) -> Vec<KState> {
        match *op {
            KOp::Put { v, rev: Some(r) } => {
                if r > self.floor {
                    vec![KState::written(v, Some(r), r)]
                } else {
                    vec![]
                }
            }
            KOp::Put { v, rev: None } => vec![KState::written(v, None, self.floor)],
            KOp::Del {
                rev: Some(r),
                deleted: Some(true),
            } => {
                if self.value.is_some() && r > self.floor {
                    vec![KState::absent(r)]
                } else {
                    vec![]
                }
            }
            KOp::Del {
                rev: Some(r),
                deleted: _,
            } => {
                if self.value.is_none() && r >= self.floor {
                    vec![self.clone()]
                } else {
                    vec![]
                }
            }
            KOp::Del { rev: None, .. } => {
                if self.value.is_none() {
                    vec![self.clone()]
                } else {
                    vec![KState::absent(self.floor)]
                }
            }
            KOp::Cas { cond, v, res } => match res {
                CasRes::Applied(r) => {
                    if self.holds(cond) != Some(false) && r > self.floor {
                        vec![KState::written(v, Some(r), r)]
                    } else {
                        vec![]
                    }
                }
                CasRes::NotApplied { rev, seen } => match self.observe(seen) {
                    Some(s2) if s2.holds(cond) == Some(false) && rev >= s2.floor => vec![s2],
                    _ => vec![],
                },
                CasRes::Unknown => match self.holds(cond) {
                    Some(true) => vec![KState::written(v, None, self.floor)],
                    Some(false) => vec![self.clone()],
                    None => vec![KState::written(v, None, self.floor), self.clone()],
                },
            },
            KOp::Read { rev, seen } => match self.observe(seen) {
                Some(s2) if rev >= s2.floor => vec![s2],
                _ => vec![],
            },
        }
    }
}

struct Interner(HashMap<String, u32>);

impl Interner {
    fn id(&mut self, s: &str) -> u32 {
        let n = self.0.len() as u32;
        *self.0.entry(s.to_string()).or_insert(n)
    }
    fn seen(&mut self, kv: Option<&Kv>) -> Option<(u32, i64)> {
        kv.map(|kv| (self.id(&kv.value), kv.mod_rev))
    }
}

/// The operations of `h` as operations on register `key`: (index in h.ops, op).
fn project(h: &History, key: &str) -> Vec<(usize, KOp)> {
    let mut values = Interner(HashMap::new());
    let mut out = Vec::new();
    for (i, o) in h.ops.iter().enumerate() {
        let kop = match (&o.call, &o.ret) {
            (_, Ret::Fail { .. }) => None,
            (Call::Put { key: k, value, .. }, ret) if k == key => {
                let v = values.id(value);
                match ret {
                    Ret::Put { rev } => Some(KOp::Put { v, rev: Some(*rev) }),
                    _ => Some(KOp::Put { v, rev: None }),
                }
            }
            (Call::Delete { key: k }, ret) if k == key => match ret {
                Ret::Delete { rev, deleted } => Some(KOp::Del {
                    rev: Some(*rev),
                    deleted: Some(*deleted > 0),
                }),
                _ => Some(KOp::Del {
                    rev: None,
                    deleted: None,
                }),
            },
            (
                Call::Cas {
                    key: k,
                    cond,
                    value,
                },
                ret,
            ) if k == key => {
                let v = values.id(value);
                let cond = match cond {
                    Cond::ModRev(m) => KCond::ModRev(*m),
                    Cond::Value(x) => KCond::Value(values.id(x)),
                };
                let res = match ret {
                    Ret::Cas {
                        succeeded: true,
                        rev,
                        ..
                    } => CasRes::Applied(*rev),
                    Ret::Cas {
                        succeeded: false,
                        rev,
                        current,
                    } => CasRes::NotApplied {
                        rev: *rev,
                        seen: values.seen(current.as_ref()),
                    },
                    _ => CasRes::Unknown,
                };
                Some(KOp::Cas { cond, v, res })
            }
            (
                Call::Get {
                    key: k,
                    prefix,
                    serializable: false,
                },
                Ret::Get { rev, kvs },
            ) => {
                let covers = match k {
                    Some(k) => k == key,
                    None => key.starts_with(prefix.as_str()),
                };
                covers.then(|| KOp::Read {
                    rev: *rev,
                    seen: values.seen(kvs.iter().find(|kv| kv.key == key)),
                })
            }
            _ => None,
        };
        if let Some(k) = kop {
            out.push((i, k));
        }
    }
    out
}

enum KeyResult {
    Ok { steps: u64 },
    Violation(String),
    Unknown(String),
}

const NIL: usize = usize::MAX;

fn check_key(h: &History, key: &str, limits: Limits) -> KeyResult {
    let ops = project(h, key);
    let n = ops.len();
    if n == 0 {
        return KeyResult::Ok { steps: 0 };
    }
    // Entries: 2i = call of op i, 2i+1 = return of op i; the list is ordered by time with calls
    // before returns at equal times (the permissive choice).
    let mut order: Vec<usize> = (0..2 * n).collect();
    let time = |e: usize| {
        let o = &h.ops[ops[e / 2].0];
        if e.is_multiple_of(2) {
            (o.invoke_ns, 0u8)
        } else {
            (o.complete_ns, 1u8)
        }
    };
    order.sort_by_key(|&e| (time(e), e));
    let head = 2 * n;
    let mut next = vec![NIL; 2 * n + 1];
    let mut prev = vec![NIL; 2 * n + 1];
    let mut last = head;
    for &e in &order {
        next[last] = e;
        prev[e] = last;
        last = e;
    }
    let unlink = |next: &mut Vec<usize>, prev: &mut Vec<usize>, x: usize| {
        let (p, nx) = (prev[x], next[x]);
        next[p] = nx;
        if nx != NIL {
            prev[nx] = p;
        }
    };
    let relink = |next: &mut Vec<usize>, prev: &mut Vec<usize>, x: usize| {
        let (p, nx) = (prev[x], next[x]);
        next[p] = x;
        if nx != NIL {
            prev[nx] = x;
        }
    };

    let words = n.div_ceil(64);
    let mut linearized = vec![0u64; words];
    let mut state = KState::absent(0);
    let mut stack: Vec<(usize, KState)> = Vec::new();
    let mut cache: HashSet<(Vec<u64>, KState)> = HashSet::new();
    let mut steps = 0u64;
    let mut deepest = (0usize, NIL);
    let mut entry = next[head];
    while next[head] != NIL {
        steps += 1;
        if steps > limits.steps_max || cache.len() > limits.cache_entries_max {
            return KeyResult::Unknown(format!(
                "key {key}: search bound hit after {steps} steps, {} cached states ({n} ops)",
                cache.len()
            ));
        }
        assert!(entry != NIL, "walked off the history list");
        let i = entry / 2;
        if entry.is_multiple_of(2) {
            let mut moved = false;
            for s2 in state.step(&ops[i].1) {
                linearized[i / 64] |= 1 << (i % 64);
                if cache.insert((linearized.clone(), s2.clone())) {
                    stack.push((entry, std::mem::replace(&mut state, s2)));
                    unlink(&mut next, &mut prev, entry);
                    unlink(&mut next, &mut prev, entry + 1);
                    entry = next[head];
                    moved = true;
                    break;
                }
                linearized[i / 64] &= !(1 << (i % 64));
            }
            if !moved {
                entry = next[entry];
            }
        } else {
            if stack.len() >= deepest.0 {
                deepest = (stack.len(), ops[i].0);
            }
            let Some((call, s)) = stack.pop() else {
                return KeyResult::Violation(format!(
                    "key {key}: not linearizable ({n} ops; longest linearizable prefix {} ops, then \
                     no order explains {})",
                    deepest.0,
                    describe(h, deepest.1)
                ));
            };
            state = s;
            let j = call / 2;
            linearized[j / 64] &= !(1 << (j % 64));
            relink(&mut next, &mut prev, call + 1);
            relink(&mut next, &mut prev, call);
            entry = call;
        }
    }
    KeyResult::Ok { steps }
}

// ---------------------------------------------------------------------------------------------
// 2. Revisions.

/// The revision an acknowledged write created, if it created one.
fn write_rev(o: &Op) -> Option<i64> {
    match (&o.call, &o.ret) {
        (Call::Put { .. }, Ret::Put { rev }) => Some(*rev),
        (Call::Delete { .. }, Ret::Delete { rev, deleted }) if *deleted > 0 => Some(*rev),
        (
            Call::Cas { .. },
            Ret::Cas {
                succeeded: true,
                rev,
                ..
            },
        ) => Some(*rev),
        _ => None,
    }
}

/// The header revision of an acknowledged linearizable operation that wrote nothing.
fn read_rev(o: &Op) -> Option<i64> {
    match (&o.call, &o.ret) {
        (
            Call::Get {
                serializable: false,
                ..
            },
            Ret::Get { rev, .. },
        ) => Some(*rev),
        (Call::Delete { .. }, Ret::Delete { rev, deleted: 0 }) => Some(*rev),
        (
            Call::Cas { .. },
            Ret::Cas {
                succeeded: false,
                rev,
                ..
            },
        ) => Some(*rev),
        _ => None,
    }
}

fn check_revisions(h: &History, out: &mut Vec<String>) {
    let mut by_rev: HashMap<i64, usize> = HashMap::new();
    for (i, o) in h.ops.iter().enumerate() {
        if let Some(r) = write_rev(o) {
            if let Some(j) = by_rev.insert(r, i) {
                out.push(format!(
                    "revision {r} acknowledged twice: {} and {}",
                    describe(h, j),
                    describe(h, i)
                ));
            }
        }
    }
    // (index, rev, is_write) of every acknowledged item, swept in invoke order against the
    // maximum revision of the items completed before.
    let items: Vec<(usize, i64, bool)> = h
        .ops
        .iter()
        .enumerate()
        .filter_map(|(i, o)| {
            write_rev(o)
                .map(|r| (i, r, true))
                .or_else(|| read_rev(o).map(|r| (i, r, false)))
        })
        .collect();
    let mut by_complete = items.clone();
    by_complete.sort_by_key(|&(i, _, _)| h.ops[i].complete_ns);
    let mut by_invoke = items;
    by_invoke.sort_by_key(|&(i, _, _)| h.ops[i].invoke_ns);
    let mut done = 0;
    let mut max_before: Option<(i64, usize)> = None;
    for &(i, rev, is_write) in &by_invoke {
        let invoke = h.ops[i].invoke_ns;
        while done < by_complete.len() && h.ops[by_complete[done].0].complete_ns < invoke {
            let (j, r, _) = by_complete[done];
            if max_before.is_none_or(|(m, _)| r > m) {
                max_before = Some((r, j));
            }
            done += 1;
        }
        if let Some((m, j)) = max_before {
            let bad = if is_write { rev <= m } else { rev < m };
            if bad {
                out.push(format!(
                    "revision order contradicts real time: {} was invoked after {} completed",
                    describe(h, i),
                    describe(h, j)
                ));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 3. Snapshot reads.

fn check_snapshots(h: &History, register_keys: &[String], out: &mut Vec<String>) {
    // Per key: acknowledged writes by revision (Some(value) = put, None = delete).
    let mut acked: HashMap<&str, BTreeMap<i64, Option<&str>>> = HashMap::new();
    // (key, value) -> the ops that wrote it.
    let mut writers: HashMap<(&str, &str), Vec<usize>> = HashMap::new();
    let mut unknown_delete: HashSet<&str> = HashSet::new();
    for (i, o) in h.ops.iter().enumerate() {
        match &o.call {
            Call::Put { key, value, .. } | Call::Cas { key, value, .. } => {
                writers.entry((key, value)).or_default().push(i);
                if let Some(r) = write_rev(o) {
                    acked.entry(key).or_default().insert(r, Some(value));
                }
            }
            Call::Delete { key } => {
                if let Some(r) = write_rev(o) {
                    acked.entry(key).or_default().insert(r, None);
                }
                if matches!(o.ret, Ret::Unknown { .. }) {
                    unknown_delete.insert(key);
                }
            }
            _ => {}
        }
    }
    let register: HashSet<&str> = register_keys.iter().map(|s| s.as_str()).collect();
    let observe = |i: usize, key: &str, rev: i64, seen: Option<&Kv>, out: &mut Vec<String>| {
        let last = acked
            .get(key)
            .and_then(|m| m.range(..=rev).next_back())
            .map(|(r, v)| (*r, *v));
        match seen {
            Some(kv) => {
                if kv.mod_rev > rev {
                    out.push(format!(
                        "read at revision {rev} returned {key} at mod_revision {}: {}",
                        kv.mod_rev,
                        describe(h, i)
                    ));
                }
                match writers.get(&(key, kv.value.as_str())) {
                    None => out.push(format!(
                        "read returned a value nobody wrote ({key}={}): {}",
                        kv.value,
                        describe(h, i)
                    )),
                    Some(ws) => {
                        for &w in ws {
                            if let Some(r) = write_rev(&h.ops[w]) {
                                if r != kv.mod_rev {
                                    out.push(format!(
                                        "read returned {key}={} at mod_revision {} but it was \
                                         acknowledged at {r}: {}",
                                        kv.value,
                                        kv.mod_rev,
                                        describe(h, i)
                                    ));
                                }
                            }
                        }
                    }
                }
                if let Some((r, _)) = last {
                    if r > kv.mod_rev {
                        out.push(format!(
                            "stale read at revision {rev}: {key} at mod_revision {} misses the \
                             write acknowledged at {r}: {}",
                            kv.mod_rev,
                            describe(h, i)
                        ));
                    }
                }
            }
            None => {
                if let Some((r, Some(v))) = last {
                    if register.contains(key) && !unknown_delete.contains(key) {
                        out.push(format!(
                            "read at revision {rev} found no {key}, but {key}={v} was \
                             acknowledged at {r}: {}",
                            describe(h, i)
                        ));
                    }
                }
            }
        }
    };
    for (i, o) in h.ops.iter().enumerate() {
        match (&o.call, &o.ret) {
            (Call::Get { key, prefix, .. }, Ret::Get { rev, kvs }) => {
                for kv in kvs {
                    observe(i, &kv.key, *rev, Some(kv), out);
                }
                for k in register_keys {
                    let covered = match key {
                        Some(key) => key == k,
                        None => k.starts_with(prefix.as_str()),
                    };
                    if covered && !kvs.iter().any(|kv| &kv.key == k) {
                        observe(i, k, *rev, None, out);
                    }
                }
            }
            (
                Call::Cas { key, .. },
                Ret::Cas {
                    succeeded: false,
                    rev,
                    current,
                },
            ) => observe(i, key, *rev, current.as_ref(), out),
            _ => {}
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 4. Leases.

fn check_leases(h: &History, out: &mut Vec<String>) {
    let mut granted: HashSet<i64> = HashSet::new();
    let mut revokes: HashMap<i64, Vec<usize>> = HashMap::new();
    for (i, o) in h.ops.iter().enumerate() {
        match (&o.call, &o.ret) {
            (_, Ret::LeaseGrant { id, .. }) => {
                granted.insert(*id);
            }
            (Call::LeaseRevoke { id }, _) => revokes.entry(*id).or_default().push(i),
            _ => {}
        }
    }
    let revoke_acked_before = |id: i64, t: u64| {
        revokes.get(&id).is_some_and(|v| {
            v.iter().any(|&r| {
                matches!(h.ops[r].ret, Ret::LeaseRevoke { .. }) && h.ops[r].complete_ns < t
            })
        })
    };
    let revoke_invoked_before = |id: i64, t: u64| {
        revokes
            .get(&id)
            .is_some_and(|v| v.iter().any(|&r| h.ops[r].invoke_ns < t))
    };
    for (i, o) in h.ops.iter().enumerate() {
        if let Call::LeaseKeepAlive { id } = o.call {
            match &o.ret {
                Ret::Fail { error }
                    if granted.contains(&id) && !revoke_invoked_before(id, o.complete_ns) =>
                {
                    out.push(format!(
                        "keep-alive of a live lease failed ({error}): {}",
                        describe(h, i)
                    ))
                }
                Ret::LeaseKeepAlive { .. } if revoke_acked_before(id, o.invoke_ns) => {
                    out.push(format!(
                        "keep-alive of a revoked lease succeeded: {}",
                        describe(h, i)
                    ))
                }
                _ => {}
            }
        }
    }
    // The final read: keys of acknowledged revokes are gone, keys of never-revoked leases remain.
    for (f, fo) in h.ops.iter().enumerate() {
        let (
            FINAL_CLIENT,
            Call::Get {
                key: None, prefix, ..
            },
            Ret::Get { kvs, .. },
        ) = (fo.client, &fo.call, &fo.ret)
        else {
            continue;
        };
        let present: HashSet<&str> = kvs.iter().map(|kv| kv.key.as_str()).collect();
        for (i, o) in h.ops.iter().enumerate() {
            let (Call::Put { key, lease, .. }, Ret::Put { .. }) = (&o.call, &o.ret) else {
                continue;
            };
            if *lease == 0 || !key.starts_with(prefix.as_str()) {
                continue;
            }
            if revoke_acked_before(*lease, fo.invoke_ns) && present.contains(key.as_str()) {
                out.push(format!(
                    "key {key} of a revoked lease still exists in the final read: {}",
                    describe(h, i)
                ));
            }
            if !revokes.contains_key(lease) && !present.contains(key.as_str()) {
                out.push(format!(
                    "key {key} of a never-revoked lease is missing from the final read ({}): {}",
                    describe(h, f),
                    describe(h, i)
                ));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 5. Watches and the full history.

fn check_watches(h: &History, out: &mut Vec<String>) {
    let full = &h.full;
    // Revisions: non-decreasing, every one of 2..=final_rev present, none beyond.
    let mut revs: Vec<i64> = full.iter().map(|e| e.rev).collect();
    if revs.windows(2).any(|w| w[0] > w[1]) {
        out.push("full history: revisions out of order".into());
    }
    revs.dedup();
    let expected: Vec<i64> = (2..=h.final_rev).collect();
    if revs != expected {
        let have: HashSet<i64> = revs.iter().copied().collect();
        let missing: Vec<i64> = expected
            .iter()
            .copied()
            .filter(|r| !have.contains(r))
            .take(10)
            .collect();
        let extra: Vec<i64> = revs
            .iter()
            .copied()
            .filter(|r| *r < 2 || *r > h.final_rev)
            .take(10)
            .collect();
        out.push(format!(
            "full history does not hold each revision 2..={} once: missing {missing:?}, \
             extra {extra:?}",
            h.final_rev
        ));
    }
    // Every acknowledged write at its revision.
    let at: HashMap<(i64, &str), &Event> =
        full.iter().map(|e| ((e.rev, e.key.as_str()), e)).collect();
    let mut writers: HashMap<(&str, &str), usize> = HashMap::new();
    let mut deleters: HashMap<&str, Vec<usize>> = HashMap::new();
    let mut lease_of: HashMap<&str, i64> = HashMap::new();
    let mut revoked: HashSet<i64> = HashSet::new();
    for (i, o) in h.ops.iter().enumerate() {
        match &o.call {
            Call::Put { key, value, lease } => {
                writers.insert((key, value), i);
                if *lease != 0 {
                    lease_of.insert(key, *lease);
                }
            }
            Call::Cas { key, value, .. } => {
                writers.insert((key, value), i);
            }
            Call::Delete { key } => deleters.entry(key).or_default().push(i),
            Call::LeaseRevoke { id } => {
                revoked.insert(*id);
            }
            _ => {}
        }
        let Some(r) = write_rev(o) else { continue };
        let (key, want) = match &o.call {
            Call::Put { key, value, .. } | Call::Cas { key, value, .. } => {
                (key, Some(value.as_str()))
            }
            Call::Delete { key } => (key, None),
            _ => continue,
        };
        let ok = at.get(&(r, key.as_str())).is_some_and(|e| match want {
            Some(v) => e.kind == EventKind::Put && e.value == v,
            None => e.kind == EventKind::Delete,
        });
        if !ok {
            out.push(format!(
                "acknowledged write missing from the full history at revision {r}: {}",
                describe(h, i)
            ));
        }
    }
    // Every event explained by an operation; no value applied twice.
    let mut seen_values: HashSet<(&str, &str)> = HashSet::new();
    for e in full {
        match e.kind {
            EventKind::Put => {
                if !writers.contains_key(&(e.key.as_str(), e.value.as_str())) {
                    out.push(format!("full history holds a put nobody made: {e:?}"));
                }
                if !seen_values.insert((e.key.as_str(), e.value.as_str())) {
                    out.push(format!("full history applies one write twice: {e:?}"));
                }
            }
            EventKind::Delete => {
                let by_delete = deleters.get(e.key.as_str()).is_some_and(|v| {
                    v.iter()
                        .any(|&i| write_rev(&h.ops[i]).is_none_or(|r| r == e.rev))
                });
                let by_revoke = lease_of
                    .get(e.key.as_str())
                    .is_some_and(|l| revoked.contains(l));
                if !by_delete && !by_revoke {
                    out.push(format!("full history holds a delete nobody made: {e:?}"));
                }
            }
        }
    }
    // Watch segments.
    let mut by_watcher: BTreeMap<u32, Vec<&crate::history::WatchSegment>> = BTreeMap::new();
    for s in &h.watches {
        by_watcher.entry(s.watcher).or_default().push(s);
    }
    for (w, segs) in by_watcher {
        let mut reached: Option<i64> = None;
        for s in &segs {
            let from = full.partition_point(|e| e.rev < s.start_rev);
            let want = &full[from..];
            let n = s.events.len();
            if n > want.len() || s.events[..] != want[..n] {
                let pos = (0..n.min(want.len()))
                    .find(|&k| s.events[k] != want[k])
                    .unwrap_or(n.min(want.len()));
                out.push(format!(
                    "watcher {w} (via {}, from revision {}): event {pos} is {:?}, the full \
                     history has {:?}",
                    s.endpoint,
                    s.start_rev,
                    s.events.get(pos),
                    want.get(pos)
                ));
            }
            if let Some(r) = reached {
                if s.start_rev > r + 1 {
                    out.push(format!(
                        "watcher {w}: restarted from revision {} after seeing up to {r} (gap)",
                        s.start_rev
                    ));
                }
            }
            let last = s.events.last().map(|e| e.rev).unwrap_or(s.start_rev - 1);
            reached = Some(reached.map_or(last, |r| r.max(last)));
        }
        if h.watchers_done.contains(&w) {
            let first = segs.first().map(|s| s.start_rev).unwrap_or(0);
            if first <= h.final_rev && reached.is_none_or(|r| r < h.final_rev) {
                out.push(format!(
                    "watcher {w} finished at revision {reached:?}, short of the final revision {}",
                    h.final_rev
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::WatchSegment;

    const K: &str = "c/k/0";

    fn kv(value: &str, rev: i64) -> Kv {
        Kv {
            key: K.into(),
            value: value.into(),
            mod_rev: rev,
            create_rev: rev,
            version: 1,
            lease: 0,
        }
    }

    fn op(client: u32, t: (u64, u64), call: Call, ret: Ret) -> Op {
        let complete = if matches!(ret, Ret::Unknown { .. }) {
            NEVER_NS
        } else {
            t.1
        };
        Op {
            client,
            endpoint: "e".into(),
            invoke_ns: t.0,
            complete_ns: complete,
            call,
            ret,
        }
    }

    fn put(c: u32, t: (u64, u64), v: &str, rev: Option<i64>) -> Op {
        let call = Call::Put {
            key: K.into(),
            value: v.into(),
            lease: 0,
        };
        let ret = match rev {
            Some(rev) => Ret::Put { rev },
            None => Ret::Unknown {
                error: "timeout".into(),
            },
        };
        op(c, t, call, ret)
    }

    fn get(c: u32, t: (u64, u64), rev: i64, seen: Option<Kv>) -> Op {
        op(
            c,
            t,
            Call::Get {
                key: Some(K.into()),
                prefix: K.into(),
                serializable: false,
            },
            Ret::Get {
                rev,
                kvs: seen.into_iter().collect(),
            },
        )
    }

    fn cas(c: u32, t: (u64, u64), m: i64, v: &str, ret: Ret) -> Op {
        op(
            c,
            t,
            Call::Cas {
                key: K.into(),
                cond: Cond::ModRev(m),
                value: v.into(),
            },
            ret,
        )
    }

    fn run(ops: Vec<Op>) -> CheckReport {
        let h = History {
            ops,
            ..History::default()
        };
        check(&h, &[K.to_string()], Limits::default())
    }

    #[test]
    fn sequential_history_is_linearizable() {
        let r = run(vec![
            get(0, (0, 1), 1, None),
            put(0, (2, 3), "a", Some(2)),
            get(1, (4, 5), 2, Some(kv("a", 2))),
            cas(
                1,
                (6, 7),
                2,
                "b",
                Ret::Cas {
                    succeeded: true,
                    rev: 3,
                    current: None,
                },
            ),
            get(0, (8, 9), 3, Some(kv("b", 3))),
        ]);
        assert_eq!(r.verdict(), Verdict::Ok, "{}", r.summary());
    }

    #[test]
    fn concurrent_read_may_see_either_side() {
        for (rev, seen) in [(1, None), (2, Some(kv("a", 2)))] {
            let r = run(vec![
                put(0, (0, 10), "a", Some(2)),
                get(1, (1, 9), rev, seen),
            ]);
            assert_eq!(r.verdict(), Verdict::Ok, "{}", r.summary());
        }
    }

    #[test]
    fn stale_read_after_acknowledged_write_is_a_violation() {
        let r = run(vec![put(0, (0, 1), "a", Some(2)), get(1, (2, 3), 2, None)]);
        assert_eq!(r.verdict(), Verdict::Violation, "{}", r.summary());
        let r = run(vec![put(0, (0, 1), "a", Some(2)), get(1, (2, 3), 1, None)]);
        assert_eq!(r.verdict(), Verdict::Violation, "{}", r.summary());
    }

    #[test]
    fn indeterminate_write_may_apply_late_or_never() {
        // Seen long after the client gave up.
        let r = run(vec![
            put(0, (0, 0), "a", None),
            get(1, (100, 101), 2, None),
            get(1, (200, 201), 2, Some(kv("a", 2))),
        ]);
        assert_eq!(r.verdict(), Verdict::Ok, "{}", r.summary());
        // Never seen.
        let r = run(vec![put(0, (0, 0), "a", None), get(1, (100, 101), 1, None)]);
        assert_eq!(r.verdict(), Verdict::Ok, "{}", r.summary());
    }

    #[test]
    fn indeterminate_writes_cannot_reorder_against_what_reads_saw() {
        // a and b both indeterminate; b is seen at revision 3, then a at revision 2: a's revision
        // is older than b's, so a cannot be the later write.
        let r = run(vec![
            put(0, (0, 0), "a", None),
            put(1, (1, 1), "b", None),
            get(2, (10, 11), 3, Some(kv("b", 3))),
            get(2, (20, 21), 3, Some(kv("a", 2))),
        ]);
        assert_eq!(r.verdict(), Verdict::Violation, "{}", r.summary());
        // A value seen, then gone, with no delete anywhere: not linearizable.
        let r = run(vec![
            put(0, (0, 0), "a", None),
            get(2, (10, 11), 2, Some(kv("a", 2))),
            get(2, (20, 21), 2, None),
        ]);
        assert_eq!(r.verdict(), Verdict::Violation, "{}", r.summary());
    }

    #[test]
    fn lost_update_between_two_cas_is_a_violation() {
        let ok = |rev| Ret::Cas {
            succeeded: true,
            rev,
            current: None,
        };
        let r = run(vec![
            put(0, (0, 1), "a", Some(2)),
            cas(1, (2, 5), 2, "b", ok(3)),
            cas(2, (3, 6), 2, "c", ok(4)),
        ]);
        assert_eq!(r.verdict(), Verdict::Violation, "{}", r.summary());
        // One wins, the other fails seeing the winner: fine.
        let r = run(vec![
            put(0, (0, 1), "a", Some(2)),
            cas(1, (2, 5), 2, "b", ok(3)),
            cas(
                2,
                (3, 6),
                2,
                "c",
                Ret::Cas {
                    succeeded: false,
                    rev: 3,
                    current: Some(kv("b", 3)),
                },
            ),
        ]);
        assert_eq!(r.verdict(), Verdict::Ok, "{}", r.summary());
    }

    #[test]
    fn indeterminate_cas_explains_a_later_value() {
        let r = run(vec![
            put(0, (0, 1), "a", Some(2)),
            cas(1, (2, 3), 2, "b", Ret::Unknown { error: "x".into() }),
            get(2, (10, 11), 3, Some(kv("b", 3))),
        ]);
        assert_eq!(r.verdict(), Verdict::Ok, "{}", r.summary());
        // ...but not when its compare cannot have held.
        let r = run(vec![
            put(0, (0, 1), "a", Some(2)),
            cas(1, (2, 3), 7, "b", Ret::Unknown { error: "x".into() }),
            get(2, (10, 11), 3, Some(kv("b", 3))),
        ]);
        assert_eq!(r.verdict(), Verdict::Violation, "{}", r.summary());
    }

    #[test]
    fn revision_facts() {
        // Two acknowledged writes with one revision.
        let mut o = put(0, (0, 1), "a", Some(2));
        o.call = Call::Put {
            key: "c/k/1".into(),
            value: "x".into(),
            lease: 0,
        };
        let r = run(vec![put(0, (0, 1), "a", Some(2)), o]);
        assert!(
            r.violations
                .iter()
                .any(|v| v.contains("acknowledged twice")),
            "{}",
            r.summary()
        );
        // Real-time order against revision order (on different keys, so only this check sees it).
        let mut o = put(1, (5, 6), "b", Some(2));
        o.call = Call::Put {
            key: "c/k/1".into(),
            value: "b".into(),
            lease: 0,
        };
        let r = run(vec![put(0, (0, 1), "a", Some(3)), o]);
        assert!(
            r.violations.iter().any(|v| v.contains("real time")),
            "{}",
            r.summary()
        );
    }

    #[test]
    fn serializable_read_must_be_a_consistent_snapshot() {
        let mut g = get(1, (5, 6), 3, Some(kv("a", 2)));
        g.call = Call::Get {
            key: Some(K.into()),
            prefix: K.into(),
            serializable: true,
        };
        // Stale but consistent at revision 2: fine (serializable); at 3 it misses b.
        let mut g2 = g.clone();
        if let Ret::Get { rev, .. } = &mut g2.ret {
            *rev = 2;
        }
        let ok = run(vec![
            put(0, (0, 1), "a", Some(2)),
            put(0, (2, 3), "b", Some(3)),
            g2,
        ]);
        assert_eq!(ok.verdict(), Verdict::Ok, "{}", ok.summary());
        let bad = run(vec![
            put(0, (0, 1), "a", Some(2)),
            put(0, (2, 3), "b", Some(3)),
            g,
        ]);
        assert_eq!(bad.verdict(), Verdict::Violation, "{}", bad.summary());
    }

    #[test]
    fn search_bound_reports_unknown_not_ok() {
        // Many concurrent indeterminate puts and a read of a state no order reaches: the search
        // must give up within its bound and say so.
        let mut ops: Vec<Op> = (0..40)
            .map(|i| put(i, (i as u64, i as u64), &format!("v{i}"), None))
            .collect();
        ops.push(get(99, (1000, 1001), 50, Some(kv("nobody", 45))));
        let h = History {
            ops,
            ..History::default()
        };
        let r = check(
            &h,
            &[K.to_string()],
            Limits {
                steps_max: 1000,
                cache_entries_max: 1000,
            },
        );
        assert!(!r.unknown.is_empty(), "{}", r.summary());
        assert_ne!(r.verdict(), Verdict::Ok);
    }

    fn ev(rev: i64, value: &str) -> Event {
        Event {
            rev,
            key: K.into(),
            kind: EventKind::Put,
            value: value.into(),
        }
    }

    #[test]
    fn watch_streams_must_match_the_full_history() {
        let base = || History {
            ops: vec![
                put(0, (0, 1), "a", Some(2)),
                put(0, (2, 3), "b", Some(3)),
                put(0, (4, 5), "c", Some(4)),
            ],
            full: vec![ev(2, "a"), ev(3, "b"), ev(4, "c")],
            final_rev: 4,
            watchers_done: vec![0],
            ..History::default()
        };
        let seg = |start, events: Vec<Event>| WatchSegment {
            watcher: 0,
            endpoint: "e".into(),
            start_rev: start,
            events,
            end: "x".into(),
        };
        let mut h = base();
        h.watches = vec![
            seg(2, vec![ev(2, "a")]),
            seg(3, vec![ev(3, "b"), ev(4, "c")]),
        ];
        let r = check(&h, &[K.to_string()], Limits::default());
        assert_eq!(r.verdict(), Verdict::Ok, "{}", r.summary());
        // A skipped revision, a duplicate, a short stream, a lost write in the full history.
        let mut h = base();
        h.watches = vec![seg(2, vec![ev(2, "a"), ev(4, "c")])];
        assert!(!check(&h, &[K.to_string()], Limits::default())
            .violations
            .is_empty());
        let mut h = base();
        h.watches = vec![seg(2, vec![ev(2, "a"), ev(2, "a"), ev(3, "b")])];
        assert!(!check(&h, &[K.to_string()], Limits::default())
            .violations
            .is_empty());
        let mut h = base();
        h.watches = vec![seg(2, vec![ev(2, "a"), ev(3, "b")])];
        assert!(!check(&h, &[K.to_string()], Limits::default())
            .violations
            .is_empty());
        let mut h = base();
        h.full.pop();
        h.final_rev = 3;
        assert!(!check(&h, &[K.to_string()], Limits::default())
            .violations
            .is_empty());
    }
}

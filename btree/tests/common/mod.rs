//! Helpers shared by the B+tree's integration tests (each test binary uses some of them).
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::Arc;

use ferrite_btree::{Db, DbOptions, SimStorage, Snapshot};

/// The benchmark's xorshift generator: deterministic inputs from a seed.
#[path = "../../benches/support/mod.rs"]
mod support;
#[allow(unused_imports)] // not every test binary draws random inputs
pub use support::Rng;

/// Every key and value of a snapshot, in order.
pub fn scan_snapshot(s: &Snapshot) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut c = s.cursor();
    c.seek_first().unwrap();
    while let Some((k, v)) = c.current() {
        out.insert(k.to_vec(), c.value(v).unwrap().into_owned());
        c.next().unwrap();
    }
    out
}

/// Every key and value of the database's current snapshot.
pub fn scan(db: &Db) -> BTreeMap<Vec<u8>, Vec<u8>> {
    scan_snapshot(&db.read())
}

/// Commits `db` durably, reopens what `sim` holds durably and checks the reopened tree is
/// valid and equal to `model`.
pub fn commit_reopen_and_compare(db: Db, sim: &SimStorage, model: &BTreeMap<Vec<u8>, Vec<u8>>) {
    db.writer().commit(true).unwrap();
    drop(db);
    let db = Db::open_storage(
        Arc::new(SimStorage::new(sim.written_image())),
        DbOptions::default(),
    )
    .unwrap();
    db.writer().check().unwrap();
    assert_eq!(&scan(&db), model);
}

//! Overfull leaves spread over a neighbour the commit already rewrites (`DbWriter::shift_leaves`
//! and `spread_leaf`): big batches of random inserts of mixed sizes (small, near the inline
//! limit, overflow chains) keep the tree valid (`check`) and equal to a `BTreeMap`, across
//! commits, removals and a reopen. Run it in a debug build too: the writer's size caches are
//! checked there.
use std::collections::BTreeMap;
use std::sync::Arc;

use ferrite_btree::{Db, DbOptions, SimStorage};

mod common;
use common::{commit_reopen_and_compare, scan, Rng};

#[test]
fn big_batches_of_mixed_sizes_keep_the_tree_valid() {
    let sim = Arc::new(SimStorage::new(Vec::new()));
    let db = Db::open_storage(sim.clone(), DbOptions::default()).unwrap();
    let mut model = BTreeMap::new();
    let mut r = Rng(0x5EED_1234_ABCD_0001);
    for round in 0..12u64 {
        {
            let mut w = db.writer();
            for _ in 0..400 {
                let klen = 1 + (r.next() % 80) as usize;
                let key: Vec<u8> = (0..klen).map(|_| b'a' + (r.next() % 4) as u8).collect();
                let vlen = match r.next() % 10 {
                    0 => 1_500 + (r.next() % 400) as usize,
                    1 => 3_000 + (r.next() % 6_000) as usize,
                    _ => (r.next() % 400) as usize,
                };
                let value: Vec<u8> = (0..vlen).map(|i| (i as u64 ^ round) as u8).collect();
                w.insert(&key, &value).unwrap();
                model.insert(key, value);
            }
            if round % 4 == 3 {
                let doomed: Vec<Vec<u8>> = model.keys().step_by(3).cloned().collect();
                for k in doomed {
                    assert!(w.remove(&k).unwrap());
                    model.remove(&k);
                }
            }
            w.commit(round % 2 == 0).unwrap();
            w.check().unwrap();
        }
        assert_eq!(scan(&db), model, "round {round}");
    }
    commit_reopen_and_compare(db, &sim, &model);
}

//! The writer keeps the pages of a light commit (at most `RECENT_PAGES_MAX`) for the next
//! commit's `make_dirty`. Light and heavy commits interleaved, durable and not, with removals
//! (so freed pages are reused by later commits) must keep the tree valid and equal to a
//! `BTreeMap`, across a reopen. Run it in a debug build too: there `make_dirty` compares every
//! kept page with the file.
use std::collections::BTreeMap;
use std::sync::Arc;

use ferrite_btree::{Db, DbOptions, SimStorage};

mod common;
use common::{commit_reopen_and_compare, scan, Rng};

#[test]
fn light_and_heavy_commits_interleaved_keep_the_tree_exact() {
    let sim = Arc::new(SimStorage::new(Vec::new()));
    let db = Db::open_storage(sim.clone(), DbOptions::default()).unwrap();
    let mut model = BTreeMap::new();
    let mut r = Rng(0x00C0_FFEE_1234_5678);
    for round in 0..300u64 {
        // Mostly light commits (a few keys: the kept pages are used by the next one), every
        // seventh a heavy one (hundreds of keys: nothing kept), every fifth durable (freed
        // pages become reusable), every eleventh removing a third of the keys.
        let keys = if round % 7 == 6 {
            300 + r.next() % 500
        } else {
            1 + r.next() % 4
        };
        {
            let mut w = db.writer();
            for _ in 0..keys {
                let key = format!("k{:05}", r.next() % 4_000).into_bytes();
                let value = vec![(round % 251) as u8; (r.next() % 300) as usize];
                w.insert(&key, &value).unwrap();
                model.insert(key, value);
            }
            if round % 11 == 10 {
                let doomed: Vec<Vec<u8>> = model.keys().step_by(3).cloned().collect();
                for k in doomed {
                    assert!(w.remove(&k).unwrap());
                    model.remove(&k);
                }
            }
            w.commit(round % 5 == 4).unwrap();
            if round % 25 == 0 {
                w.check().unwrap();
            }
        }
        if round % 10 == 0 {
            assert_eq!(scan(&db), model, "round {round}");
        }
    }
    db.writer().check().unwrap();
    assert_eq!(scan(&db), model);
    commit_reopen_and_compare(db, &sim, &model);
}

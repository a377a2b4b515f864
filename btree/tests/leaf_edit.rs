//! A dirty leaf edited in its heap (the decoded page plus appended entries) encodes to the same
//! bytes as a leaf built afresh from the same entries: the page format stays canonical whatever
//! edits came before (docs/format.md, "B+tree pages").
use ferrite_btree::page::{
    compact_heap, heap_key, heap_push, heap_value, key_prefix, LeafEnt, Node, PageRef, ValRef,
    PAGE_SIZE,
};

/// Entries `(key, value)`; a value of `None` stands for an overflow chain at `OVERFLOW_FIRST`.
type Entry = (Vec<u8>, Option<Vec<u8>>);
const OVERFLOW_FIRST: u64 = 7_005;

fn val_of(v: &Option<Vec<u8>>) -> ValRef<'_> {
    match v {
        Some(b) => ValRef::Inline(b),
        None => ValRef::Overflow {
            first: OVERFLOW_FIRST,
            len: 100_000,
        },
    }
}

fn fresh(entries: &[Entry]) -> Node {
    let mut heap = Vec::new();
    let ents = entries
        .iter()
        .map(|(k, v)| LeafEnt::new(heap_push(&mut heap, k, val_of(v)), k))
        .collect();
    Node::Leaf { ents, heap }
}

fn encode(n: &Node, id: u64) -> Vec<u8> {
    let mut page = vec![0xAAu8; PAGE_SIZE];
    n.encode(id, &mut page);
    page
}

#[test]
fn edited_leaf_encodes_like_a_fresh_one() {
    let key = |i: usize| format!("key-{i:04}-{}", "x".repeat(i % 50)).into_bytes();
    let val = |i: usize, round: usize| Some(vec![(i + round) as u8; 10 + (i * 7) % 60]);
    // Start: even keys, one of them with an overflow value.
    let mut model: Vec<Entry> = (0..40)
        .filter(|i| i % 2 == 0)
        .map(|i| (key(i), if i == 10 { None } else { val(i, 0) }))
        .collect();
    let page = encode(&fresh(&model), 9);
    let parsed = PageRef::parse(&page, 9, true).expect("fresh leaf parses");
    let mut node = Node::from_page(&parsed);
    assert_eq!(
        encode(&node, 9),
        page,
        "decode then encode gives back the page"
    );

    let Node::Leaf { ents, heap } = &mut node else {
        panic!("decoded a leaf");
    };
    // Insert the odd keys, replace every third value, remove every fifth entry.
    for i in (0..40).filter(|i| i % 2 == 1) {
        let pos = model.partition_point(|(k, _)| k.as_slice() < key(i).as_slice());
        let at = ents.partition_point(|&e| heap_key(heap, e.off()) < key(i).as_slice());
        assert_eq!(pos, at);
        let prefix = key_prefix(&key(i));
        assert_eq!(
            ents.binary_search_by(|&e| e.cmp_key(heap, &key(i), prefix)),
            Err(at),
            "the prefix search agrees"
        );
        let v = val(i, 1);
        ents.insert(
            at,
            LeafEnt::new(heap_push(heap, &key(i), val_of(&v)), &key(i)),
        );
        model.insert(pos, (key(i), v));
    }
    for pos in (0..model.len()).step_by(3) {
        let v = val(pos, 2);
        let k = model[pos].0.clone();
        let off = heap_push(heap, &k, ValRef::Inline(v.as_deref().expect("inline")));
        ents[pos] = LeafEnt::new(off, &k);
        model[pos].1 = v;
    }
    for pos in (0..model.len()).rev().step_by(5) {
        ents.remove(pos);
        model.remove(pos);
    }
    assert!(
        model.iter().any(|(_, v)| v.is_none()),
        "an overflow entry is kept"
    );
    for (pos, &e) in ents.iter().enumerate() {
        let k = model[pos].0.as_slice();
        assert_eq!(heap_key(heap, e.off()), k);
        assert_eq!(
            ents.binary_search_by(|&e| e.cmp_key(heap, k, key_prefix(k))),
            Ok(pos)
        );
        match (heap_value(heap, e.off()), &model[pos].1) {
            (ValRef::Inline(b), Some(v)) => assert_eq!(b, v.as_slice()),
            (ValRef::Overflow { first, .. }, None) => assert_eq!(first, OVERFLOW_FIRST),
            (got, want) => panic!("entry {pos}: {got:?} vs {want:?}"),
        }
    }
    let edited = encode(&node, 9);
    let fresh_page = encode(&fresh(&model), 9);
    assert_eq!(edited, fresh_page, "edited leaf encodes like a fresh one");

    // Compacting the heap changes nothing either.
    let Node::Leaf { ents, heap } = &mut node else {
        panic!("leaf");
    };
    *heap = compact_heap(ents, heap);
    assert_eq!(encode(&node, 9), fresh_page);
}

/// `key_prefix` orders like the keys whenever it differs, including short keys and keys that
/// end in zero bytes (zero padding).
#[test]
fn key_prefix_agrees_with_key_order() {
    let mut keys: Vec<Vec<u8>> = vec![
        vec![],
        vec![0],
        vec![0, 0],
        vec![0, 0, 0, 0, 0],
        vec![1],
        vec![1, 0],
        vec![1, 0, 0, 0],
        vec![1, 0, 0, 0, 1],
        vec![1, 2, 3],
        vec![1, 2, 3, 4],
        vec![1, 2, 3, 4, 0],
        vec![1, 2, 3, 5],
        vec![255],
        vec![255, 255, 255, 255, 255],
    ];
    keys.sort();
    for a in &keys {
        for b in &keys {
            let (pa, pb) = (key_prefix(a), key_prefix(b));
            if pa != pb {
                assert_eq!(pa.cmp(&pb), a.cmp(b), "{a:?} vs {b:?}");
            }
        }
    }
}

//! The binary encoding of entries, messages and metadata: round trips, and decoders that
//! return errors (never panic, never over-allocate) on truncated, mutated or random input.

use ferrite_raft::sim::Rng;
use ferrite_raft::*;

fn bytes(r: &mut Rng, max: u64) -> Vec<u8> {
    let n = r.below(max + 1) as usize;
    (0..n).map(|_| r.next_u64() as u8).collect()
}

fn big(r: &mut Rng) -> u64 {
    match r.below(4) {
        0 => 0,
        1 => r.below(200),
        2 => r.next_u64(),
        _ => u64::MAX - r.below(3),
    }
}

fn ids(r: &mut Rng) -> Vec<u64> {
    let mut v: Vec<u64> = (0..r.below(5)).map(|_| 1 + r.below(1000)).collect();
    v.sort_unstable();
    v.dedup();
    v
}

fn random_message(r: &mut Rng) -> Message {
    let kind = MessageKind::from_u8(1 + r.below(15) as u8).unwrap();
    let mut m = Message::new(kind, big(r), big(r), big(r));
    m.log_term = big(r);
    m.index = big(r);
    m.commit = big(r);
    m.reject = r.below(2) == 1;
    m.reject_hint = big(r);
    m.seq = big(r);
    m.context = bytes(r, 20);
    for _ in 0..r.below(4) {
        m.entries.push(Entry {
            index: big(r),
            term: big(r),
            kind: if r.below(2) == 0 {
                EntryKind::Normal
            } else {
                EntryKind::ConfChange
            },
            data: bytes(r, 40),
        });
    }
    if r.below(3) == 0 {
        let voters = ids(r);
        let learners: Vec<u64> = ids(r).into_iter().filter(|l| !voters.contains(l)).collect();
        let data = bytes(r, 50);
        let offset = r.below(1000);
        m.snapshot = Some(SnapshotChunk {
            meta: SnapshotMeta {
                index: big(r),
                term: big(r),
                conf_state: ConfState { voters, learners },
            },
            offset,
            total_len: offset + data.len() as u64 + r.below(10),
            data,
        });
    }
    m
}

#[test]
fn message_round_trip() {
    let mut r = Rng::new(1);
    for _ in 0..5000 {
        let m = random_message(&mut r);
        let enc = encode_message(&m);
        assert_eq!(decode_message(&enc).unwrap(), m);
    }
}

#[test]
fn entry_conf_change_hard_state_snapshot_meta_round_trip() {
    let mut r = Rng::new(2);
    for _ in 0..2000 {
        let e = Entry {
            index: big(&mut r),
            term: big(&mut r),
            kind: EntryKind::Normal,
            data: bytes(&mut r, 30),
        };
        assert_eq!(decode_entry(&encode_entry(&e)).unwrap(), e);
        let cc = ConfChange {
            kind: [
                ConfChangeKind::AddVoter,
                ConfChangeKind::AddLearner,
                ConfChangeKind::Remove,
            ][r.below(3) as usize],
            node_id: 1 + r.below(u64::MAX - 1),
            context: bytes(&mut r, 30),
        };
        assert_eq!(decode_conf_change(&encode_conf_change(&cc)).unwrap(), cc);
        let hs = HardState {
            term: big(&mut r),
            vote: big(&mut r),
            commit: big(&mut r),
        };
        assert_eq!(decode_hard_state(&encode_hard_state(&hs)).unwrap(), hs);
        let meta = SnapshotMeta {
            index: big(&mut r),
            term: big(&mut r),
            conf_state: ConfState {
                voters: ids(&mut r),
                learners: vec![],
            },
        };
        assert_eq!(
            decode_snapshot_meta(&encode_snapshot_meta(&meta)).unwrap(),
            meta
        );
    }
}

/// Every strict prefix of a valid encoding is an error (no silent truncation), and so is any
/// extra trailing byte.
#[test]
fn truncation_and_trailing_bytes_are_errors() {
    let mut r = Rng::new(3);
    for _ in 0..300 {
        let enc = encode_message(&random_message(&mut r));
        for cut in 0..enc.len() {
            assert!(
                decode_message(&enc[..cut]).is_err(),
                "prefix {cut} of {} decoded",
                enc.len()
            );
        }
        let mut longer = enc.clone();
        longer.push(0);
        let err = decode_message(&longer).unwrap_err();
        assert_eq!(err.what, "trailing bytes");
        assert_eq!(err.offset, enc.len());
    }
}

/// Mutated and random inputs: decoders return Ok or Err, never panic; whatever decodes
/// re-encodes to the same bytes (the encoding is canonical).
#[test]
fn mutated_and_random_input_never_panics() {
    let mut r = Rng::new(4);
    for _ in 0..20_000 {
        let mut enc = encode_message(&random_message(&mut r));
        for _ in 0..1 + r.below(4) {
            if enc.is_empty() {
                break;
            }
            let i = r.below(enc.len() as u64) as usize;
            match r.below(3) {
                0 => enc[i] = r.next_u64() as u8,
                1 => {
                    enc.remove(i);
                }
                _ => enc.insert(i, 0xff),
            }
        }
        if let Ok(m) = decode_message(&enc) {
            assert_eq!(encode_message(&m), enc);
        }
        let _ = decode_entry(&enc);
        let _ = decode_conf_change(&enc);
        let _ = decode_snapshot_meta(&enc);
        let _ = decode_hard_state(&enc);
    }
    for _ in 0..20_000 {
        let b = bytes(&mut r, 64);
        let _ = decode_message(&b);
        let _ = decode_entry(&b);
        let _ = decode_conf_change(&b);
    }
}

#[test]
fn specific_errors() {
    // Huge declared lengths and counts fail without allocating.
    let mut b = vec![MESSAGE_FORMAT_VERSION, 1, 1, 2, 3, 4, 5, 6, 0, 0, 0];
    b.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f]);
    assert_eq!(
        decode_message(&b).unwrap_err().what,
        "byte string longer than input"
    );
    let mut b = vec![MESSAGE_FORMAT_VERSION, 1, 1, 2, 3, 4, 5, 6, 0, 0, 0, 0];
    b.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x0f]);
    assert_eq!(
        decode_message(&b).unwrap_err().what,
        "count larger than input allows"
    );
    // Varint overflow.
    let b = [
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02, 0, 0, 0,
    ];
    assert_eq!(
        decode_hard_state(&b).unwrap_err().what,
        "varint overflows u64"
    );
    // Unknown version / kind / flags.
    assert_eq!(
        decode_message(&[9]).unwrap_err().what,
        "unknown message format version"
    );
    assert_eq!(
        decode_message(&[MESSAGE_FORMAT_VERSION, 99])
            .unwrap_err()
            .what,
        "unknown message kind"
    );
    let b = [MESSAGE_FORMAT_VERSION, 1, 1, 2, 3, 4, 5, 6, 0x80];
    assert_eq!(
        decode_message(&b).unwrap_err().what,
        "unknown message flags"
    );
    // Snapshot chunk that claims more than its total.
    let mut m = Message::new(MessageKind::Snapshot, 1, 2, 3);
    m.snapshot = Some(SnapshotChunk {
        meta: SnapshotMeta::default(),
        offset: 5,
        total_len: 6,
        data: vec![1, 2],
    });
    assert_eq!(
        decode_message(&encode_message(&m)).unwrap_err().what,
        "snapshot chunk beyond its total length"
    );
    assert!(
        decode_conf_change(&[CONF_CHANGE_FORMAT_VERSION, 0, 0, 0]).is_err(),
        "node 0"
    );
}

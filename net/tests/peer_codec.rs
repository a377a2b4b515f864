//! The peer protocol's codec: round trips of arbitrary messages, and decoders fed random,
//! truncated and mutated bytes return errors and never panic. Also checks that the committed
//! flatc output is fresh when a flatc is installed.

use ferrite_net::peer::*;
use ferrite_raft::{
    ConfState, Entry, EntryKind, Message, MessageKind, SnapshotChunk, SnapshotMeta,
};
use proptest::prelude::*;

fn kind() -> impl Strategy<Value = MessageKind> {
    (1u8..=15).prop_map(|k| MessageKind::from_u8(k).unwrap())
}

fn ids() -> impl Strategy<Value = Vec<u64>> {
    proptest::collection::btree_set(1u64..1000, 0..6).prop_map(|s| s.into_iter().collect())
}

fn entry() -> impl Strategy<Value = Entry> {
    (
        any::<u64>(),
        any::<u64>(),
        any::<bool>(),
        proptest::collection::vec(any::<u8>(), 0..64),
    )
        .prop_map(|(index, term, cc, data)| Entry {
            index,
            term,
            kind: if cc {
                EntryKind::ConfChange
            } else {
                EntryKind::Normal
            },
            data,
        })
}

fn chunk() -> impl Strategy<Value = SnapshotChunk> {
    (
        any::<u64>(),
        any::<u64>(),
        ids(),
        ids(),
        0u64..1 << 40,
        proptest::collection::vec(any::<u8>(), 0..256),
        0u64..1000,
    )
        .prop_map(|(index, term, voters, learners, offset, data, extra)| {
            let learners = learners
                .into_iter()
                .filter(|l| !voters.contains(l))
                .collect();
            SnapshotChunk {
                meta: SnapshotMeta {
                    index,
                    term,
                    conf_state: ConfState { voters, learners },
                },
                offset,
                total_len: offset + data.len() as u64 + extra,
                data,
            }
        })
}

prop_compose! {
    fn message()(
        kind in kind(),
        from in 1u64..u64::MAX,
        to in 1u64..u64::MAX,
        nums in proptest::array::uniform6(any::<u64>()),
        reject in any::<bool>(),
        context in proptest::collection::vec(any::<u8>(), 0..32),
        entries in proptest::collection::vec(entry(), 0..8),
        snapshot in proptest::option::of(chunk()),
    ) -> Message {
        let mut m = Message::new(kind, from, to, nums[0]);
        m.log_term = nums[1];
        m.index = nums[2];
        m.commit = nums[3];
        m.reject = reject;
        m.reject_hint = nums[4];
        m.seq = nums[5];
        m.context = context;
        m.entries = entries;
        m.snapshot = snapshot;
        m
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn message_round_trips(m in message()) {
        prop_assert_eq!(decode_message(&encode_message(&m)).unwrap(), m.clone());
        let mut frame = Vec::new();
        let mut fbb = flatbuffers::FlatBufferBuilder::new();
        put_message_frame(&mut fbb, &mut frame, &m);
        prop_assert_eq!(decode_frame(&frame, 1 << 20).unwrap(), m);
    }

    #[test]
    fn random_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode_message(&data);
        let _ = decode_cluster_info(&data);
        let _ = decode_frame(&data, 1 << 20);
    }

    #[test]
    fn mutated_messages_never_panic(
        m in message(),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
    ) {
        let good = encode_message(&m);
        let mut bad = good.clone();
        for (i, x) in &flips {
            let i = i.index(bad.len());
            bad[i] ^= x | 1;
        }
        // Whatever a mutated buffer decodes to must itself be a valid message.
        if let Ok(d) = decode_message(&bad) {
            prop_assert_eq!(decode_message(&encode_message(&d)).unwrap(), d);
        }
        let _ = decode_message(&good[..cut.index(good.len())]);
        // In a frame, the checksum catches every mutation of the payload.
        let mut frame = Vec::new();
        put_frame(&mut frame, &good);
        let mut fbad = frame.clone();
        let i = FRAME_HEADER_BYTES + flips[0].0.index(good.len());
        fbad[i] ^= flips[0].1 | 1;
        prop_assert!(decode_frame(&fbad, 1 << 20).is_err());
        prop_assert!(decode_frame(&frame[..cut.index(frame.len())], 1 << 20).is_err());
    }

    #[test]
    fn hellos_round_trip_and_reject_corruption(
        cluster_id in any::<u64>(), from in any::<u64>(), to in any::<u64>(),
        info in any::<bool>(), flip in 0usize..HELLO_BYTES, x in 1u8..=255,
    ) {
        let h = Hello {
            version: PROTOCOL_VERSION,
            kind: if info { HelloKind::ClusterInfo } else { HelloKind::Raft },
            cluster_id, from, to,
        };
        let mut b = encode_hello(&h);
        prop_assert_eq!(decode_hello(&b).unwrap(), h);
        b[flip] ^= x;
        prop_assert!(decode_hello(&b).is_err());
        let r = HelloReply {
            version: PROTOCOL_VERSION,
            status: HelloStatus::ClusterMismatch,
            cluster_id,
            member_id: from,
        };
        let mut b = encode_hello_reply(&r);
        prop_assert_eq!(decode_hello_reply(&b).unwrap(), r);
        b[flip % HELLO_REPLY_BYTES] ^= x;
        prop_assert!(decode_hello_reply(&b).is_err());
    }
}

#[test]
fn invalid_fields_are_refused() {
    let ok = Message::new(MessageKind::Heartbeat, 1, 2, 3);
    assert!(decode_message(&encode_message(&ok)).is_ok());
    for (what, m) in [
        ("from 0", Message::new(MessageKind::Heartbeat, 0, 2, 3)),
        ("to 0", Message::new(MessageKind::Heartbeat, 1, 0, 3)),
    ] {
        assert!(decode_message(&encode_message(&m)).is_err(), "{what}");
    }
    let chunk = |voters: Vec<u64>, learners: Vec<u64>, offset: u64, total_len: u64| {
        let mut m = Message::new(MessageKind::Snapshot, 1, 2, 3);
        m.snapshot = Some(SnapshotChunk {
            meta: SnapshotMeta {
                index: 1,
                term: 1,
                conf_state: ConfState { voters, learners },
            },
            offset,
            total_len,
            data: vec![1; 10],
        });
        encode_message(&m)
    };
    assert!(decode_message(&chunk(vec![1, 2], vec![3], 0, 10)).is_ok());
    assert!(
        decode_message(&chunk(vec![2, 1], vec![], 0, 10)).is_err(),
        "unsorted"
    );
    assert!(
        decode_message(&chunk(vec![1, 1], vec![], 0, 10)).is_err(),
        "duplicate"
    );
    assert!(
        decode_message(&chunk(vec![1], vec![1], 0, 10)).is_err(),
        "voter and learner"
    );
    assert!(
        decode_message(&chunk(vec![0], vec![], 0, 10)).is_err(),
        "node 0"
    );
    assert!(
        decode_message(&chunk(vec![1], vec![], 1, 10)).is_err(),
        "past total"
    );
    assert!(
        decode_message(&chunk(vec![1], vec![], u64::MAX, 10)).is_err(),
        "overflow"
    );
    // An unknown message kind (flatbuffer enums carry any byte).
    let mut fbb = flatbuffers::FlatBufferBuilder::new();
    let root = fb::Message::create(
        &mut fbb,
        &fb::MessageArgs {
            kind: fb::MessageKind(16),
            from: 1,
            to: 2,
            ..Default::default()
        },
    );
    fbb.finish(root, None);
    assert!(decode_message(fbb.finished_data()).is_err());
    // Oversize frames are refused from the header alone.
    let mut frame = Vec::new();
    put_frame(&mut frame, &encode_message(&ok));
    assert!(matches!(
        decode_frame(&frame, 8),
        Err(PeerError::FrameTooLarge { .. })
    ));
}

/// The committed generated code matches the schema (skipped, with a note, without flatc).
#[test]
fn generated_code_is_fresh() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = std::env::temp_dir().join(format!("ferrite-peer-flatc-{}", std::process::id()));
    let run = std::process::Command::new("flatc")
        .arg("--rust")
        .arg("-o")
        .arg(&out)
        .arg(dir.join("schema/peer.fbs"))
        .output();
    let Ok(run) = run else {
        eprintln!("flatc not installed: freshness of peer_generated.rs not checked");
        return;
    };
    assert!(run.status.success(), "flatc failed: {run:?}");
    let fresh = std::fs::read_to_string(out.join("peer_generated.rs")).unwrap();
    let committed = std::fs::read_to_string(dir.join("src/peer/peer_generated.rs")).unwrap();
    let _ = std::fs::remove_dir_all(&out);
    assert!(
        fresh == committed,
        "net/src/peer/peer_generated.rs is stale: run scripts/peer-flatc.sh"
    );
}

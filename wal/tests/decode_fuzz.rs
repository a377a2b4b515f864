//! A short proptest-driven fuzz of the record decoder and of recovery over damaged
//! segments (the long-running fuzzer is `wal/fuzz`, run with cargo-fuzz).

use ferrite_wal::format::{self, decode_record, encode_record, SEGMENT_HEADER_BYTES};
use ferrite_wal::sim::SimDisk;
use ferrite_wal::{Wal, WalError, WalOptions, WalRecord};
use proptest::prelude::*;

fn record() -> impl Strategy<Value = WalRecord> {
    prop_oneof![
        (
            any::<u64>(),
            any::<u64>(),
            proptest::collection::vec(any::<u8>(), 0..300)
        )
            .prop_map(|(index, term, data)| WalRecord::Entry { index, term, data }),
        (any::<u64>(), any::<u64>(), any::<u64>())
            .prop_map(|(term, vote, commit)| WalRecord::HardState { term, vote, commit }),
        (any::<u64>(), any::<u64>()).prop_map(|(index, term)| WalRecord::Snapshot { index, term }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// Arbitrary bytes never panic the decoder; whatever decodes re-encodes to exactly the
    /// bytes it was decoded from.
    #[test]
    fn decoder_never_panics_and_is_canonical(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        if let Ok((rec, n)) = decode_record(&bytes) {
            prop_assert!(n <= bytes.len());
            let mut again = Vec::new();
            encode_record(&rec, &mut again);
            prop_assert_eq!(&again[..], &bytes[..n]);
        }
    }

    /// Encoding then decoding gives the record back, and any single flipped bit is caught.
    #[test]
    fn roundtrip_and_every_bit_flip_detected(rec in record(), bit in any::<prop::sample::Index>()) {
        let mut buf = Vec::new();
        encode_record(&rec, &mut buf);
        prop_assert_eq!(buf.len(), format::encoded_len(&rec));
        let (back, n) = decode_record(&buf).unwrap();
        prop_assert_eq!(back, rec);
        prop_assert_eq!(n, buf.len());
        let b = bit.index(buf.len() * 8);
        buf[b / 8] ^= 1 << (b % 8);
        prop_assert!(decode_record(&buf).is_err());
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    /// Recovery over a log whose segments got random damage never panics: it either
    /// refuses with a corruption error, or returns a prefix of what was written.
    #[test]
    fn recovery_over_damaged_segments(
        n in 1u64..60,
        damage in proptest::collection::vec((0usize..4, any::<prop::sample::Index>(), any::<u8>()), 1..4),
    ) {
        let options = WalOptions { segment_bytes: 4096, batch_bytes_max: 1024 };
        let disk = SimDisk::new();
        let (mut wal, _) = Wal::open(disk.storage(), options).unwrap();
        for i in 1..=n {
            wal.append(&[WalRecord::Entry { index: i, term: 1, data: vec![i as u8; 100] }]).unwrap();
        }
        let seqs = wal.segment_seqs();
        drop(wal);
        for (seg, at, byte) in damage {
            let name = format::segment_file_name(seqs[seg % seqs.len()]);
            let len = disk.file_bytes(&name).unwrap().len();
            // Keep the segment header intact half the time so records get exercised.
            let off = at.index(len - SEGMENT_HEADER_BYTES) + SEGMENT_HEADER_BYTES;
            let old = disk.file_bytes(&name).unwrap()[off];
            for bit in 0..8 {
                if (old ^ byte) & (1 << bit) != 0 {
                    disk.flip_bit(&name, off, bit);
                }
            }
        }
        match Wal::open(disk.storage(), options) {
            Ok((_, rec)) => {
                for (k, e) in rec.entries.iter().enumerate() {
                    prop_assert_eq!(e.index, k as u64 + 1);
                    prop_assert_eq!(&e.data, &vec![e.index as u8; 100]);
                }
            }
            Err(WalError::Corrupt { .. }) => {}
            Err(e) => prop_assert!(false, "unexpected error {e}"),
        }
    }
}

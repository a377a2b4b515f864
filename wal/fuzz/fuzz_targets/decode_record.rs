//! cargo-fuzz target for the WAL record decoder:
//! `cd wal/fuzz && cargo +nightly fuzz run decode_record -- -max_total_time=60`
#![no_main]

use ferrite_wal::format::{decode_record, encode_record};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Never panics; whatever decodes re-encodes to exactly the bytes it came from.
    if let Ok((rec, n)) = decode_record(data) {
        assert!(n <= data.len());
        let mut again = Vec::new();
        encode_record(&rec, &mut again);
        assert_eq!(&again[..], &data[..n]);
    }
});

//! Fuzz the peer-message and entry decoders: they must never panic, and anything they accept
//! must re-encode to the same bytes (the encoding is canonical).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = ferrite_raft::decode_message(data) {
        assert_eq!(ferrite_raft::encode_message(&m), data);
    }
    if let Ok(e) = ferrite_raft::decode_entry(data) {
        assert_eq!(ferrite_raft::encode_entry(&e), data);
    }
    let _ = ferrite_raft::decode_conf_change(data);
    let _ = ferrite_raft::decode_snapshot_meta(data);
    let _ = ferrite_raft::decode_hard_state(data);
});

//! Fuzz the peer protocol's decoders (flatbuffer messages and cluster info, frames, hellos):
//! they must never panic, and a message they accept must survive a re-encode and decode.
#![no_main]
use ferrite_net::peer::*;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = decode_message(data) {
        assert_eq!(decode_message(&encode_message(&m)).unwrap(), m);
    }
    if let Ok(c) = decode_cluster_info(data) {
        assert_eq!(decode_cluster_info(&encode_cluster_info(&c)).unwrap(), c);
    }
    let _ = decode_frame(data, 1 << 20);
    if let Ok(h) = <&[u8; HELLO_BYTES]>::try_from(&data[..HELLO_BYTES.min(data.len())]) {
        let _ = decode_hello(h);
    }
    if let Ok(h) = <&[u8; HELLO_REPLY_BYTES]>::try_from(&data[..HELLO_REPLY_BYTES.min(data.len())])
    {
        let _ = decode_hello_reply(h);
    }
});

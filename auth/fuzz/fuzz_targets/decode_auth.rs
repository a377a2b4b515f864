//! Both auth decoders on arbitrary bytes: never panic; whatever decodes re-encodes to a value
//! that decodes to the same thing.
#![no_main]

use ferrite_auth::{AuthCommand, AuthStore};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(store) = AuthStore::decode(data) {
        let again = AuthStore::decode(&store.encode()).expect("re-encoded store decodes");
        assert_eq!(again, store);
    }
    if let Ok(cmd) = AuthCommand::decode(data) {
        assert_eq!(AuthCommand::decode(&cmd.encode()).expect("re-encoded command decodes"), cmd);
    }
});

//! The plaintext repository marker, the first object every command reads.
#![no_main]

use bk_core::repo::marker::Marker;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(marker) = Marker::from_json("bk-repository.json", data) {
        let again = Marker::from_json("bk-repository.json", &marker.to_json())
            .expect("a parsed marker parses again");
        assert_eq!(marker, again);
    }
});

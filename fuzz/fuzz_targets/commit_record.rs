//! The plaintext commit record, read by `bk list`, `bk verify` and every restore from
//! storage anyone with write access could have tampered with.
#![no_main]

use bk_core::repo::commit::CommitRecord;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(record) = CommitRecord::from_json("fuzz/commit.json", data) {
        // What parses must serialize and parse back to the same record.
        let again = CommitRecord::from_json("fuzz/commit.json", &record.to_json())
            .expect("a parsed commit record parses again");
        assert_eq!(record, again);
    }
});

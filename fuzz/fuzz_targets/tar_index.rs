//! The tar stream a `directory` source sends, read as it flows into the manifest's
//! entries: a compromised source host controls every byte of it. Whatever the input,
//! the index passes on the input's bytes in order (all of them when it succeeds), and
//! what it records is what reading every entry through the tar crate finds.
#![no_main]

use bk_core::repo::manifest::EntrySpool;
use bk_core::source::tar_index;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut spool = EntrySpool::new().expect("a temporary file");
    let mut passed = Vec::new();
    let indexed = tar_index::index(data, &mut passed, &mut spool);
    assert!(
        data.starts_with(&passed),
        "bytes passed on that are not the input's"
    );
    if indexed.is_err() {
        return;
    }
    assert!(passed == data, "an index that succeeded left bytes out");
    let mut archive = tar::Archive::new(data);
    let read: std::io::Result<Vec<_>> = archive.entries().and_then(|entries| {
        entries
            .map(|entry| entry.and_then(|mut entry| tar_index::describe(&mut entry)))
            .collect()
    });
    if let Ok(read) = read {
        let recorded = spool.into_entries().expect("reading the spool back");
        assert_eq!(recorded, read, "the index and reading each entry disagree");
    }
});

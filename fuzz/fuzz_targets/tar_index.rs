//! The tar stream a `directory` source sends, read as it flows into the manifest's
//! entries: a compromised source host controls every byte of it.
#![no_main]

use bk_core::repo::manifest::EntrySpool;
use bk_core::source::tar_index;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut spool = EntrySpool::new().expect("a temporary file");
    let _ = tar_index::index(data, &mut spool);
});

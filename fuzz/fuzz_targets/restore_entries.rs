//! A directory restore of whatever tar a compromised source sent: every entry passes
//! the restore's safety rules and is extracted for real into a scratch directory.
//! Whatever the input, nothing may appear beside that directory.
#![no_main]

use std::io::Read;

use bk_core::restore::extract::Extractor;
use bk_core::source::tar_index;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let scratch = tempfile::tempdir().expect("a scratch directory");
    let root = scratch.path().join("target");
    let mut extractor = Extractor::new(&root, false)
        .expect("an extractor")
        .max_entry_size(data.len() as u64);
    let mut archive = tar::Archive::new(data);
    if let Ok(entries) = archive.entries() {
        for entry in entries {
            let Ok(entry) = entry else { break };
            let Ok(found) = tar_index::describe_header(&entry) else {
                break;
            };
            let mut content = entry.take(u64::MAX);
            if extractor.write(&found, &mut content).is_err() {
                break;
            }
        }
    }
    let _ = extractor.finish();
    let beside: Vec<_> = std::fs::read_dir(scratch.path())
        .expect("reading the scratch directory")
        .filter_map(|e| e.ok().map(|e| e.file_name()))
        .filter(|name| name != "target")
        .collect();
    assert!(
        beside.is_empty(),
        "the restore wrote outside its target: {beside:?}"
    );
});

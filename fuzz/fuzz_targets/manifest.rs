//! The decrypted manifest (JSON lines: a header, then one entry per file), as a
//! restore reads it: whoever can write to the repository and knows the recipients
//! (a compromised backup server) can put anything in it.
#![no_main]

use bk_core::repo::manifest::ManifestReader;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(mut reader) = ManifestReader::new(std::io::Cursor::new(data)) else {
        return;
    };
    while let Ok(Some(entry)) = reader.next_entry() {
        let _ = entry.path_bytes();
    }
});

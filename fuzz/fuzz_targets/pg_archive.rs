//! The pg_dump archive a `postgres` source sends, read as it flows to count each
//! table's rows: a compromised source host controls every byte of it.
#![no_main]

use bk_core::source::pg_archive;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = pg_archive::count_rows(data);
});

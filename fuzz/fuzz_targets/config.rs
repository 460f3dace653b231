//! The configuration file: parsed and validated in one pass (TOML, sizes, durations,
//! cron expressions, time zones, URLs, recipients).
#![no_main]

use bk_core::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = Config::parse(std::path::Path::new("/etc/bk/bk.toml"), text);
    }
});

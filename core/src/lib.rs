//! bk-core: everything the `bk` CLI and the `bk-server` daemon share.
//!
//! The tree follows the data: `source` reads a dump, `pipeline` hashes, compresses,
//! encrypts and uploads it, `repo` defines what sits in object storage, `restore`
//! turns stored objects back into bytes and files, `restore_test` proves a backup
//! restores by restoring it for real, `catalog` remembers runs, and `commands` holds
//! one module per operator-facing operation. Nothing in here knows
//! about the daemon: `bk` must be able to restore without it.

pub mod anomaly;
pub mod catalog;
pub mod commands;
pub mod config;
pub mod keys;
pub mod pipeline;
pub mod progress;
pub mod repo;
pub mod restore;
pub mod restore_test;
pub mod retention;
pub mod schedule;
pub mod source;

/// The version of bk, recorded in every manifest.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// An error and all its causes, one sentence each, for logs, the catalog and alerts.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = c.source();
    }
    out
}

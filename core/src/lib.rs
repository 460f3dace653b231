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

/// Tunes glibc's allocator for a process that streams through 1 MiB buffers on many
/// threads; call it first thing in `main`. By default glibc raises its mmap threshold
/// each time a large block is freed (up to 32 MiB), after which zstd's buffers and
/// everything else large come from per-thread arenas that keep freed memory: the daemon
/// running four backups at once peaked at 173–227 MiB RSS (bench/scale.sh). Fixed
/// thresholds instead: blocks of 2 MiB and more get mappings of their own, returned
/// when freed, while the 1 MiB stream chunks stay in the arenas and are reused; an
/// arena gives back free memory above 4 MiB at its top (the default 128 KiB made a
/// verify fault its buffers back in, 0.3 s more system time per GiB). Measured: daemon
/// 112–129 MiB, and no more CPU for a backup or a verify than glibc's default.
pub fn release_large_buffers() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets tunables; called before any thread is started.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 2 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 4 << 20);
    }
}

/// Turns one of an open file's status flags (`O_NONBLOCK`, `O_DIRECT`, …) on or off.
pub fn set_status_flag(
    fd: std::os::fd::BorrowedFd<'_>,
    flag: libc::c_int,
    on: bool,
) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let fd = fd.as_raw_fd();
    // SAFETY: F_GETFL/F_SETFL on a descriptor the caller holds open only read and change
    // its status flags.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        let wanted = if on { flags | flag } else { flags & !flag };
        if flags < 0 || libc::fcntl(fd, libc::F_SETFL, wanted) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

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

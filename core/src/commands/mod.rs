//! One module per operator-facing operation. `bk` (the CLI) and `bk-server` (the
//! daemon) both call these, so a backup started by cron and one started by hand run
//! exactly the same code.

pub mod backup;
pub mod catalog;
pub mod check;
pub mod gc;
pub mod list;
pub mod prune;
pub mod restore;
pub mod restore_test;
pub mod status;
pub mod verify;

//! `command` jobs: any command whose stdout is the dump (redis-cli --rdb -, sqlite3 .backup…).
//! Any exit status but 0 fails the backup.

use std::collections::BTreeMap;

use super::DumpPlan;
use crate::config::{JobConfig, JobKind};

pub fn plan(job: &JobConfig) -> DumpPlan {
    let command = job.command.clone().unwrap_or_default();
    DumpPlan {
        kind: JobKind::Command,
        describe: BTreeMap::from([("command".to_string(), command.clone())]),
        command,
        version_command: None,
    }
}

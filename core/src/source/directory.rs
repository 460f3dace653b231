//! `directory` jobs: GNU tar of a directory, paths relative to it (`./…`).
//! tar's exit status 1 ("file changed as we read it") is a warning recorded in the
//! manifest; 2 or more is a failed backup.

use std::collections::BTreeMap;

use super::shell::quote;
use super::DumpPlan;
use crate::config::{JobConfig, JobKind};

pub fn plan(job: &JobConfig) -> DumpPlan {
    let path = job.path.clone().unwrap_or_default();
    DumpPlan {
        kind: JobKind::Directory,
        command: tar_command(&path, &job.exclude),
        describe: BTreeMap::from([("path".to_string(), path)]),
        version_command: Some("tar --version".into()),
    }
}

/// tar keeps its default 10 KiB records. 256 KiB records (`--blocking-factor=512`) cost
/// 4–5% less CPU in a local backup, but pad the archive's end with up to 256 KiB of
/// zeros, and `tar -x` stops reading at the end-of-archive blocks: in the documented
/// recovery (`age -d | zstd -d | tar -x`) zstd then dies of SIGPIPE writing the padding
/// (exit 141 under `pipefail`). Operators' stock-tool restores come first.
pub fn tar_command(path: &str, exclude: &[String]) -> String {
    let mut cmd = String::from("LC_ALL=C tar --create --file=- --format=gnu --numeric-owner");
    for pattern in exclude {
        cmd.push_str(" --exclude=");
        cmd.push_str(&quote(pattern));
    }
    cmd.push_str(" --directory=");
    cmd.push_str(&quote(path));
    cmd.push_str(" .");
    cmd
}

/// The lines of tar's stderr worth keeping as warnings.
pub fn warnings(stderr: &str) -> Vec<String> {
    let lines: Vec<String> = stderr
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
    if lines.is_empty() {
        vec!["tar exited with status 1 (some files changed while they were read)".into()]
    } else {
        lines
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_a_quoted_tar_command() {
        let cmd = tar_command("/srv/my media", &["*.tmp".into()]);
        assert!(
            cmd.ends_with("--exclude='*.tmp' --directory='/srv/my media' ."),
            "{cmd}"
        );
    }
}

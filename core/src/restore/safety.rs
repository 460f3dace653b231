//! The rules every entry of a directory backup must pass before a restore writes it.
//! Extraction and `bk restore --verify` both call [`EntryRules::check`], so what
//! --verify accepts is exactly what a restore writes, and a backup that would be
//! refused is reported by --verify too.
//!
//! A compromised source can send any bytes as its "tar" (and a compromised backup
//! server can forge a whole backup), so an entry is refused, naming it, when:
//! - its path is absolute or holds `..`;
//! - it would be written through a symlink the archive made earlier (wherever that
//!   symlink points: `evil -> /etc` then `evil/cron.d/x`);
//! - it is a hard link to an absolute path, a path with `..`, or through a symlink;
//! - it is a device node, a FIFO or anything else that is not a file, directory or link;
//! - it announces more bytes than the whole backup stream holds.
//!
//! Two things are restored, with a warning, rather than refused. A symlink pointing
//! outside the target (absolute, climbing out, or `self/..` where `self -> .`) is
//! data: restores never follow a symlink, so it cannot make bk write outside, and
//! backups legitimately hold such links (`current -> /srv/app/releases/42`).
//! setuid, setgid and sticky bits are dropped unless asked to be kept.
//!
//! Never touches the filesystem; extraction adds its own checks on disk (real parent
//! directories, O_NOFOLLOW|O_EXCL, free space) as a second line.

use std::collections::HashSet;
use std::fmt;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use crate::repo::manifest::{Entry, EntryType};

/// Why an entry is not restored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The entry's path as the archive spells it.
    pub path: String,
    pub reason: String,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "refusing entry `{}`: {}", self.path, self.reason)
    }
}

impl std::error::Error for Refusal {}

/// What a restore may do with an entry that passed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    /// The path below the target directory; empty for the archive's root (`./`).
    pub relative: PathBuf,
    /// What the operator should hear about this entry, though it is restored.
    pub warning: Option<String>,
}

/// Warnings about restored entries, the first few in full and the rest counted, so
/// that a tree of a million odd entries does not make a million lines.
#[derive(Debug, Default)]
pub struct Warnings {
    shown: Vec<String>,
    more: u64,
}

impl Warnings {
    const SHOWN: usize = 20;

    pub fn push(&mut self, warning: String) {
        if self.shown.len() < Self::SHOWN {
            self.shown.push(warning);
        } else {
            self.more += 1;
        }
    }

    pub fn into_vec(mut self) -> Vec<String> {
        if self.more > 0 {
            self.shown
                .push(format!("… and {} more entries with warnings", self.more));
        }
        self.shown
    }
}

/// The rules, and the little they must remember between entries: which paths are
/// symlinks (an entry below one would be written through it).
pub struct EntryRules {
    max_entry_size: u64,
    symlinks: HashSet<PathBuf>,
}

impl EntryRules {
    /// `max_entry_size`: no file can hold more than the whole backup stream (the
    /// manifest's `source_size`).
    pub fn new(max_entry_size: u64) -> EntryRules {
        EntryRules {
            max_entry_size,
            symlinks: HashSet::new(),
        }
    }

    /// Checks the next entry of the archive, in order.
    pub fn check(&mut self, entry: &Entry) -> Result<Checked, Refusal> {
        let refused = |reason: String| Refusal {
            path: entry.path.clone(),
            reason,
        };
        let relative = relative_path(&entry.path_bytes()).map_err(refused)?;
        let mut warning = None;
        if let Some(link) = self.symlink_above(&relative) {
            return Err(refused(format!(
                "it would be written through the symlink `{}`",
                link.display()
            )));
        }
        match entry.kind {
            EntryType::File | EntryType::Dir => {}
            EntryType::Symlink => {
                let target = entry
                    .link
                    .as_deref()
                    .filter(|t| !t.is_empty())
                    .ok_or_else(|| refused("a symlink without a target".into()))?;
                let at = relative.parent().unwrap_or(Path::new(""));
                if let Err(why) = symlink_target(at, target.as_bytes()) {
                    warning = Some(format!(
                        "`{}` is a symlink to `{target}`, which {why}; restored as is (bk never follows it)",
                        entry.path
                    ));
                }
            }
            EntryType::Hardlink => {
                let target = entry
                    .link
                    .as_deref()
                    .ok_or_else(|| refused("a hard link without a target".into()))?;
                let source = relative_path(target.as_bytes())
                    .map_err(|why| refused(format!("its hard link target `{target}`: {why}")))?;
                if source.as_os_str().is_empty() {
                    return Err(refused("a hard link to the target directory itself".into()));
                }
                if let Some(link) = self
                    .symlink_above(&source)
                    .or_else(|| self.symlinks.contains(&source).then(|| source.clone()))
                {
                    return Err(refused(format!(
                        "its hard link target `{target}` goes through the symlink `{}`",
                        link.display()
                    )));
                }
            }
            EntryType::Char | EntryType::Block => {
                return Err(refused("device nodes are not restored".into()))
            }
            EntryType::Fifo | EntryType::Other => {
                return Err(refused(format!(
                    "entries of type {:?} are not restored",
                    entry.kind
                )))
            }
        }
        if entry.kind == EntryType::File && entry.size > self.max_entry_size {
            return Err(refused(format!(
                "it announces {} bytes, more than the whole backup stream ({} bytes): a forged or corrupt header",
                entry.size, self.max_entry_size
            )));
        }
        if entry.kind == EntryType::Symlink {
            self.symlinks.insert(relative.clone());
        }
        if matches!(entry.kind, EntryType::File | EntryType::Dir) && entry.mode & 0o7000 != 0 {
            warning = Some(format!(
                "`{}` has mode {:o}: a restore keeps setuid, setgid and sticky bits only with --keep-special-bits",
                entry.path, entry.mode
            ));
        }
        Ok(Checked { relative, warning })
    }

    /// The symlink this archive made at a proper ancestor of `path`, if any.
    fn symlink_above(&self, path: &Path) -> Option<PathBuf> {
        if self.symlinks.is_empty() {
            return None;
        }
        path.ancestors()
            .skip(1)
            .find(|a| self.symlinks.contains(*a))
            .map(Path::to_path_buf)
    }
}

/// An archive path below the target directory (`./a/b` → `a/b`, `./` → empty), or
/// why it has none.
pub fn relative_path(raw: &[u8]) -> Result<PathBuf, String> {
    let mut out = PathBuf::new();
    for component in Path::new(std::ffi::OsStr::from_bytes(raw)).components() {
        match component {
            Component::CurDir => {}
            Component::Normal(part) => out.push(part),
            Component::ParentDir => return Err("the path contains `..`".into()),
            Component::RootDir | Component::Prefix(_) => return Err("the path is absolute".into()),
        }
    }
    Ok(out)
}

/// Whether a symlink target read from the directory `at` (relative to the target
/// directory) stays inside: relative, and `..` only leading the target, where it
/// climbs real directories (extraction makes every parent a real directory); after a
/// name it could climb out of wherever another symlink leads.
fn symlink_target(at: &Path, target: &[u8]) -> Result<(), String> {
    if target.is_empty() {
        return Err("is empty".into());
    }
    let mut depth = at.components().count();
    let mut named = false;
    for component in Path::new(std::ffi::OsStr::from_bytes(target)).components() {
        match component {
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => {
                return Err("is absolute (outside the restored directory)".into())
            }
            Component::ParentDir if named => {
                return Err(
                    "has `..` after a name (it can climb out through another symlink)".into(),
                )
            }
            Component::ParentDir => {
                if depth == 0 {
                    return Err("climbs out of the restored directory".into());
                }
                depth -= 1;
            }
            Component::Normal(_) => named = true,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str, kind: EntryType, link: Option<&str>) -> Entry {
        Entry {
            path: path.into(),
            path_hex: None,
            kind,
            size: 0,
            mode: 0o644,
            mtime: 0,
            link: link.map(String::from),
            blake3: None,
        }
    }

    fn reason(rules: &mut EntryRules, e: &Entry) -> String {
        let refusal = rules.check(e).expect_err("refused");
        assert_eq!(refusal.path, e.path);
        refusal.reason
    }

    #[test]
    fn paths_stay_below_the_target() {
        assert_eq!(relative_path(b"./a//b/./c/").unwrap(), Path::new("a/b/c"));
        assert_eq!(relative_path(b"./").unwrap(), Path::new(""));
        assert!(relative_path(b"/etc/passwd").is_err());
        assert!(relative_path(b"./a/../../b").is_err());
        assert!(relative_path(b"..").is_err());
    }

    #[test]
    fn symlinks_pointing_outside_are_restored_with_a_warning() {
        let mut rules = EntryRules::new(100);
        for (path, target) in [
            ("./evil", "/etc"),
            ("./a/evil", "../../etc"),
            ("./up", "self/.."),
            ("./a/b", "c/../../.."),
        ] {
            let e = entry(path, EntryType::Symlink, Some(target));
            let warning = rules.check(&e).unwrap().warning.expect("a warning");
            assert!(
                warning.contains(target) && warning.contains(path),
                "{warning}"
            );
        }
        for (path, target) in [
            ("./c/d/ok", "../../top"),
            ("./ok2", "a/b/c"),
            ("./ok3", "."),
        ] {
            let e = entry(path, EntryType::Symlink, Some(target));
            assert_eq!(rules.check(&e).unwrap().warning, None);
        }
        reason(&mut rules, &entry("./empty", EntryType::Symlink, Some("")));
    }

    #[test]
    fn nothing_is_written_through_a_symlink() {
        let mut rules = EntryRules::new(100);
        rules.check(&entry("./sub", EntryType::Dir, None)).unwrap();
        rules
            .check(&entry("./alias", EntryType::Symlink, Some("sub")))
            .unwrap();
        let why = reason(&mut rules, &entry("./alias/x/owned", EntryType::File, None));
        assert!(why.contains("through the symlink `alias`"), "{why}");
        let why = reason(
            &mut rules,
            &entry("./h", EntryType::Hardlink, Some("./alias/f")),
        );
        assert!(why.contains("through the symlink `alias`"), "{why}");
        let why = reason(
            &mut rules,
            &entry("./h2", EntryType::Hardlink, Some("alias")),
        );
        assert!(why.contains("symlink"), "{why}");
        rules
            .check(&entry("./sub/f", EntryType::File, None))
            .unwrap();
    }

    #[test]
    fn hard_links_devices_sizes_and_bits() {
        let mut rules = EntryRules::new(1000);
        for target in ["/etc/passwd", "../x", "./"] {
            reason(&mut rules, &entry("./h", EntryType::Hardlink, Some(target)));
        }
        for kind in [
            EntryType::Char,
            EntryType::Block,
            EntryType::Fifo,
            EntryType::Other,
        ] {
            reason(&mut rules, &entry("./dev", kind, None));
        }
        let mut huge = entry("./huge", EntryType::File, None);
        huge.size = 1 << 60;
        let why = reason(&mut rules, &huge);
        assert!(why.contains("1152921504606846976"), "{why}");
        let mut suid = entry("./tool", EntryType::File, None);
        suid.mode = 0o4755;
        let warning = rules.check(&suid).unwrap().warning.expect("a warning");
        assert!(warning.contains("4755"), "{warning}");
        suid.mode = 0o755;
        assert_eq!(rules.check(&suid).unwrap().warning, None);
    }
}

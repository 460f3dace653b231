//! Writes a directory backup's entries under a target directory, and nowhere else.
//!
//! A compromised source can send any bytes as its "tar", so every entry first passes
//! the rules of `safety` (the same ones `--verify` applies: no absolute paths, no
//! `..`, no symlink or hard link leading out, nothing through a symlink, no device
//! nodes, no size beyond the whole stream). Then, on disk: every parent is created
//! here or checked to be a real directory, files are created with O_EXCL|O_NOFOLLOW
//! and only if the target filesystem has room for them, hard links go only to files
//! already extracted, and setuid/setgid/sticky bits are dropped unless asked for.
//! Directory modes are applied last, so a read-only directory cannot block its children.

use std::fs::{self, OpenOptions};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::safety::{self, EntryRules, Refusal, Warnings};
use crate::pipeline::hash::copy_large;
use crate::repo::manifest::{Entry, EntryType};

#[derive(Debug, thiserror::Error)]
pub enum ExtractError {
    #[error("refusing entry `{path}`: {reason}")]
    Refused { path: String, reason: String },
    #[error("writing `{path}`: {source}")]
    Io { path: PathBuf, source: io::Error },
}

impl From<Refusal> for ExtractError {
    fn from(r: Refusal) -> Self {
        ExtractError::Refused {
            path: r.path,
            reason: r.reason,
        }
    }
}

pub struct Extractor {
    root: PathBuf,
    keep_special_bits: bool,
    rules: EntryRules,
    dirs: Vec<(PathBuf, u32, u64)>,
    /// What the operator should hear about entries that were restored.
    pub warnings: Warnings,
}

impl Extractor {
    /// `root` must be absent or empty: a restore never mixes with existing files.
    pub fn new(root: &Path, keep_special_bits: bool) -> Result<Extractor, ExtractError> {
        let io_err = |source| ExtractError::Io {
            path: root.to_path_buf(),
            source,
        };
        match fs::read_dir(root) {
            Ok(mut entries) => {
                if entries.next().is_some() {
                    return Err(ExtractError::Io {
                        path: root.to_path_buf(),
                        source: io::Error::new(
                            io::ErrorKind::AlreadyExists,
                            "the target directory is not empty; restore into a new or empty directory",
                        ),
                    });
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(root)
                    .map_err(io_err)?;
            }
            Err(e) => return Err(io_err(e)),
        }
        let root = fs::canonicalize(root).map_err(io_err)?;
        Ok(Extractor {
            root,
            keep_special_bits,
            rules: EntryRules::new(u64::MAX),
            dirs: Vec::new(),
            warnings: Warnings::default(),
        })
    }

    /// Refuses files larger than this (the whole backup stream's size).
    pub fn max_entry_size(mut self, bytes: u64) -> Self {
        self.rules = EntryRules::new(bytes);
        self
    }

    /// The safe destination of an archive path, or why there is none.
    pub fn destination(&self, raw: &[u8]) -> Result<Option<PathBuf>, String> {
        let relative = safety::relative_path(raw)?;
        Ok((!relative.as_os_str().is_empty()).then(|| self.root.join(relative)))
    }

    /// Checks that every component of `path` below the root is a real directory.
    fn real_directories(&self, path: &Path) -> bool {
        let relative = path.strip_prefix(&self.root).unwrap_or(Path::new(""));
        let mut at = self.root.clone();
        relative.components().all(|part| {
            at.push(part);
            fs::symlink_metadata(&at).is_ok_and(|m| m.file_type().is_dir())
        })
    }

    /// Creates (or checks) every parent of `dest` as a real directory under the root.
    fn prepare_parents(&self, dest: &Path) -> Result<(), ExtractError> {
        let parent = dest.parent().unwrap_or(&self.root);
        let relative = parent.strip_prefix(&self.root).unwrap_or(Path::new(""));
        let mut at = self.root.clone();
        for part in relative.components() {
            at.push(part);
            match fs::symlink_metadata(&at) {
                Ok(m) if m.file_type().is_dir() => {}
                Ok(_) => {
                    return Err(ExtractError::Refused {
                        path: dest
                            .strip_prefix(&self.root)
                            .unwrap_or(dest)
                            .display()
                            .to_string(),
                        reason: format!(
                            "its parent `{}` is not a directory (a symlink?)",
                            at.display()
                        ),
                    })
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    fs::DirBuilder::new()
                        .mode(0o700)
                        .create(&at)
                        .map_err(|source| ExtractError::Io {
                            path: at.clone(),
                            source,
                        })?;
                }
                Err(source) => {
                    return Err(ExtractError::Io {
                        path: at.clone(),
                        source,
                    })
                }
            }
        }
        Ok(())
    }

    fn mode(&self, mode: u32) -> u32 {
        if self.keep_special_bits {
            mode & 0o7777
        } else {
            mode & 0o777
        }
    }

    /// Writes one entry; `content` supplies a regular file's bytes.
    pub fn write(&mut self, entry: &Entry, content: &mut dyn io::Read) -> Result<(), ExtractError> {
        let refused = |reason: String| ExtractError::Refused {
            path: entry.path.clone(),
            reason,
        };
        let checked = self.rules.check(entry)?;
        if let Some(warning) = checked.warning {
            self.warnings.push(warning);
        }
        if checked.relative.as_os_str().is_empty() {
            // The archive's root (`./`): its mode applies to the target itself.
            self.dirs.push((self.root.clone(), entry.mode, entry.mtime));
            return Ok(());
        }
        let dest = self.root.join(&checked.relative);
        self.prepare_parents(&dest)?;
        let io_err = |source| ExtractError::Io {
            path: dest.clone(),
            source,
        };
        match entry.kind {
            EntryType::Dir => {
                match fs::symlink_metadata(&dest) {
                    Ok(m) if m.file_type().is_dir() => {}
                    Ok(_) => return Err(refused("it exists and is not a directory".into())),
                    Err(_) => fs::DirBuilder::new()
                        .mode(0o700)
                        .create(&dest)
                        .map_err(io_err)?,
                }
                self.dirs.push((dest, entry.mode, entry.mtime));
            }
            EntryType::File => {
                let free = free_bytes(&self.root).map_err(io_err)?;
                if entry.size > free {
                    return Err(refused(format!(
                        "it announces {} bytes but the target filesystem has {free} bytes free",
                        entry.size
                    )));
                }
                let mut file = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .custom_flags(libc::O_NOFOLLOW)
                    .mode(0o600)
                    .open(&dest)
                    .map_err(io_err)?;
                // Never more than announced: what follows is the next entry's.
                let written =
                    copy_large(&mut content.take(entry.size), &mut file).map_err(io_err)?;
                if written != entry.size {
                    return Err(refused(format!(
                        "it announced {} bytes but held {written}",
                        entry.size
                    )));
                }
                file.set_permissions(fs::Permissions::from_mode(self.mode(entry.mode)))
                    .map_err(io_err)?;
                drop(file);
                set_mtime(&dest, entry.mtime).map_err(io_err)?;
            }
            EntryType::Symlink => {
                let target = entry
                    .link
                    .as_deref()
                    .ok_or_else(|| refused("a symlink without a target".into()))?;
                std::os::unix::fs::symlink(target, &dest).map_err(io_err)?;
                let mtime = filetime::FileTime::from_unix_time(entry.mtime as i64, 0);
                filetime::set_symlink_file_times(&dest, mtime, mtime).map_err(io_err)?;
            }
            EntryType::Hardlink => {
                let target = entry
                    .link
                    .as_deref()
                    .ok_or_else(|| refused("a hard link without a target".into()))?;
                let source = self
                    .destination(target.as_bytes())
                    .map_err(|why| refused(format!("its link target `{target}` is unsafe: {why}")))?
                    .ok_or_else(|| refused("a hard link to the root".into()))?;
                let through_real_dirs = source
                    .parent()
                    .is_some_and(|parent| self.real_directories(parent));
                match fs::symlink_metadata(&source) {
                    Ok(m) if m.file_type().is_file() && through_real_dirs => {}
                    _ => {
                        return Err(refused(format!(
                            "its target `{target}` is not a file extracted earlier"
                        )))
                    }
                }
                fs::hard_link(&source, &dest).map_err(io_err)?;
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo | EntryType::Other => {
                // Refused by the rules above already; never created, whatever happens to them.
                return Err(refused(format!(
                    "entries of type {:?} are not restored",
                    entry.kind
                )));
            }
        }
        Ok(())
    }

    /// Applies directory modes and times, deepest first.
    pub fn finish(mut self) -> Result<(), ExtractError> {
        self.dirs
            .sort_by_key(|d| std::cmp::Reverse(d.0.components().count()));
        for (dir, mode, mtime) in &self.dirs {
            let io_err = |source| ExtractError::Io {
                path: dir.clone(),
                source,
            };
            fs::set_permissions(dir, fs::Permissions::from_mode(self.mode(*mode)))
                .map_err(io_err)?;
            set_mtime(dir, *mtime).map_err(io_err)?;
        }
        Ok(())
    }
}

/// Bytes an unprivileged writer may still use on the filesystem holding `path`.
fn free_bytes(path: &Path) -> io::Result<u64> {
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // SAFETY: statvfs only fills the struct we pass; the path is a valid C string.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut stat) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((stat.f_bavail as u64).saturating_mul(stat.f_frsize as u64))
}

fn set_mtime(path: &Path, mtime: u64) -> io::Result<()> {
    let t = filetime::FileTime::from_unix_time(mtime as i64, 0);
    filetime::set_file_times(path, t, t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsafe_paths_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let x = Extractor::new(&dir.path().join("t"), false).unwrap();
        assert!(x.destination(b"../etc/passwd").is_err());
        assert!(x.destination(b"/etc/passwd").is_err());
        assert!(x.destination(b"./a/../../b").is_err());
        assert_eq!(x.destination(b"./").unwrap(), None);
        assert!(x.destination(b"./a/b").unwrap().unwrap().ends_with("a/b"));
    }

    fn entry(path: &str, kind: EntryType, size: u64, link: Option<&str>) -> Entry {
        Entry {
            path: path.into(),
            path_hex: None,
            kind,
            size,
            mode: 0o644,
            mtime: 0,
            link: link.map(String::from),
            blake3: None,
        }
    }

    #[test]
    fn nothing_is_written_through_a_symlink_wherever_it_points() {
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside");
        fs::create_dir(&outside).unwrap();
        fs::write(outside.join("secret"), "s").unwrap();
        let root = dir.path().join("t");
        let mut x = Extractor::new(&root, false).unwrap();
        let target = outside.display().to_string();
        // Pointing outside: restored as a symlink, with a warning.
        let out = entry("./evil", EntryType::Symlink, 0, Some(&target));
        x.write(&out, &mut io::empty()).unwrap();
        let through = entry("./evil/owned", EntryType::File, 1, None);
        let err = x.write(&through, &mut &b"x"[..]).unwrap_err().to_string();
        assert!(
            err.contains("`./evil/owned`") && err.contains("symlink `evil`"),
            "{err}"
        );
        let hard = entry("./h", EntryType::Hardlink, 0, Some("./evil/secret"));
        let err = x.write(&hard, &mut io::empty()).unwrap_err().to_string();
        assert!(err.contains("`./h`") && err.contains("symlink"), "{err}");

        // Pointing inside: still never written through.
        x.write(&entry("./sub", EntryType::Dir, 0, None), &mut io::empty())
            .unwrap();
        x.write(&entry("./sub/f", EntryType::File, 1, None), &mut &b"x"[..])
            .unwrap();
        x.write(
            &entry("./alias", EntryType::Symlink, 0, Some("sub")),
            &mut io::empty(),
        )
        .unwrap();
        let through = entry("./alias/owned", EntryType::File, 1, None);
        let err = x.write(&through, &mut &b"x"[..]).unwrap_err().to_string();
        assert!(err.contains("alias/owned"), "{err}");
        assert!(!root.join("sub/owned").exists());
        let hard = entry("./h", EntryType::Hardlink, 0, Some("./sub/f"));
        x.write(&hard, &mut io::empty()).unwrap();
        let warnings = std::mem::take(&mut x.warnings).into_vec();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("`./evil`"), "{warnings:?}");
        x.finish().unwrap();
        let left: Vec<_> = fs::read_dir(&outside).unwrap().collect();
        assert_eq!(left.len(), 1, "something was written outside");
    }

    #[test]
    fn refuses_files_larger_than_the_stream_or_the_free_space() {
        let dir = tempfile::tempdir().unwrap();
        let mut x = Extractor::new(&dir.path().join("t"), false)
            .unwrap()
            .max_entry_size(1000);
        let err = x
            .write(
                &entry("./big", EntryType::File, 1001, None),
                &mut io::empty(),
            )
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`./big`") && err.contains("1001 bytes"),
            "{err}"
        );
        let mut x = Extractor::new(&dir.path().join("u"), false).unwrap();
        let huge = entry("./huge", EntryType::File, 1 << 60, None);
        let err = x.write(&huge, &mut io::empty()).unwrap_err().to_string();
        assert!(
            err.contains("`./huge`") && err.contains("bytes free"),
            "{err}"
        );
        assert!(!dir.path().join("u/huge").exists());
    }

    #[test]
    fn special_bits_are_dropped_unless_kept() {
        let dir = tempfile::tempdir().unwrap();
        for keep in [false, true] {
            let root = dir.path().join(format!("t{keep}"));
            let mut x = Extractor::new(&root, keep).unwrap();
            let mut tool = entry("./tool", EntryType::File, 1, None);
            tool.mode = 0o4755;
            x.write(&tool, &mut &b"x"[..]).unwrap();
            let warnings = std::mem::take(&mut x.warnings).into_vec();
            assert!(
                warnings[0].contains("`./tool` has mode 4755"),
                "{warnings:?}"
            );
            x.finish().unwrap();
            let mode = fs::metadata(root.join("tool"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o7777, if keep { 0o4755 } else { 0o755 });
        }
    }
}

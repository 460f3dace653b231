//! Writes a directory backup's entries under a target directory, and nowhere else.
//!
//! A compromised source can send any bytes as its "tar", so every entry is checked
//! before anything is written: no absolute paths, no `..`, no writing through a
//! symlink (every parent is created here or checked to be a real directory), files
//! created with O_EXCL|O_NOFOLLOW, hard links only to files already extracted,
//! no device nodes, and setuid/setgid/sticky bits dropped unless asked for.
//! Directory modes are applied last, so a read-only directory cannot block its children.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use crate::repo::manifest::{Entry, EntryType};

#[derive(Debug, thiserror::Error)]
pub enum ExtractError {
    #[error("refusing entry `{path}`: {reason}")]
    Refused { path: String, reason: String },
    #[error("writing `{path}`: {source}")]
    Io { path: PathBuf, source: io::Error },
}

pub struct Extractor {
    root: PathBuf,
    keep_special_bits: bool,
    dirs: Vec<(PathBuf, u32, u64)>,
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
            dirs: Vec::new(),
        })
    }

    /// The safe destination of an archive path, or why there is none.
    pub fn destination(&self, raw: &[u8]) -> Result<Option<PathBuf>, String> {
        let path = Path::new(std::ffi::OsStr::from_bytes(raw));
        let mut out = self.root.clone();
        let mut depth = 0;
        for component in path.components() {
            match component {
                Component::CurDir => {}
                Component::Normal(part) => {
                    out.push(part);
                    depth += 1;
                }
                Component::ParentDir => return Err("the path contains `..`".into()),
                Component::RootDir | Component::Prefix(_) => {
                    return Err("the path is absolute".into())
                }
            }
        }
        Ok(if depth == 0 { None } else { Some(out) })
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
        let Some(dest) = self.destination(&entry.path_bytes()).map_err(refused)? else {
            // The archive's root (`./`): its mode applies to the target itself.
            self.dirs.push((self.root.clone(), entry.mode, entry.mtime));
            return Ok(());
        };
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
                let mut file = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .custom_flags(libc::O_NOFOLLOW)
                    .mode(0o600)
                    .open(&dest)
                    .map_err(io_err)?;
                let written = copy_exact(content, &mut file, entry.size).map_err(io_err)?;
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
                match fs::symlink_metadata(&source) {
                    Ok(m) if m.file_type().is_file() => {}
                    _ => {
                        return Err(refused(format!(
                            "its target `{target}` is not a file extracted earlier"
                        )))
                    }
                }
                fs::hard_link(&source, &dest).map_err(io_err)?;
            }
            EntryType::Char | EntryType::Block => {
                return Err(refused("device nodes are not restored".into()));
            }
            EntryType::Fifo | EntryType::Other => {
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

fn set_mtime(path: &Path, mtime: u64) -> io::Result<()> {
    let t = filetime::FileTime::from_unix_time(mtime as i64, 0);
    filetime::set_file_times(path, t, t)
}

fn copy_exact(src: &mut dyn io::Read, dst: &mut fs::File, limit: u64) -> io::Result<u64> {
    let mut buf = vec![0u8; 256 << 10];
    let mut total = 0u64;
    while total < limit {
        let want = buf.len().min((limit - total) as usize);
        let n = src.read(&mut buf[..want])?;
        if n == 0 {
            break;
        }
        dst.write_all(&buf[..n])?;
        total += n as u64;
    }
    Ok(total)
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

    #[test]
    fn refuses_to_write_through_a_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside");
        fs::create_dir(&outside).unwrap();
        let mut x = Extractor::new(&dir.path().join("t"), false).unwrap();
        let link = Entry {
            path: "./evil".into(),
            path_hex: None,
            kind: EntryType::Symlink,
            size: 0,
            mode: 0o777,
            mtime: 0,
            link: Some(outside.display().to_string()),
            blake3: None,
        };
        x.write(&link, &mut io::empty()).unwrap();
        let through = Entry {
            path: "./evil/owned".into(),
            kind: EntryType::File,
            size: 1,
            link: None,
            ..link
        };
        let err = x.write(&through, &mut &b"x"[..]).unwrap_err().to_string();
        assert!(err.contains("evil/owned"), "{err}");
        assert!(!outside.join("owned").exists());
    }
}

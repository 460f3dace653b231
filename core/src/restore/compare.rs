//! Checks a directory backup's tar stream against its manifest, entry by entry, in
//! order: nothing missing, nothing extra, and every path, type, size, mode, mtime,
//! link target and content hash equal.

use std::io::BufRead;

use crate::repo::manifest::{Entry, ManifestReader};

/// The first difference found, in words an operator can act on.
pub fn differs(expected: &Entry, found: &Entry) -> Option<String> {
    let path = &expected.path;
    if expected.path_bytes() != found.path_bytes() {
        return Some(format!(
            "expected entry `{path}` but the payload has `{}` at that position",
            found.path
        ));
    }
    if expected.kind != found.kind {
        return Some(format!(
            "`{path}` is a {:?} in the manifest but a {:?} in the payload",
            expected.kind, found.kind
        ));
    }
    if expected.size != found.size {
        return Some(format!(
            "`{path}` is {} bytes in the manifest but {} in the payload",
            expected.size, found.size
        ));
    }
    if expected.mode != found.mode {
        return Some(format!(
            "`{path}` has mode {:o} in the manifest but {:o} in the payload",
            expected.mode, found.mode
        ));
    }
    if expected.mtime != found.mtime {
        return Some(format!(
            "`{path}` has mtime {} in the manifest but {} in the payload",
            expected.mtime, found.mtime
        ));
    }
    if expected.link != found.link {
        return Some(format!(
            "`{path}` links to {:?} in the manifest but {:?} in the payload",
            expected.link, found.link
        ));
    }
    if expected.blake3 != found.blake3 {
        return Some(format!("`{path}`: content hash differs from the manifest"));
    }
    None
}

/// Walks the manifest alongside the payload's entries.
pub struct Lockstep<R> {
    manifest: ManifestReader<R>,
    pub checked: u64,
}

impl<R: BufRead> Lockstep<R> {
    pub fn new(manifest: ManifestReader<R>) -> Self {
        Lockstep {
            manifest,
            checked: 0,
        }
    }

    /// Checks the next payload entry.
    pub fn check(&mut self, found: &Entry) -> Result<(), String> {
        match self.manifest.next_entry().map_err(|e| e.to_string())? {
            None => Err(format!(
                "`{}` is in the payload but not in the manifest",
                found.path
            )),
            Some(expected) => match differs(&expected, found) {
                Some(why) => Err(why),
                None => {
                    self.checked += 1;
                    Ok(())
                }
            },
        }
    }

    /// After the payload's last entry: the manifest must be exhausted too.
    pub fn finish(mut self) -> Result<u64, String> {
        match self.manifest.next_entry().map_err(|e| e.to_string())? {
            None => Ok(self.checked),
            Some(missing) => Err(format!(
                "`{}` is in the manifest but missing from the payload",
                missing.path
            )),
        }
    }
}

//! Reads a tar stream as it flows and describes every entry (path, type, size, mode,
//! mtime, link target, BLAKE3 of the content) for the manifest. The same reader
//! checks restores against the manifest, so backup and restore cannot disagree on
//! what an entry is.

use std::io::{self, Read, Write};

use crate::pipeline::hash::copy_large;
use crate::repo::manifest::{Entry, EntrySpool, EntryType};

/// A reader that copies every byte it reads into a writer.
pub struct Tee<R, W> {
    inner: R,
    sink: W,
}

impl<R: Read, W: Write> Tee<R, W> {
    pub fn new(inner: R, sink: W) -> Self {
        Tee { inner, sink }
    }

    pub fn into_inner(self) -> (R, W) {
        (self.inner, self.sink)
    }
}

impl<R: Read, W: Write> Read for Tee<R, W> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.sink.write_all(&buf[..n])?;
        Ok(n)
    }
}

pub fn entry_type(t: tar::EntryType) -> EntryType {
    use tar::EntryType as T;
    match t {
        T::Regular | T::Continuous => EntryType::File,
        T::Directory => EntryType::Dir,
        T::Symlink => EntryType::Symlink,
        T::Link => EntryType::Hardlink,
        T::Char => EntryType::Char,
        T::Block => EntryType::Block,
        T::Fifo => EntryType::Fifo,
        _ => EntryType::Other,
    }
}

/// Describes one entry from its header alone (no content hash yet).
pub fn describe_header<R: Read>(entry: &tar::Entry<'_, R>) -> io::Result<Entry> {
    let header = entry.header();
    let kind = entry_type(header.entry_type());
    let mode = header.mode().map_err(|e| bad_entry("mode", e))?;
    let mtime = header.mtime().map_err(|e| bad_entry("mtime", e))?;
    let raw_path = normalize(&entry.path_bytes());
    let link = entry
        .link_name_bytes()
        .map(|l| String::from_utf8_lossy(&l).into_owned());
    let mut out = Entry {
        path: String::new(),
        path_hex: None,
        kind,
        size: if kind == EntryType::File {
            entry.size()
        } else {
            0
        },
        mode,
        mtime,
        link,
        blake3: None,
    };
    out.set_path(&raw_path);
    Ok(out)
}

/// Describes one entry, reading (and hashing) its content.
pub fn describe<R: Read>(entry: &mut tar::Entry<'_, R>) -> io::Result<Entry> {
    let mut out = describe_header(entry)?;
    read_content(entry, &mut out)?;
    Ok(out)
}

/// Reads a regular file's content into `described.blake3`; a stream that ends before
/// the size its header announced is an error naming the entry.
pub fn read_content<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    described: &mut Entry,
) -> io::Result<()> {
    if described.kind != EntryType::File {
        return Ok(());
    }
    let mut hasher = blake3::Hasher::new();
    let read = copy_large(entry, &mut hasher)?;
    if read != described.size {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!(
                "tar entry `{}` announces {} bytes but the stream ends after {read}",
                described.path, described.size
            ),
        ));
    }
    described.blake3 = Some(hasher.finalize().to_hex().to_string());
    Ok(())
}

/// Drops the trailing `/` tar puts on directories, so paths compare equal everywhere.
pub fn normalize(path: &[u8]) -> Vec<u8> {
    let mut p = path.to_vec();
    while p.len() > 1 && p.ends_with(b"/") {
        p.pop();
    }
    p
}

fn bad_entry(field: &str, e: io::Error) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("tar header has an invalid {field}: {e}"),
    )
}

/// Reads the whole tar stream from `reader`, recording every entry into `spool`, and
/// then drains what follows the archive's end (the zero blocks), so that every byte
/// the reader yields has been read.
pub fn index<R: Read>(reader: R, spool: &mut EntrySpool) -> io::Result<()> {
    let mut archive = tar::Archive::new(reader);
    for entry in archive.entries()? {
        let mut entry = entry?;
        let described = describe(&mut entry)?;
        spool.push(&described)?;
    }
    let mut rest = archive.into_inner();
    io::copy(&mut rest, &mut io::sink())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indexes_and_tees_every_byte() {
        let mut builder = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(5);
        h.set_mode(0o640);
        h.set_mtime(7);
        h.set_entry_type(tar::EntryType::Regular);
        builder
            .append_data(&mut h, "./dir/hello.txt", &b"hello"[..])
            .unwrap();
        let archive = builder.into_inner().unwrap();

        let mut spool = EntrySpool::new().unwrap();
        let mut copy = Vec::new();
        index(Tee::new(&archive[..], &mut copy), &mut spool).unwrap();
        assert_eq!(copy, archive);
        assert_eq!(spool.count(), 1);
    }

    #[test]
    fn garbage_is_an_error() {
        let mut spool = EntrySpool::new().unwrap();
        let garbage = vec![0x41u8; 4096];
        assert!(index(&garbage[..], &mut spool).is_err());
    }
}

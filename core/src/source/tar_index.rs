//! Reads a tar stream as it flows and describes every entry (path, type, size, mode,
//! mtime, link target, BLAKE3 of the content) for the manifest. Restores are checked
//! against the manifest with the same header reading (`describe_header`) and the same
//! content hash, so backup and restore cannot disagree on what an entry is; a unit
//! test holds the backup's in-place hashing to what reading each entry finds.

use std::cell::RefCell;
use std::io::{self, BufRead, Read, Seek, SeekFrom, Write};
use std::rc::Rc;

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

/// Reads the whole tar stream from `reader`, passing every byte on to `sink` and
/// recording every entry into `spool`, then passes on what follows the archive's end
/// (the zero blocks and tar's record padding), so `sink` gets the stream entire.
///
/// File contents, most of the stream, are not read out of `reader`: the tar crate
/// seeks over them, and [`Passing`] hands them to `sink` and to the file's hasher from
/// `reader`'s own buffer. Reading them would copy every byte once more on the thread
/// that also hashes the stream and feeds zstd.
pub fn index<R: BufRead, W: Write>(reader: R, sink: W, spool: &mut EntrySpool) -> io::Result<()> {
    let content = Rc::new(RefCell::new(Content::default()));
    let mut archive = tar::Archive::new(Passing {
        inner: reader,
        sink,
        pos: 0,
        content: content.clone(),
    });
    for entry in archive.entries_with_seek()? {
        let entry = entry?;
        // The stream is past the previous file's content on the way to this header.
        if let Some(file) = content.borrow_mut().finish() {
            spool.push(&file)?;
        }
        let described = describe_header(&entry)?;
        if described.kind == EntryType::File {
            content.borrow_mut().start(described);
        } else {
            spool.push(&described)?;
        }
    }
    if let Some(file) = content.borrow_mut().finish() {
        spool.push(&file)?;
    }
    archive.into_inner().drain()
}

/// The file entry whose content is being passed over, and its content hash.
#[derive(Default)]
struct Content {
    file: Option<Entry>,
    hasher: blake3::Hasher,
    /// Bytes of the file's content still to come.
    left: u64,
}

impl Content {
    fn start(&mut self, file: Entry) {
        self.hasher.reset();
        self.left = file.size;
        self.file = Some(file);
    }

    /// Hashes the part of `bytes` that belongs to the file's content.
    fn take(&mut self, bytes: &[u8]) {
        let n = usize::try_from(self.left).map_or(bytes.len(), |left| left.min(bytes.len()));
        self.hasher.update(&bytes[..n]);
        self.left -= n as u64;
    }

    /// The file with its content hash; called once the stream is past its content.
    fn finish(&mut self) -> Option<Entry> {
        let mut file = self.file.take()?;
        file.blake3 = Some(self.hasher.finalize().to_hex().to_string());
        Some(file)
    }

    fn cut_short(&self) -> io::Error {
        let why = match &self.file {
            Some(file) if self.left > 0 => format!(
                "tar entry `{}` announces {} bytes but the stream ends after {}",
                file.path,
                file.size,
                file.size - self.left
            ),
            _ => "the tar stream ends inside an entry's data or padding".to_string(),
        };
        io::Error::new(io::ErrorKind::UnexpectedEof, why)
    }
}

/// The tar crate's view of the stream: every byte read or sought over is passed on to
/// `sink`, and content bytes to the file's hasher. Seeking goes forward only, which is
/// all the tar crate asks for when it skips an entry's content and padding.
struct Passing<R, W> {
    inner: R,
    sink: W,
    pos: u64,
    content: Rc<RefCell<Content>>,
}

impl<R: BufRead, W: Write> Passing<R, W> {
    /// Passes on `amount` bytes straight from `inner`'s buffer; `None` passes on the rest.
    fn pass_over(&mut self, amount: Option<u64>) -> io::Result<()> {
        let mut left = amount;
        while left != Some(0) {
            let available = self.inner.fill_buf()?;
            if available.is_empty() {
                return match left {
                    None => Ok(()),
                    Some(_) => Err(self.content.borrow().cut_short()),
                };
            }
            let n = left.map_or(available.len(), |l| {
                usize::try_from(l).map_or(available.len(), |l| l.min(available.len()))
            });
            pass(
                &mut self.sink,
                &self.content,
                &mut self.pos,
                &available[..n],
            )?;
            self.inner.consume(n);
            left = left.map(|l| l - n as u64);
        }
        Ok(())
    }

    fn drain(&mut self) -> io::Result<()> {
        self.pass_over(None)
    }
}

/// Passes `bytes` on to `sink` and, as far as they are content, to the file's hasher.
fn pass(
    sink: &mut impl Write,
    content: &RefCell<Content>,
    pos: &mut u64,
    bytes: &[u8],
) -> io::Result<()> {
    sink.write_all(bytes)?;
    content.borrow_mut().take(bytes);
    *pos += bytes.len() as u64;
    Ok(())
}

impl<R: BufRead, W: Write> Read for Passing<R, W> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        pass(&mut self.sink, &self.content, &mut self.pos, &buf[..n])?;
        Ok(n)
    }
}

impl<R: BufRead, W: Write> Seek for Passing<R, W> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        match to {
            SeekFrom::Current(ahead) if ahead >= 0 => {
                self.pass_over(Some(ahead.unsigned_abs()))?;
                Ok(self.pos)
            }
            _ => Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "a tar stream is passed over forwards only",
            )),
        }
    }
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
        index(&archive[..], &mut copy, &mut spool).unwrap();
        assert_eq!(copy, archive);
        assert_eq!(spool.count(), 1);
    }

    /// An archive with every kind of entry the index meets: content sizes around the
    /// 512-byte blocks, GNU long names and link targets, a PAX path, links, folders,
    /// and record padding after the end.
    fn mixed_archive() -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        let mut dir = tar::Header::new_gnu();
        dir.set_entry_type(tar::EntryType::Directory);
        dir.set_mode(0o755);
        dir.set_size(0);
        builder
            .append_data(&mut dir, "./dir/", io::empty())
            .unwrap();
        for (i, size) in [0usize, 1, 511, 512, 513, 65_536, 1_000_003]
            .iter()
            .enumerate()
        {
            let data: Vec<u8> = (0..*size).map(|b| (b * 7 + i) as u8).collect();
            let mut h = tar::Header::new_gnu();
            h.set_size(*size as u64);
            h.set_mode(0o644);
            h.set_mtime(1_764_000_000 + i as u64);
            builder
                .append_data(&mut h, format!("./dir/file{i}"), &data[..])
                .unwrap();
        }
        let long = format!("./dir/{}/long.txt", "n".repeat(150));
        let mut h = tar::Header::new_gnu();
        h.set_size(3);
        h.set_mode(0o600);
        builder.append_data(&mut h, &long, &b"abc"[..]).unwrap();
        builder
            .append_pax_extensions([("path", &b"./dir/pax named.txt"[..])])
            .unwrap();
        let mut h = tar::Header::new_ustar();
        h.set_size(4);
        h.set_mode(0o644);
        builder
            .append_data(&mut h, "./dir/plain", &b"wxyz"[..])
            .unwrap();
        let mut link = tar::Header::new_gnu();
        link.set_entry_type(tar::EntryType::Symlink);
        link.set_size(0);
        link.set_mode(0o777);
        builder
            .append_link(
                &mut link,
                "./dir/symlink",
                format!("{}/target", "t".repeat(120)),
            )
            .unwrap();
        let mut hard = tar::Header::new_gnu();
        hard.set_entry_type(tar::EntryType::Link);
        hard.set_size(0);
        hard.set_mode(0o644);
        builder
            .append_link(&mut hard, "./dir/hardlink", "./dir/file3")
            .unwrap();
        let mut archive = builder.into_inner().unwrap();
        archive.extend(std::iter::repeat_n(0u8, 10 << 10));
        archive
    }

    /// What reading every entry's content through the tar crate finds.
    fn read_entry_by_entry(archive: &[u8]) -> Vec<Entry> {
        let mut archive = tar::Archive::new(archive);
        let mut found = Vec::new();
        for entry in archive.entries().unwrap() {
            found.push(describe(&mut entry.unwrap()).unwrap());
        }
        found
    }

    #[test]
    fn passing_over_contents_finds_what_reading_them_finds() {
        let archive = mixed_archive();
        let expected = read_entry_by_entry(&archive);
        assert_eq!(expected.len(), 12);
        assert!(expected.iter().any(|e| e.path == "./dir/pax named.txt"));
        assert!(expected.iter().any(|e| e.path.len() > 150));
        for capacity in [1, 7, 512, 4096, 1 << 20] {
            let mut spool = EntrySpool::new().unwrap();
            let mut copy = Vec::new();
            let reader = io::BufReader::with_capacity(capacity, &archive[..]);
            index(reader, &mut copy, &mut spool).unwrap();
            assert!(copy == archive, "every byte passed on, buffer {capacity}");
            assert_eq!(spool.into_entries().unwrap(), expected, "buffer {capacity}");
        }
    }

    /// Where the content of the entry named `name` (9 bytes) starts in `archive`.
    fn content_of(archive: &[u8], name: &[u8; 9]) -> usize {
        archive
            .windows(9)
            .position(|w| w == name)
            .expect("the entry's header")
            + 512
    }

    /// The error of indexing `archive` cut after `cut` bytes.
    fn cut_error(archive: &[u8], cut: usize) -> io::Error {
        let mut spool = EntrySpool::new().unwrap();
        index(&archive[..cut], io::sink(), &mut spool).unwrap_err()
    }

    #[test]
    fn a_stream_cut_inside_a_file_names_the_file() {
        let archive = mixed_archive();
        // file6 (1,000,003 bytes) is the last big one: cut 1,000 bytes into it.
        let start = content_of(&archive, b"dir/file6");
        for cut in [start, start + 1000, start + 1_000_002] {
            let err = cut_error(&archive, cut);
            assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof, "{err}");
            let told = format!(
                "tar entry `dir/file6` announces 1000003 bytes but the stream ends after {}",
                cut - start
            );
            assert_eq!(err.to_string(), told);
        }
    }

    #[test]
    fn a_stream_cut_in_the_padding_after_a_file_says_so() {
        let archive = mixed_archive();
        // file1 holds 1 byte, then 511 bytes of padding: cut 100 bytes into them.
        let err = cut_error(&archive, content_of(&archive, b"dir/file1") + 100);
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof, "{err}");
        assert_eq!(
            err.to_string(),
            "the tar stream ends inside an entry's data or padding"
        );
    }

    #[test]
    fn garbage_is_an_error() {
        let mut spool = EntrySpool::new().unwrap();
        let garbage = vec![0x41u8; 4096];
        assert!(index(&garbage[..], io::sink(), &mut spool).is_err());
    }
}

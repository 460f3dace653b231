//! Reads a pg_dump custom-format archive (`pg_dump --format=custom --compress=0`) as it
//! flows and counts the rows of every table's data in it.
//!
//! The archive is a header, a table of contents (one entry per object: its dump ID,
//! kind such as `TABLE DATA`, schema and name), then one data block per entry that has
//! data, in dump ID order of the dump, each a run of length-prefixed chunks. A `TABLE
//! DATA` block holds the table's `COPY` text, one line per row (newlines inside values
//! are escaped as `\n`), so its rows are its newlines. Counting them here gives the
//! rows of the dump itself, in the dump's own snapshot, without asking the server to
//! scan every table a second time.
//!
//! The layout follows PostgreSQL's `pg_backup_archiver.c` (`ReadHead`, `ReadToc`) and
//! `pg_backup_custom.c` (blocks and chunks) for archive versions 1.12 (PostgreSQL 9.x)
//! to 1.16 (PostgreSQL 17). Anything else, or anything that does not add up, is an
//! error: the caller then records no counts rather than wrong ones.

use std::collections::{BTreeMap, HashMap};
use std::io::{self, BufRead, BufReader, Read};

use crate::pipeline::hash::copy_large;

/// Archive versions as pg_dump numbers them: (major, minor, revision).
type Version = (u8, u8, u8);
const OLDEST: Version = (1, 12, 0);
const NEWEST: Version = (1, 16, 0);
/// `archCustom` in pg_backup.h.
const FORMAT_CUSTOM: u8 = 1;
/// Block types of the custom format.
const BLOCK_DATA: u8 = 1;
const BLOCK_BLOBS: u8 = 3;
/// Larger values are not an int of a sane archive (the chunk length pg_dump writes is
/// at most its 4 KiB..1 MiB buffers; strings are SQL text).
const MAX_LEN: i64 = 1 << 30;
/// How much of the stream is read (and passed on) at once.
const READ_BLOCK: usize = 256 << 10;

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("reading the dump: {0}")]
    Io(#[from] io::Error),
    #[error("not a pg_dump custom-format archive")]
    NotCustomFormat,
    #[error("archive version {0}.{1}.{2} is not one bk reads (1.12 to 1.16)")]
    Version(u8, u8, u8),
    #[error("the archive's data is compressed (bk dumps with --compress=0)")]
    Compressed,
    #[error("the archive does not add up: {0}")]
    Malformed(String),
}

fn malformed(what: impl Into<String>) -> ArchiveError {
    ArchiveError::Malformed(what.into())
}

/// Reads the whole archive from `input` and returns `schema.table -> rows` for every
/// `TABLE DATA` entry. Everything is read, to the end, whatever happens to the counts:
/// `input` is usually a tee that also feeds the backup (it is read in large blocks).
/// The outer error is the stream's (reading it or passing it on failed: the backup
/// fails); the inner one is the archive's (the backup goes on without counts).
pub fn count_rows<R: Read>(input: R) -> io::Result<Result<BTreeMap<String, u64>, ArchiveError>> {
    let mut input = BufReader::with_capacity(READ_BLOCK, input);
    let counted = Counter::new(&mut input).read_archive();
    if let Err(ArchiveError::Io(e)) = &counted {
        if e.kind() != io::ErrorKind::UnexpectedEof {
            return Err(io::Error::new(e.kind(), e.to_string()));
        }
    }
    // Past a problem with the archive, the rest of the stream still goes to the backup.
    copy_large(&mut input, &mut io::sink())?;
    Ok(counted)
}

struct Counter<R> {
    input: R,
    version: Version,
    int_size: usize,
    off_size: usize,
}

/// What the table of contents says about an entry with data.
struct TocEntry {
    desc: String,
    name: String,
}

impl<R: BufRead> Counter<R> {
    fn new(input: R) -> Self {
        Counter {
            input,
            version: (0, 0, 0),
            int_size: 4,
            off_size: 8,
        }
    }

    fn read_archive(&mut self) -> Result<BTreeMap<String, u64>, ArchiveError> {
        self.read_header()?;
        let toc = self.read_toc()?;
        let mut counts = BTreeMap::new();
        let mut seen = std::collections::HashSet::new();
        while let Some(kind) = self.read_byte_or_end()? {
            let id = self.read_int()?;
            if !seen.insert(id) {
                return Err(malformed(format!("data block {id} appears twice")));
            }
            let entry = toc
                .get(&id)
                .ok_or_else(|| malformed(format!("data block {id} has no entry in the TOC")))?;
            match kind {
                BLOCK_DATA => {
                    let rows = self.read_chunks(true)?;
                    if entry.desc == "TABLE DATA" {
                        counts.insert(entry.name.clone(), rows);
                    }
                }
                BLOCK_BLOBS => loop {
                    let oid = self.read_int()?;
                    if oid == 0 {
                        break;
                    }
                    self.read_chunks(false)?;
                },
                other => return Err(malformed(format!("unknown block type {other}"))),
            }
        }
        // pg_dump writes a block for every entry with data; an archive that ends
        // before all of them were seen was cut short.
        let missing = toc.keys().filter(|id| !seen.contains(*id)).count();
        if missing > 0 {
            return Err(malformed(format!(
                "the archive ends before the data of {missing} entries"
            )));
        }
        Ok(counts)
    }

    /// `ReadHead`: magic, version, sizes, format, compression, creation time, names.
    fn read_header(&mut self) -> Result<(), ArchiveError> {
        let mut magic = [0u8; 5];
        self.input.read_exact(&mut magic)?;
        if &magic != b"PGDMP" {
            return Err(ArchiveError::NotCustomFormat);
        }
        let (major, minor) = (self.read_byte()?, self.read_byte()?);
        let revision = self.read_byte()?;
        self.version = (major, minor, revision);
        if self.version < OLDEST || self.version > NEWEST {
            return Err(ArchiveError::Version(major, minor, revision));
        }
        self.int_size = usize::from(self.read_byte()?);
        self.off_size = usize::from(self.read_byte()?);
        if !(1..=8).contains(&self.int_size) || !(1..=16).contains(&self.off_size) {
            return Err(malformed("integer sizes out of range"));
        }
        if self.read_byte()? != FORMAT_CUSTOM {
            return Err(ArchiveError::NotCustomFormat);
        }
        let compressed = if self.version >= (1, 15, 0) {
            self.read_byte()? != 0
        } else {
            self.read_int()? != 0
        };
        if compressed {
            return Err(ArchiveError::Compressed);
        }
        for _ in 0..7 {
            self.read_int()?; // creation time: sec, min, hour, mday, mon, year, isdst
        }
        self.read_str()?; // database name
        self.read_str()?; // server version
        self.read_str()?; // pg_dump version
        Ok(())
    }

    /// `ReadToc`, keeping the entries that have data.
    fn read_toc(&mut self) -> Result<HashMap<i64, TocEntry>, ArchiveError> {
        let count = self.read_int()?;
        if !(0..=MAX_LEN).contains(&count) {
            return Err(malformed(format!("{count} TOC entries")));
        }
        let mut toc = HashMap::new();
        for _ in 0..count {
            let id = self.read_int()?;
            if id <= 0 {
                return Err(malformed(format!("TOC entry ID {id}")));
            }
            let had_dumper = self.read_int()? != 0;
            self.read_str()?; // table OID
            self.read_str()?; // OID
            let tag = self.read_str()?.unwrap_or_default();
            let desc = self.read_str()?.unwrap_or_default();
            self.read_int()?; // section
            self.read_str()?; // definition
            self.read_str()?; // drop statement
            self.read_str()?; // COPY statement
            let namespace = self.read_str()?;
            self.read_str()?; // tablespace
            if self.version >= (1, 14, 0) {
                self.read_str()?; // table access method
            }
            if self.version >= (1, 16, 0) {
                self.read_int()?; // relkind
            }
            self.read_str()?; // owner
            self.read_str()?; // "with OIDs", always "false"
            while self.read_str()?.is_some() {} // dependencies, ended by a null string
            self.read_offset()?; // where the data is, when the file was seekable
            if had_dumper {
                let name = match namespace {
                    Some(ns) if !ns.is_empty() => format!("{ns}.{tag}"),
                    _ => tag,
                };
                toc.insert(id, TocEntry { desc, name });
            }
        }
        Ok(toc)
    }

    /// Chunks of one data block, up to the zero length that ends them; with `count`,
    /// the rows in them: the lines before the `\.` line that ends a COPY's data (which
    /// pg_dump writes into the archive, followed by blank lines).
    /// pg_dump writes a chunk per `COPY` row with `--compress=0` (4 million chunks for
    /// a 4-million-row table): the chunks that lie whole in the read buffer are taken
    /// from it in one pass, length and bytes where they are, never copied; only a chunk
    /// cut by the buffer's end goes through `read_int` and a refill.
    fn read_chunks(&mut self, count: bool) -> Result<u64, ArchiveError> {
        let mut lines = 0u64;
        let mut tail = Tail::default();
        let size = self.int_size + 1;
        loop {
            let buffered = self.input.fill_buf()?;
            let mut pos = 0;
            let mut ended = false;
            while let Some(header) = buffered.get(pos..pos + size) {
                let len = chunk_len(decode_int(header)?)?;
                if len == 0 {
                    pos += size;
                    ended = true;
                    break;
                }
                let Some(data) = buffered.get(pos + size..pos + size + len) else {
                    break;
                };
                if count {
                    lines += count_newlines(data);
                    tail.push(data);
                }
                pos += size + len;
            }
            self.input.consume(pos);
            if ended {
                return Ok(lines - tail.terminator_lines());
            }
            // The next chunk (or its length) runs past the buffer.
            let len = chunk_len(self.read_int()?)?;
            if len == 0 {
                return Ok(lines - tail.terminator_lines());
            }
            let mut left = len;
            while left > 0 {
                let available = self.input.fill_buf()?;
                if available.is_empty() {
                    return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into());
                }
                let here = &available[..left.min(available.len())];
                if count {
                    lines += count_newlines(here);
                    tail.push(here);
                }
                let n = here.len();
                self.input.consume(n);
                left -= n;
            }
        }
    }

    fn read_byte(&mut self) -> Result<u8, ArchiveError> {
        let mut b = [0u8; 1];
        self.input.read_exact(&mut b)?;
        Ok(b[0])
    }

    /// The next byte, or `None` at a clean end of the archive.
    fn read_byte_or_end(&mut self) -> Result<Option<u8>, ArchiveError> {
        let mut b = [0u8; 1];
        loop {
            match self.input.read(&mut b) {
                Ok(0) => return Ok(None),
                Ok(_) => return Ok(Some(b[0])),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// `ReadInt`: a sign byte, then `int_size` bytes, least significant first.
    fn read_int(&mut self) -> Result<i64, ArchiveError> {
        let mut bytes = [0u8; 9];
        let size = self.int_size + 1;
        let buffered = self.input.fill_buf()?;
        if buffered.len() >= size {
            bytes[..size].copy_from_slice(&buffered[..size]);
            self.input.consume(size);
        } else {
            self.input.read_exact(&mut bytes[..size])?;
        }
        decode_int(&bytes[..size])
    }

    /// `ReadStr`: a length (negative for a null string), then that many bytes.
    fn read_str(&mut self) -> Result<Option<String>, ArchiveError> {
        let len = self.read_int()?;
        if len < 0 {
            return Ok(None);
        }
        if len > MAX_LEN {
            return Err(malformed(format!("string of {len} bytes")));
        }
        let mut bytes = Vec::new();
        (&mut self.input).take(len as u64).read_to_end(&mut bytes)?;
        if bytes.len() as u64 != len as u64 {
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into());
        }
        Ok(Some(String::from_utf8_lossy(&bytes).into_owned()))
    }

    /// `ReadOffset`: a flag byte, then `off_size` bytes.
    fn read_offset(&mut self) -> Result<(), ArchiveError> {
        let mut bytes = [0u8; 17];
        self.input.read_exact(&mut bytes[..=self.off_size])?;
        Ok(())
    }
}

/// An int as `ReadInt` reads it: the sign byte, then the value's bytes (all of
/// `bytes` after the first), least significant first.
#[inline]
fn decode_int(bytes: &[u8]) -> Result<i64, ArchiveError> {
    let (sign, value_bytes) = bytes
        .split_first()
        .ok_or_else(|| malformed("empty integer"))?;
    let value = match <[u8; 4]>::try_from(value_bytes) {
        // Every pg_dump writes 4-byte ints (sizeof(int)); once per row, so it counts.
        Ok(four) => i64::from(u32::from_le_bytes(four)),
        Err(_) => {
            let mut value: i64 = 0;
            for (i, b) in value_bytes.iter().enumerate() {
                value |= i64::from(*b) << (8 * i);
            }
            if value < 0 {
                return Err(malformed("integer out of range"));
            }
            value
        }
    };
    Ok(if *sign != 0 { -value } else { value })
}

/// A data chunk's length, checked: 0 ends the block.
#[inline]
fn chunk_len(len: i64) -> Result<usize, ArchiveError> {
    match usize::try_from(len) {
        Ok(len) if len as u64 <= MAX_LEN as u64 => Ok(len),
        _ => Err(bad_chunk_len(len)),
    }
}

#[cold]
fn bad_chunk_len(len: i64) -> ArchiveError {
    malformed(format!("data chunk of {len} bytes"))
}

/// Newlines in `data`, counted in byte-wide lanes (255 bytes at most per lane sum), which
/// the compiler turns into wide compares; a plain `filter().count()` widens every byte
/// to a 64-bit lane and ran at a third of the speed.
fn count_newlines(data: &[u8]) -> u64 {
    data.chunks(255)
        .map(|block| {
            let n = block.iter().fold(0u8, |n, &b| n + u8::from(b == b'\n'));
            u64::from(n)
        })
        .sum()
}

/// The last bytes of a data block, to find its end-of-data line.
#[derive(Default)]
struct Tail {
    bytes: [u8; Tail::KEEP],
    len: usize,
    /// Whether bytes were dropped from the front (the block is longer than the tail).
    cut: bool,
}

impl Tail {
    const KEEP: usize = 32;

    fn push(&mut self, data: &[u8]) {
        if data.len() >= Self::KEEP {
            self.bytes.copy_from_slice(&data[data.len() - Self::KEEP..]);
            self.cut |= data.len() > Self::KEEP || self.len > 0;
            self.len = Self::KEEP;
            return;
        }
        let keep = self.len.min(Self::KEEP - data.len());
        self.cut |= keep < self.len;
        self.bytes.copy_within(self.len - keep..self.len, 0);
        self.bytes[keep..keep + data.len()].copy_from_slice(data);
        self.len = keep + data.len();
    }

    /// The newlines of a final `\.` line and the blank lines after it (none if the
    /// block does not end that way). A `\.` inside a value is written `\\.`, so a
    /// line that is exactly `\.` is the end marker.
    fn terminator_lines(&self) -> u64 {
        let text = &self.bytes[..self.len];
        let body_len = text.iter().rposition(|&b| b != b'\n').map_or(0, |i| i + 1);
        let newlines = (text.len() - body_len) as u64;
        let body = &text[..body_len];
        let Some(before) = body.strip_suffix(b"\\.") else {
            return 0;
        };
        let own_line = match before.last() {
            Some(b) => *b == b'\n',
            None => !self.cut,
        };
        if own_line && newlines > 0 {
            newlines
        } else {
            0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes archives the way pg_dump does (`WriteInt`, `WriteStr`), for the tests.
    struct Writer {
        out: Vec<u8>,
        version: Version,
    }

    impl Writer {
        fn int(&mut self, v: i64) {
            self.out.push(u8::from(v < 0));
            self.out
                .extend_from_slice(&(v.unsigned_abs() as u32).to_le_bytes());
        }
        fn str(&mut self, s: Option<&str>) {
            match s {
                None => self.int(-1),
                Some(s) => {
                    self.int(s.len() as i64);
                    self.out.extend_from_slice(s.as_bytes());
                }
            }
        }
        fn header(version: Version) -> Writer {
            let mut w = Writer {
                out: b"PGDMP".to_vec(),
                version,
            };
            w.out
                .extend_from_slice(&[version.0, version.1, version.2, 4, 8, 1]);
            if version >= (1, 15, 0) {
                w.out.push(0);
            } else {
                w.int(0);
            }
            for v in [1, 2, 3, 30, 10, 126, 0] {
                w.int(v);
            }
            for s in ["shop", "15.18", "15.18"] {
                w.str(Some(s));
            }
            w
        }
        fn entry(&mut self, id: i64, desc: &str, ns: &str, tag: &str, data: bool) {
            self.int(id);
            self.int(i64::from(data));
            self.str(Some("0"));
            self.str(Some("0"));
            self.str(Some(tag));
            self.str(Some(desc));
            self.int(2);
            self.str(Some(""));
            self.str(Some(""));
            self.str(Some("COPY x FROM stdin;\n"));
            self.str(Some(ns));
            self.str(Some(""));
            if self.version >= (1, 14, 0) {
                self.str(Some("heap"));
            }
            if self.version >= (1, 16, 0) {
                self.int(i64::from(b'r'));
            }
            self.str(Some("postgres"));
            self.str(Some("false"));
            self.str(Some("3"));
            self.str(None);
            self.out.push(2); // offset not set
            self.out.extend_from_slice(&[0; 8]);
        }
        fn data(&mut self, id: i64, chunks: &[&[u8]]) {
            self.out.push(BLOCK_DATA);
            self.int(id);
            for c in chunks {
                self.int(c.len() as i64);
                self.out.extend_from_slice(c);
            }
            self.int(0);
        }
    }

    fn shop(version: Version) -> Vec<u8> {
        let mut w = Writer::header(version);
        w.int(4);
        w.entry(1, "TABLE", "public", "orders", false);
        w.entry(2, "TABLE DATA", "public", "orders", true);
        w.entry(3, "TABLE DATA", "billing", "empty", true);
        w.entry(4, "BLOBS", "", "BLOBS", true);
        w.data(2, &[b"1\ta\n2\tb\n", b"3\tline\\nbreak\n", b"\\.\n\n\n"]);
        w.data(3, &[b"\\.\n\n\n"]);
        w.out.push(BLOCK_BLOBS);
        w.int(4);
        w.int(16384);
        w.int(3);
        w.out.extend_from_slice(b"\n\n\n");
        w.int(0);
        w.int(0);
        w.out
    }

    #[test]
    fn counts_the_rows_of_every_table_in_each_version() {
        for version in [(1, 12, 0), (1, 14, 0), (1, 15, 0), (1, 16, 0)] {
            let counts = count_rows(&shop(version)[..])
                .expect("the stream reads")
                .expect("the archive reads");
            let expected = BTreeMap::from([
                ("billing.empty".to_string(), 0),
                ("public.orders".to_string(), 3),
            ]);
            assert_eq!(counts, expected, "version {version:?}");
        }
    }

    /// Chunks cut anywhere by the read buffer's end (a pipe hands over what it has)
    /// count the same as chunks that lie whole in it.
    #[test]
    fn counts_the_same_whatever_the_reads_return() {
        struct Trickle<'a> {
            data: &'a [u8],
            step: usize,
        }
        impl Read for Trickle<'_> {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                let n = buf.len().min(self.step).min(self.data.len());
                buf[..n].copy_from_slice(&self.data[..n]);
                self.data = &self.data[n..];
                Ok(n)
            }
        }
        let archive = shop((1, 14, 0));
        let whole = count_rows(&archive[..]).expect("reads").expect("counts");
        for step in 1..=40 {
            let counts = count_rows(Trickle {
                data: &archive,
                step,
            })
            .expect("reads")
            .expect("counts");
            assert_eq!(counts, whole, "reads of {step} bytes");
        }
    }

    #[test]
    fn a_cut_archive_or_another_format_is_an_error() {
        let full = shop((1, 14, 0));
        // The ends of the first two blocks are clean places to stop, but not the end:
        // the empty table's block is 20 bytes, the large objects' 29.
        let (second, third) = (full.len() - 49, full.len() - 29);
        for cut in [3, 40, second, third, full.len() - 30, full.len() - 1] {
            assert!(
                matches!(count_rows(&full[..cut]), Ok(Err(_))),
                "cut at {cut}"
            );
        }
        assert!(matches!(
            count_rows(&b"--\n-- PostgreSQL database dump\n"[..]),
            Ok(Err(ArchiveError::NotCustomFormat))
        ));
        let mut newer = full.clone();
        newer[6] = 17;
        assert!(matches!(
            count_rows(&newer[..]),
            Ok(Err(ArchiveError::Version(1, 17, 0)))
        ));
    }

    #[test]
    fn reads_the_whole_input_even_when_it_gives_up() {
        let mut text = std::io::Cursor::new(vec![b'x'; 100_000]);
        assert!(matches!(count_rows(&mut text), Ok(Err(_))));
        assert_eq!(text.position(), 100_000);
    }

    #[test]
    fn a_failing_stream_is_the_stream_s_error_not_the_archive_s() {
        struct Failing(Vec<u8>);
        impl Read for Failing {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                if self.0.is_empty() {
                    return Err(io::Error::new(io::ErrorKind::ConnectionReset, "gone"));
                }
                let n = buf.len().min(self.0.len());
                buf[..n].copy_from_slice(&self.0[..n]);
                self.0.drain(..n);
                Ok(n)
            }
        }
        let mut cut = shop((1, 14, 0));
        cut.truncate(cut.len() / 2);
        let err = count_rows(Failing(cut)).expect_err("the stream failed");
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
    }

    #[test]
    fn only_a_line_that_is_exactly_the_end_marker_ends_the_rows() {
        let rows = |chunks: &[&[u8]]| {
            let mut tail = Tail::default();
            let mut lines = 0;
            for c in chunks {
                lines += c.iter().filter(|&&b| b == b'\n').count() as u64;
                tail.push(c);
            }
            lines - tail.terminator_lines()
        };
        assert_eq!(rows(&[b"a\n", b"b\n", b"\\.\n\n\n"]), 2);
        assert_eq!(rows(&[b"a\nb\n\\.\n"]), 2);
        assert_eq!(rows(&[b"\\.\n\n"]), 0);
        // Without an end marker every line is a row; a value ending in a backslash and a
        // dot is escaped and is a row too.
        assert_eq!(rows(&[b"a\nb\n"]), 2);
        assert_eq!(rows(&[b"x\\\\.\n"]), 1);
        // The marker split over chunks, after a long row.
        let long = vec![b'y'; 100_000];
        assert_eq!(rows(&[&long, b"\n\\", b".\n", b"\n\n"]), 1);
    }
}

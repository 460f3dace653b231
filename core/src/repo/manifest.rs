//! The manifest: what a backup contains, stored encrypted next to the payload as
//! `age(zstd(JSON lines))`. Line 1 is the header (job, source, sizes, the plaintext
//! hash, timings, tool versions, warnings); each further line is one entry of a
//! directory backup, in the order the entries appear in the tar stream.
//!
//! Entries are spooled to an unlinked temporary file while a backup runs, so memory
//! does not grow with the number of files.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufRead, BufWriter, Read, Seek, Write};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::id::BackupId;

pub const FORMAT: &str = "bk-manifest";
pub const VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ManifestHeader {
    pub format: String,
    pub version: u32,
    pub backup_id: BackupId,
    pub job: String,
    pub kind: String,
    pub host: String,
    /// What was dumped: the directory path, the command, the database.
    pub source: BTreeMap<String, String>,
    pub started: DateTime<Utc>,
    pub finished: DateTime<Utc>,
    /// Size and BLAKE3 of the plaintext dump (what the source wrote).
    pub source_size: u64,
    pub source_blake3: String,
    pub zstd_level: i32,
    /// `bk`, and the source tools' own `--version` lines.
    pub tool_versions: BTreeMap<String, String>,
    /// Non-fatal problems the source reported (e.g. tar's "file changed as we read it").
    #[serde(default)]
    pub warnings: Vec<String>,
    /// Number of entry lines that follow the header.
    pub entries: u64,
    /// Kind-specific facts (replica state, row counts…), added by later sources.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub details: BTreeMap<String, serde_json::Value>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryType {
    File,
    Dir,
    Symlink,
    Hardlink,
    Char,
    Block,
    Fifo,
    Other,
}

/// One entry of a directory backup, as read from the tar stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The path inside the archive (lossy UTF-8 for display; see `path_hex`).
    pub path: String,
    /// The exact path bytes, hex-encoded, only when they are not valid UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_hex: Option<String>,
    #[serde(rename = "type")]
    pub kind: EntryType,
    pub size: u64,
    pub mode: u32,
    pub mtime: u64,
    /// Target of a symlink or hard link.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
    /// BLAKE3 of a regular file's content.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blake3: Option<String>,
}

impl Entry {
    /// The exact path bytes of the entry.
    pub fn path_bytes(&self) -> Vec<u8> {
        match &self.path_hex {
            Some(h) => hex::decode(h).unwrap_or_else(|_| self.path.as_bytes().to_vec()),
            None => self.path.as_bytes().to_vec(),
        }
    }

    /// Builds `path`/`path_hex` from raw bytes.
    pub fn set_path(&mut self, raw: &[u8]) {
        match std::str::from_utf8(raw) {
            Ok(s) => {
                self.path = s.to_string();
                self.path_hex = None;
            }
            Err(_) => {
                self.path = String::from_utf8_lossy(raw).into_owned();
                self.path_hex = Some(hex::encode(raw));
            }
        }
    }
}

/// Collects entries on disk while a backup streams.
pub struct EntrySpool {
    out: BufWriter<File>,
    count: u64,
}

impl EntrySpool {
    pub fn new() -> io::Result<Self> {
        Ok(EntrySpool {
            out: BufWriter::new(tempfile::tempfile()?),
            count: 0,
        })
    }

    pub fn push(&mut self, entry: &Entry) -> io::Result<()> {
        serde_json::to_writer(&mut self.out, entry)?;
        self.out.write_all(b"\n")?;
        self.count += 1;
        Ok(())
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    /// The entries pushed so far, read back (for tests and the fuzz targets).
    pub fn into_entries(self) -> io::Result<Vec<Entry>> {
        let mut file = self.out.into_inner().map_err(|e| e.into_error())?;
        file.rewind()?;
        io::BufReader::new(file)
            .lines()
            .map(|line| Ok(serde_json::from_str(&line?)?))
            .collect()
    }

    /// The whole manifest, header first, as a reader to feed into the pipeline.
    pub fn into_manifest(self, mut header: ManifestHeader) -> io::Result<impl Read + Send> {
        header.entries = self.count;
        let mut file = self.out.into_inner().map_err(|e| e.into_error())?;
        file.rewind()?;
        let mut first = serde_json::to_vec(&header)?;
        first.push(b'\n');
        Ok(io::Cursor::new(first).chain(file))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("reading the manifest: {0}")]
    Io(#[from] io::Error),
    #[error("manifest line {line} is not valid: {source}")]
    Parse {
        line: u64,
        source: serde_json::Error,
    },
    #[error("the manifest is not a bk manifest version {VERSION} (format `{format}`, version {version})")]
    Format { format: String, version: u32 },
    #[error("the manifest announces {announced} entries but holds {found}")]
    Count { announced: u64, found: u64 },
}

/// Reads a decrypted, decompressed manifest: the header, then entries one at a time.
pub struct ManifestReader<R> {
    input: R,
    pub header: ManifestHeader,
    line: u64,
    seen: u64,
    buf: String,
}

impl<R: BufRead> ManifestReader<R> {
    pub fn new(mut input: R) -> Result<Self, ManifestError> {
        let mut buf = String::new();
        input.read_line(&mut buf)?;
        let header: ManifestHeader = serde_json::from_str(&buf)
            .map_err(|source| ManifestError::Parse { line: 1, source })?;
        if header.format != FORMAT || header.version != VERSION {
            return Err(ManifestError::Format {
                format: header.format,
                version: header.version,
            });
        }
        Ok(ManifestReader {
            input,
            header,
            line: 1,
            seen: 0,
            buf,
        })
    }

    /// The next entry, or `None` after the last one (checked against the header's count).
    pub fn next_entry(&mut self) -> Result<Option<Entry>, ManifestError> {
        self.buf.clear();
        if self.input.read_line(&mut self.buf)? == 0 {
            if self.seen != self.header.entries {
                return Err(ManifestError::Count {
                    announced: self.header.entries,
                    found: self.seen,
                });
            }
            return Ok(None);
        }
        self.line += 1;
        self.seen += 1;
        let entry = serde_json::from_str(&self.buf).map_err(|source| ManifestError::Parse {
            line: self.line,
            source,
        })?;
        Ok(Some(entry))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn header() -> ManifestHeader {
        ManifestHeader {
            format: FORMAT.into(),
            version: VERSION,
            backup_id: BackupId::new(Utc::now()),
            job: "media".into(),
            kind: "directory".into(),
            host: "local".into(),
            source: BTreeMap::from([("path".into(), "/srv/media".into())]),
            started: Utc::now(),
            finished: Utc::now(),
            source_size: 3,
            source_blake3: "ab".into(),
            zstd_level: 3,
            tool_versions: BTreeMap::new(),
            warnings: vec![],
            entries: 0,
            details: BTreeMap::new(),
        }
    }

    #[test]
    fn spool_round_trips_through_the_reader() {
        let mut spool = EntrySpool::new().unwrap();
        let mut e = Entry {
            path: String::new(),
            path_hex: None,
            kind: EntryType::File,
            size: 3,
            mode: 0o644,
            mtime: 1,
            link: None,
            blake3: Some("cd".into()),
        };
        e.set_path(b"caf\xc3\xa9 \xff.txt");
        spool.push(&e).unwrap();
        let mut bytes = Vec::new();
        spool
            .into_manifest(header())
            .unwrap()
            .read_to_end(&mut bytes)
            .unwrap();
        let mut r = ManifestReader::new(io::Cursor::new(bytes)).unwrap();
        assert_eq!(r.header.entries, 1);
        let back = r.next_entry().unwrap().unwrap();
        assert_eq!(back.path_bytes(), b"caf\xc3\xa9 \xff.txt");
        assert!(r.next_entry().unwrap().is_none());
    }

    #[test]
    fn a_missing_entry_is_detected() {
        let mut h = header();
        h.entries = 2;
        let mut bytes = serde_json::to_vec(&h).unwrap();
        bytes.push(b'\n');
        let mut r = ManifestReader::new(io::Cursor::new(bytes)).unwrap();
        assert!(matches!(
            r.next_entry(),
            Err(ManifestError::Count {
                announced: 2,
                found: 0
            })
        ));
    }
}

//! The restore data path, the backup's in reverse:
//!
//! ```text
//! stored object ─▶ hash ─▶ age decrypt (decrypt.rs) ═▶ zstd decode ─▶ hash ═▶ sink
//! └──── decrypt thread ──────────┘  └ decompress thread ┘  └ caller
//! ```
//!
//! Errors raised while reading (a failed age chunk, a corrupt zstd frame, a short
//! object) are tagged as damage to the named object, so the operator hears "payload
//! X is damaged", never a bare I/O error; errors writing the sink stay I/O errors.

use std::fmt;
use std::io::{self, BufReader, Read};
use std::sync::{Arc, Mutex};

use crate::keys::Identity;
use crate::pipeline::compress;
use crate::pipeline::handoff::{self, ReadAhead};
use crate::pipeline::hash::Digest;

use super::RestoreError;

/// Blocks waiting at each hand-off between the restore's threads.
const HANDOFF_DEPTH: usize = 4;

/// Marks an I/O error as "the stored object is damaged".
#[derive(Debug)]
pub struct Damage(pub String);

impl fmt::Display for Damage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Damage {}

/// If `e` (or what it wraps) is damage, the reason.
pub fn damage_of(e: &io::Error) -> Option<String> {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<Damage>())
        .map(|d| d.0.clone())
}

struct Labeled<R> {
    inner: R,
    stage: &'static str,
}

impl<R: Read> Read for Labeled<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf).map_err(|e| {
            if damage_of(&e).is_some() || super::is_stopped(&e) {
                e
            } else {
                io::Error::new(e.kind(), Damage(format!("{}: {e}", self.stage)))
            }
        })
    }
}

/// A running digest that the reader updates and the caller reads at the end.
#[derive(Clone, Default)]
pub struct SharedDigest(Arc<Mutex<(blake3::Hasher, u64)>>);

impl SharedDigest {
    pub fn get(&self) -> Digest {
        let state = self.0.lock().unwrap_or_else(|p| p.into_inner());
        Digest {
            size: state.1,
            blake3: state.0.finalize().to_hex().to_string(),
        }
    }
}

struct Hashed<R> {
    inner: R,
    digest: SharedDigest,
}

impl<R: Read> Read for Hashed<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let mut state = self.digest.0.lock().unwrap_or_else(|p| p.into_inner());
        state.0.update(&buf[..n]);
        state.1 += n as u64;
        Ok(n)
    }
}

/// A plaintext reader over a stored object, with the digests of both sides.
pub struct Unsealed {
    pub reader: Box<dyn Read + Send>,
    pub cipher: SharedDigest,
    pub plain: SharedDigest,
}

/// Wraps a stored object's bytes in the decrypting, decompressing, hashing chain.
pub fn unseal(
    raw: Box<dyn Read + Send>,
    key: &str,
    identities: &[Identity],
) -> Result<Unsealed, RestoreError> {
    let cipher = SharedDigest::default();
    let plain = SharedDigest::default();
    let hashed = Hashed {
        inner: raw,
        digest: cipher.clone(),
    };
    let damaged = |reason: String| RestoreError::Damaged {
        key: key.to_string(),
        reason,
    };
    let decrypted =
        super::decrypt::decryptor(BufReader::with_capacity(1 << 20, hashed), identities).map_err(
            |e| match e {
                age::DecryptError::NoMatchingKeys => RestoreError::WrongKey {
                    key: key.to_string(),
                },
                other => damaged(format!("not a readable age file: {other}")),
            },
        )?;
    let decrypted = Labeled {
        inner: decrypted,
        stage: "age decryption failed (the object is corrupted or truncated)",
    };
    // Reading and decrypting, decompressing, and whatever the caller does with the
    // plaintext run on three threads, as the shell's `age -d | zstd -d | tar` would.
    let decrypted = ReadAhead::spawn("bk-decrypt", decrypted, handoff::BLOCK, HANDOFF_DEPTH)
        .map_err(|e| damaged(format!("cannot start the decrypting thread: {e}")))?;
    let decoded = compress::decompressor(decrypted).map_err(|e| damaged(format!("zstd: {e}")))?;
    let decoded = Labeled {
        inner: decoded,
        stage: "zstd decoding failed",
    };
    let hashed = Hashed {
        inner: decoded,
        digest: plain.clone(),
    };
    let reader = Box::new(
        ReadAhead::spawn("bk-decompress", hashed, handoff::BLOCK, HANDOFF_DEPTH)
            .map_err(|e| damaged(format!("cannot start the decompressing thread: {e}")))?,
    );
    Ok(Unsealed {
        reader,
        cipher,
        plain,
    })
}

/// Reads what is left of `reader`, so that the trailing bytes are hashed and the
/// final age chunk is authenticated.
pub fn drain(reader: &mut dyn Read) -> io::Result<()> {
    crate::pipeline::hash::copy_large(reader, &mut io::sink()).map(|_| ())
}

//! The age stage in reverse: reads a stored object's header and opens its payload.
//!
//! The header is untrusted input, and the `age` crate stays its judge: its
//! `Decryptor` parses the header, finds the identity that unwraps the file key and
//! checks the MAC, exactly as it does for the stock format. Only once it has
//! accepted the header does bk open the payload itself, for the same reason it seals
//! it itself (`pipeline::encrypt`): the crate's `StreamReader` opens each 64 KiB
//! chunk with RustCrypto's ChaCha20-Poly1305 into a fresh allocation, a quarter of a
//! restore's CPU time on the benchmark machine, where AWS-LC opens it in place in
//! about 60% of the time. To do so bk needs the file key, which the crate keeps to
//! itself: it reads the header bytes the crate consumed (the crate's unbuffered
//! parser reads exactly the header and the payload nonce, nothing more), splits the
//! stanzas with the parser the crate uses (`age_core`), asks the identities to unwrap
//! them in the crate's order, and checks the MAC again with that key.
//!
//! The payload is read as the age crate reads it: chunks of 64 KiB plus a 16-byte tag,
//! each opened with the counter and the last-chunk flag in its nonce; a chunk is the
//! last if a shorter one or the end of the object follows; an empty last chunk only
//! for an empty payload; nothing may follow the last chunk, and an object that ends
//! before it is truncated. A failed chunk is an error, never skipped.

use std::io::{self, BufRead, Read};

use age::DecryptError;
use age_core::format::{FileKey, Stanza};
use aws_lc_rs::aead::{Aad, LessSafeKey};
use aws_lc_rs::hmac;
use base64::{prelude::BASE64_STANDARD_NO_PAD, Engine};

use crate::keys::Identity;
use crate::pipeline::encrypt::{
    chunk_nonce, mac_key, payload_key, CHUNK_SIZE, HEADER_MAGIC, MAC_PREFIX, PAYLOAD_NONCE_BYTES,
    TAG_SIZE,
};

const SEALED_CHUNK: usize = CHUNK_SIZE + TAG_SIZE;
/// The encoded MAC: 32 bytes in unpadded base64.
const MAC_CHARS: usize = 43;
/// A header larger than this is refused before it is held in memory (a header with a
/// thousand SSH-RSA recipients is under 1 MiB).
const MAX_HEADER: usize = 1 << 20;

/// Reads the header and payload nonce from `input` and returns the payload's reader.
/// The errors are the age crate's: `NoMatchingKeys` when no identity opens it.
pub fn decryptor<R: BufRead>(
    mut input: R,
    identities: &[Identity],
) -> Result<Payload<R>, DecryptError> {
    let mut recorded = Recorder {
        inner: &mut input,
        bytes: Vec::new(),
    };
    age::Decryptor::new(&mut recorded)?
        .decrypt(identities.iter().map(|i| i.as_ref() as &dyn age::Identity))?;
    let key = open_header(&recorded.bytes, identities)?;
    Ok(Payload {
        inner: input,
        key,
        counter: 0,
        ended: false,
        failed: false,
        chunk: Vec::new(),
        start: 0,
        plaintext: 0,
    })
}

/// From the header bytes the age crate accepted (and the nonce after them): the
/// payload key.
fn open_header(bytes: &[u8], identities: &[Identity]) -> Result<LessSafeKey, DecryptError> {
    let tail = MAC_PREFIX.len() + 1 + MAC_CHARS + 1 + PAYLOAD_NONCE_BYTES;
    if bytes.len() < HEADER_MAGIC.len() + tail || !bytes.starts_with(HEADER_MAGIC) {
        return Err(DecryptError::InvalidHeader);
    }
    let mut rest = &bytes[HEADER_MAGIC.len()..];
    let mut stanzas = Vec::new();
    while !rest.starts_with(MAC_PREFIX) {
        let (after, stanza) = age_core::format::read::legacy_age_stanza(rest)
            .map_err(|_| DecryptError::InvalidHeader)?;
        stanzas.push(Stanza::from(stanza));
        rest = after;
    }
    if rest.len() != tail || stanzas.is_empty() {
        return Err(DecryptError::InvalidHeader);
    }
    let file_key: FileKey = identities
        .iter()
        .find_map(|i| i.unwrap_stanzas(&stanzas))
        .unwrap_or(Err(DecryptError::NoMatchingKeys))?;
    let mac_end = bytes.len() - tail + MAC_PREFIX.len();
    let encoded = &bytes[mac_end + 1..mac_end + 1 + MAC_CHARS];
    let mac = BASE64_STANDARD_NO_PAD
        .decode(encoded)
        .map_err(|_| DecryptError::InvalidHeader)?;
    hmac::verify(&mac_key(&file_key), &bytes[..mac_end], &mac)
        .map_err(|_| DecryptError::InvalidMac)?;
    payload_key(&file_key, &bytes[bytes.len() - PAYLOAD_NONCE_BYTES..])
        .ok_or(DecryptError::DecryptionFailed)
}

/// Keeps a copy of every byte read through it.
struct Recorder<R> {
    inner: R,
    bytes: Vec<u8>,
}

impl<R: Read> Read for Recorder<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.bytes.len() + buf.len() > MAX_HEADER {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the age header is larger than 1 MiB",
            ));
        }
        let n = self.inner.read(buf)?;
        self.bytes.extend_from_slice(&buf[..n]);
        Ok(n)
    }
}

/// The plaintext of an age payload, opened chunk by chunk.
pub struct Payload<R> {
    inner: R,
    key: LessSafeKey,
    /// Index of the next chunk.
    counter: u64,
    /// The last chunk has been opened.
    ended: bool,
    /// A chunk failed: every later read fails too (nothing after it is trusted).
    failed: bool,
    /// The current chunk, opened in place: plaintext in `start..plaintext` (allocated
    /// when a caller's buffer is too small to open a chunk in).
    chunk: Vec<u8>,
    start: usize,
    plaintext: usize,
}

fn broken(why: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why.into())
}

impl<R: BufRead> Payload<R> {
    /// Reads the next sealed chunk into `buf` (at least `SEALED_CHUNK` long), opens it
    /// in place and returns the plaintext's length.
    fn open_next(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.failed {
            return Err(broken("the age payload failed to open earlier"));
        }
        self.failed = true;
        let mut filled = 0;
        while filled < SEALED_CHUNK {
            match self.inner.read(&mut buf[filled..SEALED_CHUNK]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if filled == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the age payload is truncated (it ends before its last chunk)",
            ));
        }
        let last = filled < SEALED_CHUNK || self.inner.fill_buf()?.is_empty();
        let opened = self
            .key
            .open_in_place(
                chunk_nonce(self.counter, last),
                Aad::empty(),
                &mut buf[..filled],
            )
            .map_err(|_| {
                broken(format!(
                    "age payload chunk {} does not authenticate (damaged, reordered or cut short)",
                    self.counter
                ))
            })?
            .len();
        if last && opened == 0 && self.counter > 0 {
            return Err(broken("the age payload ends with an empty chunk"));
        }
        self.counter += 1;
        self.ended = last;
        self.failed = false;
        Ok(opened)
    }
}

impl<R: BufRead> Read for Payload<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        while self.start == self.plaintext {
            if self.ended {
                return Ok(0);
            }
            // A caller's buffer that holds a whole sealed chunk gets it opened in place,
            // with no copy through `chunk` (only the last chunk can open to 0 bytes).
            if buf.len() >= SEALED_CHUNK {
                return self.open_next(buf);
            }
            let mut chunk = std::mem::take(&mut self.chunk);
            if chunk.is_empty() {
                chunk = vec![0; SEALED_CHUNK];
            }
            let opened = self.open_next(&mut chunk);
            self.chunk = chunk;
            self.plaintext = opened?;
            self.start = 0;
        }
        let n = buf.len().min(self.plaintext - self.start);
        buf[..n].copy_from_slice(&self.chunk[self.start..self.start + n]);
        self.start += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::Recipient;
    use crate::pipeline::encrypt::tests::identity;
    use std::io::Write;

    fn key() -> (Identity, Recipient) {
        let (id, recipient) = identity();
        (Box::new(id) as Identity, recipient)
    }

    /// Sealed by bk's writer in one write.
    fn seal(data: &[u8], recipients: &[Recipient]) -> Vec<u8> {
        crate::pipeline::encrypt::tests::seal(data, data.len(), recipients)
    }

    /// Opens `sealed`, reading into buffers of `read_size` bytes.
    fn open(sealed: &[u8], ids: &[Identity], read_size: usize) -> io::Result<Vec<u8>> {
        let mut payload = decryptor(io::BufReader::with_capacity(1000, sealed), ids)
            .map_err(|e| io::Error::other(e.to_string()))?;
        let mut out = Vec::new();
        let mut buf = vec![0; read_size];
        loop {
            let n = payload.read(&mut buf)?;
            if n == 0 {
                return Ok(out);
            }
            out.extend_from_slice(&buf[..n]);
        }
    }

    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 4099) as u8).collect()
    }

    #[test]
    fn every_length_opens_whatever_the_read_size() {
        let (id, recipient) = key();
        let ids = [id];
        for len in [
            0,
            1,
            CHUNK_SIZE - 1,
            CHUNK_SIZE,
            CHUNK_SIZE + 1,
            2 * CHUNK_SIZE,
            3 * CHUNK_SIZE + 100,
        ] {
            let plain = data(len);
            let sealed = seal(&plain, std::slice::from_ref(&recipient));
            for read_size in [1, 4096, SEALED_CHUNK - 1, SEALED_CHUNK, 1 << 20] {
                let opened = open(&sealed, &ids, read_size)
                    .unwrap_or_else(|e| panic!("{len} bytes, reads of {read_size}: {e}"));
                assert!(opened == plain, "{len} bytes, reads of {read_size}");
            }
        }
    }

    #[test]
    fn what_the_age_crate_writes_opens_too() {
        let (id, recipient) = key();
        let plain = data(2 * CHUNK_SIZE + 5);
        let mut sealed = Vec::new();
        let enc = age::Encryptor::with_recipients(std::iter::once(
            recipient.as_ref() as &dyn age::Recipient
        ))
        .unwrap();
        let mut w = enc.wrap_output(&mut sealed).unwrap();
        w.write_all(&plain).unwrap();
        w.finish().unwrap();
        assert!(open(&sealed, &[id], 1 << 20).unwrap() == plain);
    }

    #[test]
    fn a_wrong_key_is_no_matching_keys() {
        let (_, recipient) = key();
        let (other, _) = key();
        let sealed = seal(b"secret", &[recipient]);
        let err = decryptor(&sealed[..], &[other]).err();
        assert!(matches!(err, Some(DecryptError::NoMatchingKeys)), "{err:?}");
    }

    /// Every way of damaging a stream is refused: a flipped byte anywhere, a cut at any
    /// chunk boundary or inside a chunk, bytes appended, a chunk dropped or swapped.
    #[test]
    fn damage_is_refused_and_never_yields_wrong_plaintext() {
        let (id, recipient) = key();
        let ids = [id];
        let plain = data(3 * CHUNK_SIZE + 100);
        let sealed = seal(&plain, &[recipient]);
        let header = sealed.len() - (3 * SEALED_CHUNK + 100 + TAG_SIZE);
        let chunk = |i: usize| header + i * SEALED_CHUNK;
        let mut damaged: Vec<(String, Vec<u8>)> = Vec::new();
        for at in [
            0,
            30,
            header - 20,
            header - 1,
            header,
            chunk(1) + 7,
            sealed.len() - 1,
        ] {
            let mut s = sealed.clone();
            s[at] ^= 0x20;
            damaged.push((format!("byte {at} flipped"), s));
        }
        for cut in [
            header,
            chunk(1),
            chunk(2),
            chunk(3),
            chunk(1) - 1,
            sealed.len() - 1,
        ] {
            damaged.push((format!("cut at {cut}"), sealed[..cut].to_vec()));
        }
        let mut longer = sealed.clone();
        longer.extend_from_slice(&sealed[chunk(3)..]);
        damaged.push(("the last chunk twice".into(), longer));
        let mut dropped = sealed[..chunk(1)].to_vec();
        dropped.extend_from_slice(&sealed[chunk(2)..]);
        damaged.push(("chunk 1 dropped".into(), dropped));
        let mut swapped = sealed[..chunk(1)].to_vec();
        swapped.extend_from_slice(&sealed[chunk(2)..chunk(3)]);
        swapped.extend_from_slice(&sealed[chunk(1)..chunk(2)]);
        swapped.extend_from_slice(&sealed[chunk(3)..]);
        damaged.push(("chunks 1 and 2 swapped".into(), swapped));
        for (what, bytes) in damaged {
            for read_size in [4096, 1 << 20] {
                assert!(
                    open(&bytes, &ids, read_size).is_err(),
                    "{what}: opened (reads of {read_size})"
                );
            }
        }
        // A reader that ignores the error and reads on gets errors, never the next chunk
        // (here a whole chunk of junk put in before chunk 1, which would open next).
        let mut s = sealed[..chunk(1)].to_vec();
        s.extend_from_slice(&[0x5a; SEALED_CHUNK]);
        s.extend_from_slice(&sealed[chunk(1)..]);
        let mut payload = decryptor(&s[..], &ids).unwrap();
        let mut buf = vec![0; 1 << 20];
        assert_eq!(payload.read(&mut buf).unwrap(), CHUNK_SIZE);
        for _ in 0..3 {
            assert!(payload.read(&mut buf).is_err());
        }
        assert!(open(&sealed, &ids, 4096).unwrap() == plain);
    }

    /// A stream that ends exactly on a chunk boundary, with its last whole chunk sealed
    /// as not the last: the end is missing, and so is the empty-last-chunk case.
    #[test]
    fn a_stream_cut_on_a_boundary_or_ending_in_an_empty_chunk_is_refused() {
        let (id, recipient) = key();
        let ids = [id];
        let sealed = seal(&data(2 * CHUNK_SIZE + 1), std::slice::from_ref(&recipient));
        let header = sealed.len() - (2 * SEALED_CHUNK + 1 + TAG_SIZE);
        let err = open(&sealed[..header + 2 * SEALED_CHUNK], &ids, 1 << 20).unwrap_err();
        assert!(err.to_string().contains("chunk 1"), "{err}");

        // A last chunk holding nothing, after a whole one: sealed by hand.
        let mut head = seal(b"", &[recipient]);
        head.truncate(head.len() - TAG_SIZE);
        let key = open_header(&head, &ids).unwrap();
        let mut first = data(CHUNK_SIZE);
        let tag = key
            .seal_in_place_separate_tag(chunk_nonce(0, false), Aad::empty(), &mut first)
            .unwrap();
        first.extend_from_slice(tag.as_ref());
        let mut empty = Vec::new();
        let tag = key
            .seal_in_place_separate_tag(chunk_nonce(1, true), Aad::empty(), &mut empty)
            .unwrap();
        empty.extend_from_slice(tag.as_ref());
        let mut s = head;
        s.extend_from_slice(&first);
        s.extend_from_slice(&empty);
        let err = open(&s, &ids, 1 << 20).unwrap_err();
        assert!(err.to_string().contains("empty chunk"), "{err}");
    }
}

//! bk's own reading of an age payload (core/src/restore/decrypt.rs): whatever is done
//! to a sealed stream — bytes flipped in the header, the nonce or any chunk, a cut
//! anywhere, bytes appended — it opens to exactly what was sealed if the stream is
//! unchanged, and is refused otherwise.
//!
//! Input: two bytes for the plaintext's length (in units of 3 bytes, so up to three
//! STREAM chunks), then changes of four bytes each: a kind and a 24-bit position.
#![no_main]

use std::io::{Read, Write};
use std::sync::OnceLock;

use bk_core::keys::{self, Identity, Recipient};
use libfuzzer_sys::fuzz_target;

fn key() -> &'static (Vec<Identity>, Recipient) {
    static KEY: OnceLock<(Vec<Identity>, Recipient)> = OnceLock::new();
    KEY.get_or_init(|| {
        let dir = tempfile::tempdir().expect("a scratch directory");
        let path = dir.path().join("identity.age");
        let recipient = keys::generate_identity_file(&path).expect("a new identity");
        let identities = keys::load_identities(&path).expect("the identity reads back");
        (
            identities,
            keys::parse_recipient(&recipient).expect("its recipient parses"),
        )
    })
}

/// The plaintexts: prefixes of one text, made once (byte loops are slow under the
/// fuzzer's instrumentation).
fn text() -> &'static [u8] {
    static TEXT: OnceLock<Vec<u8>> = OnceLock::new();
    TEXT.get_or_init(|| (0..3 * 65535).map(|i| (i % 251) as u8).collect())
}

fuzz_target!(|data: &[u8]| {
    let Some((len, changes)) = data.split_first_chunk::<2>() else {
        return;
    };
    let (identities, recipient) = key();
    let plain = &text()[..usize::from(u16::from_le_bytes(*len)) * 3];
    let mut sealed =
        bk_core::pipeline::encrypt::encryptor(Vec::new(), std::slice::from_ref(recipient))
            .expect("an encryptor");
    sealed.write_all(plain).expect("sealing into memory");
    let sealed = sealed.finish().expect("sealing into memory");

    let mut changed = sealed.clone();
    for change in changes.chunks_exact(4) {
        let at = u32::from_le_bytes([change[1], change[2], change[3], 0]) as usize;
        let at = at % (changed.len() + 1);
        match change[0] % 4 {
            0 | 1 if at < changed.len() => changed[at] ^= (change[0] >> 2) | 1,
            2 => changed.truncate(at),
            3 => changed.extend_from_within(at..),
            _ => {}
        }
    }
    let opened = bk_core::restore::decrypt::decryptor(&changed[..], identities)
        .map_err(|e| std::io::Error::other(e.to_string()))
        .and_then(|mut payload| {
            let mut out = Vec::new();
            payload.read_to_end(&mut out).map(|_| out)
        });
    match opened {
        Ok(out) => {
            assert!(changed == sealed, "a changed stream opened");
            assert!(out == plain, "the stream opened to other bytes");
        }
        Err(e) => assert!(changed != sealed, "the unchanged stream was refused: {e}"),
    }
});

//! The age stage: encrypts to every configured recipient. age's STREAM format
//! authenticates every 64 KiB chunk and the end of the stream, so a restore detects
//! any flipped byte or truncation, whatever reads it (bk or the stock `age` CLI).

use std::io::{self, Write};

use crate::keys::Recipient;

pub type Encryptor<W> = age::stream::StreamWriter<W>;

pub fn encryptor<W: Write>(out: W, recipients: &[Recipient]) -> io::Result<Encryptor<W>> {
    let enc = age::Encryptor::with_recipients(
        recipients.iter().map(|r| r.as_ref() as &dyn age::Recipient),
    )
    .map_err(|e| io::Error::other(format!("cannot encrypt to the configured recipients: {e}")))?;
    enc.wrap_output(out)
}

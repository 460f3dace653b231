//! `bk keygen --output FILE`

use std::path::Path;

use crate::output::say;
use crate::Failure;

pub fn run(output: &Path) -> Result<(), Failure> {
    let recipient = bk_core::keys::generate_identity_file(output)?;
    eprintln!(
        "bk: wrote a new identity to {} (mode 0600). Keep it offline: it decrypts every backup made to its recipient.",
        output.display()
    );
    say!("{recipient}")?;
    Ok(())
}

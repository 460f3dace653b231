//! age recipients (public keys the server encrypts to) and identities (private keys
//! that decrypt). The backup server only ever needs recipients; identities are read
//! by restores and restore tests, from files the operator points at.

use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use age::secrecy::ExposeSecret;

pub type Recipient = Box<dyn age::Recipient + Send + Sync>;
pub type Identity = Box<dyn age::Identity + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("recipient `{shown}` is not valid: {reason}")]
    BadRecipient { shown: String, reason: String },
    #[error("cannot read identity file {path}: {source}")]
    ReadIdentity {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("identity file {path} holds no usable key: {reason}")]
    BadIdentity { path: PathBuf, reason: String },
    #[error("{path} already exists; bk keygen never overwrites a key (choose another --output)")]
    Exists { path: PathBuf },
    #[error("cannot write identity file {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Parses one recipient: an `age1…` X25519 key, or an `ssh-ed25519`/`ssh-rsa` public key line.
pub fn parse_recipient(text: &str) -> Result<Recipient, KeyError> {
    let text = text.trim();
    let bad = |reason: &str| KeyError::BadRecipient {
        shown: shorten(text),
        reason: reason.to_string(),
    };
    if text.starts_with("age1") {
        text.parse::<age::x25519::Recipient>()
            .map(|r| Box::new(r) as Recipient)
            .map_err(bad)
    } else if text.starts_with("ssh-") {
        text.parse::<age::ssh::Recipient>()
            .map(|r| Box::new(r) as Recipient)
            .map_err(|e| bad(&format!("{e:?}")))
    } else {
        Err(bad(
            "expected an age X25519 key (age1…) or an SSH public key (ssh-ed25519 … / ssh-rsa …)",
        ))
    }
}

pub fn parse_recipients(texts: &[String]) -> Result<Vec<Recipient>, KeyError> {
    texts.iter().map(|t| parse_recipient(t)).collect()
}

/// Reads the identities in an age identity file (`AGE-SECRET-KEY-1…` lines) or an
/// unencrypted OpenSSH private key.
pub fn load_identities(path: &Path) -> Result<Vec<Identity>, KeyError> {
    let read = |source| KeyError::ReadIdentity {
        path: path.to_path_buf(),
        source,
    };
    let bad = |reason: String| KeyError::BadIdentity {
        path: path.to_path_buf(),
        reason,
    };
    let mut text = String::new();
    File::open(path)
        .and_then(|f| f.take(1 << 20).read_to_string(&mut text))
        .map_err(read)?;
    if text.contains("-----BEGIN OPENSSH PRIVATE KEY-----")
        || text.contains("-----BEGIN RSA PRIVATE KEY-----")
    {
        let id = age::ssh::Identity::from_buffer(
            BufReader::new(text.as_bytes()),
            Some(path.display().to_string()),
        )
        .map_err(|e| bad(format!("not a readable SSH private key: {e}")))?;
        return match id {
            age::ssh::Identity::Unencrypted(_) => Ok(vec![Box::new(id) as Identity]),
            age::ssh::Identity::Encrypted(_) => Err(bad(
                "the SSH key is passphrase-protected; decrypt a copy with `ssh-keygen -p` on a trusted machine or use an age identity".into(),
            )),
            age::ssh::Identity::Unsupported(k) => Err(bad(format!("unsupported SSH key type: {k:?}"))),
        };
    }
    let file = age::IdentityFile::from_buffer(BufReader::new(text.as_bytes()))
        .map_err(|e| bad(format!("not an age identity file: {e}")))?;
    let ids = file.into_identities().map_err(|e| bad(e.to_string()))?;
    if ids.is_empty() {
        return Err(bad("no AGE-SECRET-KEY-1… line found".into()));
    }
    Ok(ids)
}

/// The `age1…` recipients of the X25519 identities in an age identity file, to check
/// that a restore-test identity can open what the repository writes. Empty for an SSH
/// private key (its recipient is its `.pub` line).
pub fn identity_recipients(path: &Path) -> Result<Vec<String>, KeyError> {
    load_identities(path)?;
    let text = std::fs::read_to_string(path).map_err(|source| KeyError::ReadIdentity {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("AGE-SECRET-KEY-1"))
        .filter_map(|l| l.parse::<age::x25519::Identity>().ok())
        .map(|id| id.to_public().to_string())
        .collect())
}

/// Generates a new X25519 identity, writes it to `path` (mode 0600, never
/// overwriting) and returns its recipient.
pub fn generate_identity_file(path: &Path) -> Result<String, KeyError> {
    let identity = age::x25519::Identity::generate();
    let recipient = identity.to_public().to_string();
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|source| match source.kind() {
            std::io::ErrorKind::AlreadyExists => KeyError::Exists {
                path: path.to_path_buf(),
            },
            _ => KeyError::Write {
                path: path.to_path_buf(),
                source,
            },
        })?;
    let contents = format!(
        "# created: {}\n# public key: {recipient}\n{}\n",
        chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ"),
        identity.to_string().expose_secret()
    );
    let write = |source| KeyError::Write {
        path: path.to_path_buf(),
        source,
    };
    file.write_all(contents.as_bytes()).map_err(write)?;
    file.sync_all().map_err(write)?;
    file.set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(write)?;
    Ok(recipient)
}

/// Recipients shown in messages are shortened; they are public, but long.
fn shorten(text: &str) -> String {
    if text.starts_with("AGE-SECRET-KEY-") {
        // A secret key where a public one belongs: not one character of it is shown.
        return "AGE-SECRET-KEY-… (an identity: give its recipient, `age-keygen -y FILE`)".into();
    }
    let first: String = text.chars().take(24).collect();
    if first.len() < text.len() {
        format!("{first}…")
    } else {
        first
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_identity_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("id.age");
        let recipient = generate_identity_file(&path).unwrap();
        assert!(parse_recipient(&recipient).is_ok());
        assert_eq!(load_identities(&path).unwrap().len(), 1);
        assert_eq!(identity_recipients(&path).unwrap(), vec![recipient.clone()]);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(matches!(
            generate_identity_file(&path),
            Err(KeyError::Exists { .. })
        ));
    }

    #[test]
    fn bad_recipients_are_named() {
        let err = parse_recipient("age1notakey").err().unwrap().to_string();
        assert!(err.contains("age1notakey"), "{err}");
        assert!(parse_recipient("hello").is_err());
    }
}

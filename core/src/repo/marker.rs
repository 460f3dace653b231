//! The repository marker: a plaintext JSON object at the root that says "this is a bk
//! repository, format version N". No secrets. Written once, create-only.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::RepoError;

pub const FORMAT: &str = "bk-repository";
/// The repository format version this bk writes and reads (see docs/format.md).
pub const VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Marker {
    pub format: String,
    pub version: u32,
    pub created: DateTime<Utc>,
    /// The bk version that created the repository.
    pub created_by: String,
}

impl Marker {
    pub fn new() -> Self {
        Marker {
            format: FORMAT.into(),
            version: VERSION,
            created: Utc::now(),
            created_by: format!("bk {}", crate::VERSION),
        }
    }

    pub fn to_json(&self) -> Vec<u8> {
        let mut out = serde_json::to_vec_pretty(self).expect("marker serializes");
        out.push(b'\n');
        out
    }

    pub fn from_json(key: &str, bytes: &[u8]) -> Result<Self, RepoError> {
        let bad = |reason: String| RepoError::BadObject {
            key: key.to_string(),
            reason,
        };
        let marker: Marker = serde_json::from_slice(bytes)
            .map_err(|e| bad(format!("not a bk repository marker: {e}")))?;
        if marker.format != FORMAT {
            return Err(bad(format!(
                "format is `{}`, expected `{FORMAT}`",
                marker.format
            )));
        }
        if marker.version != VERSION {
            return Err(bad(format!(
                "repository format version {} is not supported by this bk (it reads version {VERSION})",
                marker.version
            )));
        }
        Ok(marker)
    }
}

impl Default for Marker {
    fn default() -> Self {
        Self::new()
    }
}

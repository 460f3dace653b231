//! Backup IDs: time-sortable and unique across every server writing to a repository.
//!
//! `20261125T110802.123Z-3fa9c1d27be04c11`: UTC time to the millisecond, then 64 random
//! bits so that two servers (or two runs in the same millisecond) never collide.
//! Lexical order is time order.

use std::fmt;

use chrono::{DateTime, NaiveDateTime, Utc};
use rand::RngCore;

const TIME_FORMAT: &str = "%Y%m%dT%H%M%S%.3fZ";
const TIME_LEN: usize = 20;
const RANDOM_HEX: usize = 16;

#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(try_from = "String", into = "String")]
pub struct BackupId(String);

#[derive(Debug, thiserror::Error)]
#[error("`{0}` is not a backup ID (expected something like 20261125T110802.123Z-3fa9c1d27be04c11)")]
pub struct BadBackupId(pub String);

impl BackupId {
    /// A fresh ID for a backup that starts at `now`.
    pub fn new(now: DateTime<Utc>) -> Self {
        let mut random = [0u8; RANDOM_HEX / 2];
        rand::rng().fill_bytes(&mut random);
        BackupId(format!(
            "{}-{}",
            now.format(TIME_FORMAT),
            hex::encode(random)
        ))
    }

    pub fn parse(s: &str) -> Result<Self, BadBackupId> {
        let bad = || BadBackupId(s.to_string());
        let (time, random) = s.split_once('-').ok_or_else(bad)?;
        if time.len() != TIME_LEN
            || random.len() != RANDOM_HEX
            || !random
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(bad());
        }
        NaiveDateTime::parse_from_str(time, TIME_FORMAT).map_err(|_| bad())?;
        Ok(BackupId(s.to_string()))
    }

    /// When the backup started, as encoded in the ID.
    pub fn time(&self) -> DateTime<Utc> {
        let time = &self.0[..TIME_LEN];
        NaiveDateTime::parse_from_str(time, TIME_FORMAT)
            .map(|t| t.and_utc())
            .unwrap_or_default()
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for BackupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for BackupId {
    type Error = BadBackupId;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        BackupId::parse(&s)
    }
}

impl From<BackupId> for String {
    fn from(id: BackupId) -> String {
        id.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn ids_sort_by_time_and_round_trip() {
        let a = BackupId::new(Utc.with_ymd_and_hms(2026, 11, 25, 11, 8, 2).unwrap());
        let b = BackupId::new(Utc.with_ymd_and_hms(2026, 11, 25, 11, 8, 3).unwrap());
        assert!(a < b);
        assert_eq!(BackupId::parse(a.as_str()).unwrap(), a);
        assert_eq!(
            a.time(),
            Utc.with_ymd_and_hms(2026, 11, 25, 11, 8, 2).unwrap()
        );
    }

    #[test]
    fn same_millisecond_ids_differ() {
        let now = Utc::now();
        assert_ne!(BackupId::new(now), BackupId::new(now));
    }

    #[test]
    fn rejects_malformed_ids() {
        for bad in [
            "",
            "latest",
            "20261125T110802.123Z",
            "20261125T110802.123Z-XYZ",
            "../../etc-0000000000000000",
        ] {
            assert!(BackupId::parse(bad).is_err(), "{bad}");
        }
    }
}

//! Anomalies: a committed backup that looks wrong next to the job's recent history.
//!
//! A backup far smaller than usual (a dump of an emptied database, an uploads folder
//! that lost most of its files) or whose content suddenly stopped compressing (what
//! an uploads folder encrypted by ransomware looks like) is still committed — never
//! dropped, it may be all there is — but flagged, with the figures that triggered it,
//! so that a human looks before the retention rotates the good backups away.
//!
//! Pure: the caller passes the history (newest first) and the new backup's figures.

use serde::{Deserialize, Serialize};

use crate::config::AnomalyConfig;

/// The figures of one good backup.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Figures {
    /// Plaintext bytes read from the source.
    pub source_size: u64,
    /// Bytes stored for the payload (compressed and encrypted).
    pub stored_size: u64,
    /// Directory entries (0 for other kinds).
    pub entries: u64,
}

impl Figures {
    /// How many times smaller the stored payload is than the plaintext.
    pub fn compression(&self) -> f64 {
        self.source_size.max(1) as f64 / self.stored_size.max(1) as f64
    }
}

/// One thing that looks wrong, with the numbers behind it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Anomaly {
    /// Much smaller than the recent median.
    Size { bytes: u64, median: u64 },
    /// Far fewer directory entries than the recent median.
    Files { entries: u64, median: u64 },
    /// Compresses far worse than the recent median (new content looks random).
    Compression { ratio: f64, median: f64 },
}

impl std::fmt::Display for Anomaly {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Anomaly::Size { bytes, median } => write!(
                f,
                "the dump is {bytes} bytes, {:.0}% of the recent median of {median} bytes",
                percent(*bytes as f64, *median as f64)
            ),
            Anomaly::Files { entries, median } => write!(
                f,
                "{entries} entries, {:.0}% of the recent median of {median}",
                percent(*entries as f64, *median as f64)
            ),
            Anomaly::Compression { ratio, median } => write!(
                f,
                "the content compresses {ratio:.2}x, against a recent median of {median:.2}x \
                 (newly incompressible content: encrypted by ransomware?)"
            ),
        }
    }
}

fn percent(part: f64, whole: f64) -> f64 {
    100.0 * part / whole.max(1.0)
}

/// Compares `new` with `history` (earlier good backups, newest first).
pub fn detect(new: &Figures, history: &[Figures], rules: &AnomalyConfig) -> Vec<Anomaly> {
    if !rules.enabled {
        return Vec::new();
    }
    let recent: Vec<&Figures> = history.iter().take(rules.history).collect();
    if recent.len() < rules.min_history.max(1) {
        return Vec::new();
    }
    let mut found = Vec::new();
    let size = median(recent.iter().map(|f| f.source_size as f64));
    if (new.source_size as f64) < size * rules.size_drop {
        found.push(Anomaly::Size {
            bytes: new.source_size,
            median: size.round() as u64,
        });
    }
    let with_entries: Vec<f64> = recent
        .iter()
        .filter(|f| f.entries > 0)
        .map(|f| f.entries as f64)
        .collect();
    if with_entries.len() == recent.len() {
        let entries = median(with_entries.into_iter());
        if (new.entries as f64) < entries * rules.files_drop {
            found.push(Anomaly::Files {
                entries: new.entries,
                median: entries.round() as u64,
            });
        }
    }
    // Only content that used to compress can stop compressing.
    let ratio = median(recent.iter().map(|f| f.compression()));
    if ratio >= rules.min_compression && new.compression() < ratio * rules.compression_drop {
        found.push(Anomaly::Compression {
            ratio: round2(new.compression()),
            median: round2(ratio),
        });
    }
    found
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.collect();
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fig(source_size: u64, stored_size: u64, entries: u64) -> Figures {
        Figures {
            source_size,
            stored_size,
            entries,
        }
    }

    fn history() -> Vec<Figures> {
        // An uploads folder growing slowly, compressing about 3x.
        (0..10)
            .map(|i| fig(1_000_000 + i * 10_000, 330_000 + i * 3_000, 500 + i))
            .collect()
    }

    #[test]
    fn ordinary_backups_raise_nothing() {
        let rules = AnomalyConfig::default();
        assert!(detect(&fig(1_100_000, 360_000, 512), &history(), &rules).is_empty());
        // Growth is never an anomaly.
        assert!(detect(&fig(5_000_000, 1_600_000, 2000), &history(), &rules).is_empty());
    }

    #[test]
    fn a_much_smaller_backup_is_flagged_with_its_figures() {
        let found = detect(
            &fig(200_000, 66_000, 100),
            &history(),
            &AnomalyConfig::default(),
        );
        assert_eq!(
            found,
            vec![
                Anomaly::Size {
                    bytes: 200_000,
                    median: 1_045_000
                },
                Anomaly::Files {
                    entries: 100,
                    median: 505
                },
            ]
        );
        assert!(found[0].to_string().contains("19%"), "{}", found[0]);
    }

    #[test]
    fn content_that_stops_compressing_is_flagged() {
        // Same size, same files, but every byte random: stored ≈ source.
        let found = detect(
            &fig(1_100_000, 1_101_000, 509),
            &history(),
            &AnomalyConfig::default(),
        );
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            matches!(found[0], Anomaly::Compression { ratio, median } if ratio < 1.01 && median > 3.0)
        );
    }

    #[test]
    fn content_that_never_compressed_is_not_flagged() {
        let media: Vec<Figures> = (0..5).map(|_| fig(1_000_000, 1_001_000, 10)).collect();
        assert!(detect(
            &fig(1_000_000, 1_001_000, 10),
            &media,
            &AnomalyConfig::default()
        )
        .is_empty());
    }

    #[test]
    fn too_little_history_or_disabled_raises_nothing() {
        let rules = AnomalyConfig::default();
        let short = &history()[..rules.min_history - 1];
        assert!(detect(&fig(1, 1, 1), short, &rules).is_empty());
        let off = AnomalyConfig {
            enabled: false,
            ..AnomalyConfig::default()
        };
        assert!(detect(&fig(1, 1, 1), &history(), &off).is_empty());
    }
}

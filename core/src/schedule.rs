//! Cron schedules: standard 5-field crontab expressions read in an IANA time zone,
//! computed with croner (correct across daylight-saving changes: a nightly run is
//! neither skipped in spring nor doubled in autumn).

use chrono::{DateTime, Utc};
use croner::parser::{CronParser, Seconds};
use croner::Cron;

/// Parses a 5-field crontab expression (minute hour day-of-month month day-of-week).
pub fn parse(expr: &str) -> Result<Cron, String> {
    let fields = expr.split_whitespace().count();
    if fields != 5 && !expr.trim_start().starts_with('@') {
        return Err(format!(
            "expected 5 fields (minute hour day-of-month month day-of-week), found {fields}"
        ));
    }
    CronParser::builder()
        .seconds(Seconds::Disallowed)
        .build()
        .parse(expr)
        .map_err(|e| e.to_string())
}

/// The first time strictly after `after` at which `cron` fires in time zone `tz`.
pub fn next_after(cron: &Cron, tz: chrono_tz::Tz, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let local = after.with_timezone(&tz);
    cron.find_next_occurrence(&local, false)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn rejects_non_standard_expressions() {
        assert!(parse("0 2 * * *").is_ok());
        assert!(parse("0 0 2 * * *").is_err());
        assert!(parse("61 2 * * *").is_err());
        assert!(parse("0 2 * *").is_err());
    }

    #[test]
    fn nightly_run_survives_dst_changes() {
        let cron = parse("30 2 * * *").unwrap();
        let tz: chrono_tz::Tz = "Europe/Berlin".parse().unwrap();
        // Spring forward: 02:30 does not exist on 2027-03-28; the run happens at 03:00.
        let start = Utc.with_ymd_and_hms(2027, 3, 27, 12, 0, 0).unwrap();
        let next = next_after(&cron, tz, start).unwrap();
        assert_eq!(
            next.with_timezone(&tz).date_naive().to_string(),
            "2027-03-28"
        );
        // Fall back: 02:30 happens twice on 2027-10-31; the job runs once.
        let start = Utc.with_ymd_and_hms(2027, 10, 30, 12, 0, 0).unwrap();
        let first = next_after(&cron, tz, start).unwrap();
        let second = next_after(&cron, tz, first).unwrap();
        assert_eq!(
            first.with_timezone(&tz).date_naive().to_string(),
            "2027-10-31"
        );
        assert_eq!(
            second.with_timezone(&tz).date_naive().to_string(),
            "2027-11-01"
        );
    }
}

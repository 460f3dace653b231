//! Retention: which backups of a job to keep, with the reason each survivor stays.
//! The semantics are restic's `forget` (and Borg's `prune`): backups are walked newest
//! first; `keep_last` keeps the N newest; each calendar rule (hourly, daily, weekly,
//! monthly, yearly) keeps the newest backup of each of its N most recent periods that
//! hold a backup. Periods are read in the job's time zone; weeks are ISO weeks.
//!
//! Pure: no storage, no clock. It never marks for removal the newest backup, nor any
//! backup the caller protects (e.g. the newest one that passed a restore test).

use std::fmt;

use chrono::{DateTime, Datelike, Timelike, Utc};
use serde::Serialize;

use crate::config::Retention;

/// One committed backup, as retention sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub id: String,
    pub time: DateTime<Utc>,
}

/// Why a backup is kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "rule", content = "period")]
pub enum Reason {
    /// The newest backup is never removed.
    Newest,
    /// Protected by the caller (the newest backup that passed a restore test).
    Protected,
    Last,
    Hourly(String),
    Daily(String),
    Weekly(String),
    Monthly(String),
    Yearly(String),
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Newest => f.write_str("newest backup"),
            Reason::Protected => f.write_str("protected (newest that passed a restore test)"),
            Reason::Last => f.write_str("keep_last"),
            Reason::Hourly(p) => write!(f, "hourly {p}"),
            Reason::Daily(p) => write!(f, "daily {p}"),
            Reason::Weekly(p) => write!(f, "weekly {p}"),
            Reason::Monthly(p) => write!(f, "monthly {p}"),
            Reason::Yearly(p) => write!(f, "yearly {p}"),
        }
    }
}

/// The verdict on one backup.
#[derive(Debug, Clone, Serialize)]
pub struct Decision {
    pub id: String,
    pub time: DateTime<Utc>,
    pub keep: bool,
    /// Empty when the backup is to be removed.
    pub reasons: Vec<Reason>,
}

#[derive(Clone, Copy)]
enum Rule {
    Last,
    Hourly,
    Daily,
    Weekly,
    Monthly,
    Yearly,
}

impl Rule {
    /// The period a time falls in, as text (also shown to the operator).
    fn period(self, t: DateTime<chrono_tz::Tz>, id: &str) -> String {
        match self {
            Rule::Last => id.to_string(),
            Rule::Hourly => format!("{} {:02}h", t.format("%Y-%m-%d"), t.hour()),
            Rule::Daily => t.format("%Y-%m-%d").to_string(),
            Rule::Weekly => {
                let w = t.iso_week();
                format!("{}-W{:02}", w.year(), w.week())
            }
            Rule::Monthly => t.format("%Y-%m").to_string(),
            Rule::Yearly => t.year().to_string(),
        }
    }

    fn reason(self, period: String) -> Reason {
        match self {
            Rule::Last => Reason::Last,
            Rule::Hourly => Reason::Hourly(period),
            Rule::Daily => Reason::Daily(period),
            Rule::Weekly => Reason::Weekly(period),
            Rule::Monthly => Reason::Monthly(period),
            Rule::Yearly => Reason::Yearly(period),
        }
    }
}

/// Decides, for every backup in `backups` (any order), whether it stays. The result is
/// newest first.
pub fn apply(
    backups: &[Candidate],
    policy: &Retention,
    tz: chrono_tz::Tz,
    protected: &[String],
) -> Vec<Decision> {
    let mut sorted: Vec<&Candidate> = backups.iter().collect();
    sorted.sort_by(|a, b| b.time.cmp(&a.time).then_with(|| b.id.cmp(&a.id)));
    let mut rules: Vec<(Rule, u32, Option<String>)> = [
        (Rule::Last, policy.keep_last),
        (Rule::Hourly, policy.keep_hourly),
        (Rule::Daily, policy.keep_daily),
        (Rule::Weekly, policy.keep_weekly),
        (Rule::Monthly, policy.keep_monthly),
        (Rule::Yearly, policy.keep_yearly),
    ]
    .into_iter()
    .filter_map(|(rule, n)| n.filter(|n| *n > 0).map(|n| (rule, n, None)))
    .collect();

    let mut out = Vec::with_capacity(sorted.len());
    for (i, backup) in sorted.into_iter().enumerate() {
        let local = backup.time.with_timezone(&tz);
        let mut reasons = Vec::new();
        if i == 0 {
            reasons.push(Reason::Newest);
        }
        if protected.contains(&backup.id) {
            reasons.push(Reason::Protected);
        }
        for (rule, left, last_period) in &mut rules {
            if *left == 0 {
                continue;
            }
            let period = rule.period(local, &backup.id);
            if last_period.as_deref() != Some(period.as_str()) {
                *left -= 1;
                *last_period = Some(period.clone());
                reasons.push(rule.reason(period));
            }
        }
        out.push(Decision {
            id: backup.id.clone(),
            time: backup.time,
            keep: !reasons.is_empty(),
            reasons,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Duration, TimeZone};
    use std::collections::BTreeSet;

    /// Backups every 6 hours for 100 days (400 backups) ending 2027-03-31 18:00 UTC.
    fn history() -> Vec<Candidate> {
        let end = Utc.with_ymd_and_hms(2027, 3, 31, 18, 0, 0).unwrap();
        (0..400)
            .map(|i| {
                let time = end - Duration::hours(6 * i);
                Candidate {
                    id: format!("b{:03}", 399 - i),
                    time,
                }
            })
            .collect()
    }

    fn policy(last: u32, daily: u32, weekly: u32, monthly: u32) -> Retention {
        Retention {
            keep_last: Some(last),
            keep_daily: Some(daily),
            keep_weekly: Some(weekly),
            keep_monthly: Some(monthly),
            ..Retention::default()
        }
    }

    fn kept(decisions: &[Decision]) -> Vec<String> {
        decisions
            .iter()
            .filter(|d| d.keep)
            .map(|d| d.id.clone())
            .collect()
    }

    #[test]
    fn the_documented_buckets_over_four_hundred_backups() {
        let utc: chrono_tz::Tz = "UTC".parse().unwrap();
        let d = apply(&history(), &policy(3, 7, 4, 12), utc, &[]);
        assert_eq!(d.len(), 400);
        let keep = kept(&d);
        // keep_last 3: b399, b398, b397. daily 7: the 18:00 backup of Mar 31..25 (b399,
        // b395, …, b375). weekly 4: newest of ISO weeks 13, 12, 11, 10 — Sunday 18:00 of
        // weeks 12, 11, 10 (Mar 28, 21, 14) plus b399 for week 13. monthly 12: newest of
        // March (b399), February (Feb 28 18:00), January (Jan 31 18:00) and December
        // (Dec 31 18:00); history starts on Dec 22, so only four months exist.
        let by_time = |y, m, day| {
            let t = Utc.with_ymd_and_hms(y, m, day, 18, 0, 0).unwrap();
            d.iter().find(|x| x.time == t).unwrap().id.clone()
        };
        let mut expected: BTreeSet<String> = ["b399", "b398", "b397"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        for day in 25..=31 {
            expected.insert(by_time(2027, 3, day));
        }
        for day in [28, 21, 14] {
            expected.insert(by_time(2027, 3, day));
        }
        expected.insert(by_time(2027, 2, 28));
        expected.insert(by_time(2027, 1, 31));
        expected.insert(by_time(2026, 12, 31));
        assert_eq!(keep.iter().cloned().collect::<BTreeSet<_>>(), expected);
        // Reasons are reported per rule for the survivors.
        let newest = &d[0];
        assert_eq!(newest.id, "b399");
        assert!(newest.reasons.contains(&Reason::Newest));
        assert!(newest.reasons.contains(&Reason::Daily("2027-03-31".into())));
        assert!(newest.reasons.contains(&Reason::Weekly("2027-W13".into())));
        assert!(newest.reasons.contains(&Reason::Monthly("2027-03".into())));
        assert!(d.iter().filter(|x| !x.keep).all(|x| x.reasons.is_empty()));
    }

    #[test]
    fn each_calendar_rule_keeps_the_newest_of_its_most_recent_periods() {
        let utc: chrono_tz::Tz = "UTC".parse().unwrap();
        let h = history();
        let daily = Retention {
            keep_daily: Some(30),
            ..Retention::default()
        };
        let d = apply(&h, &daily, utc, &[]);
        let keep = kept(&d);
        assert_eq!(keep.len(), 30);
        // Exactly one per day, the newest of that day, for the 30 newest days.
        let mut days = BTreeSet::new();
        for k in d.iter().filter(|x| x.keep) {
            let day = k.time.date_naive();
            assert!(days.insert(day), "two backups kept for {day}");
            let newest_of_day = h
                .iter()
                .filter(|c| c.time.date_naive() == day)
                .map(|c| c.time)
                .max();
            assert_eq!(Some(k.time), newest_of_day);
        }
        let yearly = Retention {
            keep_yearly: Some(5),
            ..Retention::default()
        };
        // Two calendar years in the history (2026 and 2027): two survivors.
        assert_eq!(kept(&apply(&h, &yearly, utc, &[])).len(), 2);
    }

    #[test]
    fn periods_are_read_in_the_jobs_time_zone() {
        // 23:30 UTC on Mar 1 is already Mar 2 in Berlin: two UTC days, one Berlin day.
        let a = Candidate {
            id: "a".into(),
            time: Utc.with_ymd_and_hms(2027, 3, 1, 23, 30, 0).unwrap(),
        };
        let b = Candidate {
            id: "b".into(),
            time: Utc.with_ymd_and_hms(2027, 3, 2, 10, 0, 0).unwrap(),
        };
        let c = Candidate {
            id: "c".into(),
            time: Utc.with_ymd_and_hms(2027, 3, 1, 12, 0, 0).unwrap(),
        };
        let p = Retention {
            keep_daily: Some(10),
            ..Retention::default()
        };
        let berlin = apply(
            &[a.clone(), b.clone(), c.clone()],
            &p,
            "Europe/Berlin".parse().unwrap(),
            &[],
        );
        assert_eq!(kept(&berlin), vec!["b", "c"]);
        let utc = apply(&[a, b, c], &p, "UTC".parse().unwrap(), &[]);
        assert_eq!(kept(&utc), vec!["b", "a"]);
    }

    #[test]
    fn the_newest_and_protected_backups_always_survive() {
        let utc: chrono_tz::Tz = "UTC".parse().unwrap();
        let h = history();
        let only_monthly_of_old = Retention {
            keep_yearly: Some(1),
            ..Retention::default()
        };
        let d = apply(&h, &only_monthly_of_old, utc, &["b007".to_string()]);
        let keep = kept(&d);
        assert_eq!(keep, vec!["b399", "b007"]);
        let b007 = d.iter().find(|x| x.id == "b007").unwrap();
        assert_eq!(b007.reasons, vec![Reason::Protected]);
        // Even a policy that would keep nothing else keeps the newest.
        let last_one = Retention {
            keep_last: Some(1),
            ..Retention::default()
        };
        assert_eq!(kept(&apply(&h, &last_one, utc, &[])), vec!["b399"]);
        assert!(apply(&[], &last_one, utc, &[]).is_empty());
    }
}

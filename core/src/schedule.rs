//! Cron schedules: standard 5-field crontab expressions read in an IANA time zone,
//! computed with croner (correct across daylight-saving changes: a nightly run is
//! neither skipped in spring nor doubled in autumn).
//!
//! `Planner` is the daemon's decision logic — which jobs are due, what a missed run
//! during downtime becomes, when to wake next, when a job is overdue — as pure
//! functions of a `now` the caller passes in, so tests drive it with a fake clock.
//! It never starts anything itself and never lets a job be due while it is running.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use croner::parser::{CronParser, Seconds};
use croner::Cron;

use crate::config::JobConfig;

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

/// Slack added to a schedule's longest gap to get the default overdue window.
pub const OVERDUE_SLACK: Duration = Duration::from_secs(2 * 3600);

/// One job's cron expression in its time zone.
#[derive(Debug, Clone)]
pub struct JobSchedule {
    expr: String,
    timezone: chrono_tz::Tz,
    cron: Cron,
    catch_up: bool,
}

impl PartialEq for JobSchedule {
    fn eq(&self, other: &Self) -> bool {
        self.expr == other.expr
            && self.timezone == other.timezone
            && self.catch_up == other.catch_up
    }
}

impl JobSchedule {
    pub fn new(expr: &str, timezone: &str, catch_up: bool) -> Result<JobSchedule, String> {
        let cron = parse(expr)?;
        let timezone = chrono_tz::Tz::from_str(timezone)
            .map_err(|_| format!("{timezone:?} is not an IANA time zone"))?;
        Ok(JobSchedule {
            expr: expr.to_string(),
            timezone,
            cron,
            catch_up,
        })
    }

    /// The job's schedule, or `None` for a job that runs only when asked.
    pub fn of_job(job: &JobConfig) -> Result<Option<JobSchedule>, String> {
        job.schedule
            .as_deref()
            .map(|expr| JobSchedule::new(expr, &job.timezone, job.catch_up))
            .transpose()
    }

    pub fn expr(&self) -> &str {
        &self.expr
    }

    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        next_after(&self.cron, self.timezone, after)
    }

    /// The longest gap between consecutive runs over the coming weeks (`None` if
    /// the expression never fires).
    pub fn longest_gap(&self, from: DateTime<Utc>) -> Option<Duration> {
        let mut t = self.next_after(from)?;
        let mut longest = Duration::ZERO;
        for _ in 0..40 {
            let Some(next) = self.next_after(t) else {
                break;
            };
            longest = longest.max((next - t).to_std().unwrap_or_default());
            t = next;
        }
        (!longest.is_zero()).then_some(longest)
    }
}

/// How long a job may go without a good backup before it is overdue: the job's
/// `expect_within`, else its schedule's longest gap plus `OVERDUE_SLACK`.
pub fn expected_window(
    job: &JobConfig,
    schedule: Option<&JobSchedule>,
    now: DateTime<Utc>,
) -> Option<Duration> {
    job.expect_within
        .or_else(|| Some(schedule?.longest_gap(now)? + OVERDUE_SLACK))
}

/// True when the newest good backup (or, if there is none, the moment the job came
/// under watch) is older than `window`.
pub fn is_overdue(
    last_good: Option<DateTime<Utc>>,
    watched_since: DateTime<Utc>,
    window: Duration,
    now: DateTime<Utc>,
) -> bool {
    let since = last_good.unwrap_or(watched_since);
    (now - since).to_std().is_ok_and(|age| age > window)
}

#[derive(Debug, Clone)]
struct Planned {
    schedule: JobSchedule,
    next: Option<DateTime<Utc>>,
    running: bool,
}

/// What `Planner::due` decided at one instant.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Due {
    /// Jobs to start now (each is now marked running).
    pub start: Vec<String>,
    /// Jobs whose time came while their previous run was still going: this
    /// occurrence is skipped, never queued behind it nor run alongside it.
    pub skipped: Vec<String>,
}

/// The scheduled jobs and when each runs next.
#[derive(Debug, Default)]
pub struct Planner {
    jobs: BTreeMap<String, Planned>,
}

impl Planner {
    pub fn new() -> Planner {
        Planner::default()
    }

    /// Sets the scheduled jobs (at start-up and on every reload). A job whose schedule
    /// is unchanged keeps its next time and its running state; a changed one is
    /// planned afresh from `now`. A new job with `catch_up` whose last run (from
    /// `last_run`) is older than an occurrence that has already passed is due at once
    /// — once, however many occurrences were missed. Removed jobs are forgotten (one
    /// still running finishes on its own).
    pub fn update(
        &mut self,
        schedules: impl IntoIterator<Item = (String, JobSchedule)>,
        last_run: impl Fn(&str) -> Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) {
        let mut jobs = BTreeMap::new();
        for (name, schedule) in schedules {
            let planned = match self.jobs.remove(&name) {
                Some(old) if old.schedule == schedule => old,
                Some(old) => Planned {
                    next: schedule.next_after(now),
                    schedule,
                    running: old.running,
                },
                None => {
                    let missed = schedule.catch_up
                        && last_run(&name)
                            .and_then(|last| schedule.next_after(last))
                            .is_some_and(|t| t <= now);
                    Planned {
                        next: if missed {
                            Some(now)
                        } else {
                            schedule.next_after(now)
                        },
                        schedule,
                        running: false,
                    }
                }
            };
            jobs.insert(name, planned);
        }
        self.jobs = jobs;
    }

    /// The jobs due at `now`; each one's next time moves past `now`.
    pub fn due(&mut self, now: DateTime<Utc>) -> Due {
        let mut due = Due::default();
        for (name, job) in &mut self.jobs {
            if job.next.is_none_or(|t| t > now) {
                continue;
            }
            job.next = job.schedule.next_after(now);
            if job.running {
                due.skipped.push(name.clone());
            } else {
                job.running = true;
                due.start.push(name.clone());
            }
        }
        due
    }

    /// Marks a run as over, so the job can be due again.
    pub fn finished(&mut self, job: &str) {
        if let Some(j) = self.jobs.get_mut(job) {
            j.running = false;
        }
    }

    /// Marks a job as running outside the schedule (a manual run), so no scheduled
    /// run starts beside it. False if it already runs.
    pub fn claim(&mut self, job: &str) -> bool {
        match self.jobs.get_mut(job) {
            Some(j) if j.running => false,
            Some(j) => {
                j.running = true;
                true
            }
            None => true,
        }
    }

    pub fn is_running(&self, job: &str) -> bool {
        self.jobs.get(job).is_some_and(|j| j.running)
    }

    pub fn next_run(&self, job: &str) -> Option<DateTime<Utc>> {
        self.jobs.get(job).and_then(|j| j.next)
    }

    /// The earliest moment any job is due (the scheduler sleeps until then).
    pub fn next_wake(&self) -> Option<DateTime<Utc>> {
        self.jobs.values().filter_map(|j| j.next).min()
    }

    pub fn jobs(&self) -> impl Iterator<Item = &str> {
        self.jobs.keys().map(String::as_str)
    }
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

    fn at(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, 0).unwrap()
    }

    fn planner(expr: &str, tz: &str, last: Option<DateTime<Utc>>, now: DateTime<Utc>) -> Planner {
        let mut p = Planner::new();
        let s = JobSchedule::new(expr, tz, true).unwrap();
        p.update([("job".to_string(), s)], |_| last, now);
        p
    }

    /// Steps a fake clock from wake-up to wake-up, finishing each run at once, and
    /// returns every start time until `end`.
    fn starts_until(p: &mut Planner, end: DateTime<Utc>) -> Vec<DateTime<Utc>> {
        let mut out = Vec::new();
        while let Some(t) = p.next_wake().filter(|t| *t <= end) {
            for job in p.due(t).start {
                out.push(t);
                p.finished(&job);
            }
        }
        out
    }

    #[test]
    fn nightly_job_runs_once_a_night_across_both_dst_changes() {
        let berlin: chrono_tz::Tz = "Europe/Berlin".parse().unwrap();
        for (from, to) in [
            (at(2027, 3, 25, 0, 0), at(2027, 3, 31, 0, 0)),
            (at(2027, 10, 28, 0, 0), at(2027, 11, 3, 0, 0)),
        ] {
            let mut p = planner("30 2 * * *", "Europe/Berlin", None, from);
            let starts = starts_until(&mut p, to);
            let days: Vec<String> = starts
                .iter()
                .map(|t| t.with_timezone(&berlin).date_naive().to_string())
                .collect();
            let mut unique = days.clone();
            unique.dedup();
            assert_eq!(days, unique, "a night ran twice: {starts:?}");
            assert_eq!(days.len(), 6, "a night was skipped: {starts:?}");
        }
        // Spring forward: 02:30 does not exist on 2027-03-28, the run is at 03:00 CEST.
        let mut p = planner("30 2 * * *", "Europe/Berlin", None, at(2027, 3, 27, 12, 0));
        let spring = starts_until(&mut p, at(2027, 3, 28, 12, 0));
        assert_eq!(spring, vec![at(2027, 3, 28, 1, 0)]);
        // Fall back: 02:30 happens twice on 2027-10-31, the run happens at the first.
        let mut p = planner("30 2 * * *", "Europe/Berlin", None, at(2027, 10, 30, 12, 0));
        let autumn = starts_until(&mut p, at(2027, 10, 31, 12, 0));
        assert_eq!(autumn, vec![at(2027, 10, 31, 0, 30)]);
    }

    #[test]
    fn hourly_job_keeps_the_repeated_hour_in_autumn() {
        let mut p = planner("15 * * * *", "Europe/Berlin", None, at(2027, 10, 30, 23, 0));
        let starts = starts_until(&mut p, at(2027, 10, 31, 3, 0));
        // 01:15 CEST, 02:15 CEST, 02:15 CET, 03:15 CET in local time: four UTC hours.
        assert_eq!(
            starts,
            vec![
                at(2027, 10, 30, 23, 15),
                at(2027, 10, 31, 0, 15),
                at(2027, 10, 31, 1, 15),
                at(2027, 10, 31, 2, 15)
            ]
        );
    }

    #[test]
    fn missed_runs_during_downtime_run_once_at_start() {
        // Last ran three nights ago; the daemon comes back at noon.
        let now = at(2027, 6, 10, 12, 0);
        let mut p = planner("0 2 * * *", "UTC", Some(at(2027, 6, 7, 2, 0)), now);
        assert_eq!(p.next_wake(), Some(now));
        assert_eq!(p.due(now).start, vec!["job".to_string()]);
        p.finished("job");
        // The next run is the regular one, not another catch-up.
        assert_eq!(p.next_wake(), Some(at(2027, 6, 11, 2, 0)));
        assert!(p.due(at(2027, 6, 10, 12, 1)).start.is_empty());
    }

    #[test]
    fn catch_up_can_be_turned_off_and_needs_a_missed_occurrence() {
        let now = at(2027, 6, 10, 12, 0);
        let mut p = Planner::new();
        let s = JobSchedule::new("0 2 * * *", "UTC", false).unwrap();
        p.update([("job".into(), s)], |_| Some(at(2027, 6, 7, 2, 0)), now);
        assert_eq!(p.next_wake(), Some(at(2027, 6, 11, 2, 0)));
        // Ran this morning: nothing was missed.
        let p = planner("0 2 * * *", "UTC", Some(at(2027, 6, 10, 2, 0)), now);
        assert_eq!(p.next_wake(), Some(at(2027, 6, 11, 2, 0)));
        // Never ran: nothing to catch up on (the overdue alert covers that case).
        let mut p = planner("0 2 * * *", "UTC", None, now);
        assert!(p.due(now).start.is_empty());
    }

    #[test]
    fn a_run_that_outlasts_its_interval_is_never_overlapped() {
        let t0 = at(2027, 1, 1, 0, 0);
        let mut p = planner("*/10 * * * *", "UTC", None, t0);
        let first = at(2027, 1, 1, 0, 10);
        assert_eq!(p.due(first).start, vec!["job".to_string()]);
        // Still running at 00:20 and 00:30: skipped, not started and not queued.
        for t in [at(2027, 1, 1, 0, 20), at(2027, 1, 1, 0, 30)] {
            assert_eq!(p.next_wake(), Some(t));
            let due = p.due(t);
            assert!(due.start.is_empty());
            assert_eq!(due.skipped, vec!["job".to_string()]);
        }
        p.finished("job");
        assert!(p.due(at(2027, 1, 1, 0, 35)).start.is_empty());
        assert_eq!(p.due(at(2027, 1, 1, 0, 40)).start, vec!["job".to_string()]);
    }

    #[test]
    fn reload_keeps_unchanged_jobs_and_replans_changed_ones() {
        let t0 = at(2027, 1, 1, 0, 0);
        let mut p = planner("0 2 * * *", "UTC", None, t0);
        assert!(p.claim("job"));
        assert!(!p.claim("job"));
        let same = JobSchedule::new("0 2 * * *", "UTC", true).unwrap();
        let new = JobSchedule::new("0 * * * *", "UTC", true).unwrap();
        p.update(
            [
                ("job".to_string(), same),
                ("other".to_string(), new.clone()),
            ],
            |_| None,
            at(2027, 1, 1, 0, 30),
        );
        assert!(
            p.is_running("job"),
            "a reload must not forget a running job"
        );
        assert_eq!(p.next_run("other"), Some(at(2027, 1, 1, 1, 0)));
        p.update([("job".to_string(), new)], |_| None, at(2027, 1, 1, 0, 30));
        assert!(p.is_running("job"));
        assert_eq!(p.next_run("job"), Some(at(2027, 1, 1, 1, 0)));
        assert_eq!(p.jobs().collect::<Vec<_>>(), vec!["job"]);
    }

    #[test]
    fn the_documented_syntax_is_accepted() {
        for expr in [
            "@daily",
            "@hourly",
            "0 2 L * *",
            "0 2 15W * *",
            "0 2 * * MON#1",
            "0 2 * * 7",
            "*/15 8-18 * JAN-MAR MON-FRI",
        ] {
            assert!(parse(expr).is_ok(), "{expr}: {:?}", parse(expr).err());
        }
        // Sunday is both 0 and 7; 1 is Monday.
        let sunday = at(2027, 1, 3, 0, 0);
        let utc = chrono_tz::UTC;
        for expr in ["0 2 * * 0", "0 2 * * 7", "0 2 * * SUN"] {
            assert_eq!(
                next_after(
                    &parse(expr).unwrap(),
                    utc,
                    sunday - chrono::Duration::days(1)
                ),
                Some(at(2027, 1, 3, 2, 0))
            );
        }
        assert_eq!(
            next_after(&parse("0 2 * * 1").unwrap(), utc, sunday),
            Some(at(2027, 1, 4, 2, 0))
        );
        // Day of month OR day of week (Vixie): the 13th and every Friday.
        let cron = parse("0 2 13 * FRI").unwrap();
        let first = next_after(&cron, utc, at(2027, 1, 1, 3, 0)).unwrap();
        assert_eq!(first, at(2027, 1, 8, 2, 0)); // a Friday
        let second = next_after(&cron, utc, at(2027, 1, 9, 0, 0)).unwrap();
        assert_eq!(second, at(2027, 1, 13, 2, 0)); // a Wednesday, the 13th
    }

    #[test]
    fn overdue_windows() {
        let nightly = JobSchedule::new("0 2 * * *", "Europe/Berlin", true).unwrap();
        assert_eq!(
            nightly.longest_gap(at(2027, 3, 20, 0, 0)),
            Some(Duration::from_secs(24 * 3600))
        );
        let weekly = JobSchedule::new("0 6 * * 0", "UTC", true).unwrap();
        assert_eq!(
            weekly.longest_gap(at(2027, 1, 1, 0, 0)),
            Some(Duration::from_secs(7 * 24 * 3600))
        );
        let window = Duration::from_secs(26 * 3600);
        let now = at(2027, 1, 3, 12, 0);
        assert!(!is_overdue(
            Some(at(2027, 1, 3, 2, 0)),
            at(2026, 1, 1, 0, 0),
            window,
            now
        ));
        assert!(is_overdue(
            Some(at(2027, 1, 2, 2, 0)),
            at(2026, 1, 1, 0, 0),
            window,
            now
        ));
        // Nothing ever ran: overdue once the job has been watched for the window.
        assert!(!is_overdue(None, at(2027, 1, 3, 0, 0), window, now));
        assert!(is_overdue(None, at(2027, 1, 2, 0, 0), window, now));
    }
}

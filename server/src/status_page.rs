//! The status page: one plain HTML document, rendered on the server, no script. Per
//! job its state (last run, last good backup, next run, overdue, last restore test,
//! last error) and an inline SVG chart of the size and duration of its last 60 runs,
//! so that a backup much smaller than usual stands out at a glance. Read-only.

use std::collections::BTreeMap;
use std::fmt::Write;

use bk_core::catalog::{RunRecord, RunStatus};
use bk_core::commands::status::{JobStatus, Status};
use bk_core::config::ByteSize;
use chrono::{DateTime, Utc};

/// Runs charted per job.
pub const CHART_RUNS: usize = 60;
/// Size bars; the e2e test finds the chart in a screenshot by these exact colours.
const BAR: &str = "#2f6fdf";
/// A good backup under half the median size of the good backups before it.
const SMALL_BAR: &str = "#f0a000";
const FAILED_MARK: &str = "#d0342c";
const DURATION_LINE: &str = "#16a34a";

const STYLE: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:16px 24px;color:#1f2328}\
h1{font-size:18px;margin:0 0 4px}h2{font-size:16px;margin:18px 0 4px}\
table{border-collapse:collapse}th,td{text-align:left;padding:3px 10px 3px 0;vertical-align:top}\
th{font-weight:600;border-bottom:1px solid #d0d7de}.muted{color:#656d76}\
.ok{color:#1a7f37;font-weight:600}.bad{color:#cf222e;font-weight:600}.warn{color:#9a6700;font-weight:600}\
.job{display:inline-block;margin:0 24px 8px 0;vertical-align:top}.err{color:#cf222e;max-width:70em}\
svg text{font:11px system-ui,sans-serif;fill:#656d76}";

/// The whole page.
pub fn render(
    status: &Status,
    runs: &BTreeMap<String, Vec<RunRecord>>,
    host: &str,
    version: &str,
) -> String {
    let now = status.generated;
    let mut h = String::with_capacity(32 << 10);
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"60\"><title>bk status: {host}</title>\
         <style>{STYLE}</style></head><body>\
         <h1>bk-server {version} on {host}</h1>\
         <p class=\"muted\">{} · refreshes every minute · also: \
         <a href=\"/api/status\">/api/status</a> (JSON), <a href=\"/metrics\">/metrics</a>, \
         <code>curl /</code> (text)</p>",
        time(Some(now)),
        host = esc(host),
        version = esc(version),
    );
    h.push_str(
        "<table><tr><th>job</th><th>state</th><th>last run</th><th>last good backup</th>\
         <th>next run</th><th>last restore test</th></tr>",
    );
    for job in &status.jobs {
        summary_row(&mut h, job, now);
    }
    h.push_str("</table>");
    for job in &status.jobs {
        let empty = Vec::new();
        let job_runs = runs.get(&job.job).unwrap_or(&empty);
        let _ = write!(
            h,
            "<div class=\"job\" id=\"job-{name}\"><h2>{name} <span class=\"muted\">{kind} on {host}</span></h2>",
            name = esc(&job.job),
            kind = esc(&job.kind),
            host = esc(&job.host)
        );
        if let Some(note) = small_note(job_runs) {
            let _ = write!(h, "<p class=\"warn\">{}</p>", esc(&note));
        }
        chart(&mut h, job_runs);
        if let Some(err) = job.last_run.as_ref().and_then(|r| r.error.as_deref()) {
            let _ = write!(
                h,
                "<p class=\"err\">last error: {}</p>",
                esc(&first_chars(err, 400))
            );
        }
        h.push_str("</div>");
    }
    h.push_str("</body></html>\n");
    h
}

fn summary_row(h: &mut String, job: &JobStatus, now: DateTime<Utc>) {
    let last = job.last_run.as_ref();
    let (class, state) = match last.map(|r| r.status) {
        _ if job.overdue => ("bad", "OVERDUE".to_string()),
        Some(RunStatus::Failed) => ("bad", "FAILED".into()),
        Some(RunStatus::Interrupted) => ("warn", "interrupted".into()),
        Some(RunStatus::Running) => ("warn", "running".into()),
        Some(RunStatus::Success) => ("ok", "ok".into()),
        None => ("muted", "never ran".into()),
    };
    let last_run = last
        .map(|r| {
            format!(
                "{} {} ({})",
                r.status.as_str(),
                ago(r.started, now),
                r.finished
                    .map(|f| duration((f - r.started).num_milliseconds().max(0) as f64 / 1000.0))
                    .unwrap_or_else(|| "running".into())
            )
        })
        .unwrap_or_else(|| "-".into());
    let good = job
        .last_good_backup
        .as_ref()
        .map(|b| {
            format!(
                "{} · {} ({} stored)",
                ago(b.finished, now),
                ByteSize(b.source_size),
                ByteSize(b.stored_size)
            )
        })
        .unwrap_or_else(|| "none".into());
    let next = job
        .next_run
        .map(|t| time(Some(t)))
        .unwrap_or_else(|| "manual".into());
    let _ = write!(
        h,
        "<tr><td><a href=\"#job-{name}\">{name}</a></td><td class=\"{class}\">{state}</td>\
         <td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
        esc(&last_run),
        esc(&good),
        esc(&next),
        esc(&restore_test(job, now)),
        name = esc(&job.job),
    );
}

/// The job's last restore test, read from its JSON form so that the page shows it
/// whichever fields the catalog's restore-test record carries.
fn restore_test(job: &JobStatus, now: DateTime<Utc>) -> String {
    let Ok(v) = serde_json::to_value(job) else {
        return "-".into();
    };
    let Some(test) = v.get("last_restore_test").filter(|t| t.is_object()) else {
        return "-".into();
    };
    let status = test.get("status").and_then(|s| s.as_str()).unwrap_or("?");
    let when = ["finished", "started"]
        .iter()
        .filter_map(|k| test.get(*k).and_then(|t| t.as_str()))
        .find_map(|t| DateTime::parse_from_rfc3339(t).ok())
        .map(|t| ago(t.with_timezone(&Utc), now))
        .unwrap_or_default();
    format!("{status} {when}").trim().to_string()
}

/// "the newest backup is 8% of the median size", when it is under half of it.
fn small_note(runs: &[RunRecord]) -> Option<String> {
    let sizes: Vec<u64> = runs
        .iter()
        .rev()
        .filter(|r| r.status == RunStatus::Success)
        .filter_map(|r| r.bytes_in)
        .collect();
    let (&newest, before) = sizes.split_last()?;
    let median = median(before)?;
    (newest * 2 < median).then(|| {
        format!(
            "The newest backup is {} — {:.0}% of the median of the {} before it ({}).",
            ByteSize(newest),
            newest as f64 * 100.0 / median as f64,
            before.len(),
            ByteSize(median)
        )
    })
}

fn median(values: &[u64]) -> Option<u64> {
    let mut v = values.to_vec();
    v.sort_unstable();
    v.get(v.len() / 2).copied().filter(|_| !v.is_empty())
}

/// Size bars (oldest left), a duration line, failed runs marked red below the axis.
fn chart(h: &mut String, runs: &[RunRecord]) {
    const W: f64 = 640.0;
    const H: f64 = 170.0;
    const LEFT: f64 = 64.0;
    const RIGHT: f64 = 56.0;
    const TOP: f64 = 10.0;
    const BOTTOM: f64 = 30.0;
    let runs: Vec<&RunRecord> = runs.iter().take(CHART_RUNS).rev().collect();
    let plot_w = W - LEFT - RIGHT;
    let plot_h = H - TOP - BOTTOM;
    let base = TOP + plot_h;
    let slot = plot_w / CHART_RUNS as f64;
    let max_size = runs
        .iter()
        .filter_map(|r| r.bytes_in)
        .max()
        .unwrap_or(0)
        .max(1);
    let secs = |r: &RunRecord| {
        r.finished
            .map(|f| (f - r.started).num_milliseconds().max(0) as f64 / 1000.0)
    };
    let max_secs = runs
        .iter()
        .filter_map(|r| secs(r))
        .fold(0.0f64, f64::max)
        .max(0.001);
    let _ = write!(
        h,
        "<svg width=\"{W}\" height=\"{H}\" viewBox=\"0 0 {W} {H}\" role=\"img\" \
         aria-label=\"size and duration of the last {n} runs\">\
         <rect x=\"{LEFT}\" y=\"{TOP}\" width=\"{plot_w}\" height=\"{plot_h}\" fill=\"#f6f8fa\"/>\
         <line x1=\"{LEFT}\" y1=\"{base}\" x2=\"{x2}\" y2=\"{base}\" stroke=\"#8c959f\"/>\
         <text x=\"{lx}\" y=\"{ty}\" text-anchor=\"end\">{max}</text>\
         <text x=\"{lx}\" y=\"{base}\" text-anchor=\"end\">0</text>\
         <text x=\"{rx}\" y=\"{ty}\">{maxd}</text>\
         <text x=\"{LEFT}\" y=\"{by}\">size (bars) and duration (line) of the last {n} runs, oldest left</text>",
        n = runs.len(),
        x2 = LEFT + plot_w,
        lx = LEFT - 4.0,
        rx = LEFT + plot_w + 4.0,
        ty = TOP + 9.0,
        by = H - 8.0,
        max = if runs.iter().any(|r| r.bytes_in.is_some()) {
            ByteSize(max_size).to_string()
        } else {
            String::new()
        },
        maxd = duration(max_secs),
    );
    let mut good_sizes: Vec<u64> = Vec::new();
    let mut line = Vec::new();
    // Bars go after the duration line, so the line never hides part of a bar.
    let mut marks = String::new();
    for (i, r) in runs.iter().enumerate() {
        let x = LEFT + slot * i as f64 + slot * 0.15;
        let bw = slot * 0.7;
        let when = time(Some(r.started));
        match (r.status, r.bytes_in) {
            (RunStatus::Success, Some(size)) => {
                let bh = (size as f64 / max_size as f64 * plot_h).max(1.0);
                let small = median(&good_sizes).is_some_and(|m| size * 2 < m);
                let _ = write!(
                    marks,
                    "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"{bw:.1}\" height=\"{bh:.1}\" fill=\"{}\">\
                     <title>{when}: {} in {}</title></rect>",
                    base - bh,
                    if small { SMALL_BAR } else { BAR },
                    ByteSize(size),
                    secs(r).map(duration).unwrap_or_default(),
                );
                good_sizes.push(size);
            }
            (status, _) if status != RunStatus::Running => {
                let _ = write!(
                    marks,
                    "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"{bw:.1}\" height=\"6\" fill=\"{FAILED_MARK}\">\
                     <title>{when}: {}</title></rect>",
                    base + 2.0,
                    status.as_str()
                );
            }
            _ => {}
        }
        if let Some(s) = secs(r) {
            line.push(format!(
                "{:.1},{:.1}",
                x + bw / 2.0,
                base - s / max_secs * plot_h
            ));
        }
    }
    if !line.is_empty() {
        let _ = write!(
            h,
            "<polyline points=\"{}\" fill=\"none\" stroke=\"{DURATION_LINE}\" stroke-width=\"2\"/>",
            line.join(" ")
        );
    }
    h.push_str(&marks);
    if runs.is_empty() {
        let _ = write!(
            h,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">no runs yet</text>",
            LEFT + plot_w / 2.0,
            TOP + plot_h / 2.0
        );
    }
    h.push_str("</svg>");
}

fn time(t: Option<DateTime<Utc>>) -> String {
    t.map(|t| t.format("%Y-%m-%d %H:%M UTC").to_string())
        .unwrap_or_else(|| "-".into())
}

/// "3m ago", "2h ago", "5d ago".
fn ago(t: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let secs = (now - t).num_seconds().max(0);
    match secs {
        0..60 => format!("{secs}s ago"),
        60..3600 => format!("{}m ago", secs / 60),
        3600..86400 => format!("{}h ago", secs / 3600),
        _ => format!("{}d ago", secs / 86400),
    }
}

/// "0.4s", "42s", "3m 20s", "2h 5m".
pub fn duration(secs: f64) -> String {
    let s = secs.round() as u64;
    match s {
        _ if secs < 10.0 => format!("{secs:.1}s"),
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m {}s", s / 60, s % 60),
        _ => format!("{}h {}m", s / 3600, s % 3600 / 60),
    }
}

fn first_chars(s: &str, n: usize) -> String {
    match s.char_indices().nth(n) {
        Some((cut, _)) => format!("{}…", &s[..cut]),
        None => s.to_string(),
    }
}

fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// docs/operations.md names only metrics this daemon exports.
    #[test]
    fn the_documented_alert_rules_use_real_metric_names() {
        let doc = include_str!("../../docs/operations.md");
        let exported = include_str!("metrics.rs");
        let rules = doc
            .split("```yaml\ngroups:")
            .nth(1)
            .and_then(|r| r.split("```").next())
            .expect("the alert rules block");
        let mut names: Vec<&str> = rules
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with("bk_"))
            .collect();
        names.sort_unstable();
        names.dedup();
        assert!(names.len() >= 8, "{names:?}");
        for name in names {
            assert!(
                exported.contains(&format!("\"{name}\"")),
                "docs/operations.md uses `{name}`, which server/src/metrics.rs does not export"
            );
        }
    }

    #[test]
    fn escapes_and_formats() {
        assert_eq!(
            esc("<a href='x'>&</a>"),
            "&lt;a href=&#39;x&#39;&gt;&amp;&lt;/a&gt;"
        );
        assert_eq!(duration(0.42), "0.4s");
        assert_eq!(duration(200.0), "3m 20s");
        assert_eq!(duration(7500.0), "2h 5m");
        assert_eq!(median(&[5, 1, 3]), Some(3));
        assert_eq!(median(&[]), None);
    }
}

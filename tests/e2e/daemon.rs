//! The daemon as an operator meets it: `bk-server` started for real on a free port,
//! driven by signals, watched through /metrics, /api/status, its log, the catalog and
//! the alerts it sends. Scheduled jobs are made due at start-up through catch-up (a
//! seeded old run), so no test waits for a cron minute.

use std::time::Duration;

use bk_e2e::daemon::{
    commit_records, free_port, last_run_row, seed_past_run, server_section, wait_for, Daemon,
    Receiver,
};
use bk_e2e::Workspace;

/// Prints about 1 MiB every 50 ms until stopped; dies on a broken pipe.
const ENDLESS: &str = "set -e; while true; do head -c 1048576 /dev/urandom; sleep 0.05; done";

fn metrics(d: &Daemon) -> prometheus_parse::Scrape {
    let (code, body) = d.get("/metrics");
    assert_eq!(code, 200, "{body}");
    prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_string())))
        .unwrap_or_else(|e| panic!("/metrics is not Prometheus text ({e}):\n{body}"))
}

/// The value of `name` whose labels include every pair in `labels`.
fn sample(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    scrape
        .samples
        .iter()
        .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => f64::NAN,
        })
}

fn job_status<'a>(status: &'a serde_json::Value, job: &str) -> Option<&'a serde_json::Value> {
    status["jobs"].as_array()?.iter().find(|j| j["job"] == job)
}

#[test]
fn a_failed_run_shows_in_metrics_logs_and_alerts() {
    let hooks = Receiver::start();
    let port = free_port();
    let mut ws = Workspace::new();
    ws.add(&format!(
        "{}log_format = \"json\"\n",
        server_section(port, "5s")
    ));
    ws.add(&format!(
        "[alerts]\nwebhook = \"{0}/hook\"\nping = \"{0}/ping\"\n",
        hooks.url
    ));
    ws.add("[jobs.broken]\nkind = \"command\"\ncommand = \"echo partial; echo disk on fire >&2; exit 3\"\nschedule = \"0 2 * * *\"\n");
    seed_past_run(&ws, "broken");
    let mut d = Daemon::start(&ws, port);

    let hook = hooks.wait_for(Duration::from_secs(30), "the failure webhook", |r| {
        r.path == "/hook"
    });
    let alert: serde_json::Value = serde_json::from_str(&hook.body).expect("webhook body is JSON");
    assert_eq!(alert["event"], "backup_failed");
    assert_eq!(alert["job"], "broken");
    assert_eq!(alert["status"], "failed");
    assert!(alert["run"].as_i64().is_some(), "{alert}");
    assert!(
        alert["error"]
            .as_str()
            .unwrap_or("")
            .contains("disk on fire"),
        "{alert}"
    );
    hooks.wait_for(Duration::from_secs(10), "the /start ping", |r| {
        r.path == "/ping/start"
    });
    let fail = hooks.wait_for(Duration::from_secs(10), "the /fail ping", |r| {
        r.path == "/ping/fail"
    });
    assert!(fail.body.contains("disk on fire"), "{}", fail.body);
    assert!(
        !hooks.received().iter().any(|r| r.path == "/ping"),
        "a failed run must not ping success"
    );

    let m = metrics(&d);
    assert_eq!(sample(&m, "bk_up", &[]), Some(1.0));
    assert_eq!(
        sample(&m, "bk_job_failures_total", &[("job", "broken")]),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &m,
            "bk_job_runs_total",
            &[("job", "broken"), ("status", "failed")]
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &m,
            "bk_job_last_run_status",
            &[("job", "broken"), ("status", "failed")]
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &m,
            "bk_job_last_run_status",
            &[("job", "broken"), ("status", "success")]
        ),
        Some(0.0)
    );
    assert!(sample(
        &m,
        "bk_job_next_run_timestamp_seconds",
        &[("job", "broken")]
    )
    .is_some());
    assert_eq!(commit_records(&ws, "broken").len(), 0);
    // A reload keeps the counters.
    d.signal(libc::SIGHUP);
    d.wait_for_log("configuration reloaded", Duration::from_secs(10));
    assert_eq!(
        sample(&metrics(&d), "bk_job_failures_total", &[("job", "broken")]),
        Some(1.0)
    );
    let (code, page) = d.get("/");
    assert_eq!(code, 200);
    let line = page
        .lines()
        .find(|l| l.starts_with("broken"))
        .unwrap_or_else(|| panic!("{page}"));
    assert!(
        line.contains("failed") && line.contains("disk on fire"),
        "{page}"
    );
    let (status, error) = last_run_row(&ws.catalog(), "broken").expect("a run row");
    assert_eq!(status, "failed");
    assert!(error.unwrap_or_default().contains("disk on fire"));

    // JSON logs: one object per line; every line of the run names its job and run.
    d.signal(libc::SIGTERM);
    assert_eq!(d.wait_exit(Duration::from_secs(20)), 0, "{}", d.log());
    let log = d.log();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("log line is not JSON ({e}): {l}"))
        })
        .collect();
    let failed = lines
        .iter()
        .find(|l| l["message"] == "backup failed")
        .unwrap_or_else(|| panic!("no `backup failed` line:\n{log}"));
    assert_eq!(failed["span"]["job"], "broken", "{failed}");
    assert_eq!(failed["span"]["run"], alert["run"], "{failed}");
}

#[test]
fn a_job_with_no_good_backup_in_its_window_raises_one_overdue_alert() {
    let hooks = Receiver::start();
    let port = free_port();
    let mut ws = Workspace::new();
    ws.add(&server_section(port, "5s"));
    ws.add(&format!("[alerts]\nwebhook = \"{}/hook\"\n", hooks.url));
    // Never scheduled, never run: the case where nothing ran at all.
    ws.add(
        "[jobs.forgotten]\nkind = \"command\"\ncommand = \"echo data\"\nexpect_within = \"1s\"\n",
    );
    let d = Daemon::start(&ws, port);

    let hook = hooks.wait_for(Duration::from_secs(15), "the overdue webhook", |r| {
        r.body.contains("overdue")
    });
    let alert: serde_json::Value = serde_json::from_str(&hook.body).expect("JSON");
    assert_eq!(alert["event"], "overdue");
    assert_eq!(alert["job"], "forgotten");
    assert!(
        alert["error"]
            .as_str()
            .unwrap_or("")
            .contains("none at all"),
        "{alert}"
    );
    assert_eq!(
        sample(&metrics(&d), "bk_job_overdue", &[("job", "forgotten")]),
        Some(1.0)
    );
    assert_eq!(
        job_status(&d.status(), "forgotten").map(|j| j["overdue"].clone()),
        Some(serde_json::Value::Bool(true))
    );
    // One alert per overdue episode, not one per check.
    std::thread::sleep(Duration::from_secs(3));
    let overdue = hooks
        .received()
        .iter()
        .filter(|r| r.body.contains("\"overdue\""))
        .count();
    assert_eq!(overdue, 1);
}

#[test]
fn reload_adds_and_removes_jobs_keeps_running_ones_and_rejects_a_bad_config() {
    let port = free_port();
    let mut ws = Workspace::new();
    ws.add(&server_section(port, "5s"));
    ws.add("[jobs.slow]\nkind = \"command\"\ncommand = \"for i in $(seq 1 15); do echo line $i; sleep 0.2; done\"\nschedule = \"0 2 * * *\"\n");
    const DOOMED: &str =
        "[jobs.doomed]\nkind = \"command\"\ncommand = \"echo bye\"\nschedule = \"0 4 * * *\"\n";
    ws.add(DOOMED);
    seed_past_run(&ws, "slow");
    let d = Daemon::start(&ws, port);
    d.wait_for_log("backup started", Duration::from_secs(20));
    assert!(job_status(&d.status(), "doomed").is_some());

    // A good new config adds one job and removes another while `slow` is running.
    ws.add("[jobs.added]\nkind = \"command\"\ncommand = \"echo hi\"\nschedule = \"0 3 * * *\"\n");
    let text = std::fs::read_to_string(&ws.config).expect("config");
    std::fs::write(&ws.config, text.replace(DOOMED, "")).expect("write");
    d.signal(libc::SIGHUP);
    d.wait_for_log("configuration reloaded", Duration::from_secs(10));
    wait_for(
        Duration::from_secs(10),
        "job `added` in /api/status",
        || job_status(&d.status(), "added").map(|_| ()),
    );
    assert!(job_status(&d.status(), "doomed").is_none());
    let m = metrics(&d);
    assert_eq!(sample(&m, "bk_jobs_configured", &[]), Some(2.0));
    assert_eq!(
        sample(&m, "bk_jobs_running", &[]),
        Some(1.0),
        "`slow` must still be running"
    );

    // A bad one is rejected and the running configuration stays.
    let good = std::fs::read_to_string(&ws.config).expect("config");
    std::fs::write(&ws.config, format!("{good}\n[jobs.bad]\nkind = \"command\"\ncommand = \"true\"\nschedule = \"61 * * * *\"\n")).expect("write");
    d.signal(libc::SIGHUP);
    let log = d.wait_for_log("rejected", Duration::from_secs(10));
    assert!(
        log.contains("jobs.bad.schedule"),
        "the log must name the bad key:\n{log}"
    );
    let status = d.status();
    assert!(job_status(&status, "bad").is_none());
    assert!(job_status(&status, "added").is_some() && job_status(&status, "slow").is_some());
    assert_eq!(
        sample(&metrics(&d), "bk_config_last_reload_successful", &[]),
        Some(0.0)
    );

    // The run that was going on through both reloads finishes and commits.
    wait_for(Duration::from_secs(30), "`slow` to succeed", || {
        (job_status(&d.status(), "slow")?["last_run"]["status"] == "success").then_some(())
    });
    assert_eq!(commit_records(&ws, "slow").len(), 1);
    let m = metrics(&d);
    assert!(sample(
        &m,
        "bk_job_last_success_timestamp_seconds",
        &[("job", "slow")]
    )
    .is_some_and(|t| t > 1e9));
    assert!(sample(&m, "bk_job_last_bytes_read", &[("job", "slow")]).is_some_and(|b| b > 0.0));
}

#[test]
fn sigterm_during_a_backup_interrupts_it_and_commits_nothing() {
    let port = free_port();
    let mut ws = Workspace::new();
    ws.add(&server_section(port, "1s"));
    ws.add(&format!(
        "[jobs.big]\nkind = \"command\"\ncommand = \"{ENDLESS}\"\nschedule = \"0 2 * * *\"\n"
    ));
    seed_past_run(&ws, "big");
    let mut d = Daemon::start(&ws, port);
    d.wait_for_log("backup started", Duration::from_secs(20));
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(
        last_run_row(&ws.catalog(), "big").map(|r| r.0).as_deref(),
        Some("running")
    );
    // A job never runs twice at once, not even by hand beside the daemon.
    let twice = ws.bk(&["run", "big"]).fails_with(1);
    assert!(twice.stderr.contains("already running"), "{}", twice.stderr);

    d.signal(libc::SIGTERM);
    assert_eq!(d.wait_exit(Duration::from_secs(30)), 0, "{}", d.log());
    let log = d.log();
    assert!(log.contains("interrupting running jobs"), "{log}");
    let (status, error) = last_run_row(&ws.catalog(), "big").expect("run row");
    assert_eq!(status, "interrupted", "{log}");
    assert!(error.unwrap_or_default().contains("nothing was committed"));
    assert!(commit_records(&ws, "big").is_empty());
    assert!(ws
        .bk(&["list", "big", "--json"])
        .ok()
        .json()
        .as_array()
        .is_some_and(|a| a.is_empty()));
}

#[test]
fn kill_9_during_a_backup_is_recovered_at_the_next_start() {
    let port = free_port();
    let mut ws = Workspace::new();
    ws.add(&server_section(port, "1s"));
    ws.add(&format!(
        "[jobs.big]\nkind = \"command\"\ncommand = \"{ENDLESS}\"\nschedule = \"0 2 * * *\"\n"
    ));
    seed_past_run(&ws, "big");
    let mut d = Daemon::start(&ws, port);
    d.wait_for_log("backup started", Duration::from_secs(20));
    std::thread::sleep(Duration::from_millis(500));
    d.kill9();
    assert_eq!(
        last_run_row(&ws.catalog(), "big").map(|r| r.0).as_deref(),
        Some("running")
    );
    assert!(commit_records(&ws, "big").is_empty());

    let mut d = Daemon::start(&ws, port);
    d.wait_for_log("now recorded as interrupted", Duration::from_secs(10));
    let (status, error) = last_run_row(&ws.catalog(), "big").expect("run row");
    assert_eq!(status, "interrupted");
    assert!(error.unwrap_or_default().contains("killed or crashed"));
    // The killed run started after the last scheduled time: nothing to catch up on.
    assert!(!d.log().contains("catching up"), "{}", d.log());
    d.signal(libc::SIGTERM);
    assert_eq!(d.wait_exit(Duration::from_secs(20)), 0);
    assert!(commit_records(&ws, "big").is_empty());
}

#[test]
fn bk_status_shows_an_overdue_job_without_the_daemon() {
    let mut ws = Workspace::new();
    ws.add("[jobs.flaky]\nkind = \"command\"\ncommand = \"exit 1\"\nexpect_within = \"1s\"\n");
    ws.add("[jobs.fine]\nkind = \"command\"\ncommand = \"echo ok\"\nexpect_within = \"1h\"\n");
    ws.bk(&["run", "flaky"]).fails_with(1);
    ws.bk(&["run", "fine"]).ok();
    std::thread::sleep(Duration::from_millis(1500));
    let status = ws.bk(&["status", "--json"]).ok().json();
    assert_eq!(
        job_status(&status, "flaky").map(|j| j["overdue"].clone()),
        Some(serde_json::Value::Bool(true))
    );
    assert_eq!(
        job_status(&status, "fine").map(|j| j["overdue"].clone()),
        Some(serde_json::Value::Bool(false))
    );
    let text = ws.bk(&["status"]).ok().stdout;
    assert!(text.contains("OVERDUE: no good backup within 1s"), "{text}");
}

#[test]
fn readiness_reload_and_stop_are_reported_to_systemd() {
    use std::os::unix::net::UnixDatagram;
    let port = free_port();
    let mut ws = Workspace::new();
    ws.add(&server_section(port, "5s"));
    ws.add("[jobs.manual]\nkind = \"command\"\ncommand = \"echo x\"\n");
    let socket_path = ws.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).expect("bind notify socket");
    socket
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let next = || {
        let mut buf = [0u8; 512];
        let n = socket
            .recv(&mut buf)
            .expect("a notification from bk-server");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let mut d = Daemon::start_with_env(&ws, port, &[("NOTIFY_SOCKET", &socket_path)]);
    assert!(next().contains("READY=1"));
    d.signal(libc::SIGHUP);
    assert!(next().contains("RELOADING=1"));
    assert!(next().contains("READY=1"));
    d.signal(libc::SIGTERM);
    assert!(next().contains("STOPPING=1"));
    assert_eq!(d.wait_exit(Duration::from_secs(20)), 0);
}

/// The start and end of every run of `job`, from the catalog.
fn run_spans(ws: &Workspace, job: &str) -> Vec<(String, String, String)> {
    let db = rusqlite::Connection::open(ws.catalog()).expect("catalog");
    let mut stmt = db
        .prepare(
            "SELECT started, finished, status FROM runs WHERE job = ?1 AND trigger = 'schedule'",
        )
        .expect("query");
    stmt.query_map([job], |r| {
        Ok((
            r.get(0)?,
            r.get::<_, Option<String>>(1)?.unwrap_or_default(),
            r.get(2)?,
        ))
    })
    .expect("rows")
    .collect::<Result<_, _>>()
    .expect("rows")
}

#[test]
fn the_global_limit_serializes_runs_and_a_timeout_fails_a_run() {
    let port = free_port();
    let mut ws = Workspace::new();
    ws.add(&format!(
        "{}max_concurrent_jobs = 1\n",
        server_section(port, "5s")
    ));
    for job in ["one", "two"] {
        ws.add(&format!("[jobs.{job}]\nkind = \"command\"\ncommand = \"sleep 1; echo {job}\"\nschedule = \"0 2 * * *\"\n"));
        seed_past_run(&ws, job);
    }
    ws.add("[jobs.stuck]\nkind = \"command\"\ncommand = \"echo start; sleep 30\"\nschedule = \"0 2 * * *\"\ntimeout = \"1s\"\n");
    seed_past_run(&ws, "stuck");
    let d = Daemon::start(&ws, port);
    wait_for(Duration::from_secs(30), "all three runs to finish", || {
        let status = d.status();
        ["one", "two", "stuck"]
            .iter()
            .all(|j| {
                job_status(&status, j).is_some_and(|s| {
                    s["last_run"]["trigger"] == "schedule" && s["last_run"]["finished"].is_string()
                })
            })
            .then_some(())
    });
    let mut spans: Vec<_> = ["one", "two", "stuck"]
        .iter()
        .flat_map(|j| run_spans(&ws, j))
        .collect();
    spans.sort();
    assert_eq!(spans.len(), 3, "{spans:?}");
    for pair in spans.windows(2) {
        assert!(
            pair[0].1 <= pair[1].0,
            "runs overlapped despite max_concurrent_jobs = 1: {spans:?}"
        );
    }
    let stuck = job_status(&d.status(), "stuck").cloned().expect("stuck");
    assert_eq!(stuck["last_run"]["status"], "failed");
    assert!(
        stuck["last_run"]["error"]
            .as_str()
            .unwrap_or("")
            .contains("timeout"),
        "{stuck}"
    );
    assert!(commit_records(&ws, "stuck").is_empty());
    assert_eq!(
        commit_records(&ws, "one").len() + commit_records(&ws, "two").len(),
        2
    );
}

//! Alerts: a JSON POST to a webhook on a failed run, a failed restore test, an
//! anomalous backup or an overdue job, and healthchecks-style pings (`URL/start`, `URL`, `URL/fail`) around
//! every backup run.
//! Each alert is sent on its own task with retries, so a slow or dead receiver never
//! delays a backup; an alert that still fails is logged and counted, never fatal.
//! A job's `alerts` table replaces the global `[alerts]` keys it sets.

use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use bk_core::config::Config;
use chrono::{DateTime, Utc};
use serde::Serialize;

const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const ATTEMPTS: usize = 5;

#[derive(Debug, thiserror::Error)]
enum SendError {
    #[error("{0}")]
    Request(#[from] reqwest::Error),
    #[error("the receiver answered {0}")]
    Status(reqwest::StatusCode),
}

impl SendError {
    /// A 4xx other than 408/429 will not get better by asking again.
    fn transient(&self) -> bool {
        match self {
            SendError::Request(_) => true,
            SendError::Status(s) => {
                s.is_server_error()
                    || *s == reqwest::StatusCode::TOO_MANY_REQUESTS
                    || *s == reqwest::StatusCode::REQUEST_TIMEOUT
            }
        }
    }
}

/// Where a job's alerts go.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Targets {
    pub webhook: Option<String>,
    pub ping: Option<String>,
}

impl Targets {
    pub fn for_job(config: &Config, job: &str) -> Targets {
        let global = &config.alerts;
        let own = config.job(job).and_then(|j| j.alerts.as_ref());
        Targets {
            webhook: own
                .and_then(|a| a.webhook.clone())
                .or_else(|| global.webhook.clone()),
            ping: own
                .and_then(|a| a.ping.clone())
                .or_else(|| global.ping.clone()),
        }
    }
}

/// The webhook's JSON body.
#[derive(Debug, Clone, Serialize)]
pub struct Alert {
    /// `backup_failed`, `restore_test_failed`, `anomaly` or `overdue`.
    pub event: &'static str,
    pub job: String,
    pub run: Option<i64>,
    /// The run's status (`failed`), or `overdue`.
    pub status: String,
    pub error: Option<String>,
    pub host: String,
    /// The backup server that sends the alert.
    pub server: String,
    pub time: DateTime<Utc>,
    /// When the job's newest good backup finished (overdue alerts).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_good_backup: Option<DateTime<Utc>>,
    /// The backup concerned (a failed restore test's, an anomalous one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backup: Option<String>,
    /// For `anomaly`: each finding with its figures (`error` says them in words).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub anomalies: Vec<bk_core::anomaly::Anomaly>,
}

/// Which healthchecks-style ping.
#[derive(Debug, Clone, Copy)]
pub enum Ping {
    Start,
    Success,
    Fail,
}

#[derive(Clone)]
pub struct Alerter {
    client: reqwest::Client,
}

impl Alerter {
    pub fn new() -> Result<Alerter, reqwest::Error> {
        let client = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .user_agent(concat!("bk-server/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Alerter { client })
    }

    /// Posts `alert` to the webhook, in the background.
    pub fn webhook(&self, targets: &Targets, alert: Alert) {
        let Some(url) = targets.webhook.clone() else {
            return;
        };
        let client = self.client.clone();
        tokio::spawn(async move {
            let send = || async {
                let response = client.post(&url).json(&alert).send().await?;
                check(response.status())
            };
            let result = send
                .retry(backoff())
                .when(SendError::transient)
                .notify(|e, after| {
                    tracing::warn!(job = %alert.job, error = %e, "webhook delivery failed; retrying in {after:?}")
                })
                .await;
            match result {
                Ok(()) => {
                    tracing::info!(job = %alert.job, event = alert.event, "webhook alert delivered")
                }
                Err(e) => {
                    crate::metrics::alert_failed("webhook");
                    tracing::error!(job = %alert.job, event = alert.event, error = %e, "webhook alert not delivered")
                }
            }
        });
    }

    /// Sends a healthchecks-style ping, in the background. `body` (the error of a
    /// failed run) shows up in the receiver's event log.
    pub fn ping(&self, targets: &Targets, job: &str, which: Ping, body: String) {
        let Some(base) = targets.ping.as_deref() else {
            return;
        };
        let url = ping_url(base, which);
        let client = self.client.clone();
        let job = job.to_string();
        tokio::spawn(async move {
            let send = || async {
                let response = client.post(&url).body(body.clone()).send().await?;
                check(response.status())
            };
            let result = send.retry(backoff()).when(SendError::transient).await;
            if let Err(e) = result {
                crate::metrics::alert_failed("ping");
                tracing::error!(job = %job, ping = ?which, error = %e, "ping not delivered");
            }
        });
    }
}

fn check(status: reqwest::StatusCode) -> Result<(), SendError> {
    if status.is_success() {
        Ok(())
    } else {
        Err(SendError::Status(status))
    }
}

fn backoff() -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(500))
        .with_max_delay(Duration::from_secs(30))
        .with_max_times(ATTEMPTS - 1)
        .with_jitter()
}

/// `https://hc.example/ping/UUID` + `/start`, `` or `/fail`.
pub fn ping_url(base: &str, which: Ping) -> String {
    let base = base.trim_end_matches('/');
    match which {
        Ping::Start => format!("{base}/start"),
        Ping::Success => base.to_string(),
        Ping::Fail => format!("{base}/fail"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn ping_urls() {
        let base = "https://hc.example/ping/abc/";
        assert_eq!(
            ping_url(base, Ping::Start),
            "https://hc.example/ping/abc/start"
        );
        assert_eq!(ping_url(base, Ping::Success), "https://hc.example/ping/abc");
        assert_eq!(
            ping_url(base, Ping::Fail),
            "https://hc.example/ping/abc/fail"
        );
    }

    #[test]
    fn a_job_overrides_only_the_keys_it_sets() {
        let text = "[repository]\nurl = \"file:///r\"\nrecipients = [\"age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p\"]\n\
            [alerts]\nwebhook = \"https://global/hook\"\nping = \"https://global/ping\"\n\
            [jobs.a]\nkind = \"command\"\ncommand = \"true\"\nalerts = { ping = \"https://a/ping\" }\n\
            [jobs.b]\nkind = \"command\"\ncommand = \"true\"\n";
        let config = Config::parse(Path::new("/tmp/bk.toml"), text).expect("config");
        let a = Targets::for_job(&config, "a");
        assert_eq!(a.webhook.as_deref(), Some("https://global/hook"));
        assert_eq!(a.ping.as_deref(), Some("https://a/ping"));
        let b = Targets::for_job(&config, "b");
        assert_eq!(b.ping.as_deref(), Some("https://global/ping"));
    }
}

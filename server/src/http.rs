//! The HTTP listener (loopback by default): `/healthz` for liveness checks,
//! `/metrics` in Prometheus text format, `/api/status` with the same JSON as
//! `bk status --json`, `/status`, the HTML status page (status_page.rs), and `/`:
//! that page for a browser (`Accept: text/html`), a one-screen text summary for
//! anything else (curl). Read-only: nothing here can start, stop or change a job.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use bk_core::commands::status::Status;
use chrono::{DateTime, Utc};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;

use crate::state::Shared;

#[derive(Clone)]
struct AppState {
    shared: Arc<Shared>,
    metrics: PrometheusHandle,
}

pub fn router(shared: Arc<Shared>, metrics: PrometheusHandle) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/status", get(status_page))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics_text))
        .route("/api/status", get(status))
        .with_state(AppState { shared, metrics })
}

/// Serves until shutdown begins.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shared: Arc<Shared>,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(async move { shared.stopping.cancelled().await })
        .await
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn metrics_text(State(app): State<AppState>) -> Response {
    app.metrics.run_upkeep();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        app.metrics.render(),
    )
        .into_response()
}

/// The status of every job, read from the catalog off the async threads.
async fn read_status(app: &AppState) -> Result<Status, String> {
    let loaded = app.shared.current();
    let mut status = tokio::task::spawn_blocking(move || {
        bk_core::commands::status::status(&loaded.config, &loaded.catalog, Utc::now())
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| e.to_string())?;
    for job in &mut status.jobs {
        job.overdue |= crate::overdue::is_overdue(&app.shared, &job.job);
    }
    Ok(status)
}

async fn status(State(app): State<AppState>) -> Response {
    match read_status(&app).await {
        Ok(status) => Json(status).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}

/// The HTML page and the runs it charts, read from the catalog off the async threads.
async fn status_page(State(app): State<AppState>) -> Response {
    let status = match read_status(&app).await {
        Ok(s) => s,
        Err(e) => return (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    };
    let loaded = app.shared.current();
    let names: Vec<String> = status.jobs.iter().map(|j| j.job.clone()).collect();
    let runs = tokio::task::spawn_blocking(move || {
        let mut runs = std::collections::BTreeMap::new();
        for name in names {
            let job_runs = loaded
                .catalog
                .runs(Some(&name), crate::status_page::CHART_RUNS)?;
            runs.insert(name, job_runs);
        }
        Ok::<_, bk_core::catalog::CatalogError>(runs)
    })
    .await;
    let runs = match runs {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => return (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
        Err(e) => return (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    };
    let page = crate::status_page::render(
        &status,
        &runs,
        &bk_core::catalog::hostname(),
        env!("CARGO_PKG_VERSION"),
    );
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], page).into_response()
}

/// `/`: the HTML page for a browser, the text summary for curl.
async fn index(State(app): State<AppState>, headers: HeaderMap) -> Response {
    let wants_html = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/html"));
    if wants_html {
        status_page(State(app)).await
    } else {
        text_summary(app).await
    }
}

/// A one-screen text summary for a human with curl.
async fn text_summary(app: AppState) -> Response {
    let status = match read_status(&app).await {
        Ok(s) => s,
        Err(e) => return (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    };
    let time = |t: Option<DateTime<Utc>>| {
        t.map(|t| t.format("%Y-%m-%d %H:%M UTC").to_string())
            .unwrap_or_else(|| "-".into())
    };
    let mut out = format!(
        "bk-server {} on {}\n\n{:<20} {:<12} {:<22} {:<22} {}\n",
        env!("CARGO_PKG_VERSION"),
        bk_core::catalog::hostname(),
        "JOB",
        "LAST RUN",
        "LAST GOOD BACKUP",
        "NEXT RUN",
        "LAST ERROR"
    );
    for job in &status.jobs {
        let last = job.last_run.as_ref();
        out.push_str(&format!(
            "{:<20} {:<12} {:<22} {:<22} {}\n",
            job.job,
            last.map(|r| r.status.as_str()).unwrap_or("never"),
            time(job.last_good_backup.as_ref().map(|b| b.finished)),
            time(job.next_run),
            last.and_then(|r| r.error.as_deref())
                .map(one_line)
                .unwrap_or_default()
        ));
    }
    ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], out).into_response()
}

/// An error on one short line: whitespace runs (stderr's newlines) collapsed, cut at 200 characters.
fn one_line(error: &str) -> String {
    let flat = error.split_whitespace().collect::<Vec<_>>().join(" ");
    match flat.char_indices().nth(200) {
        Some((cut, _)) => format!("{}…", &flat[..cut]),
        None => flat,
    }
}

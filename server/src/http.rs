//! The HTTP listener (loopback by default): `/healthz` for liveness checks,
//! `/metrics` in Prometheus text format, `/api/status` with the same JSON as
//! `bk status --json`. Read-only: nothing here can start, stop or change a job.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
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

async fn status(State(app): State<AppState>) -> Response {
    let loaded = app.shared.current();
    // The catalog is SQLite behind a mutex: read it off the async threads.
    let result = tokio::task::spawn_blocking(move || {
        bk_core::commands::status::status(&loaded.config, &loaded.catalog, chrono::Utc::now())
    })
    .await;
    match result {
        Ok(Ok(status)) => Json(status).into_response(),
        Ok(Err(e)) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}

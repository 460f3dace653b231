//! Log lines on stderr only (systemd's journal or any process manager collects them):
//! human-readable text by default, one JSON object per line on request. Each job runs
//! in a `job` span carrying `job` and `run`, so every line of a run names both.

use bk_core::config::LogFormat;
use tracing_subscriber::EnvFilter;

/// `BK_LOG` takes tracing's filter syntax (e.g. `debug`, `info,bk::source=debug`).
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_env("BK_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter);
    match format {
        LogFormat::Text => builder.with_ansi(false).init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .init(),
    }
}

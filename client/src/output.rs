//! How the CLI talks: logs and errors on stderr, results on stdout; human sizes.

use std::io::Write;

use bk_core::config::ByteSize;

pub fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("BK_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

/// One clear sentence, then the cause chain.
pub fn print_error(e: &anyhow::Error) {
    eprintln!("bk: error: {e}");
    let top = e.to_string();
    for cause in e.chain().skip(1) {
        let text = cause.to_string();
        if !top.contains(&text) {
            eprintln!("  caused by: {text}");
        }
    }
}

pub fn size(bytes: u64) -> String {
    ByteSize(bytes).to_string()
}

/// Writes a line of a command's result to stdout, like `println!`, but returns what went
/// wrong instead of panicking: a reader that went away (`bk status | head -1`) is not an
/// error (the line is dropped, the command goes on and exits as it would have), any
/// other failure to write (a full disk behind `>`) is.
macro_rules! say {
    ($($arg:tt)*) => {
        $crate::output::line(format_args!($($arg)*))
    };
}
pub(crate) use say;

/// One line on stdout, for `say!`.
pub fn line(text: std::fmt::Arguments<'_>) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{text}").and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(anyhow::anyhow!("writing to stdout: {e}"))
        }
        _ => Ok(()),
    }
}

/// `value` as pretty JSON on stdout, written as it is serialized (a listing of 100,000
/// backups is ~29 MB: not built as one string first). A reader that went away
/// (`bk list --json | head`) is not an error.
pub fn json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let written = serde_json::to_writer_pretty(&mut out, value)
        .map_err(std::io::Error::from)
        .and_then(|()| writeln!(out))
        .and_then(|()| out.flush());
    match written {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(anyhow::anyhow!("writing JSON to stdout: {e}"))
        }
        _ => Ok(()),
    }
}

/// "3m ago", "2h ago", "5d ago".
pub fn age(t: chrono::DateTime<chrono::Utc>) -> String {
    let secs = (chrono::Utc::now() - t).num_seconds().max(0);
    match secs {
        0..60 => format!("{secs}s ago"),
        60..3600 => format!("{}m ago", secs / 60),
        3600..86400 => format!("{}h ago", secs / 3600),
        _ => format!("{}d ago", secs / 86400),
    }
}

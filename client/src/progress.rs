//! Progress bars on stderr for long interactive commands (restore, verify), shown only
//! when stderr is a terminal: scripts, pipes and log files never get one, so their
//! output stays exactly what it was.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A bar drawn by its own thread from bk-core's byte counters; cleared when dropped.
pub struct Bar {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// Starts a bar labelled `what`, if stderr is a terminal.
pub fn start(what: &str) -> Option<Bar> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let counters = bk_core::progress::install();
    // Hidden until the first object is opened and the total is known.
    let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::hidden());
    let style = ProgressStyle::with_template(
        "{msg} [{bar:30}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} eta {eta}",
    )
    .map(|s| s.progress_chars("=> "))
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar.set_message(what.to_string());
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let thread = std::thread::spawn(move || {
        let mut shown = false;
        let mut update = |bar: &ProgressBar| {
            let total = counters.total();
            if total > 0 {
                bar.set_length(total);
                if !shown {
                    bar.set_draw_target(ProgressDrawTarget::stderr());
                    shown = true;
                }
                bar.set_position(counters.done());
                bar.tick();
            }
        };
        while !flag.load(Ordering::Relaxed) {
            update(&bar);
            std::thread::sleep(Duration::from_millis(100));
        }
        // A run shorter than one tick still shows its final state once before the
        // bar is cleared, so what the terminal saw matches what was done.
        update(&bar);
        bar.finish_and_clear();
    });
    Some(Bar {
        stop,
        thread: Some(thread),
    })
}

impl Drop for Bar {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

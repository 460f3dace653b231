//! The daemon's status page in a real headless Chromium: real runs of different sizes
//! (the newest suspiciously small) and a failing job in the catalog; the screenshot's
//! pixels show one size bar per run with heights in proportion to the sizes, the
//! small one in its warning colour, and the failed run's red mark; the DOM holds each
//! job's state and figures. curl still gets the text summary.

use std::fs;

use bk_e2e::chromium;
use bk_e2e::daemon::{free_port, server_section, Daemon};
use bk_e2e::Workspace;

/// The chart's colours (server/src/status_page.rs).
const BAR: (u8, u8, u8) = (0x2f, 0x6f, 0xdf);
const SMALL_BAR: (u8, u8, u8) = (0xf0, 0xa0, 0x00);
const FAILED_MARK: (u8, u8, u8) = (0xd0, 0x34, 0x2c);

/// Runs of `colour` pixels, as (x_start, x_end, height): one per bar.
fn bars(shot: &chromium::Screenshot, colour: (u8, u8, u8)) -> Vec<(usize, usize, usize)> {
    let heights: Vec<usize> = (0..shot.width)
        .map(|x| (0..shot.height).filter(|&y| shot.is(x, y, colour)).count())
        .collect();
    let mut out: Vec<(usize, usize, usize)> = Vec::new();
    for (x, &h) in heights.iter().enumerate() {
        if h == 0 {
            continue;
        }
        match out.last_mut() {
            Some(last) if last.1 + 1 == x => {
                last.1 = x;
                last.2 = last.2.max(h);
            }
            _ => out.push((x, x, h)),
        }
    }
    out
}

#[test]
fn the_status_page_renders_in_chromium_and_shows_a_suspiciously_small_backup() {
    let port = free_port();
    let mut ws = Workspace::new();
    let src = ws.path().join("uploads");
    fs::create_dir_all(&src).unwrap();
    ws.add(&server_section(port, "2s"));
    ws.add(&format!(
        "[jobs.uploads]\nkind = \"directory\"\npath = \"{}\"\n\n\
         [jobs.broken]\nkind = \"command\"\ncommand = \"echo partial; echo 'disk on fire' >&2; exit 3\"\n",
        src.display()
    ));
    // Four real backups of a 2, 6, 4 MiB and then 256 KiB file (a tar adds a few KiB):
    // last night's is the odd one.
    let sizes: [usize; 4] = [2 << 20, 6 << 20, 4 << 20, 256 << 10];
    for size in sizes {
        let data: Vec<u8> = (0..size).map(|_| rand::random::<u8>()).collect();
        fs::write(src.join("blob.bin"), data).unwrap();
        ws.bk(&["run", "uploads"]).ok();
    }
    ws.bk(&["run", "broken"]).fails_with(1);

    let d = Daemon::start(&ws, port);
    let url = format!("http://127.0.0.1:{port}/");
    // curl (no Accept: text/html) still gets the text summary.
    let (code, text) = d.get("/");
    assert_eq!(code, 200);
    assert!(
        text.starts_with("bk-server ") && text.contains("JOB"),
        "{text}"
    );

    let png = ws.path().join("status.png");
    let started = std::time::Instant::now();
    let shot = chromium::screenshot(&url, 1200, 900, &png);
    let screenshot_time = started.elapsed();
    assert_eq!((shot.width, shot.height), (1200, 900));
    if let Some(dir) = std::env::var_os("BK_E2E_ARTIFACTS") {
        fs::copy(&png, std::path::Path::new(&dir).join("status-page.png")).unwrap();
    }

    // uploads: three normal bars in proportion 2:6:4, then one small bar in the warning colour.
    let blue = bars(&shot, BAR);
    assert_eq!(
        blue.len(),
        3,
        "size bars found: {blue:?} (screenshot: {})",
        png.display()
    );
    let (h2, h6, h4) = (blue[0].2 as f64, blue[1].2 as f64, blue[2].2 as f64);
    assert!(h6 >= 100.0, "the tallest bar is {h6}px");
    assert!((h2 / h6 - 2.0 / 6.0).abs() < 0.05, "{blue:?}");
    assert!((h4 / h6 - 4.0 / 6.0).abs() < 0.05, "{blue:?}");
    assert!(
        blue[0].0 < blue[1].0 && blue[1].0 < blue[2].0,
        "oldest left: {blue:?}"
    );
    let small = bars(&shot, SMALL_BAR);
    assert_eq!(small.len(), 1, "{small:?}");
    assert!(
        small[0].0 > blue[2].1,
        "the newest run is rightmost: {small:?} {blue:?}"
    );
    let expected = h6 * (256.0 / 6144.0);
    assert!(
        (small[0].2 as f64 - expected).abs() <= 2.0,
        "small bar {small:?}, expected ~{expected:.1}px"
    );
    // broken: one red mark for its failed run.
    assert_eq!(
        bars(&shot, FAILED_MARK).len(),
        1,
        "(screenshot: {})",
        png.display()
    );

    let dom = chromium::dump_dom(&url);
    for needle in [
        "<h1>bk-server",
        "id=\"job-uploads\"",
        "id=\"job-broken\"",
        "FAILED",
        "disk on fire",
        "6.0 MiB",
        "The newest backup is 260.0 KiB",
        "<svg",
    ] {
        assert!(
            dom.contains(needle),
            "missing {needle:?} in the DOM:\n{dom}"
        );
    }
    assert!(!dom.contains("<script"), "the page has no script");
    eprintln!("chromium screenshot took {screenshot_time:?}");
    drop(d);
}

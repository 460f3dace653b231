//! A real headless browser (Debian's `chromium`) for pages the daemon serves: a
//! screenshot decoded into pixels, and the DOM as the browser built it. Each call
//! uses a fresh profile directory, no network but the URL, and is bounded in time.

use std::path::Path;
use std::process::Command;

use crate::{require_tool, run, Outcome};

const FLAGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
];

fn chromium(profile: &Path, extra: &[String], url: &str) -> Outcome {
    require_tool("chromium");
    require_tool("timeout");
    run(Command::new("timeout")
        .arg("120")
        .arg("chromium")
        .args(FLAGS)
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(extra)
        .arg(url))
}

/// An RGB screenshot.
pub struct Screenshot {
    pub width: usize,
    pub height: usize,
    rgb: Vec<u8>,
}

impl Screenshot {
    pub fn pixel(&self, x: usize, y: usize) -> (u8, u8, u8) {
        let i = (y * self.width + x) * 3;
        (self.rgb[i], self.rgb[i + 1], self.rgb[i + 2])
    }

    /// Whether the pixel is `colour`, within 3 per channel.
    pub fn is(&self, x: usize, y: usize, colour: (u8, u8, u8)) -> bool {
        let (r, g, b) = self.pixel(x, y);
        r.abs_diff(colour.0) <= 3 && g.abs_diff(colour.1) <= 3 && b.abs_diff(colour.2) <= 3
    }
}

/// Loads `url` in a `width`×`height` window and returns the screenshot (also kept at `png`).
pub fn screenshot(url: &str, width: u32, height: u32, png: &Path) -> Screenshot {
    let profile = tempfile::tempdir().expect("profile dir");
    let out = chromium(
        profile.path(),
        &[
            format!("--screenshot={}", png.display()),
            format!("--window-size={width},{height}"),
        ],
        url,
    );
    assert!(
        out.code == 0 && png.exists(),
        "chromium made no screenshot (exit {}):\n{}",
        out.code,
        out.stderr
    );
    decode(png)
}

/// The DOM after the browser parsed and laid out `url`.
pub fn dump_dom(url: &str) -> String {
    let profile = tempfile::tempdir().expect("profile dir");
    chromium(profile.path(), &["--dump-dom".into()], url)
        .ok()
        .stdout
}

fn decode(path: &Path) -> Screenshot {
    let file = std::fs::File::open(path).expect("open png");
    let mut decoder = png::Decoder::new(std::io::BufReader::new(file));
    decoder.set_transformations(png::Transformations::normalize_to_color8());
    let mut reader = decoder.read_info().expect("png header");
    let mut buf = vec![0; reader.output_buffer_size().expect("png size")];
    let info = reader.next_frame(&mut buf).expect("png frame");
    let channels = match info.color_type {
        png::ColorType::Rgb => 3,
        png::ColorType::Rgba => 4,
        other => panic!("unexpected PNG colour type {other:?}"),
    };
    let rgb = buf[..info.buffer_size()]
        .chunks(channels)
        .flat_map(|p| [p[0], p[1], p[2]])
        .collect();
    Screenshot {
        width: info.width as usize,
        height: info.height as usize,
        rgb,
    }
}

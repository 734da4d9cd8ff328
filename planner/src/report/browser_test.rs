//! The HTML report in a real browser: headless Chromium loads it, logs no console message, and
//! the plots are in the rendered page. The screenshot stays under target/test-artifacts/.
use super::html;
use crate::analysis::analyse;
use crate::analysis::synth::Synth;
use std::path::PathBuf;
use std::process::Command;

fn artifacts_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("test-artifacts/report-html")
}

/// Runs chromium headless on `page` with extra arguments; returns (stdout, stderr).
fn chromium(page: &std::path::Path, extra: &[String]) -> (String, String) {
    let profile = std::env::temp_dir().join(format!(
        "latplan-chromium-{}-{}",
        std::process::id(),
        extra.len()
    ));
    let _ = std::fs::remove_dir_all(&profile);
    let out = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--enable-logging=stderr",
            "--v=0",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(extra)
        .arg(format!("file://{}", page.display()))
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run chromium ({e}): this test needs the Debian package chromium, which ci/setup installs")
        });
    let _ = std::fs::remove_dir_all(&profile);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(
        out.status.success(),
        "chromium failed ({}): {stderr}",
        out.status
    );
    (stdout, stderr)
}

#[test]
fn html_report_loads_in_chromium_without_console_messages_and_shows_its_plots() {
    let mut s = Synth::containers_across_metals();
    s.flows = 3;
    s.bytes_per_flow = 400;
    s.jitter_ns = 30_000;
    s.retransmit_every = Some(50);
    s.loss_hop = 5;
    let a = analyse(s.session());
    let dir = artifacts_dir();
    std::fs::create_dir_all(&dir).expect("create the test artifacts directory");
    let page = dir.join("report.html");
    std::fs::write(&page, html::render(&a)).expect("write the report");
    let shot = dir.join("report.png");
    let _ = std::fs::remove_file(&shot);

    let (_, log) = chromium(
        &page,
        &[
            format!("--screenshot={}", shot.display()),
            "--window-size=1400,3000".into(),
        ],
    );
    let png = std::fs::read(&shot).expect("chromium wrote the screenshot");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "screenshot is not a real PNG ({} bytes)",
        png.len()
    );

    let (dom, log2) = chromium(&page, &["--dump-dom".into()]);
    for l in log.lines().chain(log2.lines()) {
        assert!(
            !l.contains("CONSOLE")
                && !l.contains("Uncaught")
                && !l.contains("Failed to load resource"),
            "console message while loading the report: {l}"
        );
    }
    // Tree, one breakdown bar, one CDF per segment (11), a latency-over-time plot per flow (3).
    assert_eq!(
        dom.matches("<svg").count(),
        1 + 1 + 11 + 3,
        "plots missing from the rendered page"
    );
    assert!(dom.contains("class=\"host-tree\"") && dom.contains(">ct2</text>"));
    assert!(
        dom.matches("<polyline").count() >= 11 + 3 * 11,
        "plot lines missing"
    );
    assert!(dom.contains("net metal1:wan0→metal2:wan0"));
}

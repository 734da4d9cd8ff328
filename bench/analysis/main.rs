//! Analysis benchmark: 10 million synthetic samples (100 flows × 10,000 sampled bytes × 10
//! layers, metal1 → metal2, with jitter, 1% retransmissions and 0.5% losses) through
//! `analysis::analyse`, then the JSON and HTML renderers. Prints time and peak memory.
//!
//! Run: `bench/analysis/run.sh` (or `cargo bench -p planner --bench analysis -- [SAMPLES_MILLIONS]`).
use planner::analysis::analyse;
use planner::analysis::synth::Synth;
use planner::report::{self, Format, TableOptions};
use std::time::Instant;

/// Peak resident memory of this process so far (VmHWM), bytes.
fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

fn main() {
    let millions: u64 = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .and_then(|a| a.parse().ok())
        .unwrap_or(10);
    let mut s = Synth::two_metals(3000);
    s.flows = 100;
    s.bytes_per_flow = millions * 1_000_000 / 10 / 100;
    s.interval_ns = 100_000;
    s.jitter_ns = 50_000;
    s.retransmit_every = Some(100);
    s.lose_every = Some(200);

    let t = Instant::now();
    let n = s.sample_count();
    let gen_s = t.elapsed().as_secs_f64();
    let rss_before = peak_rss();

    let t = Instant::now();
    let a = analyse(s.session());
    let analyse_s = t.elapsed().as_secs_f64();
    let rss_after = peak_rss();

    let t = Instant::now();
    let json = report::render(&a, Format::Json, TableOptions::default()).expect("json renders");
    let json_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let html = report::render(&a, Format::Html, TableOptions::default()).expect("html renders");
    let html_s = t.elapsed().as_secs_f64();

    println!("samples                 {n}");
    println!("flows                   {}", a.flows.len());
    println!("sampled bytes           {}", a.totals.sampled_bytes);
    println!("generate only (lazy)    {gen_s:.2} s");
    println!(
        "analyse (incl. gen)     {analyse_s:.2} s  ({:.1} M samples/s)",
        n as f64 / analyse_s / 1e6
    );
    println!(
        "peak RSS before analyse {:.0} MiB",
        rss_before as f64 / (1 << 20) as f64
    );
    println!(
        "peak RSS after analyse  {:.0} MiB",
        rss_after as f64 / (1 << 20) as f64
    );
    println!(
        "render json             {json_s:.2} s ({} KiB)",
        json.len() / 1024
    );
    println!(
        "render html             {html_s:.2} s ({} KiB)",
        html.len() / 1024
    );
    println!(
        "dominant (pair)         {}",
        a.pairs[0].dominant.as_deref().unwrap_or("-")
    );
}

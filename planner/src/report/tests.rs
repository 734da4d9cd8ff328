//! Report snapshots over a synthetic session with retransmissions, losses and a clock error.
use super::*;
use crate::analysis::synth::Synth;
use crate::analysis::{Analysis, analyse};

/// Two flows metal1 → metal2: every 10th byte retransmitted, every 25th lost, the receiver's
/// fit 12 µs off while claiming ±4 µs per side.
pub fn fixture() -> Analysis {
    let mut s = Synth::two_metals(3);
    s.flows = 2;
    s.bytes_per_flow = 40;
    s.retransmit_every = Some(10);
    s.lose_every = Some(25);
    s.clocks[1].offset_ns = 5_000_000.0;
    s.clocks[1].fit_bias_ns = -12_000.0;
    s.clocks[0].error_bound_ns = 4_000.0;
    s.clocks[1].error_bound_ns = 4_000.0;
    s.jitter_ns = 2_000;
    analyse(s.session())
}

#[test]
fn table_snapshot() {
    let a = fixture();
    insta::assert_snapshot!(
        "table",
        table::render(
            &a,
            TableOptions {
                per_flow: true,
                styled: false
            }
        )
    );
}

#[test]
fn table_marks_the_dominant_segment_and_the_sync_bound() {
    let a = fixture();
    let t = table::render(&a, TableOptions::default());
    let dom = a.pairs[0].dominant.clone().unwrap();
    assert_eq!(dom, "metal2:sock_queue→sock_recv");
    assert!(t.contains(&format!("{dom} ◀ dominant")));
    // The network segment's row carries its sync bound and the values below it.
    let net = t
        .lines()
        .find(|l| l.contains("net metal1:wan0→metal2:wan0"))
        .unwrap();
    assert!(net.contains("±8.0 µs"), "{net}");
    assert!(t.contains("warning: "), "{t}");
}

#[test]
fn csv_snapshot() {
    insta::assert_snapshot!("csv", csv::render(&fixture()).unwrap());
}

#[test]
fn json_carries_every_segment_and_flow() {
    let a = fixture();
    let j: serde_json::Value =
        serde_json::from_str(&render(&a, Format::Json, TableOptions::default()).unwrap()).unwrap();
    assert_eq!(j["flows"].as_array().unwrap().len(), 2);
    assert_eq!(j["pairs"][0]["segments"].as_array().unwrap().len(), 10);
    let net = &j["pairs"][0]["segments"][4];
    assert_eq!(net["name"], "net metal1:wan0→metal2:wan0");
    assert_eq!(net["kind"], "net");
    assert_eq!(net["sync_bound_ns"], 8000.0);
    assert!(net["below_bound"].as_u64().unwrap() > 0);
    assert_eq!(net["lost"], 2);
    assert!(!net["cdf"].as_array().unwrap().is_empty());
    assert!(
        !j["flows"][0]["segments"][0]["series"]
            .as_array()
            .unwrap()
            .is_empty()
    );
}

#[test]
fn html_is_self_contained_and_has_every_plot() {
    let a = fixture();
    let h = html::render(&a);
    assert!(h.starts_with("<!DOCTYPE html>"));
    for bad in ["<script", "src=", "href=", "@import", "url("] {
        assert!(
            !h.contains(bad),
            "the report must not load anything ({bad})"
        );
    }
    // Tree + per pair (bar + 10 CDFs) + per flow (time series).
    assert_eq!(h.matches("<svg").count(), 1 + 1 + 10 + 2);
    assert!(h.contains("class=\"host-tree\""));
    assert!(h.contains("latency over time: 10.10.0.0:40000→10.20.0.0:5201"));
    assert!(h.contains("median breakdown metal1 → metal2"));
    assert!(h.contains("<tr class=\"dominant\">"));
}

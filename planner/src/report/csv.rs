//! CSV export: one row per segment of every host pair and every flow.
use crate::analysis::model::{Analysis, SegmentReport};
use anyhow::Context;

const HEADER: [&str; 24] = [
    "scope",
    "src_host",
    "dst_host",
    "flow",
    "segment",
    "kind",
    "from_host",
    "from_layer",
    "from_iface",
    "to_host",
    "to_layer",
    "to_iface",
    "count",
    "min_ns",
    "p50_ns",
    "p90_ns",
    "p99_ns",
    "max_ns",
    "mean_ns",
    "retransmitted_count",
    "retransmitted_p50_ns",
    "sync_bound_ns",
    "below_bound",
    "lost",
];
const TAIL: [&str; 3] = ["incomplete", "drops", "dominant"];

pub fn render(a: &Analysis) -> anyhow::Result<String> {
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(HEADER.iter().chain(TAIL.iter()))
        .context("failed to write the CSV header")?;
    for p in &a.pairs {
        for s in &p.segments {
            row(
                &mut w,
                "pair",
                &p.src_host,
                &p.dst_host,
                "",
                s,
                p.dominant.as_deref(),
            )?;
        }
    }
    for f in &a.flows {
        for s in &f.segments {
            row(
                &mut w,
                "flow",
                &f.src_host,
                &f.dst_host,
                &f.flow,
                s,
                f.dominant.as_deref(),
            )?;
        }
    }
    let bytes = w.into_inner().context("failed to finish the CSV output")?;
    String::from_utf8(bytes).context("CSV output is not UTF-8")
}

fn row(
    w: &mut csv::Writer<Vec<u8>>,
    scope: &str,
    src: &str,
    dst: &str,
    flow: &str,
    s: &SegmentReport,
    dominant: Option<&str>,
) -> anyhow::Result<()> {
    let o = |v: Option<i64>| v.map_or(String::new(), |v| v.to_string());
    let l = &s.latency;
    let rec: Vec<String> = vec![
        scope.into(),
        src.into(),
        dst.into(),
        flow.into(),
        s.name.clone(),
        serde_json::to_value(s.kind)?
            .as_str()
            .unwrap_or_default()
            .to_string(),
        s.from.host.clone(),
        s.from.layer.into(),
        s.from.iface.clone().unwrap_or_default(),
        s.to.host.clone(),
        s.to.layer.into(),
        s.to.iface.clone().unwrap_or_default(),
        l.count.to_string(),
        o(l.min_ns),
        o(l.p50_ns),
        o(l.p90_ns),
        o(l.p99_ns),
        o(l.max_ns),
        l.mean_ns.map_or(String::new(), |m| format!("{m:.1}")),
        s.retransmitted.count.to_string(),
        o(s.retransmitted.p50_ns),
        format!("{:.1}", s.sync_bound_ns),
        s.below_bound.to_string(),
        s.lost.to_string(),
        s.incomplete.to_string(),
        s.drops.to_string(),
        (dominant == Some(s.name.as_str())).to_string(),
    ];
    w.write_record(&rec)
        .with_context(|| format!("failed to write the CSV row of {}", s.name))
}

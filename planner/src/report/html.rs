//! One self-contained HTML file: inline CSS and inline SVG plots, no scripts, nothing fetched.
use super::fmt::{bound, dur, opt_dur, rate};
use super::plots;
use crate::analysis::model::{Analysis, FlowReport, SegmentReport};
use std::fmt::Write;

/// Flows that get a latency-over-time plot (the busiest ones), to keep the file readable.
pub const MAX_FLOW_PLOTS: usize = 12;

const STYLE: &str = "body{font-family:sans-serif;margin:24px;color:#222;max-width:1400px}\
h1{font-size:22px}h2{font-size:18px;margin-top:32px;border-bottom:1px solid #ccc}h3{font-size:15px}\
table{border-collapse:collapse;font-size:12px;margin:8px 0}th,td{border:1px solid #ccc;padding:3px 6px}\
td.n{text-align:right;font-variant-numeric:tabular-nums}tr.dominant td{background:#fff3c4;font-weight:bold}\
td.bad{color:#b00020;font-weight:bold}.warn{color:#b00020}figure{margin:4px;display:inline-block}\
.cdfs{display:flex;flex-wrap:wrap}.note{color:#555;font-size:12px}";

pub fn escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

pub fn render(a: &Analysis) -> String {
    let mut h = String::new();
    let title = format!("latplan report: session {}", escape(&a.session));
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{title}</title><style>{STYLE}</style></head><body>\n<h1>{title}</h1>\n"
    );
    let _ = writeln!(
        h,
        "<p>{} samples, {} sampled bytes, {} flow(s), {} host pair(s).</p>",
        a.totals.samples,
        a.totals.sampled_bytes,
        a.totals.flows,
        a.pairs.len()
    );
    if !a.warnings.is_empty() {
        h.push_str("<ul class=\"warnings\">");
        for w in &a.warnings {
            let _ = write!(h, "<li class=\"warn\">{}</li>", escape(w));
        }
        h.push_str("</ul>\n");
    }

    h.push_str("<h2>Hosts</h2>\n<div id=\"host-tree\">");
    h.push_str(&plots::host_tree(&a.hosts));
    h.push_str("</div>\n");
    h.push_str(&health(a));

    for (i, p) in a.pairs.iter().enumerate() {
        let _ = writeln!(
            h,
            "<h2 id=\"pair-{i}\">{} → {}</h2>\n<p>{} flow(s), {} sampled bytes, {} retransmitted, {} lost.</p>",
            escape(&p.src_host),
            escape(&p.dst_host),
            p.flows,
            p.sampled_bytes,
            p.retransmitted,
            p.lost
        );
        let _ = writeln!(
            h,
            "<div class=\"breakdown\">{}</div>",
            plots::breakdown_bar(p)
        );
        h.push_str(&segment_table(&p.segments, p.dominant.as_deref()));
        let _ = write!(
            h,
            "<h3>CDF per segment</h3>\n<div class=\"cdfs\">{}</div>\n",
            plots::cdfs(p)
        );
    }

    let mut flows: Vec<&FlowReport> = a.flows.iter().collect();
    flows.sort_by_key(|f| std::cmp::Reverse(f.sampled_bytes));
    if !flows.is_empty() {
        h.push_str("<h2>Flows</h2>\n");
        if flows.len() > MAX_FLOW_PLOTS {
            let _ = writeln!(
                h,
                "<p class=\"note\">Latency over time is drawn for the {MAX_FLOW_PLOTS} flows with the most samples of {}; the JSON and CSV exports have all.</p>",
                flows.len()
            );
        }
    }
    for (i, f) in flows.iter().take(MAX_FLOW_PLOTS).enumerate() {
        let _ = writeln!(
            h,
            "<h3 id=\"flow-{i}\">{} ({} → {})</h3>\n<p>{} sampled bytes, {} retransmitted, {} lost, {} in flight at end, throughput {}.</p>",
            escape(&f.flow),
            escape(&f.src_host),
            escape(&f.dst_host),
            f.sampled_bytes,
            f.retransmitted,
            f.lost,
            f.in_flight_at_end,
            rate(f.throughput_bps)
        );
        let _ = writeln!(
            h,
            "<div class=\"timeseries\">{}</div>",
            plots::latency_over_time(f)
        );
        h.push_str(&segment_table(&f.segments, f.dominant.as_deref()));
    }
    h.push_str("<p class=\"note\">Latencies are signed; values below minus their sync error bound are counted in “&lt; −bound”, never hidden. Drops are the records the observers of a segment's two ends lost at those layers.</p>\n</body></html>\n");
    h
}

fn health(a: &Analysis) -> String {
    let mut h = String::from(
        "<h3>Clock sync</h3>\n<table><tr><th>clock domain</th><th>fits</th><th>sync error bound</th></tr>",
    );
    for c in &a.clocks {
        let b = c.max_error_bound_ns.map_or(
            "<span class=\"warn\">no fit: unconverted</span>".to_string(),
            |b| escape(&bound(b).replace('–', "±0")),
        );
        let _ = write!(
            h,
            "<tr><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{b}</td></tr>",
            escape(&c.domain),
            c.fits
        );
    }
    h.push_str("</table>\n<h3>Observers</h3>\n<table><tr><th>observer</th><th>samples</th><th>ring buffer full</th><th>rate limited</th><th>dropped</th><th>stream gaps</th></tr>");
    for o in &a.observers {
        let _ = write!(
            h,
            "<tr><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
            escape(&o.host),
            o.samples,
            o.ringbuf_full,
            o.rate_limited,
            o.records_dropped,
            o.gap_records
        );
    }
    h.push_str("</table>\n");
    h
}

fn segment_table(segments: &[SegmentReport], dominant: Option<&str>) -> String {
    let mut h = String::from(
        "<table class=\"segments\"><tr><th></th><th>segment</th><th>n</th><th>p50</th><th>p90</th><th>p99</th><th>max</th><th>sync ±</th><th>&lt; −bound</th><th>retrans n / p50</th><th>lost</th><th>incomplete</th><th>drops</th></tr>",
    );
    for (i, s) in segments.iter().enumerate() {
        let dom = dominant == Some(s.name.as_str());
        let l = &s.latency;
        let retrans = if s.retransmitted.count > 0 {
            format!(
                "{} / {}",
                s.retransmitted.count,
                opt_dur(s.retransmitted.p50_ns)
            )
        } else {
            "0".into()
        };
        let _ = write!(
            h,
            "<tr{}><td style=\"background:{}\"></td><td>{}{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n{}\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
            if dom { " class=\"dominant\"" } else { "" },
            plots::css_colour(i),
            escape(&s.name),
            if dom { " ◀ dominant" } else { "" },
            l.count,
            opt_dur(l.p50_ns),
            opt_dur(l.p90_ns),
            opt_dur(l.p99_ns),
            l.max_ns.map_or("–".into(), dur),
            escape(&bound(s.sync_bound_ns)),
            if s.below_bound > 0 { " bad" } else { "" },
            s.below_bound,
            escape(&retrans),
            s.lost,
            s.incomplete,
            s.drops
        );
    }
    h.push_str("</table>\n");
    h
}

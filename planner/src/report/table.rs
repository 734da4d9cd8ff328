//! The terminal breakdown: one table per host pair (and optionally per flow), the dominant
//! segment highlighted, sync error and drops beside the numbers they affect.
use super::TableOptions;
use super::fmt::{bound, dur, opt_dur, rate};
use crate::analysis::model::{Analysis, SegmentReport};
use comfy_table::presets::UTF8_FULL_CONDENSED;
use comfy_table::{Attribute, Cell, CellAlignment, Color, ContentArrangement, Table};
use std::fmt::Write;

pub fn render(a: &Analysis, opts: TableOptions) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "session {}: {} samples, {} sampled bytes in {} flows",
        a.session, a.totals.samples, a.totals.sampled_bytes, a.totals.flows
    );
    out.push_str(&health_table(a, opts));
    out.push('\n');
    for p in &a.pairs {
        let _ = writeln!(
            out,
            "\n{} → {}: {} flow(s), {} sampled bytes, {} retransmitted, {} lost",
            p.src_host, p.dst_host, p.flows, p.sampled_bytes, p.retransmitted, p.lost
        );
        out.push_str(&breakdown(&p.segments, p.dominant.as_deref(), opts));
        out.push('\n');
    }
    if opts.per_flow {
        for f in &a.flows {
            let _ = writeln!(
                out,
                "\nflow {} ({} → {}): {} sampled bytes, {} retransmitted, {} lost, {} in flight at end, {}",
                f.flow,
                f.src_host,
                f.dst_host,
                f.sampled_bytes,
                f.retransmitted,
                f.lost,
                f.in_flight_at_end,
                rate(f.throughput_bps)
            );
            out.push_str(&breakdown(&f.segments, f.dominant.as_deref(), opts));
            out.push('\n');
        }
    } else if !a.flows.is_empty() {
        out.push('\n');
        out.push_str(&flows_table(a, opts));
        out.push('\n');
    }
    for w in &a.warnings {
        let _ = writeln!(out, "warning: {w}");
    }
    out
}

fn new_table(opts: TableOptions) -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Disabled);
    if !opts.styled {
        t.force_no_tty();
    }
    t
}

fn right(s: impl ToString) -> Cell {
    Cell::new(s).set_alignment(CellAlignment::Right)
}

/// Clock domains and observers: what limits the accuracy and completeness of every number below.
fn health_table(a: &Analysis, opts: TableOptions) -> String {
    let mut t = new_table(opts);
    t.set_header(vec!["clock domain", "fits", "sync error bound"]);
    for c in &a.clocks {
        let b = match c.max_error_bound_ns {
            Some(b) => bound(b).replace('–', "±0"),
            None => "no fit: unconverted".to_string(),
        };
        t.add_row(vec![Cell::new(&c.domain), right(c.fits), right(b)]);
    }
    let mut o = new_table(opts);
    o.set_header(vec![
        "observer",
        "samples",
        "ring buffer full",
        "rate limited",
        "dropped",
        "stream gaps",
    ]);
    for h in &a.observers {
        o.add_row(vec![
            Cell::new(&h.host),
            right(h.samples),
            right(h.ringbuf_full),
            right(h.rate_limited),
            right(h.records_dropped),
            right(h.gap_records),
        ]);
    }
    format!("{t}\n{o}")
}

/// One row per segment.
pub fn breakdown(segments: &[SegmentReport], dominant: Option<&str>, opts: TableOptions) -> String {
    let mut t = new_table(opts);
    t.set_header(vec![
        "segment",
        "n",
        "p50",
        "p90",
        "p99",
        "max",
        "sync ±",
        "< −bound",
        "retrans n / p50",
        "lost",
        "incomplete",
        "drops",
    ]);
    for s in segments {
        let is_dom = dominant == Some(s.name.as_str());
        let name = if is_dom {
            format!("{} ◀ dominant", s.name)
        } else {
            s.name.clone()
        };
        let mut name_cell = Cell::new(name);
        if is_dom {
            name_cell = name_cell.add_attribute(Attribute::Bold).fg(Color::Yellow);
        }
        let l = &s.latency;
        let mut p50 = right(opt_dur(l.p50_ns));
        if is_dom {
            p50 = p50.add_attribute(Attribute::Bold).fg(Color::Yellow);
        }
        let mut below = right(s.below_bound);
        if s.below_bound > 0 {
            below = below.fg(Color::Red);
        }
        let retrans = if s.retransmitted.count > 0 {
            format!(
                "{} / {}",
                s.retransmitted.count,
                opt_dur(s.retransmitted.p50_ns)
            )
        } else {
            "0".to_string()
        };
        t.add_row(vec![
            name_cell,
            right(l.count),
            p50,
            right(opt_dur(l.p90_ns)),
            right(opt_dur(l.p99_ns)),
            right(opt_dur(l.max_ns)),
            right(bound(s.sync_bound_ns)),
            below,
            right(retrans),
            right(s.lost),
            right(s.incomplete),
            right(s.drops),
        ]);
    }
    t.to_string()
}

fn flows_table(a: &Analysis, opts: TableOptions) -> String {
    let mut t = new_table(opts);
    t.set_header(vec![
        "flow",
        "hosts",
        "sampled",
        "retrans",
        "lost",
        "throughput",
        "e2e p50",
        "dominant",
        "dominant p50",
    ]);
    for f in &a.flows {
        let e2e = f
            .segments
            .iter()
            .find(|s| s.kind == crate::analysis::SegmentKind::E2e);
        let dom = f
            .dominant
            .as_ref()
            .and_then(|d| f.segments.iter().find(|s| &s.name == d));
        t.add_row(vec![
            Cell::new(&f.flow),
            Cell::new(format!("{} → {}", f.src_host, f.dst_host)),
            right(f.sampled_bytes),
            right(f.retransmitted),
            right(f.lost),
            right(rate(f.throughput_bps)),
            right(opt_dur(e2e.and_then(|s| s.latency.p50_ns))),
            Cell::new(f.dominant.clone().unwrap_or_default()),
            right(dom.and_then(|s| s.latency.p50_ns).map_or("–".into(), dur)),
        ]);
    }
    t.to_string()
}

//! The HTML report's plots, as inline SVG strings (plotters' SVG backend; no scripts, no
//! external resources).
use super::fmt::dur;
use crate::analysis::model::{FlowReport, HostNode, PairReport, SegmentKind, SegmentReport};
use plotters::prelude::*;
use std::fmt::Write;

/// A readable colour per series index (plotters' 99-colour palette).
pub fn colour(i: usize) -> RGBColor {
    let c = Palette99::pick(i).to_rgba();
    RGBColor(c.0, c.1, c.2)
}

pub fn css_colour(i: usize) -> String {
    let c = colour(i);
    format!("#{:02x}{:02x}{:02x}", c.0, c.1, c.2)
}

/// Segments drawn for a flow or pair: everything but end to end goes in stacks; all get a series.
fn drawable(segments: &[SegmentReport]) -> impl Iterator<Item = (usize, &SegmentReport)> {
    segments
        .iter()
        .enumerate()
        .filter(|(_, s)| s.latency.count > 0)
}

fn plot_error(what: &str, e: impl std::fmt::Display) -> String {
    format!(
        "<p class=\"plot-error\">{what} could not be drawn: {}</p>",
        super::html::escape(&e.to_string())
    )
}

/// Latency over time for one flow, one line per segment (microseconds over seconds).
pub fn latency_over_time(f: &FlowReport) -> String {
    let mut svg = String::new();
    let r = (|| -> Result<(), Box<dyn std::error::Error + '_>> {
        let series: Vec<(usize, &SegmentReport)> = drawable(&f.segments)
            .filter(|(_, s)| !s.series.is_empty())
            .collect();
        let (mut xmax, mut ymin, mut ymax) = (1e-3f64, 0f64, 1f64);
        for (_, s) in &series {
            for p in &s.series {
                xmax = xmax.max(p.t_ns as f64 / 1e9);
                ymin = ymin.min(p.mean_ns / 1e3);
                ymax = ymax.max(p.mean_ns / 1e3);
            }
        }
        let root = SVGBackend::with_string(&mut svg, (900, 420)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(format!("latency over time: {}", f.flow), ("sans-serif", 16))
            .margin(10)
            .x_label_area_size(35)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..xmax * 1.02, ymin * 1.05..ymax * 1.05)?;
        chart
            .configure_mesh()
            .x_desc("time since flow start (s)")
            .y_desc("latency (µs)")
            .draw()?;
        for (i, s) in series {
            let c = colour(i);
            chart
                .draw_series(LineSeries::new(
                    s.series
                        .iter()
                        .map(|p| (p.t_ns as f64 / 1e9, p.mean_ns / 1e3)),
                    c.stroke_width(2),
                ))?
                .label(s.name.clone())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 16, y)], c.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 11))
            .draw()?;
        root.present()?;
        Ok(())
    })();
    match r {
        Ok(()) => svg,
        Err(e) => plot_error("latency over time", e),
    }
}

/// One small CDF per segment of a host pair.
pub fn cdfs(p: &PairReport) -> String {
    let mut out = String::new();
    for (i, s) in drawable(&p.segments) {
        if s.cdf.is_empty() {
            continue;
        }
        let mut svg = String::new();
        let r = (|| -> Result<(), Box<dyn std::error::Error + '_>> {
            let lo = s.cdf.first().map_or(0.0, |c| c.0 as f64 / 1e3);
            let hi = s.cdf.last().map_or(1.0, |c| c.0 as f64 / 1e3);
            let pad = ((hi - lo) * 0.05).max(0.5);
            let root = SVGBackend::with_string(&mut svg, (300, 210)).into_drawing_area();
            root.fill(&WHITE)?;
            let mut chart = ChartBuilder::on(&root)
                .caption(s.name.clone(), ("sans-serif", 11))
                .margin(6)
                .x_label_area_size(28)
                .y_label_area_size(32)
                .build_cartesian_2d(lo - pad..hi + pad, 0f64..1f64)?;
            chart
                .configure_mesh()
                .x_desc("µs")
                .x_labels(4)
                .y_labels(5)
                .label_style(("sans-serif", 9))
                .draw()?;
            let c = colour(i);
            // A step function: each point holds its fraction until the next value.
            let mut pts = Vec::with_capacity(s.cdf.len() * 2);
            let mut prev = 0.0;
            for &(v, q) in &s.cdf {
                let x = v as f64 / 1e3;
                pts.push((x, prev));
                pts.push((x, q));
                prev = q;
            }
            chart.draw_series(LineSeries::new(pts, c.stroke_width(2)))?;
            root.present()?;
            Ok(())
        })();
        match r {
            Ok(()) => {
                let _ = write!(out, "<figure class=\"cdf\">{svg}</figure>");
            }
            Err(e) => out.push_str(&plot_error("a CDF", e)),
        }
    }
    out
}

/// A horizontal stacked bar of the segments' medians (end to end drawn as a marker line).
pub fn breakdown_bar(p: &PairReport) -> String {
    let mut svg = String::new();
    let r = (|| -> Result<(), Box<dyn std::error::Error + '_>> {
        let parts: Vec<(usize, &SegmentReport, f64)> = drawable(&p.segments)
            .filter(|(_, s)| s.kind != SegmentKind::E2e)
            .map(|(i, s)| (i, s, s.latency.p50_ns.unwrap_or(0).max(0) as f64 / 1e3))
            .collect();
        let e2e = p
            .segments
            .iter()
            .find(|s| s.kind == SegmentKind::E2e)
            .and_then(|s| s.latency.p50_ns)
            .map(|v| v as f64 / 1e3);
        let total: f64 = parts
            .iter()
            .map(|(_, _, v)| v)
            .sum::<f64>()
            .max(e2e.unwrap_or(0.0))
            .max(1e-3);
        let height = 130 + 16 * parts.len() as u32;
        let root = SVGBackend::with_string(&mut svg, (900, height)).into_drawing_area();
        root.fill(&WHITE)?;
        let (bar, legend) = root.split_vertically(110);
        let mut chart = ChartBuilder::on(&bar)
            .caption(
                format!("median breakdown {} → {}", p.src_host, p.dst_host),
                ("sans-serif", 15),
            )
            .margin(8)
            .x_label_area_size(30)
            .build_cartesian_2d(0f64..total * 1.02, 0f64..1f64)?;
        chart
            .configure_mesh()
            .disable_y_mesh()
            .disable_y_axis()
            .x_desc("µs (p50 per segment, stacked)")
            .draw()?;
        let mut x = 0.0;
        for (i, _, v) in &parts {
            chart.draw_series(std::iter::once(Rectangle::new(
                [(x, 0.15), (x + v, 0.85)],
                colour(*i).filled(),
            )))?;
            x += v;
        }
        if let Some(e) = e2e {
            chart.draw_series(std::iter::once(PathElement::new(
                vec![(e, 0.0), (e, 1.0)],
                BLACK.stroke_width(2),
            )))?;
        }
        for (row, (i, s, v)) in parts.iter().enumerate() {
            let y = 4 + 16 * row as i32;
            legend.draw(&Rectangle::new(
                [(12, y), (24, y + 11)],
                colour(*i).filled(),
            ))?;
            let pct = 100.0 * v / total;
            let dom = if p.dominant.as_deref() == Some(s.name.as_str()) {
                "  ◀ dominant"
            } else {
                ""
            };
            let label = format!("{}: {} ({pct:.1}%){dom}", s.name, dur((v * 1e3) as i64));
            legend.draw(&Text::new(label, (30, y), ("sans-serif", 12).into_font()))?;
        }
        root.present()?;
        Ok(())
    })();
    match r {
        Ok(()) => svg,
        Err(e) => plot_error("the breakdown bar", e),
    }
}

/// The hosts' tree: metals at the top, their vms and containers below, drawn with lines.
pub fn host_tree(hosts: &[HostNode]) -> String {
    // Lay out leaves left to right; a parent sits above the middle of its children.
    let children = |name: Option<&str>| -> Vec<usize> {
        hosts
            .iter()
            .enumerate()
            .filter(|(_, h)| match name {
                None => h
                    .parent
                    .as_deref()
                    .is_none_or(|p| !hosts.iter().any(|x| x.name == p)),
                Some(n) => h.parent.as_deref() == Some(n),
            })
            .map(|(i, _)| i)
            .collect()
    };
    let mut pos: Vec<(f64, usize)> = vec![(0.0, 0); hosts.len()];
    let mut next_leaf = 0.0;
    fn place(
        i: usize,
        depth: usize,
        hosts: &[HostNode],
        children: &dyn Fn(Option<&str>) -> Vec<usize>,
        pos: &mut Vec<(f64, usize)>,
        next_leaf: &mut f64,
        guard: usize,
    ) -> f64 {
        let kids = if guard > hosts.len() {
            Vec::new()
        } else {
            children(Some(&hosts[i].name))
        };
        let x = if kids.is_empty() {
            *next_leaf += 1.0;
            *next_leaf - 1.0
        } else {
            let xs: Vec<f64> = kids
                .iter()
                .map(|&k| place(k, depth + 1, hosts, children, pos, next_leaf, guard + 1))
                .collect();
            (xs[0] + xs[xs.len() - 1]) / 2.0
        };
        pos[i] = (x, depth);
        x
    }
    for r in children(None) {
        place(r, 0, hosts, &children, &mut pos, &mut next_leaf, 0);
    }
    let (w, h) = (210.0, 80.0);
    let width = (next_leaf.max(1.0) * w) as i64 + 20;
    let height = (pos.iter().map(|p| p.1).max().unwrap_or(0) as f64 + 1.0) * h + 20.0;
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" class=\"host-tree\" width=\"{width}\" height=\"{height}\" viewBox=\"0 0 {width} {height}\">"
    );
    let centre = |i: usize| {
        (
            10.0 + pos[i].0 * w + w / 2.0,
            10.0 + pos[i].1 as f64 * h + 25.0,
        )
    };
    for (i, host) in hosts.iter().enumerate() {
        if let Some(p) = host
            .parent
            .as_deref()
            .and_then(|p| hosts.iter().position(|x| x.name == p))
        {
            let ((x1, y1), (x2, y2)) = (centre(p), centre(i));
            let _ = write!(
                s,
                "<line x1=\"{x1}\" y1=\"{}\" x2=\"{x2}\" y2=\"{}\" stroke=\"#888\"/>",
                y1 + 18.0,
                y2 - 18.0
            );
        }
    }
    for (i, host) in hosts.iter().enumerate() {
        let (x, y) = centre(i);
        let kind = match host.kind {
            crate::analysis::HostKind::Metal => "metal",
            crate::analysis::HostKind::Vm => "vm",
            crate::analysis::HostKind::Container => "container",
        };
        let via = host
            .host_interface
            .as_deref()
            .map(|i| format!(" via {i}"))
            .unwrap_or_default();
        let _ = write!(
            s,
            "<g class=\"host {kind}\"><rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"36\" rx=\"6\" fill=\"#eef3fb\" stroke=\"#4a6fa5\"/>\
             <text x=\"{x}\" y=\"{}\" text-anchor=\"middle\" font-family=\"sans-serif\" font-size=\"13\">{}</text>\
             <text x=\"{x}\" y=\"{}\" text-anchor=\"middle\" font-family=\"sans-serif\" font-size=\"10\" fill=\"#555\">{kind} · clock {}{}</text></g>",
            x - w / 2.0 + 8.0,
            y - 18.0,
            w - 16.0,
            y - 3.0,
            super::html::escape(&host.name),
            y + 12.0,
            super::html::escape(&host.clock_domain),
            super::html::escape(&via),
        );
    }
    s.push_str("</svg>");
    s
}

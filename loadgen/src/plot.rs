//! The `--plot` SVG: latency against percentile, percentile on a log scale towards 100
//! (x = log10(1 / (1 − p)), so 90, 99, 99.9 … are evenly spaced), one polyline per series.
//! Plain SVG text; no plotting crate.

use std::fmt::Write;

use crate::accounting::CurvePoint;

const WIDTH: f64 = 800.0;
const HEIGHT: f64 = 480.0;
const MARGIN_LEFT: f64 = 80.0;
const MARGIN_RIGHT: f64 = 160.0;
const MARGIN_TOP: f64 = 40.0;
const MARGIN_BOTTOM: f64 = 50.0;
/// Nines shown on the x axis (99.9999 %); 100 % is drawn at the right edge.
const MAX_NINES: f64 = 6.0;
const COLOURS: [&str; 4] = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"];

fn nines(percentile: f64) -> f64 {
    let tail = 1.0 - percentile / 100.0;
    if tail <= 10f64.powf(-MAX_NINES) {
        MAX_NINES
    } else {
        (1.0 / tail).log10()
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// An SVG chart of the named percentile curves.
pub fn percentile_chart(title: &str, series: &[(&str, &[CurvePoint])]) -> String {
    let max_us = series
        .iter()
        .flat_map(|(_, pts)| pts.iter().map(|p| p.value_us))
        .max()
        .unwrap_or(1)
        .max(1) as f64
        * 1.05;
    let plot_w = WIDTH - MARGIN_LEFT - MARGIN_RIGHT;
    let plot_h = HEIGHT - MARGIN_TOP - MARGIN_BOTTOM;
    let x = |p: f64| MARGIN_LEFT + nines(p) / MAX_NINES * plot_w;
    let y = |v: u64| MARGIN_TOP + plot_h - v as f64 / max_us * plot_h;

    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        svg,
        r#"<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/><text x="{}" y="24" font-size="16">{}</text>"#,
        MARGIN_LEFT,
        escape(title)
    );
    // Axes and grid.
    for (n, label) in ["0", "90", "99", "99.9", "99.99", "99.999", "99.9999"]
        .iter()
        .enumerate()
    {
        let gx = MARGIN_LEFT + n as f64 / MAX_NINES * plot_w;
        let _ = writeln!(
            svg,
            r##"<line x1="{gx:.1}" y1="{MARGIN_TOP}" x2="{gx:.1}" y2="{:.1}" stroke="#ddd"/><text x="{gx:.1}" y="{:.1}" text-anchor="middle">{label}</text>"##,
            MARGIN_TOP + plot_h,
            MARGIN_TOP + plot_h + 16.0
        );
    }
    for i in 0..=5 {
        let value = max_us / 1.05 * i as f64 / 5.0;
        let gy = y(value as u64);
        let _ = writeln!(
            svg,
            r##"<line x1="{MARGIN_LEFT}" y1="{gy:.1}" x2="{:.1}" y2="{gy:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{:.0}</text>"##,
            MARGIN_LEFT + plot_w,
            MARGIN_LEFT - 6.0,
            gy + 4.0,
            value
        );
    }
    let _ = writeln!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">percentile (%)</text><text x="16" y="{:.1}" transform="rotate(-90 16 {:.1})" text-anchor="middle">latency (µs)</text>"#,
        MARGIN_LEFT + plot_w / 2.0,
        HEIGHT - 10.0,
        MARGIN_TOP + plot_h / 2.0,
        MARGIN_TOP + plot_h / 2.0
    );
    for (i, (name, points)) in series.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let path: Vec<String> = points
            .iter()
            .map(|p| format!("{:.1},{:.1}", x(p.percentile), y(p.value_us)))
            .collect();
        let _ = writeln!(
            svg,
            r#"<polyline fill="none" stroke="{colour}" stroke-width="2" points="{}"/>"#,
            path.join(" ")
        );
        let ly = MARGIN_TOP + 20.0 * i as f64 + 10.0;
        let lx = MARGIN_LEFT + plot_w + 12.0;
        let _ = writeln!(
            svg,
            r#"<line x1="{lx:.1}" y1="{ly:.1}" x2="{:.1}" y2="{ly:.1}" stroke="{colour}" stroke-width="2"/><text x="{:.1}" y="{:.1}">{}</text>"#,
            lx + 20.0,
            lx + 26.0,
            ly + 4.0,
            escape(name)
        );
    }
    svg.push_str("</svg>\n");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_map_to_nines() {
        assert_eq!(nines(0.0), 0.0);
        assert!((nines(99.0) - 2.0).abs() < 1e-9);
        assert_eq!(nines(100.0), MAX_NINES);
    }

    #[test]
    fn chart_has_one_polyline_per_series() {
        let a = [
            CurvePoint {
                percentile: 0.0,
                value_us: 10,
            },
            CurvePoint {
                percentile: 99.0,
                value_us: 100,
            },
        ];
        let svg = percentile_chart("uplink <latency>", &[("uplink", &a), ("downlink", &a)]);
        assert!(svg.starts_with("<svg"));
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains("uplink &lt;latency&gt;"));
        // p=0 at the left margin, value 10 of max 105 near the bottom.
        assert!(svg.contains(&format!("points=\"{MARGIN_LEFT:.1},")));
    }
}

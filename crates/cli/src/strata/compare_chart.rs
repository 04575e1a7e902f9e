//! `strata compare --chart FILE.svg`: start-time and peak-memory distributions per layer, side by
//! side (plotters' SVG backend writes text as <text> elements, so no system font is needed).

use std::path::Path;

use anyhow::Context;
use plotters::prelude::*;

use super::compare_report::{Report, Stats};

const COLORS: [RGBColor; 4] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
];

/// Draws the chart into `path`.
pub fn write_svg(r: &Report, path: &Path) -> anyhow::Result<()> {
    let area = SVGBackend::new(path, (1000, 460)).into_drawing_area();
    area.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e}"))?;
    let area = area
        .titled(
            &format!(
                "strata compare: {} {} ({} runs per layer)",
                r.image,
                r.command.join(" "),
                r.runs
            ),
            ("sans-serif", 20),
        )
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let panels = area.split_evenly((1, 2));
    let labels: Vec<String> = r.layers.iter().map(|l| l.label()).collect();
    let start: Vec<Vec<f64>> = r
        .layers
        .iter()
        .map(|l| l.start_ms.samples.clone())
        .collect();
    let mem: Vec<Vec<f64>> = r
        .layers
        .iter()
        .map(|l| {
            l.memory_peak_bytes
                .samples
                .iter()
                .map(|b| b / 1e6)
                .collect()
        })
        .collect();
    panel(
        &panels[0],
        "time to workload start (ms)",
        "ms",
        &labels,
        &start,
    )?;
    panel(
        &panels[1],
        "peak memory on the host (MB)",
        "MB",
        &labels,
        &mem,
    )?;
    area.present().context("write the SVG")?;
    Ok(())
}

/// One strip plot: every sample as a dot, the median as a bar, per layer.
fn panel(
    area: &DrawingArea<SVGBackend, plotters::coord::Shift>,
    title: &str,
    unit: &str,
    labels: &[String],
    series: &[Vec<f64>],
) -> anyhow::Result<()> {
    let e = |e: DrawingAreaErrorKind<_>| anyhow::anyhow!("{e}");
    let max = series
        .iter()
        .flatten()
        .cloned()
        .fold(0.0_f64, f64::max)
        .max(1.0)
        * 1.15;
    let n = labels.len().max(1) as f64;
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 16))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d(-0.5..(n - 0.5), 0.0..max)
        .map_err(e)?;
    let labels_owned = labels.to_vec();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(labels.len() + 2)
        .x_label_formatter(&move |x| {
            let i = x.round();
            if (x - i).abs() < 0.01 && i >= 0.0 {
                labels_owned.get(i as usize).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .y_desc(unit)
        .label_style(("sans-serif", 13))
        .draw()
        .map_err(e)?;
    for (i, s) in series.iter().enumerate() {
        let c = COLORS[i % COLORS.len()];
        let x = i as f64;
        let k = s.len().max(1) as f64;
        chart
            .draw_series(s.iter().enumerate().map(|(j, v)| {
                // Spread the dots a little so equal samples stay visible.
                let dx = if k > 1.0 {
                    (j as f64 / (k - 1.0) - 0.5) * 0.3
                } else {
                    0.0
                };
                Circle::new((x + dx, *v), 4, c.mix(0.7).filled())
            }))
            .map_err(e)?;
        if let Some(st) = Stats::of(s) {
            chart
                .draw_series(std::iter::once(PathElement::new(
                    vec![(x - 0.3, st.median), (x + 0.3, st.median)],
                    c.stroke_width(3),
                )))
                .map_err(e)?;
            chart
                .draw_series(std::iter::once(Text::new(
                    format!("median {:.1}", st.median),
                    (x + 0.05, st.max + max * 0.04),
                    ("sans-serif", 12).into_font().color(&BLACK),
                )))
                .map_err(e)?;
        }
    }
    Ok(())
}

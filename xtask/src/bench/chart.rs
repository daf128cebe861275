//! Curves drawn as SVG beside a bench's table, where a curve says more than the table
//! (latency against load, memory against connections): panels side by side, one line
//! per server, in the same colour in every panel.

use std::path::Path;

use anyhow::Result;
pub(super) use plotters::chart::SeriesLabelPosition;
use plotters::{coord::ranged1d::ValueFormatter, prelude::*};

/// One chart of a figure.
pub(super) struct Panel<'a> {
    pub(super) title: String,
    pub(super) x_label: &'a str,
    pub(super) y_label: &'a str,
    /// A log scale, for values that span more than one order of magnitude.
    pub(super) log_y: bool,
    /// (name, points); a series with no points is left out.
    pub(super) series: Vec<(&'a str, Vec<(f64, f64)>)>,
    /// The corner the curves leave free.
    pub(super) legend: SeriesLabelPosition,
}

/// Each server in its own colour in every figure; anything else (the upstream alone, bare
/// rustls) in black, then magenta.
fn colour(name: &str, others: &mut impl Iterator<Item = RGBColor>) -> RGBColor {
    if name.starts_with("gatewayd") {
        RED
    } else if name.contains("Istio") {
        RGBColor(150, 60, 200)
    } else if name.starts_with("nginx") {
        BLUE
    } else if name.starts_with("HAProxy") {
        GREEN
    } else {
        others.next().unwrap_or(CYAN)
    }
}
const PANEL_SIZE: (u32, u32) = (480, 420);

/// The panels side by side in one SVG file.
pub(super) fn draw(path: &Path, panels: &[Panel]) -> Result<()> {
    let width = PANEL_SIZE.0 * u32::try_from(panels.len().max(1))?;
    let root = SVGBackend::new(path, (width, PANEL_SIZE.1)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_error)?;
    for (area, panel) in root
        .split_evenly((1, panels.len().max(1)))
        .iter()
        .zip(panels)
    {
        draw_panel(area, panel)?;
    }
    root.present().map_err(plot_error)?;
    Ok(())
}

fn draw_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    panel: &Panel,
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let points = || panel.series.iter().flat_map(|(_, line)| line.iter());
    let x_high = points().map(|p| p.0).fold(0.0, f64::max).max(1.0) * 1.05;
    let (y_low, y_high) = points().fold((f64::INFINITY, 0.0_f64), |(low, high), p| {
        (low.min(p.1), high.max(p.1))
    });
    let y_high = y_high.max(f64::MIN_POSITIVE) * 1.25;
    let mut builder = ChartBuilder::on(area);
    builder
        .caption(&panel.title, ("sans-serif", 16))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(52);
    if panel.log_y {
        let y_low = (y_low * 0.8).clamp(y_high / 1e4, y_high / 2.0);
        let mut chart = builder
            .build_cartesian_2d(0.0..x_high, (y_low..y_high).log_scale())
            .map_err(plot_error)?;
        mesh_and_lines(&mut chart, panel)
    } else {
        let mut chart = builder
            .build_cartesian_2d(0.0..x_high, 0.0..y_high)
            .map_err(plot_error)?;
        mesh_and_lines(&mut chart, panel)
    }
}

fn mesh_and_lines<'a, DB, Y>(
    chart: &mut ChartContext<'a, DB, Cartesian2d<plotters::coord::types::RangedCoordf64, Y>>,
    panel: &Panel,
) -> Result<()>
where
    DB: DrawingBackend + 'a,
    DB::ErrorType: 'static,
    Y: Ranged<ValueType = f64> + ValueFormatter<f64>,
{
    chart
        .configure_mesh()
        .x_desc(panel.x_label)
        .y_desc(panel.y_label)
        .x_label_formatter(&|x| thousands(*x))
        .y_label_formatter(&|y| significant(*y))
        .draw()
        .map_err(plot_error)?;
    let mut others = [BLACK, MAGENTA].into_iter();
    for (name, line) in &panel.series {
        let colour = colour(name, &mut others);
        if line.is_empty() {
            continue;
        }
        chart
            .draw_series(LineSeries::new(line.clone(), colour.stroke_width(2)))
            .map_err(plot_error)?
            .label(*name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], colour.stroke_width(2))
            });
        chart
            .draw_series(line.iter().map(|&p| Circle::new(p, 3, colour.filled())))
            .map_err(plot_error)?;
    }
    chart
        .configure_series_labels()
        .position(panel.legend.clone())
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(plot_error)?;
    Ok(())
}

/// `12k` for 12 000 and `1.25k` for 1 250, as the axes print counts and rates.
fn thousands(x: f64) -> String {
    if x >= 1000.0 {
        let text = format!("{:.2}", x / 1000.0);
        format!("{}k", text.trim_end_matches('0').trim_end_matches('.'))
    } else {
        format!("{x:.0}")
    }
}

/// A value with two significant digits or its whole part (a log axis's 0.30000000000000004
/// as 0.3).
fn significant(y: f64) -> String {
    if y >= 10.0 {
        format!("{y:.0}")
    } else if y >= 1.0 {
        format!("{y:.1}")
    } else {
        let text = format!("{y:.3}");
        text.trim_end_matches('0').trim_end_matches('.').to_owned()
    }
}

/// plotters' errors borrow the backend's; the message is what a bench run needs.
fn plot_error(error: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("drawing a chart: {error}")
}

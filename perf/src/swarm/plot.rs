//! `--plot`: per-client progress over time as a PNG, with T_min marked.
//!
//! Drawn with plotters' bitmap backend; text uses DejaVu Sans embedded in the binary (the `dejavu`
//! crate, registered with plotters' `ab_glyph` font backend), so no system font is needed.

use std::path::Path;
use std::sync::OnceLock;

use anyhow::{anyhow, Result};
use plotters::prelude::*;
use plotters::style::FontStyle;

use super::ClientRow;

const WIDTH: u32 = 1100;
const HEIGHT: u32 = 650;

/// Registers the embedded font under the family name plotters uses for `"sans-serif"`.
fn register_font() -> Result<()> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| {
        plotters::style::register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular())
            .is_ok()
    });
    if ok {
        Ok(())
    } else {
        Err(anyhow!("the embedded DejaVu Sans font could not be loaded"))
    }
}

/// Draws each client's share of the file received (percent) against time since the clients
/// started, with a vertical line at `t_min` when there is one.
pub(super) fn draw(
    path: &Path,
    rows: &[ClientRow],
    file_bytes: u64,
    t_min: Option<f64>,
    title: &str,
) -> Result<()> {
    register_font()?;
    let series: Vec<(usize, Vec<(f64, f64)>)> = rows
        .iter()
        .map(|row| {
            let mut points = vec![(0.0, 0.0)];
            let total = file_bytes.max(1) as f64;
            points.extend(
                row.samples
                    .iter()
                    .map(|&(t, bytes)| (t, 100.0 * bytes as f64 / total)),
            );
            if let Some(end) = row.seconds {
                points.push((end, 100.0));
            }
            (row.client, points)
        })
        .collect();
    let t_end = series
        .iter()
        .flat_map(|(_, points)| points.iter().map(|p| p.0))
        .chain(t_min)
        .fold(0.0_f64, f64::max)
        .max(0.1)
        * 1.05;

    let root = BitMapBackend::new(path, (WIDTH, HEIGHT)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 24))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(55)
        .build_cartesian_2d(0.0..t_end, 0.0..105.0)
        .map_err(|e| anyhow!("{e}"))?;
    chart
        .configure_mesh()
        .x_desc("seconds since the clients started")
        .y_desc("% of the file received")
        .label_style(("sans-serif", 15))
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    for (index, (client, points)) in series.into_iter().enumerate() {
        let color = Palette99::pick(index).to_rgba();
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))
            .map_err(|e| anyhow!("{e}"))?
            .label(format!("client {client}"))
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    if let Some(t_min) = t_min {
        chart
            .draw_series(LineSeries::new(
                vec![(t_min, 0.0), (t_min, 105.0)],
                BLACK.stroke_width(2),
            ))
            .map_err(|e| anyhow!("{e}"))?
            .label(format!("T_min = {t_min:.2} s"))
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 15))
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    root.present().map_err(|e| anyhow!("{e}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_a_png_without_system_fonts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.png");
        let row = ClientRow {
            client: 1,
            address: "127.0.0.2".into(),
            ok: true,
            exit: "exit status: 0".into(),
            seconds: Some(2.0),
            exit_seconds: Some(2.0),
            goodput_mbit_per_s: Some(1.0),
            bytes_from_server: Some(10),
            bytes_from_peers: Some(0),
            bytes_to_peers: None,
            packets_to_peers: None,
            packets_received: Some(1),
            packets_dropped: Some(0),
            decode_overhead: Some(0.01),
            digest_ok: Some(true),
            error: None,
            summary: None,
            samples: vec![(0.5, 100), (1.0, 500), (1.5, 900)],
        };
        draw(&path, &[row], 1000, Some(1.8), "test").unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert!(bytes.starts_with(b"\x89PNG"), "not a PNG");
        assert!(
            bytes.len() > 5_000,
            "suspiciously small: {} bytes",
            bytes.len()
        );
    }
}

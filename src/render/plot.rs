//! Plots: history rendered to SVG or PNG with plotters, for
//! `GET /api/rooms/{room}/plot.svg|png` and `telehub plot`.
//!
//! A reader at the end of the data flow: the HTTP handler copies one metric's points out
//! of [`history`](crate::sinks::history) ([`PlotData`]), and [`render`] draws them on a blocking
//! thread ([`render_blocking`] wraps it in `spawn_blocking`), so no lock and no async
//! worker is held while drawing. One line per device in its [`palette`] colour, a time
//! axis with local-time labels, the unit on the value axis, a title and a legend, in a
//! light or dark theme.
//!
//! Text is drawn with the DejaVu Sans font shipped in `assets/fonts/` and registered with
//! plotters' `ab_glyph` support, so rendering needs no system fonts and the build no
//! system libraries.

use std::sync::OnceLock;

use chrono::TimeZone;
use plotters::prelude::*;
use plotters::style::{FontStyle, RGBColor};

use super::palette;
use crate::sinks::history::{PlotData, Point};

/// The font every plot uses (DejaVu Sans, Bitstream Vera licence: `assets/fonts/`).
static FONT: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");

/// Smallest and largest width or height of a plot, in pixels.
pub(crate) const MIN_SIZE: u32 = 100;
pub(crate) const MAX_SIZE: u32 = 4_000;
/// Plots drawn at the same time at most. A 4000x4000 PNG needs a 48 MB pixel buffer, so
/// without this a burst of plot requests could take gigabytes (and every core).
pub(crate) const MAX_CONCURRENT_RENDERS: usize = 2;
/// Size of a plot when the request gives none.
pub(crate) const DEFAULT_WIDTH: u32 = 1_000;
pub(crate) const DEFAULT_HEIGHT: u32 = 500;

/// What can go wrong drawing a plot.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PlotError {
    /// `width` or `height` outside `MIN_SIZE..=MAX_SIZE`.
    #[error("`{name}` must be {MIN_SIZE} to {MAX_SIZE} pixels, not {value}")]
    Size { name: &'static str, value: u32 },
    #[error("the bundled font could not be loaded")]
    Font,
    #[error("drawing failed: {0}")]
    Draw(String),
    #[error("PNG encoding failed: {0}")]
    Encode(String),
    #[error("the rendering task failed: {0}")]
    Task(String),
}

/// The image format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Svg,
    Png,
}

impl Format {
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Svg => "image/svg+xml",
            Format::Png => "image/png",
        }
    }
}

/// Colours of the background, text and grid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Theme {
    #[default]
    Light,
    Dark,
}

impl std::str::FromStr for Theme {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "light" => Ok(Theme::Light),
            "dark" => Ok(Theme::Dark),
            _ => Err(()),
        }
    }
}

/// How to draw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PlotOptions {
    pub format: Format,
    pub width: u32,
    pub height: u32,
    pub theme: Theme,
}

impl PlotOptions {
    /// Options with a checked size.
    pub(crate) fn new(
        format: Format,
        width: u32,
        height: u32,
        theme: Theme,
    ) -> Result<Self, PlotError> {
        for (name, value) in [("width", width), ("height", height)] {
            if !(MIN_SIZE..=MAX_SIZE).contains(&value) {
                return Err(PlotError::Size { name, value });
            }
        }
        Ok(PlotOptions {
            format,
            width,
            height,
            theme,
        })
    }
}

struct Colors {
    background: RGBColor,
    text: RGBColor,
    grid: RGBColor,
    axis: RGBColor,
}

const LIGHT: Colors = Colors {
    background: RGBColor(255, 255, 255),
    text: RGBColor(32, 32, 32),
    grid: RGBColor(225, 225, 225),
    axis: RGBColor(90, 90, 90),
};

const DARK: Colors = Colors {
    background: RGBColor(24, 26, 31),
    text: RGBColor(225, 225, 225),
    grid: RGBColor(55, 58, 66),
    axis: RGBColor(160, 160, 160),
};

/// Registers the bundled font with plotters, once per process.
fn font_ready() -> Result<(), PlotError> {
    static READY: OnceLock<bool> = OnceLock::new();
    let ok = *READY.get_or_init(|| {
        plotters::style::register_font("sans-serif", FontStyle::Normal, FONT).is_ok()
    });
    ok.then_some(()).ok_or(PlotError::Font)
}

/// Draws `data` on a blocking-pool thread (rendering a large PNG takes milliseconds of
/// CPU, which must not stall an async worker).
///
/// At most [`MAX_CONCURRENT_RENDERS`] plots are drawn at once; later requests wait their
/// turn (each waiter is an HTTP request, so the connection cap bounds them).
pub(crate) async fn render_blocking(
    data: PlotData,
    opts: PlotOptions,
) -> Result<Vec<u8>, PlotError> {
    static RENDERS: tokio::sync::Semaphore =
        tokio::sync::Semaphore::const_new(MAX_CONCURRENT_RENDERS);
    let _permit = RENDERS
        .acquire()
        .await
        .map_err(|e| PlotError::Task(e.to_string()))?;
    tokio::task::spawn_blocking(move || render(&data, &opts))
        .await
        .map_err(|e| PlotError::Task(e.to_string()))?
}

/// Draws `data` as `opts` says and returns the encoded image.
pub(crate) fn render(data: &PlotData, opts: &PlotOptions) -> Result<Vec<u8>, PlotError> {
    font_ready()?;
    let size = (opts.width, opts.height);
    match opts.format {
        Format::Svg => {
            let mut out = String::new();
            {
                let root = SVGBackend::with_string(&mut out, size).into_drawing_area();
                draw(&root, data, opts)?;
                root.present().map_err(draw_err)?;
            }
            Ok(out.into_bytes())
        }
        Format::Png => {
            let mut rgb = vec![0u8; opts.width as usize * opts.height as usize * 3];
            {
                let root = BitMapBackend::with_buffer(&mut rgb, size).into_drawing_area();
                draw(&root, data, opts)?;
                root.present().map_err(draw_err)?;
            }
            encode_png(&rgb, opts.width, opts.height)
        }
    }
}

fn encode_png(rgb: &[u8], width: u32, height: u32) -> Result<Vec<u8>, PlotError> {
    let mut out = Vec::with_capacity(rgb.len() / 8);
    let mut enc = png::Encoder::new(&mut out, width, height);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    enc.set_compression(png::Compression::Fast);
    let enc_err = |e: png::EncodingError| PlotError::Encode(e.to_string());
    let mut writer = enc.write_header().map_err(enc_err)?;
    writer.write_image_data(rgb).map_err(enc_err)?;
    writer.finish().map_err(enc_err)?;
    Ok(out)
}

fn draw_err<E: std::fmt::Display>(e: E) -> PlotError {
    PlotError::Draw(e.to_string())
}

/// Epoch milliseconds as local time (the epoch itself if out of range).
fn local(ms: i64) -> chrono::DateTime<chrono::Local> {
    chrono::Local
        .timestamp_millis_opt(ms)
        .earliest()
        .unwrap_or_default()
}

/// Labels for the time axis: local time, with the date when the window spans days.
fn time_label(t: &chrono::DateTime<chrono::Local>, span: i64) -> String {
    if span > 86_400_000 {
        t.format("%m-%d %H:%M").to_string()
    } else if span > 600_000 {
        t.format("%H:%M").to_string()
    } else {
        t.format("%H:%M:%S").to_string()
    }
}

/// Reduces a line to at most about `2 * columns` points, keeping each column's minimum
/// and maximum in time order, so spikes survive and drawing stays fast.
fn decimate(points: &[Point], from: i64, to: i64, columns: usize) -> Vec<(i64, f64)> {
    if points.len() <= 2 * columns || columns == 0 {
        return points.iter().map(|p| (p.ts, p.value)).collect();
    }
    let span = (to - from).max(1) as f64;
    let mut out = Vec::with_capacity(2 * columns + 2);
    let mut i = 0;
    while i < points.len() {
        let col = (((points[i].ts - from) as f64 / span) * columns as f64).floor() as i64;
        let mut lo = points[i];
        let mut hi = points[i];
        let mut j = i + 1;
        while j < points.len()
            && ((((points[j].ts - from) as f64 / span) * columns as f64).floor() as i64) == col
        {
            if points[j].value < lo.value {
                lo = points[j];
            }
            if points[j].value > hi.value {
                hi = points[j];
            }
            j += 1;
        }
        let (a, b) = if lo.ts <= hi.ts { (lo, hi) } else { (hi, lo) };
        out.push((a.ts, a.value));
        if b != a {
            out.push((b.ts, b.value));
        }
        i = j;
    }
    out
}

fn draw<DB: DrawingBackend>(
    root: &DrawingArea<DB, plotters::coord::Shift>,
    data: &PlotData,
    opts: &PlotOptions,
) -> Result<(), PlotError>
where
    DB::ErrorType: 'static,
{
    let colors = match opts.theme {
        Theme::Light => &LIGHT,
        Theme::Dark => &DARK,
    };
    root.fill(&colors.background).map_err(draw_err)?;

    let (from, to) = (data.from, data.to.max(data.from + 1));
    let (lo, hi) = value_range(data);

    // Text scales gently with the image so small and large plots both read well.
    let scale = (opts.width.min(opts.height * 2) as f64 / 1000.0).clamp(0.5, 3.0);
    let px = |n: f64| (n * scale).round().max(8.0) as u32;
    let font = |n: f64| ("sans-serif", px(n)).into_font().color(&colors.text);

    let title = format!("{} in {}", data.metric, data.room);
    let y_desc = match &data.unit {
        Some(u) => format!("{} ({u})", data.metric),
        None => data.metric.clone(),
    };
    let span = to - from;
    let mut chart = ChartBuilder::on(root)
        .caption(title, font(24.0))
        .margin(px(12.0))
        .x_label_area_size(px(40.0))
        .y_label_area_size(px(70.0))
        // A date-time axis: plotters puts its ticks on round minutes and hours.
        .build_cartesian_2d(local(from)..local(to), lo..hi)
        .map_err(draw_err)?;
    chart
        .configure_mesh()
        .bold_line_style(colors.grid)
        .light_line_style(colors.background)
        .axis_style(colors.axis)
        .label_style(font(13.0))
        .axis_desc_style(font(15.0))
        .x_labels(((opts.width / 140).max(2)) as usize)
        .y_labels(((opts.height / 60).max(2)) as usize)
        .x_label_formatter(&|t| time_label(t, span))
        .y_label_formatter(&|v| format_value(*v))
        .x_desc(format!(
            "local time ({})",
            chrono::Local::now().format("%Z")
        ))
        .y_desc(y_desc)
        .draw()
        .map_err(draw_err)?;

    let columns = chart.plotting_area().dim_in_pixel().0 as usize;
    // At least 2 px: the axes and ticks are 1 px polylines, the data lines never are.
    let stroke = ((scale * 2.0).round() as u32).max(2);
    for (device, points) in &data.lines {
        let color = palette::series_color(device, opts.theme);
        let line = decimate(points, from, to, columns)
            .into_iter()
            .map(|(ts, v)| (local(ts), bounded(v)));
        chart
            .draw_series(LineSeries::new(line, color.stroke_width(stroke)))
            .map_err(draw_err)?
            .label(device.as_str())
            // A filled square, not a path, so the SVG has exactly one path per device.
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 14, y + 5)], color.filled()));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(colors.background.mix(0.85))
        .border_style(colors.axis)
        .label_font(font(13.0))
        .draw()
        .map_err(draw_err)?;
    Ok(())
}

/// Values beyond this are drawn at this bound: plotters' tick search never ends on an
/// axis that spans most of the f64 range (a device may send 1.7e308).
const VALUE_BOUND: f64 = 1e300;

fn bounded(v: f64) -> f64 {
    v.clamp(-VALUE_BOUND, VALUE_BOUND)
}

/// The value axis: every point with 5% headroom, and never a span so small (or so large)
/// that plotters cannot place ticks on it.
fn value_range(data: &PlotData) -> (f64, f64) {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for (_, pts) in &data.lines {
        for p in pts {
            lo = lo.min(bounded(p.value));
            hi = hi.max(bounded(p.value));
        }
    }
    if !(lo.is_finite() && hi.is_finite()) {
        return (0.0, 1.0);
    }
    // At least a billionth of the magnitude (and of 1), so a flat line has an axis.
    let min_span = (lo.abs().max(hi.abs()) * 1e-9).max(1e-9);
    if hi - lo < min_span {
        let mid = lo / 2.0 + hi / 2.0;
        return (mid - min_span, mid + min_span);
    }
    let pad = (hi - lo) * 0.05;
    (lo - pad, hi + pad)
}

/// A value axis label: short, without float noise.
fn format_value(v: f64) -> String {
    let a = v.abs();
    if a != 0.0 && !(0.001..1e6).contains(&a) {
        format!("{v:.2e}")
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(devices: usize, n: usize) -> PlotData {
        let from = 1_764_000_000_000;
        PlotData {
            room: "lab".into(),
            metric: "temperature".into(),
            unit: Some("C".into()),
            from,
            to: from + n as i64 * 1000,
            lines: (0..devices)
                .map(|d| {
                    let pts = (0..n)
                        .map(|i| Point {
                            ts: from + i as i64 * 1000,
                            value: 20.0 + d as f64 + (i as f64 / 10.0).sin(),
                        })
                        .collect();
                    (format!("dev-{d}"), pts)
                })
                .collect(),
        }
    }

    /// Polylines wider than the 1 px axes and ticks: the data lines.
    pub(crate) fn data_lines(svg: &str) -> usize {
        svg.split("<polyline")
            .skip(1)
            .filter(|p| !p.contains("stroke-width=\"1\""))
            .count()
    }

    #[test]
    fn sizes_are_bounded() {
        assert!(PlotOptions::new(Format::Png, 100_000, 100_000, Theme::Light).is_err());
        assert!(PlotOptions::new(Format::Png, 99, 500, Theme::Light).is_err());
        assert!(PlotOptions::new(Format::Png, 4000, 100, Theme::Dark).is_ok());
    }

    #[test]
    fn svg_has_one_polyline_per_device_and_a_legend() {
        let opts = PlotOptions::new(Format::Svg, 800, 400, Theme::Light).unwrap();
        let svg = String::from_utf8(render(&data(3, 300), &opts).unwrap()).unwrap();
        assert_eq!(data_lines(&svg), 3, "{svg}");
        for d in [
            "dev-0",
            "dev-1",
            "dev-2",
            "temperature in lab",
            "temperature (C)",
        ] {
            assert!(svg.contains(d), "missing {d}");
        }
    }

    #[test]
    fn png_has_the_size_and_is_not_blank() {
        for theme in [Theme::Light, Theme::Dark] {
            let opts = PlotOptions::new(Format::Png, 640, 320, theme).unwrap();
            let png = render(&data(2, 3600), &opts).unwrap();
            let decoder = png::Decoder::new(std::io::Cursor::new(png));
            let mut reader = decoder.read_info().unwrap();
            let mut buf = vec![0; reader.output_buffer_size().unwrap()];
            let info = reader.next_frame(&mut buf).unwrap();
            assert_eq!((info.width, info.height), (640, 320));
            let px = &buf[..info.buffer_size()];
            let first = &px[..3];
            let differing = px.chunks(3).filter(|p| *p != first).count();
            assert!(differing > 2_000, "only {differing} non-background pixels");
        }
    }

    #[test]
    fn decimation_keeps_extremes() {
        let pts: Vec<Point> = (0..10_000)
            .map(|i| Point {
                ts: i,
                value: if i == 5_000 { 99.0 } else { 0.0 },
            })
            .collect();
        let out = decimate(&pts, 0, 10_000, 100);
        assert!(out.len() <= 200);
        assert!(out.iter().any(|p| p.1 == 99.0));
    }

    #[test]
    fn extreme_and_flat_values_render() {
        let line = |values: &[f64]| PlotData {
            lines: vec![(
                "d".into(),
                values
                    .iter()
                    .enumerate()
                    .map(|(i, &value)| Point {
                        ts: 1_000 * (i as i64 + 1),
                        value,
                    })
                    .collect(),
            )],
            ..data(0, 10)
        };
        let cases = [
            vec![f64::MAX, -f64::MAX, 1e-300],
            vec![5e-324, 0.0],
            vec![1e20, 1e20 + 1.0],
            vec![42.0, 42.0],
        ];
        for values in cases {
            for format in [Format::Png, Format::Svg] {
                let opts = PlotOptions::new(format, 300, 200, Theme::Light).unwrap();
                // A hang here is the bug: run it on a thread with a deadline.
                let d = line(&values);
                let (tx, rx) = std::sync::mpsc::channel();
                std::thread::spawn(move || {
                    let _ = tx.send(render(&d, &opts).is_ok());
                });
                let ok = rx
                    .recv_timeout(std::time::Duration::from_secs(20))
                    .unwrap_or_else(|_| panic!("rendering {values:?} did not finish"));
                assert!(ok, "{values:?}");
            }
        }
    }

    #[test]
    fn tiny_and_huge_windows_render() {
        for span in [1, 7, 999, 1_000, 59_999, 86_400_000 * 3, 315_576_000_000] {
            let mut d = data(2, 50);
            d.to = d.from + span;
            let opts = PlotOptions::new(Format::Png, 400, 200, Theme::Dark).unwrap();
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let _ = tx.send(render(&d, &opts).is_ok());
            });
            let ok = rx
                .recv_timeout(std::time::Duration::from_secs(20))
                .unwrap_or_else(|_| panic!("a {span} ms window did not finish"));
            assert!(ok, "{span} ms");
        }
    }

    #[test]
    fn an_empty_window_still_renders() {
        let mut d = data(1, 0);
        d.to = d.from + 60_000;
        let opts = PlotOptions::new(Format::Png, 200, 100, Theme::Light).unwrap();
        assert!(render(&d, &opts).is_ok());
    }
}

//! Charts of evaluation results and embeddings, each written twice: `<stem>.svg` and
//! `<stem>.png` (plotters). Text is drawn with ab_glyph from a TrueType file, found once per
//! process: `$RAGD_FONT`, else DejaVu Sans or Liberation Sans where Debian (`fonts-dejavu-core`,
//! which `scripts/setup` installs) and other distributions put them. Without one, drawing fails
//! with [`PlotError::Font`] naming what was tried, not with a chart missing its labels.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use plotters::style::FontStyle;
use plotters::style::text_anchor::{HPos, Pos, VPos};

/// Where TrueType fonts are looked for when `RAGD_FONT` is not set.
const FONT_CANDIDATES: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu-sans-fonts/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
];

/// The family every chart asks for; [`ensure_font`] registers the file under it.
const FAMILY: &str = "sans-serif";

#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    #[error("no TrueType font to draw chart text: {0} (install Debian's fonts-dejavu-core or set RAGD_FONT)")]
    Font(String),
    #[error("drawing {path}: {message}")]
    Draw { path: PathBuf, message: String },
    #[error("{0}")]
    Input(String),
}

/// Registers the font once per process.
fn ensure_font() -> Result<(), PlotError> {
    static FONT: OnceLock<Result<(), String>> = OnceLock::new();
    FONT.get_or_init(|| {
        let candidates: Vec<PathBuf> = match std::env::var_os("RAGD_FONT") {
            Some(p) => vec![PathBuf::from(p)],
            None => FONT_CANDIDATES.iter().map(PathBuf::from).collect(),
        };
        let Some(path) = candidates.iter().find(|p| p.is_file()) else {
            let tried: Vec<String> = candidates.iter().map(|p| p.display().to_string()).collect();
            return Err(format!("none of {}", tried.join(", ")));
        };
        let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        // Registered fonts live for the process (plotters keeps a &'static); one file, once.
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        plotters::style::register_font(FAMILY, FontStyle::Normal, bytes)
            .map_err(|_| format!("{}: not a TrueType font", path.display()))
    })
    .clone()
    .map_err(PlotError::Font)
}

fn draw_err<E: std::fmt::Display>(path: &Path) -> impl Fn(E) -> PlotError + '_ {
    move |e| PlotError::Draw { path: path.to_path_buf(), message: e.to_string() }
}

/// Draws one chart on both backends, `<stem>.svg` and `<stem>.png`, and evaluates to both
/// paths: `$root` is bound to each drawing area in turn for `$draw` (a generic fn call).
macro_rules! render_both {
    ($stem:expr, $size:expr, $root:ident => $draw:expr) => {{
        ensure_font()?;
        let svg = $stem.with_extension("svg");
        let png = $stem.with_extension("png");
        {
            let $root = SVGBackend::new(&svg, $size).into_drawing_area();
            $draw.map_err(draw_err(&svg))?;
            $root.present().map_err(draw_err(&svg))?;
        }
        {
            let $root = BitMapBackend::new(&png, $size).into_drawing_area();
            $draw.map_err(draw_err(&png))?;
            $root.present().map_err(draw_err(&png))?;
        }
        Ok(vec![svg, png])
    }};
}

/// Ten distinct colours (matplotlib's tab10), cycled.
pub const PALETTE: [(u8, u8, u8); 10] = [
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
];

fn palette(i: usize) -> RGBColor {
    let (r, g, b) = PALETTE[i % PALETTE.len()];
    RGBColor(r, g, b)
}

/// Grouped bars: one group per category (x axis), one bar per series in each group, values in
/// [0, 1] or above (the axis grows to the largest value).
#[derive(Debug)]
pub struct Bars<'a> {
    pub title: &'a str,
    pub y_label: &'a str,
    pub categories: &'a [String],
    /// (series name, one value per category)
    pub series: &'a [(String, Vec<f64>)],
}

/// Writes `<stem>.svg` and `<stem>.png` of grouped bars.
pub fn bars(stem: &Path, b: &Bars<'_>) -> Result<Vec<PathBuf>, PlotError> {
    let n = b.categories.len();
    if n == 0 || b.series.is_empty() || b.series.iter().any(|(_, v)| v.len() != n) {
        return Err(PlotError::Input("bars: every series needs one value per category".into()));
    }
    let top =
        b.series.iter().flat_map(|(_, v)| v.iter().copied()).filter(|v| v.is_finite()).fold(0.0, f64::max);
    // Headroom above the tallest bar for the legend (upper right).
    let y_max = if top > 0.0 { top * 1.35 } else { 1.0 };
    let width = (160 + 110 * n as u32).max(640);
    fn draw<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, b: &Bars<'_>, y_max: f64) -> Result<(), String>
    where
        DB::ErrorType: 'static,
    {
        let n = b.categories.len();
        let e = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
        root.fill(&WHITE).map_err(e)?;
        let mut chart = ChartBuilder::on(root)
            .caption(b.title, (FAMILY, 20))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(56)
            .build_cartesian_2d(0f64..n as f64, 0f64..y_max)
            .map_err(e)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(0)
            .y_desc(b.y_label)
            .label_style((FAMILY, 13))
            .draw()
            .map_err(e)?;
        // Category names under the middle of their groups (plotters' own tick labels sit at
        // round numbers, not at group centres).
        let below = TextStyle::from((FAMILY, 13).into_font()).pos(Pos::new(HPos::Center, VPos::Top));
        for (i, name) in b.categories.iter().enumerate() {
            let (px, py) = chart.backend_coord(&(i as f64 + 0.5, 0.0));
            root.draw(&Text::new(name.clone(), (px, py + 6), below.clone())).map_err(e)?;
        }
        let m = b.series.len() as f64;
        let w = 0.8 / m;
        for (j, (name, values)) in b.series.iter().enumerate() {
            let colour = palette(j);
            let rects = values.iter().enumerate().filter(|(_, v)| v.is_finite()).map(move |(i, v)| {
                let x0 = i as f64 + 0.1 + j as f64 * w;
                Rectangle::new([(x0, 0.0), (x0 + w * 0.92, *v)], colour.filled())
            });
            chart
                .draw_series(rects)
                .map_err(e)?
                .label(name.as_str())
                .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], colour.filled()));
        }
        legend(&mut chart)?;
        Ok(())
    }
    render_both!(stem, (width, 440), root => draw(&root, b, y_max))
}

/// Labelled points on two numeric axes (recall against latency, one point per setting).
#[derive(Debug)]
pub struct Scatter<'a> {
    pub title: &'a str,
    pub x_label: &'a str,
    pub y_label: &'a str,
    /// (label, x, y)
    pub points: &'a [(String, f64, f64)],
}

/// Writes `<stem>.svg` and `<stem>.png` of labelled points.
pub fn scatter(stem: &Path, s: &Scatter<'_>) -> Result<Vec<PathBuf>, PlotError> {
    let finite: Vec<&(String, f64, f64)> =
        s.points.iter().filter(|(_, x, y)| x.is_finite() && y.is_finite()).collect();
    if finite.is_empty() {
        return Err(PlotError::Input("scatter: no point with finite coordinates".into()));
    }
    let (x_min, x_max) = finite.iter().fold((f64::MAX, f64::MIN), |(lo, hi), p| (lo.min(p.1), hi.max(p.1)));
    let (y_min, y_max) = finite.iter().fold((f64::MAX, f64::MIN), |(lo, hi), p| (lo.min(p.2), hi.max(p.2)));
    // Room for the labels right of each point and a margin on every side.
    let x_pad = ((x_max - x_min) * 0.25).max(x_max.abs() * 0.1).max(1e-3);
    let y_pad = ((y_max - y_min) * 0.15).max(y_max.abs() * 0.05).max(1e-3);
    let x_range = (x_min - x_pad * 0.4).max(0.0)..x_max + x_pad;
    let y_range = (y_min - y_pad).max(0.0)..(y_max + y_pad);
    fn draw<DB: DrawingBackend>(
        root: &DrawingArea<DB, Shift>,
        s: &Scatter<'_>,
        points: &[&(String, f64, f64)],
        x: std::ops::Range<f64>,
        y: std::ops::Range<f64>,
    ) -> Result<(), String>
    where
        DB::ErrorType: 'static,
    {
        let e = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
        let mut chart = axes(root, [s.title, s.x_label, s.y_label], 60, x, y)?;
        chart
            .draw_series(points.iter().enumerate().map(|(i, (label, x, y))| {
                EmptyElement::at((*x, *y))
                    + Circle::new((0, 0), 5, palette(i).filled())
                    + Text::new(label.clone(), (8, -8), (FAMILY, 13).into_font())
            }))
            .map_err(e)?;
        Ok(())
    }
    render_both!(stem, (720, 480), root => draw(&root, s, &finite, x_range.clone(), y_range.clone()))
}

/// One line of a [`Lines`] chart.
#[derive(Debug, Clone)]
pub struct Line {
    pub name: String,
    /// (x, y), drawn in order; non-finite points are left out.
    pub points: Vec<(f64, f64)>,
    /// A label per point, drawn beside a marker (empty: no markers).
    pub labels: Vec<String>,
}

/// Lines on two numeric axes (a quantity over time, a percentile distribution, a Pareto curve);
/// the y axis starts at 0.
#[derive(Debug)]
pub struct Lines<'a> {
    pub title: &'a str,
    pub x_label: &'a str,
    pub y_label: &'a str,
    pub lines: &'a [Line],
}

/// Writes `<stem>.svg` and `<stem>.png` of lines.
pub fn lines(stem: &Path, l: &Lines<'_>) -> Result<Vec<PathBuf>, PlotError> {
    let finite = |p: &&(f64, f64)| p.0.is_finite() && p.1.is_finite();
    let all: Vec<(f64, f64)> = l.lines.iter().flat_map(|s| s.points.iter().filter(finite).copied()).collect();
    if all.is_empty() {
        return Err(PlotError::Input("lines: no point with finite coordinates".into()));
    }
    if let Some(s) = l.lines.iter().find(|s| !s.labels.is_empty() && s.labels.len() != s.points.len()) {
        return Err(PlotError::Input(format!(
            "lines: {} has {} labels for {} points",
            s.name,
            s.labels.len(),
            s.points.len()
        )));
    }
    let (x_min, x_max) = all.iter().fold((f64::MAX, f64::MIN), |(lo, hi), p| (lo.min(p.0), hi.max(p.0)));
    let y_max = all.iter().fold(0.0f64, |hi, p| hi.max(p.1));
    // A flat line still gets an axis; headroom above the top for the legend (upper right) and
    // room right of the last point for its label.
    let x_pad = if x_max > x_min { (x_max - x_min) * 0.04 } else { x_max.abs().max(1.0) * 0.5 };
    let labelled = l.lines.iter().any(|s| !s.labels.is_empty());
    let x_range = (x_min - x_pad)..(x_max + x_pad * if labelled { 4.0 } else { 1.0 });
    let y_range = 0.0..if y_max > 0.0 { y_max * 1.3 } else { 1.0 };
    fn draw<DB: DrawingBackend>(
        root: &DrawingArea<DB, Shift>,
        l: &Lines<'_>,
        x: std::ops::Range<f64>,
        y: std::ops::Range<f64>,
    ) -> Result<(), String>
    where
        DB::ErrorType: 'static,
    {
        let e = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
        let mut chart = axes(root, [l.title, l.x_label, l.y_label], 64, x, y)?;
        for (i, s) in l.lines.iter().enumerate() {
            let colour = palette(i);
            let pts: Vec<(f64, f64)> =
                s.points.iter().filter(|p| p.0.is_finite() && p.1.is_finite()).copied().collect();
            chart
                .draw_series(LineSeries::new(pts, colour.stroke_width(2)))
                .map_err(e)?
                .label(s.name.as_str())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], colour.stroke_width(2)));
            let marked = s.points.iter().zip(&s.labels).filter(|(p, _)| p.0.is_finite() && p.1.is_finite());
            chart
                .draw_series(marked.map(|(p, label)| {
                    EmptyElement::at(*p)
                        + Circle::new((0, 0), 4, colour.filled())
                        + Text::new(label.clone(), (6, -14), (FAMILY, 12).into_font())
                }))
                .map_err(e)?;
        }
        legend(&mut chart)?;
        Ok(())
    }
    render_both!(stem, (800, 440), root => draw(&root, l, x_range.clone(), y_range.clone()))
}

/// The series' legend, boxed in the upper right.
fn legend<'a, DB: DrawingBackend + 'a, CT: CoordTranslate>(
    chart: &mut ChartContext<'a, DB, CT>,
) -> Result<(), String>
where
    DB::ErrorType: 'static,
{
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .label_font((FAMILY, 13))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| e.to_string())
}

/// A white chart on `root` with `[title, x label, y label]`, a y-label area `y_area` pixels wide
/// and a mesh over `x` × `y`.
fn axes<'a, DB: DrawingBackend>(
    root: &'a DrawingArea<DB, Shift>,
    [title, x_label, y_label]: [&str; 3],
    y_area: u32,
    x: std::ops::Range<f64>,
    y: std::ops::Range<f64>,
) -> Result<ChartContext<'a, DB, Cartesian2d<RangedCoordf64, RangedCoordf64>>, String>
where
    DB::ErrorType: 'static,
{
    let e = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    root.fill(&WHITE).map_err(e)?;
    let mut chart = ChartBuilder::on(root)
        .caption(title, (FAMILY, 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(y_area)
        .build_cartesian_2d(x, y)
        .map_err(e)?;
    chart.configure_mesh().x_desc(x_label).y_desc(y_label).label_style((FAMILY, 13)).draw().map_err(e)?;
    Ok(chart)
}

/// A colour for `t` in [0, 1] on the viridis scale (five anchors, linear between them).
pub fn viridis(t: f64) -> (u8, u8, u8) {
    const ANCHORS: [(f64, f64, f64); 5] = [
        (68.0, 1.0, 84.0),
        (59.0, 82.0, 139.0),
        (33.0, 145.0, 140.0),
        (94.0, 201.0, 98.0),
        (253.0, 231.0, 37.0),
    ];
    let t = if t.is_finite() { t.clamp(0.0, 1.0) } else { 0.0 };
    let pos = t * (ANCHORS.len() - 1) as f64;
    let i = (pos.floor() as usize).min(ANCHORS.len() - 2);
    let f = pos - i as f64;
    let (a, b) = (ANCHORS[i], ANCHORS[i + 1]);
    let mix = |x: f64, y: f64| (x + (y - x) * f).round() as u8;
    (mix(a.0, b.0), mix(a.1, b.1), mix(a.2, b.2))
}

/// A square matrix of similarities with its row labels.
#[derive(Debug)]
pub struct Heatmap<'a> {
    pub title: &'a str,
    pub labels: &'a [String],
    /// Row-major, labels.len()² values.
    pub values: &'a [f32],
}

/// Rows of at most this many get their labels on the axis; larger maps number them.
const LABELLED_ROWS: usize = 40;

/// Writes `<stem>.svg` and `<stem>.png` of a similarity heatmap (viridis, scaled from the
/// smallest to the largest off-diagonal value, printed in the caption).
pub fn heatmap(stem: &Path, h: &Heatmap<'_>) -> Result<Vec<PathBuf>, PlotError> {
    let n = h.labels.len();
    if n == 0 || h.values.len() != n * n {
        return Err(PlotError::Input(format!(
            "heatmap: {n} labels need {} values, got {}",
            n * n,
            h.values.len()
        )));
    }
    let off_diagonal = (0..n * n).filter(|i| n == 1 || i / n != i % n).map(|i| f64::from(h.values[i]));
    let (lo, hi) =
        off_diagonal.filter(|v| v.is_finite()).fold((f64::MAX, f64::MIN), |(a, b), v| (a.min(v), b.max(v)));
    let (lo, hi) = if lo <= hi { (lo, hi) } else { (0.0, 1.0) };
    let short: Vec<String> = h
        .labels
        .iter()
        .enumerate()
        .map(|(i, l)| {
            if n > LABELLED_ROWS {
                return i.to_string();
            }
            let mut s: String = l.chars().take(28).collect();
            if l.chars().count() > 28 {
                s.push('…');
            }
            s
        })
        .collect();
    let cell = (720 / n as u32).clamp(4, 40);
    let side = cell * n as u32;
    let label_w = if n > LABELLED_ROWS { 48 } else { 220 };
    let caption = format!("{} (colour: {lo:.3} … {hi:.3})", h.title);
    fn draw<DB: DrawingBackend>(
        root: &DrawingArea<DB, Shift>,
        h: &Heatmap<'_>,
        short: &[String],
        caption: &str,
        (lo, hi): (f64, f64),
        label_w: u32,
    ) -> Result<(), String>
    where
        DB::ErrorType: 'static,
    {
        let n = short.len();
        let e = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
        root.fill(&WHITE).map_err(e)?;
        let mut chart = ChartBuilder::on(root)
            .caption(caption, (FAMILY, 18))
            .margin(12)
            .x_label_area_size(28)
            .y_label_area_size(label_w)
            .build_cartesian_2d(0f64..n as f64, n as f64..0f64)
            .map_err(e)?;
        // Row names left of their rows, column numbers under their columns (every column of a
        // small map, every tenth of a large one).
        let left = TextStyle::from((FAMILY, 12).into_font()).pos(Pos::new(HPos::Right, VPos::Center));
        let below = TextStyle::from((FAMILY, 11).into_font()).pos(Pos::new(HPos::Center, VPos::Top));
        let every = if n > LABELLED_ROWS { 10 } else { 1 };
        for (i, name) in short.iter().enumerate() {
            let (px, py) = chart.backend_coord(&(0.0, i as f64 + 0.5));
            if n <= LABELLED_ROWS || i % every == 0 {
                root.draw(&Text::new(name.clone(), (px - 6, py), left.clone())).map_err(e)?;
            }
            if i % every == 0 {
                let (cx, cy) = chart.backend_coord(&(i as f64 + 0.5, n as f64));
                root.draw(&Text::new(i.to_string(), (cx, cy + 4), below.clone())).map_err(e)?;
            }
        }
        let span = if hi > lo { hi - lo } else { 1.0 };
        chart
            .draw_series((0..n * n).map(|k| {
                let (r, c) = (k / n, k % n);
                let (cr, cg, cb) = viridis((f64::from(h.values[k]) - lo) / span);
                Rectangle::new(
                    [(c as f64, r as f64), (c as f64 + 1.0, r as f64 + 1.0)],
                    RGBColor(cr, cg, cb).filled(),
                )
            }))
            .map_err(e)?;
        Ok(())
    }
    let size = (side + label_w + 60, side + 100);
    render_both!(stem, size, root => draw(&root, h, &short, &caption, (lo, hi), label_w))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn viridis_ends_and_clamps() {
        assert_eq!(viridis(0.0), (68, 1, 84));
        assert_eq!(viridis(1.0), (253, 231, 37));
        assert_eq!(viridis(2.0), viridis(1.0));
        assert_eq!(viridis(f64::NAN), viridis(0.0));
        assert_eq!(viridis(0.25), (59, 82, 139));
    }

    fn pixels(path: &Path) -> image::RgbImage {
        image::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).to_rgb8()
    }

    fn count(img: &image::RgbImage, (r, g, b): (u8, u8, u8)) -> usize {
        img.pixels().filter(|p| p.0 == [r, g, b]).count()
    }

    /// Draws each chart and reads the PNG back: the bars and points are there in the palette's
    /// colours, the heatmap's extremes in viridis' end colours; the SVG holds the labels.
    #[test]
    fn charts_draw_what_they_are_given() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cats = vec!["dense".to_string(), "keyword".to_string(), "hybrid".to_string()];
        let series = vec![
            ("nDCG@10".to_string(), vec![0.2, 0.5, 0.9]),
            ("Recall@10".to_string(), vec![0.3, 0.4, 0.8]),
        ];
        let written = bars(
            &dir.path().join("bars"),
            &Bars { title: "modes", y_label: "score", categories: &cats, series: &series },
        )
        .expect("bars");
        assert_eq!(written.len(), 2);
        let img = pixels(&dir.path().join("bars.png"));
        // Bars are hundreds of pixels each; the legend's swatch adds a few.
        assert!(count(&img, PALETTE[0]) > 1000, "first series drawn");
        assert!(count(&img, PALETTE[1]) > 1000, "second series drawn");
        assert_eq!(count(&img, PALETTE[2]), 0, "no third series");
        let svg = std::fs::read_to_string(dir.path().join("bars.svg")).expect("svg");
        for label in ["dense", "keyword", "hybrid", "nDCG@10", "Recall@10", "modes"] {
            assert!(svg.contains(label), "{label} in the SVG");
        }

        let pts = vec![("dense".to_string(), 3.0, 0.5), ("hybrid".to_string(), 6.0, 0.7)];
        scatter(
            &dir.path().join("sc"),
            &Scatter { title: "r", x_label: "ms", y_label: "recall", points: &pts },
        )
        .expect("scatter");
        let img = pixels(&dir.path().join("sc.png"));
        assert!(count(&img, PALETTE[0]) > 20 && count(&img, PALETTE[1]) > 20, "both points drawn");

        let labels = vec!["a".to_string(), "b".to_string(), "c".to_string()];
        let values = [1.0, 0.2, 0.6, 0.2, 1.0, 0.4, 0.6, 0.4, 1.0];
        heatmap(&dir.path().join("h"), &Heatmap { title: "sim", labels: &labels, values: &values })
            .expect("heatmap");
        let img = pixels(&dir.path().join("h.png"));
        // The scale runs over the off-diagonal values, 0.2 … 0.6: the two 0.2 cells are its low
        // end, the two 0.6 cells and the diagonal (past the top, clamped) its high end.
        let (low, high) = (count(&img, viridis(0.0)), count(&img, viridis(1.0)));
        assert!(low > 400, "low cells: {low} pixels");
        assert!(high > low * 2, "five high cells against two low: {high} vs {low} pixels");
        let two = [
            Line { name: "p50".into(), points: vec![(0.0, 1.0), (1.0, 2.0), (2.0, 1.5)], labels: vec![] },
            Line {
                name: "ef curve".into(),
                points: vec![(0.0, 4.0), (2.0, 3.0)],
                labels: vec!["ef=16".into(), "ef=64".into()],
            },
        ];
        lines(&dir.path().join("l"), &Lines { title: "over time", x_label: "s", y_label: "ms", lines: &two })
            .expect("lines");
        let img = pixels(&dir.path().join("l.png"));
        assert!(count(&img, PALETTE[0]) > 200 && count(&img, PALETTE[1]) > 200, "both lines drawn");
        assert_eq!(count(&img, PALETTE[2]), 0, "no third line");
        let svg = std::fs::read_to_string(dir.path().join("l.svg")).expect("svg");
        for label in ["over time", "p50", "ef curve", "ef=16", "ef=64"] {
            assert!(svg.contains(label), "{label} in the SVG");
        }
        if let Ok(keep) = std::env::var("RAGD_KEEP_CHARTS") {
            for f in ["bars.png", "sc.png", "h.png", "l.png"] {
                std::fs::copy(dir.path().join(f), Path::new(&keep).join(f)).expect("keep");
            }
        }
    }

    #[test]
    fn bad_shapes_are_refused_before_drawing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cats = vec!["a".to_string(), "b".to_string()];
        let series = vec![("m".to_string(), vec![0.5])];
        let b = Bars { title: "t", y_label: "y", categories: &cats, series: &series };
        assert!(matches!(bars(&dir.path().join("x"), &b), Err(PlotError::Input(_))));
        let h = Heatmap { title: "t", labels: &cats, values: &[1.0, 0.5, 0.5] };
        assert!(matches!(heatmap(&dir.path().join("h"), &h), Err(PlotError::Input(_))));
        let s = Scatter { title: "t", x_label: "x", y_label: "y", points: &[("p".into(), f64::NAN, 1.0)] };
        assert!(matches!(scatter(&dir.path().join("s"), &s), Err(PlotError::Input(_))));
        let empty = [Line { name: "n".into(), points: vec![(f64::NAN, 1.0)], labels: vec![] }];
        let l = Lines { title: "t", x_label: "x", y_label: "y", lines: &empty };
        assert!(matches!(lines(&dir.path().join("l"), &l), Err(PlotError::Input(_))));
        let mislabelled =
            [Line { name: "n".into(), points: vec![(1.0, 1.0)], labels: vec!["a".into(), "b".into()] }];
        let l = Lines { title: "t", x_label: "x", y_label: "y", lines: &mislabelled };
        assert!(matches!(lines(&dir.path().join("l"), &l), Err(PlotError::Input(_))));
    }
}

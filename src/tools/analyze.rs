//! `analyze`: the exponent-concentration study behind ecfloat.
//!
//! Trained weights are heavy-tailed; if their magnitudes have a power-law
//! tail `P(|w| > x) ~ x^-α` (as α-stable laws do), the probability of each
//! exponent falls geometrically by 2^-α per binade, and the entropy of the
//! exponent field is bounded by α/(1 + 2^-α) ≤ H ≤ α/(1 − 2^-α) bits —
//! whatever the dtype. Storing sign and mantissa raw and the exponent at
//! its entropy then costs (width − exponent bits) + H bits per weight: for
//! FP8-class weights with α near 1, about 4.67.
//!
//! For each tensor this reports the exponent histogram, its entropy, the
//! number of distinct exponents and the index α of the symmetric α-stable
//! law that fits the weights (McCulloch's quantile estimator: the ratio of
//! the 5–95 % to the 25–75 % spread, which falls from 10.5 at α = 0.8 to
//! 2.44 for the Gaussian, α = 2), with the bounds α implies; for the model,
//! the same per dtype and the resulting bits per weight for every dtype.

use std::path::Path;

use serde::Serialize;

use crate::codec::{FieldSplit, FloatKind, stats};
use crate::container::{CompressedFile, SourceFile, Storage, cpu_decoder};
use crate::error::{Error, Result};
use crate::tools::{Report, count, optional};

/// At most this many values per tensor feed the α fit.
const FIT_SAMPLE: usize = 1 << 22;
/// Fewer finite values than this give no fit.
const FIT_MINIMUM: usize = 100;

/// (α, q95/q75) of the standard symmetric α-stable law, whose
/// characteristic function is exp(−|t|^α); the spread ratio
/// (q95 − q05)/(q75 − q25) of any symmetric stable sample tends to it.
/// Computed by `tests::spread_ratio_by_integration`, which checks it.
const SPREAD_RATIO: [(f64, f64); 25] = [
    (0.80, 10.4773),
    (0.85, 9.0459),
    (0.90, 7.9279),
    (0.95, 7.0367),
    (1.00, 6.3138),
    (1.05, 5.7187),
    (1.10, 5.2229),
    (1.15, 4.8054),
    (1.20, 4.4509),
    (1.25, 4.1475),
    (1.30, 3.8865),
    (1.35, 3.6609),
    (1.40, 3.4656),
    (1.45, 3.2964),
    (1.50, 3.1498),
    (1.55, 3.0232),
    (1.60, 2.9140),
    (1.65, 2.8201),
    (1.70, 2.7394),
    (1.75, 2.6699),
    (1.80, 2.6099),
    (1.85, 2.5580),
    (1.90, 2.5128),
    (1.95, 2.4733),
    (2.00, 2.4387),
];

#[derive(Clone, Debug, Serialize)]
pub struct TensorAnalysis {
    pub name: String,
    pub dtype: String,
    pub elements: u64,
    /// Count of each exponent field value, 0 ..= 2^E − 1.
    pub exponent_histogram: Vec<u64>,
    /// Shannon entropy of the exponent field, in bits.
    pub exponent_entropy: f64,
    pub distinct_exponents: u32,
    /// Fitted stability index, 0.8 ..= 2; `None` with too few finite
    /// values or no spread.
    pub alpha: Option<f64>,
    /// [α/(1+2^-α), α/(1−2^-α)], the entropy range α implies.
    pub entropy_bounds: Option<[f64; 2]>,
}

#[derive(Clone, Debug, Serialize)]
pub struct DtypeSummary {
    pub dtype: String,
    pub tensors: usize,
    pub elements: u64,
    pub exponent_histogram: Vec<u64>,
    pub exponent_entropy: f64,
    pub distinct_exponents: u32,
}

/// Bits per weight a dtype needs with sign and mantissa raw and the
/// exponent at the entropy bounds.
#[derive(Clone, Debug, Serialize)]
pub struct DtypeLimit {
    pub dtype: String,
    pub raw_bits: u32,
    pub bits_per_weight: [f64; 2],
}

#[derive(Clone, Debug, Serialize)]
pub struct AnalysisReport {
    pub path: String,
    pub tensors: Vec<TensorAnalysis>,
    pub dtypes: Vec<DtypeSummary>,
    /// Element-weighted mean of the tensors' stability indices.
    pub alpha: Option<f64>,
    pub entropy_bounds: Option<[f64; 2]>,
    pub limits: Vec<DtypeLimit>,
    /// The SVG drawn with `--plot`.
    pub plot: Option<String>,
}

/// The entropy bounds a stability index implies.
pub fn entropy_bounds(alpha: f64) -> [f64; 2] {
    let decay = (-alpha).exp2();
    [alpha / (1.0 + decay), alpha / (1.0 - decay)]
}

/// McCulloch's estimate of the stability index of a symmetric α-stable
/// sample (order is changed), clamped to the table's 0.8 ..= 2: a lighter
/// tail than the Gaussian's reads as 2.
pub fn stable_alpha(values: &mut [f64]) -> Option<f64> {
    let n = values.len();
    if n < FIT_MINIMUM {
        return None;
    }
    let mut quantile = |p: f64| {
        let rank = ((n - 1) as f64 * p).round() as usize;
        *values.select_nth_unstable_by(rank, f64::total_cmp).1
    };
    let (q05, q25, q75, q95) = (
        quantile(0.05),
        quantile(0.25),
        quantile(0.75),
        quantile(0.95),
    );
    let ratio = (q95 - q05) / (q75 - q25);
    if !ratio.is_finite() {
        return None;
    }
    let (first, last) = (SPREAD_RATIO[0], SPREAD_RATIO[SPREAD_RATIO.len() - 1]);
    if ratio >= first.1 {
        return Some(first.0);
    }
    if ratio <= last.1 {
        return Some(last.0);
    }
    SPREAD_RATIO.windows(2).find_map(|pair| {
        let ((alpha_low, ratio_high), (alpha_high, ratio_low)) = (pair[0], pair[1]);
        (ratio <= ratio_high && ratio >= ratio_low).then(|| {
            alpha_low + (alpha_high - alpha_low) * (ratio_high - ratio) / (ratio_high - ratio_low)
        })
    })
}

fn value(kind: FloatKind, element: u32) -> f64 {
    match kind {
        FloatKind::F32 => f32::from_bits(element) as f64,
        FloatKind::Bf16 => half::bf16::from_bits(element as u16).to_f32() as f64,
        FloatKind::F16 => half::f16::from_bits(element as u16).to_f32() as f64,
        FloatKind::F8E4M3 => float8::F8E4M3::from_bits(element as u8).to_f32() as f64,
        FloatKind::F8E5M2 => float8::F8E5M2::from_bits(element as u8).to_f32() as f64,
    }
}

pub fn analyze_tensor(name: &str, kind: FloatKind, bytes: &[u8]) -> TensorAnalysis {
    let mut study = TensorStudy::new(kind, (bytes.len() / kind.width_bytes()) as u64);
    study.add(bytes);
    study.finish(name)
}

/// One tensor's study, fed its elements in order a piece at a time, so
/// that a tensor is never held whole: the exponent histogram, and every
/// `stride`-th finite value for the α fit (at most [`FIT_SAMPLE`]).
struct TensorStudy {
    kind: FloatKind,
    split: FieldSplit,
    elements: u64,
    histogram: Vec<u64>,
    stride: u64,
    sample: Vec<f64>,
    seen: u64,
}

impl TensorStudy {
    fn new(kind: FloatKind, elements: u64) -> Self {
        let stride = elements.div_ceil(FIT_SAMPLE as u64).max(1);
        TensorStudy {
            kind,
            split: FieldSplit {
                kind,
                sign_in_head: false,
                head_bits: kind.exponent_bits(),
                rest_const_bits: 0,
                rest_const_value: 0,
            },
            elements,
            histogram: vec![0u64; 1 << kind.exponent_bits()],
            stride,
            sample: Vec::with_capacity(elements.div_ceil(stride) as usize),
            seen: 0,
        }
    }

    fn add(&mut self, bytes: &[u8]) {
        let (kind, split, stride) = (self.kind, self.split, self.stride);
        let TensorStudy {
            histogram,
            sample,
            seen,
            ..
        } = self;
        kind.for_each_element(bytes, |element| {
            histogram[split.head(element) as usize] += 1;
            if *seen % stride == 0 {
                let value = value(kind, element);
                if value.is_finite() {
                    sample.push(value);
                }
            }
            *seen += 1;
        });
    }

    fn finish(mut self, name: &str) -> TensorAnalysis {
        debug_assert_eq!(self.seen, self.elements);
        let alpha = stable_alpha(&mut self.sample);
        TensorAnalysis {
            name: name.to_string(),
            dtype: self.kind.safetensors_name().to_string(),
            elements: self.elements,
            exponent_entropy: stats::entropy(&self.histogram),
            distinct_exponents: self.histogram.iter().filter(|&&c| c > 0).count() as u32,
            exponent_histogram: self.histogram,
            entropy_bounds: alpha.map(entropy_bounds),
            alpha,
        }
    }
}

/// Studies every non-empty float tensor of a plain or compressed file, one
/// at a time; coded tensors are decoded on the CPU a window at a time.
fn study_file(path: &Path, tensors: &mut Vec<TensorAnalysis>) -> Result<()> {
    let plain = SourceFile::open(path)?;
    if plain.ecf_version().is_none() {
        for entry in plain.tensors() {
            let dtype = format!("{:?}", entry.dtype);
            if let Some(kind) =
                FloatKind::from_safetensors_name(&dtype).filter(|_| !entry.is_empty())
            {
                tensors.push(analyze_tensor(
                    &entry.name,
                    kind,
                    &plain.data()[entry.range.clone()],
                ));
                plain.release(entry.range);
            }
        }
        return Ok(());
    }
    drop(plain);
    let file = CompressedFile::open(path)?;
    let decode = cpu_decoder();
    for tensor in &file.tensors {
        let name = &tensor.source.name;
        let dtype = format!("{:?}", tensor.source.dtype);
        let Some(kind) =
            FloatKind::from_safetensors_name(&dtype).filter(|_| !tensor.source.is_empty())
        else {
            continue;
        };
        match &tensor.storage {
            Storage::Raw => tensors.push(analyze_tensor(name, kind, file.stored_bytes(tensor))),
            Storage::Coded(coded) => {
                let mut study = TensorStudy::new(kind, coded.params.elements);
                // Checked as decompress checks them: a study of bytes that
                // are not the tensor's would mislead.
                file.decode_windows(name, coded, &decode, |bytes| {
                    study.add(bytes);
                    Ok(())
                })?;
                tensors.push(study.finish(name));
            }
        }
        file.release(tensor);
    }
    Ok(())
}

/// Studies every float tensor of `path` (a file or a directory of them)
/// and, with `plot`, draws the study there as SVG.
pub fn analyze(path: &Path, plot: Option<&Path>) -> Result<AnalysisReport> {
    // Refused before the study, which can take minutes: the plot is SVG,
    // and a `.png` name would hold SVG.
    if let Some(output) = plot {
        let svg = output
            .extension()
            .is_some_and(|extension| extension.eq_ignore_ascii_case("svg"));
        if !svg {
            return Err(Error::Usage(format!(
                "{}: the plot is written as SVG; give a file name ending in .svg",
                output.display()
            )));
        }
    }
    let report = study(path)?;
    if let Some(output) = plot {
        draw(&report, output)?;
    }
    Ok(AnalysisReport {
        plot: plot.map(|p| p.display().to_string()),
        ..report
    })
}

fn study(path: &Path) -> Result<AnalysisReport> {
    let mut tensors = Vec::new();
    for file in crate::container::safetensors_files(path)? {
        study_file(&file, &mut tensors)?;
    }
    let mut dtypes: Vec<DtypeSummary> = Vec::new();
    for kind in FloatKind::ALL {
        let of_kind: Vec<&TensorAnalysis> = tensors
            .iter()
            .filter(|t| t.dtype == kind.safetensors_name())
            .collect();
        if of_kind.is_empty() {
            continue;
        }
        let mut histogram = vec![0u64; 1 << kind.exponent_bits()];
        for tensor in &of_kind {
            for (total, count) in histogram.iter_mut().zip(&tensor.exponent_histogram) {
                *total += count;
            }
        }
        dtypes.push(DtypeSummary {
            dtype: kind.safetensors_name().to_string(),
            tensors: of_kind.len(),
            elements: of_kind.iter().map(|t| t.elements).sum(),
            exponent_entropy: stats::entropy(&histogram),
            distinct_exponents: histogram.iter().filter(|&&c| c > 0).count() as u32,
            exponent_histogram: histogram,
        });
    }
    let fitted: Vec<(f64, u64)> = tensors
        .iter()
        .filter_map(|t| t.alpha.map(|a| (a, t.elements)))
        .collect();
    let weight: u64 = fitted.iter().map(|&(_, n)| n).sum();
    let alpha = (weight > 0)
        .then(|| fitted.iter().map(|&(a, n)| a * n as f64).sum::<f64>() / weight as f64);
    let entropy_bounds = alpha.map(entropy_bounds);
    let limits = match entropy_bounds {
        Some([low, high]) => FloatKind::ALL
            .iter()
            .map(|kind| {
                let raw_bits = kind.width_bits() - kind.exponent_bits();
                DtypeLimit {
                    dtype: kind.safetensors_name().to_string(),
                    raw_bits,
                    bits_per_weight: [raw_bits as f64 + low, raw_bits as f64 + high],
                }
            })
            .collect(),
        None => Vec::new(),
    };
    Ok(AnalysisReport {
        path: path.display().to_string(),
        tensors,
        dtypes,
        alpha,
        entropy_bounds,
        limits,
        plot: None,
    })
}

/// Colours of the dtypes' series (a colour-blind-safe qualitative set).
const SERIES_COLOURS: [(u8, u8, u8); 5] = [
    (0, 114, 178),
    (213, 94, 0),
    (0, 158, 115),
    (204, 121, 167),
    (86, 180, 233),
];

/// Probabilities below this are not drawn: a handful of weights in a far
/// binade would otherwise stretch the axis over nothing.
const SMALLEST_DRAWN_PROBABILITY: f64 = 1e-7;

/// The marker of series `shape` at `at`: shapes differ, not only colours,
/// and wider dtypes get larger, hollow markers, so that dtypes whose
/// distributions coincide (F16 and F32 of the same weights) stay visible.
fn marker<DB, C>(
    shape: usize,
    at: C,
    colour: plotters::style::RGBAColor,
) -> plotters::element::DynElement<'static, DB, C>
where
    DB: plotters::prelude::DrawingBackend,
    C: Clone + 'static,
{
    use plotters::prelude::*;
    match shape % 5 {
        0 => Circle::new(at, 7, colour.stroke_width(2)).into_dyn(),
        1 => TriangleMarker::new(at, 6, colour.stroke_width(2)).into_dyn(),
        2 => Cross::new(at, 5, colour.stroke_width(2)).into_dyn(),
        3 => Circle::new(at, 3, colour.filled()).into_dyn(),
        _ => TriangleMarker::new(at, 4, colour.filled()).into_dyn(),
    }
}

/// `1.2 M`, `35 k`, `512`.
fn decimal_count(n: u64) -> String {
    match n {
        1_000_000_000.. => format!("{:.1} G", n as f64 / 1e9),
        1_000_000.. => format!("{:.1} M", n as f64 / 1e6),
        1_000.. => format!("{:.0} k", n as f64 / 1e3),
        _ => n.to_string(),
    }
}

/// A tensor's name short enough to print beside its point.
fn short_name(name: &str) -> String {
    let parts: Vec<&str> = name.split('.').collect();
    let tail = parts[parts.len().saturating_sub(3)..].join(".");
    if tail.chars().count() > 30 {
        let start: String = tail.chars().rev().take(29).collect();
        format!("…{}", start.chars().rev().collect::<String>())
    } else {
        tail
    }
}

/// Draws the study as an SVG: above, each dtype's exponent distribution
/// (on a log scale, small weights spread evenly near zero rise as a
/// straight line, their share doubling per binade, and the power-law tail
/// falls on the right); below, each tensor's exponent entropy against its
/// fitted tail index α, over the band of entropies the α-stable model
/// predicts; a legend column beside them, so that no legend covers a point.
fn draw(report: &AnalysisReport, output: &Path) -> Result<()> {
    use plotters::prelude::*;
    use plotters::style::text_anchor::{HPos, Pos, VPos};
    let failed =
        |e: &dyn std::fmt::Display| Error::io(output, std::io::Error::other(e.to_string()));
    let root = SVGBackend::new(output, (1200, 960)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| failed(&e))?;
    let (charts, legend) = root.split_horizontally(880);
    let (top, bottom) = charts.split_vertically(470);

    // Widest dtype first, so that narrower ones are drawn over it.
    let mut dtypes: Vec<(&DtypeSummary, FloatKind)> = report
        .dtypes
        .iter()
        .map(|d| {
            let kind = FloatKind::from_safetensors_name(&d.dtype).expect("analysed dtypes");
            (d, kind)
        })
        .collect();
    dtypes.sort_by_key(|(_, kind)| std::cmp::Reverse(kind.width_bits()));
    let style_of = |dtype: &str| {
        let index = dtypes
            .iter()
            .position(|(d, _)| d.dtype == dtype)
            .unwrap_or(0);
        let (r, g, b) = SERIES_COLOURS[index % SERIES_COLOURS.len()];
        (index, RGBColor(r, g, b).to_rgba())
    };

    // Exponent distributions: log10 of each exponent's probability, over
    // the normal exponents (field 0 holds zeros and subnormals, which the
    // legend counts instead).
    struct Curve {
        points: Vec<(i32, f64)>,
        zero_or_subnormal: f64,
    }
    let curves: Vec<Curve> = dtypes
        .iter()
        .map(|(summary, kind)| {
            let bias = (1i32 << (kind.exponent_bits() - 1)) - 1;
            let total = summary.exponent_histogram.iter().sum::<u64>().max(1) as f64;
            let points = summary
                .exponent_histogram
                .iter()
                .enumerate()
                .skip(1)
                .map(|(field, &count)| (field as i32 - bias, count as f64 / total))
                .filter(|&(_, p)| p >= SMALLEST_DRAWN_PROBABILITY)
                .map(|(exponent, p)| (exponent, p.log10()))
                .collect();
            Curve {
                points,
                zero_or_subnormal: summary.exponent_histogram.first().copied().unwrap_or(0) as f64
                    / total,
            }
        })
        .collect();
    let all = curves.iter().flat_map(|c| c.points.iter());
    let (min_x, max_x) = all.clone().fold((i32::MAX, i32::MIN), |(lo, hi), &(x, _)| {
        (lo.min(x), hi.max(x))
    });
    let (min_x, max_x) = if min_x > max_x {
        (-10, 10)
    } else {
        (min_x - 1, max_x + 1)
    };
    let min_y = all.fold(0f64, |lo, &(_, y)| lo.min(y));
    let mut chart = ChartBuilder::on(&top)
        .caption(
            "Exponent distribution: small weights rise on the left, the tail falls on the right",
            ("sans-serif", 22),
        )
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(min_x..max_x, (min_y.floor() - 0.3)..0.3)
        .map_err(|e| failed(&e))?;
    chart
        .configure_mesh()
        .x_desc("unbiased exponent (binade: |w| in [2^e, 2^(e+1)))")
        .y_desc("log10 share of weights")
        .y_label_formatter(&|y| format!("1e{y:.0}"))
        .draw()
        .map_err(|e| failed(&e))?;
    for ((summary, _), curve) in dtypes.iter().zip(&curves) {
        let (shape, colour) = style_of(&summary.dtype);
        // Lines join adjacent exponents only: a gap stays a gap.
        for run in curve.points.chunk_by(|a, b| b.0 == a.0 + 1) {
            chart
                .draw_series(LineSeries::new(run.iter().copied(), colour.stroke_width(1)))
                .map_err(|e| failed(&e))?;
        }
        chart
            .draw_series(curve.points.iter().map(|&p| marker(shape, p, colour)))
            .map_err(|e| failed(&e))?;
    }

    // Entropy per tensor against its tail index α.
    let fitted: Vec<(&TensorAnalysis, f64)> = report
        .tensors
        .iter()
        .filter_map(|t| t.alpha.map(|alpha| (t, alpha)))
        .collect();
    let (alpha_low, alpha_high) = (SPREAD_RATIO[0].0, SPREAD_RATIO[SPREAD_RATIO.len() - 1].0);
    let max_bits = fitted
        .iter()
        .map(|(t, _)| t.exponent_entropy)
        .chain([entropy_bounds(alpha_high)[1]])
        .fold(0f64, f64::max)
        .min(16.0)
        * 1.12;
    let mut chart = ChartBuilder::on(&bottom)
        .caption(
            "Exponent entropy per tensor against its tail index α",
            ("sans-serif", 22),
        )
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d((alpha_low - 0.05)..(alpha_high + 0.05), 0f64..max_bits)
        .map_err(|e| failed(&e))?;
    chart
        .configure_mesh()
        .x_desc("tail index α of the fitted stable law (2 = Gaussian)")
        .y_desc("exponent entropy, bits")
        .draw()
        .map_err(|e| failed(&e))?;
    let steps = 120;
    let alphas: Vec<f64> = (0..=steps)
        .map(|i| alpha_low + (alpha_high - alpha_low) * i as f64 / steps as f64)
        .collect();
    let band: Vec<(f64, f64)> = alphas
        .iter()
        .map(|&a| (a, entropy_bounds(a)[0]))
        .chain(alphas.iter().rev().map(|&a| (a, entropy_bounds(a)[1])))
        .collect();
    let band_colour = RGBColor(120, 120, 120);
    chart
        .draw_series([Polygon::new(band, band_colour.mix(0.18).filled())])
        .map_err(|e| failed(&e))?;
    for side in 0..2 {
        chart
            .draw_series(LineSeries::new(
                alphas.iter().map(|&a| (a, entropy_bounds(a)[side])),
                band_colour.stroke_width(1),
            ))
            .map_err(|e| failed(&e))?;
    }
    for &(tensor, alpha) in &fitted {
        let (shape, colour) = style_of(&tensor.dtype);
        chart
            .draw_series([marker(shape, (alpha, tensor.exponent_entropy), colour)])
            .map_err(|e| failed(&e))?;
    }
    // The largest tensors, named (each name once, whatever its dtypes):
    // they decide a model's size. The labels stand in a column in the
    // panel's upper left, where a heavier tail (small α) with a high
    // entropy would be, which weights do not show; a leader joins each to
    // its point.
    let mut largest: Vec<(&TensorAnalysis, f64)> = Vec::new();
    let mut by_size = fitted.clone();
    by_size.sort_by_key(|(t, _)| std::cmp::Reverse(t.elements));
    for (tensor, alpha) in by_size {
        if largest.len() < 6 && !largest.iter().any(|(t, _)| t.name == tensor.name) {
            largest.push((tensor, alpha));
        }
    }
    largest.sort_by(|a, b| b.0.exponent_entropy.total_cmp(&a.0.exponent_entropy));
    let (column_x, top_y) = chart.backend_coord(&(alpha_low + 0.45, max_bits * 0.97));
    for (row, &(tensor, alpha)) in largest.iter().enumerate() {
        let label_y = top_y + 17 * row as i32;
        let point = chart.backend_coord(&(alpha, tensor.exponent_entropy));
        root.draw(&PathElement::new(
            vec![(column_x + 4, label_y), point],
            BLACK.mix(0.35).stroke_width(1),
        ))
        .map_err(|e| failed(&e))?;
        root.draw(&Text::new(
            format!(
                "{} ({} weights)",
                short_name(&tensor.name),
                decimal_count(tensor.elements)
            ),
            (column_x, label_y),
            ("sans-serif", 12)
                .into_font()
                .color(&BLACK.mix(0.85))
                .pos(Pos::new(HPos::Right, VPos::Center)),
        ))
        .map_err(|e| failed(&e))?;
    }

    // The legend column.
    let title = ("sans-serif", 17).into_font().style(FontStyle::Bold);
    let body = ("sans-serif", 14).into_font();
    let small = ("sans-serif", 12).into_font().color(&BLACK.mix(0.75));
    let mut y = 40;
    legend
        .draw(&Text::new("dtype", (10, y), title.clone()))
        .map_err(|e| failed(&e))?;
    y += 30;
    for ((summary, _), curve) in dtypes.iter().zip(&curves) {
        let (shape, colour) = style_of(&summary.dtype);
        legend
            .draw(&marker(shape, (22, y + 6), colour))
            .map_err(|e| failed(&e))?;
        legend
            .draw(&Text::new(
                format!(
                    "{}: H = {:.2} bits",
                    summary.dtype, summary.exponent_entropy
                ),
                (40, y),
                body.clone(),
            ))
            .map_err(|e| failed(&e))?;
        legend
            .draw(&Text::new(
                format!(
                    "{}, {:.3} % zero or subnormal",
                    count(summary.tensors as u64, "tensor"),
                    100.0 * curve.zero_or_subnormal
                ),
                (40, y + 18),
                small.clone(),
            ))
            .map_err(|e| failed(&e))?;
        y += 48;
    }
    y += 10;
    legend
        .draw(&Rectangle::new(
            [(12, y), (32, y + 14)],
            band_colour.mix(0.18).filled(),
        ))
        .map_err(|e| failed(&e))?;
    legend
        .draw(&Text::new(
            "entropy the α-stable model predicts",
            (40, y),
            body.clone(),
        ))
        .map_err(|e| failed(&e))?;
    y += 30;
    let unfitted = report.tensors.len() - fitted.len();
    let mut notes = vec![
        "Lower panel: one point per tensor;".to_string(),
        "the six largest are named.".to_string(),
        String::new(),
        "A point above the band is expected:".to_string(),
        "the model counts the power-law tail".to_string(),
        "only; small weights spread over".to_string(),
        "the binades below a tensor's typical".to_string(),
        "magnitude and add entropy.".to_string(),
        String::new(),
        "Not drawn: exponent field 0 (share above) and".to_string(),
        format!("exponents holding under {SMALLEST_DRAWN_PROBABILITY:e} of weights."),
    ];
    if unfitted > 0 {
        notes.push(format!(
            "{} too small to fit α.",
            count(unfitted as u64, "tensor")
        ));
    }
    for line in notes {
        y += 17;
        legend
            .draw(&Text::new(line, (10, y), small.clone()))
            .map_err(|e| failed(&e))?;
    }
    root.present().map_err(|e| failed(&e))
}

impl Report for AnalysisReport {
    fn write_text(&self, out: &mut dyn std::io::Write) -> std::io::Result<()> {
        let bounds = |b: Option<[f64; 2]>| {
            b.map_or("-".to_string(), |[low, high]| {
                format!("{low:.2}..{high:.2}")
            })
        };
        let width = self
            .tensors
            .iter()
            .map(|t| t.name.len())
            .max()
            .unwrap_or(0)
            .max(6);
        writeln!(
            out,
            "{:<width$} {:<8} {:>12} {:>7} {:>9} {:>6} {:>12}",
            "tensor", "dtype", "elements", "H(exp)", "distinct", "alpha", "H model"
        )?;
        for t in &self.tensors {
            writeln!(
                out,
                "{:<width$} {:<8} {:>12} {:>7.3} {:>9} {:>6} {:>12}",
                t.name,
                t.dtype,
                t.elements,
                t.exponent_entropy,
                t.distinct_exponents,
                optional(t.alpha, 2),
                bounds(t.entropy_bounds)
            )?;
        }
        for d in &self.dtypes {
            writeln!(
                out,
                "{}: {}, {} elements, exponent entropy {:.3} bits over {} distinct exponents",
                d.dtype,
                count(d.tensors as u64, "tensor"),
                d.elements,
                d.exponent_entropy,
                d.distinct_exponents
            )?;
        }
        if let (Some(alpha), Some(range)) = (self.alpha, self.entropy_bounds) {
            writeln!(
                out,
                "stable-law index α = {alpha:.3} (element-weighted); the α-stable tail model predicts \
                 an exponent entropy of {} bits (measured: H(exp) above)",
                bounds(Some(range))
            )?;
            for limit in &self.limits {
                writeln!(
                    out,
                    "  {:<8} {} raw bits + exponent → {:.2}..{:.2} bits per weight (model)",
                    limit.dtype, limit.raw_bits, limit.bits_per_weight[0], limit.bits_per_weight[1]
                )?;
            }
            writeln!(
                out,
                "note: the model counts the power-law tail above a tensor's typical magnitude only; \
                 the binades below it (where small weights spread evenly) add entropy it leaves out, \
                 so a measured H above its prediction is expected"
            )?;
        }
        if let Some(plot) = &self.plot {
            writeln!(out, "plot: {plot}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The standard symmetric stable CDF by Simpson's rule on
    /// F(x) = 1/2 + (1/π) ∫₀^∞ sin(xt)/t · exp(−t^α) dt.
    fn stable_cdf(alpha: f64, x: f64) -> f64 {
        let t_max = 45f64.powf(1.0 / alpha);
        let periods = x * t_max / std::f64::consts::TAU;
        let steps = ((periods * 40.0).max(2000.0) as usize) * 2;
        let h = t_max / steps as f64;
        let f = |t: f64| {
            if t == 0.0 {
                x
            } else {
                (x * t).sin() / t * (-t.powf(alpha)).exp()
            }
        };
        let inner: f64 = (1..steps)
            .map(|i| f(i as f64 * h) * if i % 2 == 1 { 4.0 } else { 2.0 })
            .sum();
        0.5 + (f(0.0) + inner + f(t_max)) * h / 3.0 / std::f64::consts::PI
    }

    fn stable_quantile(alpha: f64, p: f64) -> f64 {
        let (mut low, mut high) = (0.0, 1.0);
        while stable_cdf(alpha, high) < p {
            high *= 2.0;
        }
        for _ in 0..40 {
            let mid = 0.5 * (low + high);
            if stable_cdf(alpha, mid) < p {
                low = mid
            } else {
                high = mid
            }
        }
        0.5 * (low + high)
    }

    #[test]
    fn spread_ratio_by_integration() {
        // Closed forms first: Cauchy (α = 1) and Gaussian with variance 2.
        assert!((stable_quantile(1.0, 0.95) - (0.45 * std::f64::consts::PI).tan()).abs() < 1e-4);
        assert!((stable_quantile(2.0, 0.95) - 1.644_854 * 2f64.sqrt()).abs() < 1e-4);
        for &(alpha, ratio) in SPREAD_RATIO.iter().step_by(4) {
            let computed = stable_quantile(alpha, 0.95) / stable_quantile(alpha, 0.75);
            assert!(
                (computed - ratio).abs() < 2e-4,
                "α {alpha}: table {ratio}, integral {computed}"
            );
        }
    }

    /// Deterministic symmetric stable sample by Chambers–Mallows–Stuck on a
    /// grid of (U, W) pairs.
    fn stable_sample(alpha: f64, n: usize) -> Vec<f64> {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut uniform = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            ((state >> 11) as f64 + 0.5) / (1u64 << 53) as f64
        };
        (0..n)
            .map(|_| {
                let u = (uniform() - 0.5) * std::f64::consts::PI;
                let w = -uniform().ln();
                (alpha * u).sin() / u.cos().powf(1.0 / alpha)
                    * (((1.0 - alpha) * u).cos() / w).powf((1.0 - alpha) / alpha)
            })
            .collect()
    }

    #[test]
    fn the_fit_recovers_alpha_of_stable_samples() {
        for alpha in [0.9, 1.3, 1.7, 2.0] {
            let mut sample = stable_sample(alpha, 400_000);
            let fitted = stable_alpha(&mut sample).unwrap();
            assert!((fitted - alpha).abs() < 0.03, "α {alpha}: fitted {fitted}");
        }
        assert_eq!(stable_alpha(&mut [1.0; 10_000]), None);
        assert_eq!(stable_alpha(&mut [1.0, 2.0]), None);
    }

    #[test]
    fn bounds_close_in_on_alpha_as_the_tail_thins() {
        let mut previous_gap = f64::INFINITY;
        for alpha in [0.5, 1.0, 2.0, 4.0, 8.0] {
            let [low, high] = entropy_bounds(alpha);
            assert!(low < alpha && alpha < high, "{alpha}: {low}..{high}");
            assert!(high - low < previous_gap);
            previous_gap = high - low;
        }
        assert!(previous_gap < 0.07);
    }
}

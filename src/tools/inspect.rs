//! `inspect`: what a file holds and how well it codes, per tensor and in
//! total, against the exponent-entropy bound.
//!
//! The bound is the size with sign and mantissa stored raw and the exponent
//! at its per-tensor Shannon entropy, with no metadata: what one ideal code
//! per tensor for the exponent alone would reach.

use std::io::{self, Write};
use std::path::Path;

use serde::Serialize;

use super::{Bytes, Report, count, optional};

use crate::codec::{self, FieldSplit, FloatKind, stats};
use crate::container::{CompressedFile, SourceFile, Storage};
use crate::error::{Error, Result};

#[derive(Clone, Debug, Serialize)]
pub struct TensorInspection {
    /// The file that holds it.
    pub file: String,
    pub name: String,
    pub dtype: String,
    pub shape: Vec<u64>,
    pub elements: u64,
    pub source_bytes: u64,
    /// Bytes the tensor takes in the compressed file (its planes, or its raw
    /// data); equal to `source_bytes` for a file not yet compressed.
    pub stored_bytes: u64,
    pub coded: bool,
    /// Shannon entropy of the exponent field in bits, for float tensors.
    pub exponent_entropy: Option<f64>,
    pub distinct_exponents: Option<u32>,
    /// Stored bits per element.
    pub bits_per_element: f64,
    /// The exponent-entropy bound in bits per element, for float tensors.
    pub bound_bits_per_element: Option<f64>,
    /// Coding parameters of a coded tensor.
    pub head_bits: Option<u32>,
    /// Whether its heads carry the sign (sign first) or not (exponent
    /// first).
    pub sign_in_head: Option<bool>,
    pub blocks: Option<u64>,
    pub code_tables: Option<u64>,
    pub sync_exceptions: Option<u64>,
}

/// What `inspect` reports of a file, or of every safetensors file of a
/// directory (then the sizes and ratios are their sums).
#[derive(Clone, Debug, Serialize)]
pub struct Inspection {
    pub path: String,
    /// Every file is ecfloat-compressed.
    pub compressed: bool,
    /// The files' format version, when they are compressed and share one.
    pub format_version: Option<u32>,
    pub source_bytes: u64,
    /// Bytes of the file(s) as on disk.
    pub file_bytes: u64,
    /// `file_bytes / source_bytes`.
    pub ratio: f64,
    /// The exponent-entropy bound (non-float tensors and the source header
    /// counted at their size) over `source_bytes`.
    pub bound_ratio: f64,
    pub files: Vec<FileSummary>,
    pub tensors: Vec<TensorInspection>,
}

/// One inspected file.
#[derive(Clone, Debug, Serialize)]
pub struct FileSummary {
    pub path: String,
    pub compressed: bool,
    pub format_version: Option<u32>,
    pub source_bytes: u64,
    pub file_bytes: u64,
    pub ratio: f64,
    pub bound_ratio: f64,
}

/// Inspects a compressed or plain safetensors file (for a plain one,
/// reporting what its exponents would allow), or every safetensors file of
/// a directory.
pub fn inspect(path: &Path) -> Result<Inspection> {
    let files = crate::container::safetensors_files(path)?;
    let mut inspections = Vec::with_capacity(files.len());
    for file in &files {
        inspections.push(inspect_file(file)?);
    }
    let source_bytes: u64 = inspections.iter().map(|i| i.source_bytes).sum();
    let file_bytes: u64 = inspections.iter().map(|i| i.file_bytes).sum();
    let bound_bytes: f64 = inspections
        .iter()
        .map(|i| i.bound_ratio * i.source_bytes.max(1) as f64)
        .sum();
    let versions: Vec<Option<u32>> = inspections.iter().map(|i| i.format_version).collect();
    Ok(Inspection {
        path: path.display().to_string(),
        compressed: inspections.iter().all(|i| i.compressed),
        format_version: versions
            .first()
            .copied()
            .flatten()
            .filter(|_| versions.windows(2).all(|pair| pair[0] == pair[1])),
        source_bytes,
        file_bytes,
        ratio: file_bytes as f64 / source_bytes.max(1) as f64,
        bound_ratio: bound_bytes / source_bytes.max(1) as f64,
        files: inspections
            .iter()
            .map(|i| FileSummary {
                path: i.path.clone(),
                compressed: i.compressed,
                format_version: i.format_version,
                source_bytes: i.source_bytes,
                file_bytes: i.file_bytes,
                ratio: i.ratio,
                bound_ratio: i.bound_ratio,
            })
            .collect(),
        tensors: inspections.into_iter().flat_map(|i| i.tensors).collect(),
    })
}

/// One file's inspection, before it joins the others of a directory.
struct FileInspection {
    path: String,
    compressed: bool,
    format_version: Option<u32>,
    source_bytes: u64,
    file_bytes: u64,
    ratio: f64,
    bound_ratio: f64,
    tensors: Vec<TensorInspection>,
}

fn inspect_file(path: &Path) -> Result<FileInspection> {
    let plain = SourceFile::open(path)?;
    if plain.ecf_version().is_none() {
        return inspect_plain(path, &plain);
    }
    drop(plain);
    let file = CompressedFile::open(path)?;
    let mut tensors = Vec::with_capacity(file.tensors.len());
    for tensor in &file.tensors {
        let source = &tensor.source;
        let dtype = format!("{:?}", source.dtype);
        let mut inspection = base_inspection(
            path,
            &source.name,
            &dtype,
            &source.shape,
            source.len() as u64,
        );
        match &tensor.storage {
            Storage::Raw => {
                let bytes = file.stored_bytes(tensor);
                if let Some(kind) = FloatKind::from_safetensors_name(&dtype) {
                    add_exponent_stats(&mut inspection, kind, &exponent_histogram(kind, bytes));
                }
            }
            Storage::Coded(coded) => {
                let view = file.view(coded);
                let mut walker = file.index_walker(&source.name, coded)?;
                let mut heads = [0u64; stats::ALPHABET];
                let codec_error = |e| Error::codec(path, &source.name, e);
                while let Some(window) = walker
                    .next_window_of_bytes(crate::container::BATCH_BYTES)
                    .map_err(codec_error)?
                {
                    let part = codec::decode::head_histogram(&window.view(&view), &window.index)
                        .map_err(codec_error)?;
                    stats::add_into(&mut heads, &part);
                }
                let split = coded.params.split;
                let mut exponents = [0u64; stats::ALPHABET];
                for (head, &count) in heads.iter().enumerate().take(1 << split.head_bits) {
                    exponents[split.exponent_of_head(head as u32) as usize] += count;
                }
                add_exponent_stats(&mut inspection, split.kind, &exponents);
                inspection.coded = true;
                inspection.stored_bytes = tensor.stored_range.len() as u64;
                inspection.head_bits = Some(split.head_bits);
                inspection.sign_in_head = Some(split.sign_in_head);
                inspection.blocks = Some(coded.summary.blocks);
                inspection.code_tables = Some(coded.summary.tables);
                inspection.sync_exceptions = Some(coded.summary.exceptions);
            }
        }
        finish(&mut inspection);
        tensors.push(inspection);
    }
    let header_bytes = 8 + file.source_header.len() as u64;
    Ok(summarise(
        path,
        true,
        Some(crate::container::schema::FORMAT_VERSION),
        file.source_len(),
        file.stored_len(),
        header_bytes,
        tensors,
    ))
}

fn inspect_plain(path: &Path, file: &SourceFile) -> Result<FileInspection> {
    let mut tensors = Vec::new();
    for source in file.tensors() {
        let dtype = format!("{:?}", source.dtype);
        let mut inspection = base_inspection(
            path,
            &source.name,
            &dtype,
            &source.shape,
            source.len() as u64,
        );
        if let Some(kind) = FloatKind::from_safetensors_name(&dtype) {
            let bytes = &file.data()[source.range.clone()];
            add_exponent_stats(&mut inspection, kind, &exponent_histogram(kind, bytes));
        }
        finish(&mut inspection);
        tensors.push(inspection);
    }
    let len = file.bytes().len() as u64;
    let header_bytes = len - file.data().len() as u64;
    Ok(summarise(
        path,
        false,
        None,
        len,
        len,
        header_bytes,
        tensors,
    ))
}

fn base_inspection(
    file: &Path,
    name: &str,
    dtype: &str,
    shape: &[usize],
    bytes: u64,
) -> TensorInspection {
    TensorInspection {
        file: file.display().to_string(),
        name: name.to_string(),
        dtype: dtype.to_string(),
        shape: shape.iter().map(|&d| d as u64).collect(),
        elements: shape.iter().map(|&d| d as u64).product(),
        source_bytes: bytes,
        stored_bytes: bytes,
        coded: false,
        exponent_entropy: None,
        distinct_exponents: None,
        bits_per_element: 0.0,
        bound_bits_per_element: None,
        head_bits: None,
        sign_in_head: None,
        blocks: None,
        code_tables: None,
        sync_exceptions: None,
    }
}

fn exponent_histogram(kind: FloatKind, bytes: &[u8]) -> stats::Histogram {
    let split = FieldSplit {
        kind,
        sign_in_head: false,
        head_bits: kind.exponent_bits(),
        rest_const_bits: 0,
        rest_const_value: 0,
    };
    let mut histogram = [0u64; stats::ALPHABET];
    for index in 0..bytes.len() / kind.width_bytes() {
        histogram[split.head(kind.load(bytes, index)) as usize] += 1;
    }
    histogram
}

fn add_exponent_stats(
    inspection: &mut TensorInspection,
    kind: FloatKind,
    exponents: &stats::Histogram,
) {
    let entropy = stats::entropy(exponents);
    inspection.exponent_entropy = Some(entropy);
    inspection.distinct_exponents = Some(stats::distinct(exponents) as u32);
    let raw_bits = (kind.width_bits() - kind.exponent_bits()) as f64;
    inspection.bound_bits_per_element = Some(raw_bits + entropy);
}

fn finish(inspection: &mut TensorInspection) {
    inspection.bits_per_element = if inspection.elements == 0 {
        0.0
    } else {
        inspection.stored_bytes as f64 * 8.0 / inspection.elements as f64
    };
}

fn summarise(
    path: &Path,
    compressed: bool,
    format_version: Option<u32>,
    source_bytes: u64,
    file_bytes: u64,
    header_bytes: u64,
    tensors: Vec<TensorInspection>,
) -> FileInspection {
    let bound_bytes: f64 = header_bytes as f64
        + tensors
            .iter()
            .map(|t| match t.bound_bits_per_element {
                Some(bits) => bits * t.elements as f64 / 8.0,
                None => t.source_bytes as f64,
            })
            .sum::<f64>();
    let source = source_bytes.max(1) as f64;
    FileInspection {
        path: path.display().to_string(),
        compressed,
        format_version,
        source_bytes,
        file_bytes,
        ratio: file_bytes as f64 / source,
        bound_ratio: bound_bytes / source,
        tensors,
    }
}

impl Report for Inspection {
    fn write_text(&self, out: &mut dyn Write) -> io::Result<()> {
        let describe = |compressed: bool, version: Option<u32>| match (compressed, version) {
            (true, Some(version)) => format!("ecfloat-compressed (format version {version})"),
            (true, None) => "ecfloat-compressed".to_string(),
            (false, _) => "plain safetensors (not compressed)".to_string(),
        };
        let directory = self.files.len() != 1 || self.files[0].path != self.path;
        if directory {
            writeln!(
                out,
                "{}: a directory of {}",
                self.path,
                count(self.files.len() as u64, "safetensors file")
            )?;
        } else {
            writeln!(
                out,
                "{}: {}",
                self.path,
                describe(self.compressed, self.format_version)
            )?;
        }
        let width = self
            .tensors
            .iter()
            .map(|t| t.name.len())
            .max()
            .unwrap_or(0)
            .clamp(6, 60);
        for file in &self.files {
            if directory {
                writeln!(
                    out,
                    "\n{}: {}, {} -> {}",
                    file.path,
                    describe(file.compressed, file.format_version),
                    Bytes(file.source_bytes),
                    Bytes(file.file_bytes)
                )?;
            }
            writeln!(
                out,
                "{:<width$} {:<8} {:>16} {:>12} {:>5} {:>8} {:>8} {:>8}",
                "tensor", "dtype", "shape", "elements", "coded", "H(exp)", "bits/el", "bound"
            )?;
            for t in self.tensors.iter().filter(|t| t.file == file.path) {
                writeln!(
                    out,
                    "{:<width$} {:<8} {:>16} {:>12} {:>5} {:>8} {:>8.3} {:>8}",
                    t.name,
                    t.dtype,
                    format!("{:?}", t.shape),
                    t.elements,
                    if t.coded { "yes" } else { "no" },
                    optional(t.exponent_entropy, 3),
                    t.bits_per_element,
                    optional(t.bound_bits_per_element, 3),
                )?;
            }
        }
        writeln!(
            out,
            "total: {}, {} source, {} on disk, ratio {:.4} (exponent-entropy bound {:.4})",
            count(self.tensors.len() as u64, "tensor"),
            Bytes(self.source_bytes),
            Bytes(self.file_bytes),
            self.ratio,
            self.bound_ratio
        )
    }
}

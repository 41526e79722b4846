//! `compress`: a safetensors file, or a checkpoint directory of them, in;
//! the compressed file or directory out.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::container::{self, CompressOptions, Progress};
use crate::error::Result;

use super::{Bytes, Report, count};

/// What `compress` did.
#[derive(Clone, Debug, Serialize)]
pub struct CompressSummary {
    pub input: PathBuf,
    pub output: PathBuf,
    pub source_bytes: u64,
    pub compressed_bytes: u64,
    /// `compressed_bytes / source_bytes`.
    pub ratio: f64,
    /// For a directory, its safetensors files alone (what `inspect`
    /// compares): every other file, copied or rewritten, left out.
    pub weights: Option<WeightFiles>,
    pub coded_tensors: usize,
    pub raw_tensors: usize,
    /// Files of a directory copied unchanged (not safetensors files).
    pub copied_files: Vec<CopiedFile>,
    pub seconds: f64,
    pub peak_rss_bytes: Option<u64>,
}

/// The safetensors files of a directory, before and after.
#[derive(Clone, Debug, Serialize)]
pub struct WeightFiles {
    pub source_bytes: u64,
    pub compressed_bytes: u64,
    /// `compressed_bytes / source_bytes`.
    pub ratio: f64,
}

/// A file a directory compress copied as it was.
#[derive(Clone, Debug, Serialize)]
pub struct CopiedFile {
    pub name: String,
    pub bytes: u64,
    /// Whether it looks like model weights in a format ecfloat does not
    /// read (`.bin`, `.pt`, `.gguf`, …): it is copied, not compressed.
    pub unread_weights: bool,
}

/// Compresses `input` (a file or a directory) to `output`, or to the
/// default name beside it ([`container::compressed_name`]).
pub fn compress(
    input: &Path,
    output: Option<&Path>,
    force: bool,
    progress: Progress,
) -> Result<CompressSummary> {
    let output = output.map_or_else(|| container::compressed_name(input), Path::to_path_buf);
    let options = CompressOptions {
        force,
        progress,
        ..CompressOptions::default()
    };
    let mut weights = None;
    let (source_bytes, compressed_bytes, seconds, tensors, copied) = if input.is_dir() {
        let report = container::compress_directory(input, &output, &options)?;
        let shard_bytes = |bytes: fn(&container::CompressReport) -> u64| {
            report
                .shards
                .iter()
                .map(|(_, shard)| bytes(shard))
                .sum::<u64>()
        };
        let (source_bytes, compressed_bytes) = (
            shard_bytes(|s| s.source_bytes),
            shard_bytes(|s| s.compressed_bytes),
        );
        weights = Some(WeightFiles {
            source_bytes,
            compressed_bytes,
            ratio: compressed_bytes as f64 / source_bytes.max(1) as f64,
        });
        let tensors: Vec<_> = report
            .shards
            .iter()
            .flat_map(|(_, shard)| shard.tensors.iter().cloned())
            .collect();
        let copied = report
            .copied
            .iter()
            .map(|(name, bytes)| CopiedFile {
                unread_weights: container::directory::is_unread_weights(name),
                name: name.clone(),
                bytes: *bytes,
            })
            .collect();
        (
            report.source_bytes,
            report.output_bytes,
            report.seconds,
            tensors,
            copied,
        )
    } else {
        let report = container::compress_file(input, &output, &options)?;
        (
            report.source_bytes,
            report.compressed_bytes,
            report.seconds,
            report.tensors,
            Vec::new(),
        )
    };
    let coded_tensors = tensors.iter().filter(|t| t.coded).count();
    Ok(CompressSummary {
        input: input.to_path_buf(),
        output,
        source_bytes,
        compressed_bytes,
        ratio: compressed_bytes as f64 / source_bytes.max(1) as f64,
        weights,
        coded_tensors,
        raw_tensors: tensors.len() - coded_tensors,
        copied_files: copied,
        seconds,
        peak_rss_bytes: super::peak_rss_bytes(),
    })
}

impl Report for CompressSummary {
    fn write_text(&self, out: &mut dyn Write) -> io::Result<()> {
        writeln!(
            out,
            "{} -> {}: {} -> {} ({:.2}% of the original{}), {} of {} coded, {:.2} s ({:.0} MB/s)",
            self.input.display(),
            self.output.display(),
            Bytes(self.source_bytes),
            Bytes(self.compressed_bytes),
            100.0 * self.ratio,
            if self.weights.is_some() {
                ", every file"
            } else {
                ""
            },
            self.coded_tensors,
            count((self.coded_tensors + self.raw_tensors) as u64, "tensor"),
            self.seconds,
            self.source_bytes as f64 / self.seconds.max(1e-9) / 1e6,
        )?;
        if let Some(weights) = &self.weights {
            writeln!(
                out,
                "safetensors files alone: {} -> {} ({:.2}% of the original)",
                Bytes(weights.source_bytes),
                Bytes(weights.compressed_bytes),
                100.0 * weights.ratio
            )?;
        }
        if !self.copied_files.is_empty() {
            let bytes: u64 = self.copied_files.iter().map(|f| f.bytes).sum();
            writeln!(
                out,
                "copied unchanged: {} ({}), counted in the sizes above",
                count(self.copied_files.len() as u64, "file"),
                Bytes(bytes)
            )?;
        }
        for file in self.copied_files.iter().filter(|f| f.unread_weights) {
            writeln!(
                out,
                "note: {} ({}) looks like weights in a format ecf does not read (only .safetensors files are compressed); it was copied as it is",
                file.name,
                Bytes(file.bytes)
            )?;
        }
        Ok(())
    }
}

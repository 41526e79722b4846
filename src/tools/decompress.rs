//! `decompress`: rebuild the original file, or directory, byte for byte.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::container::{self, Progress};
use crate::error::Result;

use super::{Bytes, Report};

/// What `decompress` did.
#[derive(Clone, Debug, Serialize)]
pub struct DecompressSummary {
    pub input: PathBuf,
    pub output: PathBuf,
    /// Bytes written, each checked against the checksum stored at
    /// compression.
    pub bytes: u64,
    pub seconds: f64,
    pub peak_rss_bytes: Option<u64>,
}

/// Rebuilds `input` (a compressed file or directory) at `output`, or at the
/// default name beside it ([`container::decompressed_name`]). The input is
/// checked to be compressed before any output name is derived.
pub fn decompress(
    input: &Path,
    output: Option<&Path>,
    force: bool,
    progress: &Progress,
) -> Result<DecompressSummary> {
    container::check_compressed(input)?;
    let output = match output {
        Some(output) => output.to_path_buf(),
        None => container::decompressed_name(input)?,
    };
    let (bytes, seconds) = if input.is_dir() {
        let report = container::decompress_directory(input, &output, force, progress)?;
        (report.output_bytes, report.seconds)
    } else {
        let checks = container::decompress_file(input, &output, force, progress)?;
        (checks.source_bytes, checks.seconds)
    };
    Ok(DecompressSummary {
        input: input.to_path_buf(),
        output,
        bytes,
        seconds,
        peak_rss_bytes: super::peak_rss_bytes(),
    })
}

impl Report for DecompressSummary {
    fn write_text(&self, out: &mut dyn Write) -> io::Result<()> {
        writeln!(
            out,
            "{} -> {}: {} rebuilt and checked in {:.2} s ({:.0} MB/s)",
            self.input.display(),
            self.output.display(),
            Bytes(self.bytes),
            self.seconds,
            self.bytes as f64 / self.seconds.max(1e-9) / 1e6
        )
    }
}

//! `verify`: decode a compressed file, or every shard of a compressed
//! directory, on a backend, checking every checksum and (on every backend)
//! every chunk's sync metadata.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::backend::Backend;
use crate::container::{self, DecodeChecks, Progress};
use crate::error::Result;

use super::Report;

/// What `verify` found.
#[derive(Clone, Debug, Serialize)]
pub struct VerifyReport {
    /// Every tensor and every file checksum matched.
    pub ok: bool,
    pub files: Vec<FileVerification>,
}

#[derive(Clone, Debug, Serialize)]
pub struct FileVerification {
    pub file: PathBuf,
    pub backend: String,
    pub ok: bool,
    /// Whether the whole rebuilt file matches its recorded checksum; not
    /// compared (`None`) where a tensor failed, as no file was rebuilt.
    pub file_checksum_matches: Option<bool>,
    pub seconds: f64,
    pub tensors: Vec<TensorVerification>,
}

#[derive(Clone, Debug, Serialize)]
pub struct TensorVerification {
    pub name: String,
    pub coded: bool,
    pub bytes: u64,
    pub ok: bool,
    pub error: Option<String>,
}

/// Decodes everything in `input` (a compressed file or directory) on
/// `backend` and checks every checksum.
pub fn verify(input: &Path, backend: &dyn Backend, progress: &Progress) -> Result<VerifyReport> {
    let shards = if input.is_dir() {
        verify_directory_on(input, backend, progress)?
            .into_iter()
            .map(|(shard, checks)| (input.join(shard), checks))
            .collect()
    } else {
        vec![(
            input.to_path_buf(),
            verify_file_on(input, backend, progress)?,
        )]
    };
    let files: Vec<FileVerification> = shards
        .into_iter()
        .map(|(file, checks)| FileVerification {
            file,
            backend: backend.name().to_string(),
            ok: checks.all_ok(),
            file_checksum_matches: checks
                .tensors
                .iter()
                .all(|t| t.error.is_none())
                .then(|| checks.file_matches()),
            seconds: checks.seconds,
            tensors: checks
                .tensors
                .iter()
                .map(|t| TensorVerification {
                    name: t.name.clone(),
                    coded: t.coded,
                    bytes: t.bytes,
                    ok: t.error.is_none(),
                    error: t.error.as_ref().map(ToString::to_string),
                })
                .collect(),
        })
        .collect();
    Ok(VerifyReport {
        ok: files.iter().all(|f| f.ok),
        files,
    })
}

/// Decodes everything in a compressed file on `backend` and checks every
/// checksum.
pub fn verify_file_on(
    input: &Path,
    backend: &dyn Backend,
    progress: &Progress,
) -> Result<DecodeChecks> {
    container::verify_file_with(input, &crate::backend::decoder(backend), progress)
}

/// Every shard of a compressed directory, by its name in the directory.
pub fn verify_directory_on(
    input: &Path,
    backend: &dyn Backend,
    progress: &Progress,
) -> Result<Vec<(String, DecodeChecks)>> {
    container::verify_directory_with(input, &crate::backend::decoder(backend), progress)
}

impl Report for VerifyReport {
    fn write_text(&self, out: &mut dyn Write) -> io::Result<()> {
        for file in &self.files {
            for tensor in &file.tensors {
                if let Some(error) = &tensor.error {
                    writeln!(out, "FAIL {error}")?;
                }
            }
            let failed = file.tensors.iter().filter(|t| !t.ok).count();
            let coded = file.tensors.iter().filter(|t| t.coded).count();
            let file_checksum = match file.file_checksum_matches {
                Some(true) => "file checksum matches".to_string(),
                Some(false) => "file checksum DIFFERS".to_string(),
                None => format!(
                    "file checksum not compared: {} failed",
                    super::count(failed as u64, "tensor")
                ),
            };
            writeln!(
                out,
                "{}: {} ({}, {coded} coded, decoded on {}; {failed} failed; {file_checksum}) in {:.2} s",
                file.file.display(),
                if file.ok { "OK" } else { "FAILED" },
                super::count(file.tensors.len() as u64, "tensor"),
                file.backend,
                file.seconds
            )?;
        }
        Ok(())
    }

    fn succeeded(&self) -> bool {
        self.ok
    }
}

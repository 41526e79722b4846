//! `selftest`: the conformance cases of the test suite, run from the shipped
//! binary on every backend present, each compared bit for bit with the
//! original. This is how a user trusts a GPU, and how a machine without a
//! Rust toolchain is checked.

use std::io::{self, Write};
use std::path::PathBuf;

use serde::Serialize;

use crate::backend::{self, BACKEND_NAMES, Backend};
use crate::conformance::{self, Family};
use crate::error::{Error, Result};
use crate::tools::{Report, count};

/// The checked-in test vectors, shipped in the binary: today's format and
/// every older one this build still reads.
const VECTORS: [(&str, &[u8]); 4] = [
    (
        "v2-defaults.ecf.safetensors",
        include_bytes!("../../tests/vectors/v2/defaults.ecf.safetensors"),
    ),
    (
        "v2-small_blocks.ecf.safetensors",
        include_bytes!("../../tests/vectors/v2/small_blocks.ecf.safetensors"),
    ),
    (
        "v1-defaults.ecf.safetensors",
        include_bytes!("../../tests/vectors/v1/defaults.ecf.safetensors"),
    ),
    (
        "v1-small_blocks.ecf.safetensors",
        include_bytes!("../../tests/vectors/v1/small_blocks.ecf.safetensors"),
    ),
];

#[derive(Clone, Debug, Serialize)]
pub struct CaseResult {
    pub backend: String,
    pub case: String,
    /// `None` when every bit matched.
    pub error: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct SelftestReport {
    pub results: Vec<CaseResult>,
    /// Backends that could not be opened, and why.
    pub skipped: Vec<SkippedBackend>,
}

#[derive(Clone, Debug, Serialize)]
pub struct SkippedBackend {
    pub backend: String,
    pub reason: String,
}

impl SelftestReport {
    pub fn failures(&self) -> usize {
        self.results.iter().filter(|r| r.error.is_some()).count()
    }

    /// The skipped backends and the counts: what follows the cases' lines.
    pub fn write_summary(&self, out: &mut dyn Write) -> io::Result<()> {
        for skipped in &self.skipped {
            writeln!(out, "SKIP {:<5} {}", skipped.backend, skipped.reason)?;
        }
        writeln!(
            out,
            "{} passed, {} failed, {} skipped",
            count((self.results.len() - self.failures()) as u64, "case"),
            self.failures(),
            count(self.skipped.len() as u64, "backend")
        )
    }
}

impl CaseResult {
    /// `PASS backend case` or `FAIL backend case: why`.
    pub fn write_text(&self, out: &mut dyn Write) -> io::Result<()> {
        match &self.error {
            None => writeln!(out, "PASS {:<5} {}", self.backend, self.case),
            Some(error) => writeln!(out, "FAIL {:<5} {}: {error}", self.backend, self.case),
        }
    }
}

impl Report for SelftestReport {
    fn write_text(&self, out: &mut dyn Write) -> io::Result<()> {
        for result in &self.results {
            result.write_text(out)?;
        }
        self.write_summary(out)
    }

    fn succeeded(&self) -> bool {
        self.failures() == 0
    }
}

/// Which backends `--backend` names: one, or `all` of them.
pub(crate) fn backend_names(choice: &str) -> Vec<&str> {
    match choice {
        "all" => BACKEND_NAMES.to_vec(),
        one => vec![one],
    }
}

/// Runs every case on each backend of `choice`, calling `report` as each
/// result arrives. A backend asked for by name must open; with `all`, one
/// that cannot is skipped unless `ECF_REQUIRE_<NAME>=1`.
pub fn run(
    choice: &str,
    files: &[PathBuf],
    mut report: impl FnMut(&CaseResult),
) -> Result<SelftestReport> {
    let mut outcome = SelftestReport::default();
    for name in backend_names(choice) {
        let backend = match backend::open(name) {
            Ok(backend) => backend,
            Err(error) => {
                let required = std::env::var(format!("ECF_REQUIRE_{}", name.to_uppercase()))
                    .is_ok_and(|v| v == "1");
                if choice != "all" || required {
                    return Err(error);
                }
                let reason = match error {
                    Error::BackendUnavailable { reason, .. } => reason,
                    other => other.to_string(),
                };
                outcome.skipped.push(SkippedBackend {
                    backend: name.to_string(),
                    reason,
                });
                continue;
            }
        };
        run_backend(backend.as_ref(), files, &mut |result| {
            report(&result);
            outcome.results.push(result);
        })?;
    }
    Ok(outcome)
}

fn run_backend(
    backend: &dyn Backend,
    files: &[PathBuf],
    record: &mut dyn FnMut(CaseResult),
) -> Result<()> {
    let name = backend.name().to_string();
    let mut result = |case: String, outcome: std::result::Result<(), String>| {
        record(CaseResult {
            backend: name.clone(),
            case,
            error: outcome.err(),
        })
    };
    for family in Family::ALL {
        for case in family.cases() {
            result(case.name.clone(), conformance::check_case(backend, &case));
        }
    }
    let mut batch = Family::Lengths.cases();
    batch.extend(Family::MixedBlockModes.cases());
    result(
        "many_tensors_in_one_buffer".to_string(),
        conformance::check_batch(backend, &batch),
    );
    result(
        "jobs_refused_when_they_overlap_or_overrun".to_string(),
        conformance::check_job_validation(backend),
    );
    let directory = tempfile::tempdir().map_err(|e| Error::io(&std::env::temp_dir(), e))?;
    for (file_name, bytes) in VECTORS {
        let path = directory.path().join(file_name);
        std::fs::write(&path, bytes).map_err(|e| Error::io(&path, e))?;
        let outcome = super::verify::verify_file_on(&path, backend, &Default::default())
            .map_err(|e| e.to_string())
            .and_then(
                |checks| match checks.tensors.iter().find_map(|t| t.error.as_ref()) {
                    Some(error) => Err(error.to_string()),
                    None if !checks.file_matches() => Err("file checksum differs".to_string()),
                    None => Ok(()),
                },
            );
        result(format!("vector {file_name}"), outcome);
    }
    for path in files {
        for file in crate::container::safetensors_files(path)? {
            for tensor in conformance::check_file(backend, &file)? {
                result(
                    format!("{}: {}", file.display(), tensor.name),
                    tensor.result,
                );
            }
        }
    }
    Ok(())
}

//! `demo`: the whole job on a built-in model. Builds a heavy-tailed sample
//! model, writes it as a safetensors file, compresses it, decodes every
//! coded tensor on every backend present, checks every bit, and reports
//! the ratio, the entropy bound and the throughput.

use std::path::Path;

use serde::Serialize;

use crate::backend::{self, BACKEND_NAMES};
use crate::codec::FloatKind;
use crate::container::write::{TensorData, write_safetensors};
use crate::container::{self, CompressOptions};
use crate::error::{Error, Result};
use crate::synth;
use crate::tools::bench::{self, BenchReport};
use crate::tools::inspect::{self, Inspection};
use crate::tools::{Bytes, Report};

#[derive(Debug, Serialize)]
pub struct DemoReport {
    pub parameters: u64,
    pub compress_seconds: f64,
    pub inspection: Inspection,
    pub backends: Vec<BackendRun>,
}

/// One backend's part of the demo: exactly one of `bench`, `skipped` and
/// `error` is set.
#[derive(Debug, Serialize)]
pub struct BackendRun {
    pub backend: String,
    /// Throughput, after every decoded bit matched.
    pub bench: Option<BenchReport>,
    /// Why the backend is not available here.
    pub skipped: Option<String>,
    /// Why the run failed, a wrongly decoded tensor included.
    pub error: Option<String>,
}

impl DemoReport {
    pub fn failures(&self) -> usize {
        self.backends
            .iter()
            .filter(|run| run.error.is_some())
            .count()
    }
}

struct SampleTensor {
    name: String,
    dtype: &'static str,
    shape: Vec<u64>,
    bytes: Vec<u8>,
}

/// A small transformer-shaped model: BF16 embedding and layers, F32 norms,
/// one projection each in FP16, FP8 E4M3, FP8 E5M2 and FP32, and an
/// integer tensor that stays raw.
fn sample_model() -> Vec<SampleTensor> {
    let hidden = 512u64;
    let mlp = 1536u64;
    let mut seed = 0;
    let mut tensor = |name: String, kind: FloatKind, rows: u64, cols: u64, scale: f32| {
        seed += 1;
        let values = synth::heavy_tailed((rows * cols) as usize, cols as usize, scale, seed);
        SampleTensor {
            name,
            dtype: kind.safetensors_name(),
            shape: vec![rows, cols],
            bytes: synth::to_bytes(&values, kind),
        }
    };
    let mut tensors = vec![tensor(
        "embed.weight".into(),
        FloatKind::Bf16,
        4096,
        hidden,
        0.05,
    )];
    for layer in 0..4 {
        for projection in ["q", "k", "v", "o"] {
            let name = format!("layers.{layer}.attn.{projection}.weight");
            tensors.push(tensor(name, FloatKind::Bf16, hidden, hidden, 0.02));
        }
        tensors.push(tensor(
            format!("layers.{layer}.mlp.up.weight"),
            FloatKind::Bf16,
            mlp,
            hidden,
            0.02,
        ));
        tensors.push(tensor(
            format!("layers.{layer}.mlp.down.weight"),
            FloatKind::Bf16,
            hidden,
            mlp,
            0.02,
        ));
        let norm: Vec<f32> =
            synth::heavy_tailed(hidden as usize, hidden as usize, 0.05, 100 + layer)
                .iter()
                .map(|v| 1.0 + v)
                .collect();
        tensors.push(SampleTensor {
            name: format!("layers.{layer}.norm.weight"),
            dtype: "F32",
            shape: vec![hidden],
            bytes: synth::to_bytes(&norm, FloatKind::F32),
        });
    }
    for kind in [
        FloatKind::F16,
        FloatKind::F8E4M3,
        FloatKind::F8E5M2,
        FloatKind::F32,
    ] {
        let name = format!("{}.mlp.up.weight", kind.safetensors_name().to_lowercase());
        tensors.push(tensor(name, kind, mlp, hidden, 0.02));
    }
    tensors.push(SampleTensor {
        name: "position_ids".into(),
        dtype: "I64",
        shape: vec![1, hidden],
        bytes: (0..hidden as i64).flat_map(i64::to_le_bytes).collect(),
    });
    tensors
}

fn write_sample(path: &Path, tensors: &[SampleTensor]) -> Result<()> {
    let tensors: Vec<TensorData> = tensors
        .iter()
        .map(|t| TensorData {
            name: &t.name,
            dtype: t.dtype,
            shape: &t.shape,
            bytes: &t.bytes,
        })
        .collect();
    write_safetensors(path, &[], &tensors)
}

pub fn run(repeats: usize) -> Result<DemoReport> {
    let directory = tempfile::tempdir().map_err(|e| Error::io(Path::new("."), e))?;
    let source = directory.path().join("sample.safetensors");
    let compressed = directory.path().join("sample.ecf.safetensors");
    let tensors = sample_model();
    let parameters = tensors
        .iter()
        .filter(|t| t.dtype != "I64")
        .map(|t| t.shape.iter().product::<u64>())
        .sum();
    write_sample(&source, &tensors)?;
    let report = container::compress_file(&source, &compressed, &CompressOptions::default())?;
    let checks = container::verify_file(&compressed)?;
    if !checks.all_ok() {
        return Err(Error::corrupt(
            &compressed,
            None,
            "the CPU decoder did not reproduce the sample model",
        ));
    }
    let inspection = inspect::inspect(&compressed)?;
    let backends = BACKEND_NAMES
        .iter()
        .map(|&name| {
            let mut run = BackendRun {
                backend: name.to_string(),
                bench: None,
                skipped: None,
                error: None,
            };
            match backend::open(name) {
                Err(reason) => run.skipped = Some(reason.to_string()),
                Ok(backend) => match bench::bench(
                    &bench::Workload::File(&compressed),
                    backend.as_ref(),
                    repeats,
                ) {
                    Ok(bench) => run.bench = Some(bench),
                    Err(error) => run.error = Some(error.to_string()),
                },
            }
            run
        })
        .collect();
    Ok(DemoReport {
        parameters,
        compress_seconds: report.seconds,
        inspection,
        backends,
    })
}

impl Report for DemoReport {
    fn write_text(&self, out: &mut dyn std::io::Write) -> std::io::Result<()> {
        let inspection = &self.inspection;
        writeln!(
            out,
            "ecfloat demo: a heavy-tailed sample model, {:.1} M parameters in BF16, FP16, FP8 E4M3, FP8 E5M2 and FP32",
            self.parameters as f64 / 1e6
        )?;
        writeln!(
            out,
            "compressed {} -> {}: ratio {:.4}, exponent-entropy bound {:.4}, in {:.2} s",
            Bytes(inspection.source_bytes),
            Bytes(inspection.file_bytes),
            inspection.ratio,
            inspection.bound_ratio,
            self.compress_seconds
        )?;
        for run in &self.backends {
            if let Some(reason) = &run.skipped {
                writeln!(out, "  {:<5} skipped: {reason}", run.backend)?;
            }
            if let Some(error) = &run.error {
                writeln!(out, "  {:<5} FAILED: {error}", run.backend)?;
            }
            if let Some(bench) = &run.bench {
                writeln!(
                    out,
                    "  {:<5} {:<40} every bit identical; decode {:.2} GB/s = {:.2} x copy ({:.2} GB/s); encode {:.2} GB/s",
                    run.backend,
                    bench.device,
                    bench.decode.gb_per_s,
                    bench.decode_vs_copy,
                    bench.copy.gb_per_s,
                    bench.encode.gb_per_s
                )?;
            }
        }
        Ok(())
    }

    fn succeeded(&self) -> bool {
        self.failures() == 0
    }
}

//! `bench`: encode and decode throughput on a real file, reported against a
//! copy of the same bytes on the same device in the same run.

use std::path::Path;
use std::time::Instant;

use rayon::prelude::*;
use serde::Serialize;

use crate::backend::{Backend, Clock, DecodeJob, Timings};
use crate::codec::{self, BlockIndex, EncodeOptions, EncodedTensor, FloatKind};
use crate::conformance;
use crate::container::{CompressedFile, SourceFile, cpu_decoder};
use crate::error::{Error, Result};
use crate::tools::{Bytes, Report, count};

/// The original bytes of one float tensor.
pub struct FloatTensor {
    pub name: String,
    pub kind: FloatKind,
    pub bytes: Vec<u8>,
}

/// Timings of one measured operation.
#[derive(Clone, Debug, Serialize)]
pub struct Timing {
    pub runs: usize,
    pub median_seconds: f64,
    pub min_seconds: f64,
    /// Decoded (original) bytes per second of the median run, in GB/s (1e9).
    pub gb_per_s: f64,
    /// What measured the runs.
    pub clock: Clock,
}

impl Timing {
    pub(crate) fn from_timings(timings: Timings, bytes: u64) -> Self {
        let mut seconds = timings.seconds;
        seconds.sort_by(f64::total_cmp);
        let median = seconds.get(seconds.len() / 2).copied().unwrap_or(f64::NAN);
        Timing {
            runs: seconds.len(),
            median_seconds: median,
            min_seconds: seconds.first().copied().unwrap_or(f64::NAN),
            gb_per_s: bytes as f64 / median / 1e9,
            clock: timings.clock,
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    pub file: String,
    pub backend: String,
    pub device: String,
    pub threads: usize,
    pub tensors: usize,
    /// Bytes of the float tensors as stored in the source file.
    pub decoded_bytes: u64,
    /// Bytes of their coded planes.
    pub coded_bytes: u64,
    pub encode: Timing,
    pub decode: Timing,
    /// A plain copy of `decoded_bytes` on the same device.
    pub copy: Timing,
    /// Decode throughput as a fraction of the copy's.
    pub decode_vs_copy: f64,
}

/// Reads the original bytes of every non-empty float tensor of a plain or
/// compressed file, or of every such file of a directory (decoding
/// compressed ones on the CPU).
pub fn load_float_tensors(path: &Path) -> Result<Vec<FloatTensor>> {
    let mut tensors = Vec::new();
    for file in crate::container::safetensors_files(path)? {
        tensors.extend(load_file_float_tensors(&file)?);
    }
    Ok(tensors)
}

fn load_file_float_tensors(path: &Path) -> Result<Vec<FloatTensor>> {
    let plain = SourceFile::open(path)?;
    let mut tensors = Vec::new();
    if plain.ecf_version().is_none() {
        for entry in plain.tensors() {
            let dtype = format!("{:?}", entry.dtype);
            if let Some(kind) =
                FloatKind::from_safetensors_name(&dtype).filter(|_| !entry.is_empty())
            {
                tensors.push(FloatTensor {
                    name: entry.name.clone(),
                    kind,
                    bytes: plain.data()[entry.range.clone()].to_vec(),
                });
            }
        }
        return Ok(tensors);
    }
    drop(plain);
    let file = CompressedFile::open(path)?;
    // What the file claims it decodes to must fit, three times over: the
    // originals, their coded planes and the decoded copy.
    let claimed = file.source_data_len();
    if let Some(available) = super::available_memory()
        && claimed.saturating_mul(3) > available
    {
        return Err(Error::Unsupported {
            path: path.to_path_buf(),
            tensor: None,
            message: format!(
                "bench holds every tensor in memory three times, {} for the {} this file decodes to, and {} is available; bench a smaller file",
                Bytes(claimed.saturating_mul(3)),
                Bytes(claimed),
                Bytes(available)
            ),
        });
    }
    for tensor in &file.tensors {
        let dtype = format!("{:?}", tensor.source.dtype);
        let Some(kind) = FloatKind::from_safetensors_name(&dtype) else {
            continue;
        };
        let bytes = file.decode_tensor(tensor, &cpu_decoder())?;
        if !bytes.is_empty() {
            tensors.push(FloatTensor {
                name: tensor.source.name.clone(),
                kind,
                bytes,
            });
        }
    }
    Ok(tensors)
}

/// What a bench decodes.
pub enum Workload<'a> {
    /// Every float tensor of a file.
    File(&'a Path),
    /// The largest float tensor of a file.
    LargestTensor(&'a Path),
    /// Heavy-tailed synthetic weights of one dtype.
    Synthetic { kind: FloatKind, bytes: u64 },
}

impl Workload<'_> {
    pub(crate) fn describe(&self) -> String {
        match self {
            Workload::File(path) => path.display().to_string(),
            Workload::LargestTensor(path) => format!("{} (largest tensor)", path.display()),
            Workload::Synthetic { kind, bytes } => {
                format!("synthetic heavy-tailed {kind}, {}", Bytes(*bytes))
            }
        }
    }

    fn tensors(&self) -> Result<Vec<FloatTensor>> {
        match *self {
            Workload::File(path) => load_float_tensors(path),
            Workload::LargestTensor(path) => {
                let mut tensors = load_float_tensors(path)?;
                let largest = (0..tensors.len()).max_by_key(|&i| tensors[i].bytes.len());
                Ok(largest
                    .map(|i| tensors.swap_remove(i))
                    .into_iter()
                    .collect())
            }
            Workload::Synthetic { kind, bytes } => {
                let elements = (bytes / kind.width_bytes() as u64) as usize;
                Ok(vec![FloatTensor {
                    name: format!("synthetic.{kind}"),
                    kind,
                    bytes: synthetic_weights(kind, elements),
                }])
            }
        }
    }
}

/// Heavy-tailed weights generated in parallel, 4 Mi elements per piece.
fn synthetic_weights(kind: FloatKind, elements: usize) -> Vec<u8> {
    use rayon::prelude::*;
    const PIECE: usize = 1 << 22;
    let pieces: Vec<Vec<u8>> = (0..elements.div_ceil(PIECE))
        .into_par_iter()
        .map(|piece| {
            let len = PIECE.min(elements - piece * PIECE);
            crate::synth::heavy_tailed_bytes(kind, len, piece as u64)
        })
        .collect();
    pieces.concat()
}

/// Encodes every tensor of `workload` `repeats` times, decodes them all on
/// `backend` in one call `repeats` times, checks the result bit for bit,
/// and times a copy of the same bytes on the same device.
pub fn bench(workload: &Workload, backend: &dyn Backend, repeats: usize) -> Result<BenchReport> {
    let tensors = workload.tensors()?;
    // Errors name the workload where they would name a file.
    let label = std::path::PathBuf::from(workload.describe());
    let path = label.as_path();
    let decoded_bytes: u64 = tensors.iter().map(|t| t.bytes.len() as u64).sum();
    let options = EncodeOptions::default();
    // Tensors in parallel, each in parallel blocks, as `compress` encodes
    // them: small tensors would otherwise leave all but one core idle.
    let encode_all = || -> Result<Vec<EncodedTensor>> {
        tensors
            .par_iter()
            .map(|t| {
                codec::encode(t.kind, &t.bytes, &options)
                    .map_err(|e| Error::codec(path, &t.name, e))
            })
            .collect()
    };
    let mut encode_runs = Vec::with_capacity(repeats);
    let mut encoded = Vec::new();
    for _ in 0..repeats.max(1) {
        let started = Instant::now();
        encoded = encode_all()?;
        encode_runs.push(started.elapsed().as_secs_f64());
    }

    let mut uploaded = Vec::with_capacity(encoded.len());
    for (tensor, coded) in tensors.iter().zip(&encoded) {
        let index =
            BlockIndex::parse(&coded.view()).map_err(|e| Error::codec(path, &tensor.name, e))?;
        uploaded.push(backend.upload(&coded.view(), &index)?);
    }
    let out = backend.alloc(decoded_bytes)?;
    let mut offset = 0;
    let jobs: Vec<DecodeJob> = uploaded
        .iter()
        .map(|tensor| {
            let job = DecodeJob {
                tensor: tensor.as_ref(),
                offset,
            };
            offset += tensor.decoded_bytes();
            job
        })
        .collect();
    let decode_runs = backend.time_decode(&jobs, out.as_ref(), repeats.max(1))?;

    let mut decoded = vec![0u8; decoded_bytes as usize];
    backend.download(out.as_ref(), 0, &mut decoded)?;
    let mut offset = 0;
    for tensor in &tensors {
        let end = offset + tensor.bytes.len();
        conformance::compare(tensor.kind, &tensor.bytes, &decoded[offset..end]).map_err(
            |message| {
                Error::corrupt(
                    path,
                    Some(&tensor.name),
                    format!("{} decoded wrongly: {message}", backend.name()),
                )
            },
        )?;
        offset = end;
    }
    let copy_runs = backend.time_copy(decoded_bytes, repeats.max(1))?;

    let decode = Timing::from_timings(decode_runs, decoded_bytes);
    let copy = Timing::from_timings(copy_runs, decoded_bytes);
    Ok(BenchReport {
        file: workload.describe(),
        backend: backend.name().to_string(),
        device: backend.info().device,
        threads: rayon::current_num_threads(),
        tensors: tensors.len(),
        decoded_bytes,
        coded_bytes: encoded.iter().map(EncodedTensor::stored_bytes).sum(),
        encode: Timing::from_timings(
            Timings {
                seconds: encode_runs,
                clock: Clock::Wall,
            },
            decoded_bytes,
        ),
        decode_vs_copy: decode.gb_per_s / copy.gb_per_s,
        decode,
        copy,
    })
}

/// Decode latency of one group of a model.
#[derive(Clone, Debug, Serialize)]
pub struct GroupTiming {
    pub group: String,
    pub tensors: usize,
    pub decoded_bytes: u64,
    pub median_ms: f64,
    pub p99_ms: f64,
    pub gb_per_s: f64,
    /// What measured the runs.
    pub clock: Clock,
}

#[derive(Clone, Debug, Serialize)]
pub struct ModelBenchReport {
    pub model: String,
    pub backend: String,
    pub device: String,
    pub runs: usize,
    pub groups: Vec<GroupTiming>,
    pub memory: crate::runtime::MemoryReport,
    /// Device bytes saved against holding the model uncompressed: the
    /// uncompressed size minus everything the runtime holds.
    pub saved_bytes: i64,
}

/// Per-group decode latency of a compressed model (a file or a directory
/// of shards) resident on `backend`: each group decoded `repeats` times
/// into a buffer sized for the largest, after a warm-up.
pub fn bench_model(path: &Path, backend: &dyn Backend, repeats: usize) -> Result<ModelBenchReport> {
    use crate::runtime::{Model, ModelOptions};
    let model = Model::open(path, backend, ModelOptions::default())?;
    let buffers = [model.group_buffer()?, model.group_buffer()?];
    let mut groups = Vec::with_capacity(model.groups().len());
    for (index, group) in model.groups().iter().enumerate() {
        let jobs = model.jobs(index)?;
        let timings =
            backend.time_decode(&jobs, buffers[index % 2].device_buffer(), repeats.max(1))?;
        let mut runs = timings.seconds;
        runs.sort_by(f64::total_cmp);
        let median = runs[runs.len() / 2];
        let p99 = runs[((runs.len() * 99).div_ceil(100)).saturating_sub(1)];
        groups.push(GroupTiming {
            clock: timings.clock,
            group: group.name.clone(),
            tensors: group.tensors.len(),
            decoded_bytes: group.bytes,
            median_ms: median * 1e3,
            p99_ms: p99 * 1e3,
            gb_per_s: group.bytes as f64 / median / 1e9,
        });
    }
    let memory = model.memory();
    Ok(ModelBenchReport {
        model: path.display().to_string(),
        backend: backend.name().to_string(),
        device: backend.info().device,
        runs: repeats.max(1),
        groups,
        memory,
        saved_bytes: memory.uncompressed_bytes as i64 - memory.peak_bytes as i64,
    })
}

/// [`bench_model`] on one synthetic 7B-shaped layer of `kind`
/// (`write_synthetic_layer`), written and compressed in a temporary
/// directory.
pub fn bench_synthetic_layer(
    kind: FloatKind,
    backend: &dyn Backend,
    repeats: usize,
) -> Result<ModelBenchReport> {
    let scratch = tempfile::tempdir().map_err(|e| Error::io(&std::env::temp_dir(), e))?;
    let source = scratch.path().join("layer.safetensors");
    write_synthetic_layer(&source, kind)?;
    let compressed = scratch.path().join("layer.ecf.safetensors");
    crate::container::compress_file(&source, &compressed, &Default::default())?;
    let mut report = bench_model(&compressed, backend, repeats)?;
    report.model = format!("synthetic 7B-shaped {kind} layer");
    Ok(report)
}

/// Writes one transformer layer shaped like a 7B model's (4096 hidden,
/// 11008 MLP) of heavy-tailed `kind` weights to `path`: about 202 M
/// parameters.
pub(crate) fn write_synthetic_layer(path: &Path, kind: FloatKind) -> Result<()> {
    use crate::container::write::{TensorData, write_safetensors};
    let (hidden, mlp) = (4096u64, 11008u64);
    let shapes: [(&str, u64, u64); 9] = [
        ("model.layers.0.self_attn.q_proj.weight", hidden, hidden),
        ("model.layers.0.self_attn.k_proj.weight", hidden, hidden),
        ("model.layers.0.self_attn.v_proj.weight", hidden, hidden),
        ("model.layers.0.self_attn.o_proj.weight", hidden, hidden),
        ("model.layers.0.mlp.gate_proj.weight", mlp, hidden),
        ("model.layers.0.mlp.up_proj.weight", mlp, hidden),
        ("model.layers.0.mlp.down_proj.weight", hidden, mlp),
        ("model.layers.0.input_layernorm.weight", 1, hidden),
        ("model.layers.0.post_attention_layernorm.weight", 1, hidden),
    ];
    let tensors: Vec<(&str, Vec<u64>, Vec<u8>)> = shapes
        .iter()
        .map(|&(name, rows, cols)| {
            let bytes = synthetic_weights(kind, (rows * cols) as usize);
            let shape = if rows == 1 {
                vec![cols]
            } else {
                vec![rows, cols]
            };
            (name, shape, bytes)
        })
        .collect();
    let tensors: Vec<TensorData> = tensors
        .iter()
        .map(|(name, shape, bytes)| TensorData {
            name,
            dtype: kind.safetensors_name(),
            shape,
            bytes,
        })
        .collect();
    write_safetensors(path, &[], &tensors)
}

impl Report for BenchReport {
    fn write_text(&self, out: &mut dyn std::io::Write) -> std::io::Result<()> {
        writeln!(
            out,
            "{}: {}, {} decoded, {} coded (ratio {:.4})",
            self.file,
            count(self.tensors as u64, "float tensor"),
            Bytes(self.decoded_bytes),
            Bytes(self.coded_bytes),
            self.coded_bytes as f64 / self.decoded_bytes.max(1) as f64
        )?;
        let device = if self.backend == "cpu" {
            self.device.clone()
        } else {
            format!(
                "{}; encoding on {}",
                self.device,
                count(self.threads as u64, "thread")
            )
        };
        writeln!(
            out,
            "backend {} ({device}), median of {}:",
            self.backend,
            count(self.decode.runs as u64, "run")
        )?;
        for (what, timing) in [
            ("encode", &self.encode),
            ("decode", &self.decode),
            ("copy", &self.copy),
        ] {
            writeln!(
                out,
                "  {what:<7} {:>8.3} GB/s  ({:.2} ms, {})",
                timing.gb_per_s,
                timing.median_seconds * 1e3,
                timing.clock
            )?;
        }
        writeln!(out, "  decode / copy = {:.3}", self.decode_vs_copy)
    }
}

impl Report for ModelBenchReport {
    fn write_text(&self, out: &mut dyn std::io::Write) -> std::io::Result<()> {
        let clock = self
            .groups
            .first()
            .map_or(String::new(), |g| format!(", timed by {}", g.clock));
        writeln!(
            out,
            "{} on {} ({}), {} per group{clock}:",
            self.model,
            self.backend,
            self.device,
            count(self.runs as u64, "run")
        )?;
        writeln!(
            out,
            "  {:<40} {:>8} {:>12} {:>11} {:>11} {:>9}",
            "group", "tensors", "decoded", "median ms", "p99 ms", "GB/s"
        )?;
        for group in &self.groups {
            writeln!(
                out,
                "  {:<40} {:>8} {:>12} {:>11.3} {:>11.3} {:>9.2}",
                group.group,
                group.tensors,
                Bytes(group.decoded_bytes).to_string(),
                group.median_ms,
                group.p99_ms,
                group.gb_per_s
            )?;
        }
        let memory = &self.memory;
        let verdict = if self.saved_bytes >= 0 {
            format!("{} saved", Bytes(self.saved_bytes as u64))
        } else {
            format!(
                "{} more: its largest group is too large a part of it",
                Bytes(self.saved_bytes.unsigned_abs())
            )
        };
        writeln!(
            out,
            "  memory: {} resident (compressed) + {} scratch (two groups of {}) = {} peak, against {} uncompressed: {verdict}",
            Bytes(memory.resident_bytes),
            Bytes(memory.scratch_bytes),
            Bytes(memory.largest_group_bytes),
            Bytes(memory.peak_bytes),
            Bytes(memory.uncompressed_bytes),
        )
    }
}

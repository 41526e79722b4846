//! Loading a checkpoint into candle, on the CPU, against candle's own
//! safetensors loading of the original in the same run:
//! `cargo bench --features candle --bench candle_load [-- ORIGINAL…]`.
//!
//! ORIGINAL is a safetensors file or a directory of shards (compressed
//! first, untimed); without arguments, the test files candle has every
//! dtype of. For each it times, as the median of 5 runs after a warm-up:
//!
//! - `candle`: `candle_core::safetensors::load` of the original (every
//!   shard);
//! - `var_builder`: every tensor of the compressed checkpoint through
//!   `ecfloat::candle::CompressedTensors`, decoded and checksummed;
//! - `coded open` and `coded pass`: opening it as a `CompressedModel` (its
//!   coded tensors read into memory) in the dtype most of its bytes are in,
//!   and one pass over its tensors in name order, as a model runs its
//!   layers, each group decoded once;
//!
//! and prints the most the `CompressedModel` held in the pass, against the
//! checkpoint uncompressed in the same dtype.

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device};
use ecfloat::candle::{CompressedModel, CompressedTensors};

mod common;

use common::median_seconds;

fn report(original: &Path, scratch: &Path) {
    let compressed = scratch.join(original.file_name().unwrap());
    if original.is_dir() {
        ecfloat::container::compress_directory(original, &compressed, &Default::default())
            .map(|_| ())
    } else {
        ecfloat::container::compress_file(original, &compressed, &Default::default()).map(|_| ())
    }
    .unwrap();
    let cpu = Device::Cpu;
    let files = ecfloat::container::safetensors_files(original).unwrap();
    let bytes: u64 = files.iter().map(|f| f.metadata().unwrap().len()).sum();
    let candle = median_seconds(|| {
        files
            .iter()
            .map(|file| candle_core::safetensors::load(file, &cpu).unwrap())
            .collect::<Vec<_>>()
    });
    let var_builder = median_seconds(|| {
        let tensors = CompressedTensors::open(&compressed).unwrap();
        let names: Vec<String> = tensors.names().map(str::to_string).collect();
        names
            .iter()
            .map(|name| tensors.load(name, &cpu).unwrap())
            .collect::<Vec<_>>()
    });
    // The model's dtype: the one most of its bytes are in.
    let mut bytes_by_dtype: Vec<(usize, DType)> = Vec::new();
    for tensor in candle_core::safetensors::load(&files[0], &cpu)
        .unwrap()
        .values()
    {
        let bytes = tensor.elem_count() * tensor.dtype().size_in_bytes();
        match bytes_by_dtype
            .iter_mut()
            .find(|(_, d)| *d == tensor.dtype())
        {
            Some((total, _)) => *total += bytes,
            None => bytes_by_dtype.push((bytes, tensor.dtype())),
        }
    }
    let dtype = bytes_by_dtype.iter().max_by_key(|(b, _)| *b).unwrap().1;
    let open = median_seconds(|| CompressedModel::open(&compressed, dtype, &cpu).unwrap());
    // In name order, as a model runs its layers.
    let mut names: Vec<String> = CompressedTensors::open(&compressed)
        .unwrap()
        .names()
        .map(str::to_string)
        .collect();
    names.sort();
    let mut memory = None;
    let pass = median_seconds(|| {
        let model = CompressedModel::open(&compressed, dtype, &cpu).unwrap();
        let started = Instant::now();
        for name in &names {
            std::hint::black_box(model.tensor(name).unwrap());
        }
        memory = Some(model.memory());
        started.elapsed().as_secs_f64()
    });
    let memory = memory.unwrap();
    let mb = |b: u64| b as f64 / 1e6;
    println!(
        "{}: {:.1} MB; candle {:.3} s; var_builder {:.3} s ({:.2}x candle); coded open {:.3} s + pass {:.3} s ({:.2}x candle)",
        original.display(),
        mb(bytes),
        candle,
        var_builder,
        var_builder / candle,
        open,
        pass,
        (open + pass) / candle,
    );
    println!(
        "    CompressedModel ({dtype:?}): holds at most {:.1} MB ({:.1} MB coded + {:.1} MB buffer + {:.1} MB weight) against {:.1} MB uncompressed ({:.2}x)",
        mb(memory.peak_bytes),
        mb(memory.compressed_bytes),
        mb(memory.buffer_bytes),
        mb(memory.weight_bytes),
        mb(memory.uncompressed_bytes),
        memory.peak_bytes as f64 / memory.uncompressed_bytes as f64,
    );
}

fn main() {
    let mut originals: Vec<PathBuf> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .map(PathBuf::from)
        .collect();
    if originals.is_empty() {
        let testdata = Path::new("../shared/testdata");
        for name in [
            "all-MiniLM-L6-v2.bf16.safetensors",
            "all-MiniLM-L6-v2.e4m3.safetensors",
            "easyocr-english-g2.f16.safetensors",
            "easyocr-english-g2.f32.safetensors",
        ] {
            let path = testdata.join(name);
            if path.exists() {
                originals.push(path);
            }
        }
    }
    if originals.is_empty() {
        eprintln!("no checkpoints: ../shared/testdata is absent and none was given");
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    for original in &originals {
        report(original, scratch.path());
    }
}

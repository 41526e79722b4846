//! Codec throughput on the CPU, against memcpy of the same bytes in the
//! same run: `cargo bench --bench codec [-- FILE...]`. Decode is timed as
//! every reader runs it, every chunk's sync metadata checked.
//!
//! Without files it uses 64 MiB of synthetic heavy-tailed weights per dtype;
//! with files, every float tensor in them (e.g. ../shared/testdata/*).
//! Set RAYON_NUM_THREADS=1 for the single-thread figures.

use std::path::Path;
use std::time::Instant;

use ecfloat::codec::decode::decode_blocks;
use ecfloat::codec::{self, BlockIndex, EncodeOptions, FloatKind};
use ecfloat::synth;
use ecfloat::tools::bench::load_float_tensors;

/// Median and fastest of `runs` timed runs, after one warm-up run.
fn time_runs(runs: usize, mut f: impl FnMut()) -> (f64, f64) {
    f();
    let mut times: Vec<f64> = (0..runs)
        .map(|_| {
            let started = Instant::now();
            f();
            started.elapsed().as_secs_f64()
        })
        .collect();
    times.sort_by(f64::total_cmp);
    (times[runs / 2], times[0])
}

fn report(label: &str, tensors: &[(FloatKind, Vec<u8>)]) {
    let bytes: usize = tensors.iter().map(|(_, b)| b.len()).sum();
    let options = EncodeOptions::default();
    let encoded: Vec<_> = tensors
        .iter()
        .map(|(kind, b)| codec::encode(*kind, b, &options).unwrap())
        .collect();
    let indexes: Vec<_> = encoded
        .iter()
        .map(|e| BlockIndex::parse(&e.view()).unwrap())
        .collect();
    let mut out: Vec<Vec<u8>> = tensors.iter().map(|(_, b)| vec![0; b.len()]).collect();
    let (encode, _) = time_runs(3, || {
        for (kind, b) in tensors {
            std::hint::black_box(codec::encode(*kind, b, &options).unwrap());
        }
    });
    let (decode, decode_best) = time_runs(41, || {
        for ((e, index), out) in encoded.iter().zip(&indexes).zip(&mut out) {
            let blocks = 0..index.blocks.len();
            decode_blocks(&e.view(), index, blocks, out).unwrap();
        }
    });
    for ((_, original), decoded) in tensors.iter().zip(&out) {
        assert!(original == decoded, "{label}: decode is not exact");
    }
    let source: Vec<u8> = vec![1; bytes];
    let mut target: Vec<u8> = vec![0; bytes];
    let (copy, _) = time_runs(15, || target.copy_from_slice(std::hint::black_box(&source)));
    let stored: u64 = encoded.iter().map(|e| e.stored_bytes()).sum();
    let gbps = |s: f64| bytes as f64 / s / 1e9;
    println!(
        "{label:<40} ratio {:.4}  encode {:6.3} GB/s  decode {:6.3} GB/s (best {:6.3})  memcpy {:6.2} GB/s  decode/memcpy {:.3}",
        stored as f64 / bytes as f64,
        gbps(encode),
        gbps(decode),
        gbps(decode_best),
        gbps(copy),
        copy / decode,
    );
}

fn main() {
    let files: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    println!("threads: {}", rayon::current_num_threads());
    if files.is_empty() {
        for kind in FloatKind::ALL {
            let elements = (64 << 20) / kind.width_bytes();
            let bytes = synth::heavy_tailed_bytes(kind, elements, 7);
            report(&format!("synthetic {kind} 64 MiB"), &[(kind, bytes)]);
        }
    }
    for file in files {
        let tensors: Vec<_> = load_float_tensors(Path::new(&file))
            .unwrap()
            .into_iter()
            .map(|t| (t.kind, t.bytes))
            .collect();
        report(
            Path::new(&file).file_name().unwrap().to_str().unwrap(),
            &tensors,
        );
    }
}

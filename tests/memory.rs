//! Bounded memory on a multi-GiB checkpoint: `compress` and `decompress`
//! stream it tensor by tensor, so their peak resident memory (which `ecf`
//! reports from the kernel's own count) stays under three times the
//! largest tensor plus a small constant, whatever the file's size.

mod common;

use std::hash::Hasher;
use std::io::Read;

use ecfloat::codec::FloatKind;
use ecfloat::container::write::{OutputTensor, SafetensorsWriter};
use twox_hash::XxHash3_64;

const TENSORS: usize = 4;
const TENSOR_BYTES: u64 = 512 << 20;
const PIECE_BYTES: usize = 32 << 20;

fn file_hash(path: &std::path::Path) -> u64 {
    let mut file = std::fs::File::open(path).unwrap();
    let mut hash = XxHash3_64::new();
    let mut buffer = vec![0u8; 8 << 20];
    loop {
        let read = file.read(&mut buffer).unwrap();
        if read == 0 {
            return hash.finish();
        }
        hash.write(&buffer[..read]);
    }
}

fn peak_rss(output: &std::process::Output) -> u64 {
    assert!(output.status.success(), "{}", common::stderr(output));
    let report: serde_json::Value = serde_json::from_str(&common::stdout(output)).unwrap();
    report["peak_rss_bytes"]
        .as_u64()
        .expect("ecf reports its peak RSS on Linux")
}

#[test]
#[cfg_attr(
    not(target_os = "linux"),
    ignore = "ecf reads its peak RSS from /proc, which only Linux has"
)]
fn a_two_gib_checkpoint_round_trips_in_bounded_memory() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("big.safetensors");
    // Four 512 MiB BF16 tensors, written piece by piece: the test itself
    // never holds more than one piece.
    let piece: Vec<u8> = ecfloat::synth::heavy_tailed_bytes(FloatKind::Bf16, PIECE_BYTES / 2, 11);
    let layout: Vec<OutputTensor> = (0..TENSORS)
        .map(|i| OutputTensor {
            name: format!("layers.{i}.weight"),
            dtype: "BF16".to_string(),
            shape: vec![TENSOR_BYTES / 2 / 8192, 8192],
            len: TENSOR_BYTES,
        })
        .collect();
    let mut writer = SafetensorsWriter::create(&source, &[], &layout).unwrap();
    for _ in 0..TENSORS as u64 * TENSOR_BYTES / PIECE_BYTES as u64 {
        writer.write(&piece).unwrap();
    }
    writer.finish().unwrap();

    let bound = 3 * TENSOR_BYTES + (256 << 20);
    let compressed = dir.path().join("big.ecf.safetensors");
    let output = common::ecf(&[
        "compress",
        source.to_str().unwrap(),
        "-o",
        compressed.to_str().unwrap(),
        "--json",
        "--quiet",
    ]);
    let compress_peak = peak_rss(&output);
    let rebuilt = dir.path().join("rebuilt.safetensors");
    let output = common::ecf(&[
        "decompress",
        compressed.to_str().unwrap(),
        "-o",
        rebuilt.to_str().unwrap(),
        "--json",
        "--quiet",
    ]);
    let decompress_peak = peak_rss(&output);
    eprintln!(
        "2 GiB file, 512 MiB tensors: compress peak RSS {} MiB, decompress {} MiB (bound {} MiB)",
        compress_peak >> 20,
        decompress_peak >> 20,
        bound >> 20
    );
    assert!(
        compress_peak < bound,
        "compress peak RSS {compress_peak} >= {bound}"
    );
    assert!(
        decompress_peak < bound,
        "decompress peak RSS {decompress_peak} >= {bound}"
    );
    assert_eq!(file_hash(&rebuilt), file_hash(&source), "byte for byte");
}

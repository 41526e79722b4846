//! Checked-in compressed files and the SHA-256 of what they decompress to:
//! a change to the format or the decoder that breaks old files fails here.
//! `cargo test --test vectors -- --ignored` rewrites them (only ever on
//! purpose, with a format version bump).

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ecfloat::codec::{EncodeOptions, FloatKind};
use ecfloat::container::{self, CompressOptions};
use sha2::{Digest, Sha256};

fn vectors_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors")
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn recorded_sums() -> BTreeMap<String, String> {
    std::fs::read_to_string(vectors_dir().join("SHA256SUMS"))
        .unwrap()
        .lines()
        .filter_map(|line| line.split_once("  "))
        .map(|(sum, name)| (name.to_string(), sum.to_string()))
        .collect()
}

#[test]
fn vectors_decompress_to_their_recorded_sha256() {
    let sums = recorded_sums();
    assert!(!sums.is_empty());
    let scratch = tempfile::tempdir().unwrap();
    for (name, sum) in &sums {
        let stem = name.strip_suffix(".safetensors").unwrap();
        let compressed = vectors_dir().join(format!("{stem}.ecf.safetensors"));
        let output = scratch.path().join(name);
        container::decompress_file(&compressed, &output, false, &Default::default()).unwrap();
        assert_eq!(&sha256_hex(&std::fs::read(&output).unwrap()), sum, "{name}");
    }
}

/// The tensors of the vectors: every coded dtype, special values, an
/// integer tensor, and metadata.
fn vector_tensors() -> Vec<common::SampleTensor> {
    let mut tensors: Vec<common::SampleTensor> = common::sample_tensors()
        .into_iter()
        .map(|mut t| {
            // Keep the files small: 6000 elements each.
            let width = FloatKind::from_safetensors_name(t.dtype).map_or(8, |k| k.width_bytes());
            if t.bytes.len() > 6000 * width {
                t.bytes.truncate(6000 * width);
                t.shape = vec![60, 100];
            }
            t
        })
        .collect();
    let specials: Vec<u8> = [
        0x0000u16, 0x8000, 0x0001, 0x807F, 0x7F80, 0xFF80, 0x7FC1, 0xFFFF, 0x7F7F, 0x3F80,
    ]
    .iter()
    .cycle()
    .take(3001)
    .flat_map(|v| v.to_le_bytes())
    .collect();
    tensors.push(common::SampleTensor {
        name: "special.bf16",
        dtype: "BF16",
        shape: vec![3001],
        bytes: specials,
    });
    tensors
}

#[test]
#[ignore = "rewrites tests/vectors; run on purpose only"]
fn regenerate_vectors() {
    let scratch = tempfile::tempdir().unwrap();
    let source = scratch.path().join("source.safetensors");
    common::write_safetensors(&source, &vector_tensors(), &[("format", "pt".to_string())]);
    let variants = [
        ("defaults", EncodeOptions::default()),
        (
            "small_blocks",
            EncodeOptions {
                block_elements: 1024,
                chunk_bits: 128,
                warmup_bits: 16,
                head_bits: None,
            },
        ),
    ];
    let mut sums = String::new();
    for (stem, encode) in variants {
        let output = vectors_dir().join(format!("{stem}.ecf.safetensors"));
        let options = CompressOptions {
            encode,
            force: true,
            ..CompressOptions::default()
        };
        container::compress_file(&source, &output, &options).unwrap();
        sums.push_str(&format!(
            "{}  {stem}.safetensors\n",
            sha256_hex(&std::fs::read(&source).unwrap())
        ));
    }
    std::fs::write(vectors_dir().join("SHA256SUMS"), sums).unwrap();
}

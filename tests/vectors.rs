//! Checked-in compressed files and the SHA-256 of what they decompress to,
//! one directory per format version: a change to the format or the decoder
//! that breaks old files fails here. `cargo test --test vectors --
//! --ignored` rewrites the current version's (only ever on purpose, with a
//! format version bump); older versions' files are never rewritten.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ecfloat::codec::{EncodeOptions, FloatKind};
use ecfloat::container::{self, CompressOptions, schema};
use sha2::{Digest, Sha256};

fn vectors_dir(version: u32) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/vectors/v{version}"))
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn recorded_sums(version: u32) -> BTreeMap<String, String> {
    std::fs::read_to_string(vectors_dir(version).join("SHA256SUMS"))
        .unwrap()
        .lines()
        .filter_map(|line| line.split_once("  "))
        .map(|(sum, name)| (name.to_string(), sum.to_string()))
        .collect()
}

/// Every version this build reads has vectors, and each decompresses (and
/// verifies) to its recorded bytes.
#[test]
fn vectors_decompress_to_their_recorded_sha256() {
    assert_eq!(
        schema::READABLE_VERSIONS.last(),
        Some(&schema::FORMAT_VERSION)
    );
    for version in schema::READABLE_VERSIONS {
        let sums = recorded_sums(version);
        assert!(!sums.is_empty());
        let scratch = tempfile::tempdir().unwrap();
        for (name, sum) in &sums {
            let stem = name.strip_suffix(".safetensors").unwrap();
            let compressed = vectors_dir(version).join(format!("{stem}.ecf.safetensors"));
            let file = container::SourceFile::open(&compressed).unwrap();
            assert_eq!(file.ecf_version(), Some(version.to_string().as_str()));
            let output = scratch.path().join(name);
            container::decompress_file(&compressed, &output, false, &Default::default()).unwrap();
            assert_eq!(
                &sha256_hex(&std::fs::read(&output).unwrap()),
                sum,
                "v{version} {name}"
            );
        }
    }
}

/// The vectors of the current version are what today's encoder writes:
/// a compressed file is a pure function of its source and the options.
#[test]
fn the_encoder_rewrites_the_current_vectors_byte_for_byte() {
    let scratch = tempfile::tempdir().unwrap();
    let written = write_vectors(scratch.path());
    for stem in written {
        let name = format!("{stem}.ecf.safetensors");
        let now = std::fs::read(scratch.path().join(&name)).unwrap();
        let recorded = std::fs::read(vectors_dir(schema::FORMAT_VERSION).join(&name)).unwrap();
        assert!(now == recorded, "{name} differs from the recorded vector");
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
    let directory = vectors_dir(schema::FORMAT_VERSION);
    std::fs::create_dir_all(&directory).unwrap();
    write_vectors(&directory);
}

/// Compresses the vectors' source into `directory`, with their SHA256SUMS;
/// returns the files' stems.
fn write_vectors(directory: &Path) -> Vec<&'static str> {
    let scratch = tempfile::tempdir().unwrap();
    let source = scratch.path().join("source.safetensors");
    common::write_safetensors(&source, &vector_tensors(), &[("format", "pt".to_string())]);
    let variants = [
        ("defaults", EncodeOptions::default()),
        (
            "small_blocks",
            EncodeOptions {
                block_elements: 1024,
                chunk_bits: Some(128),
                warmup_bits: 16,
                head_bits: None,
                sign_in_head: None,
            },
        ),
    ];
    let mut sums = String::new();
    let mut stems = Vec::new();
    for (stem, encode) in variants {
        stems.push(stem);
        let output = directory.join(format!("{stem}.ecf.safetensors"));
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
    std::fs::write(directory.join("SHA256SUMS"), sums).unwrap();
    stems
}

//! What the chunk geometry costs and buys: for each safetensors file given,
//! every float tensor is encoded with each chunk size and warm-up, and one
//! line per geometry reports the whole file's ratio (coded tensors' planes
//! and coded headers, other tensors as they are; the file's JSON header left
//! out), the sync exceptions, the codeword decodes per element a GPU's count
//! and write passes would do, and the share of a 256-thread workgroup's
//! threads that have a chunk, over its rounds.
//!
//! ```sh
//! cargo run --release --example chunk_geometry -- ../shared/testdata/*.safetensors
//! ```

use std::path::PathBuf;

use ecfloat::codec::{self, BlockIndex, BlockMode, EncodeOptions, FloatKind};
use ecfloat::container::SourceFile;

/// Threads of a workgroup: one chunk each per round.
const WORKGROUP_THREADS: u64 = 256;
/// Bytes of a coded tensor's header, about (its exact size varies by a few
/// bytes with its varints).
const CODED_HEADER_BYTES: u64 = 48;

const GEOMETRIES: [(u32, u32); 8] = [
    (256, 32),
    (256, 64),
    (512, 32),
    (512, 64),
    (1024, 32),
    (1024, 64),
    (2048, 64),
    (4096, 64),
];

#[derive(Default)]
struct Totals {
    stored_bytes: u64,
    exceptions: u64,
    elements: u64,
    /// Codewords a chunk decoder reads: its warm-up and its own, once for
    /// the count pass and once for the write pass.
    decodes: f64,
    chunks: u64,
    thread_rounds: u64,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files: Vec<PathBuf> = std::env::args().skip(1).map(PathBuf::from).collect();
    if files.is_empty() {
        return Err("usage: chunk_geometry FILE.safetensors...".into());
    }
    println!(
        "{:<40} {:>6} {:>6} {:>8} {:>10} {:>8} {:>8}",
        "file", "chunk", "warmup", "ratio", "exceptions", "decodes", "active"
    );
    for file in &files {
        let source = SourceFile::open(file)?;
        let file_bytes = source.bytes().len() as u64;
        for (chunk_bits, warmup_bits) in GEOMETRIES {
            let options = EncodeOptions {
                chunk_bits,
                warmup_bits,
                ..EncodeOptions::default()
            };
            let mut totals = Totals::default();
            for tensor in source.tensors() {
                let bytes = &source.data()[tensor.range.clone()];
                let kind = FloatKind::from_safetensors_name(&format!("{:?}", tensor.dtype));
                let Some(kind) = kind.filter(|_| !bytes.is_empty()) else {
                    totals.stored_bytes += bytes.len() as u64;
                    continue;
                };
                let encoded = codec::encode(kind, bytes, &options)?;
                let coded = encoded.stored_bytes() + CODED_HEADER_BYTES;
                if coded >= bytes.len() as u64 {
                    totals.stored_bytes += bytes.len() as u64;
                    continue;
                }
                totals.stored_bytes += coded;
                let index = BlockIndex::parse(&encoded.view())?;
                totals.exceptions += index.exceptions.len() as u64;
                totals.elements += (bytes.len() / kind.width_bytes()) as u64;
                for (block, entry) in index.blocks.iter().enumerate() {
                    if !matches!(entry.mode, BlockMode::Coded { .. }) {
                        continue;
                    }
                    let chunks = entry.stream_bits.div_ceil(chunk_bits as u64);
                    let block_elements = options.block_elements as u64;
                    let first = block as u64 * block_elements;
                    let elements = (bytes.len() / kind.width_bytes()) as u64;
                    let codewords = (elements - first).min(block_elements) as f64;
                    let warmup = warmup_bits.min(chunk_bits) as f64 / chunk_bits as f64;
                    totals.decodes += 2.0 * codewords * (1.0 + warmup);
                    totals.chunks += chunks;
                    totals.thread_rounds += chunks.div_ceil(WORKGROUP_THREADS) * WORKGROUP_THREADS;
                }
            }
            println!(
                "{:<40} {:>6} {:>6} {:>8.5} {:>10} {:>8.2} {:>8.2}",
                file.file_name().unwrap_or_default().to_string_lossy(),
                chunk_bits,
                warmup_bits,
                (totals.stored_bytes + (file_bytes - source.data().len() as u64)) as f64
                    / file_bytes as f64,
                totals.exceptions,
                totals.decodes / totals.elements.max(1) as f64,
                totals.chunks as f64 / totals.thread_rounds.max(1) as f64,
            );
        }
    }
    Ok(())
}

//! What the chunk geometry costs and buys: for each safetensors file given,
//! every float tensor is encoded with each chunk size and warm-up, and one
//! line per geometry reports the whole file's ratio (coded tensors' planes
//! and coded headers, other tensors as they are; the file's JSON header left
//! out), the sync exceptions, the codeword decodes per element a GPU's count
//! and write passes would do, and the share of a 256-thread workgroup's
//! threads that have a chunk, over its rounds. `fitted` is the encoder's
//! default: a chunk length fitted to each tensor
//! (`codec::encode::fitted_chunk_bits`).
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

/// Chunk bits (`None`: fitted per tensor) and warm-up bits.
const GEOMETRIES: [(Option<u32>, u32); 9] = [
    (Some(256), 32),
    (Some(256), 64),
    (Some(512), 32),
    (Some(512), 64),
    (Some(1024), 32),
    (Some(1024), 64),
    (Some(2048), 64),
    (Some(4096), 64),
    (None, 64),
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

impl Totals {
    /// Counts a coded block of `codewords` and `stream_bits` cut into
    /// chunks of `chunk_bits` with a `warmup_bits` warm-up.
    fn add_block(&mut self, codewords: u64, stream_bits: u64, chunk_bits: u64, warmup_bits: u64) {
        let chunks = stream_bits.div_ceil(chunk_bits);
        let warmup = warmup_bits.min(chunk_bits) as f64 / chunk_bits as f64;
        self.decodes += 2.0 * codewords as f64 * (1.0 + warmup);
        self.chunks += chunks;
        self.thread_rounds += chunks.div_ceil(WORKGROUP_THREADS) * WORKGROUP_THREADS;
    }
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
                let elements = (bytes.len() / kind.width_bytes()) as u64;
                totals.elements += elements;
                let block_elements = options.block_elements as u64;
                let tensor_chunk_bits = encoded.params.geometry.chunk_bits as u64;
                for (block, entry) in index.blocks.iter().enumerate() {
                    if !matches!(entry.mode, BlockMode::Coded { .. }) {
                        continue;
                    }
                    let first = block as u64 * block_elements;
                    let codewords = (elements - first).min(block_elements);
                    totals.add_block(
                        codewords,
                        entry.stream_bits,
                        tensor_chunk_bits,
                        warmup_bits as u64,
                    );
                }
            }
            println!(
                "{:<40} {:>6} {:>6} {:>8.5} {:>10} {:>8.2} {:>8.2}",
                file.file_name().unwrap_or_default().to_string_lossy(),
                chunk_bits.map_or("fitted".to_string(), |bits| bits.to_string()),
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

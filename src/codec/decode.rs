//! The CPU decoder: the reference every other backend must match bit for
//! bit, and a fast decoder in its own right.
//!
//! Blocks decode independently (in parallel with rayon). Within a block the
//! head stream is decoded in [`LANES`] interleaved lanes: lane 0 starts at the
//! block's first bit, the others at a chunk boundary chosen by the same
//! warm-up rule the GPU uses ([`super::sync`]). Their dependency chains are
//! independent, so the core overlaps the table lookups. The lanes' outputs
//! are stitched together, then every head is joined with its rest bits.

use std::ops::Range;

use rayon::prelude::*;

use super::bits::{load_le_u64_padded, peek_bits};
use super::float::{FieldSplit, width_mask};
use super::huffman::DecodeTable;
use super::index::{BlockIndex, BlockMode, ChunkException};
use super::stats::{self, Histogram};
use super::sync::ChunkGeometry;
use super::{CodecError, EncodedView};

/// Independent decode lanes per block.
pub const LANES: usize = 4;

/// Decodes a whole tensor into `out` (its original little-endian bytes).
pub fn decode(view: &EncodedView, out: &mut [u8]) -> Result<(), CodecError> {
    let index = BlockIndex::parse(view)?;
    decode_blocks(view, &index, 0..index.blocks.len(), out)
}

/// Decodes `blocks` of a tensor, with an index already parsed (and so
/// validated) from `view`, into `out`, which holds exactly those blocks.
pub fn decode_blocks(
    view: &EncodedView,
    index: &BlockIndex,
    blocks: Range<usize>,
    out: &mut [u8],
) -> Result<(), CodecError> {
    let params = view.params;
    let expected = params.block_range_bytes(blocks.clone());
    if out.len() as u64 != expected {
        return Err(CodecError::LengthMismatch(format!(
            "output holds {} bytes, blocks {blocks:?} decode to {expected}",
            out.len(),
        )));
    }
    let block_elements = params.block_elements as usize;
    let block_bytes = block_elements * params.kind().width_bytes();
    out.par_chunks_mut(block_bytes)
        .enumerate()
        .try_for_each_init(
            || BlockScratch::new(block_elements),
            |scratch, (offset, out_block)| {
                decode_block(view, index, blocks.start + offset, scratch, out_block)
            },
        )
}

/// Per-thread buffers, reused across blocks.
struct BlockScratch {
    heads: Vec<u8>,
    lane_heads: Vec<Vec<u8>>,
    table: Option<(u32, DecodeTable)>,
}

impl BlockScratch {
    fn new(block_elements: usize) -> Self {
        BlockScratch {
            heads: vec![0; block_elements],
            lane_heads: vec![Vec::new(); LANES - 1],
            table: None,
        }
    }

    fn table(&mut self, index: &BlockIndex, table: u32) -> &DecodeTable {
        if self.table.as_ref().map(|(id, _)| *id) != Some(table) {
            let t = table as usize;
            let built = DecodeTable::new(&index.tables[t], index.table_max_len[t] as u32);
            self.table = Some((table, built));
        }
        &self.table.as_ref().unwrap().1
    }
}

fn decode_block(
    view: &EncodedView,
    index: &BlockIndex,
    block: usize,
    scratch: &mut BlockScratch,
    out: &mut [u8],
) -> Result<(), CodecError> {
    let split = view.params.split;
    let elements = out.len() / split.kind.width_bytes();
    let mut heads = std::mem::take(&mut scratch.heads);
    let result = decode_heads(view, index, block, scratch, &mut heads[..elements]);
    if result.is_ok() {
        let first_element = block as u64 * view.params.block_elements as u64;
        join_block(&split, &heads[..elements], view.rest, first_element, out);
    }
    scratch.heads = heads;
    result
}

fn decode_heads(
    view: &EncodedView,
    index: &BlockIndex,
    block: usize,
    scratch: &mut BlockScratch,
    heads: &mut [u8],
) -> Result<(), CodecError> {
    let entry = &index.blocks[block];
    let stream =
        &view.head[entry.stream_offset as usize..][..entry.stream_bits.div_ceil(8) as usize];
    match entry.mode {
        BlockMode::Constant(value) => heads.fill(value),
        BlockMode::Raw => {
            let bits = view.params.split.head_bits;
            for (i, head) in heads.iter_mut().enumerate() {
                *head = peek_bits(stream, i as u64 * bits as u64, bits) as u8;
            }
        }
        BlockMode::Coded { table } => {
            let exceptions = index.block_exceptions(block);
            let geometry = view.params.geometry;
            let mut lane_heads = std::mem::take(&mut scratch.lane_heads);
            let table = scratch.table(index, table);
            let result = decode_coded_lanes(
                stream,
                entry.stream_bits,
                table,
                geometry,
                exceptions,
                heads,
                &mut lane_heads,
            )
            .map_err(|message| CodecError::CorruptStream { block, message });
            scratch.lane_heads = lane_heads;
            result?;
        }
    }
    Ok(())
}

/// Decodes a coded block in `LANES` interleaved lanes. Lane `l` covers the
/// chunks from `l * chunks / LANES` on; lane 0 writes straight into `heads`,
/// the others into `lane_heads[l - 1]`, appended afterwards.
fn decode_coded_lanes(
    stream: &[u8],
    stream_bits: u64,
    table: &DecodeTable,
    geometry: ChunkGeometry,
    exceptions: &[ChunkException],
    heads: &mut [u8],
    lane_heads: &mut [Vec<u8>],
) -> Result<(), String> {
    let chunk_count = geometry.chunk_count(stream_bits);
    let chunk_bits = geometry.chunk_bits as u64;
    let mask = (1u64 << table.max_len) - 1;
    let entries = &table.entries[..];
    let next_bits = |position: u64| {
        load_le_u64_padded(stream, (position / 8) as usize) >> (position % 8) & mask
    };

    // Lane `l` owns the codewords starting in bits end[l - 1]..end[l].
    let mut position = [0u64; LANES];
    let mut end = [stream_bits; LANES];
    for lane in 1..LANES {
        let chunk = chunk_count * lane as u64 / LANES as u64;
        let begin = (chunk * chunk_bits).min(stream_bits);
        end[lane - 1] = begin;
        let exception = exceptions
            .iter()
            .find(|e| e.chunk as u64 == chunk)
            .map(|e| e.first_boundary as u32);
        position[lane] = geometry.decode_start(chunk, exception);
        // Warm-up: skip codewords that begin before the lane's first chunk.
        while position[lane] < begin {
            position[lane] += (entries[next_bits(position[lane]) as usize] >> 8) as u64;
        }
    }
    // Where each lane landed: the lane before must end exactly there.
    let landing = position;

    let mut written = [0usize; LANES];
    for buffer in lane_heads.iter_mut() {
        buffer.resize(heads.len(), 0);
    }
    loop {
        let mut active = false;
        for lane in 0..LANES {
            if position[lane] >= end[lane] {
                continue;
            }
            active = true;
            let target = match lane {
                0 => &mut heads[..],
                _ => &mut lane_heads[lane - 1][..],
            };
            let Some(slot) = target.get_mut(written[lane]) else {
                return Err("more codewords than elements".to_string());
            };
            let entry = entries[next_bits(position[lane]) as usize];
            *slot = entry as u8;
            written[lane] += 1;
            position[lane] += (entry >> 8) as u64;
        }
        if !active {
            break;
        }
    }
    for lane in 0..LANES {
        let expected = if lane + 1 < LANES {
            landing[lane + 1]
        } else {
            stream_bits
        };
        if position[lane] != expected {
            return Err(format!(
                "codewords end at bit {}, expected a boundary at bit {expected}",
                position[lane]
            ));
        }
    }
    let total: usize = written.iter().sum();
    if total != heads.len() {
        return Err(format!(
            "stream holds {total} codewords, the block has {} elements",
            heads.len()
        ));
    }
    let mut offset = written[0];
    for lane in 1..LANES {
        heads[offset..offset + written[lane]]
            .copy_from_slice(&lane_heads[lane - 1][..written[lane]]);
        offset += written[lane];
    }
    Ok(())
}

/// Rebuilds the elements of one block from its heads and the rest plane.
fn join_block(split: &FieldSplit, heads: &[u8], rest: &[u8], first_element: u64, out: &mut [u8]) {
    let stored_bits = split.stored_rest_bits();
    let kind = split.kind;
    // Blocks hold a multiple of 8 elements, so a block's rest starts on a byte.
    let rest = &rest[(first_element * stored_bits as u64 / 8) as usize..];
    match (kind.width_bytes(), stored_bits, split.rest_const_bits) {
        (2, 8, 0) => {
            for ((pair, &head), &rest) in out.chunks_exact_mut(2).zip(heads).zip(rest) {
                let element = (rest as u16 & 0x80) << 8 | (head as u16) << 7 | rest as u16 & 0x7F;
                pair.copy_from_slice(&element.to_le_bytes());
            }
        }
        (4, 24, 0) => {
            for ((quad, &head), rest) in
                out.chunks_exact_mut(4).zip(heads).zip(rest.chunks_exact(3))
            {
                let rest = u32::from_le_bytes([rest[0], rest[1], rest[2], 0]);
                let element = (rest >> 23) << 31 | (head as u32) << 23 | rest & 0x7F_FFFF;
                quad.copy_from_slice(&element.to_le_bytes());
            }
            // A last element whose 3 rest bytes end the plane.
            let whole = rest.len() / 3;
            if whole < heads.len() {
                join_generic(
                    split,
                    &heads[whole..],
                    &rest[whole * 3..],
                    &mut out[whole * 4..],
                );
            }
        }
        _ => join_generic(split, heads, rest, out),
    }
}

fn join_generic(split: &FieldSplit, heads: &[u8], rest: &[u8], out: &mut [u8]) {
    let kind = split.kind;
    let width = kind.width_bytes();
    let stored_bits = split.stored_rest_bits();
    let mask = width_mask(stored_bits) as u64;
    let mut position = 0u64;
    for (element, &head) in out.chunks_exact_mut(width).zip(heads) {
        let stored = (load_le_u64_padded(rest, (position / 8) as usize) >> (position % 8)) & mask;
        position += stored_bits as u64;
        let value = split.join(head as u32, stored as u32);
        element.copy_from_slice(&value.to_le_bytes()[..width]);
    }
}

/// Decodes one coded block chunk by chunk, exactly as a GPU workgroup does:
/// each chunk independently from its warm-up start or exception. Used to
/// check that a stream's sync metadata is right.
pub fn decode_block_by_chunks(
    view: &EncodedView,
    index: &BlockIndex,
    block: usize,
) -> Result<Vec<u8>, CodecError> {
    let entry = &index.blocks[block];
    let elements = view.params.block_len(block as u64) as usize;
    let BlockMode::Coded { table } = entry.mode else {
        let mut scratch = BlockScratch::new(elements);
        let mut heads = vec![0; elements];
        decode_heads(view, index, block, &mut scratch, &mut heads)?;
        return Ok(heads);
    };
    let t = table as usize;
    let table = DecodeTable::new(&index.tables[t], index.table_max_len[t] as u32);
    let stream =
        &view.head[entry.stream_offset as usize..][..entry.stream_bits.div_ceil(8) as usize];
    let geometry = view.params.geometry;
    let mut exceptions = index.block_exceptions(block).iter().peekable();
    let mut heads = Vec::with_capacity(elements);
    for chunk in 0..geometry.chunk_count(entry.stream_bits) {
        let exception = exceptions
            .next_if(|e| e.chunk as u64 == chunk)
            .map(|e| e.first_boundary as u32);
        geometry.decode_chunk(
            stream,
            entry.stream_bits,
            &table,
            chunk,
            exception,
            |symbol| heads.push(symbol),
        );
        if heads.len() > elements {
            break;
        }
    }
    if heads.len() != elements {
        return Err(CodecError::CorruptStream {
            block,
            message: format!(
                "chunks hold {} codewords, the block has {elements} elements",
                heads.len()
            ),
        });
    }
    Ok(heads)
}

/// Histogram of every head of a tensor, decoding only the heads.
pub fn head_histogram(view: &EncodedView, index: &BlockIndex) -> Result<Histogram, CodecError> {
    let block_elements = view.params.block_elements as usize;
    (0..index.blocks.len())
        .into_par_iter()
        .map_init(
            || BlockScratch::new(block_elements),
            |scratch, block| {
                let elements = view.params.block_len(block as u64) as usize;
                let mut heads = std::mem::take(&mut scratch.heads);
                let result = decode_heads(view, index, block, scratch, &mut heads[..elements]);
                let mut histogram = [0u64; 256];
                for &head in &heads[..elements] {
                    histogram[head as usize] += 1;
                }
                scratch.heads = heads;
                result.map(|()| histogram)
            },
        )
        .try_reduce(
            || [0u64; 256],
            |mut total, part| {
                stats::add_into(&mut total, &part);
                Ok(total)
            },
        )
}

//! The CPU decoder: the reference every other backend must match bit for
//! bit, and a fast decoder in its own right.
//!
//! Blocks decode independently (in parallel with rayon). Within a block the
//! head stream is decoded in [`LANES`] interleaved lanes: lane 0 starts at the
//! block's first bit, the others at a chunk boundary chosen by the same
//! warm-up rule the GPU uses ([`super::sync`]). Their dependency chains are
//! independent, so the core overlaps the table lookups. The lanes' outputs
//! are stitched together, then every head is joined with its rest bits.

use std::cell::RefCell;
use std::ops::Range;

use rayon::prelude::*;

use super::bits::{FieldReader, load_le_u64_padded, peek_bits};
use super::float::FieldSplit;
use super::huffman::{DecodeTable, MAX_CODE_BITS, TABLE_ENTRIES, TABLE_MASK};
use super::index::{BlockIndex, BlockMode, ChunkException};
use super::stats::{self, Histogram};
use super::sync::ChunkGeometry;
use super::table::CodeLengths;
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
    let decode_one = |offset: usize, out_block: &mut [u8]| {
        SCRATCH.with_borrow_mut(|scratch| {
            decode_block(view, index, blocks.start + offset, scratch, out_block)
        })
    };
    if blocks.len() <= 1 {
        // One block: no hand-over to the thread pool.
        return match blocks.len() {
            0 => Ok(()),
            _ => decode_one(0, out),
        };
    }
    out.par_chunks_mut(block_bytes)
        .enumerate()
        .try_for_each(|(offset, out_block)| decode_one(offset, out_block))
}

thread_local! {
    /// Each thread's decode buffers, kept across blocks and tensors.
    static SCRATCH: RefCell<BlockScratch> = RefCell::new(BlockScratch::default());
}

/// Per-thread buffers, reused across blocks. They only grow.
#[derive(Default)]
struct BlockScratch {
    heads: Vec<u8>,
    /// One buffer per decode lane. They only grow: their contents are
    /// always written before being read.
    lane_heads: [Vec<u8>; LANES],
    /// The decode table last built, and the code it was built for.
    table: Option<(CodeLengths, DecodeTable)>,
    /// The join table of one-byte elements last built, and its split.
    join_table: Option<(FieldSplit, Vec<u8>)>,
}

/// The decode table of code `table`, rebuilt only when the code changes.
fn cached_table<'a>(
    cache: &'a mut Option<(CodeLengths, DecodeTable)>,
    index: &BlockIndex,
    table: u32,
) -> &'a DecodeTable {
    let t = table as usize;
    let lengths = &index.tables[t];
    if cache.as_ref().is_none_or(|(cached, _)| cached != lengths) {
        *cache = Some((
            *lengths,
            DecodeTable::new(lengths, index.table_max_len[t] as u32),
        ));
    }
    &cache.as_ref().expect("filled above").1
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
    if scratch.heads.len() < elements {
        scratch.heads.resize(elements, 0);
    }
    let mut heads = std::mem::take(&mut scratch.heads);
    let result = decode_heads(view, index, block, scratch, &mut heads[..elements]);
    if result.is_ok() {
        let first_element = block as u64 * view.params.block_elements as u64;
        let heads = &heads[..elements];
        join_block(
            &split,
            heads,
            view.rest,
            first_element,
            &mut scratch.join_table,
            out,
        );
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
            let table = cached_table(&mut scratch.table, index, table);
            decode_coded_lanes(
                stream,
                entry.stream_bits,
                table,
                geometry,
                exceptions,
                heads,
                &mut scratch.lane_heads,
            )
            .map_err(|message| CodecError::CorruptStream { block, message })?;
        }
    }
    Ok(())
}

/// Decodes a coded block in `LANES` interleaved lanes. Lane `l` covers the
/// chunks from `l * chunks / LANES` on and writes into `lane_heads[l]`;
/// the lanes are then concatenated into `heads`.
fn decode_coded_lanes(
    stream: &[u8],
    stream_bits: u64,
    table: &DecodeTable,
    geometry: ChunkGeometry,
    exceptions: &[ChunkException],
    heads: &mut [u8],
    lane_heads: &mut [Vec<u8>; LANES],
) -> Result<(), String> {
    let chunk_count = geometry.chunk_count(stream_bits);
    let chunk_bits = geometry.chunk_bits as u64;
    let entries: &[u16; TABLE_ENTRIES] = &table.entries;
    let length_at = |position: u64| -> u64 {
        (entries[(next_bits(stream, position) & TABLE_MASK) as usize] >> 8) as u64
    };

    // Lane `l` owns the codewords starting in bits begin[l]..end[l].
    let mut begin = [0u64; LANES];
    let mut end = [stream_bits; LANES];
    let mut position = [0u64; LANES];
    for lane in 1..LANES {
        let chunk = chunk_count * lane as u64 / LANES as u64;
        begin[lane] = (chunk * chunk_bits).min(stream_bits);
        end[lane - 1] = begin[lane];
        let exception = exceptions
            .iter()
            .find(|e| e.chunk as u64 == chunk)
            .map(|e| e.first_boundary as u32);
        position[lane] = geometry.decode_start(chunk, exception);
        // Warm-up: skip codewords that begin before the lane's first chunk.
        while position[lane] < begin[lane] {
            position[lane] += length_at(position[lane]);
        }
    }
    // Where each lane landed: the lane before must end exactly there.
    let landing = position;
    // A lane of n bits holds at most n codewords, so these never overflow.
    // They only grow: their contents are always written before being read.
    for (lane, buffer) in lane_heads.iter_mut().enumerate() {
        let capacity = (end[lane].saturating_sub(begin[lane]) + 1) as usize;
        if buffer.len() < capacity {
            buffer.resize(capacity, 0);
        }
    }

    // Fast path: all lanes decode `SYMBOLS_PER_REFILL` codewords at a time
    // from 64-bit bit buffers, for as long as the lane closest to its end
    // (or to the end of the stream, for whole-word loads) surely has them.
    let load_limit = (stream.len() as u64).saturating_sub(16) * 8;
    let round_bits = MAX_CODE_BITS as u64 * SYMBOLS_PER_REFILL as u64;
    // A lane may start another round while it stands at or before this.
    let last_round_start = std::array::from_fn::<u64, LANES, _>(|lane| {
        end[lane].min(load_limit).saturating_sub(round_bits)
    });
    let mut done = 0;
    if (0..LANES).all(|lane| position[lane] <= last_round_start[lane] && end[lane] >= round_bits) {
        let [out0, out1, out2, out3] = lane_heads.each_mut();
        let [mut l0, mut l1, mut l2, mut l3] = position.map(|at| LaneReader::new(stream, at));
        loop {
            l0.refill(stream);
            l1.refill(stream);
            l2.refill(stream);
            l3.refill(stream);
            for k in done..done + SYMBOLS_PER_REFILL {
                out0[k] = l0.decode(entries);
                out1[k] = l1.decode(entries);
                out2[k] = l2.decode(entries);
                out3[k] = l3.decode(entries);
            }
            done += SYMBOLS_PER_REFILL;
            if l0.position() > last_round_start[0]
                || l1.position() > last_round_start[1]
                || l2.position() > last_round_start[2]
                || l3.position() > last_round_start[3]
            {
                break;
            }
        }
        position = [l0.position(), l1.position(), l2.position(), l3.position()];
    }
    let mut written = [done; LANES];
    // Each lane's tail, one codeword at a time.
    for lane in 0..LANES {
        while position[lane] < end[lane] {
            let entry = entries[(next_bits(stream, position[lane]) & TABLE_MASK) as usize];
            lane_heads[lane][written[lane]] = entry as u8;
            written[lane] += 1;
            position[lane] += (entry >> 8) as u64;
        }
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
    let mut offset = 0;
    for lane in 0..LANES {
        heads[offset..offset + written[lane]].copy_from_slice(&lane_heads[lane][..written[lane]]);
        offset += written[lane];
    }
    Ok(())
}

/// Codewords each lane decodes between refills: four of at most 12 bits
/// fit in the 56 bits a refill guarantees.
const SYMBOLS_PER_REFILL: usize = 4;

/// One lane's 64-bit bit buffer: `count` valid bits at the bottom of `bits`,
/// which are the stream bits just before byte `next_byte`.
struct LaneReader {
    bits: u64,
    count: u32,
    next_byte: usize,
}

impl LaneReader {
    fn new(stream: &[u8], position: u64) -> Self {
        let mut reader = LaneReader {
            bits: 0,
            count: 0,
            next_byte: (position / 8) as usize,
        };
        reader.refill(stream);
        reader.bits >>= position % 8;
        reader.count -= (position % 8) as u32;
        reader
    }

    /// Tops the buffer up to at least 56 bits; `next_byte` must be at least
    /// 8 bytes before the end of `stream`.
    #[inline(always)]
    fn refill(&mut self, stream: &[u8]) {
        let word = u64::from_le_bytes(*stream[self.next_byte..].first_chunk::<8>().unwrap());
        self.bits |= word << self.count;
        self.next_byte += ((63 - self.count) >> 3) as usize;
        self.count |= 56;
    }

    #[inline(always)]
    fn decode(&mut self, entries: &[u16; TABLE_ENTRIES]) -> u8 {
        let entry = entries[(self.bits & TABLE_MASK) as usize];
        let len = (entry >> 8) as u32;
        self.bits >>= len;
        self.count -= len;
        entry as u8
    }

    fn position(&self) -> u64 {
        self.next_byte as u64 * 8 - self.count as u64
    }
}

/// The stream bits from `position` on, zero past the end of `stream`.
#[inline(always)]
fn next_bits(stream: &[u8], position: u64) -> u64 {
    load_le_u64_padded(stream, (position / 8) as usize) >> (position % 8)
}

/// Rebuilds the elements of one block from its heads and the rest plane.
/// The common splits (a whole-byte rest of 8 or 24 bits, no rest at all)
/// have their own loops; the others read the rest bits as a stream.
fn join_block(
    split: &FieldSplit,
    heads: &[u8],
    rest: &[u8],
    first_element: u64,
    join_table: &mut Option<(FieldSplit, Vec<u8>)>,
    out: &mut [u8],
) {
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
        }
        (1, 0, 0) => {
            // The head is the whole rotated byte.
            for (element, &head) in out.iter_mut().zip(heads) {
                *element = head.rotate_right(1);
            }
        }
        (1, ..) => {
            if join_table
                .as_ref()
                .is_none_or(|(cached, _)| cached != split)
            {
                *join_table = Some((*split, byte_join_table(split)));
            }
            let table = &join_table.as_ref().expect("filled above").1;
            join_bytes(split.stored_rest_bits(), table, heads, rest, out);
        }
        (2, ..) => join_packed::<2>(split, heads, rest, out),
        _ => join_packed::<4>(split, heads, rest, out),
    }
}

/// Every one-byte element, indexed by `rest field << 8 | head`: at most
/// 2^4 × 256 entries.
fn byte_join_table(split: &FieldSplit) -> Vec<u8> {
    (0..256u32 << split.stored_rest_bits())
        .map(|key| split.join(key & 0xFF, key >> 8) as u8)
        .collect()
}

/// The join for one-byte elements with a rest, through their join table.
fn join_bytes(stored_bits: u32, table: &[u8], heads: &[u8], rest: &[u8], out: &mut [u8]) {
    let field_mask = (1u32 << stored_bits) - 1;
    let mut fields = FieldReader::new(rest);
    let groups = heads.len() / 8;
    for (elements, heads) in out.chunks_exact_mut(8).zip(heads.chunks_exact(8)) {
        let mut group = fields.take(8 * stored_bits);
        for (element, &head) in elements.iter_mut().zip(heads) {
            *element = table[((group & field_mask) << 8 | head as u32) as usize];
            group >>= stored_bits;
        }
    }
    for (element, &head) in out[groups * 8..].iter_mut().zip(&heads[groups * 8..]) {
        *element = table[(fields.take(stored_bits) << 8 | head as u32) as usize];
    }
}

/// The general join, for elements of `WIDTH` bytes. Eight elements' rest
/// fields fill exactly `stored_bits` bytes, so up to 16 bits they are read
/// eight at a time from one 128-bit word; wider fields and a last partial
/// group are read as a stream.
fn join_packed<const WIDTH: usize>(split: &FieldSplit, heads: &[u8], rest: &[u8], out: &mut [u8]) {
    // FieldSplit::join with its parameters hoisted out of the loop; the
    // rest holds at least the sign here.
    let stored_bits = split.stored_rest_bits();
    let low_bits = split.rest_bits() - 1;
    let low_mask = (1u32 << low_bits) - 1;
    let (const_bits, const_value) = (split.rest_const_bits, split.rest_const_value);
    let sign_shift = WIDTH as u32 * 8 - 1;
    let join = |head: u8, field: u32| {
        let rest = field << const_bits | const_value;
        (rest >> low_bits) << sign_shift | (head as u32) << low_bits | rest & low_mask
    };
    let grouped = if (1..=16).contains(&stored_bits) {
        heads.len() / 8
    } else {
        0
    };
    let group_bytes = stored_bits as usize;
    let (grouped_out, tail_out) = out.split_at_mut(grouped * 8 * WIDTH);
    let groups = grouped_out
        .chunks_exact_mut(8 * WIDTH)
        .zip(heads.chunks_exact(8))
        .enumerate();
    macro_rules! join_groups {
        ($word:ty, $load:expr) => {
            let field_mask: $word = (1 << stored_bits) - 1;
            for (group, (elements, heads)) in groups {
                let mut fields: $word = $load(group * group_bytes);
                for (element, &head) in elements.chunks_exact_mut(WIDTH).zip(heads) {
                    let value = join(head, (fields & field_mask) as u32);
                    element.copy_from_slice(&value.to_le_bytes()[..WIDTH]);
                    fields >>= stored_bits;
                }
            }
        };
    }
    // Eight fields of up to 8 bits fit a u64, which shifts far cheaper.
    // Bits past a group's fields are shifted out unused.
    if stored_bits <= 8 {
        join_groups!(u64, |offset| load_le_u64_padded(rest, offset));
    } else {
        join_groups!(u128, |offset| {
            load_le_u64_padded(rest, offset) as u128
                | (load_le_u64_padded(rest, offset + 8) as u128) << 64
        });
    }
    let mut fields = FieldReader::new(&rest[grouped * group_bytes..]);
    for (element, &head) in tail_out.chunks_exact_mut(WIDTH).zip(&heads[grouped * 8..]) {
        let value = join(head, fields.take(stored_bits));
        element.copy_from_slice(&value.to_le_bytes()[..WIDTH]);
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
        let mut scratch = BlockScratch::default();
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
    (0..index.blocks.len())
        .into_par_iter()
        .map(|block| {
            SCRATCH.with_borrow_mut(|scratch| {
                let elements = view.params.block_len(block as u64) as usize;
                if scratch.heads.len() < elements {
                    scratch.heads.resize(elements, 0);
                }
                let mut heads = std::mem::take(&mut scratch.heads);
                let result = decode_heads(view, index, block, scratch, &mut heads[..elements]);
                let mut histogram = [0u64; 256];
                for &head in &heads[..elements] {
                    histogram[head as usize] += 1;
                }
                scratch.heads = heads;
                result.map(|()| histogram)
            })
        })
        .try_reduce(
            || [0u64; 256],
            |mut total, part| {
                stats::add_into(&mut total, &part);
                Ok(total)
            },
        )
}

//! The CPU decoder: the reference every other backend must match bit for
//! bit, and a fast decoder in its own right.
//!
//! Blocks decode independently (in parallel with rayon). Within a block the
//! head stream is decoded in [`LANES`] interleaved lanes: lane 0 starts at the
//! block's first bit, the others at a chunk boundary chosen by the same
//! warm-up rule the GPU uses ([`super::sync`]). Their dependency chains are
//! independent, so the core overlaps the table lookups. Where a block is long
//! enough to pay for filling it, each lookup in a [`MultiSymbolTable`]
//! decodes every whole codeword of the next 12 bits, up to four (three or
//! four BF16 exponents); shorter blocks look up one codeword at a time in
//! the same rounds. Each lane's heads are then joined
//! with their rest bits where they lie; the join and the lookups are compiled
//! a second time for AVX2 and BMI2, chosen at run time.
//!
//! The decoder also checks the sync metadata it does not need itself: every
//! chunk must start where the GPU decoders would start it. A file this
//! decoder accepts decodes right on every backend.

use std::cell::RefCell;
use std::ops::Range;

use rayon::prelude::*;

use super::bits::{FieldReader, load_le_u64_padded, peek_bits};
use super::float::FieldSplit;
use super::huffman::{
    ALPHABET, DecodeTable, ENTRY_LENGTH_SHIFT, ENTRY_SYMBOL_MASK, MAX_CODE_BITS,
    MULTI_STEP_COUNT_SHIFT, MULTI_SYMBOLS, MultiSymbolTable, TABLE_ENTRIES, TABLE_MASK, multi_step,
};
use super::index::{BlockIndex, BlockMode, ChunkException};
use super::stats::{self, Histogram};
use super::sync::{ChunkGeometry, StreamProblem};
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
/// Every chunk's sync metadata is checked as the GPU decoders use it, so
/// that a tensor this accepts decodes the same on every backend and one it
/// rejects fails on every backend, with the same [`StreamProblem`].
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
    // Every block is decoded, so the error is the first block's, whatever
    // the threads' timing.
    out.par_chunks_mut(block_bytes)
        .enumerate()
        .filter_map(|(offset, out_block)| decode_one(offset, out_block).err())
        .min_by_key(|error| match error {
            CodecError::CorruptStream { block, .. } => *block,
            _ => usize::MAX,
        })
        .map_or(Ok(()), Err)
}

thread_local! {
    /// Each thread's decode buffers, kept across blocks and tensors.
    static SCRATCH: RefCell<BlockScratch> = RefCell::new(BlockScratch::default());
}

/// Per-thread buffers, reused across blocks. They only grow.
#[derive(Default)]
struct BlockScratch {
    heads: Vec<u16>,
    lanes: LaneScratch,
    /// The decode table last built, and the code it was built for.
    table: Option<(CodeLengths, DecodeTable)>,
    /// The multi-symbol table last filled, and the code it was filled for.
    multi: (Option<CodeLengths>, MultiSymbolTable),
    /// The join table of one-byte elements last built, and its split.
    join_table: Option<(FieldSplit, Vec<u8>)>,
}

/// The decode table of code `table`, rebuilt only when the code changes.
fn cached_table<'a>(
    cache: &'a mut Option<(CodeLengths, DecodeTable)>,
    index: &BlockIndex,
    table: u32,
) -> (&'a CodeLengths, &'a DecodeTable) {
    let t = table as usize;
    let lengths = &index.tables[t];
    if cache.as_ref().is_none_or(|(cached, _)| cached != lengths) {
        *cache = Some((
            *lengths,
            DecodeTable::new(lengths, index.table_max_len[t] as u32),
        ));
    }
    let (lengths, table) = cache.as_ref().expect("filled above");
    (lengths, table)
}

/// Decodes block `block` into `out`: compiled twice, for any x86-64 (or
/// other target) and for cores with AVX2 and BMI2, chosen at run time.
/// Both are the same code, so they decode the same bits; the second lets
/// the compiler use one-instruction variable shifts in the lookups and
/// 32-byte vectors in the joins.
fn decode_block(
    view: &EncodedView,
    index: &BlockIndex,
    block: usize,
    scratch: &mut BlockScratch,
    out: &mut [u8],
) -> Result<(), CodecError> {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("bmi2") {
        // SAFETY: the features it is compiled for are present.
        return unsafe { decode_block_avx2(view, index, block, scratch, out) };
    }
    decode_block_portable(view, index, block, scratch, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,bmi1,bmi2,lzcnt,popcnt")]
fn decode_block_avx2(
    view: &EncodedView,
    index: &BlockIndex,
    block: usize,
    scratch: &mut BlockScratch,
    out: &mut [u8],
) -> Result<(), CodecError> {
    decode_block_inline::<true>(view, index, block, scratch, out)
}

fn decode_block_portable(
    view: &EncodedView,
    index: &BlockIndex,
    block: usize,
    scratch: &mut BlockScratch,
    out: &mut [u8],
) -> Result<(), CodecError> {
    decode_block_inline::<false>(view, index, block, scratch, out)
}

/// The decoder, with `AVX2` true in the build for cores with AVX2.
#[inline(always)]
fn decode_block_inline<const AVX2: bool>(
    view: &EncodedView,
    index: &BlockIndex,
    block: usize,
    scratch: &mut BlockScratch,
    out: &mut [u8],
) -> Result<(), CodecError> {
    let split = view.params.split;
    let width = split.kind.width_bytes();
    let first_element = block as u64 * view.params.block_elements as u64;
    if let BlockMode::Coded { table } = index.blocks[block].mode {
        // Each lane's heads are joined where they lie: no copy into one
        // buffer first.
        let written = decode_coded_block(view, index, block, table, scratch, out.len() / width)?;
        let mut element = 0;
        for (lane, &count) in written.iter().enumerate() {
            join_segment::<AVX2>(
                &split,
                &scratch.lanes.heads[lane][..count],
                view.rest,
                first_element + element as u64,
                &mut scratch.join_table,
                &mut out[element * width..(element + count) * width],
            );
            element += count;
        }
        return Ok(());
    }
    let elements = out.len() / width;
    let mut heads = std::mem::take(&mut scratch.heads);
    if heads.len() < elements {
        heads.resize(elements, 0);
    }
    let result = decode_heads(view, index, block, scratch, &mut heads[..elements]);
    if result.is_ok() {
        join_block::<AVX2>(
            &split,
            &heads[..elements],
            view.rest,
            first_element,
            &mut scratch.join_table,
            out,
        );
    }
    scratch.heads = heads;
    result
}

/// Decodes the heads of block `block` into `heads`, in order.
fn decode_heads(
    view: &EncodedView,
    index: &BlockIndex,
    block: usize,
    scratch: &mut BlockScratch,
    heads: &mut [u16],
) -> Result<(), CodecError> {
    let entry = &index.blocks[block];
    match entry.mode {
        BlockMode::Constant(value) => heads.fill(value),
        BlockMode::Raw => {
            let stream = &view.head[entry.stream_offset as usize..]
                [..entry.stream_bits.div_ceil(8) as usize];
            let bits = view.params.split.head_bits;
            for (i, head) in heads.iter_mut().enumerate() {
                *head = peek_bits(stream, i as u64 * bits as u64, bits) as u16;
            }
        }
        BlockMode::Coded { table } => {
            let written = decode_coded_block(view, index, block, table, scratch, heads.len())?;
            let mut offset = 0;
            for (lane, &count) in written.iter().enumerate() {
                heads[offset..offset + count].copy_from_slice(&scratch.lanes.heads[lane][..count]);
                offset += count;
            }
        }
    }
    Ok(())
}

/// Whether a block of `elements` codewords in `stream_bits` bits decodes
/// faster through a [`MultiSymbolTable`] than one codeword per lookup.
/// Filling the table (its 4,096 entries, up to 7,000 of narrower windows)
/// cost about as many instructions as 16,000 lookups when this was
/// counted; a 12-bit lookup gives about 11.5 / L codewords of mean length
/// L, at most four, so the lookups saved are `elements × (1 − L / 11.5)`.
/// Counted with callgrind on the test files: BF16 blocks (L ≈ 2.7) gain
/// from about 20,000 elements, E4M3 (L ≈ 6.6) from about 40,000. Both the
/// fill and the lookups got cheaper since; half the threshold timed the
/// same.
fn multi_symbol_pays(elements: u64, stream_bits: u64) -> bool {
    const FILL_IN_LOOKUPS: u64 = 16_000;
    // elements − stream_bits / 11.5 > FILL_IN_LOOKUPS, in integers.
    (23 * elements).saturating_sub(2 * stream_bits) > 23 * FILL_IN_LOOKUPS
}

/// Decodes coded block `block` (of `elements` heads) into the lanes'
/// buffers of `scratch`; returns how many heads each lane holds.
#[inline(always)]
fn decode_coded_block(
    view: &EncodedView,
    index: &BlockIndex,
    block: usize,
    table: u32,
    scratch: &mut BlockScratch,
    elements: usize,
) -> Result<[usize; LANES], CodecError> {
    let entry = &index.blocks[block];
    let stream =
        &view.head[entry.stream_offset as usize..][..entry.stream_bits.div_ceil(8) as usize];
    let (lengths, single) = cached_table(&mut scratch.table, index, table);
    let (cached, multi) = &mut scratch.multi;
    let use_multi = multi_symbol_pays(elements as u64, entry.stream_bits);
    if use_multi && cached.as_ref() != Some(lengths) {
        multi.rebuild(lengths);
        *cached = Some(*lengths);
    }
    let multi = use_multi.then_some(&*multi);
    let code = BlockCode {
        stream,
        stream_bits: entry.stream_bits,
        table: single,
        lengths,
        geometry: view.params.geometry,
        exceptions: index.block_exceptions(block),
    };
    decode_coded_lanes(&code, multi, elements, &mut scratch.lanes)
        .map_err(|problem| CodecError::CorruptStream { block, problem })
}

/// One coded block's stream and what decoding it needs.
struct BlockCode<'a> {
    stream: &'a [u8],
    stream_bits: u64,
    table: &'a DecodeTable,
    /// Code length of each symbol.
    lengths: &'a CodeLengths,
    geometry: ChunkGeometry,
    exceptions: &'a [ChunkException],
}

impl BlockCode<'_> {
    /// The stream bits from `position` on, zero past the end of the stream.
    #[inline(always)]
    fn next_bits(&self, position: u64) -> u64 {
        load_le_u64_padded(self.stream, (position / 8) as usize) >> (position % 8)
    }

    #[inline(always)]
    fn length_at(&self, position: u64) -> u64 {
        (self.table.entries[(self.next_bits(position) & TABLE_MASK) as usize] >> ENTRY_LENGTH_SHIFT)
            as u64
    }

    /// Where chunk `chunk`'s decoder stands once it reaches the chunk,
    /// unclamped (see [`ChunkGeometry::chunk_start`]).
    fn chunk_landing(&self, chunk: u64, exception: Option<u32>) -> u64 {
        self.geometry
            .landing(chunk, exception, |position| self.length_at(position))
    }

    fn exception(&self, chunk: u64) -> Option<u32> {
        self.exceptions
            .binary_search_by_key(&chunk, |e| e.chunk as u64)
            .ok()
            .map(|i| self.exceptions[i].first_boundary as u32)
    }
}

/// A lane's scratch buffers, kept across blocks. They only grow: their
/// contents are always written before being read.
#[derive(Default)]
struct LaneScratch {
    heads: [Vec<u16>; LANES],
    /// Where each lane's rounds of several codewords per lookup start.
    round_starts: Vec<[RoundStart; LANES]>,
    /// Per chunk, the codeword start its lane noted (see `LaneMarks`).
    notes: Vec<Note>,
}

/// A codeword start a lane noted for a chunk (at or before its mark, or
/// the lane's first where the lane began past it): its bit position, and
/// where the codeword is in the lane's output.
#[derive(Clone, Copy)]
struct Note {
    position: u64,
    lane: u32,
    codeword: u32,
}

/// No codeword starts at `u64::MAX`: a chunk whose note was never taken
/// reads as wrong.
const NOT_NOTED: Note = Note {
    position: u64::MAX,
    lane: 0,
    codeword: 0,
};

/// Decodes a coded block of `elements` heads in `LANES` interleaved lanes
/// and checks its sync metadata. Lane `l` covers the chunks from
/// `l * chunks / LANES` on and writes into its own buffer; returns how
/// many heads each lane wrote. With a [`MultiSymbolTable`] the lanes
/// decode several codewords per lookup while far from their ends; without
/// one (a short stream), and near the ends, one at a time.
///
/// The check: every chunk's decoder — warm-up or exception — must start
/// exactly where the codewords before the chunk end, as [`super::sync`]
/// requires; the GPU kernels check the same, so a block fails on every
/// backend or on none, with the same [`StreamProblem`]. For each chunk
/// inside it, a lane notes a codeword start near the chunk's mark (see
/// [`LaneMarks`]) — where its last round before the mark began, so that
/// the rounds never stop for a chunk; a chunk's warm-up is then decoded
/// only until it meets the lane's codewords, a few codewords typically,
/// not across the whole warm-up.
#[inline(always)]
fn decode_coded_lanes(
    code: &BlockCode,
    multi: Option<&MultiSymbolTable>,
    elements: usize,
    scratch: &mut LaneScratch,
) -> Result<[usize; LANES], StreamProblem> {
    let stream_bits = code.stream_bits;
    let chunk_count = code.geometry.chunk_count(stream_bits);
    let chunk_bits = code.geometry.chunk_bits as u64;
    let entries: &[u16; TABLE_ENTRIES] = &code.table.entries;
    scratch.notes.clear();
    scratch.notes.resize(chunk_count as usize, NOT_NOTED);

    // Lane `l` owns the codewords starting in bits begin[l]..end[l], which
    // are those of chunks first_chunk[l]..first_chunk[l + 1].
    let mut first_chunk = [0u64; LANES + 1];
    first_chunk[LANES] = chunk_count;
    let mut begin = [0u64; LANES];
    let mut end = [stream_bits; LANES];
    let mut position = [0u64; LANES];
    for lane in 1..LANES {
        let chunk = chunk_count * lane as u64 / LANES as u64;
        first_chunk[lane] = chunk;
        begin[lane] = (chunk * chunk_bits).min(stream_bits);
        end[lane - 1] = begin[lane];
        position[lane] = code.chunk_landing(chunk, code.exception(chunk));
    }
    // Where each lane started: the next lane's first chunk must start
    // where the lane before it ends.
    let landing = position;
    let mut marks: [LaneMarks; LANES] =
        std::array::from_fn(|lane| LaneMarks::new(code, lane, &first_chunk));
    // Every codeword is at least one bit, so a lane writes at most as many
    // heads as it has bits from where it starts; a round may store past
    // its last head, into the slack.
    for (lane, buffer) in scratch.heads.iter_mut().enumerate() {
        let bits = end[lane].saturating_sub(begin[lane].min(landing[lane]));
        let capacity = bits as usize + 1 + ROUND_WINDOW;
        if buffer.len() < capacity {
            buffer.resize(capacity, 0);
        }
        // A round takes at least one bit per lookup.
        let rounds = bits as usize / LOOKUPS_PER_ROUND + 1;
        if scratch.round_starts.len() < rounds {
            scratch
                .round_starts
                .resize(rounds, [RoundStart::default(); LANES]);
        }
    }
    let mut written = [0usize; LANES];

    // Fast path: all lanes decode `LOOKUPS_PER_ROUND` lookups at a time
    // from 64-bit words, for as long as the lane closest to its end (or
    // to the end of the stream, for whole-word loads) surely has them;
    // then each lane that stopped short goes on alone. No lane stops at
    // its chunks: each notes where its rounds start, and a chunk's note is
    // taken from them afterwards.
    let load_limit = (code.stream.len() as u64).saturating_sub(16) * 8;
    // A lane may start another round while it stands before this.
    let round_end = std::array::from_fn::<u64, LANES, _>(|lane| {
        end[lane].min(load_limit).saturating_sub(ROUND_BITS) + 1
    });
    match multi {
        Some(multi) => decode_rounds(
            code,
            &MultiEntries::of(multi),
            scratch,
            &mut marks,
            &mut position,
            &mut written,
            &round_end,
            &end,
        ),
        None => decode_rounds(
            code,
            &*code.table.entries,
            scratch,
            &mut marks,
            &mut position,
            &mut written,
            &round_end,
            &end,
        ),
    }
    let notes = &mut scratch.notes;
    // The rest of each lane, one codeword at a time.
    for lane in 0..LANES {
        let out = &mut scratch.heads[lane];
        loop {
            while position[lane] >= marks[lane].next {
                notes[marks[lane].chunk as usize] = Note {
                    position: position[lane],
                    lane: lane as u32,
                    codeword: written[lane] as u32,
                };
                marks[lane].advance(code);
            }
            if position[lane] >= end[lane] {
                break;
            }
            let entry = entries[(code.next_bits(position[lane]) & TABLE_MASK) as usize];
            out[written[lane]] = entry & ENTRY_SYMBOL_MASK;
            written[lane] += 1;
            position[lane] += (entry >> ENTRY_LENGTH_SHIFT) as u64;
        }
    }

    // The chunks in order, so that the first wrong one is reported.
    let mut exceptions = code.exceptions.iter().peekable();
    for chunk in 1..chunk_count {
        while exceptions.next_if(|e| (e.chunk as u64) < chunk).is_some() {}
        let exception = exceptions
            .next_if(|e| e.chunk as u64 == chunk)
            .map(|e| e.first_boundary as u32);
        let right = match (1..LANES).find(|&lane| first_chunk[lane] == chunk) {
            // The lane before ends where the lane starting here started.
            Some(lane) => landing[lane].min(stream_bits) == position[lane - 1],
            None => {
                let note = notes[chunk as usize];
                note.position != u64::MAX
                    && code.starts_right(
                        chunk,
                        exception,
                        note,
                        &scratch.heads[note.lane as usize],
                        position[note.lane as usize],
                    )
            }
        };
        if !right {
            return Err(StreamProblem::ChunkStart { chunk });
        }
    }
    if position[LANES - 1] != stream_bits {
        return Err(StreamProblem::Overrun);
    }
    let total: usize = written.iter().sum();
    if total != elements {
        return Err(StreamProblem::Count {
            codewords: total as u64,
            elements: elements as u64,
        });
    }
    Ok(written)
}

/// The lanes' rounds: all four at once from `position`, for as long as
/// each has a whole round before its `round_end`; then each lane that
/// stopped short alone. Notes every chunk mark the rounds passed, and
/// leaves each lane's position and heads written where its rounds ended.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn decode_rounds<T: RoundTable>(
    code: &BlockCode,
    table: &T,
    scratch: &mut LaneScratch,
    marks: &mut [LaneMarks; LANES],
    position: &mut [u64; LANES],
    written: &mut [usize; LANES],
    round_end: &[u64; LANES],
    end: &[u64; LANES],
) {
    let stream = code.stream;
    let mut rounds = [0usize; LANES];
    if (0..LANES).all(|lane| position[lane] < round_end[lane] && end[lane] >= ROUND_BITS) {
        let [out0, out1, out2, out3] = scratch.heads.each_mut().map(|v| v.as_mut_slice());
        let [mut l0, mut l1, mut l2, mut l3] = position.map(LaneReader::new);
        let mut round = 0;
        loop {
            // Interleaved, so that the four lanes' lookups overlap.
            let [start0, start1, start2, start3] = &mut scratch.round_starts[round];
            l0.decode_round(stream, table, out0, start0);
            l1.decode_round(stream, table, out1, start1);
            l2.decode_round(stream, table, out2, start2);
            l3.decode_round(stream, table, out3, start3);
            round += 1;
            if l0.position >= round_end[0]
                || l1.position >= round_end[1]
                || l2.position >= round_end[2]
                || l3.position >= round_end[3]
            {
                break;
            }
        }
        rounds = [round; LANES];
        *position = [l0.position, l1.position, l2.position, l3.position];
        *written = [l0.written, l1.written, l2.written, l3.written];
    }
    for lane in 0..LANES {
        if position[lane] < round_end[lane] && end[lane] >= ROUND_BITS {
            let out = scratch.heads[lane].as_mut_slice();
            let mut reader = LaneReader::new(position[lane]);
            reader.written = written[lane];
            while reader.position < round_end[lane] {
                let start = &mut scratch.round_starts[rounds[lane]][lane];
                reader.decode_round(stream, table, out, start);
                rounds[lane] += 1;
            }
            position[lane] = reader.position;
            written[lane] = reader.written;
        }
        // Each chunk the rounds passed gets the start of the last
        // round that began at or before its mark (or the lane's first
        // round, where the lane began past it).
        let starts = &scratch.round_starts[..rounds[lane]];
        let mut round = 0;
        while marks[lane].next < position[lane] && !starts.is_empty() {
            let mark = marks[lane].next;
            round = last_start_at_or_before(starts, lane, round, mark);
            scratch.notes[marks[lane].chunk as usize] = Note {
                position: starts[round][lane].position(),
                lane: lane as u32,
                codeword: starts[round][lane].written(),
            };
            marks[lane].advance(code);
        }
    }
}

/// The last of lane `lane`'s round starts from `round` on that is at or
/// before `mark` (or `round` itself, where none after it is). Galloping from
/// `round`: the next chunk's mark is a dozen rounds on, so the search stays
/// within a few cache lines instead of halving the whole lane.
fn last_start_at_or_before(
    starts: &[[RoundStart; LANES]],
    lane: usize,
    mut round: usize,
    mark: u64,
) -> usize {
    let at_or_before = |row: &[RoundStart; LANES]| row[lane].position() <= mark;
    let mut step = 1;
    while starts.get(round + step).is_some_and(at_or_before) {
        round += step;
        step *= 2;
    }
    let bracket = &starts[round + 1..(round + step).min(starts.len())];
    round + bracket.partition_point(at_or_before)
}

/// The one position per chunk near which a lane notes a codeword start:
/// the chunk's warm-up start — or, for a chunk with a sync exception or a
/// warm-up of a chunk or more, the chunk's beginning. Marks within a lane
/// increase.
struct LaneMarks {
    /// The chunk of the next mark; the lane's chunks end at `end_chunk`.
    chunk: u64,
    end_chunk: u64,
    /// The next mark; `u64::MAX` when the lane has none left.
    next: u64,
    /// The lane's next exception, as an index into the block's exceptions.
    exception: usize,
}

impl LaneMarks {
    /// The marks of lane `lane`.
    fn new(code: &BlockCode, lane: usize, first_chunk: &[u64; LANES + 1]) -> Self {
        let chunk = first_chunk[lane] + 1;
        let mut marks = LaneMarks {
            chunk,
            end_chunk: first_chunk[lane + 1],
            next: 0,
            exception: code
                .exceptions
                .partition_point(|e| (e.chunk as u64) < chunk),
        };
        marks.next = marks.position(code);
        marks
    }

    fn position(&self, code: &BlockCode) -> u64 {
        if self.chunk >= self.end_chunk {
            return u64::MAX;
        }
        let geometry = code.geometry;
        let chunk_begin = self.chunk * geometry.chunk_bits as u64;
        let excepted = code
            .exceptions
            .get(self.exception)
            .is_some_and(|e| e.chunk as u64 == self.chunk);
        if excepted || geometry.warmup_bits >= geometry.chunk_bits {
            chunk_begin
        } else {
            chunk_begin - geometry.warmup_bits as u64
        }
    }

    fn advance(&mut self, code: &BlockCode) {
        if code
            .exceptions
            .get(self.exception)
            .is_some_and(|e| e.chunk as u64 == self.chunk)
        {
            self.exception += 1;
        }
        self.chunk += 1;
        self.next = self.position(code);
    }
}

impl BlockCode<'_> {
    /// Whether chunk `chunk` (inside a lane) starts where the codewords
    /// before it end, given the lane's `note` for it (see [`LaneMarks`])
    /// and the lane's codewords, which end at `lane_end`. The chunk's
    /// warm-up path and the lane's codewords are walked side by side: once
    /// they meet, the warm-up is sure to land on the chunk's first codeword.
    fn starts_right(
        &self,
        chunk: u64,
        exception: Option<u32>,
        note: Note,
        symbols: &[u16],
        lane_end: u64,
    ) -> bool {
        let chunk_begin = chunk * self.geometry.chunk_bits as u64;
        // The lane's codeword starts, from the noted one on.
        let mut truth = note.position;
        let mut codeword = note.codeword as usize;
        // Where the chunk's decoder starts, or `None` where its warm-up
        // met the lane's codewords before the chunk: from there on the two
        // are the same, so it starts at the chunk's first codeword.
        let start = match exception {
            Some(boundary) => Some(chunk_begin + boundary as u64),
            None if self.geometry.warmup_bits >= self.geometry.chunk_bits => {
                Some(self.chunk_landing(chunk, None))
            }
            None => {
                // Whichever is behind steps; without branches on which, as
                // that alternates unpredictably.
                let mut path = self.geometry.decode_start(chunk, None);
                while path < chunk_begin && path != truth {
                    let path_step = self.length_at(path);
                    let truth_step = self.lengths[symbols[codeword] as usize] as u64;
                    let behind = path < truth;
                    path += if behind { path_step } else { 0 };
                    truth += if behind { 0 } else { truth_step };
                    codeword += usize::from(!behind);
                }
                if path < chunk_begin {
                    // They met: the warm-up starts the chunk at its first
                    // codeword, within the stream unless the lane's last
                    // codeword ran past it.
                    if lane_end <= self.stream_bits {
                        return true;
                    }
                    None
                } else {
                    Some(path)
                }
            }
        };
        // The chunk's first codeword: where the codewords before it end.
        while truth < chunk_begin {
            truth += self.lengths[symbols[codeword] as usize] as u64;
            codeword += 1;
        }
        // A start past the stream's end counts as at its end, so that a last
        // codeword past the end breaks the next chunk's start, as on a GPU.
        start.unwrap_or(truth).min(self.stream_bits) == truth
    }
}

/// Lookups each lane makes between refills: four of at most 12 bits fit
/// in the 57 bits a refill guarantees.
const LOOKUPS_PER_ROUND: usize = 4;
/// The most bits a round takes.
const ROUND_BITS: u64 = MAX_CODE_BITS as u64 * LOOKUPS_PER_ROUND as u64;
/// The heads a round may write into, from where it starts: each lookup
/// stores a whole entry's four slots at an offset of at most 12, masked to
/// 15 so that the bound is plain to the compiler.
const ROUND_WINDOW: usize = 16 + MULTI_SYMBOLS - 1;

/// What a lane's rounds look the next 12 bits up in: up to four symbols,
/// as a [`MultiSymbolTable`] gives them, and the step that reads them
/// (see [`multi_step`]). The one-symbol table gives one, and costs
/// nothing to fill: short streams use it.
trait RoundTable {
    /// Every entry holds exactly one symbol: a round stores one head per
    /// lookup, and reads no count.
    const ONE_SYMBOL: bool;
    /// The symbols and the step for the low 12 bits of `bits`.
    fn round_entry(&self, bits: u64) -> (u64, u64);
}

/// A [`MultiSymbolTable`]'s symbols and steps: their bare arrays, so that
/// the rounds keep their addresses in registers instead of reloading a
/// field after every store of heads.
struct MultiEntries<'a> {
    symbols: &'a [u64; TABLE_ENTRIES],
    steps: &'a [u16; TABLE_ENTRIES],
}

impl<'a> MultiEntries<'a> {
    fn of(table: &'a MultiSymbolTable) -> Self {
        let (symbols, steps) = table.entries();
        MultiEntries { symbols, steps }
    }
}

impl RoundTable for MultiEntries<'_> {
    const ONE_SYMBOL: bool = false;

    #[inline(always)]
    fn round_entry(&self, bits: u64) -> (u64, u64) {
        let index = (bits & TABLE_MASK) as usize;
        (self.symbols[index], self.steps[index] as u64)
    }
}

/// A [`DecodeTable`]'s entries.
impl RoundTable for [u16; TABLE_ENTRIES] {
    const ONE_SYMBOL: bool = true;

    #[inline(always)]
    fn round_entry(&self, bits: u64) -> (u64, u64) {
        let entry = self[(bits & TABLE_MASK) as usize];
        let length = (entry >> ENTRY_LENGTH_SHIFT) as u32;
        (
            (entry & ENTRY_SYMBOL_MASK) as u64,
            multi_step(length, 1) as u64,
        )
    }
}

/// Where a round of a lane starts: a codeword start, and how many heads
/// the lane wrote before it, in one word (one store a round). A block's
/// stream is shorter than 2^24 bits (at most 2^20 codes of at most 12
/// bits, as its index is checked to say), so both fit 32 bits.
#[derive(Clone, Copy, Default)]
struct RoundStart(u64);

impl RoundStart {
    fn new(position: u64, written: usize) -> Self {
        RoundStart(position << 32 | written as u64)
    }

    fn position(self) -> u64 {
        self.0 >> 32
    }

    fn written(self) -> u32 {
        self.0 as u32
    }
}

/// One lane's reader: its position in the stream and the heads it wrote.
/// Two registers a lane between rounds.
struct LaneReader {
    position: u64,
    written: usize,
}

impl LaneReader {
    fn new(position: u64) -> Self {
        LaneReader {
            position,
            written: 0,
        }
    }

    /// Decodes `LOOKUPS_PER_ROUND` lookups' codewords into `out` after the
    /// heads written so far, noting in `start` where the round starts; the
    /// position must be at least 16 bytes before the end of `stream`.
    #[inline(always)]
    fn decode_round<T: RoundTable>(
        &mut self,
        stream: &[u8],
        table: &T,
        out: &mut [u16],
        start: &mut RoundStart,
    ) {
        *start = RoundStart::new(self.position, self.written);
        let byte = (self.position / 8) as usize;
        let mut word = u64::from_le_bytes(stream[byte..byte + 8].try_into().expect("eight bytes"))
            >> (self.position % 8);
        let window: &mut [u16; ROUND_WINDOW] = (&mut out[self.written..][..ROUND_WINDOW])
            .try_into()
            .expect("a round's window");
        // The lookups' steps summed: bits read in the low byte, heads
        // written above.
        let mut steps = 0u64;
        for lookup in 0..LOOKUPS_PER_ROUND {
            let (symbols, step) = table.round_entry(word);
            if T::ONE_SYMBOL {
                window[lookup] = symbols as u16;
            } else {
                let slots: [u16; MULTI_SYMBOLS] = bytemuck::cast(symbols.to_ne_bytes());
                let offset = (steps >> MULTI_STEP_COUNT_SHIFT) as usize & 15;
                window[offset..offset + MULTI_SYMBOLS].copy_from_slice(&slots);
            }
            steps += step;
            // A shift reads the step's low six bits: its length.
            word = word.wrapping_shr(step as u32);
        }
        self.position += steps & 0xFF;
        self.written += (steps >> MULTI_STEP_COUNT_SHIFT) as usize;
    }
}

/// Joins the heads of the elements from `first_element` on, which need
/// not start a byte of the rest plane: those before the first that does
/// are joined one at a time, the others by [`join_block`].
#[inline(always)]
fn join_segment<const AVX2: bool>(
    split: &FieldSplit,
    heads: &[u16],
    rest: &[u8],
    first_element: u64,
    join_table: &mut Option<(FieldSplit, Vec<u8>)>,
    out: &mut [u8],
) {
    let stored_bits = split.stored_rest_bits();
    let width = split.kind.width_bytes();
    let lead = if stored_bits.is_multiple_of(8) {
        0
    } else {
        ((8 - first_element % 8) % 8).min(heads.len() as u64) as usize
    };
    for (k, (element, &head)) in out.chunks_exact_mut(width).zip(&heads[..lead]).enumerate() {
        let field = peek_bits(
            rest,
            (first_element + k as u64) * stored_bits as u64,
            stored_bits,
        );
        let value = split.join(head as u32, field);
        element.copy_from_slice(&value.to_le_bytes()[..width]);
    }
    join_block::<AVX2>(
        split,
        &heads[lead..],
        rest,
        first_element + lead as u64,
        join_table,
        &mut out[lead * width..],
    );
}

/// Rebuilds the elements of one block from its heads and the rest plane.
/// The common splits (a whole-byte rest of 8 or 24 bits, no rest at all)
/// have their own loops; the others read the rest bits as a stream.
#[inline(always)]
fn join_block<const AVX2: bool>(
    split: &FieldSplit,
    heads: &[u16],
    rest: &[u8],
    first_element: u64,
    join_table: &mut Option<(FieldSplit, Vec<u8>)>,
    out: &mut [u8],
) {
    let stored_bits = split.stored_rest_bits();
    let kind = split.kind;
    // The first element is a block's or join_segment's first after its
    // lead, a multiple of 8, so its rest starts on a byte.
    let rest = &rest[(first_element * stored_bits as u64 / 8) as usize..];
    let exponent_first = !split.sign_in_head;
    match (kind.width_bytes(), stored_bits, split.rest_const_bits) {
        (2, 8, 0) if exponent_first => {
            // Sliced to one length, so the loop has no bounds checks and
            // vectorises.
            let count = heads.len();
            let (out, rest) = (&mut out[..2 * count], &rest[..count]);
            for i in 0..count {
                let (head, rest) = (heads[i] as u8, rest[i]);
                out[2 * i] = head << 7 | rest & 0x7F;
                out[2 * i + 1] = rest & 0x80 | head >> 1;
            }
        }
        (2, 7, 0) if split.sign_in_head => {
            // Sign first, nine head bits (BF16; FP16 with three mantissa
            // bits): eight rests of seven bits fill seven bytes, read with
            // one load and constant shifts, in fixed-size groups so that
            // the loop over a group unrolls.
            let joined = joined_with_avx2::<AVX2>(Avx2Join::SevenBitRests, heads, rest, out);
            let (heads, rest, out) = (
                &heads[joined..],
                &rest[joined / 8 * 7..],
                &mut out[joined * 2..],
            );
            let groups = heads.len() / 8;
            let (out_groups, _) = out.as_chunks_mut::<16>();
            let (head_groups, _) = heads.as_chunks::<8>();
            for (group, (elements, heads)) in out_groups.iter_mut().zip(head_groups).enumerate() {
                let fields = load_le_u64_padded(rest, group * 7);
                for k in 0..8 {
                    let element = heads[k] << 7 | (fields >> (7 * k) & 0x7F) as u16;
                    elements[2 * k..2 * k + 2].copy_from_slice(&element.to_le_bytes());
                }
            }
            let mut fields = FieldReader::new(&rest[groups * 7..]);
            for (pair, &head) in out[groups * 16..]
                .chunks_exact_mut(2)
                .zip(&heads[groups * 8..])
            {
                let element = head << 7 | fields.take(7) as u16;
                pair.copy_from_slice(&element.to_le_bytes());
            }
        }
        (4, 23, 0) if split.sign_in_head => {
            // Sign first, nine head bits (F32): eight rests of 23 bits fill
            // 23 bytes, read at constant offsets.
            let joined = joined_with_avx2::<AVX2>(Avx2Join::F32SignFirst, heads, rest, out);
            let (heads, rest, out) = (
                &heads[joined..],
                &rest[joined / 8 * 23..],
                &mut out[joined * 4..],
            );
            let groups = heads.len() / 8;
            let (out_groups, _) = out.as_chunks_mut::<32>();
            let (head_groups, _) = heads.as_chunks::<8>();
            let (rest_groups, _) = rest.as_chunks::<23>();
            for ((elements, heads), fields) in
                out_groups.iter_mut().zip(head_groups).zip(rest_groups)
            {
                let mut bytes = [0u8; 24];
                bytes[..23].copy_from_slice(fields);
                for k in 0..8 {
                    let (byte, shift) = (23 * k / 8, 23 * k % 8);
                    let word = u32::from_le_bytes([
                        bytes[byte],
                        bytes[byte + 1],
                        bytes[byte + 2],
                        bytes[byte + 3],
                    ]);
                    let element = (heads[k] as u32) << 23 | word >> shift & 0x7F_FFFF;
                    elements[4 * k..4 * k + 4].copy_from_slice(&element.to_le_bytes());
                }
            }
            let mut fields = FieldReader::new(&rest[groups * 23..]);
            for (quad, &head) in out[groups * 32..]
                .chunks_exact_mut(4)
                .zip(&heads[groups * 8..])
            {
                let element = (head as u32) << 23 | fields.take(23);
                quad.copy_from_slice(&element.to_le_bytes());
            }
        }
        (4, 24, 0) if exponent_first => {
            let joined = joined_with_avx2::<AVX2>(Avx2Join::F32ExponentFirst, heads, rest, out);
            let (heads, rest, out) = (
                &heads[joined..],
                &rest[joined * 3..],
                &mut out[joined * 4..],
            );
            for ((quad, &head), rest) in
                out.chunks_exact_mut(4).zip(heads).zip(rest.chunks_exact(3))
            {
                let rest = u32::from_le_bytes([rest[0], rest[1], rest[2], 0]);
                let element = (rest >> 23) << 31 | (head as u32) << 23 | rest & 0x7F_FFFF;
                quad.copy_from_slice(&element.to_le_bytes());
            }
        }
        (1, 0, 0) => {
            // The head is the whole byte, rotated exponent first.
            for (element, &head) in out.iter_mut().zip(heads) {
                *element = if exponent_first {
                    (head as u8).rotate_right(1)
                } else {
                    head as u8
                };
            }
        }
        (1, 1, 0) if exponent_first => {
            let joined = joined_with_avx2::<AVX2>(Avx2Join::ByteSigns, heads, rest, out);
            join_signs(&heads[joined..], &rest[joined / 8..], &mut out[joined..]);
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

/// The joins with an AVX2 form.
#[derive(Clone, Copy)]
enum Avx2Join {
    F32SignFirst,
    F32ExponentFirst,
    /// Sign first, nine head bits, 16-bit elements (BF16, FP16).
    SevenBitRests,
    /// Exponent first, seven head bits, one-byte elements (FP8).
    ByteSigns,
}

/// How many of the elements (a multiple of eight) the AVX2 form of `join`
/// joined: none unless this is the decoder's AVX2 build.
#[inline(always)]
fn joined_with_avx2<const AVX2: bool>(
    join: Avx2Join,
    heads: &[u16],
    rest: &[u8],
    out: &mut [u8],
) -> usize {
    #[cfg(target_arch = "x86_64")]
    if AVX2 {
        // SAFETY: the AVX2 build runs only where the core has AVX2.
        return unsafe {
            match join {
                Avx2Join::F32SignFirst => super::avx2::join_f32_sign_first(heads, rest, out),
                Avx2Join::F32ExponentFirst => {
                    super::avx2::join_f32_exponent_first(heads, rest, out)
                }
                Avx2Join::SevenBitRests => super::avx2::join_16bit_sign_first(heads, rest, out),
                Avx2Join::ByteSigns => super::avx2::join_byte_signs(heads, rest, out),
            }
        };
    }
    let _ = (join, heads, rest, out);
    0
}

/// The join of one-byte elements whose rest is the sign alone (a 7-bit
/// head): each byte of the rest plane holds eight signs, which
/// [`SIGN_BYTES`] spreads onto the top bits of eight heads at once.
#[inline(always)]
fn join_signs(heads: &[u16], rest: &[u8], out: &mut [u8]) {
    let groups = heads.len() / 8;
    for ((elements, heads), &signs) in out
        .chunks_exact_mut(8)
        .zip(heads.chunks_exact(8))
        .zip(&rest[..groups])
    {
        let heads = u64::from_le_bytes(std::array::from_fn(|k| heads[k] as u8));
        elements.copy_from_slice(&(heads | SIGN_BYTES[signs as usize]).to_le_bytes());
    }
    for (k, (element, &head)) in out[groups * 8..]
        .iter_mut()
        .zip(&heads[groups * 8..])
        .enumerate()
    {
        *element = head as u8 | (rest[groups] >> k & 1) << 7;
    }
}

/// `SIGN_BYTES[b]` has bit 7 of its byte `k` set when bit `k` of `b` is.
const SIGN_BYTES: [u64; 256] = {
    let mut table = [0u64; 256];
    let mut byte = 0;
    while byte < 256 {
        let mut k = 0;
        while k < 8 {
            if byte >> k & 1 == 1 {
                table[byte] |= 0x80 << (8 * k);
            }
            k += 1;
        }
        byte += 1;
    }
    table
};

/// Every one-byte element, indexed by `rest field << 8 | head`: at most
/// 2^4 × 256 entries.
fn byte_join_table(split: &FieldSplit) -> Vec<u8> {
    (0..256u32 << split.stored_rest_bits())
        .map(|key| split.join(key & 0xFF, key >> 8) as u8)
        .collect()
}

/// The join for one-byte elements with a rest, through their join table.
#[inline(always)]
fn join_bytes(stored_bits: u32, table: &[u8], heads: &[u16], rest: &[u8], out: &mut [u8]) {
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
#[inline(always)]
fn join_packed<const WIDTH: usize>(split: &FieldSplit, heads: &[u16], rest: &[u8], out: &mut [u8]) {
    // FieldSplit::join with its parameters hoisted out of the loop; the
    // rest is never empty here. Sign first, the sign is the head's: it
    // stays at the rest's top, which no bit of the rest reaches (a shift
    // of the sign to bit 31 and back is the identity).
    let stored_bits = split.stored_rest_bits();
    let (low_bits, sign_shift) = if split.sign_in_head {
        (split.rest_bits(), split.rest_bits())
    } else {
        (split.rest_bits() - 1, WIDTH as u32 * 8 - 1)
    };
    let low_mask = (1u32 << low_bits) - 1;
    let (const_bits, const_value) = (split.rest_const_bits, split.rest_const_value);
    let join = |head: u16, field: u32| {
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
    let (heads, rest) = (&heads[grouped * 8..], &rest[grouped * group_bytes..]);
    // Up to 25 bits, a field lies within the four bytes from its first: one
    // unaligned load each, for as long as four bytes remain.
    let loaded = if (17..=25).contains(&stored_bits) {
        let fits = |i: usize| (i * stored_bits as usize) / 8 + 4 <= rest.len();
        let count = heads.len();
        let mut loaded = count;
        while loaded > 0 && !fits(loaded - 1) {
            loaded -= 1;
        }
        let field_mask = (1u32 << stored_bits) - 1;
        for (i, (element, &head)) in tail_out
            .chunks_exact_mut(WIDTH)
            .zip(&heads[..loaded])
            .enumerate()
        {
            let bit = i * stored_bits as usize;
            let word =
                u32::from_le_bytes(rest[bit / 8..bit / 8 + 4].try_into().expect("four bytes"));
            let field = word >> (bit % 8) & field_mask;
            element.copy_from_slice(&join(head, field).to_le_bytes()[..WIDTH]);
        }
        loaded
    } else {
        0
    };
    let mut fields = FieldReader::new(&rest[loaded * stored_bits as usize / 8..]);
    // Whole bytes only were skipped unless every field was loaded.
    let skipped_bits = (loaded * stored_bits as usize % 8) as u32;
    if loaded < heads.len() && skipped_bits > 0 {
        fields.take(skipped_bits);
    }
    for (element, &head) in tail_out[loaded * WIDTH..]
        .chunks_exact_mut(WIDTH)
        .zip(&heads[loaded..])
    {
        let value = join(head, fields.take(stored_bits));
        element.copy_from_slice(&value.to_le_bytes()[..WIDTH]);
    }
}

/// Decodes one coded block chunk by chunk, each chunk independently from
/// its warm-up start or exception, as a GPU workgroup does, and returns the
/// heads. It checks only that they are as many as the block's elements (the
/// tests compare them with the sequential decode); where each chunk starts
/// is checked by [`decode_blocks`].
pub fn decode_block_by_chunks(
    view: &EncodedView,
    index: &BlockIndex,
    block: usize,
) -> Result<Vec<u16>, CodecError> {
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
            problem: StreamProblem::Count {
                codewords: heads.len() as u64,
                elements: elements as u64,
            },
        });
    }
    Ok(heads)
}

/// Histogram of every head of a tensor, decoding only the heads; a
/// constant block costs nothing, so the time follows the stored bytes,
/// not the element count.
pub fn head_histogram(view: &EncodedView, index: &BlockIndex) -> Result<Histogram, CodecError> {
    (0..index.blocks.len())
        .into_par_iter()
        .map(|block| {
            let elements = view.params.block_len(block as u64) as usize;
            if let BlockMode::Constant(head) = index.blocks[block].mode {
                let mut histogram = [0u64; ALPHABET];
                histogram[head as usize] = elements as u64;
                return Ok(histogram);
            }
            SCRATCH.with_borrow_mut(|scratch| {
                if scratch.heads.len() < elements {
                    scratch.heads.resize(elements, 0);
                }
                let mut heads = std::mem::take(&mut scratch.heads);
                let result = decode_heads(view, index, block, scratch, &mut heads[..elements]);
                let mut histogram = [0u64; ALPHABET];
                for &head in &heads[..elements] {
                    histogram[head as usize] += 1;
                }
                scratch.heads = heads;
                result.map(|()| histogram)
            })
        })
        .try_reduce(
            || [0u64; ALPHABET],
            |mut total, part| {
                stats::add_into(&mut total, &part);
                Ok(total)
            },
        )
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};

    use super::*;
    use crate::codec::{EncodeOptions, EncodedTensor, FloatKind, encode};
    use crate::synth;

    /// Decodes coded block `block` of `tensor`, whose head plane is
    /// replaced by `head` and the block's exceptions by `exceptions`, with
    /// the multi-symbol table or one codeword at a time: the heads, or the
    /// problem found.
    fn decode_lanes(
        tensor: &EncodedTensor,
        index: &BlockIndex,
        block: usize,
        head: &[u8],
        exceptions: &[ChunkException],
        several_per_lookup: bool,
    ) -> Result<Vec<u16>, StreamProblem> {
        let entry = &index.blocks[block];
        let BlockMode::Coded { table } = entry.mode else {
            unreachable!("only coded blocks are compared")
        };
        let t = table as usize;
        let lengths = &index.tables[t];
        let single = DecodeTable::new(lengths, index.table_max_len[t] as u32);
        let mut multi = MultiSymbolTable::default();
        multi.rebuild(lengths);
        let code = BlockCode {
            stream: &head[entry.stream_offset as usize..][..entry.stream_bits.div_ceil(8) as usize],
            stream_bits: entry.stream_bits,
            table: &single,
            lengths,
            geometry: tensor.params.geometry,
            exceptions,
        };
        let elements = tensor.params.block_len(block as u64) as usize;
        let mut scratch = LaneScratch::default();
        let written = decode_coded_lanes(
            &code,
            several_per_lookup.then_some(&multi),
            elements,
            &mut scratch,
        )?;
        Ok((0..LANES)
            .flat_map(|lane| scratch.heads[lane][..written[lane]].to_vec())
            .collect())
    }

    /// Rounds through the multi-symbol table against rounds of one
    /// codeword per lookup, on whole blocks, intact (against the original
    /// heads) and with bits of their streams flipped or their sync
    /// exceptions moved: the same heads, or the same problem.
    #[test]
    fn several_codewords_per_lookup_decode_as_one_at_a_time() {
        let mut rng = rand_pcg::Pcg64Mcg::seed_from_u64(2027);
        let geometries = [
            (None, 64),
            (Some(64), 8),
            (Some(1024), 1024),
            (Some(192), 100),
        ];
        let mut compared = [0usize; 2];
        for (case, kind) in [
            FloatKind::Bf16,
            FloatKind::F16,
            FloatKind::F8E4M3,
            FloatKind::F32,
        ]
        .into_iter()
        .enumerate()
        {
            let (chunk_bits, warmup_bits) = geometries[case];
            let options = EncodeOptions {
                block_elements: 1 << 14,
                chunk_bits,
                warmup_bits,
                ..EncodeOptions::default()
            };
            let bytes = synth::heavy_tailed_bytes(kind, 3 << 14, case as u64);
            let tensor = encode(kind, &bytes, &options).unwrap();
            let index = BlockIndex::parse(&tensor.view()).unwrap();
            for block in 0..index.blocks.len() {
                if !matches!(index.blocks[block].mode, BlockMode::Coded { .. }) {
                    continue;
                }
                let exceptions = index.block_exceptions(block).to_vec();
                let entry = &index.blocks[block];
                for trial in 0..60 {
                    let mut head = tensor.head.clone();
                    let mut moved = exceptions.clone();
                    if trial > 0 {
                        for _ in 0..rng.random_range(1..4) {
                            let bit =
                                entry.stream_offset * 8 + rng.random_range(0..entry.stream_bits);
                            head[(bit / 8) as usize] ^= 1 << (bit % 8);
                        }
                    }
                    if trial % 3 == 2
                        && let Some(exception) = moved.first_mut()
                    {
                        exception.first_boundary = exception.first_boundary.wrapping_add(1);
                    }
                    let several = decode_lanes(&tensor, &index, block, &head, &moved, true);
                    let one = decode_lanes(&tensor, &index, block, &head, &moved, false);
                    assert_eq!(several, one, "{kind} block {block}, trial {trial}");
                    if trial == 0 {
                        let start = block * options.block_elements as usize;
                        let expected: Vec<u16> = (start..start + several.as_ref().unwrap().len())
                            .map(|i| tensor.params.split.split(kind.load(&bytes, i)).0 as u16)
                            .collect();
                        assert_eq!(several.unwrap(), expected, "{kind} block {block}");
                    }
                    compared[usize::from(trial > 0)] += 1;
                }
            }
        }
        assert!(
            compared[0] >= 8,
            "too few blocks took the multi-symbol path: {compared:?}"
        );
    }

    /// The decoder compiled for AVX2 and BMI2 (where the core has them)
    /// and the portable one rebuild the same bytes.
    #[test]
    fn the_portable_decoder_and_the_dispatched_one_agree() {
        let (mut sign_first, mut byte_signs) = (0, 0);
        for (seed, kind) in FloatKind::ALL.into_iter().enumerate() {
            for positive in [false, true] {
                let mut bytes = synth::heavy_tailed_bytes(kind, (1 << 16) + 77, seed as u64);
                if positive {
                    // Signs cleared: a sign-first split.
                    let width = kind.width_bytes();
                    bytes
                        .iter_mut()
                        .skip(width - 1)
                        .step_by(width)
                        .for_each(|b| *b &= 0x7F);
                }
                let tensor = encode(kind, &bytes, &EncodeOptions::default()).unwrap();
                let split = tensor.params.split;
                sign_first += usize::from(split.sign_in_head);
                byte_signs += usize::from(
                    kind.width_bytes() == 1 && !split.sign_in_head && split.stored_rest_bits() == 1,
                );
                agree(kind, &bytes, &tensor);
            }
        }
        assert!(sign_first >= 3, "only {sign_first} sign-first tensors");
        assert!(byte_signs >= 1, "no FP8 tensor whose rest is its sign");
    }

    /// Decodes every block of `tensor` with the portable build and the
    /// dispatched one, and compares both with `bytes`.
    fn agree(kind: FloatKind, bytes: &[u8], tensor: &EncodedTensor) {
        let view = tensor.view();
        let index = BlockIndex::parse(&view).unwrap();
        let block_bytes = tensor.params.block_elements as usize * kind.width_bytes();
        let mut scratch = BlockScratch::default();
        for (block, original) in bytes.chunks(block_bytes).enumerate() {
            let mut portable = vec![0; original.len()];
            let mut dispatched = vec![0; original.len()];
            decode_block_portable(&view, &index, block, &mut scratch, &mut portable).unwrap();
            decode_block(&view, &index, block, &mut scratch, &mut dispatched).unwrap();
            assert!(portable == original, "{kind} block {block}: portable");
            assert!(dispatched == original, "{kind} block {block}: dispatched");
        }
    }
}

//! What the GPU decoders read, built on the host from a validated block
//! index: fixed-size block descriptors, code tables in canonical form, sync
//! exceptions, and the cutting of a large tensor into *segments* that each
//! fit the device's limits. The WGSL shader and the CUDA kernel read exactly
//! these layouts; every offset in them has been checked here against the
//! planes' real sizes, so no kernel can read or write out of bounds.
//!
//! This file is the one source of the constants and struct layouts that
//! `shaders/decode.wgsl` and `kernels/decode.cu` repeat: `tests/kernel_layout.rs`
//! compares the shader's with these (naga reflects them), and the CPU
//! execution of the CUDA kernel (`tests/cuda_on_cpu.rs`) compiles the
//! kernel against static assertions generated from them.

use std::ops::Range;

use bytemuck::{Pod, Zeroable};

use crate::codec::huffman::{self, ALPHABET, MAX_CODE_BITS};
use crate::codec::index::{BlockIndex, BlockMode};
use crate::codec::table::CodeLengths;
use crate::codec::{EncodedView, StreamProblem, TensorParams};
use crate::error::{Error, Result};

/// Threads per workgroup (CUDA: per thread block). One workgroup decodes
/// one block.
pub const WORKGROUP_SIZE: u32 = 256;

pub const BLOCK_RAW: u32 = 0;
pub const BLOCK_CONSTANT: u32 = 1;
pub const BLOCK_CODED: u32 = 2;

/// u32 words per code table: the symbols in canonical order (two 16-bit
/// symbols per word), then per code length 1..=12 `first_code |
/// first_index << TABLE_INDEX_SHIFT | count << TABLE_COUNT_SHIFT`.
pub const TABLE_WORDS: usize = ALPHABET / 2 + MAX_CODE_BITS as usize;
/// Where the per-length words start in a table.
pub const TABLE_LENGTHS: usize = ALPHABET / 2;
/// Where a per-length word's 10-bit `first_index` (0..=512) starts, above
/// the 12-bit `first_code`.
pub const TABLE_INDEX_SHIFT: u32 = 12;
/// Where a per-length word's 10-bit symbol `count` (0..=512) starts.
pub const TABLE_COUNT_SHIFT: u32 = 22;
/// A chunk without a sync exception.
pub const NO_EXCEPTION: u32 = u32::MAX;

/// Entries of a kernel's decode table: one per window of `MAX_CODE_BITS`
/// stream bits, the first in bit 0.
pub const DECODE_ENTRIES: u32 = 1 << MAX_CODE_BITS;
pub const WINDOW_MASK: u32 = DECODE_ENTRIES - 1;
/// A decode table entry: the symbol of the window's first codeword and
/// its length, as the CPU decoder's entry holds them (the compact shader
/// keeps just that, two a word); when the second codeword is whole in the
/// window too, `ENTRY_PAIR` and its symbol; and on top the length of what
/// the entry decodes, one codeword or two, where one instruction adds it to
/// a position. Beside it, per window a byte of how many whole codewords the
/// window holds (up to four) and their total length above them.
pub const ENTRY_SYMBOL_MASK: u32 = huffman::ENTRY_SYMBOL_MASK as u32;
pub const ENTRY_LENGTH_SHIFT: u32 = huffman::ENTRY_LENGTH_SHIFT;
pub const ENTRY_LENGTH_MASK: u32 = 0xF;
pub const ENTRY_PAIR: u32 = 0x2000;
pub const ENTRY_SECOND_SHIFT: u32 = 16;
pub const ENTRY_STEP_SHIFT: u32 = 28;
pub const WINDOW_BITS_SHIFT: u32 = 4;
pub const WINDOW_COUNT_MASK: u32 = 0xF;

/// A thread's run of elements starts and ends on a multiple of
/// `RUN_ELEMENTS` (but at a block's end), which the fast write paths decode
/// a group at a time and store in vectors of `VECTOR_BYTES`.
pub const RUN_ELEMENTS: u32 = 16;
pub const VECTOR_BYTES: u32 = 16;

/// The kernels' write paths (`Params::fast_layout`): layouts with a path of
/// their own, by element width in bits, stored rest bits and head form; any
/// other goes a word at a time (`LAYOUT_GENERIC`).
pub const LAYOUT_GENERIC: u32 = 0;
/// BF16 and F16, exponent first with an 8-bit head.
pub const LAYOUT_16_REST_8: u32 = 1;
/// BF16, sign first with a 9-bit head.
pub const LAYOUT_16_SIGNED_REST_7: u32 = 2;
/// F32, exponent first with an 8-bit head.
pub const LAYOUT_32_REST_24: u32 = 3;
/// F32, sign first with a 9-bit head.
pub const LAYOUT_32_SIGNED_REST_23: u32 = 4;
/// FP8, exponent first with a 7-bit head: the sign is the rest.
pub const LAYOUT_8_REST_1: u32 = 5;
/// FP8, exponent first with an 8-bit head: the whole element, rotated.
pub const LAYOUT_8_WHOLE: u32 = 6;

/// What a workgroup reports for its block, in its status word:
/// `problem | detail << STATUS_DETAIL_SHIFT`, 0 when the block decoded.
/// The problems are [`StreamProblem`]'s, in its order.
pub const STATUS_OK: u32 = 0;
/// A chunk (the detail) does not start where the codewords before it end.
pub const STATUS_CHUNK_START: u32 = 1;
/// The last codeword runs past the stream's end (detail: the last chunk).
pub const STATUS_OVERRUN: u32 = 2;
/// The chunks hold a number of codewords (the detail) other than the
/// block's elements.
pub const STATUS_COUNT: u32 = 3;
/// The work list names a block the dispatch does not have.
pub const STATUS_NO_BLOCK: u32 = 4;
pub const STATUS_DETAIL_SHIFT: u32 = 4;
/// No problem found yet: higher than every status, so that the kernels'
/// atomic minimum replaces it with any problem found and keeps the lowest.
pub const STATUS_NONE: u32 = u32::MAX;

/// The kernels' constants, by the names both kernels give them.
pub const KERNEL_CONSTANTS: [(&str, u32); 37] = [
    ("WORKGROUP_SIZE", WORKGROUP_SIZE),
    ("BLOCK_RAW", BLOCK_RAW),
    ("BLOCK_CONSTANT", BLOCK_CONSTANT),
    ("BLOCK_CODED", BLOCK_CODED),
    ("MAX_CODE_BITS", MAX_CODE_BITS),
    ("TABLE_WORDS", TABLE_WORDS as u32),
    ("TABLE_LENGTHS", TABLE_LENGTHS as u32),
    ("TABLE_INDEX_SHIFT", TABLE_INDEX_SHIFT),
    ("TABLE_COUNT_SHIFT", TABLE_COUNT_SHIFT),
    ("DECODE_ENTRIES", DECODE_ENTRIES),
    ("WINDOW_MASK", WINDOW_MASK),
    ("ENTRY_SYMBOL_MASK", ENTRY_SYMBOL_MASK),
    ("ENTRY_LENGTH_SHIFT", ENTRY_LENGTH_SHIFT),
    ("ENTRY_LENGTH_MASK", ENTRY_LENGTH_MASK),
    ("ENTRY_PAIR", ENTRY_PAIR),
    ("ENTRY_SECOND_SHIFT", ENTRY_SECOND_SHIFT),
    ("ENTRY_STEP_SHIFT", ENTRY_STEP_SHIFT),
    ("WINDOW_BITS_SHIFT", WINDOW_BITS_SHIFT),
    ("WINDOW_COUNT_MASK", WINDOW_COUNT_MASK),
    ("NO_EXCEPTION", NO_EXCEPTION),
    ("RUN_ELEMENTS", RUN_ELEMENTS),
    ("VECTOR_BYTES", VECTOR_BYTES),
    ("PADDING_WORDS", PLANE_PADDING_WORDS as u32),
    ("LAYOUT_GENERIC", LAYOUT_GENERIC),
    ("LAYOUT_16_REST_8", LAYOUT_16_REST_8),
    ("LAYOUT_16_SIGNED_REST_7", LAYOUT_16_SIGNED_REST_7),
    ("LAYOUT_32_REST_24", LAYOUT_32_REST_24),
    ("LAYOUT_32_SIGNED_REST_23", LAYOUT_32_SIGNED_REST_23),
    ("LAYOUT_8_REST_1", LAYOUT_8_REST_1),
    ("LAYOUT_8_WHOLE", LAYOUT_8_WHOLE),
    ("STATUS_OK", STATUS_OK),
    ("STATUS_CHUNK_START", STATUS_CHUNK_START),
    ("STATUS_OVERRUN", STATUS_OVERRUN),
    ("STATUS_COUNT", STATUS_COUNT),
    ("STATUS_NO_BLOCK", STATUS_NO_BLOCK),
    ("STATUS_DETAIL_SHIFT", STATUS_DETAIL_SHIFT),
    ("STATUS_NONE", STATUS_NONE),
];

/// The problem a block's status word reports, if any, for a block of
/// `elements` elements.
pub(crate) fn status_problem(
    status: u32,
    elements: u64,
) -> Option<std::result::Result<StreamProblem, u32>> {
    let detail = (status >> STATUS_DETAIL_SHIFT) as u64;
    match status & ((1 << STATUS_DETAIL_SHIFT) - 1) {
        _ if status == STATUS_OK => None,
        STATUS_CHUNK_START => Some(Ok(StreamProblem::ChunkStart { chunk: detail })),
        STATUS_OVERRUN => Some(Ok(StreamProblem::Overrun)),
        STATUS_COUNT => Some(Ok(StreamProblem::Count {
            codewords: detail,
            elements,
        })),
        _ => Some(Err(status)),
    }
}

/// Words of zero padding after the head and rest planes (`PADDING_WORDS`
/// in the kernels). A thread checks that it is still in its block's stream
/// before each group, then reads at most a group's codewords (16 of at
/// most 12 bits) and two words ahead; it asks L1 for words up to
/// `PADDING_WORDS` past its block's stream, the rest bits of a group
/// reach at most a word past its last, and CUDA asks L1 for rest bits at
/// most 8 words past the block's last element's.
pub const PLANE_PADDING_WORDS: usize = 16;

/// The largest byte offset inside one segment: offsets are 32-bit in the
/// kernels, and 2^31 − 1 is the largest binding every API allows.
pub const MAX_SEGMENT_BYTES: u64 = (1 << 31) - 1;

/// Declares a struct of `u32` fields that the kernels read, with the list
/// of its field names, so that tests can hold the kernels' declarations to
/// it.
macro_rules! kernel_struct {
    ($(#[$meta:meta])* pub struct $name:ident { $($(#[$field_meta:meta])* pub $field:ident: u32,)* }) => {
        $(#[$meta])*
        #[repr(C)]
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
        pub struct $name {
            $($(#[$field_meta])* pub $field: u32,)*
        }

        impl $name {
            /// The fields in memory order, each a `u32`.
            pub const FIELDS: &[&str] = &[$(stringify!($field)),*];
        }
    };
}

kernel_struct! {
    /// One block, as a workgroup sees it (`Block` in the kernels).
    pub struct BlockDescriptor {
        /// Byte offset of the block's head stream in the segment's head plane.
        pub stream_byte: u32,
        pub stream_bits: u32,
        /// `BLOCK_RAW`, `BLOCK_CONSTANT` or `BLOCK_CODED`.
        pub mode: u32,
        /// Coded: the table's number in the segment; constant: the head.
        pub table_or_value: u32,
        /// The block's exceptions in the segment's list.
        pub exceptions_start: u32,
        pub exceptions_count: u32,
        /// Elements in the block, and the first one's index in the segment.
        pub elements: u32,
        pub first_element: u32,
        /// Byte offset of the block's rest bits in the segment's rest plane.
        pub rest_byte: u32,
        pub reserved0: u32,
        pub reserved1: u32,
        pub reserved2: u32,
    }
}

kernel_struct! {
    /// Per-dispatch parameters (`Params` in the kernels): the tensor's split
    /// and geometry, where the segment's output starts and where its blocks'
    /// status words are.
    pub struct DispatchParams {
        pub block_count: u32,
        pub width_bytes: u32,
        pub head_bits: u32,
        pub rest_bits: u32,
        pub stored_rest_bits: u32,
        pub rest_const_bits: u32,
        pub rest_const_value: u32,
        pub chunk_bits: u32,
        pub warmup_bits: u32,
        /// WGSL: word index, in the bound output, of the segment's first
        /// element (CUDA's records point at it instead).
        pub out_word: u32,
        /// WGSL: the status word of the dispatch's first block (CUDA
        /// indexes status words by thread block).
        pub status_base: u32,
        /// 1 when heads are sign first, 0 when exponent first.
        pub sign_in_head: u32,
        /// The layout of the kernels' write path, `LAYOUT_*`.
        pub fast_layout: u32,
        pub reserved0: u32,
        pub reserved1: u32,
        pub reserved2: u32,
    }
}

/// One segment of a CUDA launch (`Dispatch` in `kernels/decode.cu`): its
/// parameters and the device addresses of its buffers.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct DispatchRecord {
    pub params: DispatchParams,
    pub blocks: u64,
    pub tables: u64,
    pub exceptions: u64,
    pub head: u64,
    pub rest: u64,
    /// The segment's first output element.
    pub output: u64,
}

/// The structs both kernels declare: their names there, their fields in
/// memory order (each a `u32`) and their sizes in bytes.
pub const KERNEL_STRUCTS: [(&str, &[&str], usize); 2] = [
    (
        "Params",
        DispatchParams::FIELDS,
        size_of::<DispatchParams>(),
    ),
    (
        "Block",
        BlockDescriptor::FIELDS,
        size_of::<BlockDescriptor>(),
    ),
];

impl DispatchRecord {
    /// The address fields after `params`, in memory order.
    pub const POINTERS: [&str; 6] = ["blocks", "tables", "exceptions", "head", "rest", "output"];
}

/// A run of blocks decoded by one dispatch, with its own slices of the
/// planes.
#[derive(Clone, Debug)]
pub struct Segment {
    pub blocks: Range<usize>,
    /// Byte ranges of the tensor's head and rest planes this segment reads.
    pub head_bytes: Range<usize>,
    pub rest_bytes: Range<usize>,
    /// Elements before the segment in the tensor, and in it.
    pub first_element: u64,
    pub elements: u64,
    pub descriptors: Vec<BlockDescriptor>,
    /// The tables its coded blocks use, `TABLE_WORDS` each.
    pub tables: Vec<u32>,
    /// `chunk << 8 | first_boundary`, grouped by block in chunk order.
    pub exceptions: Vec<u32>,
}

impl Segment {
    /// Decoded bytes of the segment.
    pub(crate) fn output_bytes(&self, params: &TensorParams) -> u64 {
        self.elements * params.kind().width_bytes() as u64
    }

    /// Dispatch parameters; the launch fills in `out_word` and
    /// `status_base`.
    pub(crate) fn dispatch_params(&self, params: &TensorParams) -> DispatchParams {
        let split = params.split;
        DispatchParams {
            fast_layout: write_layout(params),
            block_count: self.descriptors.len() as u32,
            width_bytes: split.kind.width_bytes() as u32,
            head_bits: split.head_bits,
            rest_bits: split.rest_bits(),
            stored_rest_bits: split.stored_rest_bits(),
            rest_const_bits: split.rest_const_bits,
            rest_const_value: split.rest_const_value,
            chunk_bits: params.geometry.chunk_bits,
            warmup_bits: params.geometry.warmup_bits,
            sign_in_head: split.sign_in_head as u32,
            ..DispatchParams::default()
        }
    }
}

/// The kernels' write path for a tensor's split. A layout's own path joins
/// heads and rest bits with fixed shifts, so its rest bits hold no
/// constant bits, and reads its rest bits at fixed places a group of
/// `RUN_ELEMENTS` at a time, which holds because every block starts on a
/// multiple of 1024 elements: its rest bits start on a 16-byte boundary
/// whatever their width.
fn write_layout(params: &TensorParams) -> u32 {
    let split = params.split;
    const _: () = assert!(crate::codec::MIN_BLOCK_ELEMENTS.is_multiple_of(128));
    if split.rest_const_bits != 0 {
        return LAYOUT_GENERIC;
    }
    match (
        split.kind.width_bits(),
        split.sign_in_head,
        split.head_bits,
        split.stored_rest_bits(),
    ) {
        (16, false, 8, 8) => LAYOUT_16_REST_8,
        (16, true, 9, 7) => LAYOUT_16_SIGNED_REST_7,
        (32, false, 8, 24) => LAYOUT_32_REST_24,
        (32, true, 9, 23) => LAYOUT_32_SIGNED_REST_23,
        (8, false, 7, 1) => LAYOUT_8_REST_1,
        (8, false, 8, 0) => LAYOUT_8_WHOLE,
        _ => LAYOUT_GENERIC,
    }
}

/// How large one dispatch may be on a device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DispatchLimits {
    /// Largest byte size of one bound buffer range.
    pub max_binding_bytes: u64,
    /// Most workgroups in one dispatch.
    pub max_workgroups: u32,
}

impl DispatchLimits {
    /// No binding limit (CUDA): only the 32-bit offsets inside a segment
    /// bound it.
    pub const UNBOUNDED: DispatchLimits = DispatchLimits {
        max_binding_bytes: MAX_SEGMENT_BYTES,
        max_workgroups: 1 << 30,
    };
}

/// Code tables in the canonical form the kernels expand into decode
/// tables.
pub(crate) fn table_words(lengths: &CodeLengths) -> [u32; TABLE_WORDS] {
    let mut words = [0u32; TABLE_WORDS];
    let mut count = [0u32; MAX_CODE_BITS as usize + 1];
    for &len in lengths {
        count[len as usize] += 1;
    }
    // Codes of length L are `first_code[L]`, `first_code[L] + 1`, … (as in
    // DEFLATE), and their symbols sit from `first_index[L]` in the list.
    let mut first_index = [0u32; MAX_CODE_BITS as usize + 2];
    let mut first_code = [0u32; MAX_CODE_BITS as usize + 1];
    let mut next_code = 0u32;
    for len in 1..=MAX_CODE_BITS as usize {
        first_code[len] = next_code;
        next_code = (next_code + count[len]) << 1;
        first_index[len + 1] = first_index[len] + count[len];
    }
    let mut cursor = first_index;
    for (symbol, &len) in lengths.iter().enumerate() {
        if len > 0 {
            let slot = cursor[len as usize] as usize;
            cursor[len as usize] += 1;
            words[slot / 2] |= (symbol as u32) << (16 * (slot % 2));
        }
    }
    for len in 1..=MAX_CODE_BITS as usize {
        words[TABLE_LENGTHS + len - 1] = first_code[len]
            | first_index[len] << TABLE_INDEX_SHIFT
            | count[len] << TABLE_COUNT_SHIFT;
    }
    words
}

/// Cuts a tensor into segments that fit `limits` and builds their
/// descriptors. `index` must have been parsed from `view`. Bindings are
/// capped at [`MAX_SEGMENT_BYTES`], whatever a device reports (Metal
/// reports its largest buffer), so that every offset inside a segment fits
/// the kernels' 32 bits.
pub fn segments(
    view: &EncodedView,
    index: &BlockIndex,
    limits: DispatchLimits,
) -> Result<Vec<Segment>> {
    let params = view.params;
    let width = params.kind().width_bytes() as u64;
    let stored_bits = params.split.stored_rest_bits() as u64;
    let block_count = index.blocks.len();
    let budget = segment_budget(limits);
    let mut segments = Vec::new();
    let mut first = 0;
    while first < block_count {
        let head_start = index.blocks[first].stream_offset;
        let first_element = first as u64 * params.block_elements as u64;
        let mut end = first;
        while end < block_count && end - first < limits.max_workgroups as usize {
            let entry = &index.blocks[end];
            let head_end = entry.stream_offset + entry.stream_bits.div_ceil(8);
            let last_element = first_element
                + (end - first) as u64 * params.block_elements as u64
                + params.block_len(end as u64);
            let elements = last_element - first_element;
            let fits = head_end - head_start <= budget
                && (elements * stored_bits).div_ceil(8) <= budget
                && elements * width <= budget;
            if !fits && end > first {
                break;
            }
            end += 1;
        }
        segments.push(build_segment(view, index, first..end)?);
        first = end;
    }
    Ok(segments)
}

/// The most bytes of one plane or output a segment may span: a binding,
/// capped at [`MAX_SEGMENT_BYTES`], less room for the padding words and a
/// binding offset rounded down.
pub(crate) fn segment_budget(limits: DispatchLimits) -> u64 {
    limits
        .max_binding_bytes
        .min(MAX_SEGMENT_BYTES)
        .saturating_sub(1024)
}

/// `value` as a 32-bit kernel offset; only a block larger than any binding
/// can fail this.
fn offset32(value: u64, what: &str) -> Result<u32> {
    u32::try_from(value).map_err(|_| Error::Backend {
        backend: "gpu".to_string(),
        message: format!("{what} {value} does not fit the kernels' 32-bit offsets"),
    })
}

fn build_segment(view: &EncodedView, index: &BlockIndex, blocks: Range<usize>) -> Result<Segment> {
    let params = view.params;
    let stored_bits = params.split.stored_rest_bits() as u64;
    let first_element = blocks.start as u64 * params.block_elements as u64;
    let head_start = index.blocks[blocks.start].stream_offset;
    let rest_start = first_element * stored_bits / 8;
    let mut segment = Segment {
        blocks: blocks.clone(),
        head_bytes: 0..0,
        rest_bytes: 0..0,
        first_element,
        elements: 0,
        descriptors: Vec::with_capacity(blocks.len()),
        tables: Vec::new(),
        exceptions: Vec::new(),
    };
    let mut first_table: Option<u32> = None;
    let mut head_end = head_start;
    for block in blocks.clone() {
        let entry = &index.blocks[block];
        let elements = params.block_len(block as u64);
        let block_first = block as u64 * params.block_elements as u64 - first_element;
        let (mode, table_or_value) = match entry.mode {
            BlockMode::Raw => (BLOCK_RAW, 0),
            BlockMode::Constant(value) => (BLOCK_CONSTANT, value as u32),
            BlockMode::Coded { table } => {
                let first = *first_table.get_or_insert(table);
                (BLOCK_CODED, table - first)
            }
        };
        let exceptions_start = segment.exceptions.len() as u32;
        segment.exceptions.extend(
            index
                .block_exceptions(block)
                .iter()
                .map(|e| e.chunk << 8 | e.first_boundary as u32),
        );
        segment.descriptors.push(BlockDescriptor {
            stream_byte: offset32(entry.stream_offset - head_start, "stream offset")?,
            stream_bits: offset32(entry.stream_bits, "stream length")?,
            mode,
            table_or_value,
            exceptions_start,
            exceptions_count: segment.exceptions.len() as u32 - exceptions_start,
            elements: offset32(elements, "block length")?,
            first_element: offset32(block_first, "element index")?,
            rest_byte: offset32(
                (first_element + block_first) * stored_bits / 8 - rest_start,
                "rest offset",
            )?,
            ..BlockDescriptor::default()
        });
        segment.elements += elements;
        head_end = entry.stream_offset + entry.stream_bits.div_ceil(8);
    }
    if let Some(first) = first_table {
        let last = segment
            .descriptors
            .iter()
            .filter(|d| d.mode == BLOCK_CODED)
            .map(|d| d.table_or_value + first)
            .max()
            .unwrap_or(first);
        for table in first..=last {
            segment
                .tables
                .extend_from_slice(&table_words(&index.tables[table as usize]));
        }
    }
    segment.head_bytes = head_start as usize..head_end as usize;
    let rest_end = (first_element + segment.elements) * stored_bits;
    segment.rest_bytes = rest_start as usize..rest_end.div_ceil(8) as usize;
    Ok(segment)
}

/// `bytes` padded with zeros to whole words plus `PLANE_PADDING_WORDS`.
pub(crate) fn padded_words(bytes: &[u8]) -> Vec<u32> {
    let mut words = vec![0u32; bytes.len().div_ceil(4) + PLANE_PADDING_WORDS];
    for (word, chunk) in words.iter_mut().zip(bytes.chunks(4)) {
        let mut buf = [0u8; 4];
        buf[..chunk.len()].copy_from_slice(chunk);
        *word = u32::from_le_bytes(buf);
    }
    words
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::huffman::{canonical_codes, limited_code_lengths};
    use crate::codec::{EncodeOptions, FloatKind, encode};

    #[test]
    fn segments_cover_every_block_within_the_limits() {
        let bytes = crate::synth::heavy_tailed_bytes(FloatKind::Bf16, 50_000, 1);
        let options = EncodeOptions {
            block_elements: 4096,
            ..EncodeOptions::default()
        };
        let encoded = encode(FloatKind::Bf16, &bytes, &options).unwrap();
        let index = BlockIndex::parse(&encoded.view()).unwrap();
        let limits = DispatchLimits {
            max_binding_bytes: 20_000,
            max_workgroups: 2,
        };
        let segments = segments(&encoded.view(), &index, limits).unwrap();
        assert!(segments.len() >= 7, "13 blocks, at most 2 per dispatch");
        let mut next_block = 0;
        let mut next_element = 0;
        for segment in &segments {
            assert_eq!(segment.blocks.start, next_block);
            assert_eq!(segment.first_element, next_element);
            assert!(segment.descriptors.len() <= 2);
            assert!(segment.output_bytes(&encoded.params) <= limits.max_binding_bytes);
            assert!(segment.head_bytes.len() as u64 <= limits.max_binding_bytes);
            let elements: u64 = segment.descriptors.iter().map(|d| d.elements as u64).sum();
            assert_eq!(elements, segment.elements);
            next_block = segment.blocks.end;
            next_element += segment.elements;
        }
        assert_eq!(next_block, index.blocks.len());
        assert_eq!(next_element, 50_000);
    }

    #[test]
    fn a_binding_limit_past_32_bits_is_capped() {
        // Metal reports its largest buffer, many GiB, as the binding limit.
        let metal = DispatchLimits {
            max_binding_bytes: 64 << 30,
            max_workgroups: u32::MAX,
        };
        assert!(segment_budget(metal) < u32::MAX as u64 / 2);
        assert_eq!(
            segment_budget(metal),
            segment_budget(DispatchLimits::UNBOUNDED)
        );
    }

    #[test]
    fn table_words_describe_the_canonical_code() {
        let mut counts = [0u64; ALPHABET];
        for (symbol, count) in [
            (3usize, 100u64),
            (9, 40),
            (10, 30),
            (200, 7),
            (255, 1),
            (7, 1),
            (511, 1),
            (300, 2),
        ] {
            counts[symbol] = count;
        }
        let lengths = limited_code_lengths(&counts, MAX_CODE_BITS);
        let codes = canonical_codes(&lengths);
        let words = table_words(&lengths);
        let symbol_at = |slot: u32| (words[slot as usize / 2] >> (16 * (slot % 2))) & 0xFFFF;
        for symbol in [3usize, 9, 10, 200, 255, 7, 511, 300] {
            let len = lengths[symbol] as usize;
            // The codeword, MSB first, as the kernels rebuild it.
            let code = codes[symbol].reverse_bits() >> (32 - len);
            let info = words[TABLE_LENGTHS + len - 1];
            let (first_code, first_index, count) = (
                info & 0xFFF,
                info >> TABLE_INDEX_SHIFT & 0x3FF,
                info >> TABLE_COUNT_SHIFT,
            );
            assert!(code - first_code < count, "symbol {symbol}");
            assert_eq!(symbol_at(first_index + code - first_code), symbol as u32);
        }
    }
}

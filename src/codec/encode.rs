//! The encoder: one tensor of floats into head stream, rest plane and block
//! index.
//!
//! 1. *Survey* the tensor once: a histogram of the top 8 bits of every
//!    element per span of 16K elements, and which bits never vary.
//! 2. *Choose* the head width and the block size by estimated size.
//! 3. *Decide* per block, in order: constant, raw, a new code, or the previous
//!    block's code — whichever is smallest with its table counted in.
//! 4. *Write* every block's stream, sync exceptions and rest bits in parallel.

use rayon::prelude::*;

use super::bits::BitWriter;
use super::float::{FieldSplit, FloatKind, width_mask};
use super::huffman::{self, DecodeTable, MAX_CODE_BITS};
use super::index::{self, BlockRecord, ChunkException};
use super::stats::{self, Histogram};
use super::sync::ChunkGeometry;
use super::table::{self, CodeLengths};
use super::{CodecError, EncodedTensor, MAX_ELEMENTS, TensorParams};

#[derive(Clone, Debug)]
pub struct EncodeOptions {
    /// Elements per block, a power of two. Each block has its own code
    /// (or reuses the previous one) and decodes on its own.
    pub block_elements: u32,
    /// Head width in bits; `None` chooses by estimated size.
    pub head_bits: Option<u32>,
    pub chunk_bits: u32,
    pub warmup_bits: u32,
}

impl Default for EncodeOptions {
    fn default() -> Self {
        EncodeOptions {
            block_elements: 1 << 16,
            head_bits: None,
            chunk_bits: 1024,
            warmup_bits: 64,
        }
    }
}

/// Elements per survey histogram.
const SURVEY_SPAN: usize = 1 << 14;
/// Survey spans per block when estimating the effect of the head width.
const ESTIMATE_BLOCK_SPANS: usize = 4;

/// Encodes `bytes`, little-endian elements of `kind`.
pub fn encode(
    kind: FloatKind,
    bytes: &[u8],
    options: &EncodeOptions,
) -> Result<EncodedTensor, CodecError> {
    let width = kind.width_bytes();
    if bytes.len() % width != 0 {
        return Err(CodecError::LengthMismatch(format!(
            "{} bytes are not a whole number of {width}-byte {kind} elements",
            bytes.len()
        )));
    }
    let elements = (bytes.len() / width) as u64;
    if elements > MAX_ELEMENTS {
        return Err(CodecError::InvalidParameters(format!(
            "{elements} elements exceed the limit of {MAX_ELEMENTS}"
        )));
    }
    let survey = Survey::take(kind, bytes);
    let head_bits = match options.head_bits {
        Some(bits) => bits,
        None => survey.best_head_bits(kind),
    };
    let mut split = FieldSplit {
        kind,
        head_bits,
        rest_const_bits: 0,
        rest_const_value: 0,
    };
    (split.rest_const_bits, split.rest_const_value) = survey.constant_rest_bits(&split);
    let block_elements = options.block_elements;
    let params = TensorParams {
        split,
        elements,
        block_elements,
        geometry: ChunkGeometry {
            chunk_bits: options.chunk_bits,
            warmup_bits: options.warmup_bits,
        },
    };
    params.validate()?;

    let block_bytes = block_elements as usize * width;
    let histograms: Vec<Histogram> = bytes
        .par_chunks(block_bytes)
        .map(|block| head_histogram(&split, block))
        .collect();
    let decisions = decide_blocks(&histograms, head_bits);
    let outputs: Vec<BlockOutput> = bytes
        .par_chunks(block_bytes)
        .zip(decisions.par_iter())
        .map(|(block, decision)| encode_block(&split, params.geometry, block, decision))
        .collect();

    let mut encoded = EncodedTensor {
        params,
        head: Vec::with_capacity(outputs.iter().map(|o| o.stream.len()).sum()),
        rest: Vec::with_capacity(outputs.iter().map(|o| o.rest.len()).sum()),
        index: Vec::with_capacity(outputs.iter().map(|o| o.record.len()).sum()),
    };
    for output in outputs {
        encoded.head.extend_from_slice(&output.stream);
        encoded.rest.extend_from_slice(&output.rest);
        encoded.index.extend_from_slice(&output.record);
    }
    Ok(encoded)
}

/// What one pass over the tensor learns.
struct Survey {
    /// Histogram of 8-bit heads per span of `SURVEY_SPAN` elements.
    spans: Vec<Histogram>,
    /// AND and OR of all elements: where they agree, a bit never varies.
    and: u32,
    or: u32,
}

impl Survey {
    fn take(kind: FloatKind, bytes: &[u8]) -> Self {
        let width = kind.width_bytes();
        let split = FieldSplit {
            kind,
            head_bits: 8,
            rest_const_bits: 0,
            rest_const_value: 0,
        };
        let parts: Vec<(Histogram, u32, u32)> = bytes
            .par_chunks(SURVEY_SPAN * width)
            .map(|span| {
                let mut histogram = [0u64; 256];
                let (mut and, mut or) = (u32::MAX, 0u32);
                for index in 0..span.len() / width {
                    let element = kind.load(span, index);
                    histogram[split.head(element) as usize] += 1;
                    and &= element;
                    or |= element;
                }
                (histogram, and, or)
            })
            .collect();
        let mut survey = Survey {
            spans: Vec::with_capacity(parts.len()),
            and: u32::MAX,
            or: 0,
        };
        for (histogram, and, or) in parts {
            survey.spans.push(histogram);
            survey.and &= and;
            survey.or |= or;
        }
        survey
    }

    /// How `split` should store its rest: the number of low rest bits that
    /// never vary, and their value.
    fn constant_rest_bits(&self, split: &FieldSplit) -> (u32, u32) {
        if self.spans.is_empty() {
            return (0, 0);
        }
        let varying = split.full_rest(self.and ^ self.or);
        let bits = varying.trailing_zeros().min(split.rest_bits());
        (bits, split.full_rest(self.and) & width_mask(bits))
    }

    /// Estimated stored bits with heads of `head_bits` in blocks of
    /// `block_spans` survey spans: the ideal code length per block, a table
    /// per block, and the rest bits.
    fn estimate_bits(&self, kind: FloatKind, head_bits: u32, block_spans: usize) -> f64 {
        let elements: u64 = self.spans.iter().flatten().sum();
        let split = FieldSplit {
            kind,
            head_bits,
            rest_const_bits: 0,
            rest_const_value: 0,
        };
        let rest_bits = split.rest_bits() - self.constant_rest_bits(&split).0;
        let heads: f64 = self
            .spans
            .chunks(block_spans)
            .map(|spans| {
                let mut block = [0u64; 256];
                for span in spans {
                    stats::add_into(&mut block, &stats::fold_top_bits(span, head_bits));
                }
                let total: u64 = block.iter().sum();
                let coded = stats::entropy_bits(&block)
                    + ESTIMATED_TABLE_BITS_PER_SYMBOL * stats::distinct(&block) as f64;
                coded.min((total * head_bits as u64) as f64)
            })
            .sum();
        heads + (elements * rest_bits as u64) as f64
    }

    fn best_head_bits(&self, kind: FloatKind) -> u32 {
        kind.head_bits_range()
            .min_by(|&a, &b| {
                self.estimate_bits(kind, a, ESTIMATE_BLOCK_SPANS)
                    .total_cmp(&self.estimate_bits(kind, b, ESTIMATE_BLOCK_SPANS))
            })
            .unwrap()
    }
}

/// Estimated cost of storing one used symbol in a code table.
const ESTIMATED_TABLE_BITS_PER_SYMBOL: f64 = 2.5;

fn head_histogram(split: &FieldSplit, block: &[u8]) -> Histogram {
    let kind = split.kind;
    let mut histogram = [0u64; 256];
    for index in 0..block.len() / kind.width_bytes() {
        let (head, _) = split.split(kind.load(block, index));
        histogram[head as usize] += 1;
    }
    histogram
}

enum BlockDecision {
    Raw,
    Constant(u8),
    Coded {
        lengths: Box<CodeLengths>,
        new_table: bool,
    },
}

/// Chooses each block's storage in order; a block may reuse the code of the
/// most recent coded block when that is smaller than sending its own.
fn decide_blocks(histograms: &[Histogram], head_bits: u32) -> Vec<BlockDecision> {
    let mut decisions = Vec::with_capacity(histograms.len());
    let mut last_table: Option<Box<CodeLengths>> = None;
    for histogram in histograms {
        let elements: u64 = histogram.iter().sum();
        let used = stats::distinct(histogram);
        if used == 1 {
            let value = histogram.iter().position(|&c| c > 0).unwrap() as u8;
            decisions.push(BlockDecision::Constant(value));
            continue;
        }
        let raw_bits = elements * head_bits as u64;
        let own = Box::new(huffman::limited_code_lengths(histogram, MAX_CODE_BITS));
        let own_bits = code_bits(histogram, &own) + 8 * table::table_size(&own) as u64;
        let reuse_bits = last_table
            .as_deref()
            .filter(|last| covers(last, histogram))
            .map(|last| code_bits(histogram, last));
        let decision = match reuse_bits {
            Some(bits) if bits <= own_bits && bits <= raw_bits => BlockDecision::Coded {
                lengths: last_table.clone().unwrap(),
                new_table: false,
            },
            _ if own_bits <= raw_bits => {
                last_table = Some(own.clone());
                BlockDecision::Coded {
                    lengths: own,
                    new_table: true,
                }
            }
            _ => BlockDecision::Raw,
        };
        decisions.push(decision);
    }
    decisions
}

fn code_bits(histogram: &Histogram, lengths: &CodeLengths) -> u64 {
    histogram
        .iter()
        .zip(lengths)
        .map(|(&count, &len)| count * len as u64)
        .sum()
}

fn covers(lengths: &CodeLengths, histogram: &Histogram) -> bool {
    histogram
        .iter()
        .zip(lengths)
        .all(|(&count, &len)| count == 0 || len > 0)
}

struct BlockOutput {
    record: Vec<u8>,
    stream: Vec<u8>,
    rest: Vec<u8>,
}

fn encode_block(
    split: &FieldSplit,
    geometry: ChunkGeometry,
    block: &[u8],
    decision: &BlockDecision,
) -> BlockOutput {
    let kind = split.kind;
    let elements = block.len() / kind.width_bytes();
    let mut rest = BitWriter::with_capacity(elements * split.stored_rest_bits() as usize / 8 + 8);
    let mut record_bytes = Vec::new();
    let stream = match decision {
        BlockDecision::Constant(value) => {
            for index in 0..elements {
                let (_, rest_bits) = split.split(kind.load(block, index));
                rest.put(rest_bits, split.stored_rest_bits());
            }
            index::write_record(&BlockRecord::Constant(*value), &mut record_bytes);
            Vec::new()
        }
        BlockDecision::Raw => {
            let mut heads = BitWriter::with_capacity(elements);
            for index in 0..elements {
                let (head, rest_bits) = split.split(kind.load(block, index));
                heads.put(head, split.head_bits);
                rest.put(rest_bits, split.stored_rest_bits());
            }
            index::write_record(&BlockRecord::Raw, &mut record_bytes);
            heads.finish()
        }
        BlockDecision::Coded { lengths, new_table } => {
            let codes = huffman::canonical_codes(lengths);
            let chunk_bits = geometry.chunk_bits as u64;
            let mut heads = BitWriter::with_capacity(elements);
            // First codeword boundary at or after each chunk's beginning.
            let mut first_boundaries = Vec::new();
            let mut next_chunk_begin = 0u64;
            for index in 0..elements {
                let (head, rest_bits) = split.split(kind.load(block, index));
                let position = heads.bit_len();
                while position >= next_chunk_begin {
                    first_boundaries.push(position);
                    next_chunk_begin += chunk_bits;
                }
                heads.put(codes[head as usize], lengths[head as usize] as u32);
                rest.put(rest_bits, split.stored_rest_bits());
            }
            let stream_bits = heads.bit_len();
            while next_chunk_begin < stream_bits {
                first_boundaries.push(stream_bits);
                next_chunk_begin += chunk_bits;
            }
            let stream = heads.finish();
            let exceptions =
                sync_exceptions(geometry, &stream, stream_bits, lengths, &first_boundaries);
            let record = BlockRecord::Coded {
                new_table: new_table.then_some(&**lengths),
                stream_bits,
                exceptions: &exceptions,
            };
            index::write_record(&record, &mut record_bytes);
            stream
        }
    };
    BlockOutput {
        record: record_bytes,
        stream,
        rest: rest.finish(),
    }
}

/// Replays the chunk decoders' warm-up (see [`super::sync`]) and lists the
/// chunks where it would land off the true codeword boundary.
fn sync_exceptions(
    geometry: ChunkGeometry,
    stream: &[u8],
    stream_bits: u64,
    lengths: &CodeLengths,
    first_boundaries: &[u64],
) -> Vec<ChunkException> {
    let max_len = huffman::validate_lengths(lengths).expect("encoder builds complete codes");
    let table = DecodeTable::new(lengths, max_len);
    let mut exceptions = Vec::new();
    for (chunk, &boundary) in first_boundaries.iter().enumerate().skip(1) {
        let landing = geometry.warmup_landing(stream, stream_bits, &table, chunk as u64);
        if landing != boundary {
            let chunk_begin = chunk as u64 * geometry.chunk_bits as u64;
            exceptions.push(ChunkException {
                chunk: chunk as u32,
                first_boundary: (boundary - chunk_begin) as u8,
            });
        }
    }
    exceptions
}
